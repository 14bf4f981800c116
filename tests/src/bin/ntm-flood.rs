//! ntm-flood: floods a responder's signaling port (a DC's 7500/udp) with datagrams at a paced
//! rate, for `scripts/bench/flood`. Loopback and the lab's namespaces only: it sends to
//! `--target` and nowhere else.
//!
//! Kinds of flood:
//!
//! * `garbage`: random datagrams with plausible first bytes (types 1 to 6, version 1, zero
//!   reserved bytes, the sizes each type has); a pool of 4096, cycled.
//! * `replay`: one valid handshake initiation, sent again and again: a registration of a real
//!   node (`--node-config`: its `ntmd.toml`, for its name, private key and DC key), made with
//!   `Initiator::start`, so its `mac1` is valid. Its timestamp is `--replay-age-s` old (default
//!   60 s): a captured registration, which the DC refuses as a replay (older than 30 s behind
//!   the node's newest) instead of moving the node to the flood's address.
//! * `fresh`: distinct valid initiations (valid `mac1` for `--dc-key`) under attacker-made keys,
//!   each a `Register` of `--fqdn` from a fresh random static key: a pool of `--pool` of them
//!   (default 20 000, built on both cores, about 100 µs each), cycled. `--pool-cache FILE`
//!   keeps the pool across runs (rebuilt when the DC key or the pool size differ).
//!
//! The datagrams leave from one UDP socket per `--sources` address (port chosen by the
//! kernel, connected to the target), in turn, by `sendmmsg` batches paced to `--rate` packets a
//! second (`--rate 0`: as fast as possible) for `--secs` seconds (`--secs 0`: only build the
//! pool, e.g. to fill the cache). Nothing is read from the sockets (cookie replies pile up and
//! are dropped by the kernel). At the end one line on stdout:
//!
//! ```text
//! FLOOD kind=fresh sources=16 asked=100000 sent=998720 secs=10.001 rate=99862 errors=0 pool=20000 behind=0
//! ```
//!
//! `behind`: packets the pacing gave up on after falling more than 100 ms behind (the sender
//! could not keep up).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use nix::libc;
use proto::exchange::{Initiator, Now, TsSource};
use proto::keys::{PublicKey, SecretKey};
use proto::msg::{Register, Request};
use rand::{Rng, RngCore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Garbage,
    Replay,
    Fresh,
}

#[derive(Parser)]
#[command(about = "Floods a signaling port with garbage, a replayed initiation or fresh initiations")]
struct Args {
    /// Where the datagrams go (a DC's signaling address).
    #[arg(long)]
    target: SocketAddr,
    /// What to send.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Packets a second (0: as fast as possible).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to send, in seconds (0: build the pool only).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Source addresses, comma-separated: one socket each, used in turn (default: the
    /// unspecified address of the target's family).
    #[arg(long, value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// The responder's public key (base64, or a file holding it): for `fresh` (and `replay`
    /// without `--node-config`).
    #[arg(long)]
    dc_key: Option<String>,
    /// A node's ntmd.toml (fqdn, private_key, dc_public_key): the node whose registration
    /// `replay` sends.
    #[arg(long)]
    node_config: Option<PathBuf>,
    /// The name the `fresh` initiations register (any: the DC refuses them all after the
    /// handshake, NotEnrolled).
    #[arg(long, default_value = "cam.home.ntm.test")]
    fqdn: String,
    /// Addresses the registrations report (ip:port, comma-separated).
    #[arg(long, value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    /// Age of the replayed registration's timestamp, in seconds.
    #[arg(long, default_value_t = 60)]
    replay_age_s: u64,
    /// Distinct initiations of a `fresh` flood.
    #[arg(long, default_value_t = 20_000)]
    pool: usize,
    /// File that keeps the `fresh` pool across runs.
    #[arg(long)]
    pool_cache: Option<PathBuf>,
    /// Datagrams per sendmmsg (default: about 0.5 ms of the rate, 1 to 64).
    #[arg(long)]
    batch: Option<usize>,
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A key given inline (base64) or as a file holding it.
fn read_key(s: &str) -> anyhow::Result<String> {
    if Path::new(s).is_file() {
        Ok(std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?.trim().to_string())
    } else {
        Ok(s.trim().to_string())
    }
}

/// One valid initiation of `request` from `local` to `remote`, its timestamp `ts_us`.
fn initiation(local: &SecretKey, remote: PublicKey, request: Request, dst: SocketAddr, ts_us: u64) -> Vec<u8> {
    let mut ini: Initiator<()> = Initiator::default();
    let mut ts = TsSource::default();
    let id = rand::thread_rng().gen_range(1..=u32::MAX);
    let now = Now { mono: Instant::now(), unix_us: ts_us };
    ini.start((), id, dst, remote, request, local, &mut ts, now).expect("a handshake with a usable key").payload
}

/// Random datagrams whose first bytes look like ours.
fn garbage(n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| {
            let t: u8 = rng.gen_range(1..=6);
            let len = match t {
                1 => rng.gen_range(8 + 96 + 32..=400),
                2 => rng.gen_range(12 + 48..=300),
                3 => 64,
                4 => rng.gen_range(32..=1400),
                _ => 32,
            };
            let mut p = vec![0u8; len];
            rng.fill_bytes(&mut p);
            p[0] = t;
            // Mostly well-formed headers, now and then not.
            if rng.gen_bool(0.8) {
                p[1] = if t == 4 { 0 } else { 1 };
                p[2] = 0;
                p[3] = 0;
            }
            p
        })
        .collect()
}

