//! ntm-tunnel-scale: how ntm.ko's tunnel table behaves with many tunnels (a benchmark, run by
//! `scripts/bench/throughput` in the guest, as root, in a namespace of its own).
//!
//! Creates an `ntm` device, hands it a UDP socket, then for each size of the table (1, then up
//! to N tunnels): installs the tunnels (rate), measures the kernel memory they hold (Slab and
//! vmalloc from /proc/meminfo, per tunnel), and times sends through the device to VIPs spread
//! over the table (each send is a route lookup, a table lookup by VIP, a seal and a UDP send to
//! a discard port on loopback), against the same with a one-tunnel table. Finally it sets a
//! short idle timeout and times the sweep that destroys them all, with the longest wait of a
//! netlink request made meanwhile. Prints one `SCALE key value` line per figure.

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ntmd::dataplane::genl::{NtmAttr, NtmMsg, TunnelAttr};
use ntmd::dataplane::nlsock::{GenlSocket, NlError};
use ntmd::link::Link;
use proto::netlink::cmd;

#[derive(Parser)]
struct Args {
    /// Tunnels in the large table.
    #[arg(long, default_value_t = 100_000)]
    tunnels: u32,
    /// Sends timed per table size.
    #[arg(long, default_value_t = 20_000)]
    sends: u32,
    /// The device to create.
    #[arg(long, default_value = "ntmscale0")]
    dev: String,
}

/// The VIP of tunnel `i` (100.96.0.0/11 holds 2M of them).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 96, 0, 1)) + i)
}

fn meminfo_kb(key: &str) -> anyhow::Result<u64> {
    let f = std::io::BufReader::new(std::fs::File::open("/proc/meminfo")?);
    for line in f.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            return Ok(rest.trim().trim_end_matches(" kB").parse()?);
        }
    }
    bail!("/proc/meminfo has no {key}")
}

/// Kernel memory that tunnels take: slab plus vmalloc (the bucket arrays grow into vmalloc).
fn kernel_kb() -> anyhow::Result<u64> {
    Ok(meminfo_kb("Slab")? + meminfo_kb("VmallocUsed")?)
}

fn install(nl: &mut GenlSocket, ifindex: u32, from: u32, to: u32) -> anyhow::Result<()> {
    for i in from..to {
        let t = vec![
            TunnelAttr::LocalId(i + 1),
            TunnelAttr::RemoteId(i + 1),
            TunnelAttr::Vip4(vip(i)),
            TunnelAttr::EndpointIp4(Ipv4Addr::LOCALHOST),
            TunnelAttr::EndpointPort(9),
            TunnelAttr::SendKey([7; 32]),
            TunnelAttr::RecvKey([7; 32]),
        ];
        nl.request(NtmMsg::new(cmd::TUNNEL_NEW, vec![NtmAttr::Ifindex(ifindex), NtmAttr::Tunnel(t)]), false)
            .with_context(|| format!("tunnel-new #{i}"))?;
    }
    Ok(())
}

/// Nanoseconds per send of a 64-byte datagram to VIPs of the first `n` tunnels.
fn time_sends(sock: &UdpSocket, n: u32, sends: u32) -> anyhow::Result<f64> {
    let payload = [0u8; 64];
    // A stride that visits the whole table, not one hot chain.
    let stride = 7919 % n.max(1);
    let mut i = 0u32;
    let t0 = Instant::now();
    for _ in 0..sends {
        sock.send_to(&payload, SocketAddr::from((vip(i), 9)))?;
        i = (i + stride.max(1)) % n;
    }
    Ok(t0.elapsed().as_nanos() as f64 / sends as f64)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut nl = GenlSocket::open().context("the ntm family (is ntm.ko loaded?)")?;
    let link = Link::create_ntm(&a.dev, 1420).context("creating the device")?;
    let res = run(&a, &mut nl, &link);
    let _ = link.delete();
    res
}

