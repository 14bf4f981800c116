// SPDX-License-Identifier: GPL-2.0

//! The binding layer: every raw declaration of ntm.ko, and the only place that holds raw C
//! pointers.
//!
//! The C half is `ntm_shim.c` (declared in `ntm_shim.h`, in the same order as the `extern`
//! block below). Only opaque pointers and scalars cross. On top of the declarations this file
//! builds the safe types the rest of the module is written in: [`NetDev`], [`DevRef`], [`Skb`],
//! [`SockRef`]/[`SockSlot`], [`RcuGuard`], [`SpinLockBh`], the generic netlink [`Info`], [`Attr`],
//! [`Msg`] and [`Dump`], the AEAD calls, and the `ntm_rs_*` entry points through which C calls
//! into Rust, which turn raw pointers into those types at once.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use kernel::str::CStr;

use crate::device::Device;
use crate::socket::Endpoint;

/// The C structs, never looked into from Rust.
#[allow(non_camel_case_types)]
mod raw {
    macro_rules! opaque {
        ($($name:ident),*) => { $( #[repr(C)] pub(crate) struct $name { _private: [u8; 0] } )* };
    }
    opaque!(
        net_device,
        sk_buff,
        sock,
        net,
        nlattr,
        genl_info,
        netlink_callback,
        dst_cache,
        dst_entry
    );
}
use raw::*;
pub(crate) use raw::{genl_info, netlink_callback, sk_buff};

extern "C" {
    // module registration
    fn ntm_shim_link_register() -> c_int;
    fn ntm_shim_link_unregister();
    fn ntm_shim_genl_register() -> c_int;
    fn ntm_shim_genl_unregister();

    // locking, RCU, time
    fn ntm_shim_rcu_read_lock();
    fn ntm_shim_rcu_read_unlock();
    fn ntm_shim_local_bh_disable();
    fn ntm_shim_local_bh_enable();
    fn ntm_shim_spin_lock_bh(lock: *mut kernel::bindings::spinlock_t);
    fn ntm_shim_spin_unlock_bh(lock: *mut kernel::bindings::spinlock_t);
    fn ntm_shim_jiffies() -> c_ulong;
    fn ntm_shim_msecs_to_jiffies(ms: u32) -> c_ulong;
    fn ntm_shim_jiffies_to_msecs(j: c_ulong) -> u32;
    fn ntm_shim_memzero_explicit(p: *mut c_void, len: usize);

    // net_device
    fn ntm_shim_dev_state(dev: *mut net_device) -> *mut c_void;
    fn ntm_shim_dev_set_state(dev: *mut net_device, state: *mut c_void);
    fn ntm_shim_dev_get(net: *mut net, ifindex: u32) -> *mut net_device;
    fn ntm_shim_dev_put(dev: *mut net_device);
    fn ntm_shim_dev_net(dev: *mut net_device) -> *mut net;
    fn ntm_shim_dev_ifindex(dev: *mut net_device) -> c_int;
    fn ntm_shim_dev_rx_add(dev: *mut net_device, len: c_uint);
    fn ntm_shim_dev_stat_inc(dev: *mut net_device, which: c_int);
    fn ntm_shim_sweep_arm(dev: *mut net_device, delay: c_ulong, force: bool);
    fn ntm_shim_sweep_cancel(dev: *mut net_device);

    // sk_buff
    fn ntm_shim_kfree_skb(skb: *mut sk_buff);
    fn ntm_shim_consume_skb(skb: *mut sk_buff);
    fn ntm_shim_skb_len(skb: *const sk_buff) -> c_uint;
    fn ntm_shim_skb_headlen(skb: *const sk_buff) -> c_uint;
    fn ntm_shim_skb_data(skb: *const sk_buff) -> *mut u8;
    fn ntm_shim_skb_may_pull(skb: *mut sk_buff, len: c_uint) -> bool;
    fn ntm_shim_skb_pull(skb: *mut sk_buff, len: c_uint);
    fn ntm_shim_skb_push(skb: *mut sk_buff, len: c_uint);
    fn ntm_shim_skb_put(skb: *mut sk_buff, len: c_uint);
    fn ntm_shim_skb_trim(skb: *mut sk_buff, len: c_uint) -> c_int;
    fn ntm_shim_skb_linearize_writable(skb: *mut sk_buff) -> c_int;
    fn ntm_shim_skb_tx_prepare(
        skb: *mut sk_buff,
        headroom: c_uint,
        tailroom: c_uint,
    ) -> *mut sk_buff;
    fn ntm_shim_skb_outer_source(skb: *const sk_buff, addr: *mut u8, port: *mut u16) -> c_int;
    fn ntm_shim_skb_alloc(headroom: c_uint, len: c_uint) -> *mut sk_buff;
    fn ntm_shim_rx_deliver(dev: *mut net_device, skb: *mut sk_buff, ipv6: bool) -> c_int;

    // routes, cached per tunnel
    fn ntm_shim_dst_cache_new() -> *mut dst_cache;
    fn ntm_shim_dst_cache_free(c: *mut dst_cache);
    fn ntm_shim_dst_cache_reset(c: *mut dst_cache);
    fn ntm_shim_route(
        dev: *mut net_device,
        sk: *mut sock,
        c: *mut dst_cache,
        family: c_int,
        daddr: *const u8,
        dport: u16,
        saddr: *mut u8,
        dst: *mut *mut dst_entry,
        fresh: *mut bool,
    ) -> c_int;
    fn ntm_shim_route_keep(c: *mut dst_cache, family: c_int, dst: *mut dst_entry, saddr: *const u8);
    fn ntm_shim_route_put(dst: *mut dst_entry);
    fn ntm_shim_route_xmit(
        dev: *mut net_device,
        sk: *mut sock,
        skb: *mut sk_buff,
        family: c_int,
        dst: *mut dst_entry,
        saddr: *const u8,
        daddr: *const u8,
        dport: u16,
    );

    // UDP sockets handed over by userspace
    fn ntm_shim_sock_attach(
        dev: *mut net_device,
        fd: c_int,
        family: c_int,
        why: *mut *const c_char,
        err: *mut c_int,
    ) -> *mut sock;
    fn ntm_shim_sock_detach(sk: *mut sock);
    fn ntm_shim_sock_put(sk: *mut sock);
    fn ntm_shim_sock_dead(sk: *const sock) -> bool;
    fn ntm_shim_sock_dev(sk: *mut sock) -> *mut net_device;

    // generic netlink: requests
    fn ntm_shim_info_attr(info: *const genl_info, ty: c_int) -> *mut nlattr;
    fn ntm_shim_info_net(info: *const genl_info) -> *mut net;
    fn ntm_shim_info_error(info: *const genl_info, msg: *const c_char, bad: *const nlattr);
    fn ntm_shim_info_missing(info: *const genl_info, nest: *const nlattr, ty: c_int);
    fn ntm_shim_info_parse_tunnel(
        info: *const genl_info,
        nest: *const nlattr,
        tb: *mut *mut nlattr,
    ) -> c_int;
    fn ntm_shim_nla_data(nla: *const nlattr) -> *const c_void;
    fn ntm_shim_nla_len(nla: *const nlattr) -> c_int;
    fn ntm_shim_cb_info(cb: *mut netlink_callback) -> *const genl_info;
    fn ntm_shim_cb_args(cb: *mut netlink_callback) -> *mut c_long;

    // generic netlink: messages
    fn ntm_shim_msg_new(atomic: bool) -> *mut sk_buff;
    fn ntm_shim_msg_free(msg: *mut sk_buff);
    fn ntm_shim_msg_put_reply(msg: *mut sk_buff, info: *const genl_info, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_put_dump(msg: *mut sk_buff, cb: *mut netlink_callback, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_put_event(msg: *mut sk_buff, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_end(msg: *mut sk_buff, hdr: *mut c_void);
    fn ntm_shim_msg_cancel(msg: *mut sk_buff, hdr: *mut c_void);
    fn ntm_shim_msg_reply(msg: *mut sk_buff, info: *const genl_info) -> c_int;
    fn ntm_shim_msg_multicast(msg: *mut sk_buff, net: *mut net, atomic: bool) -> c_int;
    fn ntm_shim_nla_put(msg: *mut sk_buff, ty: c_int, data: *const c_void, len: c_int) -> c_int;
    fn ntm_shim_nla_put_uint(msg: *mut sk_buff, ty: c_int, value: u64) -> c_int;
    fn ntm_shim_nest_start(msg: *mut sk_buff, ty: c_int) -> *mut nlattr;
    fn ntm_shim_nest_end(msg: *mut sk_buff, nest: *mut nlattr);
}

// Exported kernel functions (lib/crypto/chacha20poly1305.c, net/core/dev.c, kernel/rcu).
extern "C" {
    fn chacha20poly1305_encrypt(
        dst: *mut u8,
        src: *const u8,
        src_len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    );
    fn chacha20poly1305_decrypt(
        dst: *mut u8,
        src: *const u8,
        src_len: usize,
        ad: *const u8,
        ad_len: usize,
        nonce: u64,
        key: *const u8,
    ) -> bool;
    fn synchronize_net();
    fn rcu_barrier();
}

/// Errnos the 6.12 `kernel` crate does not name.
pub(crate) mod err {
    use kernel::error::Error;

    fn e(n: u32) -> Error {
        Error::from_errno(-(n as i32))
    }
    pub(crate) fn emsgsize() -> Error {
        e(kernel::bindings::EMSGSIZE)
    }
    pub(crate) fn enetdown() -> Error {
        e(kernel::bindings::ENETDOWN)
    }
    pub(crate) fn enetunreach() -> Error {
        e(kernel::bindings::ENETUNREACH)
    }
    pub(crate) fn ealready() -> Error {
        e(kernel::bindings::EALREADY)
    }
    pub(crate) fn ekeyexpired() -> Error {
        e(kernel::bindings::EKEYEXPIRED)
    }
}

fn errno(rc: c_int) -> Result {
    if rc < 0 {
        Err(Error::from_errno(rc))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Module registration

/// Registers the `ntm` rtnl link kind (`ip link add NAME type ntm`).
pub(crate) fn link_register() -> Result {
    // SAFETY: registers the shim's static rtnl_link_ops; called once from module init.
    errno(unsafe { ntm_shim_link_register() })
}

/// Unregisters the link kind, destroying every ntm device in every namespace.
pub(crate) fn link_unregister() {
    // SAFETY: only called from module exit, after a successful `link_register`.
    unsafe { ntm_shim_link_unregister() }
}

/// Registers the generic netlink family `ntm`.
pub(crate) fn genl_register() -> Result {
    // SAFETY: registers the shim's static family; called once from module init.
    errno(unsafe { ntm_shim_genl_register() })
}

/// Unregisters the family; waits for operations in progress.
pub(crate) fn genl_unregister() {
    // SAFETY: only called from module exit, after a successful `genl_register`.
    unsafe { ntm_shim_genl_unregister() }
}

// ---------------------------------------------------------------------------------------------
// RCU, locks, time, memory

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

/// `synchronize_net()`: an expedited grace period when called under RTNL. Sleeps.
pub(crate) fn synchronize_net_readers() {
    // SAFETY: callers are in process context.
    unsafe { synchronize_net() }
}

/// Waits for pending RCU callbacks (module unload).
pub(crate) fn barrier() {
    // SAFETY: process context, module exit.
    unsafe { rcu_barrier() }
}

/// A `spinlock_t` taken with `spin_lock_bh`: for state shared between softirq (the data path)
/// and process context (netlink).
pub(crate) struct SpinLockBhBackend;

// SAFETY: `spinlock_t` ensures mutual exclusion; `spin_lock_bh` also keeps softirqs of this CPU
// out, so the lock can be shared with the data path.
unsafe impl kernel::sync::lock::Backend for SpinLockBhBackend {
    type State = kernel::bindings::spinlock_t;
    type GuardState = ();

    unsafe fn init(
        ptr: *mut Self::State,
        name: *const c_char,
        key: *mut kernel::bindings::lock_class_key,
    ) {
        // SAFETY: the caller guarantees `ptr` is valid for writes and `name`/`key` live forever.
        unsafe { kernel::bindings::__spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: the caller guarantees `ptr` was initialised by `init`.
        unsafe { ntm_shim_spin_lock_bh(ptr) }
    }

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
        $crate::bindings::SpinLockBh::new(
            $inner,
            kernel::c_str!($name),
            kernel::static_lock_class!(),
        )
    };
}

/// The current time in jiffies.
pub(crate) fn jiffies() -> u64 {
    // SAFETY: reads the jiffies counter.
    unsafe { ntm_shim_jiffies() as u64 }
}

pub(crate) fn msecs_to_jiffies(ms: u32) -> u64 {
    // SAFETY: pure conversion.
    unsafe { ntm_shim_msecs_to_jiffies(ms) as u64 }
}

pub(crate) fn jiffies_to_msecs(j: u64) -> u32 {
    // SAFETY: pure conversion.
    unsafe { ntm_shim_jiffies_to_msecs(j as c_ulong) }
}

/// Zeroes memory in a way the compiler cannot elide (keys).
pub(crate) fn memzero_explicit(buf: &mut [u8]) {
    // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()` bytes.
    unsafe { ntm_shim_memzero_explicit(buf.as_mut_ptr().cast(), buf.len()) }
}

// ---------------------------------------------------------------------------------------------
// ChaCha20-Poly1305 (the kernel's library), nonce = counter, no associated data

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;

/// Seals `buf[..len]` in place and writes the tag to `buf[len..len + TAG_LEN]`.
pub(crate) fn aead_seal(buf: &mut [u8], len: usize, counter: u64, key: &[u8; KEY_LEN]) {
    assert!(len.checked_add(TAG_LEN).is_some_and(|end| end <= buf.len()));
    let p = buf.as_mut_ptr();
    // SAFETY: `p` is valid for `len + TAG_LEN` bytes (checked above); the library encrypts in
    // place (dst == src is supported: the stream is XORed block by block, the MAC reads dst).
    unsafe { chacha20poly1305_encrypt(p, p, len, ptr::null(), 0, counter, key.as_ptr()) }
}

/// Opens `buf` (ciphertext then tag) in place; on success `buf[..len - TAG_LEN]` is the
/// plaintext. Nothing is decrypted unless the tag verifies.
pub(crate) fn aead_open(buf: &mut [u8], counter: u64, key: &[u8; KEY_LEN]) -> bool {
    if buf.len() < TAG_LEN {
        return false;
    }
    let p = buf.as_mut_ptr();
    // SAFETY: `p` is valid for `buf.len()` bytes; the library verifies the tag over src before
    // decrypting into dst, and dst == src is supported.
    unsafe { chacha20poly1305_decrypt(p, p, buf.len(), ptr::null(), 0, counter, key.as_ptr()) }
}

// ---------------------------------------------------------------------------------------------
// Network devices

/// Counters of the device's `struct net_device_stats` (values of `enum ntm_stat` in the shim).
#[derive(Clone, Copy)]
#[repr(i32)]
pub(crate) enum Stat {
    TxDropped = 0,
    TxErrors = 1,
    RxDropped = 2,
    RxErrors = 3,
    RxLengthErrors = 4,
    RxFrameErrors = 5,
    TxCarrierErrors = 6,
}

/// A network namespace (only compared and passed back to C).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetNs(NonNull<net>);

/// An ntm net_device. Only created by this file from pointers the kernel hands to the
/// module's callbacks, and stored only in that device's own [`Device`], which the device's
/// destructor frees before the net_device itself: so it is valid whenever it is reachable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetDev(NonNull<net_device>);

// SAFETY: a net_device is used from any CPU; the operations below are all safe concurrently.
unsafe impl Send for NetDev {}
// SAFETY: as above.
unsafe impl Sync for NetDev {}
// SAFETY: a namespace pointer is only passed back to C.
unsafe impl Send for NetNs {}
// SAFETY: as above.
unsafe impl Sync for NetNs {}

impl NetDev {
    fn raw(self) -> *mut net_device {
        self.0.as_ptr()
    }

    pub(crate) fn ifindex(self) -> u32 {
        // SAFETY: the device is valid (type invariant).
        unsafe { ntm_shim_dev_ifindex(self.raw()) as u32 }
    }

    pub(crate) fn net(self) -> NetNs {
        // SAFETY: the device is valid, and always in a namespace.
        NetNs(unsafe { NonNull::new_unchecked(ntm_shim_dev_net(self.raw())) })
    }

    /// Counts a packet delivered to the stack.
    pub(crate) fn rx_add(self, len: usize) {
        // SAFETY: the device is valid; per-cpu stats allocated by the core (TSTATS).
        unsafe { ntm_shim_dev_rx_add(self.raw(), len as c_uint) }
    }

    pub(crate) fn stat(self, which: Stat) {
        // SAFETY: the device is valid.
        unsafe { ntm_shim_dev_stat_inc(self.raw(), which as c_int) }
    }

    /// Queues the idle sweep after `delay` jiffies; `force` moves an already queued one.
    pub(crate) fn sweep_arm(self, delay: u64, force: bool) {
        // SAFETY: the device is valid and its delayed work was initialised in setup().
        unsafe { ntm_shim_sweep_arm(self.raw(), delay as c_ulong, force) }
    }

    /// Cancels the sweep and waits for a running one. Sleeps.
    pub(crate) fn sweep_cancel(self) {
        // SAFETY: the device is valid; process context.
        unsafe { ntm_shim_sweep_cancel(self.raw()) }
    }
}

/// The Rust state of a device, from a pointer the kernel handed to a callback.
///
/// # Safety
///
/// `dev` must be a live ntm net_device, and the returned reference must not be used after
/// the device's destructor (callbacks of the device are all done by then).
unsafe fn state<'a>(dev: *mut net_device) -> Option<&'a Device> {
    // SAFETY: the caller guarantees `dev` is a live ntm device; `state` is either null or the
    // pointer `ntm_rs_dev_new` stored, freed only by `ntm_rs_dev_free`.
    unsafe { ntm_shim_dev_state(dev).cast::<Device>().as_ref() }
}

/// A reference on an ntm device, found by ifindex in a namespace.
pub(crate) struct DevRef {
    dev: NonNull<net_device>,
    state: NonNull<Device>,
}

impl DevRef {
    pub(crate) fn get(net: NetNs, ifindex: u32) -> Option<Self> {
        // SAFETY: `net` is valid (it came from the kernel for this request); the shim only
        // returns ntm devices, with a reference held.
        let dev = NonNull::new(unsafe { ntm_shim_dev_get(net.0.as_ptr(), ifindex) })?;
        // SAFETY: the reference keeps the device and its state (freed by the destructor, which
        // waits for all references) alive.
        match NonNull::new(unsafe { ntm_shim_dev_state(dev.as_ptr()) }.cast::<Device>()) {
            Some(state) => Some(Self { dev, state }),
            None => {
                // SAFETY: drops the reference taken above.
                unsafe { ntm_shim_dev_put(dev.as_ptr()) };
                None
            }
        }
    }
}

impl core::ops::Deref for DevRef {
    type Target = Device;

    fn deref(&self) -> &Device {
        // SAFETY: the state lives until the destructor, which waits for our reference.
        unsafe { self.state.as_ref() }
    }
}

impl Drop for DevRef {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `get`.
        unsafe { ntm_shim_dev_put(self.dev.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket buffers

/// An owned `sk_buff`: dropped with `kfree_skb` unless consumed, delivered or sent.
pub(crate) struct Skb(NonNull<sk_buff>);

// SAFETY: an skb we own may move between contexts.
unsafe impl Send for Skb {}

impl Skb {
    /// # Safety
    ///
    /// `skb` must be a valid skb whose ownership passes to the new value.
    unsafe fn from_raw(skb: *mut sk_buff) -> Option<Self> {
        NonNull::new(skb).map(Self)
    }

    fn into_raw(self) -> *mut sk_buff {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    pub(crate) fn len(&self) -> usize {
        // SAFETY: we own a valid skb.
        unsafe { ntm_shim_skb_len(self.0.as_ptr()) as usize }
    }

    /// The linear part, from `skb->data`.
    pub(crate) fn head(&self) -> &[u8] {
        // SAFETY: data..data+headlen is the skb's linear area, valid while we own it and
        // borrowed immutably with `self`.
        unsafe {
            let p = self.0.as_ptr();
            core::slice::from_raw_parts(ntm_shim_skb_data(p), ntm_shim_skb_headlen(p) as usize)
        }
    }

    /// Makes the first `len` bytes linear; false if the packet is shorter (or on ENOMEM).
    pub(crate) fn may_pull(&mut self, len: usize) -> bool {
        // SAFETY: we own a valid skb.
        len <= u32::MAX as usize && unsafe { ntm_shim_skb_may_pull(self.0.as_ptr(), len as c_uint) }
    }

    /// Removes `len` bytes from the front of the linear part.
    pub(crate) fn pull(&mut self, len: usize) {
        assert!(len <= self.head().len());
        // SAFETY: `len` is within the linear part (checked).
        unsafe { ntm_shim_skb_pull(self.0.as_ptr(), len as c_uint) }
    }

    /// Cuts the packet to `len` bytes.
    pub(crate) fn trim(&mut self, len: usize) -> Result {
        if len > self.len() {
            return Err(EINVAL);
        }
        // SAFETY: we own a valid skb; `len` is not beyond its end.
        errno(unsafe { ntm_shim_skb_trim(self.0.as_ptr(), len as c_uint) })
    }

    /// The source address and port of the outer (UDP) datagram this skb arrived in.
    pub(crate) fn outer_source(&self) -> Option<crate::socket::Endpoint> {
        let mut addr = [0u8; 16];
        let mut port = 0u16;
        // SAFETY: the skb still carries its outer network and transport headers (receive path),
        // `addr` has room for 16 bytes.
        let family =
            unsafe { ntm_shim_skb_outer_source(self.0.as_ptr(), addr.as_mut_ptr(), &mut port) };
        crate::socket::Endpoint::from_raw(family, &addr, port)
    }

    /// Receive: makes the whole packet linear and writable (for decryption in place).
    pub(crate) fn into_writable(self) -> Option<WritableSkb> {
        // SAFETY: we own a valid skb.
        if unsafe { ntm_shim_skb_linearize_writable(self.0.as_ptr()) } < 0 {
            return None;
        }
        Some(WritableSkb(self))
    }

    /// Transmit: unshares the skb and makes it linear and writable, with `headroom` bytes free
    /// before the data and `tailroom` after. None if that failed (the skb is freed).
    pub(crate) fn into_tx(self, headroom: usize, tailroom: usize) -> Option<WritableSkb> {
        // SAFETY: ownership passes to the shim, which returns the (possibly new) skb or frees it.
        let p = unsafe {
            ntm_shim_skb_tx_prepare(self.into_raw(), headroom as c_uint, tailroom as c_uint)
        };
        // SAFETY: a non-null result is a valid skb that we own.
        unsafe { Skb::from_raw(p) }.map(WritableSkb)
    }

    /// Frees a packet that was processed successfully (not a drop).
    pub(crate) fn consume(self) {
        // SAFETY: we own the skb.
        unsafe { ntm_shim_consume_skb(self.into_raw()) }
    }
}

impl Drop for Skb {
    fn drop(&mut self) {
        // SAFETY: we own the skb.
        unsafe { ntm_shim_kfree_skb(self.0.as_ptr()) }
    }
}

/// An skb whose linear part is all of it and is ours to write (not shared, not cloned).
pub(crate) struct WritableSkb(Skb);

impl core::ops::Deref for WritableSkb {
    type Target = Skb;

    fn deref(&self) -> &Skb {
        &self.0
    }
}

impl core::ops::DerefMut for WritableSkb {
    fn deref_mut(&mut self) -> &mut Skb {
        &mut self.0
    }
}

impl WritableSkb {
    /// A new packet of `len` zero bytes with `headroom` free in front, in process context.
    pub(crate) fn alloc(headroom: usize, len: usize) -> Option<Self> {
        let headroom = c_uint::try_from(headroom).ok()?;
        let len = c_uint::try_from(len).ok()?;
        // SAFETY: the shim allocates with GFP_KERNEL (callers are netlink handlers, process
        // context) and returns a linear, unshared skb that we own, or null.
        unsafe { Skb::from_raw(ntm_shim_skb_alloc(headroom, len)) }.map(WritableSkb)
    }

    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        let p = self.0 .0.as_ptr();
        // SAFETY: the skb is linear, unshared and uncloned (type invariant), so data..data+len
        // is ours to write while `self` is borrowed mutably.
        unsafe {
            core::slice::from_raw_parts_mut(ntm_shim_skb_data(p), ntm_shim_skb_headlen(p) as usize)
        }
    }

    /// Adds `len` bytes at the front (the shim's `skb_push` panics rather than underflow).
    pub(crate) fn push(&mut self, len: usize) {
        // SAFETY: we own the skb; skb_push checks the headroom.
        unsafe { ntm_shim_skb_push(self.0 .0.as_ptr(), len as c_uint) }
    }

    /// Adds `len` bytes at the end (checked by `skb_put`).
    pub(crate) fn put(&mut self, len: usize) {
        // SAFETY: we own the skb; skb_put checks the tailroom.
        unsafe { ntm_shim_skb_put(self.0 .0.as_ptr(), len as c_uint) }
    }

    /// Frees a packet that was processed successfully (not a drop).
    pub(crate) fn consume(self) {
        self.0.consume()
    }

    /// Hands the inner packet now at `data` to the stack on `dev`; false if it was dropped.
    pub(crate) fn deliver(self, dev: NetDev, ipv6: bool) -> bool {
        // SAFETY: ownership of a valid skb passes to the stack; `dev` is live.
        unsafe { ntm_shim_rx_deliver(dev.raw(), self.0.into_raw(), ipv6) == 0 }
    }
}

// ---------------------------------------------------------------------------------------------
// UDP sockets

/// Why a socket could not be taken over: an errno and an extack message.
pub(crate) struct AttachError {
    pub(crate) err: Error,
    pub(crate) why: &'static CStr,
}

/// A reference on a userspace UDP socket this module has taken over (encap hook installed).
/// Dropping it gives the socket back to plain UDP: the hook is removed, readers are waited
/// for, then the reference is dropped. Sleeps, so only dropped in process context.
pub(crate) struct SockRef(NonNull<sock>);

// SAFETY: a `struct sock` reference may be dropped from any process context.
unsafe impl Send for SockRef {}

impl SockRef {
    /// Takes over the bound UDP socket behind `fd` (of the calling process) for `dev`.
    pub(crate) fn attach(
        dev: NetDev,
        fd: i32,
        ipv6: bool,
    ) -> core::result::Result<Self, AttachError> {
        let mut why: *const c_char = ptr::null();
        let mut err: c_int = 0;
        let family = if ipv6 { 10 } else { 2 }; // AF_INET6, AF_INET
                                                // SAFETY: `dev` is live; `why` and `err` are valid out-pointers.
        let sk = unsafe { ntm_shim_sock_attach(dev.raw(), fd, family, &mut why, &mut err) };
        if let Some(sk) = NonNull::new(sk) {
            return Ok(Self(sk));
        }
        let why = if why.is_null() {
            kernel::c_str!("ntm: cannot use this socket")
        } else {
            // SAFETY: on failure the shim points `why` at a static NUL-terminated string.
            unsafe { CStr::from_char_ptr(why) }
        };
        Err(AttachError {
            err: Error::from_errno(if err < 0 { err } else { -22 }),
            why,
        })
    }
}

impl Drop for SockRef {
    fn drop(&mut self) {
        // SAFETY: we hold a reference; detaching removes the hook and sk_user_data, the grace
        // period waits for encap_rcv/encap_destroy and transmitters that might still use the
        // pointer, and then our reference is dropped.
        unsafe {
            ntm_shim_sock_detach(self.0.as_ptr());
            synchronize_net();
            ntm_shim_sock_put(self.0.as_ptr());
        }
    }
}

/// Where the data path finds a device's socket of one family: published for RCU readers.
/// The slot owns the [`SockRef`] it publishes. A socket its owner closed is marked dead
/// (SOCK_DEAD, set by udp_destroy_sock before it calls encap_destroy): the sweep gives it up.
pub(crate) struct SockSlot {
    ptr: AtomicPtr<sock>,
}

// SAFETY: the pointer is only published and read atomically; see `get` and `replace`.
unsafe impl Send for SockSlot {}
// SAFETY: as above.
unsafe impl Sync for SockSlot {}

/// A published socket, usable for as long as the RCU guard it was read under.
#[derive(Clone, Copy)]
pub(crate) struct SockHandle<'g>(NonNull<sock>, PhantomData<&'g RcuGuard>);

/// A socket being destroyed, as encap_destroy names it: only compared, never dereferenced.
#[derive(Clone, Copy)]
pub(crate) struct ClosingSock(*mut sock);

impl SockSlot {
    pub(crate) const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    pub(crate) fn get<'g>(&self, _guard: &'g RcuGuard) -> Option<SockHandle<'g>> {
        NonNull::new(self.ptr.load(Ordering::Acquire)).map(|p| SockHandle(p, PhantomData))
    }

    /// Is `sk` the slot's socket? Only a hint to look soon: the slot may change right after.
    pub(crate) fn holds(&self, sk: ClosingSock) -> bool {
        !sk.0.is_null() && self.ptr.load(Ordering::Acquire) == sk.0
    }

    /// Was the published socket closed by its owner? Asked of the socket itself (SOCK_DEAD),
    /// never of a mark that a concurrent replacement could leave on the new socket.
    pub(crate) fn closed(&self, _guard: &RcuGuard) -> bool {
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a socket read from the slot under RCU stays valid until the guard drops: a
        // replaced SockRef waits for a grace period before dropping its reference.
        !p.is_null() && unsafe { ntm_shim_sock_dead(p) }
    }

    /// Publishes `new` and returns the previous socket, whose drop waits for readers. Callers
    /// serialise replacements (the device's control mutex).
    pub(crate) fn replace(&self, new: Option<SockRef>) -> Option<SockRef> {
        let p = new.map_or(ptr::null_mut(), |s| {
            let p = s.0.as_ptr();
            core::mem::forget(s);
            p
        });
        NonNull::new(self.ptr.swap(p, Ordering::AcqRel)).map(SockRef)
    }
}

impl Drop for SockSlot {
    fn drop(&mut self) {
        drop(self.replace(None));
    }
}

impl<'g> SockHandle<'g> {
    /// The same socket.
    pub(crate) fn same(self, other: SockHandle<'_>) -> bool {
        self.0 == other.0
    }

    /// The route from this socket to `ep`: from `cache`, or looked up (then `Route::fresh`).
    /// Callers have bottom halves disabled (the transmit path; `BhGuard` elsewhere): the cache
    /// is per CPU.
    pub(crate) fn route(self, dev: NetDev, cache: &DstCache, ep: &Endpoint) -> Result<Route<'g>> {
        let (family, daddr, port) = ep.raw();
        let mut r = Route {
            dst: ptr::null_mut(),
            family,
            saddr: [0; 16],
            daddr,
            port,
            fresh: false,
            _g: PhantomData,
        };
        // SAFETY: the socket is valid under the guard, `dev` is live, the cache is owned by a
        // tunnel the caller holds; the out-pointers are valid for the call.
        errno(unsafe {
            ntm_shim_route(
                dev.raw(),
                self.0.as_ptr(),
                cache.0.as_ptr(),
                family,
                r.daddr.as_ptr(),
                port,
                r.saddr.as_mut_ptr(),
                &mut r.dst,
                &mut r.fresh,
            )
        })?;
        Ok(r)
    }

    /// Sends a sealed packet along `route` (both consumed).
    pub(crate) fn xmit(self, dev: NetDev, skb: WritableSkb, route: Route<'g>) {
        let route = core::mem::ManuallyDrop::new(route);
        // SAFETY: the socket is valid under the guard and `dev` is live; the skb and the route's
        // reference pass to the shim (the route is not dropped here).
        unsafe {
            ntm_shim_route_xmit(
                dev.raw(),
                self.0.as_ptr(),
                skb.0.into_raw(),
                route.family,
                route.dst,
                route.saddr.as_ptr(),
                route.daddr.as_ptr(),
                route.port,
            )
        }
    }
}

/// A tunnel's cache of routes to its endpoint (per CPU), reset when the endpoint changes.
pub(crate) struct DstCache(NonNull<dst_cache>);

// SAFETY: the cache is per CPU inside; resetting is a single store of a timestamp.
unsafe impl Send for DstCache {}
// SAFETY: as above.
unsafe impl Sync for DstCache {}

impl DstCache {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: process context (tunnel-new); null on failure.
        NonNull::new(unsafe { ntm_shim_dst_cache_new() })
            .map(Self)
            .ok_or(ENOMEM)
    }

    /// Forgets every cached route (lazily: entries older than now are not used again).
    pub(crate) fn reset(&self) {
        // SAFETY: we own a valid cache; dst_cache_reset only stores a timestamp.
        unsafe { ntm_shim_dst_cache_reset(self.0.as_ptr()) }
    }
}

impl Drop for DstCache {
    fn drop(&mut self) {
        // SAFETY: we own the cache; its tunnel is gone, so no CPU uses it any more (tunnels are
        // freed after a grace period, in process context).
        unsafe { ntm_shim_dst_cache_free(self.0.as_ptr()) }
    }
}

/// A route with a reference held, valid under the RCU guard of the socket it came from.
pub(crate) struct Route<'g> {
    dst: *mut dst_entry,
    family: c_int,
    saddr: [u8; 16],
    daddr: [u8; 16],
    port: u16,
    fresh: bool,
    _g: PhantomData<&'g RcuGuard>,
}

impl Route<'_> {
    /// Looked up now rather than found in the cache.
    pub(crate) fn fresh(&self) -> bool {
        self.fresh
    }

    /// Keeps the route in `cache` (which takes its own reference).
    pub(crate) fn keep(&self, cache: &DstCache) {
        // SAFETY: the route holds a reference to a valid dst; the cache is valid.
        unsafe { ntm_shim_route_keep(cache.0.as_ptr(), self.family, self.dst, self.saddr.as_ptr()) }
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        if !self.dst.is_null() {
            // SAFETY: an unsent route still holds its reference.
            unsafe { ntm_shim_route_put(self.dst) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generic netlink

/// A generic netlink request (doit, or the request of a dump).
#[derive(Clone, Copy)]
pub(crate) struct Info<'a>(&'a genl_info);

/// An attribute of a request, valid while the request is.
#[derive(Clone, Copy)]
pub(crate) struct Attr<'a>(NonNull<nlattr>, PhantomData<&'a genl_info>);

impl<'a> Info<'a> {
    pub(crate) fn attr(&self, ty: u16) -> Option<Attr<'a>> {
        // SAFETY: the shim bounds-checks `ty` against the attrs array of the request.
        NonNull::new(unsafe { ntm_shim_info_attr(self.0, ty as c_int) })
            .map(|p| Attr(p, PhantomData))
    }

    /// The namespace of the requesting socket.
    pub(crate) fn net(&self) -> NetNs {
        // SAFETY: a request always has a namespace.
        NetNs(unsafe { NonNull::new_unchecked(ntm_shim_info_net(self.0)) })
    }

    /// Sets the extack message (and the offending attribute).
    pub(crate) fn error(&self, msg: &'static CStr, bad: Option<Attr<'_>>) {
        let bad = bad.map_or(ptr::null(), |a| a.0.as_ptr().cast_const());
        // SAFETY: `msg` is static, as extack requires; `bad` is null or an attribute of this request.
        unsafe { ntm_shim_info_error(self.0, msg.as_char_ptr(), bad) }
    }

    /// Reports a missing attribute `ty` (of `nest`, or top-level).
    pub(crate) fn missing(&self, nest: Option<Attr<'_>>, ty: u16) {
        let nest = nest.map_or(ptr::null(), |a| a.0.as_ptr().cast_const());
        // SAFETY: `nest` is null or an attribute of this request.
        unsafe { ntm_shim_info_missing(self.0, nest, ty as c_int) }
    }

    /// Parses a `tunnel` nest with the tunnel policy (extack set on failure).
    pub(crate) fn parse_tunnel(&self, nest: Attr<'a>) -> Result<TunnelAttrs<'a>> {
        let mut tb = [ptr::null_mut::<nlattr>(); TUNNEL_ATTRS];
        // SAFETY: `tb` has NTM_A_TUNNEL_MAX + 1 slots, as the shim expects; `nest` belongs to
        // this request, whose lifetime bounds the parsed attributes.
        errno(unsafe { ntm_shim_info_parse_tunnel(self.0, nest.0.as_ptr(), tb.as_mut_ptr()) })?;
        Ok(TunnelAttrs(
            tb.map(|p| NonNull::new(p).map(|p| Attr(p, PhantomData))),
        ))
    }
}

/// Slots of a parsed `tunnel` nest (NTM_A_TUNNEL_MAX + 1).
pub(crate) const TUNNEL_ATTRS: usize = crate::netlink::tunnel::MAX as usize + 1;

pub(crate) struct TunnelAttrs<'a>([Option<Attr<'a>>; TUNNEL_ATTRS]);

impl<'a> TunnelAttrs<'a> {
    pub(crate) fn get(&self, ty: u16) -> Option<Attr<'a>> {
        self.0.get(ty as usize).copied().flatten()
    }
}

impl<'a> Attr<'a> {
    pub(crate) fn bytes(&self) -> &'a [u8] {
        // SAFETY: the attribute's payload is `nla_len` bytes at `nla_data`, validated by the
        // policy and alive as long as the request.
        unsafe {
            let p = self.0.as_ptr();
            let len = ntm_shim_nla_len(p).max(0) as usize;
            core::slice::from_raw_parts(ntm_shim_nla_data(p).cast::<u8>(), len)
        }
    }

    /// A fixed-size payload (the policy guarantees the size; None otherwise).
    pub(crate) fn array<const N: usize>(&self) -> Option<[u8; N]> {
        self.bytes().try_into().ok()
    }

    /// u32 in host order (NLA_U32).
    pub(crate) fn u32(&self) -> Option<u32> {
        self.array::<4>().map(u32::from_ne_bytes)
    }

    /// s32 in host order (NLA_S32).
    pub(crate) fn i32(&self) -> Option<i32> {
        self.array::<4>().map(i32::from_ne_bytes)
    }

    /// u16 in network order (NLA_BE16), returned in host order.
    pub(crate) fn be16(&self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }
}

/// Writing attributes into a generic netlink message.
pub(crate) trait NlWrite {
    #[doc(hidden)]
    fn skb(&mut self) -> *mut sk_buff;

