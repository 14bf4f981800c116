//! What `ntmctl show` and `ntmctl monitor` print: the daemon's state and its event stream, as
//! they cross the control socket (JSON).

use serde::{Deserialize, Serialize};

/// Direct, or through a relay: the protocol's own type.
pub use proto::msg::Path as PathKind;
/// The node table state of a peer (the paper's built / building / none): the core's own type.
pub use proto::node::PeerState;

/// Why a tunnel went away: the netlink family's reasons, on both data planes.
pub use proto::netlink::DestroyReason;

/// A peer in the node table (a node this one resolved or that reached it), with or without a
/// tunnel. `ntmctl show` lists them sorted by FQDN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's name, normalized.
    pub fqdn: String,
    /// The peer's VIP (IPv4 if it has one, else IPv6).
    pub vip: Option<String>,
    /// The peer's IPv4 VIP, once its DC told it.
    pub vip4: Option<String>,
    /// The peer's IPv6 VIP, once its DC told it.
    pub vip6: Option<String>,
    /// Built, building or none.
    pub state: PeerState,
    /// Direct or relayed: how the live tunnel runs (none without a tunnel).
    pub path: Option<PathKind>,
    /// The UDP address (`ip:port`) the tunnel's data packets go to, as the data plane has it
    /// (it follows the peer when it moves); none without a tunnel.
    pub endpoint: Option<String>,
    /// Seconds since the tunnel last carried data (none without a tunnel).
    pub idle_s: Option<u64>,
}

/// A tunnel in the data plane (the userspace table or `ntm.ko`'s), with its counters since it
/// was installed. Bytes are those of the inner IP packets, without encapsulation overhead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// The peer's name (the tunnel's label in the kernel module).
    pub fqdn: String,
    /// The peer's first VIP (IPv4 if it has one, else IPv6).
    pub vip: Option<String>,
    /// The peer's UDP address (`ip:port`) as the data plane has it now: it follows the source
    /// of the last authenticated packet.
    pub endpoint: String,
    /// This node's receiver id for the tunnel, which the peer's data packets carry; shown in
    /// hex by `ntmctl` and in monitor events.
    pub local_id: u32,
    /// The peer's receiver id, carried by the data packets sent to it.
    pub remote_id: u32,
    /// IP packets sent into the tunnel (keepalives not counted).
    pub tx_packets: u64,
    /// Bytes of the IP packets sent into the tunnel.
    pub tx_bytes: u64,
    /// Packets received and accepted, keepalives included.
    pub rx_packets: u64,
    /// Bytes of the IP packets received from the tunnel.
    pub rx_bytes: u64,
    /// Packets for this tunnel that were dropped: failed authentication, replays, an inner
    /// packet that is not IP or whose source is not the peer's VIP.
    pub rx_dropped: u64,
    /// Seconds since the tunnel last carried data either way; it expires at the idle timeout.
    pub idle_s: u64,
}

/// The daemon's state: the answer to `show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The node's own name.
    pub fqdn: String,
    /// Whether the node is registered with a DC now.
    pub registered: bool,
    /// The node's IPv4 VIP from its registration (none while unregistered).
    pub vip4: Option<String>,
    /// The node's IPv6 VIP from its registration (none while unregistered).
    pub vip6: Option<String>,
    /// The DC address the node registers with.
    pub dc: Option<String>,
    /// The NAT's outer address the DC saw, when the node is behind NAT.
    pub nat_outer: Option<String>,
    /// The NAT is 1:1 (a cloud's public address): the DC's probe came through, so peers reach
    /// the node at `nat_outer` directly.
    #[serde(default)]
    pub nat_one_to_one: bool,
    /// The node's own addresses, as it offers them to its DC (its `interfaces` /
    /// `exclude_interfaces` applied).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The data plane in use: `userspace` or `kernel`.
    pub dataplane: String,
    /// Signaling datagrams the node dropped, by cause.
    #[serde(default)]
    pub signaling_drops: proto::stats::Drops,
    /// Data packets that matched no tunnel (per-tunnel drops are in `tunnels`).
    #[serde(default)]
    pub data_drops: u64,
    /// The node table, sorted by FQDN.
    pub peers: Vec<PeerStatus>,
    /// The data plane's tunnels, sorted by FQDN.
    pub tunnels: Vec<TunnelStatus>,
}

