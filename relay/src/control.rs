//! The relay's own signaling: its DCs allocate sessions and ping it, in Noise IK exchanges
//! addressed to the relay's key. No sockets. Anything not from a configured DC gets no answer at
//! all: the relay says nothing to strangers.

use std::collections::HashMap;
use std::net::SocketAddr;

use proto::cookie::{Guard, Limits, Verdict, Why};
use proto::exchange::{self, Now, Transmit, TsFilter, TsSource, TsVerdict};
use proto::keys::{PublicKey, SecretKey};
use proto::msg::{Allocated, ErrorCode, RelayLoad, Request, Response};
use proto::wire::Packet;

use crate::config::DcConfig;
use crate::table::Table;

/// What the control plane has done, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ControlCounters {
    /// Sessions allocated.
    pub allocations: u64,
    /// Allocations refused (relay full).
    pub refused: u64,
    /// Pings answered.
    pub pings: u64,
    /// Handshakes that did not authenticate, or came from a key that is no DC of ours.
    pub unauthenticated: u64,
    /// Requests from a DC that were replays.
    pub replayed: u64,
    /// Under load: cookie replies sent instead of handshake work, and initiations dropped by
    /// the per-source limit.
    pub cookies: u64,
    /// Under load, initiations over a source's share.
    pub limited: u64,
}

/// The relay's signaling core.
pub struct Control {
    secret: SecretKey,
    guard: Guard,
    dcs: HashMap<PublicKey, String>,
    ts: TsSource,
    ts_filter: TsFilter,
    /// What was done so far.
    pub counters: ControlCounters,
    log_limit: proto::stats::LogLimit,
}

impl Control {
    /// A control core for the relay's key and its DCs.
    pub fn new(secret: SecretKey, dcs: &[DcConfig]) -> Self {
        Self {
            guard: Guard::new(&secret.public(), Limits::default()),
            secret,
            dcs: dcs.iter().map(|d| (d.public_key, d.name.clone())).collect(),
            ts: TsSource::default(),
            ts_filter: TsFilter::default(),
            counters: ControlCounters::default(),
            log_limit: proto::stats::LogLimit::default(),
        }
    }

    /// Handles a handshake that matched no session; returns the answer to send, if any.
    pub fn handle(&mut self, table: &Table, from: SocketAddr, b: &[u8], now: Now) -> Option<Transmit> {
        let Ok(Packet::Init { sender, noise }) = Packet::parse(b) else {
            self.counters.unauthenticated += 1;
            return None;
        };
        // MACs, load, cookies and replays before any handshake work.
        match self.guard.check(from, b, now.mono) {
            Verdict::Accept => {}
            Verdict::Cookie(payload) => {
                self.counters.cookies += 1;
                return Some(Transmit { dst: from, payload });
            }
            Verdict::Drop(Why::RateLimited) => {
                self.counters.limited += 1;
                return None;
            }
            Verdict::Drop(Why::Replay) => {
                self.counters.replayed += 1;
                return None;
            }
            Verdict::Drop(_) => {
                self.counters.unauthenticated += 1;
                return None;
            }
        }
        let inc = match exchange::accept(&self.secret, from, sender, noise) {
            Ok(inc) => inc,
            Err(_) => {
                self.counters.unauthenticated += 1;
                return None;
            }
        };
        let Some(dc) = self.dcs.get(&inc.key).cloned() else {
            self.counters.unauthenticated += 1;
            if let Some(held) = self.log_limit.allow(now.mono) {
                tracing::warn!(%from, key = %inc.key, held_back = held, "a handshake from a key that is no DC of this relay");
            }
            return None;
        };
        match inc.freshness(&mut self.ts_filter, now.unix_us) {
            TsVerdict::Fresh => {}
            TsVerdict::Replay => {
                self.counters.replayed += 1;
                return None;
            }
            TsVerdict::Stale(floor) => {
                self.counters.replayed += 1;
                return inc.stale(rand::random::<u32>() | 1, floor, &mut self.ts, now);
            }
        }
        let response = match &inc.request {
            Ok(Request::Allocate(a)) => match table.allocate(&a.bind_keys, a.labels.clone(), now.mono) {
                Ok(ids) => {
                    self.counters.allocations += 1;
                    tracing::info!(%dc, a = %a.labels[0], b = %a.labels[1], "session allocated");
                    Response::Allocated(Allocated { ids })
                }
                Err(e) => {
                    self.counters.refused += 1;
                    if let Some(held) = self.log_limit.allow(now.mono) {
                        tracing::warn!(%dc, held_back = held, "allocation refused: {e}");
                    }
                    error(ErrorCode::Busy, e.to_string())
                }
            },
            Ok(Request::RelayPing) => {
                self.counters.pings += 1;
                Response::RelayLoad(RelayLoad { sessions: table.len().min(u32::MAX as usize) as u32 })
            }
            Ok(_) => error(ErrorCode::BadRequest, "a relay takes allocations and pings only".into()),
            Err(e) => error(ErrorCode::BadRequest, e.to_string()),
        };
        inc.respond(rand::random::<u32>() | 1, &response, &mut self.ts, now).ok().map(|(t, _)| t)
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error(proto::msg::ErrorReply { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::exchange::Initiator;
    use proto::msg::Allocate;
    use std::time::{Duration, Instant};

    #[test]
    fn only_its_dcs_allocate() {
        let relay = SecretKey::generate();
        let dc = SecretKey::generate();
        let stranger = SecretKey::generate();
        let table = Table::new(1, Duration::from_secs(60));
        let mut c = Control::new(relay.clone(), &[DcConfig { name: "dc".into(), public_key: dc.public() }]);
        let now = Now { mono: Instant::now(), unix_us: 1_000_000 };
        let at: SocketAddr = "198.18.40.2:7500".parse().unwrap();
        let req = Request::Allocate(Allocate { bind_keys: [[1; 32], [2; 32]], labels: ["a".into(), "b".into()] });
        let mut ts = TsSource::default();

        let mut ini: Initiator<()> = Initiator::default();
        let t = ini.start((), 9, at, relay.public(), req.clone(), &stranger, &mut ts, now).unwrap();
        assert!(c.handle(&table, at, &t.payload, now).is_none(), "silence toward strangers");
        assert!(c.handle(&table, at, &[1, 1, 0, 0, 9, 0, 0, 0, 7], now).is_none());
        assert!(table.is_empty());

        let t = ini.start((), 10, at, relay.public(), req.clone(), &dc, &mut ts, now).unwrap();
        let r = c.handle(&table, at, &t.payload, now).expect("answered");
        assert!(c.handle(&table, at, &t.payload, now).is_none(), "a replay is not answered");
        let Ok(Packet::Resp { sender, receiver, noise }) = Packet::parse(&r.payload) else { panic!() };
        let done = ini.on_response(sender, receiver, noise, at, now).unwrap();
        assert!(matches!(done.response, Response::Allocated(_)), "{:?}", done.response);
        assert_eq!(table.len(), 1);

        let t = ini.start((), 11, at, relay.public(), req, &dc, &mut ts, now).unwrap();
        let r = c.handle(&table, at, &t.payload, now).expect("answered");
        let Ok(Packet::Resp { sender, receiver, noise }) = Packet::parse(&r.payload) else { panic!() };
        let done = ini.on_response(sender, receiver, noise, at, now).unwrap();
        assert!(matches!(done.response, Response::Error(ref e) if e.code == ErrorCode::Busy));
    }
}
