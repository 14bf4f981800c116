//! The `ntm` generic netlink family from userspace (`kmod/spec/ntm.yaml`; numbers in
//! `proto::netlink`): typed attributes with their encoding and decoding, and a small blocking
//! request socket that reports the module's extack message on every rejection.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};
use proto::netlink::{attr, tunnel as t, FAMILY_NAME, FAMILY_VERSION, KEY_LEN};

const NLA_F_NESTED: u16 = 0x8000;

/// Attributes nested in `tunnel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelAttr {
    LocalId(u32),
    RemoteId(u32),
    Vip4(Ipv4Addr),
    Vip6(Ipv6Addr),
    EndpointIp4(Ipv4Addr),
    EndpointIp6(Ipv6Addr),
    EndpointPort(u16),
    SendKey([u8; KEY_LEN]),
    RecvKey([u8; KEY_LEN]),
    Label(String),
    IdleMs(u32),
    TxPackets(u64),
    TxBytes(u64),
    RxPackets(u64),
    RxBytes(u64),
    RxDropped(u64),
    Reason(u32),
    Other(DefaultNla),
}

/// Top-level attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtmAttr {
    Ifindex(u32),
    SockFd4(i32),
    SockFd6(i32),
    IdleTimeoutMs(u32),
    Tunnel(Vec<TunnelAttr>),
    MissVip4(Ipv4Addr),
    MissVip6(Ipv6Addr),
    RxOrphans(u64),
    Other(DefaultNla),
}

/// A message of the family: its command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtmMsg {
    pub cmd: u8,
    pub attrs: Vec<NtmAttr>,
}

/// `uint` attributes are 4 or 8 bytes, as the sender chose.
fn parse_uint(b: &[u8]) -> Result<u64, DecodeError> {
    match b.len() {
        4 => Ok(u32::from_ne_bytes(b.try_into().expect("4 bytes")) as u64),
        8 => Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes"))),
        n => Err(DecodeError::from(format!("uint attribute of {n} bytes"))),
    }
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], DecodeError> {
    b.try_into().map_err(|_| DecodeError::from(format!("{what}: {} bytes, want {N}", b.len())))
}

