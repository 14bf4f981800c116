//! The DC daemon: signaling sockets driving the sans-IO core, the DNS servers, and the lookups of
//! other zones' DCs that the core asks for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use host::config::Load;
use host::dns::Client;
use host::driver::{self, Core, DropReport, Options};
use host::metrics::{self, Page};
use proto::dc::{DcCommand, DcConfig, DcCore};
use proto::exchange::Now;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::dns::{self, Authority};
use crate::registry::SqliteRegistry;

/// How long one lookup of another zone's DC may take at the resolver (UDP with retransmissions,
/// then TCP if the answer was truncated).
const LOCATE_TIMEOUT: Duration = Duration::from_secs(4);

/// How long the DC of another zone, once found, is remembered.
const LOCATE_CACHE: Duration = Duration::from_secs(30);

enum Input {
    Datagram { from: SocketAddr, payload: Vec<u8> },
    Located { id: u64, domain: String, result: Result<(String, Vec<SocketAddr>), String> },
    Metrics(oneshot::Sender<String>),
}

fn metrics(core: &DcCore<SqliteRegistry>, authority: &Authority) -> String {
    use proto::registry::Registry;
    use std::sync::atomic::Ordering::Relaxed;
    let mut p = Page::new("dc");
    let c = core.counters();
    let nodes = core.registry().all().map(|v| v.len() as u64).unwrap_or(0);
    p.gauge("ntm_dc_nodes", "Nodes in the registry.", nodes as i64);
    let w = core.registry().stats();
    p.counter("ntm_dc_registry_commits_total", "Registry transactions written to disk.", w.commits.load(Relaxed));
    p.counter(
        "ntm_dc_registry_write_failures_total",
        "Registry transactions that failed (locked or broken database); retried every second.",
        w.failures.load(Relaxed),
    );
    p.gauge("ntm_dc_registry_pending", "Nodes whose change is not on disk yet.", w.pending.load(Relaxed) as i64);
    p.counter("ntm_dc_registrations_total", "Registrations and keepalives accepted.", c.registrations);
    p.counter("ntm_dc_registrations_refused_total", "Registrations refused.", c.refused);
    p.counters(
        "ntm_dc_directions_total",
        "Directions answered, by outcome.",
        "outcome",
        [("ok", c.directions_ok), ("failed", c.directions_failed)],
    );
    p.counter("ntm_dc_directions_remote_total", "Directions that asked another zone's DC.", c.directions_remote);
    p.counter("ntm_dc_directions_relayed_total", "Directions answered with a relayed path.", c.directions_relayed);
    p.counter("ntm_dc_one_to_one_nat_total", "Nodes found behind a 1:1 NAT by a probe.", c.one_to_one);
    let relays = core.relays();
    p.gauges(
        "ntm_dc_relay_up",
        "1 while the relay answers.",
        "relay",
        relays.iter().map(|r| (r.name.clone(), r.up as i64)),
    );
    p.gauges(
        "ntm_dc_relay_sessions",
        "Sessions on the relay (its last answer, plus those allocated here since).",
        "relay",
        relays.iter().map(|r| (r.name.clone(), r.load as i64)),
    );
    let d = core.drops();
    p.counters("ntm_dc_signaling_dropped_total", "Signaling datagrams dropped, by cause.", "cause", d.by_cause());
    let s = authority.stats();
    p.counter("ntm_dc_dns_queries_total", "DNS queries answered.", s.queries.load(Relaxed));
    p.counter("ntm_dc_dns_nxdomain_total", "DNS queries answered NXDOMAIN.", s.nxdomain.load(Relaxed));
    p.counter("ntm_dc_dns_refused_total", "DNS queries refused.", s.refused.load(Relaxed));
    p.counter("ntm_dc_dns_malformed_total", "Malformed DNS queries dropped.", s.malformed.load(Relaxed));
    p.counters(
        "ntm_dc_dns_rrl",
        "DNS UDP responses limited by rate limiting, by action.",
        "action",
        [("dropped", s.rrl_dropped.load(Relaxed)), ("slipped", s.rrl_slipped.load(Relaxed))],
    );
    p.counter(
        "ntm_dc_dns_tcp_refused_total",
        "DNS TCP connections closed at once over a cap.",
        s.tcp_refused.load(Relaxed),
    );
    p.encode()
}

