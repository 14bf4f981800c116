//! The kernel data plane: `ntm.ko` does encapsulation, the tunnel table and idle expiry; this
//! backend creates its device, hands it the node's UDP sockets, installs and removes tunnels over
//! the `ntm` generic netlink family, and turns the family's events into data-plane events. It
//! subscribes to `events` first, then dumps, then applies; after an overrun it dumps again.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use proto::netlink::cmd;
use proto::node::TunnelSpec;
use proto::tunnel::Counters;
use proto::wire;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::genl::{NtmAttr, NtmMsg, TunnelAttr};
use super::nlsock::{EventSocket, GenlSocket, NlError};
use super::{Dataplane, DpEvent, TunnelInfo};
use crate::link::Link;
use crate::sockets::Sockets;
use crate::status::DestroyReason;

/// Is the module loaded (its family registered)?
pub fn available() -> bool {
    GenlSocket::open().is_ok()
}

/// What this backend installed: local id → (label, first VIP).
type Installed = Arc<Mutex<HashMap<u32, (String, Option<IpAddr>)>>>;

/// The kernel backend: the `ntm` device it created (deleted again when dropped, with its
/// tunnels) and its two request sockets.
pub struct Kernel {
    link: Link,
    /// Requests that change the device (tunnel-new, -del, -set, keepalives): quick, on the
    /// daemon's core task.
    nl: Mutex<GenlSocket>,
    /// Dumps, which take long with many tunnels and run off the core task: a socket of their
    /// own, so that they never hold up a change.
    reads: Mutex<GenlSocket>,
    installed: Installed,
}

impl Kernel {
    /// Creates the `ntm` device `name`, hands it `sockets`, and starts the event and signaling
    /// tasks.
    pub fn start(
        name: &str,
        mtu: u16,
        sockets: Arc<Sockets>,
        idle_timeout: Duration,
        events: mpsc::Sender<DpEvent>,
    ) -> anyhow::Result<Kernel> {
        let mut nl = GenlSocket::open().context("the kernel data plane")?;
        let reads = GenlSocket::open().context("the kernel data plane's second netlink socket")?;
        let group = nl.events_group().context("the ntm family has no events group")?;
        // Subscribe first: nothing that happens after the device exists is missed.
        let ev = EventSocket::open(group).context("subscribing to the ntm events")?;
        let link = Link::create_ntm(name, mtu).context("creating the ntm device")?;
        let mut attrs = vec![
            NtmAttr::Ifindex(link.index),
            NtmAttr::IdleTimeoutMs(idle_timeout.as_millis().min(u32::MAX as u128) as u32),
        ];
        if let Some(s) = &sockets.v4 {
            attrs.push(NtmAttr::SockFd4(s.as_raw_fd()));
        }
        if let Some(s) = &sockets.v6 {
            attrs.push(NtmAttr::SockFd6(s.as_raw_fd()));
        }
        // Then dump: a fresh device has no tunnels, and the dump proves the family answers.
        let ready = nl
            .request(NtmMsg::new(cmd::DEV_SET, attrs), false)
            .context("handing the UDP sockets to the module")
            .and_then(|_| dump(&mut nl, link.index));
        let n = match ready {
            Ok(tunnels) => tunnels.len(),
            Err(e) => {
                // The device is of no use without its sockets: do not leave it behind.
                if let Err(d) = link.delete() {
                    debug!("{d}");
                }
                return Err(e);
            }
        };
        let installed: Installed = Arc::default();
        info!(dev = %link.name, index = link.index, tunnels = n, "kernel data plane");
        tokio::spawn(event_task(ev, link.index, installed.clone(), events.clone()));
        for sock in [sockets.v4.clone(), sockets.v6.clone()].into_iter().flatten() {
            tokio::spawn(signaling_reader(sock, events.clone()));
        }
        Ok(Kernel { link, nl: Mutex::new(nl), reads: Mutex::new(reads), installed })
    }