impl Nla for TunnelAttr {
    fn value_len(&self) -> usize {
        use TunnelAttr::*;
        match self {
            LocalId(_) | RemoteId(_) | Vip4(_) | EndpointIp4(_) | IdleMs(_) | Reason(_) => 4,
            Vip6(_) | EndpointIp6(_) => 16,
            EndpointPort(_) => 2,
            SendKey(_) | RecvKey(_) => KEY_LEN,
            Label(s) => s.len() + 1,
            TxPackets(_) | TxBytes(_) | RxPackets(_) | RxBytes(_) | RxDropped(_) => 8,
            Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use TunnelAttr::*;
        match self {
            LocalId(_) => t::LOCAL_ID,
            RemoteId(_) => t::REMOTE_ID,
            Vip4(_) => t::VIP4,
            Vip6(_) => t::VIP6,
            EndpointIp4(_) => t::ENDPOINT_IP4,
            EndpointIp6(_) => t::ENDPOINT_IP6,
            EndpointPort(_) => t::ENDPOINT_PORT,
            SendKey(_) => t::SEND_KEY,
            RecvKey(_) => t::RECV_KEY,
            Label(_) => t::LABEL,
            IdleMs(_) => t::IDLE_MS,
            TxPackets(_) => t::TX_PACKETS,
            TxBytes(_) => t::TX_BYTES,
            RxPackets(_) => t::RX_PACKETS,
            RxBytes(_) => t::RX_BYTES,
            RxDropped(_) => t::RX_DROPPED,
            Reason(_) => t::REASON,
            Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        use TunnelAttr::*;
        match self {
            LocalId(v) | RemoteId(v) | IdleMs(v) | Reason(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Vip4(a) | EndpointIp4(a) => b[..4].copy_from_slice(&a.octets()),
            Vip6(a) | EndpointIp6(a) => b[..16].copy_from_slice(&a.octets()),
            EndpointPort(p) => b[..2].copy_from_slice(&p.to_be_bytes()),
            SendKey(k) | RecvKey(k) => b[..KEY_LEN].copy_from_slice(k),
            Label(s) => {
                b[..s.len()].copy_from_slice(s.as_bytes());
                b[s.len()] = 0;
            }
            TxPackets(v) | TxBytes(v) | RxPackets(v) | RxBytes(v) | RxDropped(v) => {
                b[..8].copy_from_slice(&v.to_ne_bytes())
            }
            Other(n) => n.emit_value(b),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for TunnelAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use TunnelAttr::*;
        let v = buf.value();
        let u32v = || fixed::<4>(v, "u32").map(u32::from_ne_bytes);
        Ok(match buf.kind() & !NLA_F_NESTED {
            t::LOCAL_ID => LocalId(u32v()?),
            t::REMOTE_ID => RemoteId(u32v()?),
            t::VIP4 => Vip4(Ipv4Addr::from(fixed::<4>(v, "vip4")?)),
            t::VIP6 => Vip6(Ipv6Addr::from(fixed::<16>(v, "vip6")?)),
            t::ENDPOINT_IP4 => EndpointIp4(Ipv4Addr::from(fixed::<4>(v, "endpoint-ip4")?)),
            t::ENDPOINT_IP6 => EndpointIp6(Ipv6Addr::from(fixed::<16>(v, "endpoint-ip6")?)),
            t::ENDPOINT_PORT => EndpointPort(u16::from_be_bytes(fixed::<2>(v, "endpoint-port")?)),
            t::SEND_KEY => SendKey(fixed(v, "send-key")?),
            t::RECV_KEY => RecvKey(fixed(v, "recv-key")?),
            t::LABEL => Label(String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or_default()).into_owned()),
            t::IDLE_MS => IdleMs(u32v()?),
            t::TX_PACKETS => TxPackets(parse_uint(v)?),
            t::TX_BYTES => TxBytes(parse_uint(v)?),
            t::RX_PACKETS => RxPackets(parse_uint(v)?),
            t::RX_BYTES => RxBytes(parse_uint(v)?),
            t::RX_DROPPED => RxDropped(parse_uint(v)?),
            t::REASON => Reason(u32v()?),
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for NtmAttr {
    fn value_len(&self) -> usize {
        use NtmAttr::*;
        match self {
            Ifindex(_) | SockFd4(_) | SockFd6(_) | IdleTimeoutMs(_) | MissVip4(_) => 4,
            MissVip6(_) => 16,
            RxOrphans(_) => 8,
            Tunnel(attrs) => attrs.as_slice().buffer_len(),
            Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use NtmAttr::*;
        match self {
            Ifindex(_) => attr::IFINDEX,
            SockFd4(_) => attr::SOCK_FD4,
            SockFd6(_) => attr::SOCK_FD6,
            IdleTimeoutMs(_) => attr::IDLE_TIMEOUT_MS,
            Tunnel(_) => attr::TUNNEL | NLA_F_NESTED,
            MissVip4(_) => attr::MISS_VIP4,
            MissVip6(_) => attr::MISS_VIP6,
            RxOrphans(_) => attr::RX_ORPHANS,
            Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        use NtmAttr::*;
        match self {
            Ifindex(v) | IdleTimeoutMs(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            SockFd4(v) | SockFd6(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            MissVip4(a) => b[..4].copy_from_slice(&a.octets()),
            MissVip6(a) => b[..16].copy_from_slice(&a.octets()),
            RxOrphans(v) => b[..8].copy_from_slice(&v.to_ne_bytes()),
            Tunnel(attrs) => attrs.as_slice().emit(b),
            Other(n) => n.emit_value(b),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NtmAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use NtmAttr::*;
        let v = buf.value();
        Ok(match buf.kind() & !NLA_F_NESTED {
            attr::IFINDEX => Ifindex(u32::from_ne_bytes(fixed(v, "ifindex")?)),
            attr::SOCK_FD4 => SockFd4(i32::from_ne_bytes(fixed(v, "sock-fd4")?)),
            attr::SOCK_FD6 => SockFd6(i32::from_ne_bytes(fixed(v, "sock-fd6")?)),
            attr::IDLE_TIMEOUT_MS => IdleTimeoutMs(u32::from_ne_bytes(fixed(v, "idle-timeout-ms")?)),
            attr::TUNNEL => Tunnel(
                NlasIterator::new(v)
                    .map(|n| n.and_then(|n| TunnelAttr::parse(&n)))
                    .collect::<Result<Vec<_>, _>>()
                    .context("tunnel attributes")?,
            ),
            attr::MISS_VIP4 => MissVip4(Ipv4Addr::from(fixed::<4>(v, "miss-vip4")?)),
            attr::MISS_VIP6 => MissVip6(Ipv6Addr::from(fixed::<16>(v, "miss-vip6")?)),
            attr::RX_ORPHANS => RxOrphans(parse_uint(v)?),
            _ => Other(DefaultNla::parse(buf)?),
        })
    }
}

impl GenlFamily for NtmMsg {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for NtmMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NtmMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|n| n.and_then(|n| NtmAttr::parse(&n)))
            .collect::<Result<Vec<_>, _>>()
            .context("ntm attributes")?;
        Ok(NtmMsg { cmd: header.cmd, attrs })
    }
}

impl NtmMsg {
    pub fn new(cmd: u8, attrs: Vec<NtmAttr>) -> Self {
        Self { cmd, attrs }
    }

    /// The attributes of the nested `tunnel`, if any.
    pub fn tunnel(&self) -> Option<&[TunnelAttr]> {
        self.attrs.iter().find_map(|a| match a {
            NtmAttr::Tunnel(t) => Some(t.as_slice()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_generic::GenlMessage;

    #[test]
    fn round_trip_through_the_wire_format() {
        let msg = NtmMsg::new(
            proto::netlink::cmd::TUNNEL_NEW,
            vec![
                NtmAttr::Ifindex(3),
                NtmAttr::Tunnel(vec![
                    TunnelAttr::LocalId(0x01020304),
                    TunnelAttr::RemoteId(9),
                    TunnelAttr::Vip4(Ipv4Addr::new(100, 64, 40, 2)),
                    TunnelAttr::Vip6("fd4e:544d:40::2".parse().unwrap()),
                    TunnelAttr::EndpointIp4(Ipv4Addr::new(198, 18, 60, 2)),
                    TunnelAttr::EndpointPort(7600),
                    TunnelAttr::SendKey([1; 32]),
                    TunnelAttr::RecvKey([2; 32]),
                    TunnelAttr::Label("rpi.home.ntm.test".into()),
                    TunnelAttr::TxBytes(1 << 40),
                ]),
            ],
        );
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(GenlMessage::from_payload(msg.clone())),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        // Byte order where the spec says big-endian: the port is 7600 on the wire.
        let port = 7600u16.to_be_bytes();
        assert!(buf.windows(2).any(|w| w == port));
        let back = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(g) = back.payload else { panic!() };
        assert_eq!(g.payload, msg);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&8u16.to_ne_bytes());
        b[2..4].copy_from_slice(&t::VIP6.to_ne_bytes());
        assert!(TunnelAttr::parse(&NlaBuffer::new_checked(&b[..]).unwrap()).is_err());
    }
}
