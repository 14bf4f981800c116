// SPDX-License-Identifier: GPL-2.0

//! A tunnel: to one peer (by its VIPs), with its keys, send counter, replay window, endpoint
//! and the routes cached to it, counters, and the time it last carried data.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;

use crate::bindings::route::{DstCache, Route};
use crate::bindings::sync::SpinLockBh;
use crate::bindings::time;
use crate::crypto::{self, Header, Key};
use crate::new_spinlock_bh;
use crate::replay::ReplayWindow;
use crate::socket::Endpoint;

/// A peer's virtual IP.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vip {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What userspace gives for a new tunnel.
pub(crate) struct TunnelConfig {
    pub(crate) local_id: u32,
    pub(crate) remote_id: u32,
    pub(crate) vip4: Option<[u8; 4]>,
    pub(crate) vip6: Option<[u8; 16]>,
    pub(crate) endpoint: Endpoint,
    pub(crate) send_key: Key,
    pub(crate) recv_key: Key,
    pub(crate) label: KVec<u8>,
    pub(crate) routes: DstCache,
}

#[derive(Default)]
pub(crate) struct TunnelStats {
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) rx_dropped: AtomicU64,
}

impl TunnelStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One tunnel: keys, counters, endpoint, replay window and activity time.
#[pin_data]
pub(crate) struct Tunnel {
    pub(crate) local_id: u32,
    pub(crate) remote_id: u32,
    pub(crate) vip4: Option<[u8; 4]>,
    pub(crate) vip6: Option<[u8; 16]>,
    pub(crate) label: KVec<u8>,
    send_key: Key,
    recv_key: Key,
    send_counter: AtomicU64,
    /// Changed (and `routes` reset) under its lock; routes are kept only under it too, for the
    /// endpoint they were looked up for.
    #[pin]
    endpoint: SpinLockBh<Endpoint>,
    routes: DstCache,
    #[pin]
    replay: SpinLockBh<ReplayWindow>,
    /// Jiffies of the last data packet either way (creation counts as activity).
    last_data: AtomicU64,
    pub(crate) stats: TunnelStats,
}

impl Tunnel {
    pub(crate) fn new(cfg: TunnelConfig) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            local_id: cfg.local_id,
            remote_id: cfg.remote_id,
            vip4: cfg.vip4,
            vip6: cfg.vip6,
            label: cfg.label,
            send_key: cfg.send_key,
            recv_key: cfg.recv_key,
            send_counter: AtomicU64::new(0),
            endpoint <- new_spinlock_bh!(cfg.endpoint, "ntm_tunnel_endpoint"),
            routes: cfg.routes,
            replay <- new_spinlock_bh!(ReplayWindow::new(), "ntm_tunnel_replay"),
            last_data: AtomicU64::new(time::jiffies()),
            stats: TunnelStats::default(),
        }? Error)
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        *self.endpoint.lock()
    }

    /// Sets the endpoint; true if it changed (the cached routes are then forgotten).
    pub(crate) fn set_endpoint(&self, ep: Endpoint) -> bool {
        let mut cur = self.endpoint.lock();
        let changed = *cur != ep;
        if changed {
            *cur = ep;
            self.routes.reset();
        }
        changed
    }

    pub(crate) fn routes(&self) -> &DstCache {
        &self.routes
    }

    /// Caches a route looked up for `ep` from a socket, unless the endpoint changed meanwhile
    /// or `sock_current` says the device's socket did (dev-set replaces the socket, then
    /// forgets every tunnel's routes under this same lock).
    pub(crate) fn keep_route(
        &self,
        ep: Endpoint,
        route: &Route<'_>,
        sock_current: impl FnOnce() -> bool,
    ) {
        let cur = self.endpoint.lock();
        if *cur == ep && sock_current() {
            route.keep(&self.routes);
        }
    }

    /// Forgets the cached routes (the device's sockets changed).
    pub(crate) fn forget_routes(&self) {
        let _cur = self.endpoint.lock();
        self.routes.reset();
    }

    /// Do the two tunnels share a send or a receive key? A tunnel must not replace one it
    /// shares a key with: its send counter starts again at 0 (nonces would repeat under the
    /// key) and its replay window empty (old packets would be taken again).
    pub(crate) fn shares_keys(&self, other: &Tunnel) -> bool {
        self.send_key.same(&other.send_key) || self.recv_key.same(&other.recv_key)
    }

    /// The next send counter, or None once the counter space is used up (never reuse a nonce).
    pub(crate) fn next_counter(&self) -> Option<u64> {
        self.send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(1).filter(|&n| n != u64::MAX)
            })
            .ok()
    }

    /// Seals `buf` (header room, payload, tag room) for the peer.
    pub(crate) fn seal(&self, buf: &mut [u8], counter: u64) {
        crypto::seal(buf, self.remote_id, counter, &self.send_key);
    }

    /// Authenticates and decrypts `sealed` in place, enforcing the replay window: the window
    /// is checked before and committed only after the tag verified.
    pub(crate) fn open(&self, h: &Header, sealed: &mut [u8]) -> bool {
        if !self.replay.lock().check(h.counter) {
            return false;
        }
        crypto::open(sealed, h.counter, &self.recv_key) && self.replay.lock().accept(h.counter)
    }

    /// Records data activity at `now` (jiffies).
    pub(crate) fn touch(&self, now: u64) {
        if self.last_data.load(Ordering::Relaxed) != now {
            self.last_data.store(now, Ordering::Relaxed);
        }
    }

    /// Jiffies since the last data packet, `now` read earlier than a concurrent `touch`
    /// counting as no idle time (jiffies compare modulo an unsigned long, like time_after).
    pub(crate) fn idle(&self, now: u64) -> u64 {
        idle_since(self.last_data.load(Ordering::Relaxed), now)
    }
}

/// `now - last` in jiffies (an unsigned long, which wraps); a `last` after `now` (a packet
/// touched the tunnel after the caller read the clock) is 0, not a huge idle time.
fn idle_since(last: u64, now: u64) -> u64 {
    let width = usize::MAX as u64;
    let d = now.wrapping_sub(last) & width;
    if d > width / 2 {
        0
    } else {
        d
    }
}
