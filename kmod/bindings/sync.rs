// SPDX-License-Identifier: GPL-2.0

//! Synchronisation: RCU read-side sections and grace periods, bottom halves disabled, and a
//! spinlock taken with `spin_lock_bh` for state the data path (softirq) shares with netlink.

use core::marker::PhantomData;

use kernel::ffi::c_char;

extern "C" {
    fn ntm_shim_rcu_read_lock();
    fn ntm_shim_rcu_read_unlock();
    fn ntm_shim_local_bh_disable();
    fn ntm_shim_local_bh_enable();
    fn ntm_shim_spin_lock_bh(lock: *mut kernel::bindings::spinlock_t);
    fn ntm_shim_spin_unlock_bh(lock: *mut kernel::bindings::spinlock_t);
    fn ntm_shim_cond_resched();
    fn synchronize_net();
}

/// An RCU read-side critical section, held for the guard's lifetime. References handed out
/// under a guard (tunnels, sockets) cannot outlive it.
pub(crate) struct RcuGuard(PhantomData<*mut ()>);

impl RcuGuard {
    pub(crate) fn new() -> Self {
        // SAFETY: rcu_read_lock() may be called in any context; the guard's drop unlocks.
        unsafe { ntm_shim_rcu_read_lock() };
        Self(PhantomData)
    }
}

impl Drop for RcuGuard {
    fn drop(&mut self) {
        // SAFETY: paired with the lock in `new`; the guard is !Send so this runs on the same CPU
        // context that locked.
        unsafe { ntm_shim_rcu_read_unlock() };
    }
}

/// Bottom halves disabled on this CPU for the guard's lifetime: process-context sends take
/// the same path as the transmit softirq (as WireGuard's sends under `read_lock_bh`).
pub(crate) struct BhGuard(PhantomData<*mut ()>);

impl BhGuard {
    pub(crate) fn new() -> Self {
        // SAFETY: local_bh_disable() may be called in process context; the guard's drop enables.
        unsafe { ntm_shim_local_bh_disable() };
        Self(PhantomData)
    }
}

impl Drop for BhGuard {
    fn drop(&mut self) {
        // SAFETY: paired with `new`; the guard is !Send, so it is dropped on the same CPU.
        unsafe { ntm_shim_local_bh_enable() };
    }
}

/// `synchronize_net()`: waits for every RCU reader (expedited under RTNL). Sleeps.
pub(crate) fn synchronize_net_readers() {
    // SAFETY: callers are in process context.
    unsafe { synchronize_net() }
}

/// A scheduling point (process context, no spinlock held).
pub(crate) fn cond_resched() {
    // SAFETY: callers are in process context and hold no spinlock.
    unsafe { ntm_shim_cond_resched() }
}

/// Waits for the RCU callbacks queued so far (module unload: they run module code).
pub(crate) fn rcu_barrier() {
    // SAFETY: process context, module exit.
    unsafe { kernel::bindings::rcu_barrier() }
}

/// A `spinlock_t` taken with `spin_lock_bh`: for state shared between softirq (the data path)
/// and process context (netlink).
pub(crate) struct SpinLockBhBackend;

// SAFETY: `spinlock_t` ensures mutual exclusion; `spin_lock_bh` also keeps softirqs of this CPU
// out, so the lock can be shared with the data path.
unsafe impl kernel::sync::lock::Backend for SpinLockBhBackend {
    type State = kernel::bindings::spinlock_t;
    type GuardState = ();

    /// # Safety
    ///
    /// As `Backend::init`: `ptr` is valid for writes, `name` and `key` live forever.
    unsafe fn init(
        ptr: *mut Self::State,
        name: *const c_char,
        key: *mut kernel::bindings::lock_class_key,
    ) {
        // SAFETY: the caller guarantees `ptr` is valid for writes and `name`/`key` live forever.
        unsafe { kernel::bindings::__spin_lock_init(ptr, name, key) }
    }

    /// # Safety
    ///
    /// As `Backend::lock`: `ptr` was initialised by `init`.
    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: the caller guarantees `ptr` was initialised by `init`.
        unsafe { ntm_shim_spin_lock_bh(ptr) }
    }

    /// # Safety
    ///
    /// As `Backend::unlock`: the caller holds the lock.
    unsafe fn unlock(ptr: *mut Self::State, _guard_state: &Self::GuardState) {
        // SAFETY: the caller owns the lock.
        unsafe { ntm_shim_spin_unlock_bh(ptr) }
    }
}

/// A spinlock that disables softirqs while held.
pub(crate) type SpinLockBh<T> = kernel::sync::lock::Lock<T, SpinLockBhBackend>;

/// Creates a [`SpinLockBh`] initialiser with its own lockdep class.
#[macro_export]
macro_rules! new_spinlock_bh {
    ($inner:expr, $name:literal) => {
        $crate::bindings::sync::SpinLockBh::new(
            $inner,
            kernel::c_str!($name),
            kernel::static_lock_class!(),
        )
    };
}
