//! The node daemon's event handling, without I/O of its own: the node's sans-IO core, the node
//! table's waiters and counters, and the data plane behind its trait. The daemon (`daemon.rs`)
//! feeds it inputs and carries out what it asks (datagrams to send, VIPs to put on the device);
//! a simulation can drive it the same way with a simulated network and an in-memory data plane
//! (`tests/sim.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use host::driver::DropReport;
use host::metrics::{self, Histogram, Page, Unit};
use proto::exchange::{Now, Transmit};
use proto::liveness::{Liveness, Sample, Verdict};
use proto::node::{NodeConfig, NodeCore, NodeEvent, PeerState};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

use crate::dataplane::{Dataplane, DpEvent, TunnelInfo};
use crate::status::{DestroyReason, Event, PeerStatus, Status, TunnelStatus};

/// Upper bounds (seconds) of the tunnel build latency histogram.
const BUILD_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// A peer's VIPs (IPv4, IPv6).
pub type Vips = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// What the other tasks ask of the handler.
#[derive(Debug)]
pub enum Cmd {
    /// The VIPs of `fqdn` once its tunnel is up (what the stub resolver asks for a name).
    Resolve {
        /// The name, lowercase, without the trailing dot.
        fqdn: String,
        /// Gets the VIPs, or why there is no tunnel (the stub then answers SERVFAIL).
        reply: oneshot::Sender<Result<Vips, String>>,
    },
    /// The state `ntmctl show` prints; `read` is what the data plane said, when it was asked
    /// off the handler's task (else the handler asks it).
    Show {
        /// The data plane's readings, if already taken; `None`: the handler reads it.
        read: Option<Readings>,
        /// Gets the node's status.
        reply: oneshot::Sender<Status>,
    },
    /// The metrics page (`read` as for `Show`).
    Metrics {
        /// The data plane's readings, if already taken; `None`: the handler reads it.
        read: Option<Readings>,
        /// Gets the Prometheus page.
        reply: oneshot::Sender<String>,
    },
    /// The node's own addresses changed.
    LocalAddrs(Vec<SocketAddr>),
    /// The data plane was read off the handler's task for the `Show` and `Metrics` requests
    /// waiting in the daemon (which answers them); the handler has nothing to do with it.
    Readings(Readings),
    /// The periodic sample of the tunnels' counters, for their liveness.
    Sample(Readings),
}

/// What the data plane reports about its tunnels, for `Show` and `Metrics`.
#[derive(Debug, Clone)]
pub struct Readings {
    /// Its tunnels with their counters.
    pub tunnels: Vec<TunnelInfo>,
    /// Data packets that matched no tunnel.
    pub orphan_drops: u64,
}

impl Readings {
    /// Asks `dataplane` (which may block: see [`Dataplane::slow_reads`]).
    pub fn of(dataplane: &dyn Dataplane) -> Readings {
        Readings { tunnels: dataplane.tunnels(), orphan_drops: dataplane.orphan_drops() }
    }
}

/// What the handler is fed.
#[derive(Debug)]
pub enum Input {
    /// Something the data plane saw: a signaling datagram, a tunnel destroyed, a miss, an
    /// endpoint change.
    Dataplane(DpEvent),
    /// A request from another task of the daemon.
    Cmd(Cmd),
}

/// What the daemon counts for its metrics.
#[derive(Debug)]
struct Counters {
    built: u64,
    /// By reason, indexed by the reason's number.
    destroyed: Vec<u64>,
    build_failed: u64,
    /// Tunnels removed because their peer stopped answering.
    unresponsive: u64,
    misses: u64,
    build_latency: Histogram,
    /// When each build under way started.
    build_started: HashMap<String, Instant>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            built: 0,
            destroyed: vec![0; DestroyReason::all().count()],
            build_failed: 0,
            unresponsive: 0,
            misses: 0,
            build_latency: metrics::histogram(&BUILD_BUCKETS),
            build_started: HashMap::new(),
        }
    }
}

