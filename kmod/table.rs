// SPDX-License-Identifier: GPL-2.0

//! The tunnel table of a device: tunnels by local (receiver) id and by peer VIP.
//!
//! The data path looks tunnels up under RCU, without a lock, in three RCU hash indexes (by id,
//! by IPv4 VIP, by IPv6 VIP). Writers hold the table's mutex, which also guards the device's
//! control state ([`DevCtl`]), the indexes' writing halves and an ordered tree of all tunnels
//! by id (dumps that resume, sweeps). A removed tunnel leaves the indexes at once; they free
//! their entries, and with the last of them the tunnel, after a grace period, by RCU callback:
//! no change waits for one.

use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNode, RBTreeNodeReservation};
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{new_mutex, Arc, Mutex};

use crate::bindings::rcu_index::{self, Prepared as PreparedEntry, Reader, Writer};
use crate::bindings::sync::RcuGuard;
use crate::device::DevCtl;
use crate::tunnel::{Tunnel, Vip};

/// What the indexes are keyed by.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IndexKey {
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

impl rcu_index::Key for IndexKey {
    fn hash(&self) -> u32 {
        match self {
            IndexKey::Id(id) => mix(*id),
            IndexKey::Vip(Vip::V4(a)) => mix(u32::from_ne_bytes(*a)),
            IndexKey::Vip(Vip::V6(a)) => a.chunks_exact(4).fold(0x6b43_a9b5, |h, w| {
                mix(h ^ u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            }),
        }
    }
}

type Index = Writer<IndexKey, Arc<Tunnel>>;

/// The writing halves of the three indexes.
struct Indexes {
    by_id: Index,
    by_vip4: Index,
    by_vip6: Index,
}

impl Indexes {
    fn of_vip(&mut self, vip: Vip) -> &mut Index {
        match vip {
            Vip::V4(_) => &mut self.by_vip4,
            Vip::V6(_) => &mut self.by_vip6,
        }
    }

    fn of(&mut self, key: IndexKey) -> &mut Index {
        match key {
            IndexKey::Id(_) => &mut self.by_id,
            IndexKey::Vip(vip) => self.of_vip(vip),
        }
    }

    /// Takes `t` out of every index it is in.
    fn unlink(&mut self, t: &Arc<Tunnel>) {
        for key in keys(t).into_iter().flatten() {
            self.of(key).remove(key, |x| Arc::ptr_eq(x, t));
        }
    }
}

/// The keys a tunnel is indexed by: its id and its VIPs.
fn keys(t: &Tunnel) -> [Option<IndexKey>; 3] {
    [
        Some(IndexKey::Id(t.local_id)),
        t.vip4.map(|a| IndexKey::Vip(Vip::V4(a))),
        t.vip6.map(|a| IndexKey::Vip(Vip::V6(a))),
    ]
}

/// State guarded by the table's mutex.
pub(crate) struct Ctl {
    tree: RBTree<u32, Arc<Tunnel>>,
    indexes: Indexes,
    pub(crate) dev: DevCtl,
}

#[pin_data]
pub(crate) struct Table {
    by_id: Reader<IndexKey, Arc<Tunnel>>,
    by_vip4: Reader<IndexKey, Arc<Tunnel>>,
    by_vip6: Reader<IndexKey, Arc<Tunnel>>,
    #[pin]
    ctl: Mutex<Ctl>,
}

/// Entries allocated ahead, so that inserting cannot fail half way.
pub(crate) struct Prepared {
    entries: KVec<(IndexKey, PreparedEntry<IndexKey, Arc<Tunnel>>)>,
    node: RBTreeNode<u32, Arc<Tunnel>>,
}

impl Table {
    pub(crate) fn new(dev: DevCtl) -> Result<impl PinInit<Self, Error>> {
        let (by_id, w_id) = rcu_index::new()?;
        let (by_vip4, w_vip4) = rcu_index::new()?;
        let (by_vip6, w_vip6) = rcu_index::new()?;
        let indexes = Indexes {
            by_id: w_id,
            by_vip4: w_vip4,
            by_vip6: w_vip6,
        };
        Ok(try_pin_init!(Self {
            by_id,
            by_vip4,
            by_vip6,
            ctl <- new_mutex!(Ctl { tree: RBTree::new(), indexes, dev }, "ntm_table"),
        }? Error))
    }

