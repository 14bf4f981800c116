//! The request/response engine under every signaling hop: a request rides in Noise IK message 1,
//! its response in message 2. The initiator retransmits with backoff (a fresh handshake with a
//! newer timestamp each time, so the responder's replay filter accepts it); the responder keeps no
//! state between exchanges except, per trusted key, which timestamps it has seen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::cookie;
use crate::data::TunnelKeys;
use crate::keys::{PublicKey, SecretKey};
use crate::msg::{self, ErrorCode, ErrorReply, Request, Response};
use crate::noise::{self, Handshake};
use crate::wire;

/// The two clocks a core needs: a monotonic one for timers and the wall clock for timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time, for deadlines and retransmissions.
    pub mono: Instant,
    /// Wall-clock time in microseconds since the Unix epoch, for request timestamps.
    pub unix_us: u64,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dst: SocketAddr,
    /// The whole UDP payload (a signaling packet with its wire header).
    pub payload: Vec<u8>,
}

/// Retransmission schedule: 250 ms, doubling, at most 2 s apart, 6 tries in all (about 8 s).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first try.
    pub initial: Duration,
    /// Longest wait between two tries; the wait doubles up to it.
    pub max: Duration,
    /// Transmissions in all, the first included; after the last one's wait the exchange fails.
    pub tries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(2), tries: 6 }
    }
}

impl Backoff {
    /// Delay after try number `attempt` (0-based), or None when it was the last.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        (attempt + 1 < self.tries).then(|| self.initial.saturating_mul(1 << attempt.min(16)).min(self.max))
    }
}

/// Strictly increasing timestamps: the wall clock, or one more than the last one given if the
/// clock has not moved on or went back. A clock that steps back never makes them go back.
/// (Toward a responder that asked for later ones, [`Initiator`] adds what it asked.)
#[derive(Debug, Default)]
pub struct TsSource {
    last: u64,
}

impl TsSource {
    /// The timestamp for a message sent at `unix_us`.
    pub fn next(&mut self, unix_us: u64) -> u64 {
        self.last = self.last.saturating_add(1).max(unix_us);
        self.last
    }
}

/// Floors above this (year 146 000 or so) are not taken: a responder cannot push our
/// timestamps to the end of the counter.
const MAX_FLOOR_US: u64 = 1 << 62;

/// What the replay filter makes of a request's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsVerdict {
    /// Not seen before and recent enough: take the request.
    Fresh,
    /// Seen already, or too old and answered lately: drop it without a word.
    Replay,
    /// Too old (a replay, or a sender whose clock is behind or stepped back): drop the request
    /// but answer [`Response::Stale`] with this floor, so that a real sender catches up at once.
    /// At most once a second per key.
    Stale(u64),
}

/// Rejects requests whose timestamp was already seen from the same key, or that are much older
/// than the newest one seen (replays), while tolerating reordering of recent ones.
///
/// It keeps no state across restarts and needs none: the first request of a key after a start
/// must be newer than the start itself (less 2 s for the first request's flight, and no older
/// than 30 s), so nothing captured before a restart can be replayed after it. A sender whose clock is behind is told the floor
/// ([`TsVerdict::Stale`]) and catches up; an attacker replaying old requests gets an answer it
/// cannot read, no larger than what it sent, at most once a second per key.
#[derive(Debug, Default)]
pub struct TsFilter {
    keys: HashMap<PublicKey, KeyTs>,
    /// Wall-clock time of the first request looked at.
    start: Option<u64>,
}

#[derive(Debug, Default)]
struct KeyTs {
    highest: u64,
    seen: BTreeSet<u64>,
    /// When each source address was last answered `Stale` for this key: replays from one
    /// address do not use up the answers a real sender elsewhere needs.
    stale_at: HashMap<IpAddr, u64>,
}

/// Source addresses remembered per key for the `Stale` answers; past it they are forgotten.
const STALE_SOURCES: usize = 16;

