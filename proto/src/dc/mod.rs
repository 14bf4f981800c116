//! The Direction Coordinator's core: registrations (with NAT detection), direction requests from
//! its nodes and from other zones' DCs, and route directions to the nodes that must take part.
//! No sockets, no DNS, no clock: the DC daemon feeds it datagrams and time, answers its
//! `Locate` commands (finding another zone's DC through DNS), and drains transmits.

pub mod path;
pub mod relays;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cookie::{Guard, Limits};
use crate::exchange::{self, Backoff, Ids, Incoming, Initiator, Now, Transmit, TsFilter, TsSource, TsVerdict};
use crate::keys::{PublicKey, SecretKey};
use crate::msg::{
    Allocate, DirectionAnswer, ErrorCode, ErrorReply, MsgError, NodeInfo, Path, PeerDirectionRequest, Register,
    Registered, RelayTicket, Request, Response, RouteDirection,
};
use crate::node::normalize;
use crate::registry::{NodeRecord, Registration, Registry};
use crate::stats::{Drops, LogLimit};
use crate::wire::Packet;
use path::Choice;
use relays::Relays;
pub use relays::{RelayConfig, RelayView};

/// A direction that has not finished within this time fails.
const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// Directions under way for one requester (a node, or a peer DC's node), and in all.
const MAX_OPS_PER_NODE: usize = 32;
const MAX_OPS_PER_PEER: usize = 512;
const MAX_OPS: usize = 4096;

/// Tries of one request answered when the direction is done.
const MAX_WAITERS: usize = 8;

/// How long a name a peer DC revoked is not passed on again.
const PEER_REVOKE_MEMORY: Duration = Duration::from_secs(60);

/// What the DC core is told at start; the daemon builds it from its configuration file.
#[derive(Debug, Clone)]
pub struct DcConfig {
    /// The zone this DC is authoritative for (normalized by [`DcCore::new`]).
    pub zone: String,
    /// The DC's static key: nodes and peer DCs address their handshakes to its public half.
    pub secret: SecretKey,
    /// The re-registration interval given to every node in `Registered.keepalive_ms`.
    pub keepalive: Duration,
    /// Enrolled nodes: FQDN → key.
    pub enrolled: HashMap<String, PublicKey>,
    /// Trusted DCs of other zones: zone → key.
    pub peers: HashMap<String, PublicKey>,
    /// The relays this DC allocates sessions on, for nodes that cannot reach each other directly.
    pub relays: Vec<RelayConfig>,
}

/// What the DC has done, for its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DcCounters {
    /// Registrations and keepalives accepted.
    pub registrations: u64,
    /// Registrations refused (not enrolled, wrong key).
    pub refused: u64,
    /// Directions answered with a path.
    pub directions_ok: u64,
    /// Directions answered with an error (including those that timed out).
    pub directions_failed: u64,
    /// Directions that went to another zone's DC.
    pub directions_remote: u64,
    /// Directions answered with a relayed path.
    pub directions_relayed: u64,
    /// Nodes found behind a 1:1 NAT by a probe.
    pub one_to_one: u64,
}

/// Work the daemon does for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DcCommand {
    /// Find the DC responsible for `target` (SRV `_ntm._udp.<zone>`), then call `dc_located`.
    Locate {
        /// The direction waiting for the answer; give it back to [`DcCore::dc_located`].
        id: u64,
        /// The FQDN of the node whose zone's DC is wanted.
        target: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Route(u64),
    Peer(u64),
    /// A revocation told to a node of the zone.
    Revoke,
}

/// What [`DcCore::reconfigure`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Nodes enrolled now that were not (or had another key).
    pub added: Vec<String>,
    /// Nodes no longer enrolled (or enrolled under another key now): their registry rows are
    /// gone and the nodes of the zone were told to drop their tunnels.
    pub removed: Vec<String>,
    /// Peer zones trusted now that were not (or with another key).
    pub peers_added: Vec<String>,
    /// Peer zones no longer trusted (or under another key now).
    pub peers_removed: Vec<String>,
    /// Nodes of the zone told of the revocations.
    pub notified: usize,
}

impl std::fmt::Display for Reconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(" ") };
        write!(
            f,
            "nodes added: {}; nodes removed: {}; peer zones added: {}; peer zones removed: {}; nodes told: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.peers_added),
            list(&self.peers_removed),
            self.notified
        )
    }
}

/// Exchanges with relays: an allocation for a direction, or a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayTag {
    Alloc(u64, usize),
    Ping(usize),
}

/// A probe of a node's NAT: its name, the mapping probed and the addresses it registered with.
#[derive(Debug, Clone)]
struct ProbeTag {
    fqdn: String,
    observed: SocketAddr,
    addrs: Vec<SocketAddr>,
    key: [u8; 32],
}

/// A relayed direction waiting for its allocation.
#[derive(Debug, Clone)]
struct PendingRelay {
    target: NodeInfo,
    /// The target's observed address: where its route direction goes.
    dst: SocketAddr,
    requester_v4: bool,
    target_v4: bool,
    why: &'static str,
    keys: [[u8; 32]; 2],
    /// Relays that failed this direction already.
    tried: Vec<usize>,
}

struct Op {
    requester: NodeInfo,
    target: String,
    /// Punching failed: relay.
    relay_wanted: bool,
    /// Answer only with a direct path.
    upgrade: bool,
    waiters: Vec<Incoming>,
    /// The peer zone whose DC asked, for a direction asked by another zone's DC.
    peer: Option<String>,
    /// The answer to give once the target acknowledged its route direction.
    answer: Option<DirectionAnswer>,
    relay: Option<PendingRelay>,
    deadline: Instant,
}

/// How many tries an allocation or a probe gets, 250 ms apart then 500 ms: a relay that does
/// not answer within about a second is skipped.
const QUICK: Backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_millis(500), tries: 3 };