fn run(a: &Args, nl: &mut GenlSocket, link: &Link) -> anyhow::Result<()> {
    let encap = UdpSocket::bind("127.0.0.1:0")?;
    let dev_set = |nl: &mut GenlSocket, attrs: Vec<NtmAttr>| {
        let mut v = vec![NtmAttr::Ifindex(link.index)];
        v.extend(attrs);
        nl.request(NtmMsg::new(cmd::DEV_SET, v), false)
    };
    dev_set(nl, vec![NtmAttr::SockFd4(encap.as_raw_fd()), NtmAttr::IdleTimeoutMs(0)])?;
    link.set_addresses(Some(Ipv4Addr::new(100, 95, 255, 254)), None)?;
    link.add_routes(&["100.96.0.0/11".parse()?])?;
    // The sealed packets go to 127.0.0.1:9, where nothing listens: the ICMP errors are
    // rate limited, and the datagrams are dropped by UDP.
    let app = UdpSocket::bind("100.95.255.254:0").context("binding the app socket to the device address")?;

    install(nl, link.index, 0, 1)?;
    let one = time_sends(&app, 1, a.sends)?;

    let before = kernel_kb()?;
    let t0 = Instant::now();
    install(nl, link.index, 1, a.tunnels)?;
    let secs = t0.elapsed().as_secs_f64();
    // Freed index entries wait for a grace period: let them go before reading memory.
    std::thread::sleep(Duration::from_millis(500));
    let after = kernel_kb()?;
    let many = time_sends(&app, a.tunnels, a.sends)?;

    let dump_t0 = Instant::now();
    let dumped = nl.request(NtmMsg::new(cmd::TUNNEL_GET, vec![NtmAttr::Ifindex(link.index)]), true)?.len();
    let dump_s = dump_t0.elapsed().as_secs_f64();
    if dumped != a.tunnels as usize {
        bail!("dump returned {dumped} tunnels, want {}", a.tunnels);
    }

    // Every tunnel is idle by now: a 1 ms timeout makes the next sweep destroy them all, in id
    // order and in batches. Meanwhile a tunnel-get of the last tunnel every 10 ms measures how
    // long a netlink request waits for the table (the sweep lets requests in between batches);
    // it fails with ENOENT once the sweep reached the end.
    let last = vec![TunnelAttr::LocalId(a.tunnels)];
    let t0 = Instant::now();
    dev_set(nl, vec![NtmAttr::IdleTimeoutMs(1)])?;
    let mut worst = Duration::ZERO;
    let mut polls = 0u32;
    loop {
        let q0 = Instant::now();
        let r = nl.request(
            NtmMsg::new(cmd::TUNNEL_GET, vec![NtmAttr::Ifindex(link.index), NtmAttr::Tunnel(last.clone())]),
            false,
        );
        worst = worst.max(q0.elapsed());
        polls += 1;
        match r {
            Ok(_) => {}
            Err(NlError::Kernel { code, .. }) if code == ENOENT => break,
            Err(e) => return Err(e).context("tunnel-get during the sweep"),
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("the last tunnel is still there 900 s after the timeout was set");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let sweep_s = t0.elapsed().as_secs_f64();
    let left = nl.request(NtmMsg::new(cmd::TUNNEL_GET, vec![NtmAttr::Ifindex(link.index)]), true)?.len();
    if left != 0 {
        bail!("{left} tunnels left after the sweep");
    }

    let n = a.tunnels;
    println!("SCALE tunnels {n}");
    println!("SCALE install_per_s {:.0}", (n - 1) as f64 / secs);
    println!("SCALE kernel_bytes_per_tunnel {:.0}", (after.saturating_sub(before) * 1024) as f64 / (n - 1) as f64);
    println!("SCALE send_ns_1_tunnel {one:.0}");
    println!("SCALE send_ns_{n}_tunnels {many:.0}");
    println!("SCALE lookup_cost_ratio {:.3}", many / one);
    println!("SCALE dump_s {dump_s:.3}");
    println!("SCALE sweep_destroy_all_s {sweep_s:.3}");
    println!("SCALE sweep_us_per_tunnel {:.2}", sweep_s * 1e6 / n as f64);
    println!("SCALE netlink_wait_during_sweep_max_ms {:.1}", worst.as_secs_f64() * 1e3);
    println!("SCALE netlink_requests_during_sweep {polls}");
    Ok(())
}

/// ENOENT (Linux, every architecture), as `NlError::Kernel` reports it.
const ENOENT: i32 = 2;
