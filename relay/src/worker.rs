//! The forwarding threads: each one receives a batch of datagrams on its socket (`recvmmsg`),
//! asks the table what to do with each, and sends the batch on (`sendmmsg`, one call per address
//! family), from the buffers it received them into. No allocation per datagram or per batch.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage};

use crate::table::{DropReason, Table, Verdict};

/// Datagrams per batch.
pub const BATCH: usize = 64;
/// Largest datagram forwarded; longer ones arrive truncated and are dropped.
pub const BUF: usize = 2048;

/// One worker's counters, read by the metrics (each worker has its own: no shared cache line).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Datagrams received.
    pub rx_packets: AtomicU64,
    /// Bytes received (UDP payloads).
    pub rx_bytes: AtomicU64,
    /// Datagrams forwarded to the other side of a session.
    pub fwd_packets: AtomicU64,
    /// Bytes forwarded.
    pub fwd_bytes: AtomicU64,
    /// Binds accepted (and answered).
    pub binds: AtomicU64,
    /// Datagrams dropped, by [`DropReason::ALL`]'s order.
    pub drops: [AtomicU64; DropReason::ALL.len()],
    /// Datagrams whose send failed (no route to the destination, say).
    pub send_errors: AtomicU64,
}

impl WorkerStats {
    fn count_drop(&self, why: DropReason) {
        let i = DropReason::ALL.iter().position(|d| *d == why).expect("listed");
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A datagram for the control plane: who sent it, on which family, and its bytes.
pub type ControlMsg = (SocketAddr, Vec<u8>);

/// The sockets a worker uses: the one it receives on, and one of each family to send from
/// (its own for its family).
pub struct Sockets {
    /// Where this worker receives.
    pub rx: UdpSocket,
    /// Sends to IPv4 destinations, if the relay has an IPv4 socket.
    pub tx4: Option<UdpSocket>,
    /// Sends to IPv6 destinations, if the relay has an IPv6 socket.
    pub tx6: Option<UdpSocket>,
}

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    s.as_sockaddr_in6().map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
}

/// Where a datagram of the batch goes.
#[derive(Clone, Copy)]
enum Out {
    None,
    /// Buffer `i` of the batch, as received.
    Forward(SockaddrStorage, bool),
    /// A bind's answer, kept in `acks[i]`.
    Ack(SockaddrStorage, bool),
}

/// Runs a worker for ever (until the process exits).
pub fn run(socks: Sockets, table: Arc<Table>, control: SyncSender<ControlMsg>, stats: Arc<WorkerStats>) {
    let mut bufs: Box<[[u8; BUF]; BATCH]> = Box::new([[0u8; BUF]; BATCH]);
    let mut acks = [[0u8; proto::wire::BIND_LEN]; BATCH];
    let mut rx_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx_hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let rx_fd = socks.rx.as_raw_fd();
    loop {
        let mut got = [(0usize, None::<SocketAddr>, false); BATCH];
        let n = {
            let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            match recvmmsg(rx_fd, &mut rx_hdrs, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(res) => {
                    let mut n = 0;
                    for (i, m) in res.enumerate() {
                        let trunc = m.flags.contains(MsgFlags::MSG_TRUNC);
                        got[i] = (m.bytes, m.address.as_ref().and_then(to_std), trunc);
                        n = i + 1;
                    }
                    n
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("relay receive: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            }
        };
        let now = Instant::now();
        let mut out = [Out::None; BATCH];
        for i in 0..n {
            let (len, from, trunc) = got[i];
            stats.rx_packets.fetch_add(1, Ordering::Relaxed);
            stats.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
            let Some(from) = from else { continue };
            if trunc {
                stats.count_drop(DropReason::Malformed);
                continue;
            }
            let b = &bufs[i][..len];
            match table.handle(from, b, now) {
                Verdict::Forward(to) => {
                    stats.fwd_packets.fetch_add(1, Ordering::Relaxed);
                    stats.fwd_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    out[i] = Out::Forward(SockaddrStorage::from(to), to.is_ipv4());
                }
                Verdict::BindAck(a) => {
                    stats.binds.fetch_add(1, Ordering::Relaxed);
                    acks[i] = a;
                    out[i] = Out::Ack(SockaddrStorage::from(from), from.is_ipv4());
                }
                Verdict::Control => {
                    if let Err(TrySendError::Full(_)) = control.try_send((from, b.to_vec())) {
                        stats.count_drop(DropReason::Overload);
                    }
                }
                Verdict::Drop(why) => stats.count_drop(why),
            }
        }
        for v4 in [true, false] {
            let sock = if v4 { socks.tx4.as_ref() } else { socks.tx6.as_ref() };
            let mut iovs: [[IoSlice; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
            let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
            let mut k = 0;
            for i in 0..n {
                match out[i] {
                    Out::Forward(a, f) if f == v4 => {
                        iovs[k] = [IoSlice::new(&bufs[i][..got[i].0])];
                        addrs[k] = Some(a);
                        k += 1;
                    }
                    Out::Ack(a, f) if f == v4 => {
                        iovs[k] = [IoSlice::new(&acks[i])];
                        addrs[k] = Some(a);
                        k += 1;
                    }
                    _ => {}
                }
            }
            if k == 0 {
                continue;
            }
            let Some(sock) = sock else {
                stats.send_errors.fetch_add(k as u64, Ordering::Relaxed);
                continue;
            };
            send_all(sock.as_raw_fd(), &mut tx_hdrs, &iovs[..k], &addrs[..k], &stats);
        }
    }
}

/// Sends every message, skipping (and counting) one whose send fails.
fn send_all<S: SockaddrLike + Copy>(
    fd: i32,
    hdrs: &mut MultiHeaders<S>,
    iovs: &[[IoSlice; 1]],
    addrs: &[Option<S>],
    stats: &WorkerStats,
) {
    let mut at = 0;
    while at < iovs.len() {
        match sendmmsg(fd, hdrs, iovs[at..].iter(), &addrs[at..], [], MsgFlags::empty()) {
            Ok(r) => {
                let sent = r.count();
                at += sent.max(1);
                if sent == 0 {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => {
                // The first message of the rest could not go (e.g. no route): skip it.
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                at += 1;
            }
        }
    }
}