/// The DC's protocol state machine, over a node registry `R` (SQLite in the daemon, memory in
/// the simulation). Feed it datagrams, timeouts and located DCs; drain transmits and commands.
pub struct DcCore<R> {
    cfg: DcConfig,
    by_key: HashMap<PublicKey, String>,
    peer_zones: HashMap<PublicKey, String>,
    registry: R,
    exchanges: Initiator<Tag>,
    relay_x: Initiator<RelayTag>,
    probes: Initiator<ProbeTag>,
    relays: Relays,
    /// Nodes whose NAT let the DC's probe in, with the mapping probed: they are reachable there.
    one_to_one: HashMap<String, SocketAddr>,
    /// Mappings probed without an answer (a NAT that filters), not probed again.
    filtered: HashMap<String, SocketAddr>,
    /// Nodes with a probe under way.
    probing: std::collections::HashSet<String>,
    probe_transmits: VecDeque<Transmit>,
    /// Checks initiations before any handshake work (MACs, load, cookies, replays).
    guard: Guard,
    ids: Ids,
    ts: TsSource,
    ts_filter: TsFilter,
    ops: HashMap<u64, Op>,
    next_op: u64,
    /// Revocations of this zone's nodes waiting for a peer zone's DC to be located, by the
    /// lookup's id: that DC tells its nodes, which may hold tunnels with them.
    revoke_notices: HashMap<u64, Vec<String>>,
    /// Nodes told by the last [`DcCore::tell_nodes`].
    revoke_told: usize,
    /// Names peer DCs revoked lately, with when: each is passed on once a minute at most.
    peer_revoked: HashMap<String, Instant>,
    drops: Drops,
    counters: DcCounters,
    log_limit: LogLimit,
    transmits: VecDeque<Transmit>,
    commands: VecDeque<DcCommand>,
}

impl<R: Registry> DcCore<R> {
    /// A core for `cfg` (names normalized: lowercase, no trailing dot) keeping registrations in
    /// `registry`.
    pub fn new(mut cfg: DcConfig, registry: R) -> Self {
        cfg.zone = normalize(&cfg.zone);
        cfg.enrolled = cfg.enrolled.into_iter().map(|(f, k)| (normalize(&f), k)).collect();
        cfg.peers = cfg.peers.into_iter().map(|(z, k)| (normalize(&z), k)).collect();
        let by_key = cfg.enrolled.iter().map(|(f, k)| (*k, f.clone())).collect();
        let peer_zones = cfg.peers.iter().map(|(z, k)| (*k, z.clone())).collect();
        let relays = Relays::new(cfg.relays.clone());
        let guard = Guard::new(&cfg.secret.public(), Limits::default());
        let mut registry = registry;
        // Rows of nodes that are no longer enrolled (or under another key) go at start.
        for rec in registry.all().unwrap_or_default() {
            if cfg.enrolled.get(&rec.fqdn) != Some(&PublicKey(rec.public_key)) {
                info!(fqdn = %rec.fqdn, "forgetting a node that is no longer enrolled");
                if let Err(e) = registry.remove(&rec.fqdn) {
                    warn!(fqdn = %rec.fqdn, "cannot forget it: {e}");
                }
            }
        }
        Self {
            guard,
            cfg,
            by_key,
            peer_zones,
            registry,
            exchanges: Initiator::default(),
            relay_x: Initiator::with_backoff(QUICK),
            probes: Initiator::with_backoff(QUICK),
            relays,
            one_to_one: HashMap::new(),
            filtered: HashMap::new(),
            probing: Default::default(),
            probe_transmits: VecDeque::new(),
            ids: Ids::default(),
            ts: TsSource::default(),
            ts_filter: TsFilter::default(),
            ops: HashMap::new(),
            next_op: 1,
            revoke_notices: HashMap::new(),
            revoke_told: 0,
            peer_revoked: HashMap::new(),
            drops: Drops::default(),
            counters: DcCounters::default(),
            log_limit: LogLimit::default(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
        }
    }

    /// Applies a new list of enrolled nodes and trusted peer zones (the configuration was
    /// reloaded). Nodes no longer enrolled lose their registry row (and VIPs) and get no
    /// directions from now on, nor do nodes of zones no longer trusted; every registered node of
    /// the zone is told to tear down its tunnels with them ([`Request::Revoke`]), and so is every
    /// peer zone's DC, which tells its own nodes (a peer DC may revoke only names of its zone);
    /// directions under way that involve them fail.
    pub fn reconfigure(
        &mut self,
        enrolled: HashMap<String, PublicKey>,
        peers: HashMap<String, PublicKey>,
        now: Now,
    ) -> Reconfigured {
        let enrolled: HashMap<String, PublicKey> = enrolled.into_iter().map(|(f, k)| (normalize(&f), k)).collect();
        let peers: HashMap<String, PublicKey> = peers.into_iter().map(|(z, k)| (normalize(&z), k)).collect();
        let diff = |old: &HashMap<String, PublicKey>, new: &HashMap<String, PublicKey>| {
            let mut v: Vec<String> =
                old.iter().filter(|(n, k)| new.get(*n) != Some(*k)).map(|(n, _)| n.clone()).collect();
            v.sort();
            v
        };
        let mut r = Reconfigured {
            added: diff(&enrolled, &self.cfg.enrolled),
            removed: diff(&self.cfg.enrolled, &enrolled),
            peers_added: diff(&peers, &self.cfg.peers),
            peers_removed: diff(&self.cfg.peers, &peers),
            notified: 0,
        };
        self.by_key = enrolled.iter().map(|(f, k)| (*k, f.clone())).collect();
        self.peer_zones = peers.iter().map(|(z, k)| (*k, z.clone())).collect();
        self.cfg.enrolled = enrolled;
        self.cfg.peers = peers;
        if r.removed.is_empty() && r.peers_removed.is_empty() {
            return r;
        }
        for fqdn in &r.removed {
            if let Err(e) = self.registry.remove(fqdn) {
                warn!(%fqdn, "cannot remove the node from the registry: {e}");
            }
            self.one_to_one.remove(fqdn);
            self.filtered.remove(fqdn);
            self.probing.remove(fqdn);
        }
        let revoked = |fqdn: &str, r: &Reconfigured| {
            let fqdn = normalize(fqdn);
            r.removed.contains(&fqdn) || r.peers_removed.iter().any(|z| fqdn.ends_with(&format!(".{z}")))
        };
        let doomed: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| revoked(&op.requester.fqdn, &r) || revoked(&op.target, &r))
            .map(|(id, _)| *id)
            .collect();
        // Their exchanges under way stop too: a late probe answer must not register a removed
        // node again, nor a retransmitted route direction vouch for it.
        let mut gone =
            self.exchanges.cancel_where(|t| matches!(t, Tag::Route(id) | Tag::Peer(id) if doomed.contains(id)));
        gone.extend(self.relay_x.cancel_where(|t| matches!(t, RelayTag::Alloc(id, _) if doomed.contains(id))));
        gone.extend(self.probes.cancel_where(|t| r.removed.contains(&t.fqdn)));
        for xid in gone {
            self.ids.release(xid);
        }
        for id in doomed {
            self.finish(id, err(ErrorCode::NotEnrolled, "no longer enrolled or trusted here".into()), now);
        }
        let notice = Request::Revoke(crate::msg::Revoke { nodes: r.removed.clone(), zones: r.peers_removed.clone() });
        // Nodes of other zones may hold tunnels with the removed nodes: their DCs tell them.
        if !r.removed.is_empty() {
            let zones: Vec<String> = self.cfg.peers.keys().cloned().collect();
            for zone in zones {
                let id = self.next_op;
                self.next_op += 1;
                self.revoke_notices.insert(id, r.removed.clone());
                self.commands.push_back(DcCommand::Locate { id, target: format!("dc.{zone}") });
            }
        }
        self.tell_nodes(&notice, now);
        r.notified = self.revoke_told;
        r
    }

