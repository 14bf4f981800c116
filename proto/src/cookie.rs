//! Handshakes under load, as WireGuard does it: every handshake initiation carries two MACs
//! after its Noise message, checked before any Diffie-Hellman.
//!
//! - `mac1` is keyed by the responder's public key: anyone who knows it can compute it, but
//!   garbage and packets for someone else are dropped for the price of a hash.
//! - `mac2` is keyed by a cookie the responder gave this source address: under load the
//!   responder does no handshake work for an initiation without it, and answers with a cookie
//!   reply instead (shorter than the initiation: no amplification), encrypted so that only the
//!   initiator that sent that initiation (whose `mac1` is its associated data) can read it. The
//!   cookie is a MAC of the source address under a secret that changes every two minutes.
//! - With a valid `mac2`, each source address gets a bounded rate of handshake work; and an
//!   initiation seen before (its `mac1`, which covers the whole message, repeats) is a replay,
//!   dropped before any work.
//!
//! ```text
//! init trailer  ... noise message 1 | mac1 16 | mac2 16 (zeros without a cookie)
//! cookie reply  | 3 | ver | 0 0 | receiver u32 LE | nonce 24 | XChaCha20-Poly1305(cookie 16) + tag 16 |
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::keys::PublicKey;
use crate::wire::{TYPE_COOKIE, VERSION};

/// Bytes of each MAC.
pub const MAC_LEN: usize = 16;
/// Bytes the two MACs add to a handshake initiation.
pub const MACS_LEN: usize = 2 * MAC_LEN;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + 24 + MAC_LEN + 16;
/// A cookie is good for this long at the initiator (the responder's secret changes as often).
pub const COOKIE_LIFE: Duration = Duration::from_secs(120);

type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

fn hash(label: &[u8], key: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(label);
    h.update(key.0);
    h.finalize().into()
}

fn mac(key: &[u8], data: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = <Mac16 as KeyInit>::new_from_slice(key).expect("key of at most 32 bytes");
    for d in data {
        Mac::update(&mut m, d);
    }
    m.finalize().into_bytes().into()
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keys derived from a responder's public key: what its initiators MAC with, and what its
/// cookie replies are encrypted with.
#[derive(Clone)]
pub struct PeerKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl PeerKeys {
    /// The keys for a responder with public key `key`.
    pub fn new(key: &PublicKey) -> Self {
        Self { mac1: hash(b"mac1----", key), cookie: hash(b"cookie--", key) }
    }
}

/// Fills the two MACs at the end of an initiation (`packet` ends with [`MACS_LEN`] bytes for
/// them); returns `mac1`, which a cookie reply to this initiation is bound to.
pub fn seal_init(packet: &mut [u8], to: &PeerKeys, cookie: Option<&[u8; MAC_LEN]>) -> [u8; MAC_LEN] {
    let n = packet.len();
    let m1 = mac(&to.mac1, &[&packet[..n - MACS_LEN]]);
    packet[n - MACS_LEN..n - MAC_LEN].copy_from_slice(&m1);
    let m2 = cookie.map(|c| mac(c, &[&packet[..n - MAC_LEN]])).unwrap_or([0; MAC_LEN]);
    packet[n - MAC_LEN..].copy_from_slice(&m2);
    m1
}

/// Reads a cookie reply (`packet` whole, [`COOKIE_REPLY_LEN`] bytes) sent by the responder of
/// `from` to an initiation whose `mac1` was `mac1`.
pub fn open_cookie(packet: &[u8], from: &PeerKeys, mac1: &[u8; MAC_LEN]) -> Option<[u8; MAC_LEN]> {
    if packet.len() != COOKIE_REPLY_LEN {
        return None;
    }
    let aead = XChaCha20Poly1305::new_from_slice(&from.cookie).ok()?;
    let nonce = XNonce::from_slice(&packet[8..32]);
    let plain = aead.decrypt(nonce, Payload { msg: &packet[32..], aad: mac1 }).ok()?;
    plain.try_into().ok()
}

/// The sender id of a cookie reply's initiation (its receiver), if `packet` looks like one.
pub fn cookie_receiver(packet: &[u8]) -> Option<u32> {
    (packet.len() == COOKIE_REPLY_LEN && packet[0] == TYPE_COOKIE && packet[1] == VERSION && packet[2..4] == [0, 0])
        .then(|| u32::from_le_bytes(packet[4..8].try_into().expect("4 bytes")))
}

/// How much handshake work a responder takes before it is under load, and per source then.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Initiations per second (after `mac1`) before the responder asks for cookies.
    pub load_per_s: u32,
    /// Initiations per second from one source address under load (with a valid cookie).
    pub per_source_per_s: u32,
    /// The burst one source may have under load.
    pub per_source_burst: u32,
    /// How many `mac1` values are remembered against replays.
    pub replay_memory: usize,
    /// Cookie replies per second to one source address under load (an initiator needs one
    /// every two minutes; a flood from one address, or spoofing it, gets no more than this).
    pub cookies_per_source_per_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            load_per_s: 1000,
            per_source_per_s: 50,
            per_source_burst: 20,
            replay_memory: 65536,
            cookies_per_source_per_s: 10,
        }
    }
}

