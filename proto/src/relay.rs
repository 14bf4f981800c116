//! What nodes and relays share about relayed tunnels: binds (how a node tells a relay where its
//! side of a session is, authenticated by a key only its DC, the relay and the node know) and the
//! forwarding rule (which id of a datagram names its session, and which side must have sent it).
//!
//! A relay session has two sides, each with a relay-unique id that is also the node's local id for
//! the tunnel. Handshakes are forwarded by their sender id (the side that sent them), data by its
//! receiver id (the side it goes to), a cookie reply by its receiver like data; all these ids
//! sit at offset 4. The relay never decrypts.

use ring::hmac;

use crate::wire::{BIND_LEN, TYPE_BIND, TYPE_BIND_ACK, TYPE_COOKIE, TYPE_DATA, TYPE_INIT, TYPE_RESP, VERSION};

/// The key of one side's binds: HMAC-SHA256, truncated to 16 bytes on the wire.
#[derive(Clone)]
pub struct BindKey(hmac::Key);

impl std::fmt::Debug for BindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindKey(..)")
    }
}

impl BindKey {
    /// The key from its 32 bytes (as carried in a ticket or an allocation).
    pub fn new(bytes: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let t = hmac::sign(&self.0, head);
        t.as_ref()[..16].try_into().expect("32-byte tag")
    }

    /// A bind (or, with `ack`, a relay's answer to one) for side `id` at timestamp `ts`.
    pub fn seal(&self, ack: bool, id: u32, ts: u64) -> [u8; BIND_LEN] {
        let mut b = [0u8; BIND_LEN];
        b[0] = if ack { TYPE_BIND_ACK } else { TYPE_BIND };
        b[1] = VERSION;
        b[4..8].copy_from_slice(&id.to_le_bytes());
        b[8..16].copy_from_slice(&ts.to_le_bytes());
        let tag = self.tag(&b[..16]);
        b[16..].copy_from_slice(&tag);
        b
    }

    /// True if `b` is a bind (or answer) whose MAC is this key's; the comparison takes the
    /// same time whatever the bytes.
    pub fn verify(&self, b: &[u8]) -> bool {
        if b.len() != BIND_LEN || !matches!(b[0], TYPE_BIND | TYPE_BIND_ACK) {
            return false;
        }
        let tag = self.tag(&b[..16]);
        tag.iter().zip(&b[16..]).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// How a relay must treat a datagram, from its first 8 bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A handshake of the side with this id: it must come from that side's endpoint, and goes
    /// to the other side. (Handshakes that belong to no session are the relay's own signaling.)
    FromSide(u32),
    /// Data for the side with this id: it must come from the other side's endpoint.
    ToSide(u32),
    /// A bind of the side with this id: check its MAC with that side's key.
    Bind(u32),
    /// Not something a relay forwards (bind answers, unknown types, runts).
    Drop,
}

/// Classifies a datagram received by a relay.
pub fn route(b: &[u8]) -> Route {
    if b.len() < 8 {
        return Route::Drop;
    }
    let id = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    match b[0] {
        TYPE_INIT | TYPE_RESP => Route::FromSide(id),
        // A cookie reply goes back to the initiation's sender, like data to its receiver.
        TYPE_DATA | TYPE_COOKIE => Route::ToSide(id),
        TYPE_BIND if b.len() == BIND_LEN && b[1] == VERSION && b[2..4] == [0, 0] => Route::Bind(id),
        _ => Route::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_init, encode_resp, write_data_header, Packet};

    #[test]
    fn binds_verify_and_parse() {
        let k = BindKey::new(&[7; 32]);
        let b = k.seal(false, 0x01020304, 99);
        assert!(k.verify(&b));
        assert_eq!(Packet::parse(&b), Ok(Packet::Bind { ack: false, id: 0x01020304, ts: 99 }));
        assert!(!BindKey::new(&[8; 32]).verify(&b));
        let mut bad = b;
        bad[9] ^= 1;
        assert!(!k.verify(&bad));
        let a = k.seal(true, 0x01020304, 99);
        assert_ne!(a[16..], b[16..], "an answer is not a bind reflected");
        assert!(k.verify(&a));
        assert_eq!(route(&a), Route::Drop);
        assert_eq!(route(&b), Route::Bind(0x01020304));
    }

    #[test]
    fn routes_by_id_at_offset_4() {
        assert_eq!(route(&encode_init(5, &[0; 40])), Route::FromSide(5));
        assert_eq!(route(&encode_resp(6, 5, &[0; 40])), Route::FromSide(6));
        let mut d = [0u8; 40];
        write_data_header(&mut d, 9, 1);
        assert_eq!(route(&d), Route::ToSide(9));
        assert_eq!(route(&[4, 0, 0]), Route::Drop);
        assert_eq!(route(&[9; 40]), Route::Drop);
    }
}
