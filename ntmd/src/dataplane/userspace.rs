//! The userspace data plane: IP packets read from the TUN device are sealed into the peer's
//! tunnel and sent from the node's UDP socket; data packets received on that socket are opened
//! and written to the TUN device; every other datagram goes to the signaling core. One task
//! sweeps idle tunnels at the next deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host::loglimit::LogLimiter;
use proto::node::TunnelSpec;
use proto::tunnel::{EncapError, Reason, TunnelTable};
use proto::wire;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use super::{Dataplane, DpEvent, TunnelInfo};
use crate::sockets::Sockets;
use crate::tun::Tun;

/// At most one miss event per VIP in this interval.
const MISS_EVERY: Duration = Duration::from_secs(1);
/// Packets for a VIP without a tunnel wait this long for it to be built, at most this many per
/// VIP (the first packets of a connection: its SYN is not lost to the build).
const HOLD_FOR: Duration = Duration::from_secs(5);
const HOLD_PER_VIP: usize = 16;
const HOLD_VIPS: usize = 1024;

/// Packets held while their tunnel is being built.
#[derive(Default)]
struct Held {
    by_vip: HashMap<IpAddr, (Instant, Vec<Vec<u8>>)>,
}

impl Held {
    fn hold(&mut self, vip: IpAddr, packet: &[u8], now: Instant) {
        if self.by_vip.len() >= HOLD_VIPS {
            self.by_vip.retain(|_, (since, _)| now.duration_since(*since) < HOLD_FOR);
            if self.by_vip.len() >= HOLD_VIPS {
                return;
            }
        }
        let (since, q) = self.by_vip.entry(vip).or_insert_with(|| (now, Vec::new()));
        if now.duration_since(*since) >= HOLD_FOR {
            *since = now;
            q.clear();
        }
        if q.len() < HOLD_PER_VIP {
            q.push(packet.to_vec());
        }
    }

    fn take(&mut self, vip: IpAddr, now: Instant) -> Vec<Vec<u8>> {
        match self.by_vip.remove(&vip) {
            Some((since, q)) if now.duration_since(since) < HOLD_FOR => q,
            _ => Vec::new(),
        }
    }
}
/// Drop logs at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

struct Shared {
    table: Mutex<TunnelTable>,
    held: Mutex<Held>,
    /// Wakes the sweeper when the earliest deadline may have moved.
    rearm: Notify,
}

/// The userspace backend: the tunnel table shared with its tasks (the TUN reader, one UDP
/// reader per address family, the idle sweeper), and the node's UDP sockets to send from.
pub struct Userspace {
    shared: Arc<Shared>,
    sockets: Arc<Sockets>,
}

impl Userspace {
    /// Starts the data plane's tasks on `tun` and `sockets`; events go to `events`.
    pub fn start(
        tun: Arc<Tun>,
        sockets: Arc<Sockets>,
        idle_timeout: Duration,
        events: mpsc::Sender<DpEvent>,
    ) -> Userspace {
        let shared = Arc::new(Shared {
            table: Mutex::new(TunnelTable::new(idle_timeout)),
            held: Mutex::new(Held::default()),
            rearm: Notify::new(),
        });
        tokio::spawn(tun_reader(tun.clone(), sockets.clone(), shared.clone(), events.clone()));
        for sock in [sockets.v4.clone(), sockets.v6.clone()].into_iter().flatten() {
            tokio::spawn(udp_reader(sock, tun.clone(), shared.clone(), events.clone()));
        }
        tokio::spawn(sweeper(shared.clone(), events));
        Userspace { shared, sockets }
    }
}

impl Dataplane for Userspace {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn install(&self, spec: &TunnelSpec) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut table = self.shared.table.lock().expect("table lock");
        table.insert(spec, now);
        self.shared.rearm.notify_one();
        // Send what waited for this tunnel.
        let vips = spec.vip4.map(IpAddr::V4).into_iter().chain(spec.vip6.map(IpAddr::V6));
        let held: Vec<Vec<u8>> = {
            let mut h = self.shared.held.lock().expect("held lock");
            vips.flat_map(|v| h.take(v, now)).collect()
        };
        let mut out = Vec::new();
        for p in held {
            if let Ok(dst) = table.encapsulate(&p, &mut out, now) {
                let _ = self.sockets.try_send_to(&out, dst);
            }
        }
        Ok(())
    }

    fn remove(&self, local_id: u32) -> anyhow::Result<()> {
        self.shared.table.lock().expect("table lock").remove(local_id, Reason::Deleted);
        Ok(())
    }

    fn send_keepalives(&self, only: Option<u32>) {
        let packets = self.shared.table.lock().expect("table lock").keepalives(only);
        let tunnels = packets.len();
        for (endpoint, p) in packets {
            if let Err(e) = self.sockets.try_send_to(&p, endpoint) {
                debug!(%endpoint, "keepalive not sent: {e}");
            }
        }
        if tunnels > 0 {
            debug!(tunnels, "keepalives sent");
        }
    }

    fn orphan_drops(&self) -> u64 {
        self.shared.table.lock().expect("table lock").orphan_drops
    }

    fn tunnels(&self) -> Vec<TunnelInfo> {
        let now = Instant::now();
        let table = self.shared.table.lock().expect("table lock");
        table
            .iter()
            .map(|t| TunnelInfo {
                fqdn: t.fqdn.clone(),
                vips: t.vips.clone(),
                endpoint: t.endpoint,
                local_id: t.local_id,
                remote_id: t.remote_id,
                counters: t.counters,
                idle_s: now.saturating_duration_since(t.last_data).as_secs(),
            })
            .collect()
    }
}