/// Runs the DC until a signal stops it: opens the registry, serves the zone on every
/// `dns_listen` address (UDP and TCP), binds the signaling sockets and the metrics server, then
/// drives the core. Called by `main` with a validated configuration; an error is fatal (a
/// socket that cannot be bound, a database that cannot be opened).
pub async fn run(path: PathBuf, cfg: Config) -> anyhow::Result<()> {
    let registry = SqliteRegistry::open(&cfg.database, cfg.pools())
        .with_context(|| format!("opening the registry {}", cfg.database.display()))?;
    let core_cfg = DcConfig {
        zone: cfg.zone.clone(),
        secret: cfg.private_key.clone(),
        keepalive: cfg.keepalive(),
        enrolled: enrolled(&cfg),
        peers: peers(&cfg),
        relays: cfg
            .relays
            .iter()
            .map(|r| proto::dc::RelayConfig { name: r.name.clone(), addrs: r.addresses.clone(), key: r.public_key })
            .collect(),
    };
    let core = DcCore::new(core_cfg, registry);

    // DNS first, so that the zone answers as soon as the DC is up.
    let authority = Arc::new(Authority::from_config(&cfg).context("building the zone")?);
    for addr in &cfg.dns_listen {
        let udp = UdpSocket::bind(addr).await.with_context(|| format!("DNS on {addr}/udp"))?;
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("DNS on {addr}/tcp"))?;
        let (a1, a2) = (authority.clone(), authority.clone());
        tokio::spawn(async move {
            if let Err(e) = dns::serve_udp(udp, a1).await {
                warn!("DNS over UDP stopped: {e}");
            }
        });
        tokio::spawn(async move {
            if let Err(e) = dns::serve_tcp(tcp, a2).await {
                warn!("DNS over TCP stopped: {e}");
            }
        });
        info!(%addr, zone = %cfg.zone, "DNS listening");
    }

    let (tx, rx) = mpsc::channel::<Input>(1024);
    let mut sockets: Vec<Arc<UdpSocket>> = Vec::new();
    let mut probe_sockets: Vec<Arc<UdpSocket>> = Vec::new();
    for addr in &cfg.listen {
        let s = Arc::new(UdpSocket::bind(addr).await.with_context(|| format!("signaling on {addr}/udp"))?);
        info!(%addr, "signaling listening");
        spawn_receiver(s.clone(), tx.clone());
        sockets.push(s);
        // A second socket, on another port: probes of nodes' NATs leave from it (a NAT that
        // filters lets in only what comes from where the node sent to), and their answers come
        // back to it.
        let ip = cfg.probe_from.iter().copied().find(|ip| ip.is_ipv4() == addr.is_ipv4()).unwrap_or(addr.ip());
        let probe_addr = SocketAddr::new(ip, 0);
        let p = Arc::new(UdpSocket::bind(probe_addr).await.with_context(|| format!("probes on {probe_addr}/udp"))?);
        spawn_receiver(p.clone(), tx.clone());
        probe_sockets.push(p);
    }
    // Replies and route directions leave from the socket of the destination's family.
    let by_family = |v: &[Arc<UdpSocket>]| -> HashMap<bool, Arc<UdpSocket>> {
        v.iter().filter_map(|s| s.local_addr().ok().map(|a| (a.is_ipv4(), s.clone()))).collect()
    };
    let send_sock = by_family(&sockets);
    let probe_sock = by_family(&probe_sockets);
    if let Some(addr) = cfg.metrics_listen {
        let server = metrics::Server::bind(addr).await?;
        let tx = tx.clone();
        tokio::spawn(server.run(move || {
            let tx = tx.clone();
            async move {
                let (reply, page) = oneshot::channel();
                tx.send(Input::Metrics(reply)).await.ok()?;
                page.await.ok()
            }
        }));
    }
    info!(zone = %cfg.zone, "DC running");

    let mut dc = Dc {
        core,
        authority,
        resolver: Client::new(vec![cfg.resolver]).with_timeout(LOCATE_TIMEOUT),
        send_sock,
        probe_sock,
        inputs: tx,
        located: HashMap::new(),
        reported: DropReport::default(),
        path,
        cfg,
    };
    driver::run(&mut dc, ReceiverStream::new(rx), Options::default()).await?;
    Ok(())
}

/// The DC's core and the I/O it drives.
struct Dc {
    core: DcCore<SqliteRegistry>,
    authority: Arc<Authority>,
    /// Finds other zones' DCs.
    resolver: Client,
    send_sock: HashMap<bool, Arc<UdpSocket>>,
    /// The second socket of each family, for probes of nodes' NATs.
    probe_sock: HashMap<bool, Arc<UdpSocket>>,
    /// For the answers of lookups started here.
    inputs: mpsc::Sender<Input>,
    /// Other zones' DCs found lately, by domain.
    located: HashMap<String, (Instant, (String, Vec<SocketAddr>))>,
    /// The periodic summary of drops.
    reported: DropReport,
    /// The configuration file, read again on SIGHUP, and what it said last.
    path: PathBuf,
    cfg: Config,
}

fn enrolled(cfg: &Config) -> HashMap<String, proto::keys::PublicKey> {
    cfg.nodes.iter().map(|n| (n.fqdn.clone(), n.public_key)).collect()
}

fn peers(cfg: &Config) -> HashMap<String, proto::keys::PublicKey> {
    cfg.peers.iter().map(|p| (p.zone.clone(), p.public_key)).collect()
}

