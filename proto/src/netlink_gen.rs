// generated from kmod/spec/ntm.yaml by scripts/gen-netlink; do not edit

//! The `ntm` family's numbers, enums and typed attributes (one enum per
//! attribute set), each attribute with its encoding; `netlink.rs` frames them.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{attrs_len, emit_attrs, emit_string, fixed, parse_attrs, string, uint, AttrError, Attribute, NLA_F_NESTED};

/// The family's name.
pub const FAMILY_NAME: &str = "ntm";
/// The family's version.
pub const FAMILY_VERSION: u8 = 1;
/// The `events` multicast group.
pub const MCGRP_EVENTS: &str = "events";
/// `key-len`.
pub const KEY_LEN: usize = 32;
/// `label-max-len`.
pub const LABEL_MAX_LEN: usize = 255;

/// Commands and notifications.
pub mod cmd {
    /// Hands the device its UDP sockets and sets its idle timeout.
    pub const DEV_SET: u8 = 1;
    /// The device's settings and counters.
    pub const DEV_GET: u8 = 2;
    /// Installs a tunnel; a tunnel with the same VIP is replaced (destroyed with reason deleted).
    pub const TUNNEL_NEW: u8 = 3;
    /// Changes a tunnel's endpoint (the peer moved).
    pub const TUNNEL_SET: u8 = 4;
    /// One tunnel by local-id, or a dump of all of them (keys never included).
    pub const TUNNEL_GET: u8 = 5;
    /// Deletes a tunnel by local-id.
    pub const TUNNEL_DEL: u8 = 6;
    /// A tunnel is gone; `tunnel` carries local-id, label, VIPs and reason.
    pub const TUNNEL_DESTROYED_NTF: u8 = 7;
    /// A packet for a VIP with no tunnel (at most one per VIP per second, and 64 per device per
    /// second).
    pub const TUNNEL_MISS_NTF: u8 = 8;
    /// An authenticated packet came from a new address; the tunnel now sends there.
    pub const ENDPOINT_CHANGED_NTF: u8 = 9;
    /// Sends an empty authenticated packet on one tunnel (by local-id), or on every tunnel of the
    /// device when `tunnel` is absent, so that peers learn the node's new address after a move.
    /// Keepalives are not data: they do not reset the idle timer.
    pub const TUNNEL_KEEPALIVE: u8 = 10;
}

/// Attributes of the `tunnel` set.
pub mod tunnel {
    /// The receiver id of packets for this tunnel (unique per device, never 0).
    pub const LOCAL_ID: u16 = 1;
    /// The receiver id the peer expects in packets we send.
    pub const REMOTE_ID: u16 = 2;
    /// The peer's IPv4 VIP.
    pub const VIP4: u16 = 3;
    /// The peer's IPv6 VIP.
    pub const VIP6: u16 = 4;
    /// `endpoint-ip4`.
    pub const ENDPOINT_IP4: u16 = 5;
    /// `endpoint-ip6`.
    pub const ENDPOINT_IP6: u16 = 6;
    /// `endpoint-port`.
    pub const ENDPOINT_PORT: u16 = 7;
    /// ChaCha20-Poly1305 key for packets we send. Never dumped.
    pub const SEND_KEY: u16 = 8;
    /// ChaCha20-Poly1305 key for packets we receive. Never dumped.
    pub const RECV_KEY: u16 = 9;
    /// A name userspace gives the tunnel (the peer's FQDN), echoed in dumps and events.
    pub const LABEL: u16 = 10;
    /// Milliseconds since the tunnel last carried data (dumps only).
    pub const IDLE_MS: u16 = 11;
    /// `tx-packets`.
    pub const TX_PACKETS: u16 = 12;
    /// `tx-bytes`.
    pub const TX_BYTES: u16 = 13;
    /// `rx-packets`.
    pub const RX_PACKETS: u16 = 14;
    /// `rx-bytes`.
    pub const RX_BYTES: u16 = 15;
    /// Packets for this tunnel dropped (failed authentication, replays, spoofed inner source).
    pub const RX_DROPPED: u16 = 16;
    /// In tunnel-destroyed notifications.
    pub const REASON: u16 = 17;
    /// The largest attribute number of the set.
    pub const MAX: u16 = 17;
}