    fn put(&mut self, ty: u16, data: &[u8]) -> Result {
        let skb = self.skb();
        // SAFETY: `skb` is a message being built; nla_put copies `data` (fails with EMSGSIZE
        // when full).
        errno(unsafe {
            ntm_shim_nla_put(skb, ty as c_int, data.as_ptr().cast(), data.len() as c_int)
        })
    }

    fn put_u32(&mut self, ty: u16, v: u32) -> Result {
        self.put(ty, &v.to_ne_bytes())
    }

    /// NLA_UINT: 4 or 8 bytes as needed.
    fn put_uint(&mut self, ty: u16, v: u64) -> Result {
        let skb = self.skb();
        // SAFETY: as in `put`.
        errno(unsafe { ntm_shim_nla_put_uint(skb, ty as c_int, v) })
    }

    /// A NUL-terminated string.
    fn put_str(&mut self, ty: u16, s: &[u8]) -> Result {
        let mut buf = [0u8; 256];
        let n = s.len().min(buf.len() - 1);
        buf[..n].copy_from_slice(&s[..n]);
        self.put(ty, &buf[..=n])
    }

    /// Writes a nest of attributes filled by `f`.
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self) -> Result) -> Result {
        let skb = self.skb();
        // SAFETY: as in `put`.
        let nest = unsafe { ntm_shim_nest_start(skb, ty as c_int) };
        if nest.is_null() {
            return Err(err::emsgsize());
        }
        f(self)?;
        let skb = self.skb();
        // SAFETY: closes the nest opened above in the same message.
        unsafe { ntm_shim_nest_end(skb, nest) };
        Ok(())
    }
}

