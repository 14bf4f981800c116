// SPDX-License-Identifier: GPL-2.0

//! Routes from a device's sockets to tunnel endpoints, cached per tunnel (the WireGuard model:
//! a `dst_cache`), and sending a sealed packet along one.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use kernel::ffi::c_int;
use kernel::prelude::*;

use super::errno;
use super::netdev::NetDev;
use super::raw::{dst_cache, dst_entry, net_device, sk_buff, sock};
use super::skb::WritableSkb;
use super::socket::SockHandle;
use super::sync::RcuGuard;
use crate::socket::Endpoint;

extern "C" {
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
        // freed once a grace period has passed since they left the table; dst_cache_destroy
        // may run in the RCU callback that drops the last reference).
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

impl<'g> SockHandle<'g> {
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
                self.raw(),
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
                self.raw(),
                skb.into_raw(),
                route.family,
                route.dst,
                route.saddr.as_ptr(),
                route.daddr.as_ptr(),
                route.port,
            )
        }
    }
}
