//! Sealing and opening tunnel data packets: ChaCha20-Poly1305 with the 64-bit counter as nonce
//! (32 zero bits then the counter, little endian) and no associated data, as the kernel's
//! `chacha20poly1305_encrypt(dst, src, len, NULL, 0, counter, key)` does.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::replay::ReplayWindow;
use crate::wire::{self, DATA_HEADER, TAG_LEN};

/// Raw 32-byte tunnel keys, one per direction.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelKeys {
    /// Seals what this node sends into the tunnel (the peer's `recv`): the handshake's
    /// initiator-to-responder key on the initiator, responder-to-initiator on the responder.
    pub send: [u8; 32],
    /// Opens what the peer sends (the peer's `send`).
    pub recv: [u8; 32],
}

impl std::fmt::Debug for TunnelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKeys(..)")
    }
}

/// Why a data packet could not be sealed or opened. On receive, the tunnel counts the packet
/// in `rx_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The tag did not verify (wrong key, corrupted or forged packet, or shorter than the
    /// 16-byte tag); also a sealing failure in the AEAD, which does not happen in practice.
    #[error("authentication failed")]
    Auth,
    /// The counter was accepted already, or lies too far behind the newest one accepted
    /// (outside the replay window, [`crate::replay::WINDOW`] = 1984 counters).
    #[error("replayed or too old counter {0}")]
    Replay(u64),
    /// The send counter reached `u64::MAX`: no nonce is left under this key, and the tunnel
    /// needs a new handshake.
    #[error("send counter exhausted")]
    CounterExhausted,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending half of a tunnel.
pub struct Sealer {
    key: LessSafeKey,
    receiver: u32,
    counter: u64,
}

impl Sealer {
    /// A sealer under `key` (the tunnel's `send` key) whose packets carry `receiver`, the
    /// peer's id for the tunnel (which the peer finds the tunnel by); the counter starts at 0.
    pub fn new(key: &[u8; 32], receiver: u32) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
        Self { key, receiver, counter: 0 }
    }

    /// Appends a data packet carrying `payload` to `out` (cleared first).
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), DataError> {
        if self.counter == u64::MAX {
            return Err(DataError::CounterExhausted);
        }
        let counter = self.counter;
        self.counter += 1;
        out.clear();
        out.resize(DATA_HEADER, 0);
        wire::write_data_header(out, self.receiver, counter);
        out.extend_from_slice(payload);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut out[DATA_HEADER..])
            .map_err(|_| DataError::Auth)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The counter the next sealed packet will carry: the number of packets sealed so far.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

/// The receiving half of a tunnel, with its replay window.
pub struct Opener {
    key: LessSafeKey,
    window: ReplayWindow,
}

impl Opener {
    /// An opener under `key` (the tunnel's `recv` key) with an empty replay window.
    pub fn new(key: &[u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
        Self { key, window: ReplayWindow::new() }
    }

    /// Decrypts `sealed` (ciphertext + tag) in place and returns the plaintext.
    pub fn open<'a>(&mut self, counter: u64, sealed: &'a mut [u8]) -> Result<&'a mut [u8], DataError> {
        if !self.window.check(counter) {
            return Err(DataError::Replay(counter));
        }
        if sealed.len() < TAG_LEN {
            return Err(DataError::Auth);
        }
        let plain = self.key.open_in_place(nonce(counter), Aad::empty(), sealed).map_err(|_| DataError::Auth)?;
        if !self.window.accept(counter) {
            return Err(DataError::Replay(counter));
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Packet;

    /// Golden vector shared with the kernel module's self-test: key 0x00..0x1f, receiver
    /// 0x01020304, counter 0 then 1, payload "NTM golden vector".
    pub(crate) const GOLDEN_KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn seal_open_and_replay() {
        let mut s = Sealer::new(&GOLDEN_KEY, 7);
        let mut o = Opener::new(&GOLDEN_KEY);
        let mut out = Vec::new();
        s.seal(b"hello", &mut out).unwrap();
        let Packet::Data { receiver, counter, .. } = Packet::parse(&out).unwrap() else { panic!() };
        assert_eq!((receiver, counter), (7, 0));
        let mut copy = out.clone();
        assert_eq!(o.open(0, &mut copy[DATA_HEADER..]).unwrap(), b"hello");
        let mut again = out.clone();
        assert_eq!(o.open(0, &mut again[DATA_HEADER..]), Err(DataError::Replay(0)));
        let mut bad = out.clone();
        bad[20] ^= 1;
        let mut o2 = Opener::new(&GOLDEN_KEY);
        assert_eq!(o2.open(0, &mut bad[DATA_HEADER..]), Err(DataError::Auth));
        // A forged packet must not move the window: the genuine one still opens.
        assert!(o2.open(0, &mut out[DATA_HEADER..]).is_ok());
    }

    #[test]
    fn golden_vectors() {
        let mut s = Sealer::new(&GOLDEN_KEY, 0x0102_0304);
        let mut out = Vec::new();
        s.seal(b"NTM golden vector", &mut out).unwrap();
        assert_eq!(hex(&out), include_str!("../../tests/golden/data-counter0.hex").trim(), "counter 0");
        s.seal(b"NTM golden vector", &mut out).unwrap();
        assert_eq!(hex(&out), include_str!("../../tests/golden/data-counter1.hex").trim(), "counter 1");
    }

    /// ntm.ko's self-test seals the same vectors at load time, from its own copy of them.
    #[test]
    fn module_self_test_has_the_golden_vectors() {
        let module = include_str!("../../kmod/crypto.rs");
        for v in
            [include_str!("../../tests/golden/data-counter0.hex"), include_str!("../../tests/golden/data-counter1.hex")]
        {
            assert!(
                module.contains(&format!("\"{}\"", v.trim())),
                "kmod/crypto.rs lacks the golden vector {}",
                v.trim()
            );
        }
    }
}