const TS_WINDOW_US: u64 = 30_000_000;
const STALE_EVERY_US: u64 = 1_000_000;
const START_SLACK_US: u64 = 2_000_000;

impl TsFilter {
    /// Looks at a request from `key` (already authenticated and trusted) with timestamp `ts`,
    /// received from `src` at wall-clock `unix_us`; records it when fresh.
    pub fn check(&mut self, key: &PublicKey, src: IpAddr, ts: u64, unix_us: u64) -> TsVerdict {
        // The first request seen was sent a moment before it came: a start a little earlier
        // spares it a round trip.
        let start = *self.start.get_or_insert(unix_us.saturating_sub(START_SLACK_US));
        let e = self.keys.entry(*key).or_default();
        let floor = if e.highest == 0 {
            unix_us.saturating_sub(TS_WINDOW_US).max(start)
        } else {
            e.highest.saturating_sub(TS_WINDOW_US)
        };
        if ts < floor {
            let due = e.stale_at.get(&src).is_none_or(|at| unix_us.abs_diff(*at) >= STALE_EVERY_US);
            if due {
                if e.stale_at.len() >= STALE_SOURCES {
                    e.stale_at.clear();
                }
                e.stale_at.insert(src, unix_us);
                // Our clock now (the floor of a key not seen is 30 s behind it, so a resend a
                // round trip later still passes), or past the newest seen.
                return TsVerdict::Stale(unix_us.max(e.highest.saturating_add(1)));
            }
            return TsVerdict::Replay;
        }
        if !e.seen.insert(ts) {
            return TsVerdict::Replay;
        }
        e.highest = e.highest.max(ts);
        let low = e.highest.saturating_sub(TS_WINDOW_US);
        e.seen = e.seen.split_off(&low);
        TsVerdict::Fresh
    }
}

/// Allocates local ids (exchange senders and tunnel receivers share one space).
#[derive(Debug, Default)]
pub struct Ids {
    used: HashSet<u32>,
}

