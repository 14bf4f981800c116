//! Static X25519 identity keys of nodes and DCs, and their base64 text form.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Why a key's text form was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not standard base64 (with padding).
    #[error("not valid base64")]
    Base64,
    /// Valid base64, but of this many bytes instead of 32.
    #[error("a key is 32 bytes, this one is {0}")]
    Length(usize),
    /// A point of small order (all zeros, say): every Diffie-Hellman with it gives the same
    /// result, whoever the other side is. No real key is one.
    #[error("not a usable public key (a point of small order)")]
    LowOrder,
}

/// A public key: the identity of a node or a DC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A static private key.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let v = B64.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    v.as_slice().try_into().map_err(|_| KeyError::Length(v.len()))
}

impl PublicKey {
    /// Reads a key written as standard base64 of 32 bytes (surrounding whitespace ignored);
    /// refuses points of small order.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let k = Self(decode32(s)?);
        if !k.is_usable() {
            return Err(KeyError::LowOrder);
        }
        Ok(k)
    }

    /// False for a point of small order: a Diffie-Hellman with it does not depend on the other
    /// side's secret (it is all zeros).
    pub fn is_usable(&self) -> bool {
        let probe = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        probe.diffie_hellman(&x25519_dalek::PublicKey::from(self.0)).was_contributory()
    }
    /// The key as standard base64 (44 characters), as configuration files hold it.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first few characters are enough to tell keys apart in logs.
        write!(f, "{}…", &self.to_base64()[..8])
    }
}

impl SecretKey {
    /// A new random key from the operating system's RNG.
    pub fn generate() -> Self {
        let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        Self(s.to_bytes())
    }
    /// The key with these raw bytes (clamping happens when it is used).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// Reads a key written as standard base64 of 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }
    /// The key as standard base64, as `private_key` in a configuration file.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }
    /// The raw 32 bytes, for the Noise handshake.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The matching public key: the identity others know this node or DC by.
    pub fn public(&self) -> PublicKey {
        let s = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {:?})", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let s = SecretKey::generate();
        let back = SecretKey::from_base64(&s.to_base64()).unwrap();
        assert_eq!(back.public(), s.public());
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(PublicKey::from_base64("!!"), Err(KeyError::Base64));
        let zeros = B64.encode([0u8; 32]);
        assert_eq!(PublicKey::from_base64(&zeros), Err(KeyError::LowOrder));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(PublicKey::from_base64(&B64.encode(one)), Err(KeyError::LowOrder));
        assert!(PublicKey::from_base64(&s.public().to_base64()).is_ok());
    }
}
