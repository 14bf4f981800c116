// SPDX-License-Identifier: GPL-2.0

//! Time in jiffies: now, and conversions from and to milliseconds.

use kernel::ffi::c_ulong;

extern "C" {
    fn ntm_shim_jiffies() -> c_ulong;
    fn ntm_shim_msecs_to_jiffies(ms: u32) -> c_ulong;
    fn ntm_shim_jiffies_to_msecs(j: c_ulong) -> u32;
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
