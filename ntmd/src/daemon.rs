//! The daemon: one task owns the signaling core and the node table and is fed by the sockets,
//! the data plane, the address watcher, the stub resolver and the control socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::exchange::Now;
use proto::msg::Path as MsgPath;
use proto::node::{NodeConfig, NodeCore, NodeEvent, PeerState as CorePeerState};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::config::Dataplane as DataplaneKind;
use crate::control::{self, ControlHandle};
use crate::dataplane::kernel::Kernel;
use crate::dataplane::{userspace::Userspace, Dataplane, DpEvent};
use crate::dnsstub::{DnsStub, NtmNames, NtmZoneCache};
use crate::link::Link;
use crate::sockets::Sockets;
use crate::status::{self, DestroyReason, Event, PathKind, PeerState, PeerStatus, Status, TunnelStatus};
use crate::tun::Tun;
use host::dns::Client;
use host::driver::{self, now, Core, Options};
use host::metrics::{self, Histogram, Page, Unit};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

/// Upper bounds (seconds) of the tunnel build latency histogram.
const BUILD_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// How long a resolution waits for its tunnel.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

type Vips = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// What the other tasks ask of the core task.
enum Cmd {
    Resolve { fqdn: String, reply: oneshot::Sender<Result<Vips, String>> },
    Show(oneshot::Sender<Status>),
    Metrics(oneshot::Sender<String>),
    LocalAddrs(Vec<SocketAddr>),
}

/// What the core task is fed.
enum Input {
    Dataplane(DpEvent),
    Cmd(Cmd),
}

/// What the daemon counts for its metrics.
struct Counters {
    built: u64,
    destroyed: [u64; 4],
    build_failed: u64,
    misses: u64,
    build_latency: Histogram,
    /// When each build under way started.
    build_started: HashMap<String, Instant>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            built: 0,
            destroyed: [0; 4],
            build_failed: 0,
            misses: 0,
            build_latency: metrics::histogram(&BUILD_BUCKETS),
            build_started: HashMap::new(),
        }
    }
}

/// The stub resolver's view of the daemon.
struct Names {
    own: String,
    zones: NtmZoneCache,
    cmds: mpsc::Sender<Cmd>,
}

impl NtmNames for Names {
    async fn is_ntm(&self, fqdn: &str) -> bool {
        fqdn == self.own || self.zones.is_ntm(fqdn).await
    }

    async fn resolve(&self, fqdn: &str) -> Result<Vips, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Resolve { fqdn: fqdn.to_string(), reply: tx }).await.map_err(|_| "daemon stopping")?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("daemon stopping".into()),
            Err(_) => Err(format!("no tunnel to {fqdn} within {RESOLVE_TIMEOUT:?}")),
        }
    }
}

struct Daemon {
    cfg: Config,
    core: NodeCore,
    dataplane: Box<dyn Dataplane>,
    sockets: Arc<Sockets>,
    /// The virtual device (its VIPs are set on registration).
    link: Link,
    events: broadcast::Sender<Event>,
    /// Resolutions waiting for a peer's tunnel.
    waiters: HashMap<String, Vec<oneshot::Sender<Result<Vips, String>>>>,
    /// The VIPs on the device (to set them only when they change).
    device_vips: Vips,
    counters: Counters,
    /// Drops (signaling, data) at the last summary.
    reported: (u64, u64),
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let sockets = Arc::new(Sockets::bind(cfg.port).context("binding the node's UDP port")?);
    let port = sockets.port().unwrap_or(cfg.port);
    let (dp_tx, dp_rx) = mpsc::channel::<DpEvent>(1024);
    let kernel = match cfg.dataplane {
        DataplaneKind::Kernel => true,
        DataplaneKind::Userspace => false,
        DataplaneKind::Auto => crate::dataplane::kernel::available(),
    };
    let (dataplane, link): (Box<dyn Dataplane>, Link) = if kernel {
        let k = Kernel::start(&cfg.tun.name, cfg.tun.mtu, sockets.clone(), cfg.idle_timeout, dp_tx.clone())?;
        let link = k.link().clone();
        (Box::new(k), link)
    } else {
        let tun = Arc::new(Tun::create(&cfg.tun.name, cfg.tun.mtu).context("creating the TUN device")?);
        let link = tun.link().clone();
        (Box::new(Userspace::start(tun, sockets.clone(), cfg.idle_timeout, dp_tx.clone())), link)
    };
    link.add_routes(&cfg.tun.routes).context("routing the VIP ranges to the virtual device")?;
    info!(fqdn = %cfg.fqdn, port, dev = %link.name, dataplane = dataplane.name(), "starting");

    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(256);
    let (events, _) = broadcast::channel::<Event>(1024);