const CACHE_MAGIC: &[u8; 8] = b"NTMFLD01";

fn load_pool(path: &Path, key: &PublicKey, want: usize) -> Option<Vec<Vec<u8>>> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 44 || &b[..8] != CACHE_MAGIC || b[8..40] != key.0 {
        return None;
    }
    let n = u32::from_le_bytes(b[40..44].try_into().ok()?) as usize;
    if n != want {
        return None;
    }
    let mut pool = Vec::with_capacity(n);
    let mut at = 44;
    for _ in 0..n {
        let len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        pool.push(b.get(at + 2..at + 2 + len)?.to_vec());
        at += 2 + len;
    }
    Some(pool)
}

fn save_pool(path: &Path, key: &PublicKey, pool: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut b = Vec::with_capacity(44 + pool.iter().map(|p| p.len() + 2).sum::<usize>());
    b.extend_from_slice(CACHE_MAGIC);
    b.extend_from_slice(&key.0);
    b.extend_from_slice(&(pool.len() as u32).to_le_bytes());
    for p in pool {
        b.extend_from_slice(&(p.len() as u16).to_le_bytes());
        b.extend_from_slice(p);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &b).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `n` initiations under fresh random keys, on every core.
fn fresh_pool(n: usize, dc: PublicKey, fqdn: &str, addrs: &[SocketAddr], dst: SocketAddr) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                s.spawn(move || {
                    (0..count)
                        .map(|_| {
                            let req = Request::Register(Register { fqdn: fqdn.to_string(), addrs: addrs.to_vec() });
                            initiation(&SecretKey::generate(), dc, req, dst, unix_us())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("pool thread")).collect()
    })
}

fn build_pool(a: &Args) -> anyhow::Result<Vec<Vec<u8>>> {
    match a.kind {
        Kind::Garbage => Ok(garbage(4096)),
        Kind::Replay => {
            let (fqdn, secret, dc) = match &a.node_config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let t: toml::Table = text.parse().with_context(|| format!("parsing {}", path.display()))?;
                    let s = |k: &str| -> anyhow::Result<String> {
                        t.get(k)
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                            .with_context(|| format!("{}: no string {k}", path.display()))
                    };
                    let secret = match s("private_key") {
                        Ok(k) => k,
                        Err(_) => read_key(&s("private_key_file")?)?,
                    };
                    let dc = match &a.dc_key {
                        Some(k) => read_key(k)?,
                        None => s("dc_public_key")?,
                    };
                    (s("fqdn")?, secret, dc)
                }
                None => bail!("--kind replay needs --node-config (the node's ntmd.toml)"),
            };
            let secret = SecretKey::from_base64(&secret).context("the node's private key")?;
            let dc = PublicKey::from_base64(&dc).context("the DC's public key")?;
            let ts = unix_us().saturating_sub(a.replay_age_s * 1_000_000);
            let req = Request::Register(Register { fqdn, addrs: a.addrs.clone() });
            Ok(vec![initiation(&secret, dc, req, a.target, ts)])
        }
        Kind::Fresh => {
            let Some(k) = &a.dc_key else { bail!("--kind fresh needs --dc-key") };
            let dc = PublicKey::from_base64(&read_key(k)?).context("the DC's public key")?;
            if a.pool == 0 {
                bail!("--pool must be at least 1");
            }
            if let Some(pool) = a.pool_cache.as_deref().and_then(|p| load_pool(p, &dc, a.pool)) {
                eprintln!(
                    "ntm-flood: {} fresh initiations from {}",
                    pool.len(),
                    a.pool_cache.as_ref().unwrap().display()
                );
                return Ok(pool);
            }
            let t0 = Instant::now();
            let pool = fresh_pool(a.pool, dc, &a.fqdn, &a.addrs, a.target);
            eprintln!(
                "ntm-flood: built {} fresh initiations in {:.1} s ({:.0} µs each)",
                pool.len(),
                t0.elapsed().as_secs_f64(),
                t0.elapsed().as_secs_f64() * 1e6 / pool.len() as f64
            );
            if let Some(p) = &a.pool_cache {
                save_pool(p, &dc, &pool)?;
            }
            Ok(pool)
        }
    }
}