impl Ids {
    /// A random id, non-zero and not in use, reserved until [`Ids::release`].
    pub fn alloc(&mut self) -> u32 {
        loop {
            let id: u32 = rand::random();
            if id != 0 && self.used.insert(id) {
                return id;
            }
        }
    }
    /// Reserves a given id (one a relay chose); false if it is zero or in use here already.
    pub fn reserve(&mut self, id: u32) -> bool {
        id != 0 && self.used.insert(id)
    }
    /// Returns `id` to the free space (exchange finished, tunnel gone).
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

#[derive(Debug)]
struct Pending<T> {
    tag: T,
    dst: SocketAddr,
    remote: PublicKey,
    request: Request,
    hs: Handshake,
    attempt: u32,
    next_at: Instant,
    first_sent: Instant,
    /// The `mac1` of the last initiation sent: a cookie reply to it is bound to it.
    mac1: [u8; cookie::MAC_LEN],
    /// A [`Response::Stale`] came and the request went again at once; later ones wait their
    /// turn in the backoff.
    stale_retried: bool,
}

/// A finished exchange, from the initiator's side.
#[derive(Debug)]
pub struct Completed<T> {
    /// The caller's label of the exchange, as given to [`Initiator::start`].
    pub tag: T,
    /// Our id in the exchange (the tunnel's local receiver id, for tunnel exchanges).
    pub id: u32,
    /// The responder's id (where our data goes, for tunnel exchanges).
    pub remote_id: u32,
    /// Where the response came from (the responder's address as seen here).
    pub from: SocketAddr,
    /// The responder's answer; a response of an unknown message version becomes an
    /// [`ErrorCode::Version`] error.
    pub response: Response,
    /// The transport keys of the handshake: a tunnel's data keys, unused for signaling.
    pub keys: TunnelKeys,
    /// Time from the first transmission to the response, retransmissions included.
    pub rtt: Duration,
}

/// An exchange that had all its tries without a response (or could not build a retry).
#[derive(Debug)]
pub struct Failed<T> {
    /// The caller's label of the exchange.
    pub tag: T,
    /// Our id in the exchange, for the caller to release.
    pub id: u32,
    /// The address that did not answer.
    pub dst: SocketAddr,
}

/// Outstanding requests of one side.
#[derive(Debug)]
pub struct Initiator<T> {
    pending: HashMap<u32, Pending<T>>,
    /// Cookies responders under load gave us, by their address, with when they came.
    cookies: HashMap<SocketAddr, ([u8; cookie::MAC_LEN], Instant)>,
    /// How far ahead of our timestamps each responder that answered `Stale` wants them (µs):
    /// only toward it.
    offsets: HashMap<PublicKey, u64>,
    /// The retransmission schedule of every request started here.
    pub backoff: Backoff,
}

impl<T> Default for Initiator<T> {
    fn default() -> Self {
        Self::with_backoff(Backoff::default())
    }
}

/// Message 1 of a fresh handshake with `remote`, as the initiation datagram from `id` with its
/// MACs; returns the state, the datagram and its `mac1`.
fn initiation(
    id: u32,
    local: &SecretKey,
    remote: &PublicKey,
    request: &Request,
    ts: u64,
    cookie: Option<&[u8; cookie::MAC_LEN]>,
) -> Result<(Handshake, Vec<u8>, [u8; cookie::MAC_LEN]), noise::NoiseError> {
    let (hs, m1) = noise::initiate(local, remote, &msg::encode(ts, request))?;
    let mut payload = wire::encode_init(id, &m1);
    let mac1 = cookie::seal_init(&mut payload, &cookie::PeerKeys::new(remote), cookie);
    Ok((hs, payload, mac1))
}

/// Why a response was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The receiver id matches no outstanding request (late, duplicated or forged).
    #[error("response to no outstanding request")]
    Unexpected,
    /// The responder found our timestamp too old and said from which one it takes them: the
    /// request stays outstanding and goes again (with a timestamp past that floor) at the next
    /// [`Initiator::on_timeout`], which is due at once.
    #[error("the responder takes timestamps from {0} on; sending again")]
    Stale(u64),
    /// The Noise message 2 did not decrypt or authenticate; the request stays outstanding.
    #[error(transparent)]
    Noise(#[from] noise::NoiseError),
    /// The response decrypted but its payload could not be decoded.
    #[error(transparent)]
    Msg(#[from] msg::MsgError),
}

impl<T> Initiator<T> {
    /// No request outstanding; every request retransmitted on `backoff`.
    pub fn with_backoff(backoff: Backoff) -> Self {
        Self { pending: HashMap::new(), cookies: HashMap::new(), offsets: HashMap::new(), backoff }
    }

    /// The timestamp for an initiation to `remote` sent now, past any floor it gave.
    fn ts(&self, ts: &mut TsSource, remote: &PublicKey, now: Now) -> u64 {
        ts.next(now.unix_us).saturating_add(self.offsets.get(remote).copied().unwrap_or(0))
    }

    /// The cookie `dst` gave us, while it is fresh.
    fn cookie(&self, dst: SocketAddr, now: Instant) -> Option<[u8; cookie::MAC_LEN]> {
        self.cookies
            .get(&dst)
            .filter(|(_, at)| now.saturating_duration_since(*at) < cookie::COOKIE_LIFE)
            .map(|(c, _)| *c)
    }

    /// A cookie reply came from `from` (`packet` whole): if it answers one of our initiations,
    /// keep the cookie and send that initiation again at once, with it.
    pub fn on_cookie(
        &mut self,
        packet: &[u8],
        from: SocketAddr,
        local: &SecretKey,
        ts: &mut TsSource,
        now: Now,
    ) -> Option<Transmit> {
        let id = cookie::cookie_receiver(packet)?;
        let p = self.pending.get(&id).filter(|p| p.dst == from)?;
        let c = cookie::open_cookie(packet, &cookie::PeerKeys::new(&p.remote), &p.mac1)?;
        self.cookies.retain(|_, (_, at)| now.mono.saturating_duration_since(*at) < cookie::COOKIE_LIFE);
        self.cookies.insert(from, (c, now.mono));
        let remote = self.pending[&id].remote;
        let stamp = self.ts(ts, &remote, now);
        let p = self.pending.get_mut(&id).expect("present");
        let (hs, payload, mac1) = initiation(id, local, &p.remote, &p.request, stamp, Some(&c)).ok()?;
        p.hs = hs;
        p.mac1 = mac1;
        Some(Transmit { dst: p.dst, payload })
    }

    /// Sends `request` to `dst`, whose static key is `remote`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        tag: T,
        id: u32,
        dst: SocketAddr,
        remote: PublicKey,
        request: Request,
        local: &SecretKey,
        ts: &mut TsSource,
        now: Now,
    ) -> Result<Transmit, noise::NoiseError> {
        let c = self.cookie(dst, now.mono);
        let stamp = self.ts(ts, &remote, now);
        let (hs, payload, mac1) = initiation(id, local, &remote, &request, stamp, c.as_ref())?;
        let next_at = now.mono + self.backoff.initial;
        let p = Pending {
            tag,
            dst,
            remote,
            request,
            hs,
            attempt: 0,
            next_at,
            first_sent: now.mono,
            mac1,
            stale_retried: false,
        };
        self.pending.insert(id, p);
        Ok(Transmit { dst, payload })
    }

    /// Handles a handshake response addressed to `receiver`.
    pub fn on_response(
        &mut self,
        sender: u32,
        receiver: u32,
        noise_msg: &[u8],
        from: SocketAddr,
        now: Now,
    ) -> Result<Completed<T>, ExchangeError> {
        let p = self.pending.get_mut(&receiver).ok_or(ExchangeError::Unexpected)?;
        // A failed read leaves the request outstanding: a forged or stale response must not
        // cancel it.
        let (payload, keys) = noise::finish(&mut p.hs, noise_msg)?;
        if let Ok(msg::Envelope { body: Response::Stale(floor), .. }) = msg::decode::<Response>(&payload) {
            if floor < MAX_FLOOR_US {
                // The base of our next timestamps is at least `now.unix_us`: with this offset
                // they reach the floor.
                let offset = self.offsets.entry(p.remote).or_insert(0);
                *offset = (*offset).max(floor.saturating_sub(now.unix_us));
            }
            if !p.stale_retried {
                p.stale_retried = true;
                p.next_at = now.mono;
                // The resend is one more try, even after what was the last.
                p.attempt = p.attempt.min(self.backoff.tries.saturating_sub(2));
            }
            return Err(ExchangeError::Stale(floor));
        }
        let p = self.pending.remove(&receiver).expect("present");
        let response = match msg::decode::<Response>(&payload) {
            Ok(env) => env.body,
            Err(msg::MsgError::Version(v)) => Response::Error(ErrorReply {
                code: ErrorCode::Version,
                message: format!("peer speaks message version {v}"),
            }),
            Err(e) => return Err(e.into()),
        };
        Ok(Completed {
            tag: p.tag,
            id: receiver,
            remote_id: sender,
            from,
            response,
            keys,
            rtt: now.mono.saturating_duration_since(p.first_sent),
        })
    }

    /// When [`Initiator::on_timeout`] must next be called: the earliest retransmission due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_at).min()
    }

