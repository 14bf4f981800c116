// SPDX-License-Identifier: GPL-2.0

//! Generic netlink: the family's registration (its op table and policies are generated into
//! ntm_nl_gen.c), requests and their attributes, replies, dumps that resume, and events; and
//! what the generated entry points (`netlink_gen.rs`) run.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use kernel::ffi::{c_char, c_int, c_long, c_void};
use kernel::prelude::*;
use kernel::str::CStr;

use super::netdev::NetNs;
use super::raw::{genl_info, net, netlink_callback, nlattr, sk_buff};
use super::{err, errno};

extern "C" {
    fn ntm_shim_genl_register() -> c_int;
    fn ntm_shim_genl_unregister();
    fn ntm_shim_info_attr(info: *const genl_info, ty: c_int) -> *mut nlattr;
    fn ntm_shim_info_net(info: *const genl_info) -> *mut net;
    fn ntm_shim_info_error(info: *const genl_info, msg: *const c_char, bad: *const nlattr);
    fn ntm_shim_info_missing(info: *const genl_info, nest: *const nlattr, ty: c_int);
    fn ntm_shim_info_parse_tunnel(
        info: *const genl_info,
        nest: *const nlattr,
        tb: *mut *mut nlattr,
    ) -> c_int;
    fn ntm_shim_nla_data(nla: *const nlattr) -> *const c_void;
    fn ntm_shim_nla_len(nla: *const nlattr) -> c_int;
    fn ntm_shim_cb_info(cb: *mut netlink_callback) -> *const genl_info;
    fn ntm_shim_cb_args(cb: *mut netlink_callback) -> *mut c_long;
    fn ntm_shim_skb_len(skb: *const sk_buff) -> kernel::ffi::c_uint;
    fn ntm_shim_msg_new(atomic: bool) -> *mut sk_buff;
    fn ntm_shim_msg_free(msg: *mut sk_buff);
    fn ntm_shim_msg_put_reply(msg: *mut sk_buff, info: *const genl_info, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_put_dump(msg: *mut sk_buff, cb: *mut netlink_callback, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_put_event(msg: *mut sk_buff, cmd: u8) -> *mut c_void;
    fn ntm_shim_msg_end(msg: *mut sk_buff, hdr: *mut c_void);
    fn ntm_shim_msg_cancel(msg: *mut sk_buff, hdr: *mut c_void);
    fn ntm_shim_msg_reply(msg: *mut sk_buff, info: *const genl_info) -> c_int;
    fn ntm_shim_msg_multicast(msg: *mut sk_buff, net: *mut net, atomic: bool) -> c_int;
    fn ntm_shim_nla_put(msg: *mut sk_buff, ty: c_int, data: *const c_void, len: c_int) -> c_int;
    fn ntm_shim_nla_put_uint(msg: *mut sk_buff, ty: c_int, value: u64) -> c_int;
    fn ntm_shim_nest_start(msg: *mut sk_buff, ty: c_int) -> *mut nlattr;
    fn ntm_shim_nest_end(msg: *mut sk_buff, nest: *mut nlattr);
}

/// Registers the generic netlink family `ntm`.
pub(crate) fn register() -> Result {
    // SAFETY: registers the shim's static family; called once from module init.
    errno(unsafe { ntm_shim_genl_register() })
}

/// Unregisters the family; waits for operations in progress.
pub(crate) fn unregister() {
    // SAFETY: only called from module exit, after a successful `register`.
    unsafe { ntm_shim_genl_unregister() }
}

/// Runs a handler on a request: what a doit entry point does.
pub(crate) fn doit(info: Info<'_>, f: fn(&Info<'_>) -> Result) -> c_int {
    f(&info).map_or_else(|e| e.to_errno(), |()| 0)
}

/// Runs a dump handler for one message of a dump: what a dumpit entry point does.
pub(crate) fn dumpit(msg: DumpMsg, cb: DumpCallback, f: fn(&mut Dump<'_>) -> Result) -> c_int {
    let mut dump = Dump {
        skb: msg.0,
        cb: cb.0,
        _p: PhantomData,
    };
    match f(&mut dump) {
        Ok(()) => dump.len() as c_int,
        Err(e) => e.to_errno(),
    }
}

/// The skb of a request, as the kernel hands it to a doit (unused: the request is in
/// [`Info`]). Only C creates these.
#[repr(transparent)]
pub(crate) struct RequestSkb {
    _skb: NonNull<sk_buff>,
}

/// The message a dumpit fills, as the kernel hands it over. Only C creates these.
#[repr(transparent)]
pub(crate) struct DumpMsg(NonNull<sk_buff>);

/// The state of a dump between its calls, as the kernel hands it to a dumpit. Only C creates
/// these.
#[repr(transparent)]
pub(crate) struct DumpCallback(NonNull<netlink_callback>);

/// A generic netlink request (doit, or the request of a dump). The kernel hands one to the
/// doit entry points, whose argument this type is.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Info<'a>(&'a genl_info);

/// An attribute of a request, valid while the request is.
#[derive(Clone, Copy)]
pub(crate) struct Attr<'a>(NonNull<nlattr>, PhantomData<&'a genl_info>);

impl<'a> Info<'a> {
    pub(crate) fn attr(&self, ty: u16) -> Option<Attr<'a>> {
        // SAFETY: the shim bounds-checks `ty` against the attrs array of the request.
        NonNull::new(unsafe { ntm_shim_info_attr(self.0, ty as c_int) })
            .map(|p| Attr(p, PhantomData))
    }

    /// The namespace of the requesting socket.
    pub(crate) fn net(&self) -> NetNs {
        // SAFETY: a request always has a namespace, alive for the request.
        unsafe { NetNs::from_raw(ntm_shim_info_net(self.0)) }.expect("a request has a namespace")
    }

    /// Sets the extack message (and the offending attribute).
    pub(crate) fn error(&self, msg: &'static CStr, bad: Option<Attr<'_>>) {
        let bad = bad.map_or(ptr::null(), |a| a.0.as_ptr().cast_const());
        // SAFETY: `msg` is static, as extack requires; `bad` is null or an attribute of this request.
        unsafe { ntm_shim_info_error(self.0, msg.as_char_ptr(), bad) }
    }

    /// Reports a missing attribute `ty` (of `nest`, or top-level).
    pub(crate) fn missing(&self, nest: Option<Attr<'_>>, ty: u16) {
        let nest = nest.map_or(ptr::null(), |a| a.0.as_ptr().cast_const());
        // SAFETY: `nest` is null or an attribute of this request.
        unsafe { ntm_shim_info_missing(self.0, nest, ty as c_int) }
    }

    /// Parses a `tunnel` nest with the tunnel policy (extack set on failure).
    pub(crate) fn parse_tunnel(&self, nest: Attr<'a>) -> Result<TunnelAttrs<'a>> {
        let mut tb = [ptr::null_mut::<nlattr>(); TUNNEL_ATTRS];
        // SAFETY: `tb` has NTM_A_TUNNEL_MAX + 1 slots, as the shim expects; `nest` belongs to
        // this request, whose lifetime bounds the parsed attributes.
        errno(unsafe { ntm_shim_info_parse_tunnel(self.0, nest.0.as_ptr(), tb.as_mut_ptr()) })?;
        Ok(TunnelAttrs(
            tb.map(|p| NonNull::new(p).map(|p| Attr(p, PhantomData))),
        ))
    }
}

/// Slots of a parsed `tunnel` nest (NTM_A_TUNNEL_MAX + 1).
const TUNNEL_ATTRS: usize = crate::netlink::tunnel::MAX as usize + 1;

pub(crate) struct TunnelAttrs<'a>([Option<Attr<'a>>; TUNNEL_ATTRS]);

