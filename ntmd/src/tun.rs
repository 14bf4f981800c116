//! The TUN device of the userspace data plane: an L3 device (no packet-info header) whose
//! addresses (the node's VIPs) and routes (the VIP ranges) are set over rtnetlink.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("creating TUN device {name}: {source}")]
    Create { name: String, source: io::Error },
    #[error("rtnetlink: {what}: {source}")]
    Netlink { what: String, source: io::Error },
}

/// An open TUN device. Reading and writing carry bare IPv4/IPv6 packets.
pub struct Tun {
    dev: tun_rs::AsyncDevice,
    name: String,
    index: u32,
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name` with `mtu` and brings it up.
    /// Must be called inside a tokio runtime.
    pub fn create(name: &str, mtu: u16) -> Result<Tun, TunError> {
        let err = |source| TunError::Create { name: name.to_owned(), source };
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .packet_information(false)
            .enable(true)
            .build_async()
            .map_err(err)?;
        let index = dev.if_index().map_err(err)?;
        let name = dev.name().map_err(err)?;
        tracing::info!(dev = %name, index, mtu, "TUN device up");
        Ok(Tun { dev, name, index })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Reads one packet into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Writes one packet.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.dev.send(pkt).await
    }

    /// Makes `vip4`/32 and `vip6`/128 the device's only addresses of their families (IPv6
    /// link-local addresses are left alone). `None` removes that family's addresses.
    pub fn set_addresses(&self, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Result<(), TunError> {
        let nl = Rtnl::open()?;
        let wanted: Vec<IpAddr> = vip4.map(IpAddr::V4).into_iter().chain(vip6.map(IpAddr::V6)).collect();
        for (addr, prefix_len) in nl.addresses(self.index)? {
            let link_local = matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
            if link_local || (wanted.contains(&addr) && prefix_len == full_len(addr)) {
                continue;
            }
            nl.request(RouteNetlinkMessage::DelAddress(address_message(self.index, addr, prefix_len)), 0)
                .map_err(|source| TunError::Netlink { what: format!("deleting {addr}/{prefix_len}"), source })?;
        }
        for addr in wanted {
            let msg = address_message(self.index, addr, full_len(addr));
            nl.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|source| TunError::Netlink { what: format!("adding {addr}/{}", full_len(addr)), source })?;
        }
        tracing::info!(dev = %self.name, ?vip4, ?vip6, "VIPs set");
        Ok(())
    }

    /// Routes each prefix into the device (main table; an existing route is replaced).
    pub fn add_routes(&self, routes: &[IpNet]) -> Result<(), TunError> {
        let nl = Rtnl::open()?;
        for net in routes {
            nl.request(RouteNetlinkMessage::NewRoute(route_message(self.index, net)), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|source| TunError::Netlink {
                    what: format!("adding route {net} dev {}", self.name),
                    source,
                })?;
        }
        tracing::info!(dev = %self.name, ?routes, "routes added");
        Ok(())
    }
}

fn full_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr);
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    if addr.is_ipv4() {
        msg.attributes.push(AddressAttribute::Address(addr));
    } else {
        // No duplicate address detection: the VIP is unique by construction and must be
        // usable at once.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

fn route_message(index: u32, net: &IpNet) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(net.addr());
    msg.header.destination_prefix_length = net.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = if net.addr().is_ipv4() { RouteScope::Link } else { RouteScope::Universe };
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(net.network())));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

/// A blocking rtnetlink socket for a few requests; the kernel answers them at once.
struct Rtnl {
    sock: Socket,
    seq: std::cell::Cell<u32>,
}

impl Rtnl {
    fn open() -> Result<Rtnl, TunError> {
        let open = || -> io::Result<Socket> {
            let mut sock = Socket::new(NETLINK_ROUTE)?;
            sock.bind_auto()?;
            sock.connect(&SocketAddr::new(0, 0))?;
            Ok(sock)
        };
        let sock = open().map_err(|source| TunError::Netlink { what: "opening socket".into(), source })?;
        Ok(Rtnl { sock, seq: std::cell::Cell::new(0) })
    }

    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(seq)
    }

    /// Reads replies to `seq`, handing each inner message to `f`, until the ack (or the
    /// end of a dump).
    fn receive(&self, seq: u32, mut f: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (msg.header.length as usize).max(16).min(rest.len());
                rest = &rest[len..];
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => f(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request with an ack and waits for it.
    fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |_| {})
    }

    /// The addresses (with prefix lengths) on interface `index`.
    fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, TunError> {
        let mut found = Vec::new();
        let seq = self.send(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP).and_then(|seq| {
            self.receive(seq, |m| {
                let RouteNetlinkMessage::NewAddress(a) = m else { return };
                if a.header.index != index {
                    return;
                }
                let local = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(addr) = addr {
                    found.push((addr, a.header.prefix_len));
                }
            })
        });
        seq.map_err(|source| TunError::Netlink { what: "listing addresses".into(), source })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::Duration;

    const NS: &str = "ntmtest-tun";

    /// Creates the namespace and deletes it when dropped.
    struct Netns;

    impl Netns {
        fn create() -> Netns {
            // Left over from an interrupted run?
            let _ = Command::new("ip").args(["netns", "del", NS]).stderr(std::process::Stdio::null()).status();
            let ok = Command::new("ip").args(["netns", "add", NS]).status().expect("run ip").success();
            assert!(ok, "ip netns add {NS} failed");
            Netns
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", NS]).status();
        }
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", NS]).args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn checksum(data: &[u8], mut sum: u32) -> u16 {
        for chunk in data.chunks(2) {
            sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An IPv4/UDP packet (UDP checksum 0: none).
    fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let c = checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// An IPv6/UDP packet with its (mandatory) checksum.
    fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let ulen = (8 + payload.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&dport.to_be_bytes());
        udp.extend_from_slice(&ulen.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&u32::from(ulen).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(&udp);
        let c = checksum(&pseudo, 0);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&ulen.to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&udp);
        p
    }

    async fn recv_matching(tun: &Tun, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut buf = vec![0; 2000];
        let deadline = Duration::from_secs(5);
        tokio::time::timeout(deadline, async {
            loop {
                let n = tun.recv(&mut buf).await.expect("tun recv");
                if want(&buf[..n]) {
                    return buf[..n].to_vec();
                }
            }
        })
        .await
        .expect("no matching packet from the TUN device")
    }

    #[test]
    fn tun_in_netns() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("!!!!! SKIPPED tun::tests::tun_in_netns: needs root (network namespaces, TUN) !!!!!");
            return;
        }
        let _ns = Netns::create();
        // Only this thread enters the namespace; the rest of the test binary is unaffected.
        std::thread::spawn(|| {
            let f = std::fs::File::open(format!("/run/netns/{NS}")).expect("open netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(run_in_netns());
        })
        .join()
        .expect("test thread panicked");
    }

    async fn run_in_netns() {
        let tun = Tun::create("ntmt0", 1420).expect("create TUN");
        let link = ip(&["link", "show", "dev", "ntmt0"]);
        assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");

        let (old4, old6): (Ipv4Addr, Ipv6Addr) = ("100.64.9.9".parse().unwrap(), "fd4e:544d::9:9".parse().unwrap());
        tun.set_addresses(Some(old4), Some(old6)).expect("set addresses");
        let (vip4, vip6): (Ipv4Addr, Ipv6Addr) = ("100.64.0.2".parse().unwrap(), "fd4e:544d::2".parse().unwrap());
        tun.set_addresses(Some(vip4), Some(vip6)).expect("replace addresses");
        let routes: Vec<IpNet> = vec!["100.64.0.0/10".parse().unwrap(), "fd4e:544d::/32".parse().unwrap()];
        tun.add_routes(&routes).expect("add routes");
        tun.add_routes(&routes).expect("add routes again (idempotent)");

        let addrs = ip(&["addr", "show", "dev", "ntmt0"]);
        assert!(addrs.contains("inet 100.64.0.2/32"), "{addrs}");
        assert!(addrs.contains("inet6 fd4e:544d::2/128"), "{addrs}");
        assert!(!addrs.contains("100.64.9.9") && !addrs.contains("fd4e:544d::9:9"), "old VIPs left: {addrs}");
        let r4 = ip(&["-4", "route", "show", "dev", "ntmt0"]);
        assert!(r4.contains("100.64.0.0/10"), "{r4}");
        let r6 = ip(&["-6", "route", "show", "dev", "ntmt0"]);
        assert!(r6.contains("fd4e:544d::/32"), "{r6}");

        // Kernel → TUN: datagrams to route-covered addresses come out of the device.
        let peer4: Ipv4Addr = "100.64.1.1".parse().unwrap();
        let s4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        s4.send_to(b"out4", (peer4, 9999)).unwrap();
        let p = recv_matching(&tun, |p| p[0] >> 4 == 4 && p[16..20] == peer4.octets()).await;
        assert_eq!(p[12..16], vip4.octets(), "source is the VIP");
        assert_eq!(p[9], 17);
        assert_eq!(&p[28..], b"out4");

        let peer6: Ipv6Addr = "fd4e:544d::1:1".parse().unwrap();
        let s6 = UdpSocket::bind("[::]:0").unwrap();
        s6.send_to(b"out6", (peer6, 9999)).unwrap();
        let p = recv_matching(&tun, |p| p[0] >> 4 == 6 && p[24..40] == peer6.octets()).await;
        assert_eq!(p[8..24], vip6.octets(), "source is the VIP");
        assert_eq!(p[6], 17);
        assert_eq!(&p[48..], b"out6");

        // TUN → kernel: packets written to the device are delivered to sockets on the VIPs.
        let r4 = UdpSocket::bind((vip4, 0)).unwrap();
        r4.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = r4.local_addr().unwrap().port();
        let pkt = udp4(peer4, vip4, 4242, port, b"in4");
        assert_eq!(tun.send(&pkt).await.unwrap(), pkt.len());
        let mut buf = [0; 64];
        let (n, from) = r4.recv_from(&mut buf).expect("IPv4 packet written to TUN not delivered");
        assert_eq!((&buf[..n], from), (&b"in4"[..], (peer4, 4242).into()));

        let r6 = UdpSocket::bind((vip6, 0)).unwrap();
        r6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = r6.local_addr().unwrap().port();
        let pkt = udp6(peer6, vip6, 4243, port, b"in6");
        assert_eq!(tun.send(&pkt).await.unwrap(), pkt.len());
        let (n, from) = r6.recv_from(&mut buf).expect("IPv6 packet written to TUN not delivered");
        assert_eq!((&buf[..n], from), (&b"in6"[..], (peer6, 4243).into()));

        tun.set_addresses(None, None).expect("clear addresses");
        let addrs = ip(&["addr", "show", "dev", "ntmt0"]);
        assert!(!addrs.contains("100.64.0.2") && !addrs.contains("fd4e:544d::2"), "{addrs}");
    }
}
