//! The node's own addresses, as its interfaces show them: what it reports to its DC. Watched by
//! polling, so that a change of network (an interface going down, an address appearing) reaches
//! the DC within a second.

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

/// Sends the address list now, then each time it changes.
pub async fn watch(port: u16, own_if: String, filter: InterfaceFilter, tx: mpsc::Sender<Vec<SocketAddr>>) {
    let mut last = None;
    loop {
        let now = local_addrs(port, &own_if, &filter);
        if last.as_ref() != Some(&now) {
            if tx.send(now.clone()).await.is_err() {
                return;
            }
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
