//! The tunnel table of the userspace data plane (the kernel module keeps the same table with the
//! same rules): tunnels by local receiver id and by peer VIP, sealing and opening data packets,
//! idle expiry, roaming on authenticated packets, and per-tunnel counters.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::data::{DataError, Opener, Sealer};
use crate::node::TunnelSpec;
use crate::wire::{Packet, DATA_HEADER};

/// A tunnel's traffic counters since it was installed (a replaced tunnel starts from zero).
/// Bytes are those of the inner IP packets, without the 16-byte data header and the 16-byte tag;
/// `ntm.ko` counts the same way, and `ntmctl show` and the metrics report these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// IP packets sealed and sent to the peer (keepalives not counted).
    pub tx_packets: u64,
    /// Bytes of the IP packets counted in `tx_packets`.
    pub tx_bytes: u64,
    /// Data packets opened and accepted, keepalives (empty packets) included.
    pub rx_packets: u64,
    /// Bytes of the inner IP packets counted in `rx_packets` (keepalives add 0).
    pub rx_bytes: u64,
    /// Packets for this tunnel's receiver id that were dropped: failed authentication, replays,
    /// an inner packet that is not IP or whose source is not the peer's VIP.
    pub rx_dropped: u64,
}

/// One tunnel of the table: a peer, its keys' state and where to reach it.
pub struct Tunnel {
    /// The peer's FQDN; the table holds at most one tunnel per FQDN.
    pub fqdn: String,
    /// The peer's VIPs (IPv4 first, then IPv6): packets to them go into this tunnel, and inner
    /// packets received must come from one of them.
    pub vips: Vec<IpAddr>,
    /// The peer's UDP address, where the tunnel's data packets go; follows the source of the
    /// last authenticated packet received.
    pub endpoint: SocketAddr,
    /// This node's receiver id for the tunnel: the peer puts it in every data packet it sends,
    /// and the table finds the tunnel by it.
    pub local_id: u32,
    /// The peer's receiver id, put in every data packet sent to it.
    pub remote_id: u32,
    /// Traffic counters since the tunnel was installed.
    pub counters: Counters,
    /// The last time the tunnel carried data either way.
    pub last_data: Instant,
    sealer: Sealer,
    opener: Opener,
}

/// Why the table removed a tunnel: the netlink family's reasons, which the kernel data plane
/// reports too.
pub use crate::netlink::DestroyReason as Reason;

/// A tunnel the table removed, as the data plane reports it to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    /// The tunnel's local receiver id.
    pub local_id: u32,
    /// The peer's FQDN.
    pub fqdn: String,
    /// The peer's first VIP (IPv4 if it has one), for events and logs.
    pub vip: Option<IpAddr>,
    /// Why it went: `Idle` from the sweep, `Deleted` when removed or replaced.
    pub reason: Reason,
}

/// Why a packet from the virtual device was not sent into a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Neither a whole IPv4 header (20 bytes) nor a whole IPv6 header (40 bytes).
    #[error("not an IP packet")]
    NotIp,
    /// No tunnel to this destination VIP: the data plane reports a miss, so that the daemon
    /// builds one.
    #[error("no tunnel for {0}")]
    Miss(IpAddr),
    /// Sealing failed (in practice: the tunnel's send counter is exhausted).
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Why a data packet from the network was dropped. `Malformed` outer packets and
/// `UnknownReceiver` count in the table's `orphan_drops`, the others in the tunnel's
/// `rx_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Not a well-formed data packet, or (once opened) an inner packet that is not IP.
    #[error("malformed data packet")]
    Malformed,
    /// No tunnel has this local receiver id (expired, removed, or never ours).
    #[error("unknown receiver id {0:#010x}")]
    UnknownReceiver(u32),
    /// Authentication failed or the counter was replayed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The inner packet's source address is not one of the peer's VIPs.
    #[error("inner packet from {0}, not the peer's VIP")]
    Spoofed(IpAddr),
}

/// A decapsulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decap {
    /// Where the inner packet lies in the caller's buffer (empty: a keepalive).
    pub start: usize,
    /// Length of the inner packet in bytes (0 for a keepalive).
    pub len: usize,
    /// The local receiver id of the tunnel it came through.
    pub local_id: u32,
    /// The peer sent from a new address: the tunnel now follows it.
    pub roamed: Option<SocketAddr>,
}

