//! The NTM node daemon's library: configuration, the userspace data plane's TUN device, the
//! stub DNS resolver, the control socket and the status types it carries.

pub mod addrs;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dnsstub;
pub mod handler;
pub mod link;
pub mod sockets;
pub mod status;
pub mod tun;
