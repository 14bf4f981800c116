//! The relay daemon: its sockets and forwarding threads, the control plane for its DCs, the
//! sweep of idle sessions, and the metrics.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use host::metrics::{self, Page};
use host::signals::{Signal, Signals};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info};

use crate::config::Config;
use crate::control::Control;
use crate::table::{DropReason, Table};
use crate::worker::{self, ControlMsg, Sockets, WorkerStats};

/// Signaling datagrams waiting for the control plane; beyond this they are dropped (each costs
/// a Diffie-Hellman before its sender is known).
const CONTROL_QUEUE: usize = 256;

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Room for bursts while a worker is busy (the kernel caps it at rmem_max/wmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

struct Shared {
    table: Arc<Table>,
    stats: Vec<Arc<WorkerStats>>,
    control: Arc<Mutex<Control>>,
}

fn render(s: &Shared) -> String {
    let mut p = Page::new("relay");
    p.gauge("ntm_relay_sessions", "Sessions open.", s.table.len() as i64);
    let sum = |f: fn(&WorkerStats) -> u64| s.stats.iter().map(|w| f(w)).sum::<u64>();
    p.counter("ntm_relay_rx_packets_total", "Datagrams received.", sum(|w| w.rx_packets.load(Relaxed)));
    p.counter("ntm_relay_rx_bytes_total", "Bytes received (UDP payloads).", sum(|w| w.rx_bytes.load(Relaxed)));
    p.counter("ntm_relay_forwarded_packets_total", "Datagrams forwarded.", sum(|w| w.fwd_packets.load(Relaxed)));
    p.counter("ntm_relay_forwarded_bytes_total", "Bytes forwarded.", sum(|w| w.fwd_bytes.load(Relaxed)));
    p.counter("ntm_relay_binds_total", "Binds accepted and answered.", sum(|w| w.binds.load(Relaxed)));
    p.counter("ntm_relay_send_errors_total", "Datagrams that could not be sent.", sum(|w| w.send_errors.load(Relaxed)));
    let drops: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .enumerate()
        .map(|(i, d)| (d.label(), s.stats.iter().map(|w| w.drops[i].load(Relaxed)).sum()))
        .collect();
    p.counters("ntm_relay_dropped", "Datagrams dropped, by reason.", "reason", drops);
    let c = s.control.lock().expect("not poisoned").counters;
    p.counter("ntm_relay_allocations_total", "Sessions allocated by a DC.", c.allocations);
    p.counter("ntm_relay_allocations_refused_total", "Allocations refused (relay full).", c.refused);
    p.counter("ntm_relay_pings_total", "DC pings answered.", c.pings);
    p.counter(
        "ntm_relay_control_unauthenticated_total",
        "Signaling from no DC of this relay, dropped.",
        c.unauthenticated,
    );
    p.counter("ntm_relay_control_replayed_total", "Replayed DC requests, dropped.", c.replayed);
    p.counter(
        "ntm_relay_control_cookies_total",
        "Cookie replies sent under load instead of handshake work.",
        c.cookies,
    );
    p.counter(
        "ntm_relay_control_rate_limited_total",
        "Initiations over a source's share under load, dropped.",
        c.limited,
    );
    p.encode()
}

fn control_loop(
    rx: Receiver<ControlMsg>,
    control: Arc<Mutex<Control>>,
    table: Arc<Table>,
    tx4: Option<UdpSocket>,
    tx6: Option<UdpSocket>,
) {
    while let Ok((from, payload)) = rx.recv() {
        let reply = control.lock().expect("not poisoned").handle(&table, from, &payload, host::driver::now());
        if let Some(t) = reply {
            let sock = if t.dst.is_ipv4() { tx4.as_ref() } else { tx6.as_ref() };
            if let Some(s) = sock {
                if let Err(e) = s.send_to(&t.payload, t.dst) {
                    debug!(dst = %t.dst, "control send: {e}");
                }
            }
        }
    }
}

/// Runs the relay until SIGTERM or SIGINT: binds `workers` sockets per listen address (the kernel
/// spreads the peers over them), starts a forwarding thread on each, and the control plane.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let table = Arc::new(Table::new(cfg.max_sessions, cfg.session_idle).with_session_rate(cfg.session_mbit));
    let control = Arc::new(Mutex::new(Control::new(cfg.private_key.clone(), &cfg.dcs)));
    let mut by_family: Vec<(bool, Vec<UdpSocket>)> = Vec::new();
    for addr in &cfg.listen {
        let mut v = Vec::new();
        for _ in 0..cfg.workers {
            v.push(bind(*addr).with_context(|| format!("relay on {addr}/udp"))?);
        }
        info!(%addr, workers = cfg.workers, "relay listening");
        by_family.push((addr.is_ipv4(), v));
    }
    let first = |v4: bool| -> anyhow::Result<Option<UdpSocket>> {
        match by_family.iter().find(|(f, _)| *f == v4) {
            Some((_, v)) => Ok(Some(v[0].try_clone()?)),
            None => Ok(None),
        }
    };
    let (ctl_tx, ctl_rx) = sync_channel::<ControlMsg>(CONTROL_QUEUE);
    {
        let (control, table, tx4, tx6) = (control.clone(), table.clone(), first(true)?, first(false)?);
        std::thread::Builder::new()
            .name("relay-control".into())
            .spawn(move || control_loop(ctl_rx, control, table, tx4, tx6))?;
    }
    let mut stats = Vec::new();
    for (v4, socks) in &by_family {
        for (i, rx) in socks.iter().enumerate() {
            let pick = |fam: bool| -> anyhow::Result<Option<UdpSocket>> {
                match by_family.iter().find(|(f, _)| *f == fam) {
                    Some((_, v)) => Ok(Some(v[i % v.len()].try_clone()?)),
                    None => Ok(None),
                }
            };
            let socks = Sockets { rx: rx.try_clone()?, tx4: pick(true)?, tx6: pick(false)? };
            let st = Arc::new(WorkerStats::default());
            stats.push(st.clone());
            let (table, ctl) = (table.clone(), ctl_tx.clone());
            std::thread::Builder::new()
                .name(format!("relay-{}{i}", if *v4 { "v4-" } else { "v6-" }))
                .spawn(move || worker::run(socks, table, ctl, st))?;
        }
    }
    let shared = Arc::new(Shared { table: table.clone(), stats, control });
    if let Some(addr) = cfg.metrics_listen {
        let server = metrics::Server::bind(addr).await?;
        let shared = shared.clone();
        tokio::spawn(server.run(move || {
            let shared = shared.clone();
            async move { Some(render(&shared)) }
        }));
    }
    info!(dcs = cfg.dcs.len(), max_sessions = cfg.max_sessions, "relay running");
    let mut signals = Signals::new()?;
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                for s in table.sweep(std::time::Instant::now()) {
                    info!(a = %s.labels[0], b = %s.labels[1], packets = s.packets.load(Relaxed), bytes = s.bytes.load(Relaxed), "session closed (idle)");
                }
            }
            sig = signals.next() => match sig {
                Signal::Stop => break,
                Signal::Reload => info!("SIGHUP: the relay has nothing to reload yet; restart it to change its configuration"),
            },
        }
    }
    info!("relay stopping");
    Ok(())
}