/// The tunnels of the userspace data plane, by local receiver id and by peer VIP. A tunnel that
/// carries no data either way for `idle_timeout` is removed by [`TunnelTable::sweep`].
pub struct TunnelTable {
    idle_timeout: Duration,
    by_id: HashMap<u32, Tunnel>,
    by_vip: HashMap<IpAddr, u32>,
    /// Drops that belong to no tunnel (garbage, unknown receivers).
    pub orphan_drops: u64,
}

/// Source and destination of an IP packet.
pub fn ip_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

impl TunnelTable {
    /// An empty table whose tunnels expire after `idle_timeout` without data.
    pub fn new(idle_timeout: Duration) -> Self {
        Self { idle_timeout, by_id: HashMap::new(), by_vip: HashMap::new(), orphan_drops: 0 }
    }

    /// How long a tunnel may carry no data before the sweep removes it.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Installs a tunnel; a tunnel to the same peer is replaced (and returned as deleted).
    pub fn insert(&mut self, spec: &TunnelSpec, now: Instant) -> Option<Destroyed> {
        let old = self.by_id.values().find(|t| t.fqdn == spec.fqdn).map(|t| t.local_id);
        let replaced = old.and_then(|id| self.remove(id, Reason::Deleted));
        let vips: Vec<IpAddr> = spec.vip4.map(IpAddr::V4).into_iter().chain(spec.vip6.map(IpAddr::V6)).collect();
        for v in &vips {
            self.by_vip.insert(*v, spec.local_id);
        }
        self.by_id.insert(
            spec.local_id,
            Tunnel {
                fqdn: spec.fqdn.clone(),
                vips,
                endpoint: spec.endpoint,
                local_id: spec.local_id,
                remote_id: spec.remote_id,
                counters: Counters::default(),
                last_data: now,
                sealer: Sealer::new(&spec.keys.send, spec.remote_id),
                opener: Opener::new(&spec.keys.recv),
            },
        );
        replaced
    }

    /// Removes the tunnel with this local receiver id, if any, and its VIPs' entries (unless
    /// another tunnel took a VIP over since); returns it as destroyed for `reason`.
    pub fn remove(&mut self, local_id: u32, reason: Reason) -> Option<Destroyed> {
        let t = self.by_id.remove(&local_id)?;
        for v in &t.vips {
            if self.by_vip.get(v) == Some(&local_id) {
                self.by_vip.remove(v);
            }
        }
        Some(Destroyed { local_id, fqdn: t.fqdn, vip: t.vips.first().copied(), reason })
    }

    /// The tunnel with this local receiver id.
    pub fn get(&self, local_id: u32) -> Option<&Tunnel> {
        self.by_id.get(&local_id)
    }