    /// Retransmits what is due and gives up on what has had all its tries.
    pub fn on_timeout(&mut self, local: &SecretKey, ts: &mut TsSource, now: Now) -> (Vec<Transmit>, Vec<Failed<T>>) {
        let due: Vec<u32> = self.pending.iter().filter(|(_, p)| p.next_at <= now.mono).map(|(id, _)| *id).collect();
        let (mut out, mut failed) = (Vec::new(), Vec::new());
        for id in due {
            let c = self.pending.get(&id).and_then(|p| self.cookie(p.dst, now.mono));
            let remote = self.pending[&id].remote;
            let stamp = self.ts(ts, &remote, now);
            let p = self.pending.get_mut(&id).expect("present");
            match self.backoff.delay(p.attempt) {
                Some(d) => match initiation(id, local, &p.remote, &p.request, stamp, c.as_ref()) {
                    Ok((hs, payload, mac1)) => {
                        p.hs = hs;
                        p.mac1 = mac1;
                        p.attempt += 1;
                        p.next_at = now.mono + d;
                        out.push(Transmit { dst: p.dst, payload });
                    }
                    Err(_) => {
                        let p = self.pending.remove(&id).expect("present");
                        failed.push(Failed { tag: p.tag, id, dst: p.dst });
                    }
                },
                None => {
                    let p = self.pending.remove(&id).expect("present");
                    failed.push(Failed { tag: p.tag, id, dst: p.dst });
                }
            }
        }
        (out, failed)
    }

