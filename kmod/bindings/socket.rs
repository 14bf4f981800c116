// SPDX-License-Identifier: GPL-2.0

//! The UDP sockets userspace hands over (dev-set): taken over with the module's encap hook,
//! published for the data path's RCU readers, given back to plain UDP; and the socket as the
//! kernel hands it to the encap hooks.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::ffi::{c_char, c_int};
use kernel::prelude::*;
use kernel::str::CStr;

use super::netdev::{self, NetDev};
use super::raw::{net_device, sock};
use super::skb::Skb;
use super::sync::RcuGuard;
use crate::device::Device;

const AF_INET: c_int = 2;
const AF_INET6: c_int = 10;

extern "C" {
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
}

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
        let family = if ipv6 { AF_INET6 } else { AF_INET };
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
            super::sync::synchronize_net_readers();
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

impl SockHandle<'_> {
    /// The same socket.
    pub(crate) fn same(self, other: SockHandle<'_>) -> bool {
        self.0 == other.0
    }

    pub(super) fn raw(self) -> *mut sock {
        self.0.as_ptr()
    }
}

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

/// A socket as the kernel hands it to the encap hooks that `SockRef::attach` installed
/// (encap_rcv, encap_destroy). Only C creates these.
#[repr(transparent)]
pub(crate) struct EncapSock(NonNull<sock>);

impl EncapSock {
    /// The device the socket serves, if it still serves one.
    pub(crate) fn device<'g>(&self, _guard: &'g RcuGuard) -> Option<&'g Device> {
        // SAFETY: the encap hooks run while the socket is alive. Under RCU, sk_user_data is
        // our device until `SockRef::drop` clears it and waits for a grace period, and the
        // device's state is freed only after that.
        unsafe {
            let dev = ntm_shim_sock_dev(self.0.as_ptr());
            if dev.is_null() {
                None
            } else {
                netdev::state(dev)
            }
        }
    }

    /// The socket, to compare with the device's.
    pub(crate) fn closing(&self) -> ClosingSock {
        ClosingSock(self.0.as_ptr())
    }
}

/// What encap_rcv tells UDP: a datagram given back (Some) goes on to the socket untouched (1);
/// None means the module consumed it (0).
pub(crate) fn encap_verdict(skb: Option<Skb>) -> c_int {
    match skb {
        Some(skb) => {
            skb.into_raw(); // UDP owns it again
            1
        }
        None => 0,
    }
}