    /// Sends `notice` (a [`Request::Revoke`]) to every registered node of the zone.
    fn tell_nodes(&mut self, notice: &Request, now: Now) {
        self.revoke_told = 0;
        for rec in self.registry.all().unwrap_or_default() {
            let Some(dst) = rec.observed else { continue };
            let xid = self.ids.alloc();
            let key = PublicKey(rec.public_key);
            match self.exchanges.start(Tag::Revoke, xid, dst, key, notice.clone(), &self.cfg.secret, &mut self.ts, now)
            {
                Ok(t) => {
                    self.transmits.push_back(t);
                    self.revoke_told += 1;
                }
                Err(e) => {
                    self.ids.release(xid);
                    warn!(fqdn = %rec.fqdn, "cannot tell the node of the revocation: {e}");
                }
            }
        }
    }

    /// True if a VIP of `node` is one this zone gives out (its pools) or gave out (a node kept
    /// a VIP of an earlier pool): no other zone may claim it.
    fn own_vip(&self, node: &NodeInfo) -> bool {
        let pools = self.registry.pools();
        let in_pools = node.vip4.is_some_and(|v| pools.v4.is_some_and(|n| n.contains(&v)))
            || node.vip6.is_some_and(|v| pools.v6.is_some_and(|n| n.contains(&v)));
        in_pools
            || self
                .registry
                .all()
                .unwrap_or_default()
                .iter()
                .any(|r| (node.vip4.is_some() && r.vip4 == node.vip4) || (node.vip6.is_some() && r.vip6 == node.vip6))
    }

    /// The registry, for the daemon's metrics and status.
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// What the core dropped so far.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// What the DC has done so far.
    pub fn counters(&self) -> DcCounters {
        self.counters
    }

    /// The relays and what the DC knows of them now.
    pub fn relays(&self) -> Vec<RelayView> {
        self.relays.view()
    }

    /// The DC's zone, normalized.
    pub fn zone(&self) -> &str {
        &self.cfg.zone
    }

    fn in_zone(&self, fqdn: &str) -> bool {
        fqdn.strip_suffix(&self.cfg.zone).is_some_and(|h| h.ends_with('.') && h.len() > 1)
    }

