// SPDX-License-Identifier: GPL-2.0

//! Socket buffers: an owned skb, and one whose data is linear and ours to write.

use core::ptr::NonNull;

use kernel::ffi::{c_int, c_uint};
use kernel::prelude::*;

use super::errno;
use super::netdev::NetDev;
use super::raw::{net_device, sk_buff};
use crate::socket::Endpoint;

extern "C" {
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
}

/// An owned `sk_buff`: dropped with `kfree_skb` unless consumed, delivered or sent. The kernel
/// hands one over to the transmit and encap callbacks (whose argument this type is), or the
/// shim returns one.
#[repr(transparent)]
pub(crate) struct Skb(NonNull<sk_buff>);

// SAFETY: an skb we own may move between contexts.
unsafe impl Send for Skb {}

impl Skb {
    /// # Safety
    ///
    /// `skb` must be a valid skb whose ownership passes to the new value.
    pub(super) unsafe fn from_raw(skb: *mut sk_buff) -> Option<Self> {
        NonNull::new(skb).map(Self)
    }

    /// Gives up ownership (to C).
    pub(super) fn into_raw(self) -> *mut sk_buff {
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
    pub(crate) fn outer_source(&self) -> Option<Endpoint> {
        let mut addr = [0u8; 16];
        let mut port = 0u16;
        // SAFETY: the skb still carries its outer network and transport headers (receive path),
        // `addr` has room for 16 bytes.
        let family =
            unsafe { ntm_shim_skb_outer_source(self.0.as_ptr(), addr.as_mut_ptr(), &mut port) };
        Endpoint::from_raw(family, &addr, port)
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

    /// Gives up ownership (to C).
    pub(super) fn into_raw(self) -> *mut sk_buff {
        self.0.into_raw()
    }

    /// Hands the inner packet now at `data` to the stack on `dev`; false if it was dropped.
    pub(crate) fn deliver(self, dev: NetDev, ipv6: bool) -> bool {
        // SAFETY: ownership of a valid skb passes to the stack; `dev` is live.
        unsafe { ntm_shim_rx_deliver(dev.raw(), self.0.into_raw(), ipv6) == 0 }
    }
}