/// A lookup waiting for its peer's tunnel: the peer's VIPs, or why there is no tunnel.
type Waiter = oneshot::Sender<Result<Vips, String>>;

/// The node daemon's state and event handling.
pub struct Handler {
    fqdn: String,
    core: NodeCore,
    dataplane: Arc<dyn Dataplane>,
    events: broadcast::Sender<Event>,
    /// Resolutions waiting for a peer's tunnel.
    waiters: HashMap<String, Vec<Waiter>>,
    /// Answers for waiters, released by [`Handler::release_answers`] once the datagrams of the
    /// same step have left.
    answers: Vec<(Waiter, Result<Vips, String>)>,
    /// The VIPs the registration gave, and those on the device.
    wanted_vips: Vips,
    device_vips: Vips,
    counters: Counters,
    /// The periodic summary of drops.
    reported: DropReport,
    /// Which peers still answer.
    liveness: Liveness,
    /// The node's addresses, as last reported by the watcher.
    local_addrs: Vec<SocketAddr>,
}

impl Handler {
    /// A handler for the node of `config`, on `dataplane`, publishing its events on `events`.
    pub fn new(config: NodeConfig, dataplane: Arc<dyn Dataplane>, events: broadcast::Sender<Event>) -> Handler {
        Handler {
            fqdn: config.fqdn.clone(),
            core: NodeCore::new(config),
            dataplane,
            events,
            waiters: HashMap::new(),
            answers: Vec::new(),
            wanted_vips: (None, None),
            device_vips: (None, None),
            counters: Counters::default(),
            reported: DropReport::default(),
            liveness: Liveness::default(),
            local_addrs: Vec::new(),
        }
    }

    /// One input.
    pub fn input(&mut self, input: Input, now: Now) {
        match input {
            Input::Dataplane(ev) => self.on_dataplane(ev, now),
            Input::Cmd(cmd) => self.on_cmd(cmd, now),
        }
        self.core_events();
    }

    /// When the next timer expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// The timer expired.
    pub fn timeout(&mut self, now: Now) {
        self.core.handle_timeout(now);
        self.core_events();
    }

    /// A datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }

    /// Answers the lookups whose tunnel is up (or failed). Called once the step's datagrams
    /// are sent: on the side that answers a tunnel handshake, the answer must leave before the
    /// application, told the VIP, sends its first packet, or the peer gets that packet before
    /// it has the tunnel.
    pub fn release_answers(&mut self) {
        for (w, r) in self.answers.drain(..) {
            let _ = w.send(r);
        }
    }

    /// Queues the answer for every lookup waiting on `fqdn`.
    fn answer(&mut self, fqdn: &str, r: Result<Vips, String>) {
        for w in self.waiters.remove(fqdn).unwrap_or_default() {
            self.answers.push((w, r.clone()));
        }
    }

    /// The VIPs to put on the virtual device, when they changed; [`Handler::vips_set`] says
    /// they are.
    pub fn poll_vips(&self) -> Option<Vips> {
        (self.wanted_vips != self.device_vips).then_some(self.wanted_vips)
    }

    /// The device carries `vips` now.
    pub fn vips_set(&mut self, vips: Vips) {
        self.device_vips = vips;
    }

    /// A peer's state in the node table.
    pub fn peer_state(&self, fqdn: &str) -> PeerState {
        self.core.peer(fqdn).map_or(PeerState::None, |p| p.state)
    }

    /// Logs what was dropped since start, when it changed.
    pub fn summary(&mut self) {
        let data = self.dataplane.orphan_drops();
        self.reported.report(self.core.drops(), &[("data without tunnel", data)]);
    }
}

