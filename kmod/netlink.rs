// SPDX-License-Identifier: GPL-2.0

//! The generic netlink family `ntm` (kmod/spec/ntm.yaml): the handlers of its operations and
//! the notifications it multicasts on `events`. The numbers, the policies, the op table and the
//! entry points that call these handlers are generated from the spec (scripts/gen-netlink:
//! netlink_gen.rs, ntm_nl_gen.c); every rejection here names its reason in extack. Operations
//! are admin-only (GENL_ADMIN_PERM) and find the device by ifindex in the caller's namespace.

use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

use crate::bindings::err;
use crate::bindings::genl::{Attr, Dump, Info, Msg, NlWrite, TunnelAttrs};
use crate::bindings::netdev::DevRef;
use crate::bindings::route::DstCache;
use crate::bindings::socket::SockRef;
use crate::bindings::time;
use crate::crypto::Key;
use crate::device::Device;
use crate::send;
use crate::socket::{self, Endpoint};
use crate::table::TableGuard;
use crate::timers;
use crate::tunnel::{Tunnel, TunnelConfig, Vip};

#[path = "netlink_gen.rs"]
mod gen;

pub(crate) use gen::{attr, cmd, tunnel, DestroyReason};

/// An extack message, prefixed like NL_SET_ERR_MSG_MOD.
macro_rules! msg {
    ($s:literal) => {
        kernel::c_str!(concat!("ntm: ", $s))
    };
}

fn reject(info: &Info<'_>, m: &'static CStr, bad: Option<Attr<'_>>, e: Error) -> Error {
    info.error(m, bad);
    e
}

/// The device named by the request's ifindex, in the caller's namespace.
fn device(info: &Info<'_>) -> Result<DevRef> {
    let Some(a) = info.attr(attr::IFINDEX) else {
        info.missing(None, attr::IFINDEX);
        return Err(reject(info, msg!("missing ifindex"), None, EINVAL));
    };
    let ifindex = a.u32().ok_or(EINVAL)?;
    DevRef::get(info.net(), ifindex).ok_or_else(|| {
        reject(
            info,
            msg!("no ntm device with this ifindex in this namespace"),
            Some(a),
            ENODEV,
        )
    })
}

/// The request's `tunnel` nest, parsed.
fn tunnel_attrs<'a>(info: &Info<'a>) -> Result<(Attr<'a>, TunnelAttrs<'a>)> {
    let Some(nest) = info.attr(attr::TUNNEL) else {
        info.missing(None, attr::TUNNEL);
        return Err(reject(info, msg!("missing tunnel"), None, EINVAL));
    };
    Ok((nest, info.parse_tunnel(nest)?))
}

fn required<'a>(
    info: &Info<'_>,
    nest: Attr<'_>,
    tb: &TunnelAttrs<'a>,
    ty: u16,
    m: &'static CStr,
) -> Result<Attr<'a>> {
    tb.get(ty).ok_or_else(|| {
        info.missing(Some(nest), ty);
        reject(info, m, None, EINVAL)
    })
}

/// Rejects any attribute of the nest other than those allowed.
fn only(info: &Info<'_>, tb: &TunnelAttrs<'_>, allowed: &[u16], m: &'static CStr) -> Result {
    for ty in 1..=tunnel::MAX {
        if let Some(a) = tb.get(ty) {
            if !allowed.contains(&ty) {
                return Err(reject(info, m, Some(a), EINVAL));
            }
        }
    }
    Ok(())
}

fn endpoint(info: &Info<'_>, nest: Attr<'_>, tb: &TunnelAttrs<'_>) -> Result<Endpoint> {
    let port = required(
        info,
        nest,
        tb,
        tunnel::ENDPOINT_PORT,
        msg!("missing endpoint-port"),
    )?;
    let port = port.be16().ok_or(EINVAL)?;
    match (tb.get(tunnel::ENDPOINT_IP4), tb.get(tunnel::ENDPOINT_IP6)) {
        (Some(a), None) => {
            let addr: [u8; 4] = a.array().ok_or(EINVAL)?;
            if addr == [0; 4] {
                return Err(reject(
                    info,
                    msg!("endpoint-ip4 0.0.0.0 is not an address"),
                    Some(a),
                    EINVAL,
                ));
            }
            Ok(Endpoint::V4 { addr, port })
        }
        (None, Some(a)) => {
            let addr: [u8; 16] = a.array().ok_or(EINVAL)?;
            if addr == [0; 16] {
                return Err(reject(
                    info,
                    msg!("endpoint-ip6 :: is not an address"),
                    Some(a),
                    EINVAL,
                ));
            }
            Ok(Endpoint::V6 { addr, port })
        }
        (Some(_), Some(b)) => Err(reject(
            info,
            msg!("give endpoint-ip4 or endpoint-ip6, not both"),
            Some(b),
            EINVAL,
        )),
        (None, None) => {
            info.missing(Some(nest), tunnel::ENDPOINT_IP4);
            Err(reject(
                info,
                msg!("missing endpoint-ip4 or endpoint-ip6"),
                None,
                EINVAL,
            ))
        }
    }
}