/// What the guard says about an initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Do the handshake.
    Accept,
    /// Drop it, silently.
    Drop(Why),
    /// Under load and no valid cookie: send this cookie reply to the source instead.
    Cookie(Vec<u8>),
}

/// Why an initiation was dropped before any handshake work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Too short to carry the MACs.
    Short,
    /// `mac1` is not this responder's: garbage, or meant for another key.
    BadMac1,
    /// The same initiation was seen before.
    Replay,
    /// Under load, this source used its share of handshake work.
    RateLimited,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A responder's guard: checks the MACs, measures its load, hands out cookies, limits each
/// source, remembers initiations against replays. Sans-IO: the caller gives it `now`.
pub struct Guard {
    own: PeerKeys,
    limits: Limits,
    secret: [u8; 32],
    secret_born: Option<Instant>,
    /// Initiations counted in the current second, and when that second began.
    window: (u32, Option<Instant>),
    under_load_until: Option<Instant>,
    sources: HashMap<IpAddr, Bucket>,
    /// Cookie replies left to each source under load.
    cookie_sources: HashMap<IpAddr, Bucket>,
    seen: HashSet<[u8; MAC_LEN]>,
    seen_order: VecDeque<([u8; MAC_LEN], Instant)>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("limits", &self.limits).finish()
    }
}

/// How long a seen `mac1` is remembered: the request timestamps' window (older replays are
/// refused by their timestamp).
const REPLAY_WINDOW: Duration = Duration::from_secs(30);

impl Guard {
    /// A guard for the responder whose public key is `own`.
    pub fn new(own: &PublicKey, limits: Limits) -> Self {
        Self {
            own: PeerKeys::new(own),
            limits,
            secret: rand::random(),
            secret_born: None,
            window: (0, None),
            under_load_until: None,
            sources: HashMap::new(),
            cookie_sources: HashMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        }
    }

