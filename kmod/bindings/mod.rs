// SPDX-License-Identifier: GPL-2.0

//! The binding layer: every raw declaration of ntm.ko, and the only place that holds raw C
//! pointers or writes `unsafe`.
//!
//! The C half is `ntm_shim.c` (declared in `ntm_shim.h`; each file here declares the shim
//! functions of its subject, in the header's order). Only opaque pointers and scalars cross. On
//! top of the declarations, each file builds the safe types the rest of the module is written
//! in:
//!
//! - [`sync`]: RCU read-side sections, bottom halves off, spinlocks taken with `_bh`;
//! - [`time`]: jiffies;
//! - [`aead`]: the kernel's ChaCha20-Poly1305;
//! - [`netdev`]: the link kind, the ntm net_device, device references by ifindex, and the
//!   device as the kernel hands it to its callbacks;
//! - [`skb`]: owned socket buffers;
//! - [`socket`]: the UDP sockets taken over from userspace, published for RCU readers;
//! - [`route`]: routes to endpoints and their per-tunnel cache;
//! - [`genl`]: the generic netlink family: requests, attributes, replies, dumps, events;
//! - [`rcu_index`]: a hash index that readers search under RCU without a lock.
//!
//! C calls into Rust through `extern "C"` entry points that live next to the code they enter
//! (`device.rs`, `send.rs`, `receive.rs`, `socket.rs`, `timers.rs`, the generated
//! `netlink_gen.rs`). Their arguments are the `#[repr(transparent)]` types defined here, which
//! only C creates: the entry points themselves are safe Rust.

use kernel::ffi::c_int;
use kernel::prelude::*;

pub(crate) mod aead;
pub(crate) mod genl;
pub(crate) mod netdev;
pub(crate) mod rcu_index;
pub(crate) mod route;
pub(crate) mod skb;
pub(crate) mod socket;
pub(crate) mod sync;
pub(crate) mod time;

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

/// A C return code: negative errnos are errors.
fn errno(rc: c_int) -> Result {
    if rc < 0 {
        Err(Error::from_errno(rc))
    } else {
        Ok(())
    }
}