fn key(
    info: &Info<'_>,
    nest: Attr<'_>,
    tb: &TunnelAttrs<'_>,
    ty: u16,
    m: &'static CStr,
) -> Result<Key> {
    let a = required(info, nest, tb, ty, m)?;
    Ok(Key::new(a.array().ok_or(EINVAL)?))
}

/// The device is open and not going away (table locked).
fn check_usable(info: &Info<'_>, t: &TableGuard<'_>) -> Result {
    if t.dev_ref().dead {
        return Err(reject(info, msg!("device is going away"), None, ENODEV));
    }
    if !t.dev_ref().up {
        return Err(reject(info, msg!("device is down"), None, err::enetdown()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Operations

/// dev-set: sockets (fd -1 gives one back) and the idle timeout.
pub(crate) fn dev_set(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let fd4 = info.attr(attr::SOCK_FD4);
    let fd6 = info.attr(attr::SOCK_FD6);
    let timeout = info.attr(attr::IDLE_TIMEOUT_MS);
    if fd4.is_none() && fd6.is_none() && timeout.is_none() {
        return Err(reject(
            info,
            msg!("nothing to set: give sock-fd4, sock-fd6 or idle-timeout-ms"),
            None,
            EINVAL,
        ));
    }
    let mut t = dev.table.lock();
    if t.dev_ref().dead {
        return Err(reject(info, msg!("device is going away"), None, ENODEV));
    }
    // Take over both sockets before changing anything: a failure leaves the device as it was.
    let mut changes = [None, None];
    for (i, (a, ipv6)) in [(fd4, false), (fd6, true)].into_iter().enumerate() {
        if let Some(a) = a {
            let fd = a.i32().ok_or(EINVAL)?;
            changes[i] = socket::take(dev.ndev, fd, ipv6)
                .map_err(|e| reject(info, e.why, Some(a), e.err))?;
        }
    }
    let mut old: [Option<SockRef>; 2] = [None, None];
    let mut sweep = false;
    for (i, change) in changes.into_iter().enumerate() {
        if let Some(change) = change {
            old[i] = socket::apply(&dev, &mut t, change, i == 1);
            sweep = true;
        }
    }
    if sweep {
        // Routes were looked up for the sockets given back (their binding, mark, interface).
        t.for_each(|tun| tun.forget_routes());
    }
    if let Some(a) = timeout {
        dev.idle_timeout_ms.store(
            a.u32().ok_or(EINVAL)?,
            core::sync::atomic::Ordering::Relaxed,
        );
        sweep = true;
    }
    if sweep {
        // The sweep computes the next deadline, and watches the sockets now attached.
        timers::timeout_changed(&dev);
    }
    drop(t);
    drop(old); // waits for readers of the sockets given back
    Ok(())
}

/// dev-get: settings and counters.
pub(crate) fn dev_get(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let mut m = Msg::reply(info, cmd::DEV_GET)?;
    m.put_u32(attr::IFINDEX, dev.ndev.ifindex())?;
    m.put_u32(attr::IDLE_TIMEOUT_MS, dev.idle_timeout_ms())?;
    m.put_uint(
        attr::RX_ORPHANS,
        dev.rx_orphans.load(core::sync::atomic::Ordering::Relaxed),
    )?;
    m.send_reply(info)
}

/// tunnel-new: installs a tunnel, replacing those to the same VIPs.
pub(crate) fn tunnel_new(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let (nest, tb) = tunnel_attrs(info)?;
    let id_attr = required(info, nest, &tb, tunnel::LOCAL_ID, msg!("missing local-id"))?;
    let local_id = id_attr.u32().ok_or(EINVAL)?;
    let remote_id = required(
        info,
        nest,
        &tb,
        tunnel::REMOTE_ID,
        msg!("missing remote-id"),
    )?
    .u32()
    .ok_or(EINVAL)?;
    let vip4: Option<[u8; 4]> = tb.get(tunnel::VIP4).and_then(|a| a.array());
    let vip6: Option<[u8; 16]> = tb.get(tunnel::VIP6).and_then(|a| a.array());
    if vip4.is_none() && vip6.is_none() {
        info.missing(Some(nest), tunnel::VIP4);
        return Err(reject(
            info,
            msg!("a tunnel needs vip4 or vip6"),
            None,
            EINVAL,
        ));
    }
    if vip4 == Some([0; 4]) {
        return Err(reject(
            info,
            msg!("vip4 0.0.0.0 is not a peer"),
            tb.get(tunnel::VIP4),
            EINVAL,
        ));
    }
    if vip6 == Some([0; 16]) {
        return Err(reject(
            info,
            msg!("vip6 :: is not a peer"),
            tb.get(tunnel::VIP6),
            EINVAL,
        ));
    }
    let endpoint = endpoint(info, nest, &tb)?;
    let send_key = key(info, nest, &tb, tunnel::SEND_KEY, msg!("missing send-key"))?;
    let recv_key = key(info, nest, &tb, tunnel::RECV_KEY, msg!("missing recv-key"))?;
    let mut label = KVec::new();
    if let Some(a) = tb.get(tunnel::LABEL) {
        let b = a.bytes();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        label.extend_from_slice(&b[..end], GFP_KERNEL)?;
    }
    let cfg = TunnelConfig {
        local_id,
        remote_id,
        vip4,
        vip6,
        endpoint,
        send_key,
        recv_key,
        label,
        routes: DstCache::new()?,
    };
    let new = Arc::pin_init(Tunnel::new(cfg), GFP_KERNEL)?;

    let mut t = dev.table.lock();
    check_usable(info, &t)?;
    let same4 = vip4
        .and_then(|a| t.find_vip(Vip::V4(a)))
        .map(|x| x.local_id);
    let same6 = vip6
        .and_then(|a| t.find_vip(Vip::V6(a)))
        .map(|x| x.local_id);
    if t.get(local_id).is_some() && same4 != Some(local_id) && same6 != Some(local_id) {
        return Err(reject(
            info,
            msg!("local-id is in use by a tunnel to another peer"),
            Some(id_attr),
            EEXIST,
        ));
    }
    if [same4, same6]
        .into_iter()
        .flatten()
        .filter_map(|id| t.get(id))
        .any(|old| old.shares_keys(&new))
    {
        return Err(reject(
            info,
            msg!("the tunnel this one replaces has the same send-key or recv-key: a new tunnel needs new keys"),
            tb.get(tunnel::SEND_KEY),
            EEXIST,
        ));
    }
    let prepared = t.prepare(new)?;
    for id in [same4, same6].into_iter().flatten() {
        dev.destroy(&mut t, id, DestroyReason::Deleted);
    }
    t.insert(prepared);
    timers::tunnels_changed(&dev, &t);
    Ok(())
}

/// The tunnel `id` (from `id_attr`), or ENOENT with an extack naming the attribute.
fn by_local_id<'t>(
    info: &Info<'_>,
    t: &'t TableGuard<'_>,
    id_attr: Attr<'_>,
    id: u32,
) -> Result<&'t Arc<Tunnel>> {
    t.get(id).ok_or_else(|| {
        reject(
            info,
            msg!("no tunnel with this local-id"),
            Some(id_attr),
            ENOENT,
        )
    })
}

/// tunnel-set: the peer moved.
pub(crate) fn tunnel_set(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let (nest, tb) = tunnel_attrs(info)?;
    only(
        info,
        &tb,
        &[
            tunnel::LOCAL_ID,
            tunnel::ENDPOINT_IP4,
            tunnel::ENDPOINT_IP6,
            tunnel::ENDPOINT_PORT,
        ],
        msg!("tunnel-set changes only the endpoint (tunnel-new replaces a tunnel)"),
    )?;
    let id_attr = required(info, nest, &tb, tunnel::LOCAL_ID, msg!("missing local-id"))?;
    let id = id_attr.u32().ok_or(EINVAL)?;
    let ep = endpoint(info, nest, &tb)?;
    let t = dev.table.lock();
    if t.dev_ref().dead {
        return Err(reject(info, msg!("device is going away"), None, ENODEV));
    }
    let tun = by_local_id(info, &t, id_attr, id)?;
    tun.set_endpoint(ep);
    Ok(())
}

/// tunnel-get (do): one tunnel by local-id.
pub(crate) fn tunnel_get(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let (nest, tb) = tunnel_attrs(info)?;
    only(
        info,
        &tb,
        &[tunnel::LOCAL_ID],
        msg!("a tunnel is selected by local-id only"),
    )?;
    let id_attr = required(info, nest, &tb, tunnel::LOCAL_ID, msg!("missing local-id"))?;
    let id = id_attr.u32().ok_or(EINVAL)?;
    let t = dev.table.lock();
    let tun = by_local_id(info, &t, id_attr, id)?;
    let mut m = Msg::reply(info, cmd::TUNNEL_GET)?;
    put_tunnel(&mut m, dev.ndev.ifindex(), tun, Fill::Full(time::jiffies()))?;
    drop(t);
    m.send_reply(info)
}

/// tunnel-get (dump): every tunnel in local-id order; cb->args[0] is where to resume,
/// cb->args[1] says the walk is over.
pub(crate) fn tunnel_get_dump(dump: &mut Dump<'_>) -> Result {
    if dump.args()[1] != 0 {
        return Ok(());
    }
    let info = dump.info();
    let dev = device(&info)?;
    let start = dump.args()[0] as u32;
    let ifindex = dev.ndev.ifindex();
    let now = time::jiffies();
    let mut t = dev.table.lock();
    let resume = t.walk_from(start, |tun| {
        let Some(mut e) = dump.begin(cmd::TUNNEL_GET) else {
            return false;
        };
        if put_tunnel(&mut e, ifindex, tun, Fill::Full(now)).is_err() {
            return false; // cancelled: it goes into the next message
        }
        e.end();
        true
    });
    drop(t);
    match resume {
        Some(id) => dump.args()[0] = id as _,
        None => dump.args()[1] = 1,
    }
    Ok(())
}

/// tunnel-del: destroys a tunnel (reason deleted).
pub(crate) fn tunnel_del(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let (nest, tb) = tunnel_attrs(info)?;
    only(
        info,
        &tb,
        &[tunnel::LOCAL_ID],
        msg!("a tunnel is selected by local-id only"),
    )?;
    let id_attr = required(info, nest, &tb, tunnel::LOCAL_ID, msg!("missing local-id"))?;
    let id = id_attr.u32().ok_or(EINVAL)?;
    let mut t = dev.table.lock();
    dev.destroy(&mut t, id, DestroyReason::Deleted)
        .ok_or_else(|| {
            reject(
                info,
                msg!("no tunnel with this local-id"),
                Some(id_attr),
                ENOENT,
            )
        })?;
    timers::tunnels_changed(&dev, &t);
    Ok(())
}

/// tunnel-keepalive: an empty authenticated packet on one tunnel (local-id), or on all of them.
pub(crate) fn tunnel_keepalive(info: &Info<'_>) -> Result {
    let dev = device(info)?;
    let one = match info.attr(attr::TUNNEL) {
        None => None,
        Some(nest) => {
            let tb = info.parse_tunnel(nest)?;
            only(
                info,
                &tb,
                &[tunnel::LOCAL_ID],
                msg!("a tunnel is selected by local-id only"),
            )?;
            let id_attr = required(info, nest, &tb, tunnel::LOCAL_ID, msg!("missing local-id"))?;
            Some((id_attr, id_attr.u32().ok_or(EINVAL)?))
        }
    };
    let t = dev.table.lock();
    if t.dev_ref().dead {
        return Err(reject(info, msg!("device is going away"), None, ENODEV));
    }
    match one {
        Some((id_attr, id)) => {
            let tun = by_local_id(info, &t, id_attr, id)?;
            send::keepalive(&dev, tun).map_err(|e| {
                reject(
                    info,
                    msg!("keepalive not sent (no socket for the endpoint's family, or no route)"),
                    Some(id_attr),
                    e,
                )
            })
        }
        None => {
            // Best effort: a tunnel whose endpoint cannot be reached now is counted by the device
            // (tx carrier errors) and does not stop the others.
            t.for_each(|tun| {
                let _ = send::keepalive(&dev, tun);
            });
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// What a tunnel message carries.
enum Fill {
    /// Replies and dumps: everything but keys; jiffies now, for idle-ms.
    Full(u64),
    /// tunnel-destroyed-ntf.
    Destroyed(DestroyReason),
    /// endpoint-changed-ntf.
    Endpoint(Endpoint),
}

fn put_endpoint<W: NlWrite>(w: &mut W, ep: Endpoint) -> Result {
    match ep {
        Endpoint::V4 { addr, port } => {
            w.put(tunnel::ENDPOINT_IP4, &addr)?;
            w.put(tunnel::ENDPOINT_PORT, &port.to_be_bytes())
        }
        Endpoint::V6 { addr, port } => {
            w.put(tunnel::ENDPOINT_IP6, &addr)?;
            w.put(tunnel::ENDPOINT_PORT, &port.to_be_bytes())
        }
    }
}

fn put_tunnel<W: NlWrite>(w: &mut W, ifindex: u32, t: &Tunnel, fill: Fill) -> Result {
    w.put_u32(attr::IFINDEX, ifindex)?;
    w.nest(attr::TUNNEL, |w| {
        w.put_u32(tunnel::LOCAL_ID, t.local_id)?;
        if let Some(a) = t.vip4 {
            w.put(tunnel::VIP4, &a)?;
        }
        if let Some(a) = t.vip6 {
            w.put(tunnel::VIP6, &a)?;
        }
        if !t.label.is_empty() {
            w.put_str(tunnel::LABEL, &t.label)?;
        }
        match fill {
            Fill::Full(now) => {
                use core::sync::atomic::Ordering::Relaxed;
                w.put_u32(tunnel::REMOTE_ID, t.remote_id)?;
                put_endpoint(w, t.endpoint())?;
                w.put_u32(tunnel::IDLE_MS, time::jiffies_to_msecs(t.idle(now)))?;
                w.put_uint(tunnel::TX_PACKETS, t.stats.tx_packets.load(Relaxed))?;
                w.put_uint(tunnel::TX_BYTES, t.stats.tx_bytes.load(Relaxed))?;
                w.put_uint(tunnel::RX_PACKETS, t.stats.rx_packets.load(Relaxed))?;
                w.put_uint(tunnel::RX_BYTES, t.stats.rx_bytes.load(Relaxed))?;
                w.put_uint(tunnel::RX_DROPPED, t.stats.rx_dropped.load(Relaxed))
            }
            Fill::Destroyed(reason) => w.put_u32(tunnel::REASON, reason as u32),
            Fill::Endpoint(ep) => put_endpoint(w, ep),
        }
    })
}

fn event(dev: &Device, cmd: u8, atomic: bool, fill: impl FnOnce(&mut Msg) -> Result) {
    let Ok(mut m) = Msg::event(cmd, atomic) else {
        return;
    };
    if fill(&mut m).is_ok() {
        m.multicast(dev.ndev.net(), atomic);
    }
}

/// tunnel-destroyed-ntf: local-id, label, VIPs and the reason.
pub(crate) fn notify_destroyed(dev: &Device, t: &Tunnel, reason: DestroyReason, atomic: bool) {
    event(dev, cmd::TUNNEL_DESTROYED_NTF, atomic, |m| {
        put_tunnel(m, dev.ndev.ifindex(), t, Fill::Destroyed(reason))
    });
}

/// endpoint-changed-ntf, from the receive path.
pub(crate) fn notify_endpoint(dev: &Device, t: &Tunnel, ep: Endpoint) {
    event(dev, cmd::ENDPOINT_CHANGED_NTF, true, |m| {
        put_tunnel(m, dev.ndev.ifindex(), t, Fill::Endpoint(ep))
    });
}

/// tunnel-miss-ntf, from the transmit path (rate limited by the caller).
pub(crate) fn notify_miss(dev: &Device, vip: Vip) {
    event(dev, cmd::TUNNEL_MISS_NTF, true, |m| {
        m.put_u32(attr::IFINDEX, dev.ndev.ifindex())?;
        match vip {
            Vip::V4(a) => m.put(attr::MISS_VIP4, &a),
            Vip::V6(a) => m.put(attr::MISS_VIP6, &a),
        }
    });
}
