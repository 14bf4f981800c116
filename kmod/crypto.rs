// SPDX-License-Identifier: GPL-2.0

//! Tunnel data packets: sealing and opening, and the self-test run at load.
//!
//! A data packet is `[4, 0, 0, 0] | receiver u32 LE | counter u64 LE | ciphertext | tag`:
//! ChaCha20-Poly1305 with the counter as nonce and no associated data, exactly what
//! `proto/src/data.rs` produces with `ring`. The self-test seals the golden vectors of
//! `tests/golden/` (copied below; a test in `proto/src/data.rs` checks they are the same bytes) and
//! refuses to load the module if a single byte differs.

use kernel::prelude::*;

use crate::bindings::aead::{self, KEY_LEN, TAG_LEN};
use crate::replay::ReplayWindow;

pub(crate) const TYPE_DATA: u8 = 4;
pub(crate) const DATA_HEADER: usize = 16;
/// What a data packet adds around the inner packet.
pub(crate) const DATA_OVERHEAD: usize = DATA_HEADER + TAG_LEN;

/// A ChaCha20-Poly1305 key, wiped when dropped.
pub(crate) struct Key([u8; KEY_LEN]);

impl Key {
    pub(crate) fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The same key (compared in constant time).
    pub(crate) fn same(&self, other: &Key) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        aead::memzero_explicit(&mut self.0);
    }
}

/// Writes the data header into `out[..DATA_HEADER]`.
pub(crate) fn write_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[0] = TYPE_DATA;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// A parsed data header.
pub(crate) struct Header {
    pub(crate) receiver: u32,
    pub(crate) counter: u64,
}

/// Parses the header of a data packet of at least `DATA_OVERHEAD` bytes; None if the type or
/// the reserved bytes are wrong (the same rules as `proto::wire::Packet::parse`).
pub(crate) fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < DATA_OVERHEAD || b[0] != TYPE_DATA || b[1..4] != [0, 0, 0] {
        return None;
    }
    let receiver = u32::from_le_bytes(b[4..8].try_into().ok()?);
    let counter = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some(Header { receiver, counter })
}

/// Seals a packet in place: `buf` is `DATA_HEADER` bytes of room, the payload, `TAG_LEN`
/// bytes of room.
pub(crate) fn seal(buf: &mut [u8], receiver: u32, counter: u64, key: &Key) {
    let payload = buf.len() - DATA_OVERHEAD;
    write_header(buf, receiver, counter);
    aead::seal(&mut buf[DATA_HEADER..], payload, counter, &key.0);
}

/// Opens `sealed` (ciphertext + tag) in place; the plaintext is `sealed[..len - TAG_LEN]`.
pub(crate) fn open(sealed: &mut [u8], counter: u64, key: &Key) -> bool {
    aead::open(sealed, counter, &key.0)
}

// ---------------------------------------------------------------------------------------------
// Self-test

/// `tests/golden/data-counter0.hex` and `data-counter1.hex`: key 00..1f, receiver 0x01020304,
/// payload "NTM golden vector", counters 0 and 1.
const GOLDEN: [&str; 2] = [
    "0400000004030201000000000000000056ec0f11ca89cab5760f7c17ca203a488a38885924c08d0d86c5b81eecab9154ff",
    "04000000040302010100000000000000d103be7fd245c37c4cd88e2a37f6ede8b7691bfe80d49accc1e6720cad8776edeb",
];
const GOLDEN_PAYLOAD: &[u8] = b"NTM golden vector";
const GOLDEN_RECEIVER: u32 = 0x0102_0304;
const GOLDEN_LEN: usize = DATA_OVERHEAD + GOLDEN_PAYLOAD.len();

fn unhex(s: &str, out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Seals and opens the golden vectors, checks that a flipped bit is refused, and checks the
/// replay window's rules. Err makes the module refuse to load.
pub(crate) fn self_test() -> Result {
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    let key = Key::new(k);
    for (counter, hex) in GOLDEN.iter().enumerate() {
        let counter = counter as u64;
        let mut want = [0u8; GOLDEN_LEN];
        if !unhex(hex, &mut want) {
            pr_err!("self-test: bad golden vector {}\n", counter);
            return Err(EINVAL);
        }
        let mut buf = [0u8; GOLDEN_LEN];
        buf[DATA_HEADER..DATA_HEADER + GOLDEN_PAYLOAD.len()].copy_from_slice(GOLDEN_PAYLOAD);
        seal(&mut buf, GOLDEN_RECEIVER, counter, &key);
        if buf != want {
            pr_err!(
                "self-test: sealing golden vector {} gave different bytes\n",
                counter
            );
            return Err(EINVAL);
        }
        let Some(h) = parse_header(&buf) else {
            pr_err!(
                "self-test: golden vector {} header does not parse\n",
                counter
            );
            return Err(EINVAL);
        };
        let mut tampered = buf;
        tampered[DATA_HEADER + 3] ^= 1;
        if h.receiver != GOLDEN_RECEIVER
            || h.counter != counter
            || !open(&mut buf[DATA_HEADER..], h.counter, &key)
            || &buf[DATA_HEADER..DATA_HEADER + GOLDEN_PAYLOAD.len()] != GOLDEN_PAYLOAD
            || open(&mut tampered[DATA_HEADER..], h.counter, &key)
            || open(&mut want[DATA_HEADER..], h.counter + 1, &key)
        {
            pr_err!("self-test: opening golden vector {} failed\n", counter);
            return Err(EINVAL);
        }
    }
    if !ReplayWindow::self_test() {
        pr_err!("self-test: replay window failed\n");
        return Err(EINVAL);
    }
    pr_info!("self-test: golden vectors sealed and opened, replay window ok\n");
    Ok(())
}
