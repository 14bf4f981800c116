//! The outer framing of every datagram on an NTM port. The first byte tells the kind:
//!
//! ```text
//! handshake init  | 1 | ver | 0 0 | sender u32 LE |                 | noise IK message 1 | mac1 16 | mac2 16
//! cookie reply    | 3 | ver | 0 0 | receiver u32 LE | nonce 24       | XChaCha20-Poly1305(cookie) + tag
//! handshake resp  | 2 | ver | 0 0 | sender u32 LE | receiver u32 LE | noise IK message 2
//! data            | 4 | 0 0 0     | receiver u32 LE | counter u64 LE | ChaCha20-Poly1305(payload) + tag
//! relay bind      | 5 | ver | 0 0 | id u32 LE       | ts u64 LE      | HMAC-SHA256(bind key, first 16)[..16]
//! relay bind ack  | 6 | ver | 0 0 | id u32 LE       | ts u64 LE      | HMAC-SHA256(bind key, first 16)[..16]
//! ```
//! A relay forwards handshakes by their sender id and data by its receiver id: all at offset 4.
//! The data packet has WireGuard's shape: the nonce is the counter, so `ring` and the kernel's
//! `chacha20poly1305_encrypt` produce the same bytes.

/// First byte of a handshake initiation (Noise message 1, carrying a request).
pub const TYPE_INIT: u8 = 1;
/// First byte of a handshake response (Noise message 2, carrying the response).
pub const TYPE_RESP: u8 = 2;
/// First byte of a cookie reply: a responder under load asks the initiator to prove its
/// address (see [`crate::cookie`]).
pub const TYPE_COOKIE: u8 = 3;
/// First byte of a tunnel data packet.
pub const TYPE_DATA: u8 = 4;
/// First byte of a relay bind: a node tells the relay where its side of a session is.
pub const TYPE_BIND: u8 = 5;
/// First byte of a relay's answer to a bind.
pub const TYPE_BIND_ACK: u8 = 6;
/// Length of a bind and of its answer.
pub const BIND_LEN: usize = 32;
/// The signaling framing version, second byte of init and resp packets; others are dropped.
pub const VERSION: u8 = 1;

/// Bytes before the Noise message in a handshake initiation: type, version, 2 reserved, sender.
pub const INIT_HEADER: usize = 8;
/// Bytes before the Noise message in a handshake response: type, version, 2 reserved, sender,
/// receiver.
pub const RESP_HEADER: usize = 12;
/// Bytes before the ciphertext in a data packet: type, 3 reserved, receiver, counter.
pub const DATA_HEADER: usize = 16;
/// Bytes of the Poly1305 tag that ends every data packet.
pub const TAG_LEN: usize = 16;
/// Bytes a data packet adds around the inner IP packet (without the outer IP and UDP headers).
pub const DATA_OVERHEAD: usize = DATA_HEADER + TAG_LEN;
pub use crate::cookie::{COOKIE_REPLY_LEN, MACS_LEN};

/// Largest signaling datagram accepted or sent.
pub const MAX_SIGNALING: usize = 1400;

/// Why a datagram is not an NTM packet; it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A datagram of zero bytes.
    #[error("empty datagram")]
    Empty,
    /// The first byte is not a known packet type.
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    /// Shorter than its header (plus 32 bytes of Noise message, or the tag); names the kind.
    #[error("truncated {0} packet")]
    Truncated(&'static str),
    /// A handshake packet of another framing version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// A reserved header byte is not zero.
    #[error("reserved bytes not zero")]
    Reserved,
    /// A handshake packet longer than [`MAX_SIGNALING`] bytes.
    #[error("signaling datagram too large ({0} bytes)")]
    TooLarge(usize),
}