impl<'a> TunnelAttrs<'a> {
    pub(crate) fn get(&self, ty: u16) -> Option<Attr<'a>> {
        self.0.get(ty as usize).copied().flatten()
    }
}

impl<'a> Attr<'a> {
    pub(crate) fn bytes(&self) -> &'a [u8] {
        // SAFETY: the attribute's payload is `nla_len` bytes at `nla_data`, validated by the
        // policy and alive as long as the request.
        unsafe {
            let p = self.0.as_ptr();
            let len = ntm_shim_nla_len(p).max(0) as usize;
            core::slice::from_raw_parts(ntm_shim_nla_data(p).cast::<u8>(), len)
        }
    }

    /// A fixed-size payload (the policy guarantees the size; None otherwise).
    pub(crate) fn array<const N: usize>(&self) -> Option<[u8; N]> {
        self.bytes().try_into().ok()
    }

    /// u32 in host order (NLA_U32).
    pub(crate) fn u32(&self) -> Option<u32> {
        self.array::<4>().map(u32::from_ne_bytes)
    }

    /// s32 in host order (NLA_S32).
    pub(crate) fn i32(&self) -> Option<i32> {
        self.array::<4>().map(i32::from_ne_bytes)
    }

    /// u16 in network order (NLA_BE16), returned in host order.
    pub(crate) fn be16(&self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }
}