/// A new message (a reply or an event), freed unless sent.
pub(crate) struct Msg {
    skb: NonNull<sk_buff>,
    hdr: *mut c_void,
}

impl NlWrite for Msg {
    fn skb(&mut self) -> *mut sk_buff {
        self.skb.as_ptr()
    }
}

impl Msg {
    fn with_header(atomic: bool, put: impl FnOnce(*mut sk_buff) -> *mut c_void) -> Result<Self> {
        // SAFETY: allocates a message of NLMSG_GOODSIZE.
        let skb = NonNull::new(unsafe { ntm_shim_msg_new(atomic) }).ok_or(ENOMEM)?;
        let hdr = put(skb.as_ptr());
        let msg = Self { skb, hdr };
        if msg.hdr.is_null() {
            return Err(err::emsgsize()); // `msg` is freed
        }
        Ok(msg)
    }

    /// A reply to `info` with command `cmd`.
    pub(crate) fn reply(info: &Info<'_>, cmd: u8) -> Result<Self> {
        // SAFETY: `skb` is the new message, `info` the live request.
        Self::with_header(false, |skb| unsafe {
            ntm_shim_msg_put_reply(skb, info.0, cmd)
        })
    }

    /// A notification for the `events` group.
    pub(crate) fn event(cmd: u8, atomic: bool) -> Result<Self> {
        // SAFETY: `skb` is the new message.
        Self::with_header(atomic, |skb| unsafe { ntm_shim_msg_put_event(skb, cmd) })
    }

