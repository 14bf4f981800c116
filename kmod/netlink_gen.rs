// SPDX-License-Identifier: GPL-2.0
// generated from kmod/spec/ntm.yaml by scripts/gen-netlink; do not edit

//! The `ntm` family's numbers, and the entry points of its operations: the op
//! table (ntm_nl_gen.c) names them, and each runs its handler in `netlink.rs`.

#![allow(dead_code)] // the module uses only some of the numbers

use kernel::ffi::c_int;

use crate::bindings::genl::{self, DumpCallback, DumpMsg, Info, RequestSkb};

/// The family's name.
pub(crate) const FAMILY_NAME: &str = "ntm";
/// The family's version.
pub(crate) const FAMILY_VERSION: u8 = 1;
/// The `events` multicast group.
pub(crate) const MCGRP_EVENTS: &str = "events";
/// `key-len`.
pub(crate) const KEY_LEN: usize = 32;
/// `label-max-len`.
pub(crate) const LABEL_MAX_LEN: usize = 255;

/// Commands and notifications.
pub(crate) mod cmd {
    /// Hands the device its UDP sockets and sets its idle timeout.
    pub(crate) const DEV_SET: u8 = 1;
    /// The device's settings and counters.
    pub(crate) const DEV_GET: u8 = 2;
    /// Installs a tunnel; a tunnel with the same VIP is replaced (destroyed with reason deleted).
    pub(crate) const TUNNEL_NEW: u8 = 3;
    /// Changes a tunnel's endpoint (the peer moved).
    pub(crate) const TUNNEL_SET: u8 = 4;
    /// One tunnel by local-id, or a dump of all of them (keys never included).
    pub(crate) const TUNNEL_GET: u8 = 5;
    /// Deletes a tunnel by local-id.
    pub(crate) const TUNNEL_DEL: u8 = 6;
    /// A tunnel is gone; `tunnel` carries local-id, label, VIPs and reason.
    pub(crate) const TUNNEL_DESTROYED_NTF: u8 = 7;
    /// A packet for a VIP with no tunnel (at most one per VIP per second, and 64 per device per
    /// second).
    pub(crate) const TUNNEL_MISS_NTF: u8 = 8;
    /// An authenticated packet came from a new address; the tunnel now sends there.
    pub(crate) const ENDPOINT_CHANGED_NTF: u8 = 9;
    /// Sends an empty authenticated packet on one tunnel (by local-id), or on every tunnel of the
    /// device when `tunnel` is absent, so that peers learn the node's new address after a move.
    /// Keepalives are not data: they do not reset the idle timer.
    pub(crate) const TUNNEL_KEEPALIVE: u8 = 10;
}

/// Attributes of the `tunnel` set.
pub(crate) mod tunnel {
    /// The receiver id of packets for this tunnel (unique per device, never 0).
    pub(crate) const LOCAL_ID: u16 = 1;
    /// The receiver id the peer expects in packets we send.
    pub(crate) const REMOTE_ID: u16 = 2;
    /// The peer's IPv4 VIP.
    pub(crate) const VIP4: u16 = 3;
    /// The peer's IPv6 VIP.
    pub(crate) const VIP6: u16 = 4;
    /// `endpoint-ip4`.
    pub(crate) const ENDPOINT_IP4: u16 = 5;
    /// `endpoint-ip6`.
    pub(crate) const ENDPOINT_IP6: u16 = 6;
    /// `endpoint-port`.
    pub(crate) const ENDPOINT_PORT: u16 = 7;
    /// ChaCha20-Poly1305 key for packets we send. Never dumped.
    pub(crate) const SEND_KEY: u16 = 8;
    /// ChaCha20-Poly1305 key for packets we receive. Never dumped.
    pub(crate) const RECV_KEY: u16 = 9;
    /// A name userspace gives the tunnel (the peer's FQDN), echoed in dumps and events.
    pub(crate) const LABEL: u16 = 10;
    /// Milliseconds since the tunnel last carried data (dumps only).
    pub(crate) const IDLE_MS: u16 = 11;
    /// `tx-packets`.
    pub(crate) const TX_PACKETS: u16 = 12;
    /// `tx-bytes`.
    pub(crate) const TX_BYTES: u16 = 13;
    /// `rx-packets`.
    pub(crate) const RX_PACKETS: u16 = 14;
    /// `rx-bytes`.
    pub(crate) const RX_BYTES: u16 = 15;
    /// Packets for this tunnel dropped (failed authentication, replays, spoofed inner source).
    pub(crate) const RX_DROPPED: u16 = 16;
    /// In tunnel-destroyed notifications.
    pub(crate) const REASON: u16 = 17;
    /// The largest attribute number of the set.
    pub(crate) const MAX: u16 = 17;
}

/// Attributes of the `ntm` set.
pub(crate) mod attr {
    /// The NTM device.
    pub(crate) const IFINDEX: u16 = 1;
    /// A bound IPv4 UDP socket of the caller, which the module takes over for encapsulation.
    pub(crate) const SOCK_FD4: u16 = 2;
    /// A bound IPv6 (v6-only) UDP socket of the caller, likewise.
    pub(crate) const SOCK_FD6: u16 = 3;
    /// Tunnels idle this long are destroyed (0 turns expiry off).
    pub(crate) const IDLE_TIMEOUT_MS: u16 = 4;
    /// `tunnel`.
    pub(crate) const TUNNEL: u16 = 5;
    /// In tunnel-miss notifications.
    pub(crate) const MISS_VIP4: u16 = 6;
    /// In tunnel-miss notifications.
    pub(crate) const MISS_VIP6: u16 = 7;
    /// Data packets that matched no tunnel (dev-get).
    pub(crate) const RX_ORPHANS: u16 = 8;
    /// The largest attribute number of the set.
    pub(crate) const MAX: u16 = 8;
}

/// Why a tunnel went away.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum DestroyReason {
    /// It carried no data for the device's idle timeout.
    Idle = 0,
    /// Userspace deleted it (or replaced it with another tunnel to the same peer).
    Deleted = 1,
    /// Its device went down or away.
    DeviceDown = 2,
    /// The module could not keep it (e.g. the socket went away).
    Error = 3,
}

/// dev-set (do).
#[no_mangle]
extern "C" fn ntm_nl_dev_set_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::dev_set)
}

/// dev-get (do).
#[no_mangle]
extern "C" fn ntm_nl_dev_get_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::dev_get)
}

/// tunnel-new (do).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_new_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::tunnel_new)
}

/// tunnel-set (do).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_set_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::tunnel_set)
}

/// tunnel-get (do).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_get_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::tunnel_get)
}

/// tunnel-get (dump).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_get_dumpit(msg: DumpMsg, cb: DumpCallback) -> c_int {
    genl::dumpit(msg, cb, super::tunnel_get_dump)
}

/// tunnel-del (do).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_del_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::tunnel_del)
}

/// tunnel-keepalive (do).
#[no_mangle]
extern "C" fn ntm_nl_tunnel_keepalive_doit(_skb: RequestSkb, info: Info<'_>) -> c_int {
    genl::doit(info, super::tunnel_keepalive)
}
