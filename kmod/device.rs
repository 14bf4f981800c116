// SPDX-License-Identifier: GPL-2.0

//! The `ntm` virtual device: an L3 point-to-point interface (no link-layer header) whose
//! packets go to peers by VIP through the tunnel table. Created with `ip link add NAME type
//! ntm` in any namespace; its life: new → open (up) → stop (down: every tunnel is destroyed,
//! reason device-down) → uninit (the sockets are given back) → destructor (state freed).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kernel::ffi::c_int;
use kernel::prelude::*;

use crate::bindings::netdev::{DeadDev, DevCallback, NetDev, NewDev};
use crate::bindings::socket::SockSlot;
use crate::bindings::sync::SpinLockBh;
use crate::netlink::{self, DestroyReason};
use crate::new_spinlock_bh;
use crate::send::MissLimiter;
use crate::table::{Table, TableGuard};
use crate::timers;
use crate::tunnel::Tunnel;

/// Idle timeout until userspace sets one (the node daemon's default).
pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: u32 = 180_000;

/// Control state, guarded by the table's mutex.
pub(crate) struct DevCtl {
    /// Open (IFF_UP): tunnels may exist only while it is.
    pub(crate) up: bool,
    /// Unregistering: nothing may be added any more.
    pub(crate) dead: bool,
}

#[pin_data]
pub(crate) struct Device {
    pub(crate) ndev: NetDev,
    #[pin]
    pub(crate) table: Table,
    pub(crate) sock4: SockSlot,
    pub(crate) sock6: SockSlot,
    pub(crate) idle_timeout_ms: AtomicU32,
    /// Data packets that matched no tunnel (or were malformed).
    pub(crate) rx_orphans: AtomicU64,
    #[pin]
    pub(crate) misses: SpinLockBh<MissLimiter>,
}

impl Device {
    pub(crate) fn new(ndev: NetDev) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            ndev,
            table <- Table::new(DevCtl { up: false, dead: false })?,
            sock4: SockSlot::new(),
            sock6: SockSlot::new(),
            idle_timeout_ms: AtomicU32::new(DEFAULT_IDLE_TIMEOUT_MS),
            rx_orphans: AtomicU64::new(0),
            misses <- new_spinlock_bh!(MissLimiter::new(), "ntm_misses"),
        }? Error)
    }

    pub(crate) fn idle_timeout_ms(&self) -> u32 {
        self.idle_timeout_ms.load(Ordering::Relaxed)
    }

    /// ndo_open.
    pub(crate) fn open(&self) -> Result {
        let mut t = self.table.lock();
        if t.dev().dead {
            return Err(ENODEV);
        }
        t.dev().up = true;
        Ok(())
    }

    /// ndo_stop: the device is down, so are its tunnels.
    pub(crate) fn stop(&self) {
        let mut t = self.table.lock();
        t.dev().up = false;
        self.destroy_if(&mut t, |_| true, DestroyReason::DeviceDown);
    }

    /// ndo_uninit: nothing may be added any more; the sockets go back to plain UDP.
    pub(crate) fn uninit(&self) {
        {
            let mut t = self.table.lock();
            let ctl = t.dev();
            ctl.dead = true;
            ctl.up = false;
            self.destroy_if(&mut t, |_| true, DestroyReason::DeviceDown);
        }
        // Each waits for a grace period: no encap_rcv or transmitter sees the device after.
        drop(self.sock4.replace(None));
        drop(self.sock6.replace(None));
        self.ndev.sweep_cancel();
    }

    /// Destroys one tunnel, telling userspace why.
    pub(crate) fn destroy(
        &self,
        t: &mut TableGuard<'_>,
        id: u32,
        reason: DestroyReason,
    ) -> Option<()> {
        let tunnel = t.remove(id)?;
        netlink::notify_destroyed(self, &tunnel, reason, false);
        Some(())
    }

    /// Destroys every tunnel `doomed` picks.
    pub(crate) fn destroy_if(
        &self,
        t: &mut TableGuard<'_>,
        doomed: impl FnMut(&Tunnel) -> bool,
        reason: DestroyReason,
    ) {
        t.remove_if(doomed, |tunnel| {
            netlink::notify_destroyed(self, tunnel, reason, false)
        });
        timers::tunnels_changed(self, t);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points: the shim's newlink, net_device_ops and destructor call these.

/// newlink, before the device is registered: its state.
#[no_mangle]
extern "C" fn ntm_rs_dev_new(dev: NewDev) -> c_int {
    match KBox::pin_init(Device::new(dev.netdev()), GFP_KERNEL) {
        Ok(state) => {
            dev.set_state(state);
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// The destructor (or newlink's error path): the state goes. A second call does nothing.
#[no_mangle]
extern "C" fn ntm_rs_dev_free(dev: DeadDev) {
    drop(dev.take_state());
}

#[no_mangle]
extern "C" fn ntm_rs_dev_open(dev: DevCallback) -> c_int {
    match dev.state() {
        Some(d) => d.open().map_or_else(|e| e.to_errno(), |()| 0),
        None => ENODEV.to_errno(),
    }
}

#[no_mangle]
extern "C" fn ntm_rs_dev_stop(dev: DevCallback) -> c_int {
    if let Some(d) = dev.state() {
        d.stop();
    }
    0
}

/// ndo_uninit; the state is freed later, by the destructor.
#[no_mangle]
extern "C" fn ntm_rs_dev_uninit(dev: DevCallback) {
    if let Some(d) = dev.state() {
        d.uninit();
    }
}
