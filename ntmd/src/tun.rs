//! The TUN device of the userspace data plane: an L3 device (no packet-info header) whose
//! addresses (the node's VIPs) and routes (the VIP ranges) are set over rtnetlink.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

use ipnet::IpNet;

use crate::link::{Link, LinkError};

/// Why the TUN device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// Opening `/dev/net/tun` or configuring the device failed (no CAP_NET_ADMIN, a name
    /// taken by a device of another type).
    #[error("creating TUN device {name}: {source}")]
    Create {
        /// The device name asked for.
        name: String,
        /// The error from the TUN driver.
        source: io::Error,
    },
    /// Setting the device's addresses or routes over rtnetlink failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// An open TUN device. Reading and writing carry bare IPv4/IPv6 packets; its addresses and
/// routes are its [`Link`]'s.
pub struct Tun {
    dev: tun_rs::AsyncDevice,
    link: Link,
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
        Ok(Tun { dev, link: Link { name, index } })
    }

    /// The device's name, as the kernel gave it.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.link.index
    }

    /// The device as rtnetlink addresses it, for its VIPs and routes.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Makes the node's VIPs the device's addresses: see [`Link::set_addresses`].
    pub fn set_addresses(&self, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Result<(), TunError> {
        Ok(self.link.set_addresses(vip4, vip6)?)
    }

    /// Routes the VIP ranges into the device: see [`Link::add_routes`].
    pub fn add_routes(&self, routes: &[IpNet]) -> Result<(), TunError> {
        Ok(self.link.add_routes(routes)?)
    }

    /// Reads one packet into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Writes one packet.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.dev.send(pkt).await
    }
}

impl Deref for Tun {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.link
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