/// Attributes of the `ntm` set.
pub mod attr {
    /// The NTM device.
    pub const IFINDEX: u16 = 1;
    /// A bound IPv4 UDP socket of the caller, which the module takes over for encapsulation.
    pub const SOCK_FD4: u16 = 2;
    /// A bound IPv6 (v6-only) UDP socket of the caller, likewise.
    pub const SOCK_FD6: u16 = 3;
    /// Tunnels idle this long are destroyed (0 turns expiry off).
    pub const IDLE_TIMEOUT_MS: u16 = 4;
    /// `tunnel`.
    pub const TUNNEL: u16 = 5;
    /// In tunnel-miss notifications.
    pub const MISS_VIP4: u16 = 6;
    /// In tunnel-miss notifications.
    pub const MISS_VIP6: u16 = 7;
    /// Data packets that matched no tunnel (dev-get).
    pub const RX_ORPHANS: u16 = 8;
    /// The largest attribute number of the set.
    pub const MAX: u16 = 8;
}

/// Why a tunnel went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DestroyReason {
    /// It carried no data for the device's idle timeout.
    Idle = 0,
    /// Userspace deleted it (or replaced it with another tunnel to the same peer).
    Deleted = 1,
    /// Its device went down or away.
    DeviceDown = 2,
    /// The module could not keep it (e.g. the socket went away).
    Error = 3,
}

impl DestroyReason {
    /// The entry with this value, if any.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Idle),
            1 => Some(Self::Deleted),
            2 => Some(Self::DeviceDown),
            3 => Some(Self::Error),
            _ => None,
        }
    }

    /// Its name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Deleted => "deleted",
            Self::DeviceDown => "device-down",
            Self::Error => "error",
        }
    }
}

/// An attribute of the `tunnel` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelAttr {
    /// The receiver id of packets for this tunnel (unique per device, never 0).
    LocalId(u32),
    /// The receiver id the peer expects in packets we send.
    RemoteId(u32),
    /// The peer's IPv4 VIP.
    Vip4(Ipv4Addr),
    /// The peer's IPv6 VIP.
    Vip6(Ipv6Addr),
    /// `endpoint-ip4`.
    EndpointIp4(Ipv4Addr),
    /// `endpoint-ip6`.
    EndpointIp6(Ipv6Addr),
    /// `endpoint-port`.
    EndpointPort(u16),
    /// ChaCha20-Poly1305 key for packets we send. Never dumped.
    SendKey([u8; KEY_LEN]),
    /// ChaCha20-Poly1305 key for packets we receive. Never dumped.
    RecvKey([u8; KEY_LEN]),
    /// A name userspace gives the tunnel (the peer's FQDN), echoed in dumps and events.
    Label(String),
    /// Milliseconds since the tunnel last carried data (dumps only).
    IdleMs(u32),
    /// `tx-packets`.
    TxPackets(u64),
    /// `tx-bytes`.
    TxBytes(u64),
    /// `rx-packets`.
    RxPackets(u64),
    /// `rx-bytes`.
    RxBytes(u64),
    /// Packets for this tunnel dropped (failed authentication, replays, spoofed inner source).
    RxDropped(u64),
    /// In tunnel-destroyed notifications.
    Reason(u32),
    /// An attribute this version does not know: its type and its payload.
    Other {
        /// The attribute type.
        kind: u16,
        /// The payload.
        value: Vec<u8>,
    },
}

