//! The node's signaling core: registration with its DC, the node table (built / building / none),
//! and tunnel setup with peers as directed by the DCs. No sockets, no clock: the daemon feeds it
//! datagrams, time and data-plane events, and drains transmits and events.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cookie::{Guard, Limits};
use crate::data::TunnelKeys;
use crate::exchange::{self, Ids, Initiator, Now, Transmit, TsFilter, TsSource, TsVerdict};
use crate::keys::{PublicKey, SecretKey};
use crate::msg::{
    DirectionRequest, ErrorCode, NodeInfo, Path, Register, RelayTicket, Request, Response, RouteDirection, TunnelHello,
};
use crate::relay::BindKey;
use crate::stats::{Drops, LogLimit};
use crate::wire::Packet;

/// How long a DC's word that a peer may open a tunnel with us holds.
const VOUCH_TTL: Duration = Duration::from_secs(30);
/// How long we wait for a peer that the DC told to open the tunnel towards us.
const AWAIT_PEER: Duration = Duration::from_secs(8);
/// Pause before registering again after a failure.
const REGISTER_RETRY: Duration = Duration::from_secs(1);
/// How long hole punching may take before the build falls back to a relay.
const PUNCH_DEADLINE: Duration = Duration::from_secs(1);
/// First wait before a relayed tunnel asks whether a direct path is possible now; it doubles up
/// to [`UPGRADE_MAX`] while the answer is no.
const UPGRADE_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between two such questions.
const UPGRADE_MAX: Duration = Duration::from_secs(600);
/// Pause after the DC refused us (a configuration problem, not a network one).
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// Longest interval between two binds of a relayed tunnel (WireGuard's persistent keepalive);
/// shorter if the DC asks for more frequent registrations (its NATs forget sooner).
const BIND_EVERY: Duration = Duration::from_secs(25);
/// First wait for a bind's answer; it doubles up to 2 s until the relay answers.
const BIND_RETRY: Duration = Duration::from_millis(250);

/// What the node core is told at start; `ntmd` builds it from its configuration file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's own name, as enrolled at its DC.
    pub fqdn: String,
    /// The node's static key: its identity to its DC and to its peers.
    pub secret: SecretKey,
    /// The DC's public key; registrations and direction requests are addressed to it.
    pub dc_key: PublicKey,
    /// The DC's addresses, tried in order (those of a family the node has no address of are skipped).
    pub dcs: Vec<SocketAddr>,
}

/// A peer's state in the node table (the paper's built / building / none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// No tunnel and none under way (never asked for, or the last build failed).
    None,
    /// A build is under way: asking the DC, opening the tunnel, or waiting for the peer to.
    Building,
    /// A tunnel is up; traffic to the peer's VIPs can flow.
    Built,
}

/// A tunnel for the data plane to install.
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    /// The peer's name, normalized.
    pub fqdn: String,
    /// The peer's IPv4 VIP, as its DC vouched for it: packets to it go into this tunnel.
    pub vip4: Option<Ipv4Addr>,
    /// The peer's IPv6 VIP, as its DC vouched for it.
    pub vip6: Option<Ipv6Addr>,
    /// Where data packets go: the source address of the peer's handshake packet (its NAT
    /// mapping, if it is behind one).
    pub endpoint: SocketAddr,
    /// Our id of the tunnel: the receiver id in the data packets the peer sends us.
    pub local_id: u32,
    /// The peer's id of the tunnel: the receiver id in the data packets we send.
    pub remote_id: u32,
    /// The data keys from the tunnel's handshake, one per direction.
    pub keys: TunnelKeys,
    /// How the tunnel runs (always direct today).
    pub path: Path,
}

/// What the node core tells the daemon; drained with [`NodeCore::poll_event`].
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// The node is registered, or its registration changed (VIPs, DC, observed address).
    Registered {
        /// The node's IPv4 VIP, to put on its interface.
        vip4: Option<Ipv4Addr>,
        /// The node's IPv6 VIP, to put on its interface.
        vip6: Option<Ipv6Addr>,
        /// The DC address that answered.
        dc: SocketAddr,
        /// The node's address as the DC saw it.
        observed: SocketAddr,
        /// The node is behind a NAT.
        nat: bool,
        /// The NAT is 1:1 (the DC's probe came through): peers reach the node unsolicited.
        one_to_one: bool,
    },
    /// The node is no longer registered: the DC refused it or stopped answering. It keeps
    /// trying; new builds fail until it is registered again.
    RegistrationLost {
        /// Why, for the log and the status.
        reason: String,
    },
    /// A peer's entry in the node table changed state.
    PeerState {
        /// The peer's name, normalized.
        fqdn: String,
        /// Its new state.
        state: PeerState,
    },
    /// Install this tunnel (replacing any tunnel with the same peer).
    TunnelUp(TunnelSpec),
    /// Remove the tunnel with this local id (superseded).
    TunnelDown {
        /// The peer's name, normalized.
        fqdn: String,
        /// Our id of the tunnel to remove.
        local_id: u32,
    },
    /// Send a keepalive on every tunnel: the node is behind a NAT that forgets idle mappings,
    /// and its peers reach it only through them (WireGuard's persistent keepalive); or the
    /// node's addresses changed, and its peers learn the new endpoint from that packet.
    NatKeepalive,
    /// A tunnel's peer stopped answering (data sent, nothing received): the tunnel is removed
    /// (a `TunnelDown` follows) and built again through the DCs.
    Unresponsive {
        /// The peer's name, normalized.
        fqdn: String,
        /// The removed tunnel's local id.
        local_id: u32,
    },
    /// The path to a peer changes course: hole punching failed and a relay is asked for, or a
    /// relayed tunnel is being replaced by a direct one.
    PathNote {
        /// The peer's name, normalized.
        fqdn: String,
        /// What happens, in words.
        note: String,
    },
    /// A build ended without a tunnel (refused, unanswered, timed out). A live tunnel to the
    /// peer, if any, stays.
    BuildFailed {
        /// The peer's name, normalized.
        fqdn: String,
        /// Why, in words (also kept in [`Peer::last_error`]).
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Register,
    Direction,
    Tunnel,
}

#[derive(Debug, Clone, Copy)]
enum Building {
    /// Waiting for the DC's direction (exchange id).
    AskingDc(u32),
    /// We opened the tunnel (exchange id).
    Opening(u32),
    /// The peer opens; we wait for it until the deadline.
    AwaitingPeer(Instant),
}