    /// The `ntm` device: its name and interface index, for addresses and routes.
    pub fn link(&self) -> &Link {
        &self.link
    }

    fn request(&self, msg: NtmMsg, dump: bool) -> Result<Vec<NtmMsg>, NlError> {
        self.nl.lock().expect("netlink lock").request(msg, dump)
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Err(e) = self.link.delete() {
            debug!("{e}");
        }
    }
}

fn endpoint_attrs(ep: SocketAddr) -> [TunnelAttr; 2] {
    let ip = match ep.ip().to_canonical() {
        IpAddr::V4(a) => TunnelAttr::EndpointIp4(a),
        IpAddr::V6(a) => TunnelAttr::EndpointIp6(a),
    };
    [ip, TunnelAttr::EndpointPort(ep.port())]
}

impl Dataplane for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn install(&self, spec: &TunnelSpec) -> anyhow::Result<()> {
        let mut t = vec![
            TunnelAttr::LocalId(spec.local_id),
            TunnelAttr::RemoteId(spec.remote_id),
            TunnelAttr::SendKey(spec.keys.send),
            TunnelAttr::RecvKey(spec.keys.recv),
            TunnelAttr::Label(spec.fqdn.clone()),
        ];
        t.extend(spec.vip4.map(TunnelAttr::Vip4));
        t.extend(spec.vip6.map(TunnelAttr::Vip6));
        t.extend(endpoint_attrs(spec.endpoint));
        self.request(NtmMsg::new(cmd::TUNNEL_NEW, vec![NtmAttr::Ifindex(self.link.index), NtmAttr::Tunnel(t)]), false)?;
        let vip = spec.vip4.map(IpAddr::V4).or(spec.vip6.map(IpAddr::V6));
        self.installed.lock().expect("installed lock").insert(spec.local_id, (spec.fqdn.clone(), vip));
        Ok(())
    }

    fn remove(&self, local_id: u32) -> anyhow::Result<()> {
        self.installed.lock().expect("installed lock").remove(&local_id);
        let msg = NtmMsg::new(
            cmd::TUNNEL_DEL,
            vec![NtmAttr::Ifindex(self.link.index), NtmAttr::Tunnel(vec![TunnelAttr::LocalId(local_id)])],
        );
        match self.request(msg, false) {
            // Gone already (it expired meanwhile): what was asked for holds.
            Err(NlError::Kernel { code, .. }) if code == nix::errno::Errno::ENOENT as i32 => Ok(()),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    fn tunnels(&self) -> Vec<TunnelInfo> {
        let mut nl = self.reads.lock().expect("netlink lock");
        match dump(&mut nl, self.link.index) {
            Ok(v) => v,
            Err(e) => {
                warn!("dumping the tunnels: {e:#}");
                Vec::new()
            }
        }
    }

    fn orphan_drops(&self) -> u64 {
        // One quick request, not a dump: on the socket of changes, which the core task uses
        // (the summary reads it there).
        let r = self.request(NtmMsg::new(cmd::DEV_GET, vec![NtmAttr::Ifindex(self.link.index)]), false);
        r.ok()
            .and_then(|v| {
                v.iter().flat_map(|m| m.attrs.iter()).find_map(|a| match a {
                    NtmAttr::RxOrphans(n) => Some(*n),
                    _ => None,
                })
            })
            .unwrap_or(0)
    }

    fn slow_reads(&self) -> bool {
        true
    }

    fn send_keepalives(&self, only: Option<u32>) {
        // The module holds the keys and the send counters: it seals and sends an empty packet on
        // every tunnel (or the one asked for), and peers follow its authenticated source address.
        let tunnels = self.installed.lock().expect("installed lock").len();
        if tunnels == 0 {
            return;
        }
        let mut attrs = vec![NtmAttr::Ifindex(self.link.index)];
        if let Some(id) = only {
            attrs.push(NtmAttr::Tunnel(vec![TunnelAttr::LocalId(id)]));
        }
        match self.request(NtmMsg::new(cmd::TUNNEL_KEEPALIVE, attrs), false) {
            Ok(_) => debug!(tunnels, ?only, "keepalives sent (by the module)"),
            Err(e) => warn!("keepalives: {e:#}"),
        }
    }
}

/// A tunnel as a dump describes it.
fn tunnel_info(attrs: &[TunnelAttr]) -> Option<TunnelInfo> {
    let mut i = TunnelInfo {
        fqdn: String::new(),
        vips: Vec::new(),
        endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
        local_id: 0,
        remote_id: 0,
        counters: Counters::default(),
        idle_s: 0,
    };
    let (mut ip, mut port) = (None, 0);
    for a in attrs {
        match a {
            TunnelAttr::LocalId(v) => i.local_id = *v,
            TunnelAttr::RemoteId(v) => i.remote_id = *v,
            TunnelAttr::Label(l) => i.fqdn = l.clone(),
            TunnelAttr::Vip4(v) => i.vips.push(IpAddr::V4(*v)),
            TunnelAttr::Vip6(v) => i.vips.push(IpAddr::V6(*v)),
            TunnelAttr::EndpointIp4(v) => ip = Some(IpAddr::V4(*v)),
            TunnelAttr::EndpointIp6(v) => ip = Some(IpAddr::V6(*v)),
            TunnelAttr::EndpointPort(p) => port = *p,
            TunnelAttr::IdleMs(ms) => i.idle_s = *ms as u64 / 1000,
            TunnelAttr::TxPackets(v) => i.counters.tx_packets = *v,
            TunnelAttr::TxBytes(v) => i.counters.tx_bytes = *v,
            TunnelAttr::RxPackets(v) => i.counters.rx_packets = *v,
            TunnelAttr::RxBytes(v) => i.counters.rx_bytes = *v,
            TunnelAttr::RxDropped(v) => i.counters.rx_dropped = *v,
            _ => {}
        }
    }
    i.endpoint = SocketAddr::new(ip?, port);
    (i.local_id != 0).then_some(i)
}

fn dump(nl: &mut GenlSocket, ifindex: u32) -> anyhow::Result<Vec<TunnelInfo>> {
    let replies = nl.request(NtmMsg::new(cmd::TUNNEL_GET, vec![NtmAttr::Ifindex(ifindex)]), true)?;
    Ok(replies.iter().filter_map(|m| m.tunnel().and_then(tunnel_info)).collect())
}

fn reason(r: u32) -> DestroyReason {
    DestroyReason::from_u32(r).unwrap_or(DestroyReason::Error)
}

/// The local ids of the device's tunnels, dumped on a socket of its own (blocking calls, off
/// the runtime's threads); retried with backoff until a dump succeeds, since the events it
/// stands in for are lost otherwise.
async fn redump(ifindex: u32) -> HashSet<u32> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = tokio::task::spawn_blocking(move || {
            GenlSocket::open().map_err(anyhow::Error::from).and_then(|mut nl| dump(&mut nl, ifindex))
        })
        .await;
        match r {
            Ok(Ok(v)) => return v.iter().map(|t| t.local_id).collect(),
            Ok(Err(e)) => warn!("re-dump failed: {e:#}; again in {backoff:?}"),
            Err(e) => warn!("re-dump failed: {e}; again in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Turns the family's notifications for our device into data-plane events; after an overrun,
/// dumps and reports every tunnel that vanished unseen.
async fn event_task(ev: EventSocket, ifindex: u32, installed: Installed, events: mpsc::Sender<DpEvent>) {
    loop {
        let batch = match ev.recv().await {
            Ok(b) => b,
            Err(NlError::Overrun) => {
                warn!("ntm events overran: re-dumping the tunnel table");
                // Only tunnels installed before the dump began can be missing from it because
                // they are gone: one installed meanwhile may have been passed over.
                let before: Vec<u32> = installed.lock().expect("installed lock").keys().copied().collect();
                let live = redump(ifindex).await;
                let gone: Vec<(u32, String, Option<IpAddr>)> = {
                    let mut inst = installed.lock().expect("installed lock");
                    let gone = before.into_iter().filter(|id| !live.contains(id));
                    gone.filter_map(|id| inst.remove(&id).map(|(f, v)| (id, f, v))).collect()
                };
                for (local_id, fqdn, vip) in gone {
                    let e = DpEvent::Destroyed { local_id, fqdn, vip, reason: DestroyReason::Error };
                    if events.send(e).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                warn!("ntm events: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in batch {
            let ours = m.attrs.iter().any(|a| matches!(a, NtmAttr::Ifindex(i) if *i == ifindex));
            if !ours {
                continue;
            }
            let e = match m.cmd {
                cmd::TUNNEL_DESTROYED_NTF => {
                    let Some(t) = m.tunnel() else { continue };
                    let local_id = t.iter().find_map(|a| if let TunnelAttr::LocalId(v) = a { Some(*v) } else { None });
                    let Some(local_id) = local_id else { continue };
                    let r = t.iter().find_map(|a| if let TunnelAttr::Reason(v) = a { Some(*v) } else { None });
                    // Only tunnels the daemon still counts on: a removal it asked for is known.
                    let Some((fqdn, vip)) = installed.lock().expect("installed lock").remove(&local_id) else {
                        continue;
                    };
                    DpEvent::Destroyed { local_id, fqdn, vip, reason: reason(r.unwrap_or(3)) }
                }
                cmd::TUNNEL_MISS_NTF => {
                    let vip = m.attrs.iter().find_map(|a| match a {
                        NtmAttr::MissVip4(v) => Some(IpAddr::V4(*v)),
                        NtmAttr::MissVip6(v) => Some(IpAddr::V6(*v)),
                        _ => None,
                    });
                    let Some(vip) = vip else { continue };
                    DpEvent::Miss { vip }
                }
                cmd::ENDPOINT_CHANGED_NTF => {
                    let Some(info) = m.tunnel().and_then(tunnel_info) else { continue };
                    DpEvent::EndpointChanged { local_id: info.local_id, endpoint: info.endpoint }
                }
                other => {
                    debug!(cmd = other, "unknown ntm notification");
                    continue;
                }
            };
            if events.send(e).await.is_err() {
                return;
            }
        }
    }
}

/// With the module on the sockets, only signaling reaches userspace: hand it to the core.
async fn signaling_reader(sock: Arc<UdpSocket>, events: mpsc::Sender<DpEvent>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if wire::packet_type(&buf[..n]) == Some(wire::TYPE_DATA) {
                    continue; // the module takes data; one that slipped through is dropped
                }
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                if events.send(DpEvent::Signaling { from, payload: buf[..n].to_vec() }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!("receiving on the UDP socket: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_entries_become_tunnel_infos() {
        let t = [
            TunnelAttr::LocalId(7),
            TunnelAttr::RemoteId(9),
            TunnelAttr::Label("cam.home.ntm.test".into()),
            TunnelAttr::Vip4("100.64.40.3".parse().unwrap()),
            TunnelAttr::EndpointIp4("198.18.70.2".parse().unwrap()),
            TunnelAttr::EndpointPort(40000),
            TunnelAttr::IdleMs(2500),
            TunnelAttr::RxBytes(10),
        ];
        let i = tunnel_info(&t).unwrap();
        assert_eq!((i.local_id, i.remote_id, i.idle_s, i.counters.rx_bytes), (7, 9, 2, 10));
        assert_eq!(i.endpoint, "198.18.70.2:40000".parse().unwrap());
        assert!(tunnel_info(&t[1..]).is_none(), "no local id");
    }
}