impl Attribute for TunnelAttr {
    fn kind(&self) -> u16 {
        match self {
            Self::LocalId(_) => tunnel::LOCAL_ID,
            Self::RemoteId(_) => tunnel::REMOTE_ID,
            Self::Vip4(_) => tunnel::VIP4,
            Self::Vip6(_) => tunnel::VIP6,
            Self::EndpointIp4(_) => tunnel::ENDPOINT_IP4,
            Self::EndpointIp6(_) => tunnel::ENDPOINT_IP6,
            Self::EndpointPort(_) => tunnel::ENDPOINT_PORT,
            Self::SendKey(_) => tunnel::SEND_KEY,
            Self::RecvKey(_) => tunnel::RECV_KEY,
            Self::Label(_) => tunnel::LABEL,
            Self::IdleMs(_) => tunnel::IDLE_MS,
            Self::TxPackets(_) => tunnel::TX_PACKETS,
            Self::TxBytes(_) => tunnel::TX_BYTES,
            Self::RxPackets(_) => tunnel::RX_PACKETS,
            Self::RxBytes(_) => tunnel::RX_BYTES,
            Self::RxDropped(_) => tunnel::RX_DROPPED,
            Self::Reason(_) => tunnel::REASON,
            Self::Other { kind, .. } => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            Self::LocalId(_) => 4,
            Self::RemoteId(_) => 4,
            Self::Vip4(_) => 4,
            Self::Vip6(_) => 16,
            Self::EndpointIp4(_) => 4,
            Self::EndpointIp6(_) => 16,
            Self::EndpointPort(_) => 2,
            Self::SendKey(_) => KEY_LEN,
            Self::RecvKey(_) => KEY_LEN,
            Self::Label(v) => v.len() + 1,
            Self::IdleMs(_) => 4,
            Self::TxPackets(_) => 8,
            Self::TxBytes(_) => 8,
            Self::RxPackets(_) => 8,
            Self::RxBytes(_) => 8,
            Self::RxDropped(_) => 8,
            Self::Reason(_) => 4,
            Self::Other { value, .. } => value.len(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::LocalId(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::RemoteId(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::Vip4(v) => b.copy_from_slice(&v.octets()),
            Self::Vip6(v) => b.copy_from_slice(&v.octets()),
            Self::EndpointIp4(v) => b.copy_from_slice(&v.octets()),
            Self::EndpointIp6(v) => b.copy_from_slice(&v.octets()),
            Self::EndpointPort(v) => b.copy_from_slice(&v.to_be_bytes()),
            Self::SendKey(v) => b.copy_from_slice(v),
            Self::RecvKey(v) => b.copy_from_slice(v),
            Self::Label(v) => emit_string(v, b),
            Self::IdleMs(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::TxPackets(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::TxBytes(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::RxPackets(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::RxBytes(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::RxDropped(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::Reason(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::Other { value, .. } => b.copy_from_slice(value),
        }
    }

    fn parse(kind: u16, b: &[u8]) -> Result<Self, AttrError> {
        Ok(match kind {
            tunnel::LOCAL_ID => Self::LocalId(u32::from_ne_bytes(fixed(b, "local-id")?)),
            tunnel::REMOTE_ID => Self::RemoteId(u32::from_ne_bytes(fixed(b, "remote-id")?)),
            tunnel::VIP4 => Self::Vip4(Ipv4Addr::from(fixed::<4>(b, "vip4")?)),
            tunnel::VIP6 => Self::Vip6(Ipv6Addr::from(fixed::<16>(b, "vip6")?)),
            tunnel::ENDPOINT_IP4 => Self::EndpointIp4(Ipv4Addr::from(fixed::<4>(b, "endpoint-ip4")?)),
            tunnel::ENDPOINT_IP6 => Self::EndpointIp6(Ipv6Addr::from(fixed::<16>(b, "endpoint-ip6")?)),
            tunnel::ENDPOINT_PORT => Self::EndpointPort(u16::from_be_bytes(fixed(b, "endpoint-port")?)),
            tunnel::SEND_KEY => Self::SendKey(fixed(b, "send-key")?),
            tunnel::RECV_KEY => Self::RecvKey(fixed(b, "recv-key")?),
            tunnel::LABEL => Self::Label(string(b)),
            tunnel::IDLE_MS => Self::IdleMs(u32::from_ne_bytes(fixed(b, "idle-ms")?)),
            tunnel::TX_PACKETS => Self::TxPackets(uint(b, "tx-packets")?),
            tunnel::TX_BYTES => Self::TxBytes(uint(b, "tx-bytes")?),
            tunnel::RX_PACKETS => Self::RxPackets(uint(b, "rx-packets")?),
            tunnel::RX_BYTES => Self::RxBytes(uint(b, "rx-bytes")?),
            tunnel::RX_DROPPED => Self::RxDropped(uint(b, "rx-dropped")?),
            tunnel::REASON => Self::Reason(u32::from_ne_bytes(fixed(b, "reason")?)),
            _ => Self::Other { kind, value: b.to_vec() },
        })
    }
}

/// An attribute of the `ntm` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtmAttr {
    /// The NTM device.
    Ifindex(u32),
    /// A bound IPv4 UDP socket of the caller, which the module takes over for encapsulation.
    SockFd4(i32),
    /// A bound IPv6 (v6-only) UDP socket of the caller, likewise.
    SockFd6(i32),
    /// Tunnels idle this long are destroyed (0 turns expiry off).
    IdleTimeoutMs(u32),
    /// `tunnel`.
    Tunnel(Vec<TunnelAttr>),
    /// In tunnel-miss notifications.
    MissVip4(Ipv4Addr),
    /// In tunnel-miss notifications.
    MissVip6(Ipv6Addr),
    /// Data packets that matched no tunnel (dev-get).
    RxOrphans(u64),
    /// An attribute this version does not know: its type and its payload.
    Other {
        /// The attribute type.
        kind: u16,
        /// The payload.
        value: Vec<u8>,
    },
}

impl Attribute for NtmAttr {
    fn kind(&self) -> u16 {
        match self {
            Self::Ifindex(_) => attr::IFINDEX,
            Self::SockFd4(_) => attr::SOCK_FD4,
            Self::SockFd6(_) => attr::SOCK_FD6,
            Self::IdleTimeoutMs(_) => attr::IDLE_TIMEOUT_MS,
            Self::Tunnel(_) => attr::TUNNEL | NLA_F_NESTED,
            Self::MissVip4(_) => attr::MISS_VIP4,
            Self::MissVip6(_) => attr::MISS_VIP6,
            Self::RxOrphans(_) => attr::RX_ORPHANS,
            Self::Other { kind, .. } => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            Self::Ifindex(_) => 4,
            Self::SockFd4(_) => 4,
            Self::SockFd6(_) => 4,
            Self::IdleTimeoutMs(_) => 4,
            Self::Tunnel(v) => attrs_len(v),
            Self::MissVip4(_) => 4,
            Self::MissVip6(_) => 16,
            Self::RxOrphans(_) => 8,
            Self::Other { value, .. } => value.len(),
        }
    }

    fn emit_value(&self, b: &mut [u8]) {
        match self {
            Self::Ifindex(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::SockFd4(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::SockFd6(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::IdleTimeoutMs(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::Tunnel(v) => emit_attrs(v, b),
            Self::MissVip4(v) => b.copy_from_slice(&v.octets()),
            Self::MissVip6(v) => b.copy_from_slice(&v.octets()),
            Self::RxOrphans(v) => b.copy_from_slice(&v.to_ne_bytes()),
            Self::Other { value, .. } => b.copy_from_slice(value),
        }
    }

    fn parse(kind: u16, b: &[u8]) -> Result<Self, AttrError> {
        Ok(match kind {
            attr::IFINDEX => Self::Ifindex(u32::from_ne_bytes(fixed(b, "ifindex")?)),
            attr::SOCK_FD4 => Self::SockFd4(i32::from_ne_bytes(fixed(b, "sock-fd4")?)),
            attr::SOCK_FD6 => Self::SockFd6(i32::from_ne_bytes(fixed(b, "sock-fd6")?)),
            attr::IDLE_TIMEOUT_MS => Self::IdleTimeoutMs(u32::from_ne_bytes(fixed(b, "idle-timeout-ms")?)),
            attr::TUNNEL => Self::Tunnel(parse_attrs(b)?),
            attr::MISS_VIP4 => Self::MissVip4(Ipv4Addr::from(fixed::<4>(b, "miss-vip4")?)),
            attr::MISS_VIP6 => Self::MissVip6(Ipv6Addr::from(fixed::<16>(b, "miss-vip6")?)),
            attr::RX_ORPHANS => Self::RxOrphans(uint(b, "rx-orphans")?),
            _ => Self::Other { kind, value: b.to_vec() },
        })
    }
}