    /// True while the responder asks for cookies.
    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|t| t > now)
    }

    fn cookie_for(&mut self, from: SocketAddr, now: Instant) -> [u8; MAC_LEN] {
        if self.secret_born.is_none_or(|b| now.saturating_duration_since(b) >= COOKIE_LIFE) {
            self.secret = rand::random();
            self.secret_born = Some(now);
        }
        let ip = match from.ip().to_canonical() {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        mac(&self.secret, &[&ip, &from.port().to_le_bytes()])
    }

    /// Checks an initiation (`packet` whole, MACs at its end) from `from`.
    pub fn check(&mut self, from: SocketAddr, packet: &[u8], now: Instant) -> Verdict {
        let n = packet.len();
        if n < 8 + MACS_LEN {
            return Verdict::Drop(Why::Short);
        }
        let m1 = &packet[n - MACS_LEN..n - MAC_LEN];
        if !eq(m1, &mac(&self.own.mac1, &[&packet[..n - MACS_LEN]])) {
            return Verdict::Drop(Why::BadMac1);
        }
        let m1: [u8; MAC_LEN] = m1.try_into().expect("16 bytes");
        // The same bytes again: dropped before anything else, without a word (a legitimate
        // initiator never sends the same initiation twice: each try is a fresh handshake).
        if !self.remember(m1, now) {
            return Verdict::Drop(Why::Replay);
        }
        // Load: initiations per second that passed mac1.
        match self.window {
            (_, Some(start)) if now.saturating_duration_since(start) < Duration::from_secs(1) => self.window.0 += 1,
            _ => self.window = (1, Some(now)),
        }
        if self.window.0 > self.limits.load_per_s {
            self.under_load_until = Some(now + Duration::from_secs(1));
        }
        if self.under_load(now) {
            let cookie = self.cookie_for(from, now);
            if !eq(&packet[n - MAC_LEN..], &mac(&cookie, &[&packet[..n - MAC_LEN]])) {
                let rate = self.limits.cookies_per_source_per_s;
                if !take_token(&mut self.cookie_sources, from.ip(), rate, rate, now) {
                    return Verdict::Drop(Why::RateLimited);
                }
                return Verdict::Cookie(self.cookie_reply(packet, &cookie, &m1));
            }
            let (rate, burst) = (self.limits.per_source_per_s, self.limits.per_source_burst);
            if !take_token(&mut self.sources, from.ip(), rate, burst, now) {
                return Verdict::Drop(Why::RateLimited);
            }
        }
        Verdict::Accept
    }

    fn cookie_reply(&self, packet: &[u8], cookie: &[u8; MAC_LEN], m1: &[u8; MAC_LEN]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let aead = XChaCha20Poly1305::new_from_slice(&self.own.cookie).expect("32-byte key");
        let sealed =
            aead.encrypt(XNonce::from_slice(&nonce), Payload { msg: cookie, aad: m1 }).expect("in-memory encryption");
        let mut out = Vec::with_capacity(COOKIE_REPLY_LEN);
        out.extend_from_slice(&[TYPE_COOKIE, VERSION, 0, 0]);
        out.extend_from_slice(&packet[4..8]); // the initiation's sender id
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Records `m1`; false if it was seen within the replay window.
    fn remember(&mut self, m1: [u8; MAC_LEN], now: Instant) -> bool {
        while let Some((old, at)) = self.seen_order.front().copied() {
            if now.saturating_duration_since(at) < REPLAY_WINDOW && self.seen_order.len() < self.limits.replay_memory {
                break;
            }
            self.seen.remove(&old);
            self.seen_order.pop_front();
        }
        if !self.seen.insert(m1) {
            return false;
        }
        self.seen_order.push_back((m1, now));
        true
    }
}

/// Sources a limiter remembers at most.
const MAX_SOURCES: usize = 65536;

/// Takes one token from `ip`'s bucket (`rate` a second, at most `burst`) in `buckets`.
fn take_token(buckets: &mut HashMap<IpAddr, Bucket>, ip: IpAddr, rate: u32, burst: u32, now: Instant) -> bool {
    let (rate, burst) = (rate as f64, burst as f64);
    if buckets.len() >= MAX_SOURCES {
        // Forget the sources that have refilled anyway; if that is not enough (a flood from
        // spoofed addresses), forget them all: the work stays constant per packet.
        buckets.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
        if buckets.len() >= MAX_SOURCES / 2 {
            buckets.clear();
        }
    }
    // An IPv6 host has a /64 to pick addresses from: it counts as one source.
    let ip = match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !0xffff_ffff_ffff_ffff)),
        v4 => v4,
    };
    let b = buckets.entry(ip).or_insert(Bucket { tokens: burst, at: now });
    b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn init(to: &PeerKeys, cookie: Option<&[u8; MAC_LEN]>, fill: u8) -> (Vec<u8>, [u8; MAC_LEN]) {
        let mut p = vec![1, VERSION, 0, 0, 9, 0, 0, 0];
        p.extend_from_slice(&[fill; 48]);
        p.extend_from_slice(&[0; MACS_LEN]);
        let m1 = seal_init(&mut p, to, cookie);
        (p, m1)
    }

    #[test]
    fn mac1_replays_cookies_and_rate() {
        let resp = SecretKey::generate().public();
        let keys = PeerKeys::new(&resp);
        let limits = Limits {
            load_per_s: 4,
            per_source_per_s: 1,
            per_source_burst: 2,
            replay_memory: 100,
            cookies_per_source_per_s: 2,
        };
        let mut g = Guard::new(&resp, limits);
        let t0 = Instant::now();
        let from: SocketAddr = "192.0.2.7:7600".parse().unwrap();
        let (p, _) = init(&keys, None, 1);
        assert_eq!(g.check(from, &p, t0), Verdict::Accept);
        assert_eq!(g.check(from, &p, t0), Verdict::Drop(Why::Replay));
        let (bad, _) = init(&PeerKeys::new(&SecretKey::generate().public()), None, 2);
        assert_eq!(g.check(from, &bad, t0), Verdict::Drop(Why::BadMac1));
        assert_eq!(g.check(from, &[1, 2, 3], t0), Verdict::Drop(Why::Short));
        // Past 4 a second (replays do not count: they cost nothing): under load, a cookie
        // reply instead of work.
        assert_eq!(g.check(from, &init(&keys, None, 3).0, t0), Verdict::Accept);
        assert_eq!(g.check(from, &init(&keys, None, 4).0, t0), Verdict::Accept);
        assert_eq!(g.check(from, &init(&keys, None, 11).0, t0), Verdict::Accept);
        let (p, m1) = init(&keys, None, 5);
        let Verdict::Cookie(reply) = g.check(from, &p, t0) else { panic!("no cookie") };
        // The same initiation again: silence, not another cookie.
        assert_eq!(g.check(from, &p, t0), Verdict::Drop(Why::Replay));
        assert!(reply.len() < p.len(), "no amplification");
        assert_eq!(cookie_receiver(&reply), Some(9));
        assert!(open_cookie(&reply, &keys, &[0; MAC_LEN]).is_none(), "bound to the initiation");
        let cookie = open_cookie(&reply, &keys, &m1).expect("readable by the initiator");
        // With the cookie: accepted, then rate limited per source.
        assert_eq!(g.check(from, &init(&keys, Some(&cookie), 6).0, t0), Verdict::Accept);
        assert_eq!(g.check(from, &init(&keys, Some(&cookie), 7).0, t0), Verdict::Accept);
        assert_eq!(g.check(from, &init(&keys, Some(&cookie), 8).0, t0), Verdict::Drop(Why::RateLimited));
        // Cookie replies to one source are limited too (2 a second here): no reflector.
        assert!(matches!(g.check(from, &init(&keys, None, 12).0, t0), Verdict::Cookie(_)));
        assert_eq!(g.check(from, &init(&keys, None, 13).0, t0), Verdict::Drop(Why::RateLimited));
        // Another source's cookie is not this one's.
        let other: SocketAddr = "192.0.2.8:7600".parse().unwrap();
        assert!(matches!(g.check(other, &init(&keys, Some(&cookie), 9).0, t0), Verdict::Cookie(_)));
        // The load passes.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(g.check(other, &init(&keys, None, 10).0, later), Verdict::Accept);
    }
}