    fn finish(self) -> *mut sk_buff {
        let skb = self.skb.as_ptr();
        // SAFETY: `hdr` was put into this message.
        unsafe { ntm_shim_msg_end(skb, self.hdr) };
        core::mem::forget(self);
        skb
    }

    pub(crate) fn send_reply(self, info: &Info<'_>) -> Result {
        let skb = self.finish();
        // SAFETY: the finished message's ownership passes to genlmsg_reply.
        errno(unsafe { ntm_shim_msg_reply(skb, info.0) })
    }

    /// Sends to the `events` group of `net`; no listeners (ESRCH) is not an error.
    pub(crate) fn multicast(self, net: NetNs, atomic: bool) {
        let skb = self.finish();
        // SAFETY: the finished message's ownership passes to genlmsg_multicast_netns.
        let _ = unsafe { ntm_shim_msg_multicast(skb, net.0.as_ptr(), atomic) };
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: an unsent message is ours to free.
        unsafe { ntm_shim_msg_free(self.skb.as_ptr()) }
    }
}

/// One call of a dump: the message being filled and the callback's state.
pub(crate) struct Dump<'a> {
    skb: NonNull<sk_buff>,
    cb: NonNull<netlink_callback>,
    _p: PhantomData<&'a mut netlink_callback>,
}

