//! The relay's sessions and the forwarding decision for each datagram. No sockets: the workers
//! give it a datagram and its source, it says where the datagram goes (or why it is dropped).
//!
//! The table is split into shards by id, each behind its own lock, and a session's endpoints sit
//! behind the session's own lock: no lock is taken by every packet of every session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use proto::relay::{route, BindKey, Route};
use proto::wire::BIND_LEN;

const SHARDS: usize = 64;

/// Why a datagram was dropped; the metrics count each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not an NTM datagram a relay handles (runt, unknown type, a bind answer).
    Malformed,
    /// Its id names no session here (expired, never allocated, or forged).
    UnknownSession,
    /// It came from another address than the side it claims to be (or to be meant for).
    WrongSource,
    /// The other side has not bound yet: nowhere to send it.
    Unbound,
    /// A bind whose MAC is not its side's.
    BadBind,
    /// A bind no newer than the last one accepted for its side.
    ReplayedBind,
    /// Too many signaling datagrams for the relay's control plane at once.
    Overload,
    /// The session went over its rate (`session_mbit`): one session cannot take the relay.
    SessionRate,
}

impl DropReason {
    /// Every reason, in the metrics' order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::UnknownSession,
        DropReason::WrongSource,
        DropReason::Unbound,
        DropReason::BadBind,
        DropReason::ReplayedBind,
        DropReason::Overload,
        DropReason::SessionRate,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSession => "unknown_session",
            DropReason::WrongSource => "wrong_source",
            DropReason::Unbound => "unbound",
            DropReason::BadBind => "bad_bind",
            DropReason::ReplayedBind => "replayed_bind",
            DropReason::Overload => "overload",
            DropReason::SessionRate => "session_rate",
        }
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it, unchanged, to this address.
    Forward(SocketAddr),
    /// A bind was accepted: send this answer back to its source (as long as the bind).
    BindAck([u8; BIND_LEN]),
    /// A handshake that belongs to no session: the relay's own signaling (a DC's allocation
    /// or ping).
    Control,
    /// Drop it, silently.
    Drop(DropReason),
}

#[derive(Debug, Default, Clone, Copy)]
struct SideState {
    endpoint: Option<SocketAddr>,
    bind_ts: u64,
}

/// One session: two sides, each with its id, bind key and (once bound) endpoint.
#[derive(Debug)]
pub struct Session {
    /// The two sides' ids (their tunnels' local ids).
    pub ids: [u32; 2],
    /// The two nodes' names, for logs.
    pub labels: [String; 2],
    keys: [BindKey; 2],
    sides: Mutex<[SideState; 2]>,
    /// The session's token bucket, in bytes, and when it was last filled.
    bucket: Mutex<(f64, Option<Instant>)>,
    /// Milliseconds since the table's epoch when the session last forwarded or was bound.
    last_active: AtomicU64,
    /// Datagrams forwarded, both ways.
    pub packets: AtomicU64,
    /// Bytes forwarded (UDP payloads), both ways.
    pub bytes: AtomicU64,
}

impl Session {
    /// The endpoints the sides bound from, if they did.
    pub fn endpoints(&self) -> [Option<SocketAddr>; 2] {
        let s = self.sides.lock().expect("not poisoned");
        [s[0].endpoint, s[1].endpoint]
    }
}

type Shard = RwLock<HashMap<u32, (Arc<Session>, usize)>>;

/// The sessions, by either side's id.
pub struct Table {
    shards: Box<[Shard]>,
    count: AtomicUsize,
    max: usize,
    idle: Duration,
    epoch: Instant,
    /// Bytes per second one session may forward (0: no limit), and its burst.
    rate: f64,
    burst: f64,
}

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The relay holds `max_sessions` already.
    #[error("the relay is full ({0} sessions)")]
    Full(usize),
}