impl Handler {
    /// A data plane event.
    fn on_dataplane(&mut self, ev: DpEvent, now: Now) {
        match ev {
            DpEvent::Signaling { from, payload } => self.core.handle_datagram(from, &payload, now),
            DpEvent::Destroyed { local_id, fqdn, vip, reason } => {
                info!(peer = %fqdn, reason = reason.name(), "tunnel destroyed");
                if let Some(n) = self.counters.destroyed.get_mut(reason as usize) {
                    *n += 1;
                }
                let _ = self.events.send(Event::TunnelDestroyed {
                    fqdn,
                    vip: vip.map(|v| v.to_string()),
                    reason,
                    local_id,
                });
                self.core.tunnel_destroyed(local_id);
            }
            DpEvent::Miss { vip } => {
                self.counters.misses += 1;
                let _ = self.events.send(Event::TunnelMiss { vip: vip.to_string() });
                match self.core.tunnel_miss(vip, now) {
                    Some(state) => debug!(%vip, ?state, "miss"),
                    None => debug!(%vip, "miss for a VIP the node table does not know"),
                }
            }
            DpEvent::EndpointChanged { local_id, endpoint } => {
                if let Some(p) = self.core.peers().find(|p| p.local_id == Some(local_id)) {
                    info!(peer = %p.fqdn, %endpoint, "peer moved");
                    let _ = self
                        .events
                        .send(Event::EndpointChanged { fqdn: p.fqdn.clone(), endpoint: endpoint.to_string() });
                }
            }
        }
    }

    /// A request from another task.
    fn on_cmd(&mut self, cmd: Cmd, now: Now) {
        match cmd {
            Cmd::Resolve { fqdn, reply } => {
                if fqdn == self.fqdn {
                    let r = self.core.registration().map(|r| (r.vip4, r.vip6)).ok_or("not registered yet".to_string());
                    let _ = reply.send(r);
                    return;
                }
                match self.core.request(&fqdn, now) {
                    PeerState::Built => {
                        let p = self.core.peer(&fqdn).expect("built peer");
                        let _ = reply.send(Ok((p.vip4, p.vip6)));
                    }
                    PeerState::Building => self.waiters.entry(fqdn).or_default().push(reply),
                    PeerState::None => {
                        let why = self.core.peer(&fqdn).and_then(|p| p.last_error.clone());
                        let _ = reply.send(Err(why.unwrap_or_else(|| "cannot build a tunnel".into())));
                    }
                }
            }
            Cmd::Show { read, reply } => {
                let read = read.unwrap_or_else(|| Readings::of(&*self.dataplane));
                let _ = reply.send(self.status(read));
            }
            Cmd::Metrics { read, reply } => {
                let read = read.unwrap_or_else(|| Readings::of(&*self.dataplane));
                let _ = reply.send(self.metrics(read));
            }
            Cmd::LocalAddrs(addrs) => {
                if addrs != self.local_addrs {
                    let addresses = addrs.iter().map(|a| a.ip().to_string()).collect();
                    let _ = self.events.send(Event::AddressesChanged { addresses });
                    self.local_addrs = addrs.clone();
                }
                self.core.set_local_addrs(addrs, now)
            }
            Cmd::Readings(_) => {}
            Cmd::Sample(read) => {
                let samples = read.tunnels.iter().map(|t| Sample {
                    local_id: t.local_id,
                    tx_packets: t.counters.tx_packets,
                    rx_packets: t.counters.rx_packets,
                    rx_bytes: t.counters.rx_bytes,
                });
                for v in self.liveness.sample(samples, now.mono) {
                    match v {
                        Verdict::Keepalive(id) => self.dataplane.send_keepalives(Some(id)),
                        Verdict::Dead(id) => {
                            self.counters.unresponsive += 1;
                            self.core.tunnel_unresponsive(id, now);
                        }
                    }
                }
            }
        }
    }

