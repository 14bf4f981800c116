// SPDX-License-Identifier: GPL-2.0

//! A hash index that readers search under RCU without a lock, changed by one writer: the data
//! path finds tunnels in it by receiver id and by VIP.
//!
//! [`new`] gives an index's two halves: the [`Reader`], which the data path searches under an
//! [`RcuGuard`], and the [`Writer`], which its owner keeps under a lock (it is not `Clone`, and
//! changes take `&mut`). An entry is unlinked at once and freed by an RCU callback (`call_rcu`)
//! once no reader can stand on it any more, so a change never waits for a grace period. The
//! bucket array grows fourfold when the entries outnumber its buckets: the entries are copied
//! into the new array, which is then published, and the old one is freed with its entries by
//! an RCU callback, so a lookup during a resize still finds everything.

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::bindings::{call_rcu, callback_head};
use kernel::prelude::*;
use kernel::sync::Arc;

use super::sync::RcuGuard;

/// What an index is keyed by.
pub(crate) trait Key: Copy + Eq + Send + Sync + 'static {
    fn hash(&self) -> u32;
}

const MIN_BUCKETS: usize = 16;
const MAX_BUCKETS: usize = 1 << 20;

/// An entry. `rcu` comes first: the RCU callback gets a pointer to it and frees the entry.
#[repr(C)]
struct Entry<K, V> {
    rcu: callback_head,
    next: AtomicPtr<Entry<K, V>>,
    key: K,
    value: V,
}

/// A bucket array; replaced as a whole when the index grows.
#[repr(C)]
struct Buckets<K, V> {
    rcu: callback_head,
    heads: KVec<AtomicPtr<Entry<K, V>>>,
}

impl<K: Key, V> Buckets<K, V> {
    fn new(n: usize) -> Result<KBox<Self>> {
        let mut heads = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            heads.push(AtomicPtr::new(ptr::null_mut()), GFP_KERNEL)?;
        }
        Ok(KBox::new(
            Self {
                rcu: callback_head::default(),
                heads,
            },
            GFP_KERNEL,
        )?)
    }

    fn head(&self, key: &K) -> &AtomicPtr<Entry<K, V>> {
        // `heads.len()` is a power of two.
        &self.heads[key.hash() as usize & (self.heads.len() - 1)]
    }

    fn find(&self, key: K) -> Option<&V> {
        let mut p = self.head(&key).load(Ordering::Acquire);
        // SAFETY: entries reachable from a bucket array are valid as long as the array is (an
        // unlinked entry and an unpublished array are freed only after a grace period, and
        // callers are RCU readers or the writer).
        while let Some(e) = unsafe { p.as_ref() } {
            if e.key == key {
                return Some(&e.value);
            }
            p = e.next.load(Ordering::Acquire);
        }
        None
    }
}

/// The state both halves share: the published bucket array.
struct Shared<K: Key, V> {
    cur: AtomicPtr<Buckets<K, V>>,
    /// It owns entries (keys and values) that readers share between CPUs and that RCU
    /// callbacks drop on any CPU.
    _owns: PhantomData<(K, V)>,
}

impl<K: Key, V> Shared<K, V> {
    fn buckets(&self) -> &Buckets<K, V> {
        // SAFETY: `cur` is never null; a bucket array is freed only a grace period after it
        // was replaced (or with the last half of the index), and callers are RCU readers or
        // the writer, which replaces it.
        unsafe { &*self.cur.load(Ordering::Acquire) }
    }
}

impl<K: Key, V> Drop for Shared<K, V> {
    fn drop(&mut self) {
        let b = self.cur.load(Ordering::Relaxed);
        // SAFETY: both halves are gone: no reader can be searching (a `Reader` is borrowed for
        // as long as what it found is used), and no writer is left. Entries unlinked earlier
        // belong to their RCU callbacks, not to the array.
        unsafe { free_buckets_now(b) };
    }
}

/// The half of an index that searches it under RCU.
pub(crate) struct Reader<K: Key, V>(Arc<Shared<K, V>>);

/// The half of an index that changes it. There is one per index: its owner serialises
/// changes (the table's mutex).
pub(crate) struct Writer<K: Key, V> {
    shared: Arc<Shared<K, V>>,
    len: usize,
}

/// An entry allocated ahead, so that inserting cannot fail half way.
pub(crate) struct Prepared<K, V>(KBox<Entry<K, V>>);

/// A new, empty index.
pub(crate) fn new<K: Key, V: Send + Sync + Clone>() -> Result<(Reader<K, V>, Writer<K, V>)> {
    let shared = Arc::new(
        Shared {
            cur: AtomicPtr::new(KBox::into_raw(Buckets::new(MIN_BUCKETS)?)),
            _owns: PhantomData,
        },
        GFP_KERNEL,
    )?;
    Ok((Reader(shared.clone()), Writer { shared, len: 0 }))
}

impl<K: Key, V> Reader<K, V> {
    /// The value for `key`, for as long as the guard is held.
    pub(crate) fn find<'a>(&'a self, _guard: &'a RcuGuard, key: K) -> Option<&'a V> {
        self.0.buckets().find(key)
    }
}

