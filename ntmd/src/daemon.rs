//! The daemon: one task owns the node's [`Handler`] and is fed by the sockets, the data plane,
//! the address watcher, the stub resolver and the control socket; it sends what the handler
//! wants sent and puts the VIPs on the device.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use host::dns::Client;
use host::driver::{self, Core, Options};
use host::loglimit::LogLimiter;
use host::metrics;
use proto::exchange::Now;
use proto::node::NodeConfig;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::config::Dataplane as DataplaneKind;
use crate::control::{self, ControlHandle};
use crate::dataplane::kernel::Kernel;
use crate::dataplane::{userspace::Userspace, Dataplane, DpEvent};
use crate::dnsstub::{DnsStub, Ntm, NtmNames, NtmZoneCache};
use crate::handler::{Cmd, Handler, Input, Readings};
use crate::link::Link;
use crate::sockets::Sockets;
use crate::status::{Event, Status};
use crate::tun::Tun;

/// How long a resolution waits for its tunnel.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

type Vips = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The stub resolver's view of the daemon.
struct Names {
    own: String,
    zones: NtmZoneCache,
    cmds: mpsc::Sender<Cmd>,
}

impl NtmNames for Names {
    async fn is_ntm(&self, fqdn: &str) -> Ntm {
        if fqdn == self.own {
            return Ntm::Yes;
        }
        self.zones.is_ntm(fqdn).await
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

/// The handler and the I/O it asks for.
struct Daemon {
    handler: Handler,
    sockets: Arc<Sockets>,
    /// The virtual device (its VIPs are set on registration).
    link: Link,
    /// The handler's data plane, read off the task when its reads are slow.
    dataplane: Arc<dyn Dataplane>,
    /// To hand back what was read.
    cmds: mpsc::Sender<Cmd>,
    /// `Show` and `Metrics` requests waiting for the read in flight (one at a time: every
    /// request that comes meanwhile shares its result).
    waiting: Vec<Cmd>,
    /// When setting the VIPs on the device failed, the next try.
    vips_retry: Option<(Instant, Duration)>,
    vips_errors: LogLimiter,
    /// When the tunnels' counters are sampled next, for their liveness.
    next_sample: Instant,
    /// A slow sample is being read off the task.
    sampling: bool,
}

/// How often the tunnels' counters are sampled (see `proto::liveness`).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Daemon {
    /// Samples the tunnels' counters: at once when the data plane is quick to read, else in a
    /// blocking thread (the sample comes back as `Cmd::Sample`).
    fn sample(&mut self, now: Now) {
        if !self.dataplane.slow_reads() {
            let read = Readings::of(&*self.dataplane);
            self.handler.input(Input::Cmd(Cmd::Sample(read)), now);
            return;
        }
        if self.sampling {
            return;
        }
        self.sampling = true;
        let (dataplane, cmds) = (self.dataplane.clone(), self.cmds.clone());
        tokio::spawn(async move {
            if let Ok(read) = tokio::task::spawn_blocking(move || Readings::of(&*dataplane)).await {
                let _ = cmds.send(Cmd::Sample(read)).await;
            }
        });
    }

    /// Queues a `Show` or `Metrics` request and, unless a read is in flight, reads the data
    /// plane in a blocking thread; the readings come back as `Cmd::Readings`.
    fn read_off_task(&mut self, request: Cmd) {
        self.waiting.push(request);
        if self.waiting.len() > 1 {
            return;
        }
        let (dataplane, cmds) = (self.dataplane.clone(), self.cmds.clone());
        tokio::spawn(async move {
            let read = match tokio::task::spawn_blocking(move || Readings::of(&*dataplane)).await {
                Ok(read) => read,
                Err(e) => {
                    warn!("reading the data plane: {e}");
                    Readings { tunnels: Vec::new(), orphan_drops: 0 }
                }
            };
            let _ = cmds.send(Cmd::Readings(read)).await;
        });
    }

    /// Puts the VIPs the handler wants on the device; after a failure, tries again 1 s later,
    /// then doubling up to a minute.
    fn set_vips(&mut self) {
        let Some((vip4, vip6)) = self.handler.poll_vips() else { return };
        if self.vips_retry.is_some_and(|(at, _)| Instant::now() < at) {
            return;
        }
        match self.link.set_addresses(vip4, vip6) {
            Ok(()) => {
                self.handler.vips_set((vip4, vip6));
                self.vips_retry = None;
            }
            Err(e) => {
                let wait =
                    self.vips_retry.map_or(Duration::from_secs(1), |(_, w)| (w * 2).min(Duration::from_secs(60)));
                self.vips_retry = Some((Instant::now() + wait, wait));
                self.vips_errors.hit(|held| warn!(held, retry_in = ?wait, "setting the VIPs on the device: {e}"));
            }
        }
    }
}

/// Runs the node until a signal stops it: binds the node's UDP port, starts the data plane
/// (`ntm.ko` or TUN) and routes the VIP ranges to its device, opens the control socket, the
/// stub resolver and the metrics server, watches the node's addresses, then drives the
/// handler. Called by `main` with a validated configuration; an error is fatal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let sockets = Arc::new(Sockets::bind(cfg.port).context("binding the node's UDP port")?);
    let port = sockets.port().unwrap_or(cfg.port);
    let (dp_tx, dp_rx) = mpsc::channel::<DpEvent>(1024);
    let kernel = match cfg.dataplane {
        DataplaneKind::Kernel => true,
        DataplaneKind::Userspace => false,
        DataplaneKind::Auto => crate::dataplane::kernel::available(),
    };
    let (dataplane, link): (Arc<dyn Dataplane>, Link) = if kernel {
        let k = Kernel::start(&cfg.tun.name, cfg.tun.mtu, sockets.clone(), cfg.idle_timeout, dp_tx.clone())?;
        let link = k.link().clone();
        (Arc::new(k), link)
    } else {
        let tun = Arc::new(Tun::create(&cfg.tun.name, cfg.tun.mtu).context("creating the TUN device")?);
        let link = tun.link().clone();
        (Arc::new(Userspace::start(tun, sockets.clone(), cfg.idle_timeout, dp_tx.clone())), link)
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
                if cmd_tx.send(Cmd::Show { read: None, reply }).await.is_err() {
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
                cmd_tx.send(Cmd::Metrics { read: None, reply }).await.ok()?;
                page.await.ok()
            }
        }));
    }

    // Own addresses.
    let (addr_tx, addr_rx) = mpsc::channel(4);
    tokio::spawn(crate::addrs::watch(port, cfg.tun.name.clone(), cfg.interfaces.clone(), addr_tx));

    let handler = Handler::new(
        NodeConfig {
            fqdn: cfg.fqdn.clone(),
            secret: cfg.private_key.clone(),
            dc_key: cfg.dc_public_key,
            dcs: cfg.dc.clone(),
        },
        dataplane.clone(),
        events,
    );
    let mut d = Daemon {
        handler,
        sockets,
        link,
        dataplane,
        cmds: cmd_tx.clone(),
        waiting: Vec::new(),
        vips_retry: None,
        vips_errors: LogLimiter::new(Duration::from_secs(10)),
        next_sample: Instant::now() + SAMPLE_EVERY,
        sampling: false,
    };
    let inputs = ReceiverStream::new(dp_rx)
        .map(Input::Dataplane)
        .merge(ReceiverStream::new(cmd_rx).map(Input::Cmd))
        .merge(ReceiverStream::new(addr_rx).map(|a| Input::Cmd(Cmd::LocalAddrs(a))));
    driver::run(&mut d, inputs, Options::default()).await?;
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}