/// One entry of the node table.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's name, normalized.
    pub fqdn: String,
    /// Built, building or none.
    pub state: PeerState,
    /// The peer's IPv4 VIP, once its DC told it.
    pub vip4: Option<Ipv4Addr>,
    /// The peer's IPv6 VIP, once its DC told it.
    pub vip6: Option<Ipv6Addr>,
    /// Where the live tunnel's data packets go; `None` before the first tunnel.
    pub endpoint: Option<SocketAddr>,
    /// How the live tunnel runs; `None` before the first tunnel.
    pub path: Option<Path>,
    /// The live tunnel's local id.
    pub local_id: Option<u32>,
    /// Why the last build failed; cleared when a tunnel comes up.
    pub last_error: Option<String>,
    building: Option<Building>,
    /// The build under way only tries to replace a relayed tunnel by a direct one: if it fails,
    /// the relayed tunnel stays and nothing is reported.
    upgrading: bool,
    /// Hole punching under way: at this instant stop, and fall back to a relay if the flag says
    /// so (the requester does; the target just stops).
    punch_deadline: Option<(Instant, bool)>,
    /// A relayed tunnel asks the DC for a direct path at this instant.
    upgrade_at: Option<Instant>,
    upgrade_wait: Duration,
}

impl Peer {
    fn new(fqdn: &str) -> Self {
        Self {
            fqdn: fqdn.to_string(),
            state: PeerState::None,
            vip4: None,
            vip6: None,
            endpoint: None,
            path: None,
            local_id: None,
            last_error: None,
            building: None,
            upgrading: false,
            punch_deadline: None,
            upgrade_at: None,
            upgrade_wait: UPGRADE_FIRST,
        }
    }
}

/// What a direction request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Any path.
    Any,
    /// Hole punching failed: a relay.
    Relay,
    /// A direct path to replace a relayed tunnel, or nothing.
    Upgrade,
}

#[derive(Debug, Clone)]
struct Vouch {
    info: NodeInfo,
    path: Path,
    /// For a relayed path: the local id the relay gave this node's side.
    relay_id: Option<u32>,
    expires: Instant,
}

/// The node's current registration with its DC.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The node's IPv4 VIP.
    pub vip4: Option<Ipv4Addr>,
    /// The node's IPv6 VIP.
    pub vip6: Option<Ipv6Addr>,
    /// The DC address that answered; direction requests go there.
    pub dc: SocketAddr,
    /// The node's address as the DC saw it.
    pub observed: SocketAddr,
    /// The node is behind a NAT (`observed` is not one of its addresses).
    pub nat: bool,
    /// The NAT is 1:1: the DC's probe came through it.
    pub one_to_one: bool,
}

/// A relayed tunnel's side at its relay: the node binds it now and then, so the relay knows
/// where the node is (and the node's NAT keeps the mapping).
#[derive(Debug, Clone)]
pub struct Binding {
    /// The peer's name.
    pub fqdn: String,
    /// The relay's address.
    pub relay: SocketAddr,
    /// The node's id in the session (the tunnel's local id).
    pub id: u32,
    /// When the relay last answered a bind.
    pub acked: Option<Instant>,
    key: BindKey,
    /// When the next bind goes: soon while one is unanswered, else after the interval.
    next: Instant,
    retry: Duration,
    last_ts: u64,
}

#[derive(Debug)]
enum RegState {
    Idle,
    /// Waiting for the answer to a registration (or refresh).
    Pending(u32),
    /// Registered; refresh at the instant.
    Fresh(Instant),
    /// Try again at the instant.
    Retry(Instant),
}

/// The node's protocol state machine. Feed it datagrams from the signaling socket, name
/// lookups, data-plane events and timeouts; drain transmits and [`NodeEvent`]s.
pub struct NodeCore {
    cfg: NodeConfig,
    local_addrs: Vec<SocketAddr>,
    dc_index: usize,
    reg: RegState,
    registration: Option<Registration>,
    keepalive: Duration,
    peers: HashMap<String, Peer>,
    vouches: HashMap<PublicKey, Vouch>,
    bindings: HashMap<u32, Binding>,
    /// Checks initiations before any handshake work (MACs, load, cookies, replays).
    guard: Guard,
    /// When the next NAT keepalive is due (only while behind a NAT that filters).
    nat_keepalive: Option<Instant>,
    exchanges: Initiator<(Tag, String)>,
    ids: Ids,
    ts: TsSource,
    ts_filter: TsFilter,
    /// Tunnel requests that arrived before the direction answer that vouches for them.
    parked: HashMap<String, exchange::Incoming>,
    drops: Drops,
    log_limit: LogLimit,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
}

