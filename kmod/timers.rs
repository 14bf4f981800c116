// SPDX-License-Identifier: GPL-2.0

//! Idle expiry, as events: the data path reports activity (`data_sent`, `data_received`), the
//! control path reports changes (`tunnels_changed`, `timeout_changed`), and one delayed work
//! per device (`sweep`) destroys every tunnel idle for the device's timeout, then re-arms
//! itself for the next deadline (the ovpn model). Keepalives are not activity.

use crate::bindings::netdev::DevCallback;
use crate::bindings::sync;
use crate::bindings::time;
use crate::device::Device;
use crate::netlink::DestroyReason;
use crate::socket;
use crate::table::TableGuard;
use crate::tunnel::Tunnel;

pub(crate) fn data_sent(t: &Tunnel) {
    t.touch(time::jiffies());
}

pub(crate) fn data_received(t: &Tunnel) {
    t.touch(time::jiffies());
}

/// Tunnels were added or removed: make sure a sweep is queued if anything can expire. A
/// queued sweep is left alone: it is never later than a new tunnel's deadline.
pub(crate) fn tunnels_changed(dev: &Device, t: &TableGuard<'_>) {
    let ms = dev.idle_timeout_ms();
    if ms != 0 && t.len() != 0 && !t.dev_ref().dead {
        dev.ndev.sweep_arm(time::msecs_to_jiffies(ms), false);
    }
}

/// The timeout changed: sweep now, which computes the new deadline.
pub(crate) fn timeout_changed(dev: &Device) {
    dev.ndev.sweep_arm(0, true);
}

/// How often the sweep looks for sockets closed by their owner while any is attached: the
/// socket's encap_destroy hook reports a close at once, but it runs only while the UDP tunnel
/// static key is on, so the sweep checks too (a closed socket is marked dead).
const SOCKET_CHECK_MS: u32 = 2000;

/// Tunnels destroyed per batch: between batches the sweep drops the table's mutex, so netlink
/// requests are not held up by a mass expiry (RCU callbacks free the tunnels later).
const SWEEP_BATCH: usize = 512;

/// The delayed work.
pub(crate) fn sweep(dev: &Device) {
    let mut released = None;
    let mut start = 0;
    loop {
        let mut t = dev.table.lock();
        if t.dev_ref().dead {
            return;
        }
        if released.is_none() {
            released = Some(socket::reap(dev, &mut t));
        }
        let ms = dev.idle_timeout_ms();
        let mut next: Option<u64> = None;
        if ms != 0 {
            let timeout = time::msecs_to_jiffies(ms);
            let now = time::jiffies();
            let resume = t.remove_some(
                start,
                SWEEP_BATCH,
                |tun| tun.idle(now) >= timeout,
                |tun| crate::netlink::notify_destroyed(dev, tun, DestroyReason::Idle, false),
            );
            if let Some(id) = resume {
                // Let netlink requests waiting for the mutex in.
                start = id;
                drop(t);
                sync::cond_resched();
                continue;
            }
            t.for_each(|tun| {
                let left = timeout.saturating_sub(tun.idle(now)).max(1);
                next = Some(next.map_or(left, |n| n.min(left)));
            });
        }
        if socket::any_attached(dev) {
            let check = time::msecs_to_jiffies(SOCKET_CHECK_MS);
            next = Some(next.map_or(check, |n| n.min(check)));
        }
        if let Some(delay) = next {
            dev.ndev.sweep_arm(delay, true);
        }
        drop(t);
        break;
    }
    drop(released);
}

/// The sweep's delayed work (cancelled in ndo_uninit, before the state goes).
#[no_mangle]
extern "C" fn ntm_rs_sweep(dev: DevCallback) {
    if let Some(d) = dev.state() {
        sweep(d);
    }
}
