//! The request/response engine under every signaling hop: a request rides in Noise IK message 1,
//! its response in message 2. The initiator retransmits with backoff (a fresh handshake with a
//! newer timestamp each time, so the responder's replay filter accepts it); the responder keeps no
//! state between exchanges except, per trusted key, which timestamps it has seen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
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

/// Strictly increasing timestamps for outgoing requests.
#[derive(Debug, Default)]
pub struct TsSource {
    last: u64,
}

impl TsSource {
    /// The timestamp for a request sent at `unix_us`: that time, or one more than the last
    /// timestamp given if the clock has not moved on (or went back).
    pub fn next(&mut self, unix_us: u64) -> u64 {
        self.last = (self.last + 1).max(unix_us);
        self.last
    }
}

/// Rejects requests whose timestamp was already seen from the same key, or that are much older
/// than the newest one seen (replays), while tolerating reordering of recent ones.
#[derive(Debug, Default)]
pub struct TsFilter {
    keys: HashMap<PublicKey, (u64, BTreeSet<u64>)>,
}

const TS_WINDOW_US: u64 = 30_000_000;

impl TsFilter {
    /// True if a request from `key` with timestamp `ts` (µs) is fresh: not seen before and no
    /// more than 30 s older than the newest one seen from that key. Records it.
    pub fn accept(&mut self, key: &PublicKey, ts: u64) -> bool {
        let (highest, seen) = self.keys.entry(*key).or_default();
        if ts.saturating_add(TS_WINDOW_US) < *highest || !seen.insert(ts) {
            return false;
        }
        *highest = (*highest).max(ts);
        let floor = highest.saturating_sub(TS_WINDOW_US);
        *seen = seen.split_off(&floor);
        true
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
        Self { pending: HashMap::new(), cookies: HashMap::new(), backoff }
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
        let p = self.pending.get_mut(&id).expect("present");
        let (hs, payload, mac1) = initiation(id, local, &p.remote, &p.request, ts.next(now.unix_us), Some(&c)).ok()?;
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
        let (hs, payload, mac1) = initiation(id, local, &remote, &request, ts.next(now.unix_us), c.as_ref())?;
        let next_at = now.mono + self.backoff.initial;
        self.pending
            .insert(id, Pending { tag, dst, remote, request, hs, attempt: 0, next_at, first_sent: now.mono, mac1 });
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
            let p = self.pending.get_mut(&id).expect("present");
            match self.backoff.delay(p.attempt) {
                Some(d) => match initiation(id, local, &p.remote, &p.request, ts.next(now.unix_us), c.as_ref()) {
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

    #[test]
    fn ts_filter_rejects_replays_allows_reorder() {
        let mut f = TsFilter::default();
        let k = PublicKey([1; 32]);
        assert!(f.accept(&k, 100_000_000));
        assert!(!f.accept(&k, 100_000_000));
        assert!(f.accept(&k, 99_000_000));
        assert!(!f.accept(&k, 50_000_000));
        assert!(f.accept(&PublicKey([2; 32]), 100_000_000));
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