/// One entry being written into a dump; cancelled unless ended.
pub(crate) struct DumpEntry<'d, 'a> {
    dump: &'d mut Dump<'a>,
    hdr: *mut c_void,
}

impl<'a> Dump<'a> {
    pub(crate) fn info(&self) -> Info<'a> {
        // SAFETY: the dump's request info lives as long as the dump.
        Info(unsafe { &*ntm_shim_cb_info(self.cb.as_ptr()) })
    }

    /// `cb->args`: state kept between calls of the dump.
    pub(crate) fn args(&mut self) -> &mut [c_long; 6] {
        // SAFETY: `args` is the callback's `long args[6]`, ours while the dump call runs.
        unsafe { &mut *ntm_shim_cb_args(self.cb.as_ptr()).cast::<[c_long; 6]>() }
    }

    /// Bytes written into this call's message so far.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the message is valid for this call.
        unsafe { ntm_shim_skb_len(self.skb.as_ptr()) as usize }
    }

    /// Starts an entry; None when the message is full.
    pub(crate) fn begin(&mut self, cmd: u8) -> Option<DumpEntry<'_, 'a>> {
        // SAFETY: puts a header into the dump message.
        let hdr = unsafe { ntm_shim_msg_put_dump(self.skb.as_ptr(), self.cb.as_ptr(), cmd) };
        (!hdr.is_null()).then(|| DumpEntry { dump: self, hdr })
    }
}