impl Table {
    /// An empty table holding at most `max` sessions, each closed after `idle` without traffic
    /// or binds.
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
            max,
            idle,
            epoch: Instant::now(),
            rate: 0.0,
            burst: 0.0,
        }
    }

    /// Caps what one session forwards at `mbit` Mbit/s (0: no cap), with a burst of 50 ms
    /// (at least 64 KiB): past it, its datagrams are dropped, so that one session cannot take
    /// the relay's capacity from the others.
    pub fn with_session_rate(mut self, mbit: u64) -> Self {
        self.rate = mbit as f64 * 1e6 / 8.0;
        self.burst = (self.rate * 0.05).max(65536.0);
        self
    }

    /// Takes `len` bytes from the session's bucket; false when it is over its rate.
    fn within_rate(&self, s: &Session, len: usize, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let mut b = s.bucket.lock().expect("not poisoned");
        let elapsed = b.1.map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        b.0 = (b.0 + elapsed * self.rate).min(self.burst);
        b.1 = Some(now);
        if b.0 < len as f64 {
            return false;
        }
        b.0 -= len as f64;
        true
    }

    fn shard(&self, id: u32) -> &Shard {
        &self.shards[id as usize % SHARDS]
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True if no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens a session with two fresh ids, unique in the table, for the two bind keys.
    pub fn allocate(&self, keys: &[[u8; 32]; 2], labels: [String; 2], now: Instant) -> Result<[u32; 2], AllocError> {
        if self.len() >= self.max {
            return Err(AllocError::Full(self.max));
        }
        let session = loop {
            let ids: [u32; 2] = [rand::random(), rand::random()];
            if ids[0] == 0 || ids[1] == 0 || ids[0] == ids[1] {
                continue;
            }
            let s = Arc::new(Session {
                ids,
                labels: labels.clone(),
                keys: [BindKey::new(&keys[0]), BindKey::new(&keys[1])],
                sides: Mutex::new(Default::default()),
                bucket: Mutex::new((self.burst, None)),
                last_active: AtomicU64::new(self.ms(now)),
                packets: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            });
            if self.insert(0, &s) {
                if self.insert(1, &s) {
                    break s;
                }
                self.shard(ids[0]).write().expect("not poisoned").remove(&ids[0]);
            }
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(a = %session.labels[0], b = %session.labels[1], ids = ?session.ids, "session allocated");
        Ok(session.ids)
    }

    fn insert(&self, side: usize, s: &Arc<Session>) -> bool {
        let id = s.ids[side];
        let mut shard = self.shard(id).write().expect("not poisoned");
        if shard.contains_key(&id) {
            return false;
        }
        shard.insert(id, (s.clone(), side));
        true
    }

    /// Decides what to do with `b`, received from `from`.
    pub fn handle(&self, from: SocketAddr, b: &[u8], now: Instant) -> Verdict {
        let (id, to_side) = match route(b) {
            Route::Drop => return Verdict::Drop(DropReason::Malformed),
            Route::FromSide(id) => (id, false),
            Route::ToSide(id) => (id, true),
            Route::Bind(id) => return self.bind(from, id, b, now),
        };
        let shard = self.shard(id).read().expect("not poisoned");
        let Some((s, side)) = shard.get(&id) else {
            // A handshake with no session: maybe a DC talking to the relay itself.
            return if to_side { Verdict::Drop(DropReason::UnknownSession) } else { Verdict::Control };
        };
        // Data goes to the side its receiver id names, from the other; a handshake comes from
        // the side its sender id names, to the other.
        let (src_side, dst_side) = if to_side { (1 - side, *side) } else { (*side, 1 - side) };
        let (src, dst) = {
            let sides = s.sides.lock().expect("not poisoned");
            (sides[src_side].endpoint, sides[dst_side].endpoint)
        };
        if src != Some(from) {
            return if to_side { Verdict::Drop(DropReason::WrongSource) } else { Verdict::Control };
        }
        let Some(dst) = dst else { return Verdict::Drop(DropReason::Unbound) };
        if !self.within_rate(s, b.len(), now) {
            return Verdict::Drop(DropReason::SessionRate);
        }
        s.last_active.store(self.ms(now), Ordering::Relaxed);
        s.packets.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        Verdict::Forward(dst)
    }

    fn bind(&self, from: SocketAddr, id: u32, b: &[u8], now: Instant) -> Verdict {
        let shard = self.shard(id).read().expect("not poisoned");
        let Some((s, side)) = shard.get(&id) else { return Verdict::Drop(DropReason::UnknownSession) };
        let key = &s.keys[*side];
        if !key.verify(b) {
            return Verdict::Drop(DropReason::BadBind);
        }
        let ts = u64::from_le_bytes(b[8..16].try_into().expect("a bind is 32 bytes"));
        let mut sides = s.sides.lock().expect("not poisoned");
        let st = &mut sides[*side];
        if ts <= st.bind_ts {
            return Verdict::Drop(DropReason::ReplayedBind);
        }
        if st.endpoint != Some(from) {
            tracing::debug!(node = %s.labels[*side], %from, id, "bound");
        }
        st.bind_ts = ts;
        st.endpoint = Some(from);
        drop(sides);
        s.last_active.store(self.ms(now), Ordering::Relaxed);
        Verdict::BindAck(key.seal(true, id, ts))
    }

    /// Closes the sessions idle for the timeout; returns them (for logs and metrics).
    pub fn sweep(&self, now: Instant) -> Vec<Arc<Session>> {
        let limit = self.ms(now).saturating_sub(self.idle.as_millis() as u64);
        let mut gone = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write().expect("not poisoned");
            shard.retain(|_, (s, side)| {
                let keep = s.last_active.load(Ordering::Relaxed) > limit;
                if !keep && *side == 0 {
                    gone.push(s.clone());
                }
                keep
            });
        }
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        gone
    }

    /// Every open session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            v.extend(
                shard.read().expect("not poisoned").values().filter(|(_, side)| *side == 0).map(|(s, _)| s.clone()),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::wire::{encode_init, encode_resp, write_data_header};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwards_only_between_bound_sides() {
        let t = Table::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let keys = [[1u8; 32], [2u8; 32]];
        let [a, b] = t.allocate(&keys, ["a".into(), "b".into()], now).unwrap();
        let (ea, eb) = (sa("198.18.60.2:7600"), sa("[2001:db8:80::2]:7600"));
        let ka = BindKey::new(&keys[0]);
        let kb = BindKey::new(&keys[1]);
        let init = encode_init(a, &[0; 40]);
        // Nothing is forwarded before both sides bound.
        assert_eq!(t.handle(ea, &init, now), Verdict::Control);
        assert_eq!(t.handle(ea, &ka.seal(false, a, 5), now), Verdict::BindAck(ka.seal(true, a, 5)));
        assert_eq!(t.handle(ea, &init, now), Verdict::Drop(DropReason::Unbound));
        // A bind with the other side's key, a replayed one, one for nobody: dropped.
        assert_eq!(t.handle(eb, &ka.seal(false, b, 6), now), Verdict::Drop(DropReason::BadBind));
        assert_eq!(t.handle(ea, &ka.seal(false, a, 5), now), Verdict::Drop(DropReason::ReplayedBind));
        assert_eq!(t.handle(ea, &ka.seal(false, 77, 9), now), Verdict::Drop(DropReason::UnknownSession));
        assert!(matches!(t.handle(eb, &kb.seal(false, b, 1), now), Verdict::BindAck(_)));
        assert_eq!(t.handle(ea, &init, now), Verdict::Forward(eb));
        assert_eq!(t.handle(eb, &encode_resp(b, a, &[0; 40]), now), Verdict::Forward(ea));
        let mut d = [0u8; 48];
        write_data_header(&mut d, b, 1);
        assert_eq!(t.handle(ea, &d, now), Verdict::Forward(eb));
        assert_eq!(t.handle(eb, &d, now), Verdict::Drop(DropReason::WrongSource));
        assert_eq!(t.handle(sa("192.0.2.9:1"), &d, now), Verdict::Drop(DropReason::WrongSource));
        write_data_header(&mut d, a, 1);
        assert_eq!(t.handle(eb, &d, now), Verdict::Forward(ea));
        // A side that moves binds again from its new address.
        let ea2 = sa("198.18.60.2:40000");
        assert!(matches!(t.handle(ea2, &ka.seal(false, a, 6), now), Verdict::BindAck(_)));
        write_data_header(&mut d, b, 2);
        assert_eq!(t.handle(ea, &d, now), Verdict::Drop(DropReason::WrongSource));
        assert_eq!(t.handle(ea2, &d, now), Verdict::Forward(eb));
        assert_eq!(t.handle(ea2, &[4, 0], now), Verdict::Drop(DropReason::Malformed));
    }

    #[test]
    fn idle_sessions_go_and_the_table_is_bounded() {
        let t = Table::new(2, Duration::from_secs(10));
        let now = Instant::now();
        let k = [[0u8; 32]; 2];
        t.allocate(&k, Default::default(), now).unwrap();
        let [a, _] = t.allocate(&k, Default::default(), now).unwrap();
        assert_eq!(t.allocate(&k, Default::default(), now), Err(AllocError::Full(2)));
        assert!(matches!(
            t.handle(sa("192.0.2.1:1"), &BindKey::new(&k[0]).seal(false, a, 1), now + Duration::from_secs(8)),
            Verdict::BindAck(_)
        ));
        assert_eq!(t.sweep(now + Duration::from_secs(11)).len(), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.sweep(now + Duration::from_secs(19)).len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn one_session_cannot_take_more_than_its_rate() {
        // 1 Mbit/s: 125 000 bytes a second, a 64 KiB burst.
        let t = Table::new(10, Duration::from_secs(60)).with_session_rate(1);
        let now = Instant::now();
        let keys = [[1u8; 32], [2u8; 32]];
        let [a, b] = t.allocate(&keys, ["a".into(), "b".into()], now).unwrap();
        let (ea, eb) = (sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        t.handle(ea, &BindKey::new(&keys[0]).seal(false, a, 1), now);
        t.handle(eb, &BindKey::new(&keys[1]).seal(false, b, 1), now);
        let mut d = vec![0u8; 1000];
        write_data_header(&mut d, b, 1);
        let sent = (0..100).filter(|_| t.handle(ea, &d, now) == Verdict::Forward(eb)).count();
        assert_eq!(sent, 65, "the burst, then nothing");
        assert_eq!(t.handle(ea, &d, now), Verdict::Drop(DropReason::SessionRate));
        assert_eq!(t.handle(ea, &d, now + Duration::from_millis(10)), Verdict::Forward(eb), "1250 bytes refilled");
    }
}
