//! What `ntmctl show` and `ntmctl monitor` print: the daemon's state and its event stream, as
//! they cross the control socket (JSON).

use serde::{Deserialize, Serialize};

/// Direct, or through a relay: the protocol's own type.
pub use proto::msg::Path as PathKind;
/// The node table state of a peer (the paper's built / building / none): the core's own type.
pub use proto::node::PeerState;

/// Why a tunnel went away: the netlink family's reasons, on both data planes.
pub use proto::netlink::DestroyReason;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub fqdn: String,
    /// The peer's VIP (IPv4 if it has one, else IPv6).
    pub vip: Option<String>,
    pub vip4: Option<String>,
    pub vip6: Option<String>,
    pub state: PeerState,
    pub path: Option<PathKind>,
    pub endpoint: Option<String>,
    /// Seconds since the tunnel last carried data (none without a tunnel).
    pub idle_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub fqdn: String,
    pub vip: Option<String>,
    pub endpoint: String,
    pub local_id: u32,
    pub remote_id: u32,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub idle_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub fqdn: String,
    pub registered: bool,
    pub vip4: Option<String>,
    pub vip6: Option<String>,
    /// The DC address the node registers with.
    pub dc: Option<String>,
    /// The NAT's outer address the DC saw, when the node is behind NAT.
    pub nat_outer: Option<String>,
    /// The node's own addresses, as it offers them to its DC (its `interfaces` /
    /// `exclude_interfaces` applied).
    #[serde(default)]
    pub addresses: Vec<String>,
    pub dataplane: String,
    /// Signaling datagrams the node dropped, by cause.
    #[serde(default)]
    pub signaling_drops: proto::stats::Drops,
    /// Data packets that matched no tunnel (per-tunnel drops are in `tunnels`).
    #[serde(default)]
    pub data_drops: u64,
    pub peers: Vec<PeerStatus>,
    pub tunnels: Vec<TunnelStatus>,
}

/// Events streamed by `ntmctl monitor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Registered { vip4: Option<String>, vip6: Option<String>, dc: String, nat_outer: Option<String> },
    RegistrationLost { reason: String },
    PeerState { fqdn: String, state: PeerState },
    TunnelBuilt { fqdn: String, vip: Option<String>, endpoint: String, path: PathKind, local_id: u32 },
    TunnelDestroyed { fqdn: String, vip: Option<String>, reason: DestroyReason, local_id: u32 },
    TunnelMiss { vip: String },
    EndpointChanged { fqdn: String, endpoint: String },
    BuildFailed { fqdn: String, reason: String },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        match self {
            Event::Registered { vip4, vip6, dc, nat_outer } => write!(
                f,
                "registered dc {dc} vip4 {} vip6 {}{}",
                opt(vip4),
                opt(vip6),
                nat_outer.as_ref().map(|o| format!(" nat {o}")).unwrap_or_default()
            ),
            Event::RegistrationLost { reason } => write!(f, "registration lost: {reason}"),
            Event::PeerState { fqdn, state } => write!(f, "peer {fqdn} state {}", state_str(*state)),
            Event::TunnelBuilt { fqdn, vip, endpoint, path, local_id } => write!(
                f,
                "tunnel built {fqdn} vip {} endpoint {endpoint} path {} id {local_id:#010x}",
                opt(vip),
                match path {
                    PathKind::Direct => "direct",
                    PathKind::Relay => "relay",
                }
            ),
            Event::TunnelDestroyed { fqdn, vip, reason, local_id } => {
                write!(f, "tunnel destroyed {fqdn} vip {} reason {} id {local_id:#010x}", opt(vip), reason.name())
            }
            Event::TunnelMiss { vip } => write!(f, "tunnel miss vip {vip}"),
            Event::EndpointChanged { fqdn, endpoint } => write!(f, "endpoint changed {fqdn} {endpoint}"),
            Event::BuildFailed { fqdn, reason } => write!(f, "build failed {fqdn}: {reason}"),
        }
    }
}

pub fn state_str(s: PeerState) -> &'static str {
    match s {
        PeerState::Built => "built",
        PeerState::Building => "building",
        PeerState::None => "none",
    }
}