impl NlWrite for DumpEntry<'_, '_> {
    fn skb(&mut self) -> *mut sk_buff {
        self.dump.skb.as_ptr()
    }
}

impl DumpEntry<'_, '_> {
    pub(crate) fn end(self) {
        // SAFETY: closes the entry whose header we put.
        unsafe { ntm_shim_msg_end(self.dump.skb.as_ptr(), self.hdr) };
        core::mem::forget(self);
    }
}

impl Drop for DumpEntry<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: removes the partial entry (from its header on) from the message.
        unsafe { ntm_shim_msg_cancel(self.dump.skb.as_ptr(), self.hdr) }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points: C calls these; they turn raw pointers into the types above at once.

#[no_mangle]
extern "C" fn ntm_rs_dev_new(dev: *mut net_device) -> c_int {
    let Some(ndev) = NonNull::new(dev).map(NetDev) else {
        return EINVAL.to_errno();
    };
    match KBox::pin_init(Device::new(ndev), GFP_KERNEL) {
        Ok(state) => {
            // SAFETY: the state is pinned for its whole life: only `ntm_rs_dev_free` turns the
            // pointer back into the box, and the box never moves its contents.
            let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(state) });
            // SAFETY: `dev` is the device being created (newlink), not yet registered.
            unsafe { ntm_shim_dev_set_state(dev, raw.cast()) };
            0
        }
        Err(e) => e.to_errno(),
    }
}

