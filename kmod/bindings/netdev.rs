// SPDX-License-Identifier: GPL-2.0

//! Network devices: the `ntm` link kind, the ntm net_device and its counters, references on a
//! device found by ifindex, and the device as the kernel hands it to the module's callbacks
//! (types only C creates, which carry what each callback may do with the device's state).

use core::pin::Pin;
use core::ptr::{self, NonNull};

use kernel::ffi::{c_int, c_uint, c_ulong, c_void};
use kernel::prelude::*;

use super::errno;
use super::raw::{net, net_device};
use crate::device::Device;

extern "C" {
    fn ntm_shim_link_register() -> c_int;
    fn ntm_shim_link_unregister();
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
}

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

// SAFETY: a namespace pointer is only passed back to C.
unsafe impl Send for NetNs {}
// SAFETY: as above.
unsafe impl Sync for NetNs {}

impl NetNs {
    /// # Safety
    ///
    /// `net` must be a live namespace, for as long as the value is used.
    pub(super) unsafe fn from_raw(net: *mut net) -> Option<Self> {
        NonNull::new(net).map(Self)
    }

    pub(super) fn raw(self) -> *mut net {
        self.0.as_ptr()
    }
}

/// An ntm net_device. Only created by the binding layer from pointers the kernel hands to the
/// module's callbacks, and stored only in that device's own [`Device`], which the device's
/// destructor frees before the net_device itself: so it is valid whenever it is reachable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetDev(NonNull<net_device>);

// SAFETY: a net_device is used from any CPU; the operations below are all safe concurrently.
unsafe impl Send for NetDev {}
// SAFETY: as above.
unsafe impl Sync for NetDev {}

impl NetDev {
    pub(super) fn raw(self) -> *mut net_device {
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

/// The Rust state of a device.
///
/// # Safety
///
/// `dev` must be a live ntm net_device, and the returned reference must not be used after
/// the device's destructor (callbacks of the device are all done by then).
pub(super) unsafe fn state<'a>(dev: *mut net_device) -> Option<&'a Device> {
    // SAFETY: the caller guarantees `dev` is a live ntm device; its state is either null or
    // the box `NewDev::set_state` stored, freed only by `DeadDev::take_state`.
    unsafe { ntm_shim_dev_state(dev).cast::<Device>().as_ref() }
}

/// The device being created, as newlink hands it over (`ntm_rs_dev_new`) before registering
/// it. Only C creates these.
#[repr(transparent)]
pub(crate) struct NewDev(NonNull<net_device>);

impl NewDev {
    pub(crate) fn netdev(&self) -> NetDev {
        NetDev(self.0)
    }

    /// Attaches the device's state, which lives until the destructor takes it back.
    pub(crate) fn set_state(&self, state: Pin<KBox<Device>>) {
        // SAFETY: the state stays pinned: only `DeadDev::take_state` turns the pointer back
        // into the box, pinned again, and the box never moves its contents.
        let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(state) });
        // SAFETY: the device is being created (newlink), not yet registered: nothing reads
        // its state concurrently.
        unsafe { ntm_shim_dev_set_state(self.0.as_ptr(), raw.cast()) };
    }
}

/// A live device, as the kernel hands it to its callbacks (ndo_open, ndo_stop, ndo_uninit,
/// ndo_start_xmit, the sweep work). Only C creates these.
#[repr(transparent)]
pub(crate) struct DevCallback(NonNull<net_device>);

impl DevCallback {
    /// The device's state, for the callback's duration.
    pub(crate) fn state(&self) -> Option<&Device> {
        // SAFETY: these callbacks get a live ntm device; its destructor, which frees the
        // state, runs after them all (the sweep is cancelled in ndo_uninit), and the result
        // cannot outlive the callback's argument.
        unsafe { state(self.0.as_ptr()) }
    }
}

/// A device no callback runs on any more, as its destructor (or newlink's error path) hands
/// it over (`ntm_rs_dev_free`). Only C creates these.
#[repr(transparent)]
pub(crate) struct DeadDev(NonNull<net_device>);

impl DeadDev {
    /// Takes the device's state back (None when already taken, or never set).
    pub(crate) fn take_state(&self) -> Option<Pin<KBox<Device>>> {
        let dev = self.0.as_ptr();
        // SAFETY: the device is still allocated; nothing else uses its state any more.
        let raw = unsafe { ntm_shim_dev_state(dev) }.cast::<Device>();
        if raw.is_null() {
            return None;
        }
        // SAFETY: as above; clearing first makes a second call return None.
        unsafe { ntm_shim_dev_set_state(dev, ptr::null_mut()) };
        // SAFETY: `raw` came from `KBox::into_raw` in `NewDev::set_state` and was pinned there.
        Some(unsafe { Pin::new_unchecked(KBox::from_raw(raw)) })
    }
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
        let dev = NonNull::new(unsafe { ntm_shim_dev_get(net.raw(), ifindex) })?;
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