impl<K: Key, V: Send + Sync + Clone> Writer<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The value for `key` (what the writer sees stays until it changes the index).
    pub(crate) fn find(&self, key: K) -> Option<&V> {
        self.shared.buckets().find(key)
    }

    /// Allocates an entry for `insert`.
    pub(crate) fn prepare(&self, key: K, value: V) -> Result<Prepared<K, V>> {
        let e = Entry {
            rcu: callback_head::default(),
            next: AtomicPtr::new(ptr::null_mut()),
            key,
            value,
        };
        Ok(Prepared(KBox::new(e, GFP_KERNEL)?))
    }

    /// Publishes a prepared entry (at the head of its chain: it shadows an older one with the
    /// same key). Grows the index when it is full, if memory allows.
    pub(crate) fn insert(&mut self, p: Prepared<K, V>) {
        let head = self.shared.buckets().head(&p.0.key);
        p.0.next
            .store(head.load(Ordering::Relaxed), Ordering::Relaxed);
        head.store(KBox::into_raw(p.0), Ordering::Release);
        self.len += 1;
        let n = self.shared.buckets().heads.len();
        if self.len > n && n < MAX_BUCKETS {
            // Best effort: a failed allocation only makes chains longer.
            let _ = self.grow((n * 4).min(MAX_BUCKETS));
        }
    }

    /// Unlinks the first entry for `key` whose value `which` picks; it is freed after a grace
    /// period. False if there was none.
    pub(crate) fn remove(&mut self, key: K, which: impl Fn(&V) -> bool) -> bool {
        let mut prev = self.shared.buckets().head(&key);
        loop {
            let p = prev.load(Ordering::Relaxed);
            // SAFETY: reachable entries are valid, and only this writer unlinks them.
            let Some(e) = (unsafe { p.as_ref() }) else {
                return false;
            };
            if e.key == key && which(&e.value) {
                // Readers standing on `e` still see its `next`: unlinking keeps the chain whole.
                prev.store(e.next.load(Ordering::Relaxed), Ordering::Release);
                self.len -= 1;
                // SAFETY: `p` is unlinked: no new reader can find it, and it is ours to free.
                unsafe { free_entry_later(p) };
                return true;
            }
            prev = &e.next;
        }
    }

    /// Replaces the bucket array with one of `n` buckets holding copies of the entries.
    fn grow(&mut self, n: usize) -> Result {
        let old = self.shared.cur.load(Ordering::Relaxed);
        let new = KBox::into_raw(Buckets::<K, V>::new(n)?);
        // SAFETY: the writer owns the published array until it unpublishes it below, and the
        // new one until it publishes it.
        let (old_ref, new_ref) = unsafe { (&*old, &*new) };
        for head in old_ref.heads.iter() {
            let mut p = head.load(Ordering::Relaxed);
            // SAFETY: reachable entries are valid.
            while let Some(e) = unsafe { p.as_ref() } {
                match self.prepare(e.key, e.value.clone()) {
                    Ok(c) => {
                        let h = new_ref.head(&e.key);
                        c.0.next.store(h.load(Ordering::Relaxed), Ordering::Relaxed);
                        h.store(KBox::into_raw(c.0), Ordering::Relaxed);
                    }
                    Err(err) => {
                        // SAFETY: the new array was never published.
                        unsafe { free_buckets_now(new) };
                        return Err(err);
                    }
                }
                p = e.next.load(Ordering::Relaxed);
            }
        }
        self.shared.cur.store(new, Ordering::Release);
        // SAFETY: `old` is unpublished; readers may still stand on it until a grace period
        // has passed, and then nothing else refers to it or its entries.
        unsafe { free_buckets_later(old) };
        Ok(())
    }
}

/// Frees an unlinked entry after a grace period.
///
/// # Safety
///
/// `e` must come from `KBox::into_raw`, be unreachable for new readers, and be owned by the
/// caller (queued once).
unsafe fn free_entry_later<K: Key, V>(e: *mut Entry<K, V>) {
    // SAFETY: `rcu` is the entry's own head, unused until now; the callback gets it back.
    unsafe { call_rcu(ptr::addr_of_mut!((*e).rcu), Some(free_entry::<K, V>)) }
}

/// The RCU callback of [`free_entry_later`].
///
/// # Safety
///
/// `head` must be the `rcu` field of an entry queued by `free_entry_later`.
unsafe extern "C" fn free_entry<K: Key, V>(head: *mut callback_head) {
    // SAFETY: `rcu` is the first field of the `#[repr(C)]` entry, which came from
    // `KBox::into_raw`; the grace period has passed.
    drop(unsafe { KBox::from_raw(head.cast::<Entry<K, V>>()) });
}

/// Frees an unpublished bucket array and its entries after a grace period.
///
/// # Safety
///
/// `b` must come from `KBox::into_raw`, be unreachable for new readers, and be owned by the
/// caller with every entry still linked in it.
unsafe fn free_buckets_later<K: Key, V>(b: *mut Buckets<K, V>) {
    // SAFETY: `rcu` is the array's own head, unused until now; the callback gets it back.
    unsafe { call_rcu(ptr::addr_of_mut!((*b).rcu), Some(free_buckets::<K, V>)) }
}

/// The RCU callback of [`free_buckets_later`].
///
/// # Safety
///
/// `head` must be the `rcu` field of an array queued by `free_buckets_later`.
unsafe extern "C" fn free_buckets<K: Key, V>(head: *mut callback_head) {
    // SAFETY: `rcu` is the first field of the `#[repr(C)]` array; the grace period has passed,
    // so no reader stands on it or its entries.
    unsafe { free_buckets_now(head.cast::<Buckets<K, V>>()) }
}

/// Frees a bucket array and every entry linked in it, now.
///
/// # Safety
///
/// `b` must come from `KBox::into_raw`, be owned by the caller with its entries, and no reader
/// may stand on it any more.
unsafe fn free_buckets_now<K: Key, V>(b: *mut Buckets<K, V>) {
    // SAFETY: the caller owns the array.
    let b = unsafe { KBox::from_raw(b) };
    for head in b.heads.iter() {
        let mut p = head.load(Ordering::Relaxed);
        while !p.is_null() {
            // SAFETY: entries of an owned array are owned too, and came from `KBox::into_raw`.
            let e = unsafe { KBox::from_raw(p) };
            p = e.next.load(Ordering::Relaxed);
        }
    }
}