/// Writing attributes into a generic netlink message.
pub(crate) trait NlWrite {
    #[doc(hidden)]
    fn skb(&mut self) -> *mut sk_buff;

    fn put(&mut self, ty: u16, data: &[u8]) -> Result {
        let skb = self.skb();
        // SAFETY: `skb` is a message being built; nla_put copies `data` (fails with EMSGSIZE
        // when full).
        errno(unsafe {
            ntm_shim_nla_put(skb, ty as c_int, data.as_ptr().cast(), data.len() as c_int)
        })
    }

    fn put_u32(&mut self, ty: u16, v: u32) -> Result {
        self.put(ty, &v.to_ne_bytes())
    }

    /// NLA_UINT: 4 or 8 bytes as needed.
    fn put_uint(&mut self, ty: u16, v: u64) -> Result {
        let skb = self.skb();
        // SAFETY: as in `put`.
        errno(unsafe { ntm_shim_nla_put_uint(skb, ty as c_int, v) })
    }

    /// A NUL-terminated string.
    fn put_str(&mut self, ty: u16, s: &[u8]) -> Result {
        let mut buf = [0u8; 256];
        let n = s.len().min(buf.len() - 1);
        buf[..n].copy_from_slice(&s[..n]);
        self.put(ty, &buf[..=n])
    }

    /// Writes a nest of attributes filled by `f`.
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self) -> Result) -> Result {
        let skb = self.skb();
        // SAFETY: as in `put`.
        let nest = unsafe { ntm_shim_nest_start(skb, ty as c_int) };
        if nest.is_null() {
            return Err(err::emsgsize());
        }
        f(self)?;
        let skb = self.skb();
        // SAFETY: closes the nest opened above in the same message.
        unsafe { ntm_shim_nest_end(skb, nest) };
        Ok(())
    }
}

/// A new message (a reply or an event), freed unless sent.
pub(crate) struct Msg {
    skb: NonNull<sk_buff>,
    hdr: *mut c_void,
}

impl NlWrite for Msg {
    fn skb(&mut self) -> *mut sk_buff {
        self.skb.as_ptr()
    }
}

impl Msg {
    fn with_header(atomic: bool, put: impl FnOnce(*mut sk_buff) -> *mut c_void) -> Result<Self> {
        // SAFETY: allocates a message of NLMSG_GOODSIZE.
        let skb = NonNull::new(unsafe { ntm_shim_msg_new(atomic) }).ok_or(ENOMEM)?;
        let hdr = put(skb.as_ptr());
        let msg = Self { skb, hdr };
        if msg.hdr.is_null() {
            return Err(err::emsgsize()); // `msg` is freed
        }
        Ok(msg)
    }

