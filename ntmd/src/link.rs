//! A network device's addresses and routes, over rtnetlink: the node's VIPs on its virtual
//! device (the TUN device of the userspace data plane, or the `ntm` device of the kernel module),
//! and the VIP ranges routed into it. Creates `ntm` devices too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An rtnetlink request that failed.
#[derive(Debug, thiserror::Error)]
#[error("rtnetlink: {what}: {source}")]
pub struct LinkError {
    /// What was being done, with the device or address (e.g. "creating ntm0").
    pub what: String,
    /// The socket error, or the kernel's errno for the request.
    pub source: io::Error,
}

/// A network device, by name and index.
#[derive(Debug, Clone)]
pub struct Link {
    /// The interface name (`ntm0`).
    pub name: String,
    /// The kernel's interface index, which rtnetlink requests address it by.
    pub index: u32,
}

impl Link {
    /// Creates an `ntm` device (the kernel module's; `ip link add NAME type ntm`), replacing a
    /// leftover one of the same name, sets its MTU and brings it up.
    pub fn create_ntm(name: &str, mtu: u16) -> Result<Link, LinkError> {
        let nl = Rtnl::open()?;
        let err = |what: &str| {
            let what = format!("{what} {name}");
            move |source| LinkError { what, source }
        };
        if let Some(old) = nl.index_of(name)? {
            let mut del = LinkMessage::default();
            del.header.index = old;
            nl.request(RouteNetlinkMessage::DelLink(del), 0).map_err(err("deleting the leftover device"))?;
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu as u32));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Other("ntm".into()))]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL).map_err(err("creating"))?;
        let index = nl.index_of(name)?.ok_or_else(|| LinkError {
            what: format!("finding {name}"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        tracing::info!(dev = name, index, mtu, "ntm device up");
        Ok(Link { name: name.to_string(), index })
    }

    /// Deletes the device.
    pub fn delete(&self) -> Result<(), LinkError> {
        let nl = Rtnl::open()?;
        let mut del = LinkMessage::default();
        del.header.index = self.index;
        nl.request(RouteNetlinkMessage::DelLink(del), 0)
            .map_err(|source| LinkError { what: format!("deleting {}", self.name), source })
    }

    /// Makes `vip4`/32 and `vip6`/128 the device's only addresses of their families (IPv6
    /// link-local addresses are left alone). `None` removes that family's addresses.
    pub fn set_addresses(&self, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Result<(), LinkError> {
        let nl = Rtnl::open()?;
        let wanted: Vec<IpAddr> = vip4.map(IpAddr::V4).into_iter().chain(vip6.map(IpAddr::V6)).collect();
        for (addr, prefix_len) in nl.addresses(self.index)? {
            let link_local = matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
            if link_local || (wanted.contains(&addr) && prefix_len == full_len(addr)) {
                continue;
            }
            nl.request(RouteNetlinkMessage::DelAddress(address_message(self.index, addr, prefix_len)), 0)
                .map_err(|source| LinkError { what: format!("deleting {addr}/{prefix_len}"), source })?;
        }
        for addr in wanted {
            let msg = address_message(self.index, addr, full_len(addr));
            nl.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|source| LinkError { what: format!("adding {addr}/{}", full_len(addr)), source })?;
        }
        tracing::info!(dev = %self.name, ?vip4, ?vip6, "VIPs set");
        Ok(())
    }

    /// Routes each prefix into the device (main table; an existing route is replaced).
    pub fn add_routes(&self, routes: &[IpNet]) -> Result<(), LinkError> {
        let nl = Rtnl::open()?;
        for net in routes {
            nl.request(RouteNetlinkMessage::NewRoute(route_message(self.index, net)), NLM_F_CREATE | NLM_F_REPLACE)
                .map_err(|source| LinkError { what: format!("adding route {net} dev {}", self.name), source })?;
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
    fn open() -> Result<Rtnl, LinkError> {
        let open = || -> io::Result<Socket> {
            let mut sock = Socket::new(NETLINK_ROUTE)?;
            sock.bind_auto()?;
            sock.connect(&SocketAddr::new(0, 0))?;
            Ok(sock)
        };
        let sock = open().map_err(|source| LinkError { what: "opening socket".into(), source })?;
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

    /// The index of the device called `name`, if there is one.
    fn index_of(&self, name: &str) -> Result<Option<u32>, LinkError> {
        match nix::net::if_::if_nametoindex(name) {
            Ok(i) => Ok(Some(i)),
            Err(nix::errno::Errno::ENODEV) => Ok(None),
            Err(e) => Err(LinkError { what: format!("looking up {name}"), source: e.into() }),
        }
    }

    /// Sends a request with an ack and waits for it.
    fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |_| {})
    }

    /// The addresses (with prefix lengths) on interface `index`.
    fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, LinkError> {
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
        seq.map_err(|source| LinkError { what: "listing addresses".into(), source })?;
        Ok(found)
    }
}
