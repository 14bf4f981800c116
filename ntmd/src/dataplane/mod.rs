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
    Destroyed { local_id: u32, fqdn: String, vip: Option<IpAddr>, reason: DestroyReason },
    /// A packet for this VIP found no tunnel (rate limited per VIP).
    Miss { vip: IpAddr },
    /// An authenticated packet came from a new address: the tunnel follows it.
    EndpointChanged { local_id: u32, endpoint: SocketAddr },
    /// A datagram that is not tunnel data (signaling), for the daemon's core.
    Signaling { from: SocketAddr, payload: Vec<u8> },
}

/// A tunnel as `ntmctl show` reports it.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub fqdn: String,
    pub vips: Vec<IpAddr>,
    pub endpoint: SocketAddr,
    pub local_id: u32,
    pub remote_id: u32,
    pub counters: Counters,
    pub idle_s: u64,
}

pub trait Dataplane: Send + Sync {
    fn name(&self) -> &'static str;
    /// Installs (or replaces) a tunnel.
    fn install(&self, spec: &TunnelSpec) -> anyhow::Result<()>;
    /// Removes a tunnel (no `Destroyed` event follows: the daemon asked for it).
    fn remove(&self, local_id: u32) -> anyhow::Result<()>;
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
    fn send_keepalives(&self);
}
