// SPDX-License-Identifier: GPL-2.0

//! Transmit: an IP packet routed to the ntm device goes to the tunnel of its destination VIP,
//! is sealed in place and leaves through the device's UDP socket. A packet for a VIP with no
//! tunnel is dropped and reported (tunnel-miss, at most once per VIP per second and 64 times
//! per device per second) so that the daemon builds the tunnel; the sender's retransmission
//! then goes through.

use crate::bindings::aead::TAG_LEN;
use crate::bindings::err;
use crate::bindings::netdev::{DevCallback, Stat};
use crate::bindings::skb::{Skb, WritableSkb};
use crate::bindings::sync::{BhGuard, RcuGuard};
use crate::bindings::time;
use crate::crypto::DATA_HEADER;
use crate::device::Device;
use crate::netlink;
use crate::socket;
use crate::timers;
use crate::tunnel::{Tunnel, TunnelStats, Vip};
use kernel::error::{code::ENOMEM, Result};

/// Room in front of the inner packet: data header, UDP, outer IPv6, a link-layer header.
const HEADROOM: usize = DATA_HEADER + 8 + 40 + 32;

/// Misses reported per device per period (one second), whatever their VIPs: a sender
/// spraying destinations cannot turn every packet into a notification.
const MISSES_PER_PERIOD: u32 = 64;

/// Remembers recently reported misses, one VIP per slot, and how many were reported in the
/// current period.
pub(crate) struct MissLimiter {
    slots: [(Option<Vip>, u64); 32],
    period_start: u64,
    in_period: u32,
}

impl MissLimiter {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [(None, 0); 32],
            period_start: 0,
            in_period: 0,
        }
    }

    /// True if `vip` was not reported within the last `period` jiffies and the device's
    /// budget for this period is not spent (and records it).
    fn allow(&mut self, vip: Vip, now: u64, period: u64) -> bool {
        let h = match vip {
            Vip::V4(a) => a
                .iter()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(*b as usize)),
            Vip::V6(a) => a
                .iter()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(*b as usize)),
        };
        let slot = &mut self.slots[h % 32];
        if slot.0 == Some(vip) && now.wrapping_sub(slot.1) < period {
            return false;
        }
        if now.wrapping_sub(self.period_start) >= period {
            self.period_start = now;
            self.in_period = 0;
        }
        if self.in_period >= MISSES_PER_PERIOD {
            return false;
        }
        self.in_period += 1;
        *slot = (Some(vip), now);
        true
    }
}

/// The destination VIP of an IP packet.
fn destination(skb: &mut Skb) -> Option<Vip> {
    if !skb.may_pull(1) {
        return None;
    }
    match skb.head()[0] >> 4 {
        4 if skb.may_pull(20) => {
            let h = skb.head();
            Some(Vip::V4([h[16], h[17], h[18], h[19]]))
        }
        6 if skb.may_pull(40) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&skb.head()[24..40]);
            Some(Vip::V6(a))
        }
        _ => None,
    }
}

/// Multicast and broadcast destinations are never peers (IPv6 router solicitations, mDNS...):
/// they are dropped without a miss.
fn is_peer_address(vip: Vip) -> bool {
    match vip {
        Vip::V4(a) => a[0] < 224 && a != [0; 4],
        Vip::V6(a) => a[0] != 0xff && a != [0; 16],
    }
}

fn miss(dev: &Device, vip: Vip) {
    if !is_peer_address(vip) {
        return;
    }
    let now = time::jiffies();
    if dev
        .misses
        .lock()
        .allow(vip, now, time::msecs_to_jiffies(1000))
    {
        netlink::notify_miss(dev, vip);
    }
}

/// ndo_start_xmit: always consumes the skb.
pub(crate) fn xmit(dev: &Device, mut skb: Skb) {
    let ndev = dev.ndev;
    let Some(vip) = destination(&mut skb) else {
        ndev.stat(Stat::TxErrors);
        return;
    };
    let guard = RcuGuard::new();
    let Some(t) = dev.table.by_vip(&guard, vip) else {
        miss(dev, vip);
        ndev.stat(Stat::TxDropped);
        return;
    };
    let Some(counter) = t.next_counter() else {
        // The send counter is used up: userspace must install new keys.
        ndev.stat(Stat::TxErrors);
        return;
    };
    let len = skb.len();
    let Some(mut skb) = skb.into_tx(HEADROOM, TAG_LEN) else {
        ndev.stat(Stat::TxDropped);
        return;
    };
    skb.push(DATA_HEADER);
    skb.put(TAG_LEN);
    t.seal(skb.data_mut(), counter);
    TunnelStats::add(&t.stats.tx_packets, 1);
    TunnelStats::add(&t.stats.tx_bytes, len as u64);
    timers::data_sent(t);
    // On success the outer packet is counted in the device's tx stats by the UDP tunnel core.
    if socket::send(dev, &guard, skb, t).is_err() {
        ndev.stat(Stat::TxCarrierErrors);
    }
}

/// Sends an empty sealed packet on `t` (netlink tunnel-keepalive, process context): the peer
/// authenticates it and follows the new source address. Not data: the idle timer is left alone.
pub(crate) fn keepalive(dev: &Device, t: &Tunnel) -> Result {
    let ndev = dev.ndev;
    let Some(counter) = t.next_counter() else {
        ndev.stat(Stat::TxErrors);
        return Err(err::ekeyexpired());
    };
    let Some(mut skb) = WritableSkb::alloc(HEADROOM, DATA_HEADER + TAG_LEN) else {
        ndev.stat(Stat::TxDropped);
        return Err(ENOMEM);
    };
    t.seal(skb.data_mut(), counter);
    TunnelStats::add(&t.stats.tx_packets, 1);
    let _bh = BhGuard::new();
    let guard = RcuGuard::new();
    let r = socket::send(dev, &guard, skb, t);
    if r.is_err() {
        ndev.stat(Stat::TxCarrierErrors);
    }
    r
}

/// ndo_start_xmit, for each segment of a GSO packet (the shim segments them).
#[no_mangle]
extern "C" fn ntm_rs_xmit(skb: Skb, dev: DevCallback) {
    match dev.state() {
        Some(d) => xmit(d, skb),
        None => drop(skb),
    }
}
