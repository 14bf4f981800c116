//! The Noise IK exchange every signaling hop and every tunnel setup runs:
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`. The initiator knows the responder's static key in advance
//! (a node knows its DC's; a DC knows its peers'; a node learns its peer's from its DC); the
//! responder learns the initiator's static key from message 1 and decides whether to trust it.
//! Message 1 carries the request, message 2 the response; both are encrypted and authenticated.
//! After message 2 both sides hold a pair of transport keys, which tunnels use for data.

use crate::data::TunnelKeys;
use crate::keys::{PublicKey, SecretKey};

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"NTM v1";
const MAX_MSG: usize = 1400;

/// A handshake message that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The Noise library refused the message: wrong responder key, failed decryption,
    /// truncated or oversized message.
    #[error("handshake failed: {0}")]
    Snow(#[from] snow::Error),
    /// Message 1 decrypted but held no usable initiator static key.
    #[error("handshake message carries no peer static key")]
    NoStatic,
}

/// One side's handshake state between message 1 and message 2.
pub struct Handshake(snow::HandshakeState);

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake(..)")
    }
}

fn builder(local: &SecretKey) -> snow::Builder<'_> {
    snow::Builder::new(PATTERN.parse().expect("valid noise pattern"))
        .local_private_key(local.bytes())
        .prologue(PROLOGUE)
}

/// Starts an exchange: returns the initiator's state and message 1 carrying `payload`.
pub fn initiate(local: &SecretKey, remote: &PublicKey, payload: &[u8]) -> Result<(Handshake, Vec<u8>), NoiseError> {
    let mut hs = builder(local).remote_public_key(&remote.0).build_initiator()?;
    let mut buf = vec![0u8; MAX_MSG];
    let n = hs.write_message(payload, &mut buf)?;
    buf.truncate(n);
    Ok((Handshake(hs), buf))
}

/// Reads message 1: returns the responder's state, the initiator's static key and the payload.
pub fn accept(local: &SecretKey, msg1: &[u8]) -> Result<(Handshake, PublicKey, Vec<u8>), NoiseError> {
    let mut hs = builder(local).build_responder()?;
    let mut buf = vec![0u8; MAX_MSG];
    let n = hs.read_message(msg1, &mut buf)?;
    buf.truncate(n);
    let rs = hs.get_remote_static().ok_or(NoiseError::NoStatic)?;
    let key = PublicKey(rs.try_into().map_err(|_| NoiseError::NoStatic)?);
    Ok((Handshake(hs), key, buf))
}

/// Writes message 2 carrying `payload`; returns it and the responder's transport keys.
pub fn respond(hs: Handshake, payload: &[u8]) -> Result<(Vec<u8>, TunnelKeys), NoiseError> {
    let mut hs = hs.0;
    let mut buf = vec![0u8; MAX_MSG];
    let n = hs.write_message(payload, &mut buf)?;
    buf.truncate(n);
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    Ok((buf, TunnelKeys { send: r2i, recv: i2r }))
}

/// Reads message 2: returns its payload and the initiator's transport keys.
pub fn finish(hs: &mut Handshake, msg2: &[u8]) -> Result<(Vec<u8>, TunnelKeys), NoiseError> {
    let mut buf = vec![0u8; MAX_MSG];
    let n = hs.0.read_message(msg2, &mut buf)?;
    buf.truncate(n);
    let (i2r, r2i) = hs.0.dangerously_get_raw_split();
    Ok((buf, TunnelKeys { send: i2r, recv: r2i }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_agrees_on_keys_and_identities() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let (mut ia, m1) = initiate(&a, &b.public(), b"request").unwrap();
        let (hb, who, req) = accept(&b, &m1).unwrap();
        assert_eq!(who, a.public());
        assert_eq!(req, b"request");
        let (m2, kb) = respond(hb, b"response").unwrap();
        let (resp, ka) = finish(&mut ia, &m2).unwrap();
        assert_eq!(resp, b"response");
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
    }

    #[test]
    fn wrong_responder_key_fails() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let c = SecretKey::generate();
        let (_, m1) = initiate(&a, &c.public(), b"x").unwrap();
        assert!(accept(&b, &m1).is_err());
    }
}
