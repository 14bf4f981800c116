// SPDX-License-Identifier: GPL-2.0

//! The tunnel table of a device: tunnels by local (receiver) id and by peer VIP.
//!
//! The data path looks tunnels up under RCU, without a lock, in three hash indexes (by id, by
//! IPv4 VIP, by IPv6 VIP). Writers hold the table's mutex, which also guards the device's
//! control state ([`DevCtl`]) and an ordered tree of all tunnels by id (dumps that resume,
//! sweeps). A removed index entry is unlinked at once and freed after a grace period, when the
//! guard is dropped; a tunnel is freed with its last index entry.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNode, RBTreeNodeReservation};
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{new_mutex, Arc, Mutex};

use crate::bindings::{self, DstCache, RcuGuard, Route, SpinLockBh};
use crate::crypto::{self, Header, Key};
use crate::device::DevCtl;
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
            last_data: AtomicU64::new(bindings::jiffies()),
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

// ---------------------------------------------------------------------------------------------
// RCU hash indexes

#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkKey {
    Id(u32),
    Vip(Vip),
}

fn mix(mut h: u32) -> u32 {
    // murmur3's finaliser
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

impl LinkKey {
    fn hash(&self) -> u32 {
        match self {
            LinkKey::Id(id) => mix(*id),
            LinkKey::Vip(Vip::V4(a)) => mix(u32::from_ne_bytes(*a)),
            LinkKey::Vip(Vip::V6(a)) => a.chunks_exact(4).fold(0x6b43_a9b5, |h, w| {
                mix(h ^ u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            }),
        }
    }
}

/// An index entry. `next` is read by RCU readers; `gc_next` only by the writer, once the
/// entry is unlinked and waiting for a grace period.
struct Link {
    next: AtomicPtr<Link>,
    key: LinkKey,
    tunnel: Arc<Tunnel>,
    gc_next: *mut Link,
}

/// A bucket array; replaced as a whole when the index grows.
struct Buckets {
    heads: KVec<AtomicPtr<Link>>,
    gc_next: *mut Buckets,
}

impl Buckets {
    fn new(n: usize) -> Result<KBox<Self>> {
        let mut heads = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            heads.push(AtomicPtr::new(ptr::null_mut()), GFP_KERNEL)?;
        }
        Ok(KBox::new(
            Self {
                heads,
                gc_next: ptr::null_mut(),
            },
            GFP_KERNEL,
        )?)
    }

    fn head(&self, key: &LinkKey) -> &AtomicPtr<Link> {
        // `heads.len()` is a power of two.
        &self.heads[key.hash() as usize & (self.heads.len() - 1)]
    }
}

/// Unlinked entries and bucket arrays, freed after a grace period.
pub(crate) struct Garbage {
    links: *mut Link,
    buckets: *mut Buckets,
}

// SAFETY: the lists are owned exclusively by whoever holds the Garbage (the table's writer).
unsafe impl Send for Garbage {}

impl Garbage {
    const fn new() -> Self {
        Self {
            links: ptr::null_mut(),
            buckets: ptr::null_mut(),
        }
    }

    fn is_empty(&self) -> bool {
        self.links.is_null() && self.buckets.is_null()
    }

    fn push_link(&mut self, link: *mut Link) {
        // SAFETY: `link` was just unlinked by the writer, which owns it from now on.
        unsafe { (*link).gc_next = self.links };
        self.links = link;
    }

    fn push_buckets(&mut self, b: *mut Buckets) {
        // SAFETY: `b` was just unpublished by the writer, which owns it from now on.
        unsafe { (*b).gc_next = self.buckets };
        self.buckets = b;
    }

    fn take(&mut self) -> Self {
        core::mem::replace(self, Self::new())
    }

    /// Frees everything without waiting.
    ///
    /// # Safety
    ///
    /// No RCU reader may still see any of it (a grace period passed since it was unlinked).
    unsafe fn free_now(&mut self) {
        while !self.links.is_null() {
            let l = self.links;
            // SAFETY: every entry came from `KBox::into_raw` and is owned by this list; the
            // caller guarantees no reader sees it.
            unsafe {
                self.links = (*l).gc_next;
                drop(KBox::from_raw(l));
            }
        }
        while !self.buckets.is_null() {
            let b = self.buckets;
            // SAFETY: as above.
            unsafe {
                self.buckets = (*b).gc_next;
                drop(KBox::from_raw(b));
            }
        }
    }

    /// Waits for readers, then frees (dropping does the same). Sleeps.
    fn reclaim(self) {
        drop(self);
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        if !self.is_empty() {
            bindings::synchronize_net_readers();
            // SAFETY: the grace period just ended.
            unsafe { self.free_now() };
        }
    }
}

const MIN_BUCKETS: usize = 16;
const MAX_BUCKETS: usize = 1 << 20;

/// A hash index readable under RCU; written only with the table's mutex held.
struct Index {
    cur: AtomicPtr<Buckets>,
    len: AtomicUsize,
}

// SAFETY: readers only load atomically under RCU; writers are serialised by the table mutex.
unsafe impl Send for Index {}
// SAFETY: as above.
unsafe impl Sync for Index {}

/// Entries allocated ahead, so that inserting cannot fail half way.
pub(crate) struct Prepared {
    links: KVec<KBox<Link>>,
    node: RBTreeNode<u32, Arc<Tunnel>>,
}

impl Index {
    fn new() -> Result<Self> {
        let b = KBox::into_raw(Buckets::new(MIN_BUCKETS)?);
        Ok(Self {
            cur: AtomicPtr::new(b),
            len: AtomicUsize::new(0),
        })
    }

    fn buckets(&self) -> &Buckets {
        // SAFETY: `cur` is never null; a bucket array is freed only a grace period after it
        // was replaced, and callers are either RCU readers or the writer (which replaces it).
        unsafe { &*self.cur.load(Ordering::Acquire) }
    }

    /// Lookup; the result lives as long as both the index and the reader's guard (or the
    /// writer's lock: entries reachable now are freed only after being unlinked by a writer).
    fn find(&self, key: LinkKey) -> Option<&Arc<Tunnel>> {
        let mut p = self.buckets().head(&key).load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: reachable entries are valid (see `buckets`).
            let l = unsafe { &*p };
            if l.key == key {
                return Some(&l.tunnel);
            }
            p = l.next.load(Ordering::Acquire);
        }
        None
    }

    /// Writer: publishes a prepared entry at the head of its chain.
    fn insert(&self, link: KBox<Link>, garbage: &mut Garbage) {
        let head = self.buckets().head(&link.key);
        link.next
            .store(head.load(Ordering::Relaxed), Ordering::Relaxed);
        head.store(KBox::into_raw(link), Ordering::Release);
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        if len > self.buckets().heads.len() && self.buckets().heads.len() < MAX_BUCKETS {
            // Growing is best effort: a failed allocation only makes chains longer.
            let _ = self.grow(garbage);
        }
    }

    /// Writer: unlinks the entry for `key` that points at `tunnel`.
    fn remove(&self, key: LinkKey, tunnel: &Arc<Tunnel>, garbage: &mut Garbage) {
        let mut prev = self.buckets().head(&key);
        loop {
            let p = prev.load(Ordering::Relaxed);
            if p.is_null() {
                return;
            }
            // SAFETY: reachable entries are valid and only this writer unlinks them.
            let l = unsafe { &*p };
            if l.key == key && Arc::ptr_eq(&l.tunnel, tunnel) {
                // Readers standing on `l` still see its `next`: unlinking keeps the chain whole.
                prev.store(l.next.load(Ordering::Relaxed), Ordering::Release);
                self.len.fetch_sub(1, Ordering::Relaxed);
                garbage.push_link(p);
                return;
            }
            prev = &l.next;
        }
    }

    /// Writer: replaces the bucket array with one four times larger, with new entries.
    fn grow(&self, garbage: &mut Garbage) -> Result {
        let old = self.cur.load(Ordering::Relaxed);
        // SAFETY: the writer owns the published array until it unpublishes it below.
        let old_ref = unsafe { &*old };
        let new = Buckets::new((old_ref.heads.len() * 4).min(MAX_BUCKETS))?;
        let mut fresh = Garbage::new();
        let mut failed = false;
        for head in old_ref.heads.iter() {
            let mut p = head.load(Ordering::Relaxed);
            while !p.is_null() {
                // SAFETY: reachable entries are valid.
                let l = unsafe { &*p };
                match KBox::new(
                    Link {
                        next: AtomicPtr::new(ptr::null_mut()),
                        key: l.key,
                        tunnel: l.tunnel.clone(),
                        gc_next: ptr::null_mut(),
                    },
                    GFP_KERNEL,
                ) {
                    Ok(n) => {
                        let h = new.head(&n.key);
                        n.next.store(h.load(Ordering::Relaxed), Ordering::Relaxed);
                        h.store(KBox::into_raw(n), Ordering::Relaxed);
                    }
                    Err(_) => failed = true,
                }
                p = l.next.load(Ordering::Relaxed);
            }
        }
        let new = KBox::into_raw(new);
        if failed {
            // Never published: free it (and the entries in it) right away.
            // SAFETY: `new` was never visible to readers.
            unsafe { Self::collect(new, &mut fresh) };
            // SAFETY: as above.
            unsafe { fresh.free_now() };
            return Err(ENOMEM);
        }
        self.cur.store(new, Ordering::Release);
        // SAFETY: `old` is unpublished; readers may still see it until a grace period passes.
        unsafe { Self::collect(old, garbage) };
        Ok(())
    }

    /// Moves an unpublished bucket array and all its entries into `garbage`.
    ///
    /// # Safety
    ///
    /// `b` must be an unpublished array owned by the caller.
    unsafe fn collect(b: *mut Buckets, garbage: &mut Garbage) {
        // SAFETY: the caller owns `b`.
        for head in unsafe { &*b }.heads.iter() {
            let mut p = head.load(Ordering::Relaxed);
            while !p.is_null() {
                // SAFETY: entries of an owned array are owned too.
                let next = unsafe { &*p }.next.load(Ordering::Relaxed);
                garbage.push_link(p);
                p = next;
            }
        }
        garbage.push_buckets(b);
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        let mut g = Garbage::new();
        // SAFETY: the index is going away with its device: no reader or writer is left (the
        // device was unregistered and its sockets released, each with a grace period).
        unsafe {
            Self::collect(self.cur.load(Ordering::Relaxed), &mut g);
            g.free_now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table

/// State guarded by the table's mutex.
pub(crate) struct Ctl {
    tree: RBTree<u32, Arc<Tunnel>>,
    garbage: Garbage,
    pub(crate) dev: DevCtl,
}

#[pin_data]
pub(crate) struct Table {
    by_id: Index,
    by_vip4: Index,
    by_vip6: Index,
    #[pin]
    ctl: Mutex<Ctl>,
}

impl Table {
    pub(crate) fn new(dev: DevCtl) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            by_id: Index::new()?,
            by_vip4: Index::new()?,
            by_vip6: Index::new()?,
            ctl <- new_mutex!(Ctl { tree: RBTree::new(), garbage: Garbage::new(), dev }, "ntm_table"),
        }? Error)
    }

    /// The tunnel whose local id is `id` (receive path).
    pub(crate) fn by_id<'a>(&'a self, _guard: &'a RcuGuard, id: u32) -> Option<&'a Tunnel> {
        self.by_id.find(LinkKey::Id(id)).map(|t| &**t)
    }

    /// The tunnel to the peer with this VIP (transmit path).
    pub(crate) fn by_vip<'a>(&'a self, _guard: &'a RcuGuard, vip: Vip) -> Option<&'a Tunnel> {
        self.vip_index(vip).find(LinkKey::Vip(vip)).map(|t| &**t)
    }

    fn vip_index(&self, vip: Vip) -> &Index {
        match vip {
            Vip::V4(_) => &self.by_vip4,
            Vip::V6(_) => &self.by_vip6,
        }
    }

    pub(crate) fn lock(&self) -> TableGuard<'_> {
        TableGuard {
            table: self,
            guard: Some(self.ctl.lock()),
        }
    }
}

