// SPDX-License-Identifier: GPL-2.0

//! ntm.ko: the NTMobile data plane.
//!
//! Virtual-IP devices (`ip link add ntm0 type ntm`) whose packets travel to peers in UDP
//! tunnels (ChaCha20-Poly1305, WireGuard's packet shape), over sockets the node daemon hands
//! over; a tunnel table with idle expiry; and the generic netlink family `ntm` through which
//! the daemon drives it and learns what the module did. This file only sets up and tears down,
//! in dependency order. One file per concern: `device`, `socket`, `send`, `receive`, `tunnel`,
//! `table`, `timers`, `netlink` (with its generated half, `netlink_gen.rs`), `crypto`, `replay`;
//! every raw binding and every `unsafe` is in `bindings/` (with the C shim, `ntm_shim.c`).

use kernel::prelude::*;

use bindings::{genl, netdev, sync};

mod bindings;
mod crypto;
mod device;
mod netlink;
mod receive;
mod replay;
mod send;
mod socket;
mod table;
mod timers;
mod tunnel;

module! {
    type: Ntm,
    name: "ntm",
    author: "NTM project",
    description: "NTMobile data plane: virtual-IP devices, UDP tunnels, tunnel table",
    license: "GPL",
}

struct Ntm;

impl kernel::Module for Ntm {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        crypto::self_test()?;
        genl::register()?;
        if let Err(e) = netdev::link_register() {
            genl::unregister();
            return Err(e);
        }
        pr_info!("loaded: link kind \"ntm\", generic netlink family \"ntm\"\n");
        Ok(Ntm)
    }
}

impl Drop for Ntm {
    fn drop(&mut self) {
        // Devices first (their tunnels go with reason device-down, still reported), then the
        // family, then whatever RCU callbacks are still pending.
        netdev::link_unregister();
        genl::unregister();
        sync::rcu_barrier();
        pr_info!("unloaded\n");
    }
}