/// The settings a reload cannot change (sockets, the key, the database, the pools, relays), as
/// text to compare.
fn fixed(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("zone", cfg.zone.clone()),
        ("private_key", cfg.private_key.public().to_string()),
        ("listen", format!("{:?}", cfg.listen)),
        ("dns_listen", format!("{:?}", cfg.dns_listen)),
        ("dns_rrl_responses_per_s", cfg.dns_rrl_responses_per_s.to_string()),
        ("dns_rrl_slip", cfg.dns_rrl_slip.to_string()),
        ("database", cfg.database.display().to_string()),
        ("resolver", cfg.resolver.to_string()),
        ("keepalive_s", cfg.keepalive_s.to_string()),
        ("metrics_listen", format!("{:?}", cfg.metrics_listen)),
        ("pools", format!("{:?}", cfg.pools)),
        ("relays", format!("{:?}", cfg.relays)),
        ("probe_from", format!("{:?}", cfg.probe_from)),
    ]
}

impl Core for Dc {
    type Input = Input;

    fn input(&mut self, input: Input, now: Now) {
        match input {
            Input::Datagram { from, payload } => self.core.handle_datagram(from, &payload, now),
            Input::Located { id, domain, result } => {
                if let Ok(found) = &result {
                    self.located.insert(domain, (Instant::now() + LOCATE_CACHE, found.clone()));
                }
                self.core.dc_located(id, result, now)
            }
            Input::Metrics(reply) => {
                let _ = reply.send(metrics(&self.core, &self.authority));
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn timeout(&mut self, now: Now) {
        self.core.handle_timeout(now)
    }

    async fn flush(&mut self) {
        // Commands first: a cached answer produces datagrams at once.
        while let Some(cmd) = self.core.poll_command() {
            match cmd {
                DcCommand::Locate { id, target } => {
                    // Nodes of one domain share their DC: the answer is kept a little while.
                    let domain = target.split_once('.').map(|(_, d)| d.to_string()).unwrap_or_default();
                    self.located.retain(|_, (until, _)| *until > Instant::now());
                    if let Some((_, found)) = self.located.get(&domain) {
                        self.core.dc_located(id, Ok(found.clone()), driver::now());
                        continue;
                    }
                    let (tx, resolver) = (self.inputs.clone(), self.resolver.clone());
                    tokio::spawn(async move {
                        let result = crate::locate::locate_dc(&resolver, &target).await.map_err(|e| e.to_string());
                        if let Err(e) = &result {
                            info!(%target, "cannot find the target's DC: {e}");
                        }
                        let _ = tx.send(Input::Located { id, domain, result }).await;
                    });
                }
            }
        }
        while let Some(t) = self.core.poll_transmit() {
            match self.send_sock.get(&t.dst.is_ipv4()) {
                Some(s) => {
                    if let Err(e) = s.send_to(&t.payload, t.dst).await {
                        debug!(dst = %t.dst, "send failed: {e}");
                    }
                }
                None => warn!(dst = %t.dst, "no signaling socket of that address family"),
            }
        }
        while let Some(t) = self.core.poll_probe_transmit() {
            if let Some(s) = self.probe_sock.get(&t.dst.is_ipv4()) {
                if let Err(e) = s.send_to(&t.payload, t.dst).await {
                    debug!(dst = %t.dst, "probe send failed: {e}");
                }
            }
        }
    }

    /// Reads the configuration again and applies its nodes, peer zones, NPSes and DNS names:
    /// nodes removed (or re-keyed) are revoked at once. A file that does not load, or that
    /// changes a setting only a restart applies, changes nothing.
    fn reload(&mut self) -> Result<String, String> {
        let new = Config::load(&self.path)
            .map_err(|e| format!("{}: {e}; the running configuration stays", self.path.display()))?;
        let changed: Vec<&str> =
            fixed(&self.cfg).into_iter().zip(fixed(&new)).filter(|(a, b)| a != b).map(|(a, _)| a.0).collect();
        if !changed.is_empty() {
            return Err(format!(
                "{}: {} changed, which only a restart applies; nothing was applied",
                self.path.display(),
                changed.join(", ")
            ));
        }
        self.authority.reload(&new).map_err(|e| format!("{}: {e}; nothing was applied", self.path.display()))?;
        let r = self.core.reconfigure(enrolled(&new), peers(&new), driver::now());
        if !r.removed.is_empty() || !r.peers_removed.is_empty() {
            warn!(nodes = ?r.removed, zones = ?r.peers_removed, told = r.notified, "revoked: no directions to or from them, tunnels torn down");
        }
        self.cfg = new;
        Ok(r.to_string())
    }

    fn summary(&mut self) {
        let dns = self.authority.stats().malformed.load(std::sync::atomic::Ordering::Relaxed);
        self.reported.report(self.core.drops(), &[("malformed DNS", dns)]);
    }
}

/// Feeds the datagrams received on `s` to the core.
fn spawn_receiver(s: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match s.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    if tx.send(Input::Datagram { from, payload: buf[..n].to_vec() }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!("signaling receive: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}