/// A parsed datagram, borrowing its body from the buffer. Ids are little endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A handshake initiation: a signaling request or a tunnel setup.
    Init {
        /// The initiator's id for this exchange; the response is addressed to it.
        sender: u32,
        /// Noise IK message 1 (without the two MACs that follow it).
        noise: &'a [u8],
    },
    /// A cookie reply to the initiation of `receiver` (checked by [`crate::cookie`]).
    Cookie {
        /// The initiation's sender id.
        receiver: u32,
    },
    /// A handshake response.
    Resp {
        /// The responder's id (for a tunnel: where the initiator sends its data).
        sender: u32,
        /// The initiator's id, from the initiation.
        receiver: u32,
        /// Noise IK message 2.
        noise: &'a [u8],
    },
    /// A relay bind or its answer (the MAC is checked by [`crate::relay`], not here).
    Bind {
        /// True for the relay's answer ([`TYPE_BIND_ACK`]).
        ack: bool,
        /// The node's id in the session.
        id: u32,
        /// The sender's timestamp (µs since the Unix epoch), strictly increasing per side.
        ts: u64,
    },
    /// Tunnel data.
    Data {
        /// The receiving side's local id of the tunnel.
        receiver: u32,
        /// The sender's packet counter, also the AEAD nonce.
        counter: u64,
        /// The encrypted inner IP packet followed by its 16-byte tag.
        sealed: &'a [u8],
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The packet type byte, if the datagram is not empty (what the kernel's encap hook looks at).
pub fn packet_type(b: &[u8]) -> Option<u8> {
    b.first().copied()
}

impl<'a> Packet<'a> {
    /// Parses the header of a datagram received on an NTM port; the body is not decrypted.
    pub fn parse(b: &'a [u8]) -> Result<Self, WireError> {
        match *b.first().ok_or(WireError::Empty)? {
            TYPE_INIT => {
                if b.len() < INIT_HEADER + 32 + MACS_LEN {
                    return Err(WireError::Truncated("handshake init"));
                }
                Self::check_sig_header(b)?;
                Ok(Packet::Init { sender: u32_at(b, 4), noise: &b[INIT_HEADER..b.len() - MACS_LEN] })
            }
            TYPE_COOKIE => {
                if b.len() != COOKIE_REPLY_LEN {
                    return Err(WireError::Truncated("cookie reply"));
                }
                Self::check_sig_header(b)?;
                Ok(Packet::Cookie { receiver: u32_at(b, 4) })
            }
            TYPE_RESP => {
                if b.len() < RESP_HEADER + 32 {
                    return Err(WireError::Truncated("handshake response"));
                }
                Self::check_sig_header(b)?;
                Ok(Packet::Resp { sender: u32_at(b, 4), receiver: u32_at(b, 8), noise: &b[RESP_HEADER..] })
            }
            TYPE_DATA => {
                if b.len() < DATA_OVERHEAD {
                    return Err(WireError::Truncated("data"));
                }
                if b[1..4] != [0, 0, 0] {
                    return Err(WireError::Reserved);
                }
                let counter = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                Ok(Packet::Data { receiver: u32_at(b, 4), counter, sealed: &b[DATA_HEADER..] })
            }
            t @ (TYPE_BIND | TYPE_BIND_ACK) => {
                if b.len() != BIND_LEN {
                    return Err(WireError::Truncated("relay bind"));
                }
                Self::check_sig_header(b)?;
                let ts = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                Ok(Packet::Bind { ack: t == TYPE_BIND_ACK, id: u32_at(b, 4), ts })
            }
            t => Err(WireError::UnknownType(t)),
        }
    }

    fn check_sig_header(b: &[u8]) -> Result<(), WireError> {
        if b.len() > MAX_SIGNALING {
            return Err(WireError::TooLarge(b.len()));
        }
        if b[1] != VERSION {
            return Err(WireError::Version(b[1]));
        }
        if b[2..4] != [0, 0] {
            return Err(WireError::Reserved);
        }
        Ok(())
    }
}

/// A handshake initiation from `sender` carrying Noise message 1, with room for its two MACs
/// (zeros here: [`crate::cookie::seal_init`] fills them).
pub fn encode_init(sender: u32, noise: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(INIT_HEADER + noise.len() + MACS_LEN);
    v.extend_from_slice(&[TYPE_INIT, VERSION, 0, 0]);
    v.extend_from_slice(&sender.to_le_bytes());
    v.extend_from_slice(noise);
    v.extend_from_slice(&[0; MACS_LEN]);
    v
}

/// A handshake response from `sender` to the initiator `receiver`, carrying Noise message 2.
pub fn encode_resp(sender: u32, receiver: u32, noise: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RESP_HEADER + noise.len());
    v.extend_from_slice(&[TYPE_RESP, VERSION, 0, 0]);
    v.extend_from_slice(&sender.to_le_bytes());
    v.extend_from_slice(&receiver.to_le_bytes());
    v.extend_from_slice(noise);
    v
}

/// Writes a data header into the first `DATA_HEADER` bytes of `out`.
pub fn write_data_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[0] = TYPE_DATA;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let n = [7u8; 40];
        let i = encode_init(0xdeadbeef, &n);
        assert_eq!(Packet::parse(&i), Ok(Packet::Init { sender: 0xdeadbeef, noise: &n }));
        let r = encode_resp(1, 2, &n);
        assert_eq!(Packet::parse(&r), Ok(Packet::Resp { sender: 1, receiver: 2, noise: &n }));
        let mut d = vec![0u8; DATA_OVERHEAD + 3];
        write_data_header(&mut d, 9, 42);
        assert_eq!(Packet::parse(&d), Ok(Packet::Data { receiver: 9, counter: 42, sealed: &d[16..] }));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Packet::parse(&[]), Err(WireError::Empty));
        assert_eq!(Packet::parse(&[9, 1, 2]), Err(WireError::UnknownType(9)));
        assert_eq!(Packet::parse(&[1, 1, 0, 0]), Err(WireError::Truncated("handshake init")));
        let mut i = encode_init(1, &[0; 40]);
        i[1] = 9;
        assert_eq!(Packet::parse(&i), Err(WireError::Version(9)));
        assert_eq!(Packet::parse(&encode_init(1, &[0; 2000])), Err(WireError::TooLarge(2040)));
        let mut d = vec![0u8; DATA_OVERHEAD];
        write_data_header(&mut d, 1, 1);
        d[2] = 1;
        assert_eq!(Packet::parse(&d), Err(WireError::Reserved));
    }
}