impl NodeCore {
    /// A core for `cfg`, not yet registered: it registers once [`NodeCore::set_local_addrs`]
    /// gives it the node's addresses.
    pub fn new(cfg: NodeConfig) -> Self {
        Self {
            guard: Guard::new(&cfg.secret.public(), Limits::default()),
            cfg,
            local_addrs: Vec::new(),
            dc_index: 0,
            reg: RegState::Idle,
            registration: None,
            keepalive: Duration::from_secs(15),
            peers: HashMap::new(),
            vouches: HashMap::new(),
            bindings: HashMap::new(),
            nat_keepalive: None,
            exchanges: Initiator::default(),
            ids: Ids::default(),
            ts: TsSource::default(),
            ts_filter: TsFilter::default(),
            parked: HashMap::new(),
            drops: Drops::default(),
            log_limit: LogLimit::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// What the core dropped so far.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// The node's own name, as configured.
    pub fn fqdn(&self) -> &str {
        &self.cfg.fqdn
    }

    /// The current registration; `None` while unregistered.
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// Every entry of the node table, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The node table's entry for `fqdn` (case and trailing dot ignored).
    pub fn peer(&self, fqdn: &str) -> Option<&Peer> {
        self.peers.get(&normalize(fqdn))
    }

    /// The relay bindings of the relayed tunnels (and of those being built).
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// The node's own addresses (with its port), as it reports them to its DC.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The node's own addresses (with its port) changed, or are known for the first time:
    /// register (again) at once.
    pub fn set_local_addrs(&mut self, addrs: Vec<SocketAddr>, now: Now) {
        if addrs == self.local_addrs && !matches!(self.reg, RegState::Idle) {
            return;
        }
        info!(?addrs, "local addresses");
        let moved = !self.local_addrs.is_empty();
        self.local_addrs = addrs;
        if moved && self.peers.values().any(|p| p.local_id.is_some()) {
            // Peers learn the new endpoint from the first authenticated packet: send one on
            // every tunnel now rather than at the next keepalive.
            self.events.push_back(NodeEvent::NatKeepalive);
        }
        for b in self.bindings.values_mut() {
            b.next = now.mono;
            b.retry = BIND_RETRY;
        }
        if let RegState::Pending(id) = self.reg {
            self.exchanges.cancel(id);
            self.ids.release(id);
        }
        self.register(now);
    }

    fn dc_candidates(&self) -> Vec<SocketAddr> {
        let has = |v4: bool| self.local_addrs.iter().any(|a| a.is_ipv4() == v4);
        let usable: Vec<_> = self.cfg.dcs.iter().copied().filter(|d| has(d.is_ipv4())).collect();
        if usable.is_empty() {
            self.cfg.dcs.clone()
        } else {
            usable
        }
    }

    fn register(&mut self, now: Now) {
        let dcs = self.dc_candidates();
        let Some(dc) = dcs.get(self.dc_index % dcs.len().max(1)).copied() else {
            warn!("no DC address configured");
            self.reg = RegState::Retry(now.mono + REFUSED_RETRY);
            return;
        };
        let req = Request::Register(Register { fqdn: self.cfg.fqdn.clone(), addrs: self.local_addrs.clone() });
        let id = self.ids.alloc();
        match self.exchanges.start(
            (Tag::Register, String::new()),
            id,
            dc,
            self.cfg.dc_key,
            req,
            &self.cfg.secret,
            &mut self.ts,
            now,
        ) {
            Ok(t) => {
                debug!(%dc, "registering");
                self.transmits.push_back(t);
                self.reg = RegState::Pending(id);
            }
            Err(e) => {
                warn!("cannot start registration: {e}");
                self.ids.release(id);
                self.reg = RegState::Retry(now.mono + REGISTER_RETRY);
            }
        }
    }

    /// An application wants to reach `fqdn` (a DNS query, or the first packet to its VIP).
    /// Returns the peer's state after the call: `Built` means go ahead now; `Building` means
    /// wait for a `TunnelUp` or `BuildFailed` event for it.
    pub fn request(&mut self, fqdn: &str, now: Now) -> PeerState {
        let fqdn = normalize(fqdn);
        let state = self.peers.get(&fqdn).map(|p| p.state).unwrap_or(PeerState::None);
        if state != PeerState::None {
            return state;
        }
        if fqdn == self.cfg.fqdn {
            self.fail(&fqdn, "that is this node's own name".into());
            return PeerState::None;
        }
        if self.registration.is_none() {
            self.fail(&fqdn, "not registered with the DC".into());
            return PeerState::None;
        }
        if self.ask_dc(&fqdn, now) {
            PeerState::Building
        } else {
            PeerState::None
        }
    }

    /// Asks the DC for a direction to `fqdn`. A peer with a live tunnel keeps it (and stays
    /// *built*) until the new one replaces it.
    fn ask_dc(&mut self, fqdn: &str, now: Now) -> bool {
        self.ask_dc_for(fqdn, Ask::Any, now)
    }

    fn ask_dc_for(&mut self, fqdn: &str, ask: Ask, now: Now) -> bool {
        let Some(dc) = self.registration.as_ref().map(|r| r.dc) else { return false };
        let id = self.ids.alloc();
        let req = Request::Direction(DirectionRequest {
            target: fqdn.to_string(),
            relay: ask == Ask::Relay,
            upgrade: ask == Ask::Upgrade,
        });
        match self.exchanges.start(
            (Tag::Direction, fqdn.to_string()),
            id,
            dc,
            self.cfg.dc_key,
            req,
            &self.cfg.secret,
            &mut self.ts,
            now,
        ) {
            Ok(t) => {
                self.transmits.push_back(t);
                let p = self.peers.entry(fqdn.to_string()).or_insert_with(|| Peer::new(fqdn));
                p.upgrading = ask == Ask::Upgrade;
                p.punch_deadline = None;
                if let Some(Building::AskingDc(old) | Building::Opening(old)) =
                    p.building.replace(Building::AskingDc(id))
                {
                    self.exchanges.cancel(old);
                    self.ids.release(old);
                    self.bindings.remove(&old);
                }
                if p.state == PeerState::None {
                    self.set_state(fqdn, PeerState::Building);
                }
                true
            }
            Err(e) => {
                self.ids.release(id);
                self.fail(fqdn, format!("cannot start the direction request: {e}"));
                false
            }
        }
    }

    /// After the node moved: tunnels whose endpoint is of an address family the node no longer
    /// has are built again, through the DCs, over a family it has.
    fn rebuild_unreachable(&mut self, now: Now) {
        let has = |v4: bool| self.local_addrs.iter().any(|a| a.is_ipv4() == v4);
        let stranded: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.building.is_none())
            .filter(|p| p.endpoint.is_some_and(|e| !has(e.ip().to_canonical().is_ipv4())))
            .map(|p| p.fqdn.clone())
            .collect();
        for fqdn in stranded {
            info!(peer = %fqdn, "the tunnel's address family is gone here: building it again");
            self.ask_dc(&fqdn, now);
        }
    }

    /// The peer with this VIP, if the node table knows it.
    pub fn peer_by_vip(&self, vip: IpAddr) -> Option<&Peer> {
        self.peers.values().find(|p| match vip {
            IpAddr::V4(v) => p.vip4 == Some(v),
            IpAddr::V6(v) => p.vip6 == Some(v),
        })
    }

    /// The data plane saw a packet for `vip` and has no tunnel for it: build one if we know whose
    /// VIP it is.
    pub fn tunnel_miss(&mut self, vip: IpAddr, now: Now) -> Option<PeerState> {
        let fqdn = self.peer_by_vip(vip)?.fqdn.clone();
        Some(self.request(&fqdn, now))
    }

    /// The interval of keepalives on tunnels: 25 s (WireGuard's persistent keepalive), or the
    /// DC's registration interval if shorter (the DC knows its nodes' NATs forget sooner).
    pub fn keepalive_interval(&self) -> Duration {
        BIND_EVERY.min(self.keepalive)
    }

    /// The tunnel with this local id sent data and got nothing back for a while (see
    /// [`crate::liveness`]): remove it and build it again through the DCs.
    pub fn tunnel_unresponsive(&mut self, local_id: u32, now: Now) {
        let Some(p) = self.peers.values_mut().find(|p| p.local_id == Some(local_id)) else { return };
        let fqdn = p.fqdn.clone();
        warn!(peer = %fqdn, endpoint = ?p.endpoint, "the peer stopped answering: building the tunnel again");
        p.local_id = None;
        p.endpoint = None;
        p.path = None;
        self.events.push_back(NodeEvent::Unresponsive { fqdn: fqdn.clone(), local_id });
        self.events.push_back(NodeEvent::TunnelDown { fqdn: fqdn.clone(), local_id });
        self.ids.release(local_id);
        self.bindings.remove(&local_id);
        if self.peers[&fqdn].building.is_none() {
            self.set_state(&fqdn, PeerState::None);
            if self.registration.is_some() {
                self.ask_dc(&fqdn, now);
            }
        }
    }

    /// The data plane destroyed the tunnel with this local id (idle, deleted, device down...).
    pub fn tunnel_destroyed(&mut self, local_id: u32) {
        let Some(p) = self.peers.values_mut().find(|p| p.local_id == Some(local_id)) else {
            return;
        };
        p.local_id = None;
        p.endpoint = None;
        p.path = None;
        let fqdn = p.fqdn.clone();
        self.ids.release(local_id);
        self.bindings.remove(&local_id);
        if self.peers[&fqdn].building.is_none() {
            self.set_state(&fqdn, PeerState::None);
        }
    }

    /// A handshake datagram arrived (data packets belong to the data plane).
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Now) {
        match Packet::parse(data) {
            Ok(Packet::Init { sender, noise }) => match self.drops.guard(self.guard.check(from, data, now.mono)) {
                None => self.on_init(from, sender, noise, now),
                Some(Some(payload)) => self.transmits.push_back(Transmit { dst: from, payload }),
                Some(None) => {}
            },
            Ok(Packet::Cookie { .. }) => {
                match self.exchanges.on_cookie(data, from, &self.cfg.secret, &mut self.ts, now) {
                    Some(t) => self.transmits.push_back(t),
                    None => self.drops.unexpected += 1,
                }
            }
            Ok(Packet::Resp { sender, receiver, noise }) => {
                match self.exchanges.on_response(sender, receiver, noise, from, now) {
                    Ok(done) => self.on_completed(done, now),
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
            Ok(Packet::Bind { ack: true, id, ts }) => self.on_bind_ack(from, id, ts, data, now),
            Ok(Packet::Data { .. } | Packet::Bind { ack: false, .. }) => {
                self.drops.unexpected += 1;
                debug!(%from, "data packet reached the signaling core");
            }
            Err(e) => {
                self.drops.malformed += 1;
                debug!(%from, "dropped datagram: {e}");
            }
        }
    }

    fn on_init(&mut self, from: SocketAddr, sender: u32, noise: &[u8], now: Now) {
        let inc = match exchange::accept(&self.cfg.secret, from, sender, noise) {
            Ok(i) => i,
            Err(e) => {
                self.drops.malformed += 1;
                debug!(%from, "dropped handshake initiation: {e}");
                return;
            }
        };
        let trusted = inc.key == self.cfg.dc_key || self.vouches.get(&inc.key).is_some_and(|v| v.expires > now.mono);
        if !trusted {
            // The peer may have heard from its DC before our DC's answer reached us: keep its
            // request until that answer says whether its key is the one vouched for.
            if let Ok(Request::Tunnel(hello)) = &inc.request {
                let fqdn = normalize(&hello.fqdn);
                if matches!(self.peers.get(&fqdn).and_then(|p| p.building), Some(Building::AskingDc(_))) {
                    debug!(%from, peer = %fqdn, "tunnel request ahead of our DC's answer: parked");
                    self.parked.insert(fqdn, inc);
                    return;
                }
            }
            self.drops.unauthorized += 1;
            if let Some(held) = self.log_limit.allow(now.mono) {
                warn!(%from, key = %inc.key, held_back = held, "refusing a tunnel from a key no DC vouched for");
            }
            let id = self.ids.alloc();
            let t = inc.error(id, ErrorCode::NotAuthorized, "no DC vouched for this key", &mut self.ts, now);
            self.ids.release(id);
            self.transmits.extend(t);
            return;
        }
        self.on_init_trusted(inc, now);
    }

    fn on_init_trusted(&mut self, inc: exchange::Incoming, now: Now) {
        let from = inc.from;
        match inc.freshness(&mut self.ts_filter, now.unix_us) {
            TsVerdict::Fresh => {}
            TsVerdict::Replay => {
                self.drops.replayed += 1;
                debug!(%from, "dropped a replayed handshake initiation");
                return;
            }
            TsVerdict::Stale(floor) => {
                self.drops.replayed += 1;
                debug!(%from, key = %inc.key, "a handshake with an old timestamp: answered with the floor");
                let id = self.ids.alloc();
                self.transmits.extend(inc.stale(id, floor, &mut self.ts, now));
                self.ids.release(id);
                return;
            }
        }
        let request = match &inc.request {
            Ok(r) => r.clone(),
            Err(e) => {
                warn!(%from, "malformed request: {e}");
                let (code, m) = match e {
                    crate::msg::MsgError::Version(_) => (ErrorCode::Version, e.to_string()),
                    _ => (ErrorCode::BadRequest, e.to_string()),
                };
                let id = self.ids.alloc();
                self.transmits.extend(inc.error(id, code, m, &mut self.ts, now));
                self.ids.release(id);
                return;
            }
        };
        match request {
            Request::Route(rd) if inc.key == self.cfg.dc_key => self.on_route(inc, rd, now),
            Request::Probe if inc.key == self.cfg.dc_key => {
                debug!(%from, "the DC's probe came through the NAT");
                let id = self.ids.alloc();
                if let Ok((t, _)) = inc.respond(id, &Response::ProbeAck, &mut self.ts, now) {
                    self.transmits.push_back(t);
                }
                self.ids.release(id);
            }
            Request::Tunnel(hello) if inc.key != self.cfg.dc_key => self.on_tunnel_request(inc, hello, now),
            Request::Revoke(rv) if inc.key == self.cfg.dc_key => {
                self.on_revoke(&rv);
                let id = self.ids.alloc();
                if let Ok((t, _)) = inc.respond(id, &Response::RouteAck, &mut self.ts, now) {
                    self.transmits.push_back(t);
                }
                self.ids.release(id);
            }
            other => {
                warn!(%from, "unexpected request {:?}", std::mem::discriminant(&other));
                let id = self.ids.alloc();
                self.transmits.extend(inc.error(id, ErrorCode::BadRequest, "unexpected request", &mut self.ts, now));
                self.ids.release(id);
            }
        }
    }

    /// The DC no longer vouches for these nodes or zones: their tunnels go at once, builds
    /// under way stop, and nothing they send is taken until a DC vouches for them again.
    fn on_revoke(&mut self, rv: &crate::msg::Revoke) {
        let nodes: Vec<String> = rv.nodes.iter().map(|n| normalize(n)).collect();
        let zones: Vec<String> = rv.zones.iter().map(|z| format!(".{}", normalize(z))).collect();
        let revoked = |fqdn: &str| {
            let fqdn = normalize(fqdn);
            nodes.contains(&fqdn) || zones.iter().any(|z| fqdn.ends_with(z.as_str()))
        };
        self.vouches.retain(|_, v| !revoked(&v.info.fqdn));
        self.parked.retain(|f, _| !revoked(f));
        let gone: Vec<String> = self.peers.keys().filter(|f| revoked(f)).cloned().collect();
        for fqdn in gone {
            let p = self.peers.get_mut(&fqdn).expect("listed");
            warn!(peer = %fqdn, "the DC revoked this peer: tearing its tunnel down");
            if let Some(local_id) = p.local_id.take() {
                self.events.push_back(NodeEvent::TunnelDown { fqdn: fqdn.clone(), local_id });
                self.ids.release(local_id);
                self.bindings.remove(&local_id);
            }
            match p.building.take() {
                Some(Building::AskingDc(x) | Building::Opening(x)) => {
                    self.exchanges.cancel(x);
                    self.ids.release(x);
                    self.bindings.remove(&x);
                }
                Some(Building::AwaitingPeer(_)) | None => {}
            }
            self.set_state(&fqdn, PeerState::None);
            self.peers.remove(&fqdn);
        }
    }

    fn on_route(&mut self, inc: exchange::Incoming, rd: RouteDirection, now: Now) {
        let peer_key = PublicKey(rd.peer.public_key);
        let fqdn = normalize(&rd.peer.fqdn);
        info!(peer = %fqdn, endpoint = %rd.endpoint, initiate = rd.you_initiate, path = ?rd.path, "route direction from the DC");
        let relay_id = match &rd.relay {
            Some(ticket) => match self.bind_ticket(&fqdn, ticket, now) {
                Some(id) => Some(id),
                None => {
                    let id = self.ids.alloc();
                    self.transmits.extend(inc.error(id, ErrorCode::Busy, "relay id in use here", &mut self.ts, now));
                    self.ids.release(id);
                    return;
                }
            },
            None => None,
        };
        if relay_id.is_some() {
            // A relay instead of the hole punching under way: stop punching.
            if let Some(p) = self.peers.get_mut(&fqdn) {
                p.punch_deadline = None;
                if let Some(Building::Opening(old)) = p.building {
                    p.building = None;
                    self.exchanges.cancel(old);
                    self.ids.release(old);
                    self.bindings.remove(&old);
                }
            }
        }
        self.vouches
            .insert(peer_key, Vouch { info: rd.peer.clone(), path: rd.path, relay_id, expires: now.mono + VOUCH_TTL });
        let id = self.ids.alloc();
        if let Ok((t, _)) = inc.respond(id, &Response::RouteAck, &mut self.ts, now) {
            self.transmits.push_back(t);
        }
        self.ids.release(id);
        let p = self.peers.entry(fqdn.clone()).or_insert_with(|| Peer::new(&fqdn));
        p.vip4 = rd.peer.vip4;
        p.vip6 = rd.peer.vip6;
        if rd.you_initiate {
            if let Some(Building::Opening(_)) = p.building {
                return; // already opening (the DC repeated itself)
            }
            self.open_tunnel(&fqdn, peer_key, rd.endpoint, relay_id, now);
            if rd.path == Path::Punched {
                if let Some(p) = self.peers.get_mut(&fqdn) {
                    // A little longer than the requester, who decides on the relay.
                    p.punch_deadline = Some((now.mono + PUNCH_DEADLINE * 2, false));
                }
            }
        }
    }

    /// Reserves the ticket's id and binds it at the relay at once; `None` if the id is taken.
    fn bind_ticket(&mut self, fqdn: &str, ticket: &RelayTicket, now: Now) -> Option<u32> {
        let id = ticket.local_id;
        if self.bindings.get(&id).is_some_and(|b| b.fqdn == fqdn) {
            return Some(id); // the same ticket again (the DC repeated itself)
        }
        if !self.ids.reserve(id) {
            warn!(peer = fqdn, id, "the relay's id for this tunnel is in use here");
            return None;
        }
        self.bindings.insert(
            id,
            Binding {
                fqdn: fqdn.to_string(),
                relay: ticket.relay,
                id,
                acked: None,
                key: BindKey::new(&ticket.bind_key),
                next: now.mono,
                retry: BIND_RETRY,
                last_ts: 0,
            },
        );
        self.send_binds(now);
        Some(id)
    }

    /// Sends the binds that are due.
    fn send_binds(&mut self, now: Now) {
        let every = BIND_EVERY.min(self.keepalive);
        for b in self.bindings.values_mut() {
            if b.next > now.mono {
                continue;
            }
            let ts = self.ts.next(now.unix_us);
            b.last_ts = ts;
            self.transmits.push_back(Transmit { dst: b.relay, payload: b.key.seal(false, b.id, ts).to_vec() });
            // Again soon unless the relay answers (then after the interval).
            b.next = now.mono + b.retry.min(every);
            b.retry = (b.retry * 2).min(Duration::from_secs(2));
        }
    }

    fn on_bind_ack(&mut self, from: SocketAddr, id: u32, ts: u64, data: &[u8], now: Now) {
        let Some(b) = self.bindings.get_mut(&id).filter(|b| b.relay == from && b.last_ts == ts && b.key.verify(data))
        else {
            self.drops.unexpected += 1;
            debug!(%from, "dropped a bind answer for no binding of ours");
            return;
        };
        if b.acked.is_none() {
            debug!(peer = %b.fqdn, relay = %b.relay, id, "bound at the relay");
        }
        b.acked = Some(now.mono);
        b.retry = BIND_RETRY;
        b.next = now.mono + BIND_EVERY.min(self.keepalive);
    }

    fn open_tunnel(&mut self, fqdn: &str, key: PublicKey, endpoint: SocketAddr, relay_id: Option<u32>, now: Now) {
        let id = relay_id.unwrap_or_else(|| self.ids.alloc());
        let (vip4, vip6) = self.own_vips();
        let hello = TunnelHello { fqdn: self.cfg.fqdn.clone(), vip4, vip6 };
        match self.exchanges.start(
            (Tag::Tunnel, fqdn.to_string()),
            id,
            endpoint,
            key,
            Request::Tunnel(hello),
            &self.cfg.secret,
            &mut self.ts,
            now,
        ) {
            Ok(t) => {
                debug!(peer = fqdn, %endpoint, "opening tunnel");
                self.transmits.push_back(t);
                if let Some(p) = self.peers.get_mut(fqdn) {
                    p.building = Some(Building::Opening(id));
                }
                if self.peers.get(fqdn).map(|p| p.state) == Some(PeerState::None) {
                    self.set_state(fqdn, PeerState::Building);
                }
            }
            Err(e) => {
                self.ids.release(id);
                self.bindings.remove(&id);
                self.fail(fqdn, format!("cannot open the tunnel: {e}"));
            }
        }
    }

    fn own_vips(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        self.registration.as_ref().map(|r| (r.vip4, r.vip6)).unwrap_or_default()
    }

    fn on_tunnel_request(&mut self, inc: exchange::Incoming, hello: TunnelHello, now: Now) {
        let vouch = self.vouches.get(&inc.key).cloned().expect("checked by the caller");
        let fqdn = normalize(&vouch.info.fqdn);
        if normalize(&hello.fqdn) != fqdn {
            warn!(from = %inc.from, claimed = %hello.fqdn, vouched = %fqdn, "tunnel request under another name");
            let id = self.ids.alloc();
            self.transmits.extend(inc.error(
                id,
                ErrorCode::NotAuthorized,
                "name does not match the key",
                &mut self.ts,
                now,
            ));
            self.ids.release(id);
            return;
        }
        if vouch.path != Path::Relay
            && matches!(self.peers.get(&fqdn).and_then(|p| p.building), Some(Building::Opening(_)))
            && self.cfg.secret.public().0 > inc.key.0
        {
            // Both sides opened at once (hole punching, or two crossing builds): the side with
            // the greater key is the initiator; the other answers its request.
            debug!(peer = %fqdn, "crossing tunnel requests: ours goes on");
            return;
        }
        let (vip4, vip6) = self.own_vips();
        // A relayed tunnel takes the id the relay gave this side (reserved with the binding).
        let relay_id = vouch.relay_id.filter(|id| self.bindings.contains_key(id));
        if vouch.path == Path::Relay && relay_id.is_none() {
            self.drops.unexpected += 1;
            debug!(from = %inc.from, peer = %fqdn, "tunnel request for a relay session that is gone");
            return;
        }
        let local_id = relay_id.unwrap_or_else(|| self.ids.alloc());
        let remote_id = inc.sender;
        let from = inc.from;
        let reply = Response::Tunnel(TunnelHello { fqdn: self.cfg.fqdn.clone(), vip4, vip6 });
        match inc.respond(local_id, &reply, &mut self.ts, now) {
            Ok((t, keys)) => {
                self.transmits.push_back(t);
                // The source of an authenticated initiation is where the peer is reachable now
                // (its NAT's mapping, when it is behind one).
                self.tunnel_up(&fqdn, &vouch.info, from, local_id, remote_id, keys, vouch.path, now);
            }
            Err(e) => {
                if relay_id.is_none() {
                    self.ids.release(local_id);
                }
                warn!(peer = %fqdn, "cannot answer the tunnel request: {e}");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tunnel_up(
        &mut self,
        fqdn: &str,
        info: &NodeInfo,
        endpoint: SocketAddr,
        local_id: u32,
        remote_id: u32,
        keys: TunnelKeys,
        path: Path,
        now: Now,
    ) {
        // A VIP belongs to one live tunnel: a peer whose DCs vouch for a VIP that another peer's
        // live tunnel carries does not get it (a DC lying, or two DCs at odds).
        let clash = self.peers.values().find(|o| {
            o.fqdn != fqdn
                && o.local_id.is_some()
                && ((info.vip4.is_some() && o.vip4 == info.vip4) || (info.vip6.is_some() && o.vip6 == info.vip6))
        });
        if let Some(o) = clash {
            let why = format!("its VIP belongs to {}'s live tunnel", o.fqdn);
            warn!(peer = fqdn, vip4 = ?info.vip4, vip6 = ?info.vip6, "refusing a tunnel: {why}");
            self.ids.release(local_id);
            self.bindings.remove(&local_id);
            self.fail(fqdn, why);
            return;
        }
        let p = self.peers.entry(fqdn.to_string()).or_insert_with(|| Peer::new(fqdn));
        p.punch_deadline = None;
        p.upgrading = false;
        if path == Path::Relay {
            p.upgrade_at = Some(now.mono + p.upgrade_wait);
        } else {
            p.upgrade_at = None;
            p.upgrade_wait = UPGRADE_FIRST;
        }
        if let Some(Building::Opening(id)) | Some(Building::AskingDc(id)) = p.building {
            // A crossing build: the peer's tunnel won; forget ours.
            if id != local_id {
                self.exchanges.cancel(id);
                self.ids.release(id);
            }
        }
        let old = p.local_id.replace(local_id);
        p.building = None;
        p.vip4 = info.vip4;
        p.vip6 = info.vip6;
        p.endpoint = Some(endpoint);
        p.path = Some(path);
        p.last_error = None;
        if let Some(old) = old.filter(|o| *o != local_id) {
            self.events.push_back(NodeEvent::TunnelDown { fqdn: fqdn.to_string(), local_id: old });
            self.ids.release(old);
            self.bindings.remove(&old);
        }
        info!(peer = fqdn, %endpoint, local_id, "tunnel up");
        self.events.push_back(NodeEvent::TunnelUp(TunnelSpec {
            fqdn: fqdn.to_string(),
            vip4: info.vip4,
            vip6: info.vip6,
            endpoint,
            local_id,
            remote_id,
            keys,
            path,
        }));
        self.set_state(fqdn, PeerState::Built);
    }

    fn on_completed(&mut self, done: exchange::Completed<(Tag, String)>, now: Now) {
        let (tag, fqdn) = done.tag.clone();
        match tag {
            Tag::Register => self.on_registered(done, now),
            Tag::Direction => {
                self.ids.release(done.id);
                let p = self.peers.get(&fqdn);
                if !matches!(p.and_then(|p| p.building), Some(Building::AskingDc(id)) if id == done.id) {
                    return; // superseded
                }
                match done.response {
                    Response::Direction(ans) if normalize(&ans.peer.fqdn) == fqdn => {
                        let key = PublicKey(ans.peer.public_key);
                        debug!(peer = %fqdn, endpoint = %ans.endpoint, requester_initiates = ans.requester_initiates, rtt = ?done.rtt, "direction");
                        let relay_id = match &ans.relay {
                            Some(ticket) => match self.bind_ticket(&fqdn, ticket, now) {
                                Some(id) => Some(id),
                                None => return self.fail(&fqdn, "the relay's id is in use here".into()),
                            },
                            None => None,
                        };
                        self.vouches.insert(
                            key,
                            Vouch { info: ans.peer.clone(), path: ans.path, relay_id, expires: now.mono + VOUCH_TTL },
                        );
                        if let Some(p) = self.peers.get_mut(&fqdn) {
                            p.vip4 = ans.peer.vip4;
                            p.vip6 = ans.peer.vip6;
                            p.building = Some(Building::AwaitingPeer(now.mono + AWAIT_PEER));
                        }
                        if ans.requester_initiates {
                            self.open_tunnel(&fqdn, key, ans.endpoint, relay_id, now);
                            if ans.path == Path::Punched {
                                if let Some(p) = self.peers.get_mut(&fqdn) {
                                    p.punch_deadline = Some((now.mono + PUNCH_DEADLINE, true));
                                }
                            }
                        } else if let Some(inc) = self.parked.remove(&fqdn) {
                            if inc.key == key {
                                self.on_init_trusted(inc, now);
                            } else {
                                warn!(peer = %fqdn, "a parked tunnel request had another key than the vouched one");
                            }
                        }
                    }
                    Response::Error(e) => self.fail(&fqdn, format!("the DC refused: {e}")),
                    other => self.fail(&fqdn, format!("unexpected answer from the DC: {other:?}")),
                }
            }
            Tag::Tunnel => {
                let ours = matches!(self.peers.get(&fqdn).and_then(|p| p.building), Some(Building::Opening(id)) if id == done.id);
                if !ours {
                    self.ids.release(done.id);
                    self.bindings.remove(&done.id);
                    return;
                }
                match done.response {
                    Response::Tunnel(hello) if normalize(&hello.fqdn) == fqdn => {
                        let vouch = self.vouches.values().find(|v| normalize(&v.info.fqdn) == fqdn).cloned();
                        let (info, path) = match vouch {
                            Some(v) => (v.info, v.path),
                            None => (
                                NodeInfo {
                                    fqdn: fqdn.clone(),
                                    public_key: [0; 32],
                                    vip4: hello.vip4,
                                    vip6: hello.vip6,
                                    endpoints: vec![],
                                    nat: false,
                                },
                                Path::Direct,
                            ),
                        };
                        let path = if self.bindings.contains_key(&done.id) { Path::Relay } else { path };
                        self.tunnel_up(&fqdn, &info, done.from, done.id, done.remote_id, done.keys, path, now);
                    }
                    Response::Error(e) => {
                        self.ids.release(done.id);
                        self.bindings.remove(&done.id);
                        self.fail(&fqdn, format!("the peer refused: {e}"));
                    }
                    other => {
                        self.ids.release(done.id);
                        self.bindings.remove(&done.id);
                        self.fail(&fqdn, format!("unexpected answer from the peer: {other:?}"));
                    }
                }
            }
        }
    }

    fn on_registered(&mut self, done: exchange::Completed<(Tag, String)>, now: Now) {
        self.ids.release(done.id);
        if !matches!(self.reg, RegState::Pending(id) if id == done.id) {
            return;
        }
        match done.response {
            Response::Registered(r) => {
                self.keepalive = Duration::from_millis(r.keepalive_ms.clamp(1000, 3_600_000) as u64);
                let reg = Registration {
                    vip4: r.vip4,
                    vip6: r.vip6,
                    dc: done.from,
                    observed: r.observed,
                    nat: r.nat,
                    one_to_one: r.one_to_one,
                };
                let changed = self.registration.as_ref().is_none_or(|o| {
                    (o.vip4, o.vip6, o.dc, o.observed, o.nat, o.one_to_one)
                        != (reg.vip4, reg.vip6, reg.dc, reg.observed, reg.nat, reg.one_to_one)
                });
                if changed {
                    info!(vip4 = ?r.vip4, vip6 = ?r.vip6, dc = %done.from, observed = %r.observed, nat = r.nat, rtt = ?done.rtt, "registered");
                    self.events.push_back(NodeEvent::Registered {
                        vip4: r.vip4,
                        vip6: r.vip6,
                        dc: done.from,
                        observed: r.observed,
                        nat: r.nat,
                        one_to_one: r.one_to_one,
                    });
                } else {
                    debug!(rtt = ?done.rtt, "registration refreshed");
                }
                self.nat_keepalive = (reg.nat && !reg.one_to_one)
                    .then(|| self.nat_keepalive.unwrap_or(now.mono + self.keepalive_interval()));
                self.registration = Some(reg);
                self.reg = RegState::Fresh(now.mono + self.keepalive);
                if changed {
                    self.rebuild_unreachable(now);
                    // A direct path may exist now for the relayed tunnels.
                    for p in self.peers.values_mut().filter(|p| p.path == Some(Path::Relay)) {
                        p.upgrade_at = Some(now.mono);
                        p.upgrade_wait = UPGRADE_FIRST;
                    }
                }
            }
            Response::Error(e) => {
                warn!(dc = %done.from, "the DC refused the registration: {e}");
                self.lose_registration(format!("refused by the DC: {e}"));
                self.reg = RegState::Retry(now.mono + REFUSED_RETRY);
            }
            other => {
                warn!("unexpected answer to the registration: {other:?}");
                self.reg = RegState::Retry(now.mono + REGISTER_RETRY);
            }
        }
    }

    fn lose_registration(&mut self, reason: String) {
        if self.registration.take().is_some() {
            self.events.push_back(NodeEvent::RegistrationLost { reason });
        }
    }

    fn fail(&mut self, fqdn: &str, reason: String) {
        if let Some(p) = self.peers.get_mut(fqdn).filter(|p| p.upgrading && p.local_id.is_some()) {
            // Only a try at a direct path: the relayed tunnel stays, nothing failed.
            debug!(peer = fqdn, "no direct path yet: {reason}");
            p.upgrading = false;
            p.building = None;
            p.punch_deadline = None;
            return;
        }
        info!(peer = fqdn, "tunnel build failed: {reason}");
        self.parked.remove(fqdn);
        let p = self.peers.entry(fqdn.to_string()).or_insert_with(|| Peer::new(fqdn));
        p.building = None;
        p.upgrading = false;
        p.punch_deadline = None;
        p.last_error = Some(reason.clone());
        let built = p.local_id.is_some();
        self.events.push_back(NodeEvent::BuildFailed { fqdn: fqdn.to_string(), reason });
        self.set_state(fqdn, if built { PeerState::Built } else { PeerState::None });
    }

    fn set_state(&mut self, fqdn: &str, state: PeerState) {
        let p = self.peers.entry(fqdn.to_string()).or_insert_with(|| Peer::new(fqdn));
        if p.state != state {
            p.state = state;
            self.events.push_back(NodeEvent::PeerState { fqdn: fqdn.to_string(), state });
        }
    }

    /// When [`NodeCore::handle_timeout`] must next be called: a retransmission, a
    /// re-registration, a peer's deadline to open, or a vouch expiring.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reg = match self.reg {
            RegState::Fresh(t) | RegState::Retry(t) => Some(t),
            _ => None,
        };
        let awaiting = self.peers.values().filter_map(|p| match p.building {
            Some(Building::AwaitingPeer(t)) => Some(t),
            _ => None,
        });
        let vouch = self.vouches.values().map(|v| v.expires);
        let binds = self.bindings.values().map(|b| b.next);
        let punches = self.peers.values().filter_map(|p| p.punch_deadline.map(|(t, _)| t));
        let upgrades = self
            .peers
            .values()
            .filter(|p| p.path == Some(Path::Relay) && p.building.is_none())
            .filter_map(|p| p.upgrade_at);
        [reg, self.exchanges.poll_timeout(), self.nat_keepalive]
            .into_iter()
            .flatten()
            .chain(awaiting)
            .chain(vouch)
            .chain(binds)
            .chain(punches)
            .chain(upgrades)
            .min()
    }

    /// Retransmits what is due, re-registers (the keepalive), and fails builds whose DC or peer
    /// did not answer in time.
    pub fn handle_timeout(&mut self, now: Now) {
        let (retx, failed) = self.exchanges.on_timeout(&self.cfg.secret, &mut self.ts, now);
        self.transmits.extend(retx);
        for f in failed {
            self.ids.release(f.id);
            let (tag, fqdn) = f.tag;
            match tag {
                Tag::Register => {
                    if matches!(self.reg, RegState::Pending(id) if id == f.id) {
                        warn!(dc = %f.dst, "the DC does not answer");
                        self.lose_registration(format!("DC {} does not answer", f.dst));
                        self.dc_index += 1;
                        self.reg = RegState::Retry(now.mono + REGISTER_RETRY);
                    }
                }
                Tag::Direction => {
                    if matches!(self.peers.get(&fqdn).and_then(|p| p.building), Some(Building::AskingDc(id)) if id == f.id)
                    {
                        self.fail(&fqdn, "the DC did not answer".into());
                    }
                }
                Tag::Tunnel => {
                    self.bindings.remove(&f.id);
                    if matches!(self.peers.get(&fqdn).and_then(|p| p.building), Some(Building::Opening(id)) if id == f.id)
                    {
                        self.fail(&fqdn, format!("the peer did not answer at {}", f.dst));
                    }
                }
            }
        }
        match self.reg {
            RegState::Fresh(t) | RegState::Retry(t) if t <= now.mono => self.register(now),
            _ => {}
        }
        let late: Vec<String> = self
            .peers
            .values()
            .filter(|p| matches!(p.building, Some(Building::AwaitingPeer(t)) if t <= now.mono))
            .map(|p| p.fqdn.clone())
            .collect();
        for fqdn in late {
            self.fail(&fqdn, "the peer did not open the tunnel".into());
        }
        self.vouches.retain(|_, v| v.expires > now.mono);
        self.punch_deadlines(now);
        self.upgrades(now);
        self.send_binds(now);
        if self.nat_keepalive.is_some_and(|t| t <= now.mono) {
            self.nat_keepalive = Some(now.mono + self.keepalive_interval());
            // Only while a tunnel lives: keepalives do not keep an idle tunnel alive.
            if self.peers.values().any(|p| p.local_id.is_some()) {
                self.events.push_back(NodeEvent::NatKeepalive);
            }
        }
    }

    /// Hole punching that did not give a tunnel in time: the requester falls back to a relay
    /// (or, trying to replace a relayed tunnel, keeps it); the target stops sending.
    fn punch_deadlines(&mut self, now: Now) {
        let late: Vec<(String, bool)> = self
            .peers
            .values()
            .filter_map(|p| p.punch_deadline.filter(|(t, _)| *t <= now.mono).map(|(_, f)| (p.fqdn.clone(), f)))
            .collect();
        for (fqdn, fall_back) in late {
            let Some(p) = self.peers.get_mut(&fqdn) else { continue };
            p.punch_deadline = None;
            if let Some(Building::Opening(id)) = p.building {
                p.building = None;
                self.exchanges.cancel(id);
                self.ids.release(id);
            } else {
                continue;
            }
            let upgrading = p.upgrading;
            let built = p.local_id.is_some();
            if !fall_back {
                debug!(peer = %fqdn, "hole punching: our part is over");
                self.set_state(&fqdn, if built { PeerState::Built } else { PeerState::None });
                continue;
            }
            if upgrading {
                self.fail(&fqdn, "hole punching failed".into());
                continue;
            }
            info!(peer = %fqdn, "hole punching failed within {PUNCH_DEADLINE:?}: asking for a relay");
            self.events.push_back(NodeEvent::PathNote {
                fqdn: fqdn.clone(),
                note: "hole punching failed: falling back to a relay".into(),
            });
            self.ask_dc_for(&fqdn, Ask::Relay, now);
        }
    }

    /// Relayed tunnels ask now and then whether a direct path is possible (a move, a NAT gone);
    /// the relayed tunnel carries the traffic until a direct one replaces it.
    fn upgrades(&mut self, now: Now) {
        if self.registration.is_none() {
            return;
        }
        let due: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.path == Some(Path::Relay) && p.building.is_none() && p.local_id.is_some())
            .filter(|p| p.upgrade_at.is_some_and(|t| t <= now.mono))
            .map(|p| p.fqdn.clone())
            .collect();
        for fqdn in due {
            if let Some(p) = self.peers.get_mut(&fqdn) {
                p.upgrade_at = Some(now.mono + p.upgrade_wait);
                p.upgrade_wait = (p.upgrade_wait * 2).min(UPGRADE_MAX);
            }
            debug!(peer = %fqdn, "asking whether a direct path is possible now");
            self.ask_dc_for(&fqdn, Ask::Upgrade, now);
        }
    }

    /// The next datagram to send from the signaling socket, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the daemon, if any; call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }
}

/// Names compare in lower case, without a trailing dot.
pub fn normalize(fqdn: &str) -> String {
    fqdn.trim_end_matches('.').to_ascii_lowercase()
}