    /// Handles one UDP datagram received on a signaling socket from `from`; anything that is not
    /// a valid request or an expected response is dropped and counted in [`DcCore::drops`].
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Now) {
        match Packet::parse(data) {
            Ok(Packet::Init { .. }) if self.guarded(from, data, now) => {}
            Ok(Packet::Cookie { .. }) => {
                let s = &self.cfg.secret;
                if let Some(t) = self.exchanges.on_cookie(data, from, s, &mut self.ts, now) {
                    self.transmits.push_back(t);
                } else if let Some(t) = self.relay_x.on_cookie(data, from, s, &mut self.ts, now) {
                    self.transmits.push_back(t);
                } else if let Some(t) = self.probes.on_cookie(data, from, s, &mut self.ts, now) {
                    self.probe_transmits.push_back(t);
                } else {
                    self.drops.unexpected += 1;
                }
            }
            Ok(Packet::Init { sender, noise }) => match exchange::accept(&self.cfg.secret, from, sender, noise) {
                Ok(inc) => self.on_request(inc, now),
                Err(e) => {
                    self.drops.malformed += 1;
                    debug!(%from, "dropped handshake initiation: {e}");
                }
            },
            Ok(Packet::Resp { sender, receiver, noise }) => {
                let r = match self.exchanges.on_response(sender, receiver, noise, from, now) {
                    Ok(done) => {
                        self.ids.release(done.id);
                        self.on_completed(done.tag, done.response, now);
                        Ok(())
                    }
                    Err(exchange::ExchangeError::Unexpected) => {
                        match self.relay_x.on_response(sender, receiver, noise, from, now) {
                            Ok(done) => {
                                self.ids.release(done.id);
                                self.on_relay_answer(done.tag, done.response, now);
                                Ok(())
                            }
                            Err(exchange::ExchangeError::Unexpected) => {
                                match self.probes.on_response(sender, receiver, noise, from, now) {
                                    Ok(done) => {
                                        self.ids.release(done.id);
                                        self.on_probe_answer(done.tag, done.response, now);
                                        Ok(())
                                    }
                                    e => e.map(|_| ()),
                                }
                            }
                            e => e.map(|_| ()),
                        }
                    }
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {}
                    Err(exchange::ExchangeError::Stale(floor)) => {
                        info!(%from, floor, "a responder found our request timestamp too old: sending again past its floor");
                    }
                    Err(exchange::ExchangeError::Unexpected) => {
                        self.drops.unexpected += 1;
                        debug!(%from, "dropped a response to no outstanding request");
                    }
                    Err(e) => {
                        self.drops.malformed += 1;
                        debug!(%from, "dropped handshake response: {e}");
                    }
                }
            }
            Ok(Packet::Data { .. } | Packet::Bind { .. }) => {
                self.drops.unexpected += 1;
                debug!(%from, "dropped a data packet sent to the DC");
            }
            Err(e) => {
                self.drops.malformed += 1;
                debug!(%from, "dropped datagram: {e}");
            }
        }
    }

    /// Runs an initiation past the guard; true if it was dropped or answered with a cookie.
    fn guarded(&mut self, from: SocketAddr, data: &[u8], now: Now) -> bool {
        match self.drops.guard(self.guard.check(from, data, now.mono)) {
            None => false,
            Some(reply) => {
                if let Some(payload) = reply {
                    self.transmits.push_back(Transmit { dst: from, payload });
                }
                true
            }
        }
    }

    fn reply(&mut self, inc: Incoming, response: &Response, now: Now) {
        let id = self.ids.alloc();
        if let Ok((t, _)) = inc.respond(id, response, &mut self.ts, now) {
            self.transmits.push_back(t);
        }
        self.ids.release(id);
    }

    /// The request if its timestamp is fresh; a replay is dropped, a stale one answered with
    /// the floor (see [`TsFilter`]).
    fn fresh(&mut self, inc: Incoming, now: Now) -> Option<Incoming> {
        match inc.freshness(&mut self.ts_filter, now.unix_us) {
            TsVerdict::Fresh => Some(inc),
            TsVerdict::Replay => {
                self.drops.replayed += 1;
                debug!(from = %inc.from, "dropped a replayed request");
                None
            }
            TsVerdict::Stale(floor) => {
                self.drops.replayed += 1;
                debug!(from = %inc.from, key = %inc.key, "a request with an old timestamp: answered with the floor");
                self.reply(inc, &Response::Stale(floor), now);
                None
            }
        }
    }

    fn refuse(&mut self, inc: Incoming, code: ErrorCode, message: String, now: Now) {
        self.reply(inc, &Response::Error(ErrorReply { code, message }), now);
    }

    fn on_request(&mut self, inc: Incoming, now: Now) {
        let from = inc.from;
        let request = match &inc.request {
            Ok(r) => r.clone(),
            Err(e) => {
                warn!(%from, "malformed request: {e}");
                let code = if matches!(e, MsgError::Version(_)) { ErrorCode::Version } else { ErrorCode::BadRequest };
                let m = e.to_string();
                self.refuse(inc, code, m, now);
                return;
            }
        };
        match request {
            Request::Register(r) => self.on_register(inc, r, now),
            Request::Direction(d) => {
                let Some(fqdn) = self.by_key.get(&inc.key).cloned() else {
                    self.drops.unauthorized += 1;
                    if let Some(held) = self.log_limit.allow(now.mono) {
                        warn!(%from, key = %inc.key, held_back = held, "direction request from a key that is not enrolled");
                    }
                    self.refuse(inc, ErrorCode::NotEnrolled, "this key is not enrolled here".into(), now);
                    return;
                };
                let Some(inc) = self.fresh(inc, now) else { return };
                let record = match self.registry.get(&fqdn) {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        self.refuse(inc, ErrorCode::NotRegistered, "register first".into(), now);
                        return;
                    }
                    Err(e) => {
                        self.refuse(inc, ErrorCode::Internal, e.to_string(), now);
                        return;
                    }
                };
                let target = normalize(&d.target);
                if target == fqdn {
                    self.refuse(inc, ErrorCode::BadRequest, "a node cannot build a tunnel to itself".into(), now);
                    return;
                }
                self.start_op(inc, node_info(&record), target, (d.relay, d.upgrade), None, now);
            }
            Request::PeerDirection(p) => {
                let Some(zone) = self.peer_zones.get(&inc.key).cloned() else {
                    self.drops.unauthorized += 1;
                    if let Some(held) = self.log_limit.allow(now.mono) {
                        warn!(%from, key = %inc.key, held_back = held, "direction request from a DC this zone does not trust");
                    }
                    self.refuse(inc, ErrorCode::NotAuthorized, "this DC's key is not trusted here".into(), now);
                    return;
                };
                let Some(inc) = self.fresh(inc, now) else { return };
                let requester_fqdn = normalize(&p.requester.fqdn);
                if !self.peer_speaks_for(&zone, &requester_fqdn) {
                    warn!(%from, %zone, requester = %requester_fqdn, "a DC asked for a node outside its zone");
                    self.refuse(inc, ErrorCode::NotAuthorized, format!("{requester_fqdn} is not in zone {zone}"), now);
                    return;
                }
                let target = normalize(&p.target);
                if !self.in_zone(&target) {
                    self.refuse(inc, ErrorCode::UnknownNode, format!("{target} is not in zone {}", self.cfg.zone), now);
                    return;
                }
                self.start_op(inc, p.requester, target, (p.relay, p.upgrade), Some(zone), now);
            }
            Request::Revoke(rv) => {
                let Some(zone) = self.peer_zones.get(&inc.key).cloned() else {
                    self.drops.unauthorized += 1;
                    self.refuse(inc, ErrorCode::NotAuthorized, "only a peer DC revokes here".into(), now);
                    return;
                };
                let Some(inc) = self.fresh(inc, now) else { return };
                self.on_peer_revoke(inc, zone, rv, now);
            }
            Request::Route(_) | Request::Tunnel(_) | Request::Allocate(_) | Request::RelayPing | Request::Probe => {
                self.refuse(inc, ErrorCode::BadRequest, "a DC does not take that request".into(), now);
            }
        }
    }

    fn on_register(&mut self, inc: Incoming, r: Register, now: Now) {
        let fqdn = normalize(&r.fqdn);
        let from = inc.from;
        match self.cfg.enrolled.get(&fqdn) {
            None => {
                self.drops.unauthorized += 1;
                self.counters.refused += 1;
                if let Some(held) = self.log_limit.allow(now.mono) {
                    warn!(%from, %fqdn, held_back = held, "refusing registration: no node of that name is enrolled");
                }
                self.refuse(inc, ErrorCode::NotEnrolled, format!("{fqdn} is not enrolled at this DC"), now);
                return;
            }
            Some(k) if *k != inc.key => {
                self.drops.unauthorized += 1;
                self.counters.refused += 1;
                if let Some(held) = self.log_limit.allow(now.mono) {
                    warn!(%from, %fqdn, key = %inc.key, held_back = held, "refusing registration: wrong key for that name");
                }
                self.refuse(inc, ErrorCode::NotEnrolled, format!("this key is not enrolled for {fqdn}"), now);
                return;
            }
            Some(_) => {}
        }
        let Some(inc) = self.fresh(inc, now) else { return };
        let reported = r.addrs.iter().any(|a| same_endpoint(*a, from));
        let one_to_one = !reported && self.one_to_one.get(&fqdn).is_some_and(|o| same_endpoint(*o, from));
        let nat = !reported && !one_to_one;
        let reg = Registration {
            fqdn: &fqdn,
            public_key: inc.key.0,
            addrs: &r.addrs,
            observed: from,
            nat,
            now_unix: now.unix_us / 1_000_000,
        };
        let before = self.registry.get(&fqdn).ok().flatten();
        match self.registry.register(&reg) {
            Ok(rec) => {
                self.counters.registrations += 1;
                let moved = before.as_ref().is_none_or(|b| b.observed != rec.observed || b.addrs != rec.addrs);
                if moved {
                    info!(%fqdn, %from, nat, vip4 = ?rec.vip4, vip6 = ?rec.vip6, "registered");
                } else {
                    debug!(%fqdn, %from, "registration refreshed");
                }
                let resp = Response::Registered(Registered {
                    vip4: rec.vip4,
                    vip6: rec.vip6,
                    observed: from,
                    nat,
                    one_to_one,
                    keepalive_ms: self.cfg.keepalive.as_millis().min(u32::MAX as u128) as u32,
                });
                let key = inc.key.0;
                self.reply(inc, &resp, now);
                if nat && !self.filtered.get(&fqdn).is_some_and(|o| same_endpoint(*o, from)) {
                    self.probe(fqdn, from, r.addrs, key, now);
                }
            }
            Err(e) => {
                warn!(%fqdn, "registration failed: {e}");
                self.refuse(inc, ErrorCode::Internal, e.to_string(), now);
            }
        }
    }

    fn start_op(
        &mut self,
        inc: Incoming,
        requester: NodeInfo,
        target: String,
        flags: (bool, bool),
        peer: Option<String>,
        now: Now,
    ) {
        let (relay_wanted, upgrade) = flags;
        // A retransmitted request joins the direction already under way.
        if let Some(op) = self
            .ops
            .values_mut()
            .find(|o| o.requester.fqdn == requester.fqdn && o.target == target && (o.relay_wanted, o.upgrade) == flags)
        {
            // Each try of a request is a fresh handshake; a few are enough to answer.
            if op.waiters.len() < MAX_WAITERS {
                op.waiters.push(inc);
            }
            return;
        }
        // Bounded work per node (each direction may cost a DNS lookup of another zone's DC and
        // exchanges with nodes and relays) and in all.
        let of_node = self.ops.values().filter(|o| o.requester.fqdn == requester.fqdn).count();
        // A peer DC names its requesters at will: it gets a share of its own.
        let of_peer = peer.as_ref().map_or(0, |z| self.ops.values().filter(|o| o.peer.as_ref() == Some(z)).count());
        if of_node >= MAX_OPS_PER_NODE || of_peer >= MAX_OPS_PER_PEER || self.ops.len() >= MAX_OPS {
            self.drops.limited += 1;
            if let Some(held) = self.log_limit.allow(now.mono) {
                warn!(requester = %requester.fqdn, of_node, total = self.ops.len(), held_back = held, "too many directions under way: refused");
            }
            self.refuse(inc, ErrorCode::Busy, "too many directions under way; try again".into(), now);
            return;
        }
        let id = self.next_op;
        self.next_op += 1;
        let local = self.in_zone(&target);
        debug!(requester = %requester.fqdn, %target, local, "direction");
        self.ops.insert(
            id,
            Op {
                requester,
                target: target.clone(),
                relay_wanted,
                upgrade,
                waiters: vec![inc],
                peer,
                answer: None,
                relay: None,
                deadline: now.mono + OP_TIMEOUT,
            },
        );
        if local {
            self.direct_locally(id, now);
        } else {
            self.counters.directions_remote += 1;
            self.commands.push_back(DcCommand::Locate { id, target });
        }
    }

    /// Both ends known here (the target is in this zone): pick the path, tell the target.
    fn direct_locally(&mut self, id: u64, now: Now) {
        let op = &self.ops[&id];
        let target = op.target.clone();
        let record = match self.registry.get(&target) {
            Ok(Some(r)) => r,
            Ok(None) if self.cfg.enrolled.contains_key(&target) => {
                return self.finish(id, err(ErrorCode::NotRegistered, format!("{target} is not registered now")), now)
            }
            Ok(None) => return self.finish(id, err(ErrorCode::UnknownNode, format!("no node {target}")), now),
            Err(e) => return self.finish(id, err(ErrorCode::Internal, e.to_string()), now),
        };
        let tinfo = node_info(&record);
        let requester = op.requester.clone();
        let Some(dst) = record.observed else {
            return self.finish(id, err(ErrorCode::NotRegistered, format!("{target} has no known address")), now);
        };
        let mut choice = path::choose(&requester, &tinfo);
        if op.relay_wanted {
            choice = path::relay_instead(choice);
        }
        if op.upgrade && !matches!(choice, Choice::Direct { .. } | Choice::Punch { .. }) {
            return self.finish(id, err(ErrorCode::NoPath, format!("no direct path to {target} yet")), now);
        }
        match choice {
            Choice::None => {
                self.finish(id, err(ErrorCode::NoPath, format!("{} or {target} has no address", requester.fqdn)), now)
            }
            Choice::Direct { to_target, to_requester, requester_initiates } => {
                info!(requester = %requester.fqdn, %target, path = "direct", opener = if requester_initiates { requester.fqdn.as_str() } else { target.as_str() }, "direction");
                let route = RouteDirection {
                    peer: requester,
                    endpoint: to_requester,
                    path: Path::Direct,
                    you_initiate: !requester_initiates,
                    relay: None,
                };
                let answer = DirectionAnswer {
                    peer: tinfo,
                    endpoint: to_target,
                    path: Path::Direct,
                    requester_initiates,
                    relay: None,
                };
                self.send_route(id, dst, PublicKey(record.public_key), route, answer, now);
            }
            Choice::Punch { to_target, to_requester } => {
                info!(requester = %requester.fqdn, %target, path = "punched", "direction: both behind NAT, both open at once");
                let route = RouteDirection {
                    peer: requester,
                    endpoint: to_requester,
                    path: Path::Punched,
                    you_initiate: true,
                    relay: None,
                };
                let answer = DirectionAnswer {
                    peer: tinfo,
                    endpoint: to_target,
                    path: Path::Punched,
                    requester_initiates: true,
                    relay: None,
                };
                self.send_route(id, dst, PublicKey(record.public_key), route, answer, now);
            }
            Choice::Relay { requester_v4, target_v4, why } => {
                let pending = PendingRelay {
                    target: tinfo,
                    dst,
                    requester_v4,
                    target_v4,
                    why,
                    keys: [rand::random(), rand::random()],
                    tried: Vec::new(),
                };
                self.allocate(id, pending, now);
            }
        }
    }

    /// Tells the target its route direction; the requester gets `answer` once the target acked.
    fn send_route(
        &mut self,
        id: u64,
        dst: SocketAddr,
        key: PublicKey,
        route: RouteDirection,
        answer: DirectionAnswer,
        now: Now,
    ) {
        let xid = self.ids.alloc();
        match self.exchanges.start(
            Tag::Route(id),
            xid,
            dst,
            key,
            Request::Route(route),
            &self.cfg.secret,
            &mut self.ts,
            now,
        ) {
            Ok(t) => {
                self.transmits.push_back(t);
                if let Some(op) = self.ops.get_mut(&id) {
                    op.answer = Some(answer);
                }
            }
            Err(e) => {
                self.ids.release(xid);
                self.finish(id, err(ErrorCode::Internal, e.to_string()), now)
            }
        }
    }

    /// Asks a relay for a session for direction `id`, skipping those that failed it already.
    fn allocate(&mut self, id: u64, pending: PendingRelay, now: Now) {
        let Some(op) = self.ops.get_mut(&id) else { return };
        let Some(relay) = self.relays.pick(pending.requester_v4, pending.target_v4, &pending.tried) else {
            let what = format!(
                "{} and {}: {}, and no relay {}",
                op.requester.fqdn,
                op.target,
                pending.why,
                if self.relays.is_empty() { "is configured" } else { "answers" }
            );
            return self.finish(id, err(ErrorCode::NoPath, what), now);
        };
        let req = Request::Allocate(Allocate {
            bind_keys: pending.keys,
            labels: [op.requester.fqdn.clone(), op.target.clone()],
        });
        op.relay = Some(pending);
        let cfg = self.relays.config(relay).clone();
        let dst = self.relays.addr(relay, true).or_else(|| self.relays.addr(relay, false)).expect("picked by family");
        let xid = self.ids.alloc();
        match self.relay_x.start(
            RelayTag::Alloc(id, relay),
            xid,
            dst,
            cfg.key,
            req,
            &self.cfg.secret,
            &mut self.ts,
            now,
        ) {
            Ok(t) => self.transmits.push_back(t),
            Err(e) => {
                self.ids.release(xid);
                self.finish(id, err(ErrorCode::Internal, e.to_string()), now)
            }
        }
    }

    fn on_relay_answer(&mut self, tag: RelayTag, response: Response, now: Now) {
        match tag {
            RelayTag::Ping(i) => match response {
                Response::RelayLoad(l) => self.relays.answered(i, l.sessions),
                other => {
                    warn!(relay = %self.relays.config(i).name, "the relay answered a ping with {other:?}");
                    self.relays.failed(i);
                }
            },
            RelayTag::Alloc(id, i) => {
                let Some(mut pending) = self.ops.get_mut(&id).and_then(|o| o.relay.take()) else { return };
                let ids = match response {
                    Response::Allocated(a) => a.ids,
                    other => {
                        warn!(relay = %self.relays.config(i).name, "the relay refused a session: {other:?}");
                        pending.tried.push(i);
                        return self.allocate(id, pending, now);
                    }
                };
                self.relays.allocated(i);
                self.counters.directions_relayed += 1;
                let (Some(at_r), Some(at_t)) =
                    (self.relays.addr(i, pending.requester_v4), self.relays.addr(i, pending.target_v4))
                else {
                    return self.finish(id, err(ErrorCode::Internal, "relay lost its address".into()), now);
                };
                let op = &self.ops[&id];
                info!(requester = %op.requester.fqdn, target = %op.target, path = "relay", relay = %self.relays.config(i).name, why = pending.why, "direction");
                let route = RouteDirection {
                    peer: op.requester.clone(),
                    endpoint: at_t,
                    path: Path::Relay,
                    you_initiate: false,
                    relay: Some(RelayTicket { relay: at_t, local_id: ids[1], bind_key: pending.keys[1] }),
                };
                let key = PublicKey(pending.target.public_key);
                let answer = DirectionAnswer {
                    peer: pending.target,
                    endpoint: at_r,
                    path: Path::Relay,
                    requester_initiates: true,
                    relay: Some(RelayTicket { relay: at_r, local_id: ids[0], bind_key: pending.keys[0] }),
                };
                self.send_route(id, pending.dst, key, route, answer, now);
            }
        }
    }

    fn on_relay_failed(&mut self, tag: RelayTag, now: Now) {
        match tag {
            RelayTag::Ping(i) => self.relays.failed(i),
            RelayTag::Alloc(id, i) => {
                self.relays.failed(i);
                if let Some(mut pending) = self.ops.get_mut(&id).and_then(|o| o.relay.take()) {
                    pending.tried.push(i);
                    self.allocate(id, pending, now);
                }
            }
        }
    }

    /// Sends a probe to a node's NAT mapping from the DC's second socket: only a NAT that lets
    /// unsolicited packets in (a cloud's 1:1 NAT) passes it to the node.
    fn probe(&mut self, fqdn: String, observed: SocketAddr, addrs: Vec<SocketAddr>, key: [u8; 32], now: Now) {
        if self.probes_pending_for(&fqdn) {
            return;
        }
        let xid = self.ids.alloc();
        let tag = ProbeTag { fqdn: fqdn.clone(), observed, addrs, key };
        match self.probes.start(tag, xid, observed, PublicKey(key), Request::Probe, &self.cfg.secret, &mut self.ts, now)
        {
            Ok(t) => {
                debug!(%fqdn, %observed, "probing the node's NAT");
                self.probing.insert(fqdn);
                self.probe_transmits.push_back(t);
            }
            Err(_) => self.ids.release(xid),
        }
    }

    fn probes_pending_for(&self, fqdn: &str) -> bool {
        self.probing.contains(fqdn)
    }

    fn on_probe_answer(&mut self, tag: ProbeTag, response: Response, now: Now) {
        self.probing.remove(&tag.fqdn);
        if self.cfg.enrolled.get(&tag.fqdn) != Some(&PublicKey(tag.key)) {
            // Revoked (or re-keyed) while the probe was under way: it registers nothing.
            return;
        }
        if response != Response::ProbeAck {
            self.filtered.insert(tag.fqdn, tag.observed);
            return;
        }
        info!(fqdn = %tag.fqdn, observed = %tag.observed, "behind a 1:1 NAT: reachable at its public address");
        self.counters.one_to_one += 1;
        self.one_to_one.insert(tag.fqdn.clone(), tag.observed);
        let reg = Registration {
            fqdn: &tag.fqdn,
            public_key: tag.key,
            addrs: &tag.addrs,
            observed: tag.observed,
            nat: false,
            now_unix: now.unix_us / 1_000_000,
        };
        if let Err(e) = self.registry.register(&reg) {
            warn!(fqdn = %tag.fqdn, "cannot record the 1:1 NAT: {e}");
        }
    }

    /// The daemon found (or failed to find) the DC of the target's zone.
    pub fn dc_located(&mut self, id: u64, result: Result<(String, Vec<SocketAddr>), String>, now: Now) {
        if let Some(nodes) = self.revoke_notices.remove(&id) {
            return self.send_peer_revoke(nodes, result, now);
        }
        let Some(op) = self.ops.get(&id) else { return };
        let target = op.target.clone();
        let (zone, addrs) = match result {
            Ok(r) => r,
            Err(e) => return self.finish(id, err(ErrorCode::UnknownNode, format!("{target}: {e}")), now),
        };
        let zone = normalize(&zone);
        let Some(key) = self.cfg.peers.get(&zone).copied() else {
            warn!(%zone, %target, "no trust configured for that zone's DC");
            return self.finish(id, err(ErrorCode::Unavailable, format!("zone {zone} is not trusted by this DC")), now);
        };
        let Some(dst) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied() else {
            return self.finish(id, err(ErrorCode::Unavailable, format!("zone {zone}'s DC has no address")), now);
        };
        let req = Request::PeerDirection(PeerDirectionRequest {
            requester: op.requester.clone(),
            target,
            relay: op.relay_wanted,
            upgrade: op.upgrade,
        });
        let xid = self.ids.alloc();
        match self.exchanges.start(Tag::Peer(id), xid, dst, key, req, &self.cfg.secret, &mut self.ts, now) {
            Ok(t) => self.transmits.push_back(t),
            Err(e) => {
                self.ids.release(xid);
                self.finish(id, err(ErrorCode::Internal, e.to_string()), now)
            }
        }
    }

    /// True if the peer DC of `zone` may speak for `fqdn`: in its zone, not in this one, and not
    /// in a more specific zone of another peer.
    fn peer_speaks_for(&self, zone: &str, fqdn: &str) -> bool {
        let under = |z: &str| fqdn.strip_suffix(z).is_some_and(|h| h.ends_with('.') && h.len() > 1);
        under(zone)
            && !self.in_zone(fqdn)
            && !self.cfg.peers.keys().any(|z| z.len() > zone.len() && z.ends_with(&format!(".{zone}")) && under(z))
    }

    /// Tells a located peer DC that `nodes` of this zone are revoked.
    fn send_peer_revoke(&mut self, nodes: Vec<String>, located: Result<(String, Vec<SocketAddr>), String>, now: Now) {
        let (zone, addrs) = match located {
            Ok(r) => r,
            Err(e) => return warn!("cannot tell a peer zone's DC of a revocation: {e}"),
        };
        let zone = normalize(&zone);
        let dst = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied();
        let (Some(key), Some(dst)) = (self.cfg.peers.get(&zone).copied(), dst) else { return };
        let xid = self.ids.alloc();
        let req = Request::Revoke(crate::msg::Revoke { nodes, zones: Vec::new() });
        match self.exchanges.start(Tag::Revoke, xid, dst, key, req, &self.cfg.secret, &mut self.ts, now) {
            Ok(t) => self.transmits.push_back(t),
            Err(e) => {
                self.ids.release(xid);
                warn!(%zone, "cannot tell the zone's DC of a revocation: {e}");
            }
        }
    }

    /// A peer DC revokes nodes of its zone: its word counts for its own zone only; the nodes of
    /// this zone are told.
    fn on_peer_revoke(&mut self, inc: Incoming, zone: String, rv: crate::msg::Revoke, now: Now) {
        // Its own zone's names only: not this zone's, nor those of a more specific peer zone
        // (a peer for example.com does not speak for corp.example.com).
        let (own, other): (Vec<String>, Vec<String>) =
            rv.nodes.iter().map(|n| normalize(n)).partition(|n| self.peer_speaks_for(&zone, n));
        if !other.is_empty() || !rv.zones.is_empty() {
            self.drops.unauthorized += 1;
            warn!(%zone, names = ?other, zones = ?rv.zones, "a peer DC revoked what is not of its zone: ignored");
        }
        self.reply(inc, &Response::RouteAck, now);
        // Each name once a minute at most: a peer cannot make this DC flood its nodes.
        self.peer_revoked.retain(|_, at| now.mono.saturating_duration_since(*at) < PEER_REVOKE_MEMORY);
        let own: Vec<String> = own.into_iter().filter(|n| !self.peer_revoked.contains_key(n)).take(64).collect();
        if own.is_empty() || self.peer_revoked.len() >= 1024 {
            return;
        }
        for n in &own {
            self.peer_revoked.insert(n.clone(), now.mono);
        }
        info!(%zone, nodes = ?own, "a peer DC revoked nodes of its zone: telling this zone's nodes");
        self.tell_nodes(&Request::Revoke(crate::msg::Revoke { nodes: own, zones: Vec::new() }), now);
    }

    fn on_completed(&mut self, tag: Tag, response: Response, now: Now) {
        match tag {
            Tag::Revoke => {
                if let Response::Error(e) = response {
                    debug!("a node refused a revocation: {e}");
                }
            }
            Tag::Route(id) => {
                let Some(op) = self.ops.get_mut(&id) else { return };
                let r = match response {
                    Response::RouteAck => match op.answer.take() {
                        Some(a) => Response::Direction(a),
                        None => err(ErrorCode::Internal, "no answer prepared".into()),
                    },
                    Response::Error(e) => err(ErrorCode::Unavailable, format!("{} refused the route: {e}", op.target)),
                    _ => err(ErrorCode::Unavailable, format!("{} answered strangely", op.target)),
                };
                self.finish(id, r, now);
            }
            Tag::Peer(id) => {
                let target = self.ops.get(&id).map(|o| o.target.clone()).unwrap_or_default();
                let r = match response {
                    // A peer DC speaks only for the node it was asked about, in its own zone.
                    Response::Direction(a) if normalize(&a.peer.fqdn) != target => {
                        warn!(%target, answered = %a.peer.fqdn, "a peer DC answered for another name: refused");
                        self.drops.unauthorized += 1;
                        err(ErrorCode::Unavailable, "the peer DC answered for another name".into())
                    }
                    // ... and only for VIPs of its own: one of this zone's is refused.
                    Response::Direction(a) if self.own_vip(&a.peer) => {
                        warn!(%target, vip4 = ?a.peer.vip4, vip6 = ?a.peer.vip6, "a peer DC claimed a VIP of this zone: refused");
                        self.drops.unauthorized += 1;
                        err(ErrorCode::Unavailable, "the peer DC claimed a VIP of this zone".into())
                    }
                    r @ (Response::Direction(_) | Response::Error(_)) => r,
                    _ => err(ErrorCode::Unavailable, "the peer DC answered strangely".into()),
                };
                self.finish(id, r, now);
            }
        }
    }

    fn finish(&mut self, id: u64, response: Response, now: Now) {
        let Some(op) = self.ops.remove(&id) else { return };
        if let Response::Error(e) = &response {
            self.counters.directions_failed += 1;
            info!(requester = %op.requester.fqdn, target = %op.target, "direction failed: {e}");
        } else {
            self.counters.directions_ok += 1;
        }
        for w in op.waiters {
            self.reply(w, &response, now);
        }
    }

    /// When [`DcCore::handle_timeout`] must next be called: a retransmission or a direction's
    /// deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ops = self.ops.values().map(|o| o.deadline).min();
        [
            ops,
            self.exchanges.poll_timeout(),
            self.relay_x.poll_timeout(),
            self.probes.poll_timeout(),
            self.relays.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmits what is due, and fails directions whose target or peer DC does not answer or
    /// that have run for 15 s.
    pub fn handle_timeout(&mut self, now: Now) {
        let (retx, failed) = self.exchanges.on_timeout(&self.cfg.secret, &mut self.ts, now);
        self.transmits.extend(retx);
        for f in failed {
            self.ids.release(f.id);
            let (id, what) = match f.tag {
                Tag::Route(id) => (id, format!("the target node does not answer at {}", f.dst)),
                Tag::Peer(id) => (id, format!("the peer DC does not answer at {}", f.dst)),
                Tag::Revoke => {
                    debug!(dst = %f.dst, "a node did not acknowledge a revocation");
                    continue;
                }
            };
            self.finish(id, err(ErrorCode::Unavailable, what), now);
        }
        let (retx, failed) = self.relay_x.on_timeout(&self.cfg.secret, &mut self.ts, now);
        self.transmits.extend(retx);
        for f in failed {
            self.ids.release(f.id);
            self.on_relay_failed(f.tag, now);
        }
        let (retx, failed) = self.probes.on_timeout(&self.cfg.secret, &mut self.ts, now);
        self.probe_transmits.extend(retx);
        for f in failed {
            self.ids.release(f.id);
            debug!(fqdn = %f.tag.fqdn, observed = %f.tag.observed, "the probe did not come through: a NAT that filters");
            self.probing.remove(&f.tag.fqdn);
            self.filtered.insert(f.tag.fqdn, f.tag.observed);
        }
        for (i, dst, key) in self.relays.due_pings(now.mono) {
            let xid = self.ids.alloc();
            match self.relay_x.start(
                RelayTag::Ping(i),
                xid,
                dst,
                key,
                Request::RelayPing,
                &self.cfg.secret,
                &mut self.ts,
                now,
            ) {
                Ok(t) => self.transmits.push_back(t),
                Err(_) => {
                    self.ids.release(xid);
                    self.relays.failed(i);
                }
            }
        }
        let late: Vec<u64> = self.ops.iter().filter(|(_, o)| o.deadline <= now.mono).map(|(id, _)| *id).collect();
        for id in late {
            self.finish(id, err(ErrorCode::Unavailable, "direction timed out".into()), now);
        }
    }

    /// The next datagram to send, if any; call until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next datagram to send from the DC's second socket (a probe of a node's NAT: it must
    /// come from another address or port than the one the node registered with).
    pub fn poll_probe_transmit(&mut self) -> Option<Transmit> {
        self.probe_transmits.pop_front()
    }

    /// The next piece of work for the daemon (a DC to locate), if any.
    pub fn poll_command(&mut self) -> Option<DcCommand> {
        self.commands.pop_front()
    }
}