    /// Acts on what the core reported.
    fn core_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            self.on_core_event(ev);
        }
    }

    fn on_core_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Registered { vip4, vip6, dc, observed, nat, one_to_one } => {
                self.wanted_vips = (vip4, vip6);
                // Peers follow authenticated packets: tell them where this node is now.
                self.dataplane.send_keepalives(None);
                info!("keepalives sent on every tunnel after the registration changed");
                let _ = self.events.send(Event::Registered {
                    vip4: vip4.map(|v| v.to_string()),
                    vip6: vip6.map(|v| v.to_string()),
                    dc: dc.to_string(),
                    nat_outer: (nat || one_to_one).then(|| observed.to_string()),
                    one_to_one,
                });
            }
            NodeEvent::RegistrationLost { reason } => {
                let _ = self.events.send(Event::RegistrationLost { reason });
            }
            NodeEvent::PeerState { fqdn, state } => {
                if state == PeerState::Building {
                    self.counters.build_started.insert(fqdn.clone(), Instant::now());
                }
                let _ = self.events.send(Event::PeerState { fqdn, state });
            }
            NodeEvent::TunnelUp(spec) => {
                self.counters.built += 1;
                if let Some(t0) = self.counters.build_started.remove(&spec.fqdn) {
                    self.counters.build_latency.observe(t0.elapsed().as_secs_f64());
                }
                if let Err(e) = self.dataplane.install(&spec) {
                    // The data plane has no tunnel: the peer is not built, and the next lookup
                    // or miss tries again.
                    let reason = format!("installing the tunnel: {e:#}");
                    warn!(peer = %spec.fqdn, "{reason}");
                    self.counters.build_failed += 1;
                    self.core.tunnel_destroyed(spec.local_id);
                    self.answer(&spec.fqdn, Err(reason.clone()));
                    let _ = self.events.send(Event::BuildFailed { fqdn: spec.fqdn, reason });
                    return;
                }
                let _ = self.events.send(Event::TunnelBuilt {
                    fqdn: spec.fqdn.clone(),
                    vip: first_vip(spec.vip4, spec.vip6),
                    endpoint: spec.endpoint.to_string(),
                    path: spec.path,
                    local_id: spec.local_id,
                });
                self.answer(&spec.fqdn, Ok((spec.vip4, spec.vip6)));
            }
            NodeEvent::TunnelDown { fqdn, local_id } => {
                if let Err(e) = self.dataplane.remove(local_id) {
                    warn!(peer = %fqdn, "removing the tunnel: {e:#}");
                }
                let vip = self.core.peer(&fqdn).and_then(|p| first_vip(p.vip4, p.vip6));
                let _ =
                    self.events.send(Event::TunnelDestroyed { fqdn, vip, reason: DestroyReason::Deleted, local_id });
            }
            NodeEvent::NatKeepalive => self.dataplane.send_keepalives(None),
            NodeEvent::PathNote { fqdn, note } => {
                let _ = self.events.send(Event::PathNote { fqdn, note });
            }
            NodeEvent::Unresponsive { fqdn, local_id } => {
                let _ = self.events.send(Event::PeerUnresponsive { fqdn, local_id });
            }
            NodeEvent::BuildFailed { fqdn, reason } => {
                self.counters.build_failed += 1;
                self.counters.build_started.remove(&fqdn);
                self.answer(&fqdn, Err(reason.clone()));
                let _ = self.events.send(Event::BuildFailed { fqdn, reason });
            }
        }
    }

    fn metrics(&self, read: Readings) -> String {
        let c = &self.counters;
        let mut p = Page::new("ntmd");
        p.gauge(
            "ntm_registered",
            "1 while the node is registered with its DC.",
            i64::from(self.core.registration().is_some()),
        );
        let count = |st: PeerState| self.core.peers().filter(|p| p.state == st).count() as i64;
        p.gauges(
            "ntm_peers",
            "Peers in the node table by state.",
            "state",
            [
                ("built", count(PeerState::Built)),
                ("building", count(PeerState::Building)),
                ("none", count(PeerState::None)),
            ],
        );
        let tunnels = read.tunnels;
        p.gauge("ntm_tunnels", "Tunnels in the data plane.", tunnels.len() as i64);
        p.counter("ntm_tunnels_built_total", "Tunnels built.", c.built);
        p.counters(
            "ntm_tunnels_destroyed_total",
            "Tunnels destroyed, by reason.",
            "reason",
            DestroyReason::all().map(|r| (r.name(), c.destroyed.get(r as usize).copied().unwrap_or(0))),
        );
        p.counter("ntm_tunnel_build_failures_total", "Tunnel builds that failed.", c.build_failed);
        p.counter(
            "ntm_tunnels_unresponsive_total",
            "Tunnels removed and built again because their peer stopped answering.",
            c.unresponsive,
        );
        p.counter("ntm_tunnel_misses_total", "Packets for a VIP without a tunnel (rate limited).", c.misses);
        p.register(
            "ntm_tunnel_build",
            "From the first request for a peer to its tunnel up.",
            Some(Unit::Seconds),
            c.build_latency.clone(),
        );
        let bytes = |f: fn(&crate::dataplane::TunnelInfo) -> u64| {
            tunnels.iter().map(move |t| (t.fqdn.clone(), f(t))).collect::<Vec<_>>()
        };
        p.counters("ntm_tunnel_tx_bytes", "Bytes sent into each live tunnel.", "peer", bytes(|t| t.counters.tx_bytes));
        p.counters(
            "ntm_tunnel_rx_bytes",
            "Bytes received from each live tunnel.",
            "peer",
            bytes(|t| t.counters.rx_bytes),
        );
        p.counters(
            "ntm_tunnel_rx_dropped",
            "Packets dropped on each live tunnel.",
            "peer",
            bytes(|t| t.counters.rx_dropped),
        );
        let d = self.core.drops();
        p.counters("ntm_signaling_dropped_total", "Signaling datagrams dropped, by cause.", "cause", d.by_cause());
        p.counter("ntm_data_dropped_total", "Data packets that matched no tunnel.", read.orphan_drops);
        p.encode()
    }

    fn status(&self, read: Readings) -> Status {
        let tunnels = read.tunnels;
        let reg = self.core.registration();
        let mut peers: Vec<PeerStatus> = self
            .core
            .peers()
            .map(|p| {
                let t = tunnels.iter().find(|t| Some(t.local_id) == p.local_id);
                PeerStatus {
                    fqdn: p.fqdn.clone(),
                    vip: first_vip(p.vip4, p.vip6),
                    vip4: p.vip4.map(|v| v.to_string()),
                    vip6: p.vip6.map(|v| v.to_string()),
                    state: p.state,
                    path: p.path,
                    endpoint: t.map(|t| t.endpoint).or(p.endpoint).map(|e| e.to_string()),
                    idle_s: t.map(|t| t.idle_s),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        let mut tunnels: Vec<TunnelStatus> = tunnels
            .into_iter()
            .map(|t| TunnelStatus {
                vip: t.vips.first().map(IpAddr::to_string),
                fqdn: t.fqdn,
                endpoint: t.endpoint.to_string(),
                local_id: t.local_id,
                remote_id: t.remote_id,
                tx_packets: t.counters.tx_packets,
                tx_bytes: t.counters.tx_bytes,
                rx_packets: t.counters.rx_packets,
                rx_bytes: t.counters.rx_bytes,
                rx_dropped: t.counters.rx_dropped,
                idle_s: t.idle_s,
            })
            .collect();
        tunnels.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        Status {
            fqdn: self.fqdn.clone(),
            registered: reg.is_some(),
            vip4: reg.and_then(|r| r.vip4).map(|v| v.to_string()),
            vip6: reg.and_then(|r| r.vip6).map(|v| v.to_string()),
            dc: reg.map(|r| r.dc.to_string()),
            nat_outer: reg.filter(|r| r.nat || r.one_to_one).map(|r| r.observed.to_string()),
            nat_one_to_one: reg.is_some_and(|r| r.one_to_one),
            addresses: self.core.local_addrs().iter().map(|a| a.to_string()).collect(),
            dataplane: self.dataplane.name().to_string(),
            signaling_drops: self.core.drops(),
            data_drops: read.orphan_drops,
            peers,
            tunnels,
        }
    }
}

fn first_vip(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Option<String> {
    v4.map(|v| v.to_string()).or(v6.map(|v| v.to_string()))
}