    /// Every tunnel, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Tunnel> {
        self.by_id.values()
    }

    /// The number of tunnels.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table holds no tunnel.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Seals an IP packet from the virtual device for its peer: returns where to send `out`.
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut Vec<u8>, now: Instant) -> Result<SocketAddr, EncapError> {
        let (_, dst) = ip_addrs(packet).ok_or(EncapError::NotIp)?;
        let id = *self.by_vip.get(&dst).ok_or(EncapError::Miss(dst))?;
        let t = self.by_id.get_mut(&id).ok_or(EncapError::Miss(dst))?;
        t.sealer.seal(packet, out)?;
        t.counters.tx_packets += 1;
        t.counters.tx_bytes += packet.len() as u64;
        t.last_data = now;
        Ok(t.endpoint)
    }

    /// Opens a data packet in place; the inner packet is `buf[start..start + len]`.
    pub fn decapsulate(&mut self, from: SocketAddr, buf: &mut [u8], now: Instant) -> Result<Decap, DecapError> {
        let Ok(Packet::Data { receiver, counter, .. }) = Packet::parse(buf) else {
            self.orphan_drops += 1;
            return Err(DecapError::Malformed);
        };
        let Some(t) = self.by_id.get_mut(&receiver) else {
            self.orphan_drops += 1;
            return Err(DecapError::UnknownReceiver(receiver));
        };
        let len = match t.opener.open(counter, &mut buf[DATA_HEADER..]) {
            Ok(p) => p.len(),
            Err(e) => {
                t.counters.rx_dropped += 1;
                return Err(e.into());
            }
        };
        let inner = &buf[DATA_HEADER..DATA_HEADER + len];
        if len > 0 {
            match ip_addrs(inner) {
                Some((src, _)) if t.vips.contains(&src) => {}
                Some((src, _)) => {
                    t.counters.rx_dropped += 1;
                    return Err(DecapError::Spoofed(src));
                }
                None => {
                    t.counters.rx_dropped += 1;
                    return Err(DecapError::Malformed);
                }
            }
            t.last_data = now;
        }
        t.counters.rx_packets += 1;
        t.counters.rx_bytes += len as u64;
        let roamed = (t.endpoint != from).then(|| {
            t.endpoint = from;
            from
        });
        Ok(Decap { start: DATA_HEADER, len, local_id: receiver, roamed })
    }

    /// An empty keepalive packet for each tunnel (or only the one with local id `only`), with
    /// where to send it. Keepalives do not count as activity for idle expiry.
    pub fn keepalives(&mut self, only: Option<u32>) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut v = Vec::new();
        for t in self.by_id.values_mut().filter(|t| only.is_none_or(|id| t.local_id == id)) {
            let mut out = Vec::new();
            if t.sealer.seal(&[], &mut out).is_ok() {
                v.push((t.endpoint, out));
            }
        }
        v
    }

    /// When the next tunnel falls idle.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_id.values().map(|t| t.last_data + self.idle_timeout).min()
    }

    /// Removes every tunnel idle for the timeout.
    pub fn sweep(&mut self, now: Instant) -> Vec<Destroyed> {
        let idle: Vec<u32> = self
            .by_id
            .values()
            .filter(|t| now.saturating_duration_since(t.last_data) >= self.idle_timeout)
            .map(|t| t.local_id)
            .collect();
        idle.into_iter().filter_map(|id| self.remove(id, Reason::Idle)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TunnelKeys;
    use crate::msg::Path;
    use std::net::Ipv4Addr;

    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn pair(now: Instant) -> (TunnelTable, TunnelTable) {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let mut a = TunnelTable::new(Duration::from_secs(10));
        let mut b = TunnelTable::new(Duration::from_secs(10));
        let spec = |fqdn: &str, vip: [u8; 4], ep: &str, l, r, send, recv| TunnelSpec {
            fqdn: fqdn.into(),
            vip4: Some(Ipv4Addr::from(vip)),
            vip6: None,
            endpoint: ep.parse().unwrap(),
            local_id: l,
            remote_id: r,
            keys: TunnelKeys { send, recv },
            path: Path::Direct,
        };
        a.insert(&spec("b", [100, 64, 0, 2], "192.0.2.2:7600", 11, 22, k1, k2), now);
        b.insert(&spec("a", [100, 64, 0, 1], "192.0.2.1:7600", 22, 11, k2, k1), now);
        (a, b)
    }

    #[test]
    fn carries_packets_expires_and_roams() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let pkt = ipv4([100, 64, 0, 1], [100, 64, 0, 2]);
        let mut out = Vec::new();
        let dst = a.encapsulate(&pkt, &mut out, t0).unwrap();
        assert_eq!(dst, "192.0.2.2:7600".parse().unwrap());
        let from: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let d = b.decapsulate(from, &mut out, t0).unwrap();
        assert_eq!(&out[d.start..d.start + d.len], &pkt[..]);
        assert_eq!(d.roamed, Some(from));
        assert_eq!(b.get(22).unwrap().endpoint, from);
        // Replay is dropped and counted.
        let mut again = Vec::new();
        a.encapsulate(&pkt, &mut again, t0).unwrap();
        let copy = again.clone();
        b.decapsulate(from, &mut again, t0).unwrap();
        let mut replay = copy;
        assert!(matches!(b.decapsulate(from, &mut replay, t0), Err(DecapError::Data(DataError::Replay(1)))));
        assert_eq!(b.get(22).unwrap().counters.rx_dropped, 1);
        // Miss for an unknown VIP.
        assert_eq!(
            a.encapsulate(&ipv4([100, 64, 0, 1], [100, 64, 0, 9]), &mut out, t0),
            Err(EncapError::Miss(IpAddr::from([100, 64, 0, 9])))
        );
        // Idle expiry.
        assert!(a.sweep(t0 + Duration::from_secs(9)).is_empty());
        let gone = a.sweep(t0 + Duration::from_secs(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].reason, Reason::Idle);
        assert!(a.is_empty());
    }

    #[test]
    fn spoofed_inner_source_is_dropped() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let mut out = Vec::new();
        a.encapsulate(&ipv4([10, 0, 0, 1], [100, 64, 0, 2]), &mut out, t0).unwrap();
        let from = "192.0.2.1:7600".parse().unwrap();
        assert!(matches!(b.decapsulate(from, &mut out, t0), Err(DecapError::Spoofed(_))));
        let mut junk = vec![4u8, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(b.decapsulate(from, &mut junk, t0), Err(DecapError::Malformed));
        assert_eq!(b.orphan_drops, 1);
    }
}