#[no_mangle]
extern "C" fn ntm_rs_dev_free(dev: *mut net_device) {
    // SAFETY: called by newlink's error path or the destructor; the device is still allocated.
    let raw = unsafe { ntm_shim_dev_state(dev) }.cast::<Device>();
    if raw.is_null() {
        return;
    }
    // SAFETY: as above; clearing first makes a second call a no-op.
    unsafe { ntm_shim_dev_set_state(dev, ptr::null_mut()) };
    // SAFETY: `raw` came from `KBox::into_raw` in `ntm_rs_dev_new`; nothing else uses it now
    // (the destructor runs after the last reference and after uninit released the sockets).
    drop(unsafe { Pin::new_unchecked(KBox::from_raw(raw)) });
}

#[no_mangle]
extern "C" fn ntm_rs_dev_open(dev: *mut net_device) -> c_int {
    // SAFETY: ndo_open on a registered device.
    match unsafe { state(dev) } {
        Some(d) => d.open().map_or_else(|e| e.to_errno(), |()| 0),
        None => ENODEV.to_errno(),
    }
}

#[no_mangle]
extern "C" fn ntm_rs_dev_stop(dev: *mut net_device) -> c_int {
    // SAFETY: ndo_stop on a registered device.
    if let Some(d) = unsafe { state(dev) } {
        d.stop();
    }
    0
}

