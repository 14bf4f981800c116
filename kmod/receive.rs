// SPDX-License-Identifier: GPL-2.0

//! Receive: the encap hook of the device's UDP sockets. A datagram whose first byte is not the
//! data type goes on to the socket (signaling, for the daemon). A data packet is authenticated
//! and decrypted in place by the tunnel named by its receiver id, checked against the replay
//! window and against the peer's VIP, makes the tunnel follow its outer source (roaming), and
//! its inner packet goes to the stack on the ntm device. Whatever fails is counted and dropped.

use kernel::ffi::c_int;

use crate::bindings::netdev::Stat;
use crate::bindings::skb::Skb;
use crate::bindings::socket::{encap_verdict, EncapSock};
use crate::bindings::sync::RcuGuard;
use crate::crypto::{self, DATA_HEADER, DATA_OVERHEAD, TYPE_DATA};
use crate::device::Device;
use crate::netlink;
use crate::socket::Endpoint;
use crate::timers;
use crate::tunnel::{Tunnel, TunnelStats};

const UDP_HEADER: usize = 8;

/// encap_rcv: Some(skb) hands the datagram back to UDP untouched, None means it was consumed.
pub(crate) fn encap_rcv(dev: &Device, mut skb: Skb) -> Option<Skb> {
    if !skb.may_pull(UDP_HEADER + 1) || skb.head()[UDP_HEADER] != TYPE_DATA {
        return Some(skb);
    }
    skb.pull(UDP_HEADER);
    receive_data(dev, skb);
    None
}

fn orphan(dev: &Device) {
    dev.rx_orphans
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

fn dropped(dev: &Device, t: &Tunnel, why: Stat) {
    TunnelStats::add(&t.stats.rx_dropped, 1);
    dev.ndev.stat(why);
}

/// The inner packet's family and length if its source is the tunnel's peer VIP.
fn check_inner(t: &Tunnel, p: &[u8]) -> Option<(bool, usize)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let len = u16::from_be_bytes([p[2], p[3]]) as usize;
            let src = [p[12], p[13], p[14], p[15]];
            (len >= 20 && len <= p.len() && t.vip4 == Some(src)).then_some((false, len))
        }
        6 if p.len() >= 40 => {
            let len = 40 + u16::from_be_bytes([p[4], p[5]]) as usize;
            (len <= p.len() && t.vip6.is_some_and(|v| v[..] == p[8..24])).then_some((true, len))
        }
        _ => None,
    }
}

/// The peer's authenticated packet came from `from`: follow it.
fn roam(dev: &Device, t: &Tunnel, from: Option<Endpoint>) {
    if let Some(ep) = from {
        if t.set_endpoint(ep) {
            netlink::notify_endpoint(dev, t, ep);
        }
    }
}

fn receive_data(dev: &Device, skb: Skb) {
    let ndev = dev.ndev;
    if skb.len() < DATA_OVERHEAD {
        orphan(dev);
        ndev.stat(Stat::RxLengthErrors);
        return;
    }
    let Some(mut skb) = skb.into_writable() else {
        ndev.stat(Stat::RxDropped);
        return;
    };
    let Some(h) = crypto::parse_header(skb.data_mut()) else {
        orphan(dev);
        ndev.stat(Stat::RxFrameErrors);
        return;
    };
    let guard = RcuGuard::new();
    let Some(t) = dev.table.by_id(&guard, h.receiver) else {
        orphan(dev);
        ndev.stat(Stat::RxDropped);
        return;
    };
    if !t.open(&h, &mut skb.data_mut()[DATA_HEADER..]) {
        dropped(dev, t, Stat::RxErrors);
        return;
    }
    let from = skb.outer_source();
    let inner = skb.len() - DATA_OVERHEAD;
    skb.pull(DATA_HEADER);
    if skb.trim(inner).is_err() {
        dropped(dev, t, Stat::RxDropped);
        return;
    }
    if inner == 0 {
        // A keepalive: authenticated, so the peer is there, but not data activity.
        TunnelStats::add(&t.stats.rx_packets, 1);
        roam(dev, t, from);
        skb.consume();
        return;
    }
    let Some((ipv6, len)) = check_inner(t, skb.data_mut()) else {
        dropped(dev, t, Stat::RxFrameErrors);
        return;
    };
    if skb.trim(len).is_err() {
        dropped(dev, t, Stat::RxDropped);
        return;
    }
    TunnelStats::add(&t.stats.rx_packets, 1);
    TunnelStats::add(&t.stats.rx_bytes, len as u64);
    timers::data_received(t);
    roam(dev, t, from);
    if skb.deliver(ndev, ipv6) {
        ndev.rx_add(len);
    }
}

/// encap_rcv of the device's sockets: 1 gives the datagram back to UDP untouched, 0 means it
/// was consumed.
#[no_mangle]
extern "C" fn ntm_rs_encap_rcv(sk: EncapSock, skb: Skb) -> c_int {
    let guard = RcuGuard::new();
    let rest = match sk.device(&guard) {
        Some(d) => encap_rcv(d, skb),
        None => Some(skb),
    };
    encap_verdict(rest)
}
