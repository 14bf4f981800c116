//! The node's own addresses, as its interfaces show them: what it reports to its DC. Watched
//! through the kernel's rtnetlink notifications (links, addresses, routes), so that a change of
//! network (an interface going down, an address appearing) is seen as the kernel reports it;
//! the addresses are also read again every 10 s, in case a notification was lost.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use tokio::sync::mpsc;

use crate::config::InterfaceFilter;

/// Usable addresses: on interfaces that are up and running, not loopback, not link-local, not
/// the node's own virtual device (`own_if`), and chosen by the configuration's `interfaces` /
/// `exclude_interfaces`.
pub fn local_addrs(port: u16, own_if: &str, filter: &InterfaceFilter) -> Vec<SocketAddr> {
    let Ok(ifs) = getifaddrs() else { return Vec::new() };
    let mut set = BTreeSet::new();
    for ifa in ifs {
        let up = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING;
        if ifa.interface_name == own_if
            || !filter.allows(&ifa.interface_name)
            || !ifa.flags.contains(up)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip: IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(&ip) {
            set.insert(SocketAddr::new(ip, port));
        }
    }
    set.into_iter().collect()
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !(v.is_loopback() || v.is_link_local() || v.is_unspecified()),
        IpAddr::V6(v) => {
            !(v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80 || v.is_multicast())
        }
    }
}

/// How often the addresses are read again without a notification (a lost one, or a kernel
/// without rtnetlink groups).
const BACKSTOP: Duration = Duration::from_secs(10);

/// Sends the address list now, then each time it changes.
pub async fn watch(port: u16, own_if: String, filter: InterfaceFilter, tx: mpsc::Sender<Vec<SocketAddr>>) {
    let (kick_tx, mut kick_rx) = mpsc::channel::<()>(1);
    let every = match std::thread::Builder::new().name("rtnetlink".into()).spawn(move || notifications(kick_tx)) {
        Ok(_) => BACKSTOP,
        Err(e) => {
            tracing::warn!("cannot watch rtnetlink ({e}): reading the addresses every 0.5 s");
            Duration::from_millis(500)
        }
    };
    let mut last = None;
    loop {
        let now = local_addrs(port, &own_if, &filter);
        if last.as_ref() != Some(&now) {
            if tx.send(now.clone()).await.is_err() {
                return;
            }
            last = Some(now);
        }
        tokio::select! {
            kick = kick_rx.recv() => if kick.is_none() {
                // The notification thread could not subscribe: fall back to reading often.
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
            _ = tokio::time::sleep(every) => {}
        }
        // One reading for a burst of notifications (an address, its route, the link...).
        while kick_rx.try_recv().is_ok() {}
    }
}

/// Blocks on an rtnetlink socket subscribed to link, address and route changes, and kicks the
/// watcher on each message (or lost messages). Returns if the socket cannot be opened: the
/// watcher sees its channel closed.
fn notifications(kick: mpsc::Sender<()>) {
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
    use nix::libc;
    let groups = (libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE) as u32;
    let socket = Socket::new(NETLINK_ROUTE).and_then(|mut s| s.bind(&NlAddr::new(0, groups)).map(|_| s));
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot subscribe to rtnetlink notifications: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            // ENOBUFS: notifications were lost; a reading catches up all the same.
            Ok(_) | Err(_) if kick.is_closed() => return,
            Ok(_) => {
                let _ = kick.try_send(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                let _ = kick.try_send(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("rtnetlink notifications stopped: {e}");
                return;
            }
        }
    }
}