async fn tun_reader(tun: Arc<Tun>, sockets: Arc<Sockets>, shared: Arc<Shared>, events: mpsc::Sender<DpEvent>) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536 + wire::DATA_OVERHEAD);
    let mut misses: HashMap<IpAddr, Instant> = HashMap::new();
    let log = LogLimiter::new(LOG_EVERY);
    loop {
        let n = match tun.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                warn!("reading the TUN device: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let r = shared.table.lock().expect("table lock").encapsulate(&buf[..n], &mut out, now);
        match r {
            Ok(dst) => {
                if let Err(e) = sockets.try_send_to(&out, dst) {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        log.hit(|s| debug!(%dst, suppressed = s, "tunnel send failed: {e}"));
                    }
                }
            }
            Err(EncapError::Miss(vip)) => {
                shared.held.lock().expect("held lock").hold(vip, &buf[..n], now);
                let due = misses.get(&vip).is_none_or(|t| now.duration_since(*t) >= MISS_EVERY);
                if due {
                    misses.insert(vip, now);
                    if misses.len() > 4096 {
                        misses.retain(|_, t| now.duration_since(*t) < MISS_EVERY);
                    }
                    let _ = events.try_send(DpEvent::Miss { vip });
                }
            }
            Err(e) => log.hit(|s| debug!(suppressed = s, "dropped a packet from the TUN device: {e}")),
        }
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, tun: Arc<Tun>, shared: Arc<Shared>, events: mpsc::Sender<DpEvent>) {
    let mut buf = vec![0u8; 65536];
    let log = LogLimiter::new(LOG_EVERY);
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!("receiving on the UDP socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if wire::packet_type(&buf[..n]) != Some(wire::TYPE_DATA) {
            if events.send(DpEvent::Signaling { from, payload: buf[..n].to_vec() }).await.is_err() {
                return;
            }
            continue;
        }
        let r = shared.table.lock().expect("table lock").decapsulate(from, &mut buf[..n], Instant::now());
        match r {
            Ok(d) => {
                if let Some(endpoint) = d.roamed {
                    let _ = events.try_send(DpEvent::EndpointChanged { local_id: d.local_id, endpoint });
                }
                if d.len > 0 {
                    if let Err(e) = tun.send(&buf[d.start..d.start + d.len]).await {
                        log.hit(|s| debug!(suppressed = s, "writing to the TUN device: {e}"));
                    }
                }
            }
            Err(e) => log.hit(|s| debug!(%from, suppressed = s, "dropped a data packet: {e}")),
        }
    }
}

async fn sweeper(shared: Arc<Shared>, events: mpsc::Sender<DpEvent>) {
    loop {
        let next = shared.table.lock().expect("table lock").next_expiry();
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = shared.rearm.notified() => continue,
                }
            }
            None => {
                shared.rearm.notified().await;
                continue;
            }
        }
        let gone = shared.table.lock().expect("table lock").sweep(Instant::now());
        for d in gone {
            let reason = d.reason;
            if events.send(DpEvent::Destroyed { local_id: d.local_id, fqdn: d.fqdn, vip: d.vip, reason }).await.is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_packets_wait_a_while_and_are_bounded() {
        let t0 = Instant::now();
        let vip: IpAddr = "100.64.40.3".parse().unwrap();
        let mut h = Held::default();
        for i in 0..20u8 {
            h.hold(vip, &[i], t0);
        }
        let q = h.take(vip, t0 + Duration::from_millis(10));
        assert_eq!(q.len(), HOLD_PER_VIP);
        assert_eq!(q[0], vec![0]);
        assert!(h.take(vip, t0).is_empty(), "taken once");
        h.hold(vip, &[1], t0);
        assert!(h.take(vip, t0 + HOLD_FOR).is_empty(), "too old");
    }
}
