//! Generic netlink sockets for the `ntm` family: a blocking request socket (requests are a
//! syscall's worth of work, done from the daemon's core task) and an async event socket
//! subscribed to the `events` group, which reports overruns so that the caller re-dumps.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use proto::netlink::{FAMILY_NAME, MCGRP_EVENTS};
use tokio::io::unix::AsyncFd;

use super::genl::NtmMsg;

const GENL_ID_CTRL: u16 = 0x10;
/// Offset of extack TLVs in a capped error message: nlmsghdr, error code, the request's nlmsghdr.
const EXTACK_OFFSET: usize = 16 + 4 + 16;
/// ... and in a done message: nlmsghdr, error code.
const DONE_EXTACK_OFFSET: usize = 16 + 4;
/// How long a request waits for each of its replies: the module answers at once, but its
/// table mutex may be held by a sweep for a while (a second, under TCG at 100 000 tunnels).
const REPLY_TIMEOUT_S: i64 = 10;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why a netlink exchange with the `ntm` family failed.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel knows no `ntm` family: the module is not loaded.
    #[error("the ntm generic netlink family is not registered (is ntm.ko loaded?)")]
    FamilyMissing,
    /// A socket call failed.
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered a request with an error.
    #[error("the module refused: {msg} (errno {code})")]
    Kernel {
        /// The errno, positive (`ENOENT` for a tunnel or device that is not there).
        code: i32,
        /// The module's extended ack message, or else the errno's text.
        msg: String,
    },
    /// A reply that does not parse.
    #[error("malformed netlink message: {0}")]
    Decode(String),
    /// The event socket's buffer overran (or an event did not parse): notifications were
    /// lost, and the tunnel table must be dumped again.
    #[error("events were lost (socket overrun)")]
    Overrun,
    /// No reply within `REPLY_TIMEOUT_S` (10 s).
    #[error("the module did not answer within {REPLY_TIMEOUT_S} s")]
    Timeout,
}

fn open_socket() -> Result<Socket, NlError> {
    let mut s = Socket::new(NETLINK_GENERIC)?;
    s.bind_auto()?;
    s.set_ext_ack(true)?;
    s.set_cap_ack(true)?;
    Ok(s)
}

/// The module's text from the extack TLVs at `offset` of an error or done message, if it sent one.
fn extack_msg(raw: &[u8], offset: usize) -> Option<String> {
    let flags = u16::from_ne_bytes(raw.get(6..8)?.try_into().ok()?);
    if flags & netlink_packet_core::NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut tlvs = raw.get(offset..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let v = &tlvs[4..len];
            return Some(String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or_default()).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

/// The sequence number in a message's header.
fn seq_of(raw: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(raw.get(8..12)?.try_into().ok()?))
}

/// Splits a datagram into its netlink messages (with their raw bytes, for extack).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let (m, rest) = buf.split_at(len);
        let pad = ((len + 3) & !3) - len;
        buf = rest.get(pad..).unwrap_or_default();
        Some(m)
    })
}

/// A blocking request socket for the `ntm` family, with the family's id and `events` group
/// resolved. Each request waits at most `REPLY_TIMEOUT_S` (10 s) for each of its replies.
pub struct GenlSocket {
    sock: Socket,
    family: u16,
    events_group: Option<u32>,
    seq: u32,
}

