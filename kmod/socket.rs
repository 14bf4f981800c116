// SPDX-License-Identifier: GPL-2.0

//! The UDP sockets a device sends and receives on: the node daemon creates and binds them (one
//! port for signaling and data, the l2tp model) and hands their fds over with dev-set. The
//! module installs its encap hook on them: data packets are decapsulated here, everything else
//! stays on the socket for the daemon. Also the endpoints tunnels send to.

use kernel::prelude::*;

use crate::bindings::err;
use crate::bindings::netdev::NetDev;
use crate::bindings::skb::WritableSkb;
use crate::bindings::socket::{AttachError, ClosingSock, EncapSock, SockRef};
use crate::bindings::sync::RcuGuard;
use crate::device::Device;
use crate::netlink::DestroyReason;
use crate::table::TableGuard;
use crate::tunnel::Tunnel;

/// Where a tunnel's packets go: the peer's (or its relay's, or its NAT's) address and port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    V4 { addr: [u8; 4], port: u16 },
    V6 { addr: [u8; 16], port: u16 },
}

impl Endpoint {
    /// From the shim's (family, 16-byte address, port).
    pub(crate) fn from_raw(family: i32, addr: &[u8; 16], port: u16) -> Option<Self> {
        match family {
            4 => Some(Endpoint::V4 {
                addr: [addr[0], addr[1], addr[2], addr[3]],
                port,
            }),
            6 => Some(Endpoint::V6 { addr: *addr, port }),
            _ => None,
        }
    }

    /// For the shim: (family 4 or 6, address in 16 bytes, port).
    pub(crate) fn raw(&self) -> (i32, [u8; 16], u16) {
        match *self {
            Endpoint::V4 { addr, port } => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&addr);
                (4, a, port)
            }
            Endpoint::V6 { addr, port } => (6, addr, port),
        }
    }

    pub(crate) fn is_v6(&self) -> bool {
        matches!(self, Endpoint::V6 { .. })
    }
}

/// What dev-set asks for one family.
pub(crate) enum Change {
    /// Take over this fd's socket.
    Attach(SockRef),
    /// Give the current socket back (fd -1).
    Release,
}

/// Takes over the socket behind `fd` (of the caller) for `ipv6` or not; Ok(None) when it
/// already serves this device.
pub(crate) fn take(
    ndev: NetDev,
    fd: i32,
    ipv6: bool,
) -> core::result::Result<Option<Change>, AttachError> {
    if fd < 0 {
        return Ok(Some(Change::Release));
    }
    match SockRef::attach(ndev, fd, ipv6) {
        Ok(s) => Ok(Some(Change::Attach(s))),
        Err(e) if e.err.to_errno() == err::ealready().to_errno() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies a change under the table lock; returns the socket given up (drop it after
/// unlocking: it waits for a grace period). Tunnels that can no longer send (their endpoint
/// is of a released family) are destroyed with reason error.
pub(crate) fn apply(
    dev: &Device,
    t: &mut TableGuard<'_>,
    change: Change,
    ipv6: bool,
) -> Option<SockRef> {
    let slot = if ipv6 { &dev.sock6 } else { &dev.sock4 };
    match change {
        Change::Attach(s) => slot.replace(Some(s)),
        Change::Release => {
            let old = slot.replace(None);
            dev.destroy_if(
                t,
                |tun| tun.endpoint().is_v6() == ipv6,
                DestroyReason::Error,
            );
            old
        }
    }
}

/// encap_destroy: the daemon closed one of the sockets (already marked dead). The sweep work
/// releases it (it may sleep; this context is better left alone).
pub(crate) fn closed_by_owner(dev: &Device, sk: ClosingSock) {
    if dev.sock4.holds(sk) || dev.sock6.holds(sk) {
        dev.ndev.sweep_arm(0, true);
    }
}

/// From the sweep: releases sockets closed by their owner, destroying the tunnels that used
/// them (reason error). Returns them to drop after unlocking.
pub(crate) fn reap(dev: &Device, t: &mut TableGuard<'_>) -> [Option<SockRef>; 2] {
    let mut gone = [None, None];
    for (i, ipv6) in [false, true].into_iter().enumerate() {
        let slot = if ipv6 { &dev.sock6 } else { &dev.sock4 };
        if slot.closed(&RcuGuard::new()) {
            pr_info!(
                "socket (IPv{}) closed by its owner: released\n",
                if ipv6 { 6 } else { 4 }
            );
            gone[i] = apply(dev, t, Change::Release, ipv6);
        }
    }
    gone
}

/// Does the device hold a socket of either family?
pub(crate) fn any_attached(dev: &Device) -> bool {
    let guard = RcuGuard::new();
    dev.sock4.get(&guard).is_some() || dev.sock6.get(&guard).is_some()
}

/// Sends a sealed packet on `t` to its endpoint, from the device's socket of that family,
/// along the tunnel's cached route (looked up and kept on a miss). Bottom halves are disabled
/// (the transmit path, or the caller's `BhGuard`).
pub(crate) fn send(dev: &Device, guard: &RcuGuard, skb: WritableSkb, t: &Tunnel) -> Result {
    let ep = t.endpoint();
    let slot = if ep.is_v6() { &dev.sock6 } else { &dev.sock4 };
    // Without a socket or a route the skb is dropped (freed) here.
    let sock = slot.get(guard).ok_or_else(err::enetunreach)?;
    let route = sock.route(dev.ndev, t.routes(), &ep)?;
    if route.fresh() {
        t.keep_route(ep, &route, || {
            slot.get(guard).is_some_and(|now| now.same(sock))
        });
    }
    sock.xmit(dev.ndev, skb, route);
    Ok(())
}

/// encap_destroy of the device's sockets: the owner closed one.
#[no_mangle]
extern "C" fn ntm_rs_encap_destroy(sk: EncapSock) {
    let guard = RcuGuard::new();
    if let Some(d) = sk.device(&guard) {
        closed_by_owner(d, sk.closing());
    }
}