    /// A reply to `info` with command `cmd`.
    pub(crate) fn reply(info: &Info<'_>, cmd: u8) -> Result<Self> {
        // SAFETY: `skb` is the new message, `info` the live request.
        Self::with_header(false, |skb| unsafe {
            ntm_shim_msg_put_reply(skb, info.0, cmd)
        })
    }

    /// A notification for the `events` group.
    pub(crate) fn event(cmd: u8, atomic: bool) -> Result<Self> {
        // SAFETY: `skb` is the new message.
        Self::with_header(atomic, |skb| unsafe { ntm_shim_msg_put_event(skb, cmd) })
    }

    fn finish(self) -> *mut sk_buff {
        let skb = self.skb.as_ptr();
        // SAFETY: `hdr` was put into this message.
        unsafe { ntm_shim_msg_end(skb, self.hdr) };
        core::mem::forget(self);
        skb
    }

    pub(crate) fn send_reply(self, info: &Info<'_>) -> Result {
        let skb = self.finish();
        // SAFETY: the finished message's ownership passes to genlmsg_reply.
        errno(unsafe { ntm_shim_msg_reply(skb, info.0) })
    }

    /// Sends to the `events` group of `net`; no listeners (ESRCH) is not an error.
    pub(crate) fn multicast(self, net: NetNs, atomic: bool) {
        let skb = self.finish();
        // SAFETY: the finished message's ownership passes to genlmsg_multicast_netns.
        let _ = unsafe { ntm_shim_msg_multicast(skb, net.raw(), atomic) };
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: an unsent message is ours to free.
        unsafe { ntm_shim_msg_free(self.skb.as_ptr()) }
    }
}

/// One call of a dump: the message being filled and the callback's state.
pub(crate) struct Dump<'a> {
    skb: NonNull<sk_buff>,
    cb: NonNull<netlink_callback>,
    _p: PhantomData<&'a mut netlink_callback>,
}

/// One entry being written into a dump; cancelled unless ended.
pub(crate) struct DumpEntry<'d, 'a> {
    dump: &'d mut Dump<'a>,
    hdr: *mut c_void,
}

impl<'a> Dump<'a> {
    pub(crate) fn info(&self) -> Info<'a> {
        // SAFETY: the dump's request info lives as long as the dump.
        Info(unsafe { &*ntm_shim_cb_info(self.cb.as_ptr()) })
    }

    /// `cb->args`: state kept between calls of the dump.
    pub(crate) fn args(&mut self) -> &mut [c_long; 6] {
        // SAFETY: `args` is the callback's `long args[6]`, ours while the dump call runs.
        unsafe { &mut *ntm_shim_cb_args(self.cb.as_ptr()).cast::<[c_long; 6]>() }
    }

    /// Bytes written into this call's message so far.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the message is valid for this call.
        unsafe { ntm_shim_skb_len(self.skb.as_ptr()) as usize }
    }

    /// Starts an entry; None when the message is full.
    pub(crate) fn begin(&mut self, cmd: u8) -> Option<DumpEntry<'_, 'a>> {
        // SAFETY: puts a header into the dump message.
        let hdr = unsafe { ntm_shim_msg_put_dump(self.skb.as_ptr(), self.cb.as_ptr(), cmd) };
        (!hdr.is_null()).then(|| DumpEntry { dump: self, hdr })
    }
}

impl NlWrite for DumpEntry<'_, '_> {
    fn skb(&mut self) -> *mut sk_buff {
        self.dump.skb.as_ptr()
    }
}

impl DumpEntry<'_, '_> {
    pub(crate) fn end(self) {
        // SAFETY: closes the entry whose header we put.
        unsafe { ntm_shim_msg_end(self.dump.skb.as_ptr(), self.hdr) };
        core::mem::forget(self);
    }
}

impl Drop for DumpEntry<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: removes the partial entry (from its header on) from the message.
        unsafe { ntm_shim_msg_cancel(self.dump.skb.as_ptr(), self.hdr) }
    }
}