    /// Forgets every request whose tag `drop` picks; returns their ids, for the caller to
    /// release.
    pub fn cancel_where(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<u32> {
        let ids: Vec<u32> = self.pending.iter().filter(|(_, p)| drop(&p.tag)).map(|(id, _)| *id).collect();
        for id in &ids {
            self.pending.remove(id);
        }
        ids
    }

    /// Forgets the request with our id `id` (its response will be dropped as unexpected);
    /// returns its tag if it was outstanding.
    pub fn cancel(&mut self, id: u32) -> Option<T> {
        self.pending.remove(&id).map(|p| p.tag)
    }

    /// True if no request is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// An accepted request, waiting for its response.
#[derive(Debug)]
pub struct Incoming {
    /// Where the request came from; the response goes back there.
    pub from: SocketAddr,
    /// The initiator's id (the response's receiver).
    pub sender: u32,
    /// The initiator's static key, authenticated by the handshake: who is asking.
    pub key: PublicKey,
    /// The request's timestamp (µs since the Unix epoch), for [`TsFilter`]; 0 if the
    /// payload could not be decoded.
    pub ts: u64,
    /// The request, or why its payload could not be decoded (answer with an error).
    pub request: Result<Request, msg::MsgError>,
    hs: Handshake,
}

/// Reads a handshake initiation.
pub fn accept(
    local: &SecretKey,
    from: SocketAddr,
    sender: u32,
    noise_msg: &[u8],
) -> Result<Incoming, noise::NoiseError> {
    let (hs, key, payload) = noise::accept(local, noise_msg)?;
    let (ts, request) = match msg::decode::<Request>(&payload) {
        Ok(env) => (env.ts, Ok(env.body)),
        Err(e) => (0, Err(e)),
    };
    Ok(Incoming { from, sender, key, ts, request, hs })
}

impl Incoming {
    /// The replay filter's verdict on this request's timestamp, received at `unix_us`. A
    /// request whose payload could not be decoded is not looked at (it is answered with an
    /// error and acts on nothing).
    pub fn freshness(&self, filter: &mut TsFilter, unix_us: u64) -> TsVerdict {
        if self.request.is_err() {
            return TsVerdict::Fresh;
        }
        filter.check(&self.key, self.from.ip(), self.ts, unix_us)
    }

    /// Answers the request; `id` is our id in the exchange. Returns the datagram and our keys.
    pub fn respond(
        self,
        id: u32,
        response: &Response,
        ts: &mut TsSource,
        now: Now,
    ) -> Result<(Transmit, TunnelKeys), noise::NoiseError> {
        let (m2, keys) = noise::respond(self.hs, &msg::encode(ts.next(now.unix_us), response))?;
        Ok((Transmit { dst: self.from, payload: wire::encode_resp(id, self.sender, &m2) }, keys))
    }

    /// Answers a request whose timestamp was too old with the floor to use
    /// ([`TsVerdict::Stale`]); `None` if the response could not be built.
    pub fn stale(self, id: u32, floor: u64, ts: &mut TsSource, now: Now) -> Option<Transmit> {
        self.respond(id, &Response::Stale(floor), ts, now).ok().map(|(t, _)| t)
    }

    /// Answers the request with an [`ErrorReply`]; `None` if the response could not be built.
    pub fn error(
        self,
        id: u32,
        code: ErrorCode,
        message: impl Into<String>,
        ts: &mut TsSource,
        now: Now,
    ) -> Option<Transmit> {
        let r = Response::Error(ErrorReply { code, message: message.into() });
        self.respond(id, &r, ts, now).ok().map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        let b = Backoff::default();
        let d: Vec<_> = (0..6).map(|a| b.delay(a)).collect();
        assert_eq!(d[0], Some(Duration::from_millis(250)));
        assert_eq!(d[3], Some(Duration::from_secs(2)));
        assert_eq!(d[5], None);
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn ts_filter_rejects_replays_allows_reorder() {
        let mut f = TsFilter::default();
        let k = PublicKey([1; 32]);
        let now = 100_000_000;
        assert_eq!(f.check(&k, IP, 100_000_000, now), TsVerdict::Fresh);
        assert_eq!(f.check(&k, IP, 100_000_000, now), TsVerdict::Replay);
        assert_eq!(f.check(&k, IP, 99_000_000, now), TsVerdict::Fresh);
        // Far older than the newest: answered with the floor once, then silence for a second.
        assert_eq!(f.check(&k, IP, 50_000_000, now), TsVerdict::Stale(100_000_001));
        assert_eq!(f.check(&k, IP, 50_000_000, now + 10), TsVerdict::Replay);
        // Replays from one address do not use up the answers to another.
        assert_eq!(f.check(&k, IP2, 50_000_000, now + 10), TsVerdict::Stale(100_000_010));
        assert_eq!(f.check(&k, IP, 50_000_000, now + 1_000_000), TsVerdict::Stale(101_000_000));
        assert_eq!(f.check(&PublicKey([2; 32]), IP, 100_000_000, now), TsVerdict::Fresh);
        // The end of the counter breaks nothing.
        assert_eq!(f.check(&PublicKey([3; 32]), IP, u64::MAX, now), TsVerdict::Fresh);
        assert_eq!(f.check(&PublicKey([3; 32]), IP, 5, now), TsVerdict::Stale(u64::MAX));
    }

    #[test]
    fn nothing_from_before_a_restart_is_taken_after_it() {
        // A request captured at t = 1000 s, the responder restarted at t = 1010 s.
        let k = PublicKey([1; 32]);
        let mut f = TsFilter::default();
        let restart = 1_010_000_000;
        assert!(matches!(f.check(&k, IP, 1_000_000_000, restart), TsVerdict::Stale(fl) if fl >= restart));
        assert_eq!(f.check(&k, IP, 1_000_000_000, restart + 1), TsVerdict::Replay);
        assert_eq!(f.check(&k, IP, restart + 5, restart + 10), TsVerdict::Fresh);
    }

    #[test]
    fn a_floor_taken_late_still_passes_and_only_toward_its_responder() {
        // A responder up for an hour; a sender a minute behind, 50 ms away.
        let (a, b, c) = (SecretKey::generate(), SecretKey::generate(), SecretKey::generate());
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let t0 = Instant::now();
        let b_start = 1_800_000_000_000_000;
        let mut filter = TsFilter::default();
        filter.check(&PublicKey([9; 32]), IP, b_start, b_start);
        let b_now = Now { mono: t0, unix_us: b_start + 3_600_000_000 };
        let a_now = Now { mono: t0, unix_us: b_now.unix_us - 60_000_000 };
        let mut ts = TsSource::default();
        let mut ini: Initiator<()> = Initiator::default();
        let t = ini.start((), 42, addr, b.public(), Request::Probe, &a, &mut ts, a_now).unwrap();
        let r = exchange_once(&mut ini, &b, &mut filter, t, a_now, b_now);
        assert!(matches!(r, Err(ExchangeError::Stale(_))), "{r:?}");
        let (mut re, _) = ini.on_timeout(&a, &mut ts, a_now);
        let later = Now { mono: t0, unix_us: b_now.unix_us + 50_000 };
        let r = exchange_once(&mut ini, &b, &mut filter, re.remove(0), a_now, later).unwrap();
        assert_eq!(r.response, Response::RouteAck);
        // Toward another responder, timestamps stay on our own clock.
        let t = ini.start((), 43, addr, c.public(), Request::Probe, &a, &mut ts, a_now).unwrap();
        let wire::Packet::Init { sender, noise } = wire::Packet::parse(&t.payload).unwrap() else { panic!() };
        let inc = accept(&c, addr, sender, noise).unwrap();
        assert!(inc.ts < b_now.unix_us - 30_000_000, "{} leaked an offset", inc.ts);
    }

    #[test]
    fn a_responder_cannot_push_timestamps_to_the_end_of_the_counter() {
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let now = Now { mono: Instant::now(), unix_us: 1_800_000_000_000_000 };
        let mut ts = TsSource::default();
        let mut ini: Initiator<()> = Initiator::default();
        let t = ini.start((), 42, addr, b.public(), Request::Probe, &a, &mut ts, now).unwrap();
        let wire::Packet::Init { sender, noise } = wire::Packet::parse(&t.payload).unwrap() else { panic!() };
        let inc = accept(&b, addr, sender, noise).unwrap();
        let reply = inc.stale(7, u64::MAX, &mut TsSource::default(), now).unwrap();
        let wire::Packet::Resp { sender, receiver, noise } = wire::Packet::parse(&reply.payload).unwrap() else {
            panic!()
        };
        assert!(matches!(ini.on_response(sender, receiver, noise, addr, now), Err(ExchangeError::Stale(_))));
        let (re, _) = ini.on_timeout(&a, &mut ts, now);
        let wire::Packet::Init { sender, noise } = wire::Packet::parse(&re[0].payload).unwrap() else { panic!() };
        assert!(accept(&b, addr, sender, noise).unwrap().ts < MAX_FLOOR_US);
    }

    /// One request from `a` to `b` through `b`'s filter; what `b` answered and `a` made of it.
    fn exchange_once(
        ini: &mut Initiator<()>,
        b: &SecretKey,
        filter: &mut TsFilter,
        t: Transmit,
        a_now: Now,
        b_now: Now,
    ) -> Result<Completed<()>, ExchangeError> {
        let addr = t.dst;
        let wire::Packet::Init { sender, noise } = wire::Packet::parse(&t.payload).unwrap() else { panic!() };
        let inc = accept(b, addr, sender, noise).unwrap();
        let mut bts = TsSource::default();
        let reply = match inc.freshness(filter, b_now.unix_us) {
            TsVerdict::Fresh => inc.respond(7, &Response::RouteAck, &mut bts, b_now).unwrap().0,
            TsVerdict::Stale(floor) => inc.stale(7, floor, &mut bts, b_now).unwrap(),
            TsVerdict::Replay => panic!("a fresh handshake taken for a replay"),
        };
        let wire::Packet::Resp { sender, receiver, noise } = wire::Packet::parse(&reply.payload).unwrap() else {
            panic!()
        };
        ini.on_response(sender, receiver, noise, addr, a_now)
    }

    #[test]
    fn a_clock_behind_or_stepped_back_catches_up_in_one_round_trip() {
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let t0 = Instant::now();
        let mut b_now = Now { mono: t0, unix_us: 1_800_000_000_000_000 };
        let mut filter = TsFilter::default();
        for a_unix in [
            // A Raspberry Pi without a real-time clock, before NTP: 1970.
            5_000_000,
            // The same node restarted (its timestamp state lost), its clock stepped an hour back.
            1_800_000_000_000_000 - 3_600_000_000,
        ] {
            let mut ts = TsSource::default();
            let mut ini: Initiator<()> = Initiator::default();
            let a_now = Now { mono: t0, unix_us: a_unix };
            b_now.unix_us += 2_000_000;
            let t = ini.start((), 42, addr, b.public(), Request::Probe, &a, &mut ts, a_now).unwrap();
            let r = exchange_once(&mut ini, &b, &mut filter, t, a_now, b_now);
            if a_unix < 1_000_000_000_000_000 {
                // Too old for a responder that never saw this key: it says from when.
                assert!(matches!(r, Err(ExchangeError::Stale(_))), "{r:?}");
                // Sent again at once, past the floor, and taken.
                assert_eq!(ini.poll_timeout(), Some(t0));
                let (mut re, failed) = ini.on_timeout(&a, &mut ts, a_now);
                assert!(failed.is_empty());
                let r = exchange_once(&mut ini, &b, &mut filter, re.remove(0), a_now, b_now).unwrap();
                assert_eq!(r.response, Response::RouteAck);
                // Later requests stay past the floor although the clock is still in 1970.
                let t = ini.start((), 44, addr, b.public(), Request::Probe, &a, &mut ts, a_now).unwrap();
                let wire::Packet::Init { sender, noise } = wire::Packet::parse(&t.payload).unwrap() else { panic!() };
                assert!(accept(&b, addr, sender, noise).unwrap().ts >= b_now.unix_us);
            } else {
                // Not locked out: taken after one more round trip.
                let r = r.or_else(|e| {
                    assert!(matches!(e, ExchangeError::Stale(_)), "{e:?}");
                    let (mut re, _) = ini.on_timeout(&a, &mut ts, a_now);
                    exchange_once(&mut ini, &b, &mut filter, re.remove(0), a_now, b_now)
                });
                assert_eq!(r.unwrap().response, Response::RouteAck);
            }
        }
    }

    #[test]
    fn request_response_with_retransmit() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let mut ini: Initiator<&str> = Initiator::default();
        let mut ts = TsSource::default();
        let t0 = Instant::now();
        let now = Now { mono: t0, unix_us: 1 };
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let req = Request::Direction(msg::DirectionRequest { target: "x.y".into(), relay: false, upgrade: false });
        let first = ini.start("t", 42, addr, b.public(), req.clone(), &a, &mut ts, now).unwrap();
        // Lost. Retransmit after the backoff.
        let later = Now { mono: t0 + Duration::from_millis(300), unix_us: 2 };
        let (re, failed) = ini.on_timeout(&a, &mut ts, later);
        assert!(failed.is_empty());
        assert_eq!(re.len(), 1);
        assert_ne!(re[0].payload, first.payload);
        let wire::Packet::Init { sender, noise } = wire::Packet::parse(&re[0].payload).unwrap() else { panic!() };
        let inc = accept(&b, addr, sender, noise).unwrap();
        assert_eq!(inc.key, a.public());
        assert_eq!(inc.request.as_ref().unwrap(), &req);
        let mut bts = TsSource::default();
        let (t, _) = inc.respond(7, &Response::RouteAck, &mut bts, later).unwrap();
        let wire::Packet::Resp { sender, receiver, noise } = wire::Packet::parse(&t.payload).unwrap() else { panic!() };
        let done = ini.on_response(sender, receiver, noise, addr, later).unwrap();
        assert_eq!((done.tag, done.remote_id, done.response), ("t", 7, Response::RouteAck));
        assert!(ini.is_empty());
    }
}