    /// The tunnel whose local id is `id` (receive path).
    pub(crate) fn by_id<'a>(&'a self, guard: &'a RcuGuard, id: u32) -> Option<&'a Tunnel> {
        self.by_id.find(guard, IndexKey::Id(id)).map(|t| &**t)
    }

    /// The tunnel to the peer with this VIP (transmit path).
    pub(crate) fn by_vip<'a>(&'a self, guard: &'a RcuGuard, vip: Vip) -> Option<&'a Tunnel> {
        let index = match vip {
            Vip::V4(_) => &self.by_vip4,
            Vip::V6(_) => &self.by_vip6,
        };
        index.find(guard, IndexKey::Vip(vip)).map(|t| &**t)
    }

    pub(crate) fn lock(&self) -> TableGuard<'_> {
        TableGuard(self.ctl.lock())
    }
}

/// The table's mutex held: changes, ordered walks, and the device's control state.
pub(crate) struct TableGuard<'a>(Guard<'a, Ctl, MutexBackend>);

impl TableGuard<'_> {
    pub(crate) fn dev(&mut self) -> &mut DevCtl {
        &mut self.0.dev
    }

    pub(crate) fn dev_ref(&self) -> &DevCtl {
        &self.0.dev
    }

    pub(crate) fn len(&self) -> usize {
        self.0.indexes.by_id.len()
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Arc<Tunnel>> {
        self.0.tree.get(&id)
    }

    pub(crate) fn find_vip(&self, vip: Vip) -> Option<&Arc<Tunnel>> {
        let i = &self.0.indexes;
        let index = match vip {
            Vip::V4(_) => &i.by_vip4,
            Vip::V6(_) => &i.by_vip6,
        };
        index.find(IndexKey::Vip(vip))
    }

    /// Allocates what inserting `t` needs.
    pub(crate) fn prepare(&self, t: Arc<Tunnel>) -> Result<Prepared> {
        let i = &self.0.indexes;
        let mut entries = KVec::with_capacity(3, GFP_KERNEL)?;
        for key in keys(&t).into_iter().flatten() {
            let index = match key {
                IndexKey::Id(_) => &i.by_id,
                IndexKey::Vip(Vip::V4(_)) => &i.by_vip4,
                IndexKey::Vip(Vip::V6(_)) => &i.by_vip6,
            };
            entries.push((key, index.prepare(key, t.clone())?), GFP_KERNEL)?;
        }
        let node = RBTreeNodeReservation::new(GFP_KERNEL)?.into_node(t.local_id, t);
        Ok(Prepared { entries, node })
    }

    /// Inserts a prepared tunnel. Its id and VIPs must be free (remove the old ones first).
    pub(crate) fn insert(&mut self, p: Prepared) {
        let Prepared { entries, node } = p;
        let ctl = &mut *self.0;
        if let Some(old) = ctl.tree.insert(node) {
            // Callers remove first; keep the indexes consistent anyway.
            let (_, t) = old.to_key_value();
            ctl.indexes.unlink(&t);
        }
        for (key, entry) in entries {
            ctl.indexes.of(key).insert(entry);
        }
    }

    /// Removes the tunnel with local id `id`.
    pub(crate) fn remove(&mut self, id: u32) -> Option<Arc<Tunnel>> {
        let ctl = &mut *self.0;
        let t = ctl.tree.remove(&id)?;
        ctl.indexes.unlink(&t);
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
        let ctl = &mut *self.0;
        let mut n = 0;
        let mut cursor = ctl.tree.cursor_lower_bound(&start);
        while let Some(c) = cursor {
            if n == limit {
                return Some(*c.current().0);
            }
            if doomed(c.current().1) {
                let (next, node) = c.remove_current();
                let (_, t) = node.to_key_value();
                ctl.indexes.unlink(&t);
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
        let mut cursor = self.0.tree.cursor_lower_bound(&start);
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
        for (_, t) in self.0.tree.iter() {
            f(t);
        }
    }
}