/// The table's mutex held: changes, ordered walks, and the device's control state. Dropping
/// it unlocks, then frees what was unlinked after a grace period (sleeps).
pub(crate) struct TableGuard<'a> {
    table: &'a Table,
    guard: Option<Guard<'a, Ctl, MutexBackend>>,
}

impl TableGuard<'_> {
    fn ctl_mut(&mut self) -> &mut Ctl {
        self.guard.as_mut().expect("locked")
    }

    fn ctl_ref(&self) -> &Ctl {
        self.guard.as_ref().expect("locked")
    }

    pub(crate) fn dev(&mut self) -> &mut DevCtl {
        &mut self.ctl_mut().dev
    }

    pub(crate) fn dev_ref(&self) -> &DevCtl {
        &self.ctl_ref().dev
    }

    pub(crate) fn len(&self) -> usize {
        self.table.by_id.len.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Arc<Tunnel>> {
        self.ctl_ref().tree.get(&id)
    }

    pub(crate) fn find_vip(&self, vip: Vip) -> Option<&Arc<Tunnel>> {
        self.table.vip_index(vip).find(LinkKey::Vip(vip))
    }

    /// Allocates what inserting `t` needs.
    pub(crate) fn prepare(&self, t: Arc<Tunnel>) -> Result<Prepared> {
        let mut keys = KVec::with_capacity(3, GFP_KERNEL)?;
        keys.push(LinkKey::Id(t.local_id), GFP_KERNEL)?;
        if let Some(a) = t.vip4 {
            keys.push(LinkKey::Vip(Vip::V4(a)), GFP_KERNEL)?;
        }
        if let Some(a) = t.vip6 {
            keys.push(LinkKey::Vip(Vip::V6(a)), GFP_KERNEL)?;
        }
        let mut links = KVec::with_capacity(keys.len(), GFP_KERNEL)?;
        for key in keys.iter() {
            let link = Link {
                next: AtomicPtr::new(ptr::null_mut()),
                key: *key,
                tunnel: t.clone(),
                gc_next: ptr::null_mut(),
            };
            links.push(KBox::new(link, GFP_KERNEL)?, GFP_KERNEL)?;
        }
        let node = RBTreeNodeReservation::new(GFP_KERNEL)?.into_node(t.local_id, t);
        Ok(Prepared { links, node })
    }

    /// Inserts a prepared tunnel. Its id and VIPs must be free (remove the old ones first).
    pub(crate) fn insert(&mut self, p: Prepared) {
        let Prepared { links, node } = p;
        let ctl: &mut Ctl = self.guard.as_mut().expect("locked");
        if let Some(old) = ctl.tree.insert(node) {
            // Callers remove first; keep the indexes consistent anyway.
            let (_, t) = old.to_key_value();
            Self::unlink(self.table, &t, &mut ctl.garbage);
        }
        for link in links {
            let index = match link.key {
                LinkKey::Id(_) => &self.table.by_id,
                LinkKey::Vip(v) => self.table.vip_index(v),
            };
            index.insert(link, &mut ctl.garbage);
        }
    }

    fn unlink(table: &Table, t: &Arc<Tunnel>, garbage: &mut Garbage) {
        table.by_id.remove(LinkKey::Id(t.local_id), t, garbage);
        if let Some(a) = t.vip4 {
            table.by_vip4.remove(LinkKey::Vip(Vip::V4(a)), t, garbage);
        }
        if let Some(a) = t.vip6 {
            table.by_vip6.remove(LinkKey::Vip(Vip::V6(a)), t, garbage);
        }
    }

    /// Removes the tunnel with local id `id`.
    pub(crate) fn remove(&mut self, id: u32) -> Option<Arc<Tunnel>> {
        let table = self.table;
        let ctl = self.ctl_mut();
        let t = ctl.tree.remove(&id)?;
        Self::unlink(table, &t, &mut ctl.garbage);
        Some(t)
    }

    /// Removes every tunnel for which `doomed` says so, calling `removed` on each.
    pub(crate) fn remove_if(
        &mut self,
        doomed: impl FnMut(&Tunnel) -> bool,
        removed: impl FnMut(&Tunnel),
    ) {
        self.remove_some(0, usize::MAX, doomed, removed);
    }

    /// Like `remove_if`, in id order from `start`, stopping after `limit` removals: returns the
    /// id to resume from, or None once the whole tree was seen.
    pub(crate) fn remove_some(
        &mut self,
        start: u32,
        limit: usize,
        mut doomed: impl FnMut(&Tunnel) -> bool,
        mut removed: impl FnMut(&Tunnel),
    ) -> Option<u32> {
        let table = self.table;
        let ctl: &mut Ctl = self.guard.as_mut().expect("locked");
        let mut n = 0;
        let mut cursor = ctl.tree.cursor_lower_bound(&start);
        while let Some(c) = cursor {
            if n == limit {
                return Some(*c.current().0);
            }
            if doomed(c.current().1) {
                let (next, node) = c.remove_current();
                let (_, t) = node.to_key_value();
                Self::unlink(table, &t, &mut ctl.garbage);
                removed(&t);
                n += 1;
                cursor = next;
            } else {
                cursor = c.move_next();
            }
        }
        None
    }

    /// Calls `f` on tunnels in id order from `start` until it returns false; returns the id
    /// `f` refused (to resume from), or None when all were seen.
    pub(crate) fn walk_from(
        &mut self,
        start: u32,
        mut f: impl FnMut(&Tunnel) -> bool,
    ) -> Option<u32> {
        let mut cursor = self.ctl_mut().tree.cursor_lower_bound(&start);
        while let Some(c) = cursor {
            let (id, t) = c.current();
            if !f(t) {
                return Some(*id);
            }
            cursor = c.move_next();
        }
        None
    }

    /// Calls `f` on every tunnel.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Tunnel)) {
        for (_, t) in self.ctl_ref().tree.iter() {
            f(t);
        }
    }
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        let garbage = self.ctl_mut().garbage.take();
        drop(self.guard.take());
        garbage.reclaim();
    }
}