/// Message headers over the pool, `extra` more at the end repeating its start, so that any
/// `batch` ≤ `extra` consecutive ones can go in one `sendmmsg` from any index.
struct Batches {
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
}

impl Batches {
    fn new(pool: &mut [Vec<u8>], extra: usize) -> Self {
        let len = pool.len();
        let total = len + extra;
        let mut iovs: Vec<libc::iovec> = (0..total)
            .map(|i| {
                let p = &mut pool[i % len];
                libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: p.len() }
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Self { _iovs: iovs, msgs, len }
    }

    /// Sends `n` datagrams starting at pool index `at` on the connected socket `fd`.
    fn send(&mut self, fd: i32, at: usize, n: usize) -> std::io::Result<usize> {
        debug_assert!(at < self.len && at + n <= self.msgs.len());
        // SAFETY: the headers point into `_iovs` and the pool, both alive and unmoved while
        // `self` is (the pool is borrowed by the caller for as long); n entries from `at` exist.
        let r = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr().add(at), n as u32, 0) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(a.secs >= 0.0 && a.secs.is_finite()) {
        bail!("--secs must be a number of seconds ≥ 0");
    }
    let mut pool = build_pool(&a)?;
    if a.secs == 0.0 {
        println!("FLOOD kind={:?} pool={} (built only)", a.kind, pool.len());
        return Ok(());
    }
    let sources = if a.sources.is_empty() {
        vec![if a.target.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        }]
    } else {
        a.sources.clone()
    };
    let socks = sources
        .iter()
        .map(|ip| {
            let s = UdpSocket::bind(SocketAddr::new(*ip, 0)).with_context(|| format!("binding {ip}"))?;
            s.connect(a.target).with_context(|| format!("connecting to {}", a.target))?;
            Ok(s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batch = a.batch.unwrap_or(if a.rate == 0 { 64 } else { (a.rate / 2000) as usize }).clamp(1, 64);
    let pool_len = pool.len();
    let mut b = Batches::new(&mut pool, batch);

    let secs = Duration::from_secs_f64(a.secs);
    let start = Instant::now();
    let (mut sent, mut errors, mut behind, mut at, mut sock) = (0u64, 0u64, 0u64, 0usize, 0usize);
    // Packets the pacing owes: rate × elapsed, less what was sent and what was given up on.
    let mut credit_base = 0u64;
    loop {
        let el = start.elapsed();
        if el >= secs {
            break;
        }
        if a.rate > 0 {
            let due = (el.as_secs_f64() * a.rate as f64) as u64;
            let owed = due.saturating_sub(sent + credit_base);
            if owed > a.rate / 10 {
                // More than 100 ms behind: give up on the backlog instead of bursting.
                let skip = owed - a.rate / 10;
                behind += skip;
                credit_base += skip;
            }
            if owed < batch as u64 {
                // Until the next batch is due.
                let next = (sent + credit_base + batch as u64) as f64 / a.rate as f64;
                let wait = next - el.as_secs_f64();
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait.min(0.01)));
                }
                continue;
            }
        }
        match b.send(socks[sock].as_raw_fd(), at, batch) {
            Ok(n) => {
                sent += n as u64;
                at = (at + n) % pool_len;
            }
            Err(e) => {
                errors += 1;
                if e.raw_os_error() != Some(libc::ENOBUFS) && e.raw_os_error() != Some(libc::EAGAIN) {
                    // ECONNREFUSED and the like (an ICMP error from the target): go on.
                    if errors == 1 {
                        eprintln!("ntm-flood: send: {e}");
                    }
                }
            }
        }
        sock = (sock + 1) % socks.len();
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "FLOOD kind={} sources={} asked={} sent={} secs={:.3} rate={:.0} errors={} pool={} behind={}",
        format!("{:?}", a.kind).to_lowercase(),
        socks.len(),
        a.rate,
        sent,
        el,
        sent as f64 / el,
        errors,
        pool_len,
        behind
    );
    Ok(())
}