    // Control socket.
    let (show_tx, mut show_rx) = mpsc::channel::<oneshot::Sender<Status>>(16);
    let handle = ControlHandle { show: show_tx, events: events.clone() };
    let server = control::ControlServer::bind(&cfg.control_socket)
        .await
        .with_context(|| format!("control socket {}", cfg.control_socket.display()))?;
    tokio::spawn(async move {
        if let Err(e) = server.run(handle).await {
            warn!("control socket: {e}");
        }
    });
    {
        let cmd_tx = cmd_tx.clone();
        tokio::spawn(async move {
            while let Some(reply) = show_rx.recv().await {
                if cmd_tx.send(Cmd::Show(reply)).await.is_err() {
                    return;
                }
            }
        });
    }

    // Stub resolver.
    if !cfg.dns.listen.is_empty() {
        let names = Arc::new(Names {
            own: cfg.fqdn.clone(),
            zones: NtmZoneCache::new(Client::new(cfg.dns.upstream.clone())),
            cmds: cmd_tx.clone(),
        });
        let stub = DnsStub::bind(&cfg.dns.listen, Client::new(cfg.dns.upstream.clone()), names)
            .await
            .context("binding the stub resolver")?;
        info!(listen = ?stub.local_addrs(), "stub resolver");
        tokio::spawn(async move {
            if let Err(e) = stub.run().await {
                warn!("stub resolver: {e}");
            }
        });
    }

    // Metrics.
    if let Some(addr) = cfg.metrics_listen {
        let server = metrics::Server::bind(addr).await?;
        let cmd_tx = cmd_tx.clone();
        tokio::spawn(server.run(move || {
            let cmd_tx = cmd_tx.clone();
            async move {
                let (reply, page) = oneshot::channel();
                cmd_tx.send(Cmd::Metrics(reply)).await.ok()?;
                page.await.ok()
            }
        }));
    }

    // Own addresses.
    let (addr_tx, addr_rx) = mpsc::channel(4);
    tokio::spawn(crate::addrs::watch(port, cfg.tun.name.clone(), cfg.interfaces.clone(), addr_tx));

    let core = NodeCore::new(NodeConfig {
        fqdn: cfg.fqdn.clone(),
        secret: cfg.private_key.clone(),
        dc_key: cfg.dc_public_key,
        dcs: cfg.dc.clone(),
    });
    let mut d = Daemon {
        cfg,
        core,
        dataplane,
        sockets,
        link,
        events,
        waiters: HashMap::new(),
        device_vips: (None, None),
        counters: Counters::default(),
        reported: (0, 0),
    };
    let inputs = ReceiverStream::new(dp_rx)
        .map(Input::Dataplane)
        .merge(ReceiverStream::new(cmd_rx).map(Input::Cmd))
        .merge(ReceiverStream::new(addr_rx).map(|a| Input::Cmd(Cmd::LocalAddrs(a))));
    driver::run(&mut d, inputs, Options::default()).await?;
    let _ = std::fs::remove_file(&d.cfg.control_socket);
    Ok(())
}

impl Core for Daemon {
    type Input = Input;

