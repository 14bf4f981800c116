//! The data plane behind one trait: it carries IP packets between the virtual device and the
//! tunnels, keeps the tunnel table with its idle expiry, and reports what happens to it. The
//! userspace backend (TUN + the node's UDP sockets) lives here; the kernel backend (`ntm.ko`
//! over generic netlink) plugs in beside it.

use std::net::{IpAddr, SocketAddr};

use proto::node::TunnelSpec;
use proto::tunnel::Counters;

use crate::status::DestroyReason;

pub mod genl;
pub mod kernel;
pub mod nlsock;
pub mod userspace;

/// What the data plane tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpEvent {
    /// A tunnel is gone (idle expiry, deleted, device down...).
    Destroyed {
        /// The tunnel's local receiver id.
        local_id: u32,
        /// The peer's name (the tunnel's label).
        fqdn: String,
        /// The peer's first VIP (IPv4 if it has one, else IPv6).
        vip: Option<IpAddr>,
        /// Why it went.
        reason: DestroyReason,
    },
    /// A packet for this VIP found no tunnel (rate limited per VIP).
    Miss {
        /// The packet's destination address.
        vip: IpAddr,
    },
    /// An authenticated packet came from a new address: the tunnel follows it.
    EndpointChanged {
        /// The tunnel's local receiver id.
        local_id: u32,
        /// The peer's new UDP address, where the tunnel's packets now go.
        endpoint: SocketAddr,
    },
    /// A datagram that is not tunnel data (signaling), for the daemon's core.
    Signaling {
        /// Its UDP source (IPv4-mapped addresses made plain IPv4).
        from: SocketAddr,
        /// The whole UDP payload.
        payload: Vec<u8>,
    },
}

/// A tunnel as `ntmctl show` reports it.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// The peer's name (the tunnel's label in the kernel module).
    pub fqdn: String,
    /// The peer's VIPs, IPv4 first.
    pub vips: Vec<IpAddr>,
    /// The peer's UDP address now (it follows authenticated packets).
    pub endpoint: SocketAddr,
    /// This node's receiver id for the tunnel.
    pub local_id: u32,
    /// The peer's receiver id.
    pub remote_id: u32,
    /// Packets and bytes (of inner IP packets) each way, and drops, since it was installed.
    pub counters: Counters,
    /// Whole seconds since the tunnel last carried data either way.
    pub idle_s: u64,
}

/// A data plane backend: [`userspace::Userspace`] or [`kernel::Kernel`]. The daemon's handler
/// owns one and calls it from its core task; the backend sends [`DpEvent`]s on the channel it
/// was started with.
pub trait Dataplane: Send + Sync {
    /// `userspace` or `kernel`, as `ntmctl show` reports it.
    fn name(&self) -> &'static str;
    /// Installs (or replaces) a tunnel.
    fn install(&self, spec: &TunnelSpec) -> anyhow::Result<()>;
    /// Removes a tunnel (no `Destroyed` event follows: the daemon asked for it).
    fn remove(&self, local_id: u32) -> anyhow::Result<()>;
    /// The tunnels installed now, with their counters, in no particular order (empty if the
    /// kernel could not be asked).
    fn tunnels(&self) -> Vec<TunnelInfo>;
    /// Data packets that matched no tunnel.
    fn orphan_drops(&self) -> u64;
    /// Whether [`Dataplane::tunnels`] and [`Dataplane::orphan_drops`] ask another party (the
    /// kernel) and can take long with many tunnels: the daemon then calls them off its core
    /// task, so that `ntmctl show` and metrics scrapes never hold up signaling.
    fn slow_reads(&self) -> bool {
        false
    }
    /// Sends an empty authenticated packet on every tunnel, so that peers learn a new address
    /// of this node (they follow authenticated packets).
    fn send_keepalives(&self, only: Option<u32>);
}