#[no_mangle]
extern "C" fn ntm_rs_dev_uninit(dev: *mut net_device) {
    // SAFETY: ndo_uninit; the state is freed later by the destructor.
    if let Some(d) = unsafe { state(dev) } {
        d.uninit();
    }
}

#[no_mangle]
extern "C" fn ntm_rs_xmit(skb: *mut sk_buff, dev: *mut net_device) {
    // SAFETY: ndo_start_xmit hands us the skb.
    let Some(skb) = (unsafe { Skb::from_raw(skb) }) else {
        return;
    };
    // SAFETY: a registered device's state lives until its destructor.
    match unsafe { state(dev) } {
        Some(d) => crate::send::xmit(d, skb),
        None => drop(skb),
    }
}

#[no_mangle]
extern "C" fn ntm_rs_sweep(dev: *mut net_device) {
    // SAFETY: the sweep is cancelled (synchronously) in uninit, before the state is freed.
    if let Some(d) = unsafe { state(dev) } {
        crate::timers::sweep(d);
    }
}

/// The device served by a socket, under RCU.
fn sock_device<'g>(sk: *mut sock, _guard: &'g RcuGuard) -> Option<&'g Device> {
    // SAFETY: called from the socket's encap hooks, under RCU: sk_user_data is our device
    // until `SockRef::drop` clears it and waits for a grace period, and the device's state is
    // freed only after that.
    unsafe {
        let dev = ntm_shim_sock_dev(sk);
        if dev.is_null() {
            None
        } else {
            state(dev)
        }
    }
}

#[no_mangle]
extern "C" fn ntm_rs_encap_rcv(sk: *mut sock, skb: *mut sk_buff) -> c_int {
    // SAFETY: encap_rcv hands us the skb; returning 1 gives it back to UDP untouched.
    let Some(skb) = (unsafe { Skb::from_raw(skb) }) else {
        return 0;
    };
    let guard = RcuGuard::new();
    let Some(d) = sock_device(sk, &guard) else {
        skb.into_raw();
        return 1;
    };
    match crate::receive::encap_rcv(d, skb) {
        Some(skb) => {
            skb.into_raw();
            1
        }
        None => 0,
    }
}

#[no_mangle]
extern "C" fn ntm_rs_encap_destroy(sk: *mut sock) {
    let guard = RcuGuard::new();
    if let Some(d) = sock_device(sk, &guard) {
        crate::socket::closed_by_owner(d, ClosingSock(sk));
    }
}

/// Runs a netlink handler on a request (the generated `*_doit` entry points call this).
///
/// # Safety
///
/// `info` must be the request genetlink passed to a doit, valid for the call.
pub(crate) unsafe fn genl_doit(info: *mut genl_info, f: fn(&Info<'_>) -> Result) -> c_int {
    // SAFETY: the caller passes the doit's info, valid for the call's duration.
    let Some(info) = (unsafe { info.as_ref() }) else {
        return EINVAL.to_errno();
    };
    f(&Info(info)).map_or_else(|e| e.to_errno(), |()| 0)
}

/// Runs a dump handler for one message of a dump (the generated `*_dumpit` entry points).
///
/// # Safety
///
/// `skb` and `cb` must be the message and the callback state genetlink passed to a dumpit,
/// valid for the call.
pub(crate) unsafe fn genl_dumpit(
    skb: *mut sk_buff,
    cb: *mut netlink_callback,
    f: fn(&mut Dump<'_>) -> Result,
) -> c_int {
    let (Some(skb), Some(cb)) = (NonNull::new(skb), NonNull::new(cb)) else {
        return EINVAL.to_errno();
    };
    let mut dump = Dump {
        skb,
        cb,
        _p: PhantomData,
    };
    match f(&mut dump) {
        Ok(()) => dump.len() as c_int,
        Err(e) => e.to_errno(),
    }
}