    fn input(&mut self, input: Input, _now: Now) {
        match input {
            Input::Dataplane(ev) => self.on_dataplane(ev),
            Input::Cmd(cmd) => self.on_cmd(cmd),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn timeout(&mut self, now: Now) {
        self.core.handle_timeout(now)
    }

    async fn flush(&mut self) {
        self.drain().await
    }

    fn summary(&mut self) {
        let (sig, data) = (self.core.drops(), self.dataplane.orphan_drops());
        if (sig.total(), data) != self.reported {
            info!(
                malformed = sig.malformed,
                unauthorized = sig.unauthorized,
                replayed = sig.replayed,
                unexpected = sig.unexpected,
                data_without_tunnel = data,
                "dropped since start"
            );
            self.reported = (sig.total(), data);
        }
    }
}

impl Daemon {
    fn on_dataplane(&mut self, ev: DpEvent) {
        match ev {
            DpEvent::Signaling { from, payload } => self.core.handle_datagram(from, &payload, now()),
            DpEvent::Destroyed { local_id, fqdn, vip, reason } => {
                info!(peer = %fqdn, reason = status::reason_str(reason), "tunnel destroyed");
                self.counters.destroyed[reason_index(reason)] += 1;
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
                match self.core.tunnel_miss(vip, now()) {
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

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Resolve { fqdn, reply } => {
                if fqdn == self.cfg.fqdn {
                    let r = self.core.registration().map(|r| (r.vip4, r.vip6)).ok_or("not registered yet".to_string());
                    let _ = reply.send(r);
                    return;
                }
                match self.core.request(&fqdn, now()) {
                    CorePeerState::Built => {
                        let p = self.core.peer(&fqdn).expect("built peer");
                        let _ = reply.send(Ok((p.vip4, p.vip6)));
                    }
                    CorePeerState::Building => self.waiters.entry(fqdn).or_default().push(reply),
                    CorePeerState::None => {
                        let why = self.core.peer(&fqdn).and_then(|p| p.last_error.clone());
                        let _ = reply.send(Err(why.unwrap_or_else(|| "cannot build a tunnel".into())));
                    }
                }
            }
            Cmd::Show(reply) => {
                let _ = reply.send(self.status());
            }
            Cmd::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Cmd::LocalAddrs(addrs) => self.core.set_local_addrs(addrs, now()),
        }
    }

    /// Sends what the core wants sent and acts on its events.
    async fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            if let Err(e) = self.sockets.send_to(&t.payload, t.dst).await {
                debug!(dst = %t.dst, "send failed: {e}");
            }
        }
        while let Some(ev) = self.core.poll_event() {
            self.on_core_event(ev);
        }
    }

    fn on_core_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Registered { vip4, vip6, dc, observed, nat } => {
                if self.device_vips != (vip4, vip6) {
                    match self.link.set_addresses(vip4, vip6) {
                        Ok(()) => self.device_vips = (vip4, vip6),
                        Err(e) => warn!("setting the VIPs on the device: {e}"),
                    }
                }
                // Peers follow authenticated packets: tell them where this node is now.
                self.dataplane.send_keepalives();
                let _ = self.events.send(Event::Registered {
                    vip4: vip4.map(|v| v.to_string()),
                    vip6: vip6.map(|v| v.to_string()),
                    dc: dc.to_string(),
                    nat_outer: nat.then(|| observed.to_string()),
                });
            }
            NodeEvent::RegistrationLost { reason } => {
                let _ = self.events.send(Event::RegistrationLost { reason });
            }
            NodeEvent::PeerState { fqdn, state } => {
                if state == CorePeerState::Building {
                    self.counters.build_started.insert(fqdn.clone(), Instant::now());
                }
                let _ = self.events.send(Event::PeerState { fqdn, state: map_state(state) });
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
                    for w in self.waiters.remove(&spec.fqdn).unwrap_or_default() {
                        let _ = w.send(Err(reason.clone()));
                    }
                    let _ = self.events.send(Event::BuildFailed { fqdn: spec.fqdn, reason });
                    return;
                }
                let _ = self.events.send(Event::TunnelBuilt {
                    fqdn: spec.fqdn.clone(),
                    vip: first_vip(spec.vip4, spec.vip6),
                    endpoint: spec.endpoint.to_string(),
                    path: map_path(spec.path),
                    local_id: spec.local_id,
                });
                for w in self.waiters.remove(&spec.fqdn).unwrap_or_default() {
                    let _ = w.send(Ok((spec.vip4, spec.vip6)));
                }
            }
            NodeEvent::TunnelDown { fqdn, local_id } => {
                if let Err(e) = self.dataplane.remove(local_id) {
                    warn!(peer = %fqdn, "removing the tunnel: {e:#}");
                }
                let vip = self.core.peer(&fqdn).and_then(|p| first_vip(p.vip4, p.vip6));
                let _ =
                    self.events.send(Event::TunnelDestroyed { fqdn, vip, reason: DestroyReason::Deleted, local_id });
            }
            NodeEvent::BuildFailed { fqdn, reason } => {
                self.counters.build_failed += 1;
                self.counters.build_started.remove(&fqdn);
                for w in self.waiters.remove(&fqdn).unwrap_or_default() {
                    let _ = w.send(Err(reason.clone()));
                }
                let _ = self.events.send(Event::BuildFailed { fqdn, reason });
            }
        }
    }

    fn metrics(&self) -> String {
        let c = &self.counters;
        let mut p = Page::new("ntmd");
        p.gauge(
            "ntm_registered",
            "1 while the node is registered with its DC.",
            i64::from(self.core.registration().is_some()),
        );
        let count = |st: CorePeerState| self.core.peers().filter(|p| p.state == st).count() as i64;
        p.gauges(
            "ntm_peers",
            "Peers in the node table by state.",
            "state",
            [
                ("built", count(CorePeerState::Built)),
                ("building", count(CorePeerState::Building)),
                ("none", count(CorePeerState::None)),
            ],
        );
        let tunnels = self.dataplane.tunnels();
        p.gauge("ntm_tunnels", "Tunnels in the data plane.", tunnels.len() as i64);
        p.counter("ntm_tunnels_built_total", "Tunnels built.", c.built);
        p.counters(
            "ntm_tunnels_destroyed_total",
            "Tunnels destroyed, by reason.",
            "reason",
            [DestroyReason::Idle, DestroyReason::Deleted, DestroyReason::DeviceDown, DestroyReason::Error]
                .into_iter()
                .map(|r| (status::reason_str(r), c.destroyed[reason_index(r)])),
        );
        p.counter("ntm_tunnel_build_failures_total", "Tunnel builds that failed.", c.build_failed);
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
        p.counter("ntm_data_dropped_total", "Data packets that matched no tunnel.", self.dataplane.orphan_drops());
        p.encode()
    }

    fn status(&self) -> Status {
        let tunnels = self.dataplane.tunnels();
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
                    state: map_state(p.state),
                    path: p.path.map(map_path),
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
            fqdn: self.cfg.fqdn.clone(),
            registered: reg.is_some(),
            vip4: reg.and_then(|r| r.vip4).map(|v| v.to_string()),
            vip6: reg.and_then(|r| r.vip6).map(|v| v.to_string()),
            dc: reg.map(|r| r.dc.to_string()),
            nat_outer: reg.filter(|r| r.nat).map(|r| r.observed.to_string()),
            addresses: self.core.local_addrs().iter().map(|a| a.to_string()).collect(),
            dataplane: self.dataplane.name().to_string(),
            signaling_drops: self.core.drops(),
            data_drops: self.dataplane.orphan_drops(),
            peers,
            tunnels,
        }
    }
}

fn reason_index(r: DestroyReason) -> usize {
    match r {
        DestroyReason::Idle => 0,
        DestroyReason::Deleted => 1,
        DestroyReason::DeviceDown => 2,
        DestroyReason::Error => 3,
    }
}

fn first_vip(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Option<String> {
    v4.map(|v| v.to_string()).or(v6.map(|v| v.to_string()))
}

fn map_state(s: CorePeerState) -> PeerState {
    match s {
        CorePeerState::Built => PeerState::Built,
        CorePeerState::Building => PeerState::Building,
        CorePeerState::None => PeerState::None,
    }
}

fn map_path(p: MsgPath) -> PathKind {
    match p {
        MsgPath::Direct => PathKind::Direct,
        MsgPath::Relay => PathKind::Relay,
    }
}