/// Events streamed by `ntmctl monitor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The node registered with a DC, or a refresh changed what the DC answered.
    Registered {
        /// The node's IPv4 VIP.
        vip4: Option<String>,
        /// The node's IPv6 VIP.
        vip6: Option<String>,
        /// The DC address (`ip:port`) that answered.
        dc: String,
        /// The node's address (`ip:port`) as the DC saw it, when the node is behind a NAT.
        nat_outer: Option<String>,
        /// That NAT is 1:1: peers reach the node there unsolicited.
        #[serde(default)]
        one_to_one: bool,
    },
    /// The node is no longer registered (the DC refused it or stopped answering); it keeps
    /// trying, and builds fail until it is registered again.
    RegistrationLost {
        /// Why, in words.
        reason: String,
    },
    /// A peer's entry in the node table changed state.
    PeerState {
        /// The peer's name, normalized.
        fqdn: String,
        /// Its new state.
        state: PeerState,
    },
    /// A tunnel came up and the data plane installed it.
    TunnelBuilt {
        /// The peer's name, normalized.
        fqdn: String,
        /// The peer's first VIP (IPv4 if it has one, else IPv6).
        vip: Option<String>,
        /// The peer's UDP address (`ip:port`) the tunnel's data packets go to.
        endpoint: String,
        /// Direct or relayed.
        path: PathKind,
        /// This node's receiver id for the tunnel.
        local_id: u32,
    },
    /// A tunnel went away: the data plane dropped it (idle, device down, error) or the daemon
    /// removed it.
    TunnelDestroyed {
        /// The peer's name, normalized.
        fqdn: String,
        /// The peer's first VIP (IPv4 if it has one, else IPv6).
        vip: Option<String>,
        /// Why it went.
        reason: DestroyReason,
        /// The tunnel's local receiver id.
        local_id: u32,
    },
    /// A packet for this VIP found no tunnel (the data planes report at most one a second per
    /// VIP); the daemon builds a tunnel to the peer that has this VIP, if it knows one.
    TunnelMiss {
        /// The destination VIP of the packet.
        vip: String,
    },
    /// An authenticated packet came from a new address: the peer moved and its tunnel
    /// follows it.
    EndpointChanged {
        /// The peer's name, normalized.
        fqdn: String,
        /// The peer's new UDP address (`ip:port`).
        endpoint: String,
    },
    /// A tunnel's peer stopped answering (data sent, nothing received for 15 s): the tunnel
    /// is removed and built again through the DCs.
    PeerUnresponsive {
        /// The peer's name, normalized.
        fqdn: String,
        /// The removed tunnel's local id.
        local_id: u32,
    },
    /// The path to a peer changes course (hole punching failed: a relay is asked for).
    PathNote {
        /// The peer's name, normalized.
        fqdn: String,
        /// What happens, in words.
        note: String,
    },
    /// The node's own addresses changed (a network came or went): it registers again at once
    /// and sends a keepalive on every tunnel, so that peers follow.
    AddressesChanged {
        /// The addresses now, as reported to the DC.
        addresses: Vec<String>,
    },
    /// A tunnel could not be built (or installed in the data plane).
    BuildFailed {
        /// The peer's name, normalized.
        fqdn: String,
        /// Why, in words.
        reason: String,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        match self {
            Event::Registered { vip4, vip6, dc, nat_outer, one_to_one } => write!(
                f,
                "registered dc {dc} vip4 {} vip6 {}{}",
                opt(vip4),
                opt(vip6),
                nat_outer
                    .as_ref()
                    .map(|o| format!(" nat {o}{}", if *one_to_one { " (1:1)" } else { "" }))
                    .unwrap_or_default()
            ),
            Event::RegistrationLost { reason } => write!(f, "registration lost: {reason}"),
            Event::PeerState { fqdn, state } => write!(f, "peer {fqdn} state {}", state_str(*state)),
            Event::TunnelBuilt { fqdn, vip, endpoint, path, local_id } => write!(
                f,
                "tunnel built {fqdn} vip {} endpoint {endpoint} path {} id {local_id:#010x}",
                opt(vip),
                path_str(*path)
            ),
            Event::TunnelDestroyed { fqdn, vip, reason, local_id } => {
                write!(f, "tunnel destroyed {fqdn} vip {} reason {} id {local_id:#010x}", opt(vip), reason.name())
            }
            Event::TunnelMiss { vip } => write!(f, "tunnel miss vip {vip}"),
            Event::EndpointChanged { fqdn, endpoint } => write!(f, "endpoint changed {fqdn} {endpoint}"),
            Event::BuildFailed { fqdn, reason } => write!(f, "build failed {fqdn}: {reason}"),
            Event::AddressesChanged { addresses } => write!(f, "addresses {}", addresses.join(" ")),
            Event::PathNote { fqdn, note } => write!(f, "path {fqdn}: {note}"),
            Event::PeerUnresponsive { fqdn, local_id } => {
                write!(f, "peer unresponsive {fqdn} id {local_id:#010x}: building again")
            }
        }
    }
}

/// A path as `ntmctl` prints it: `direct`, `direct (punched)` or `relay`.
pub fn path_str(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "direct",
        PathKind::Punched => "direct (punched)",
        PathKind::Relay => "relay",
    }
}

/// A peer state as `ntmctl` prints it: `built`, `building` or `none`.
pub fn state_str(s: PeerState) -> &'static str {
    match s {
        PeerState::Built => "built",
        PeerState::Building => "building",
        PeerState::None => "none",
    }
}