impl GenlSocket {
    /// Opens a socket and resolves the family (and its `events` group).
    pub fn open() -> Result<GenlSocket, NlError> {
        let sock = open_socket()?;
        // A reply that never comes must not hang the caller (the daemon's core task).
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT_S, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        let mut s = GenlSocket { sock, family: GENL_ID_CTRL, events_group: None, seq: 0 };
        let mut req = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(GenlMessage::from_payload(GenlCtrl {
                cmd: GenlCtrlCmd::GetFamily,
                nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_string())],
            })),
        );
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let replies = match s.exchange(req, GENL_ID_CTRL) {
            Err(NlError::Kernel { code, .. }) if code == nix::errno::Errno::ENOENT as i32 => {
                return Err(NlError::FamilyMissing)
            }
            r => r?,
        };
        for g in replies {
            for nla in g.nlas {
                match nla {
                    GenlCtrlAttrs::FamilyId(id) => s.family = id,
                    GenlCtrlAttrs::McastGroups(groups) => {
                        for g in groups {
                            let name = g.iter().find_map(|a| match a {
                                McastGrpAttrs::Name(n) => Some(n.clone()),
                                _ => None,
                            });
                            let id = g.iter().find_map(|a| match a {
                                McastGrpAttrs::Id(i) => Some(*i),
                                _ => None,
                            });
                            if name.as_deref() == Some(MCGRP_EVENTS) {
                                s.events_group = id;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if s.family == GENL_ID_CTRL {
            return Err(NlError::FamilyMissing);
        }
        Ok(s)
    }

    /// The family's id, which the kernel assigned when the module registered it.
    pub fn family(&self) -> u16 {
        self.family
    }

    /// The id of the family's `events` multicast group, which [`EventSocket::open`] joins
    /// (none if the module did not announce one).
    pub fn events_group(&self) -> Option<u32> {
        self.events_group
    }

    /// Sends a command and returns the replies (all parts of a dump when `dump`).
    pub fn request(&mut self, msg: NtmMsg, dump: bool) -> Result<Vec<NtmMsg>, NlError> {
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(GenlMessage::from_payload(msg)));
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        let family = self.family;
        self.exchange(nl, family).map(|v| v.into_iter().collect())
    }

    fn exchange<F>(&mut self, mut nl: NetlinkMessage<GenlMessage<F>>, family: u16) -> Result<Vec<F>, NlError>
    where
        F: netlink_packet_generic::GenlFamily
            + netlink_packet_core::Emitable
            + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        nl.header.sequence_number = self.seq;
        if let NetlinkPayload::InnerMessage(g) = &mut nl.payload {
            g.set_resolved_family_id(family);
        }
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NlError::Timeout,
                _ => NlError::Io(e),
            })?;
            for raw in messages(&data) {
                // Left over from an earlier exchange: skipped before it is decoded, so that a
                // message we cannot read does not fail this request.
                if seq_of(raw) != Some(self.seq) {
                    continue;
                }
                let msg =
                    NetlinkMessage::<GenlMessage<F>>::deserialize(raw).map_err(|e| NlError::Decode(e.to_string()))?;
                match msg.payload {
                    // Replies (one, or the parts of a dump) come before the ack or the done.
                    NetlinkPayload::InnerMessage(g) => out.push(g.payload),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            let msg = extack_msg(raw, EXTACK_OFFSET)
                                .unwrap_or_else(|| io::Error::from_raw_os_error(-code.get()).to_string());
                            return Err(NlError::Kernel { code: -code.get(), msg });
                        }
                    },
                    // A dump that failed part-way ends with its error in the done message.
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        let msg = extack_msg(raw, DONE_EXTACK_OFFSET)
                            .unwrap_or_else(|| io::Error::from_raw_os_error(-d.code).to_string());
                        return Err(NlError::Kernel { code: -d.code, msg });
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Overrun(_) => return Err(NlError::Overrun),
                    _ => {}
                }
            }
        }
    }
}

/// A socket subscribed to the family's `events` group.
pub struct EventSocket {
    fd: AsyncFd<Socket>,
}

impl EventSocket {
    /// A non-blocking socket subscribed to multicast `group` (from
    /// [`GenlSocket::events_group`]), asking for a 1 MiB receive buffer to ride out bursts of
    /// events.
    pub fn open(group: u32) -> Result<EventSocket, NlError> {
        let sock = open_socket()?;
        sock.add_membership(group)?;
        let _ = sock.set_rx_buf_sz(1 << 20);
        sock.set_non_blocking(true)?;
        // SAFETY: the socket owns its fd, which stays open and the same for as long as the
        // AsyncFd that now owns the socket lives.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(|e| NlError::Io(io::Error::other(e.to_string())))?;
        Ok(EventSocket { fd })
    }

    /// The next batch of notifications; `Overrun` when the kernel dropped some (re-dump then).
    pub async fn recv(&self) -> Result<Vec<NtmMsg>, NlError> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().recv_from_full()) {
                Ok(Ok((data, _))) => {
                    let mut out = Vec::new();
                    for raw in messages(&data) {
                        match NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(raw) {
                            Ok(m) => {
                                if let NetlinkPayload::InnerMessage(g) = m.payload {
                                    out.push(g.payload);
                                }
                            }
                            // It may have been a tunnel-destroyed: as good as lost, re-dump.
                            Err(e) => {
                                tracing::warn!("an ntm event that does not parse ({e}): treated as lost");
                                return Err(NlError::Overrun);
                            }
                        }
                    }
                    return Ok(out);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                    return Err(NlError::Overrun)
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_messages_and_reads_extack() {
        // An error message: nlmsghdr (len 48, type 2, flags ACK_TLVS|CAPPED), error -22, the
        // request's header, then a MSG TLV "bad key".
        let mut m = Vec::new();
        m.extend_from_slice(&48u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&(netlink_packet_core::NLM_F_ACK_TLVS | netlink_packet_core::NLM_F_CAPPED).to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(-22i32).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(b"bad key\0");
        assert_eq!(m.len(), 48);
        let two: Vec<u8> = [m.clone(), m.clone()].concat();
        let parts: Vec<_> = messages(&two).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(extack_msg(parts[1], EXTACK_OFFSET).as_deref(), Some("bad key"));
        assert_eq!(seq_of(parts[0]), Some(0));
    }

    #[test]
    fn truncated_extack_is_no_message() {
        // A TLV (not the message one) whose length fits but whose padding does not: skipped
        // without reading past the end, and no message found.
        let mut m = Vec::new();
        m.extend_from_slice(&41u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&netlink_packet_core::NLM_F_ACK_TLVS.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(-22i32).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&5u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.push(7);
        assert_eq!(extack_msg(&m, EXTACK_OFFSET), None);
        assert_eq!(extack_msg(&m[..20], EXTACK_OFFSET), None);
    }
}