fn err(code: ErrorCode, message: String) -> Response {
    Response::Error(ErrorReply { code, message })
}

/// Two socket addresses name the same endpoint (an IPv4-mapped IPv6 address equals its IPv4).
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| (s.ip().to_canonical(), s.port());
    canon(a) == canon(b)
}

/// How a node is described to others: reachable at its NAT's outer address when behind NAT,
/// else at its own addresses (global ones first).
pub fn node_info(r: &NodeRecord) -> NodeInfo {
    let endpoints = if r.nat {
        r.observed.into_iter().collect()
    } else {
        let mut v: Vec<SocketAddr> = r.addrs.iter().copied().filter(is_global).collect();
        if let Some(o) = r.observed {
            if !v.iter().any(|a| same_endpoint(*a, o)) {
                v.insert(0, o);
            }
        }
        v
    };
    NodeInfo { fqdn: r.fqdn.clone(), public_key: r.public_key, vip4: r.vip4, vip6: r.vip6, endpoints, nat: r.nat }
}

fn is_global(a: &SocketAddr) -> bool {
    match a.ip().to_canonical() {
        std::net::IpAddr::V4(v) => !(v.is_loopback() || v.is_link_local() || v.is_unspecified()),
        std::net::IpAddr::V6(v) => !(v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80),
    }
}
