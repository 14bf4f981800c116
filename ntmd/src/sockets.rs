//! The node's UDP sockets: one IPv4 and one IPv6 (v6-only), both on the node's port. Signaling
//! and tunnel data share them (one NAT mapping serves both).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// The node's two UDP sockets, shared by the signaling core and the data plane.
pub struct Sockets {
    /// Bound to `0.0.0.0:port`; `None` if the host has no usable IPv4.
    pub v4: Option<Arc<UdpSocket>>,
    /// Bound to `[::]:port`, v6-only; `None` if the host has no usable IPv6.
    pub v6: Option<Arc<UdpSocket>>,
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // Room for bursts of tunnel traffic.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

impl Sockets {
    /// Binds both families on `port`; a family the host cannot use is left out (with a log line).
    pub fn bind(port: u16) -> io::Result<Sockets> {
        let v4 = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
        let v6 = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
        if let (Err(e4), Err(e6)) = (&v4, &v6) {
            return Err(io::Error::new(e4.kind(), format!("cannot bind UDP port {port}: IPv4: {e4}; IPv6: {e6}")));
        }
        if let Err(e) = &v4 {
            tracing::warn!("no IPv4 socket: {e}");
        }
        if let Err(e) = &v6 {
            tracing::warn!("no IPv6 socket: {e}");
        }
        Ok(Sockets { v4: v4.ok().map(Arc::new), v6: v6.ok().map(Arc::new) })
    }

    /// The port actually bound (the one the kernel chose, if 0 was asked).
    pub fn port(&self) -> Option<u16> {
        self.v4.as_ref().or(self.v6.as_ref()).and_then(|s| s.local_addr().ok()).map(|a| a.port())
    }

    fn for_dst(&self, dst: &SocketAddr) -> io::Result<&UdpSocket> {
        let s = if dst.is_ipv4() { &self.v4 } else { &self.v6 };
        s.as_deref().ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, format!("no socket for {dst}")))
    }

    /// Sends `payload` to `dst` from the socket of its family, waiting for buffer space;
    /// `Unsupported` if there is no socket of that family.
    pub async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.for_dst(&dst)?.send_to(payload, dst).await
    }

    /// Sends without waiting; a full socket buffer drops the packet (as a NIC queue would).
    pub fn try_send_to(&self, payload: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.for_dst(&dst)?.try_send_to(payload, dst)
    }
}