impl Core for Daemon {
    type Input = Input;

    fn input(&mut self, input: Input, now: Now) {
        match input {
            Input::Cmd(cmd @ (Cmd::Show { read: None, .. } | Cmd::Metrics { read: None, .. }))
                if self.dataplane.slow_reads() =>
            {
                self.read_off_task(cmd)
            }
            Input::Cmd(cmd @ Cmd::Sample(_)) => {
                self.sampling = false;
                self.handler.input(Input::Cmd(cmd), now);
            }
            Input::Cmd(Cmd::Readings(read)) => {
                for cmd in std::mem::take(&mut self.waiting) {
                    let cmd = match cmd {
                        Cmd::Show { reply, .. } => Cmd::Show { read: Some(read.clone()), reply },
                        Cmd::Metrics { reply, .. } => Cmd::Metrics { read: Some(read.clone()), reply },
                        other => other,
                    };
                    self.handler.input(Input::Cmd(cmd), now);
                }
            }
            input => self.handler.input(input, now),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.handler.poll_timeout().map_or(self.next_sample, |t| t.min(self.next_sample)))
    }

    fn timeout(&mut self, now: Now) {
        if self.next_sample <= now.mono {
            self.next_sample = now.mono + SAMPLE_EVERY;
            self.sample(now);
        }
        self.handler.timeout(now)
    }

    async fn flush(&mut self) {
        while let Some(t) = self.handler.poll_transmit() {
            if let Err(e) = self.sockets.send_to(&t.payload, t.dst).await {
                debug!(dst = %t.dst, "send failed: {e}");
            }
        }
        self.handler.release_answers();
        self.set_vips();
    }

    fn summary(&mut self) {
        self.handler.summary()
    }
}
