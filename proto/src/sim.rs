//! A simulated network with a fake clock, for tests that drive sans-IO endpoints (DC cores, node
//! cores, or a daemon's whole event handler) through real exchanges without sockets or root:
//! datagrams are delayed by 1 to 20 ms (so they overtake each other) and lost at a chosen rate,
//! deterministically for a seed. (Feature `sim`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dc::{DcCommand, DcCore};
use crate::exchange::{Now, Transmit};
use crate::registry::MemRegistry;

/// Something with an address on the simulated network.
pub trait Endpoint {
    /// Its address.
    fn addr(&self) -> SocketAddr;
    /// A datagram arrived.
    fn datagram(&mut self, from: SocketAddr, payload: &[u8], now: Now);
    /// A datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When its next timer expires.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Its timer expired.
    fn timeout(&mut self, now: Now);
}

/// A DC on the simulated network; other zones' DCs are found in `zones` (what DNS would say).
pub struct SimDc {
    /// The DC's core.
    pub core: DcCore<MemRegistry>,
    /// Its address.
    pub addr: SocketAddr,
    /// Zone → DC address, for the lookups of other zones' DCs.
    pub zones: HashMap<String, SocketAddr>,
    now: Option<Now>,
}

impl SimDc {
    /// A DC at `addr`.
    pub fn new(core: DcCore<MemRegistry>, addr: SocketAddr) -> SimDc {
        SimDc { core, addr, zones: HashMap::new(), now: None }
    }

    fn commands(&mut self, now: Now) {
        self.now = Some(now);
        while let Some(DcCommand::Locate { id, target }) = self.core.poll_command() {
            let found = self.zones.iter().find(|(z, _)| target.ends_with(&format!(".{z}")));
            let r = found.map(|(z, a)| (z.clone(), vec![*a])).ok_or_else(|| "not an NTM name".to_string());
            self.core.dc_located(id, r, now);
        }
    }
}

impl Endpoint for SimDc {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn datagram(&mut self, from: SocketAddr, payload: &[u8], now: Now) {
        self.core.handle_datagram(from, payload, now);
        self.commands(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }
    fn timeout(&mut self, now: Now) {
        self.core.handle_timeout(now);
        self.commands(now);
    }
}

/// A deterministic xorshift generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (not 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The network and its clock.
pub struct Net {
    t0: Instant,
    now: Duration,
    rng: Rng,
    /// Percent of datagrams lost.
    pub loss: u64,
    queue: Vec<(Duration, u64, SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    /// Datagrams handed to the network, lost ones included.
    pub sent: u64,
    /// Datagrams the network dropped (by the `loss` draw).
    pub lost: u64,
}

impl Net {
    /// A network losing `loss` percent of datagrams, with randomness from `seed`.
    pub fn new(seed: u64, loss: u64) -> Net {
        Net {
            t0: Instant::now(),
            now: Duration::ZERO,
            rng: Rng::new(seed),
            loss,
            queue: Vec::new(),
            seq: 0,
            sent: 0,
            lost: 0,
        }
    }

    /// The simulated time.
    pub fn now(&self) -> Now {
        Now { mono: self.t0 + self.now, unix_us: 1_800_000_000_000_000 + self.now.as_micros() as u64 }
    }

    /// Time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    fn send(&mut self, src: SocketAddr, t: Transmit) {
        self.sent += 1;
        if self.rng.chance(self.loss) {
            self.lost += 1;
            return;
        }
        let delay = Duration::from_millis(1 + self.rng.next_u64() % 20);
        self.seq += 1;
        self.queue.push((self.now + delay, self.seq, src, t.dst, t.payload));
    }

    fn collect(&mut self, endpoints: &mut [&mut dyn Endpoint]) {
        for e in endpoints.iter_mut() {
            let src = e.addr();
            while let Some(t) = e.poll_transmit() {
                self.send(src, t);
            }
        }
    }

    /// Runs until `done` holds (checked after every step) or `limit` of simulated time has
    /// passed; true if `done` held.
    pub fn run_until(
        &mut self,
        endpoints: &mut [&mut dyn Endpoint],
        limit: Duration,
        mut done: impl FnMut(&mut [&mut dyn Endpoint]) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            let now = self.now();
            for e in endpoints.iter_mut() {
                if e.poll_timeout().is_some_and(|t| t <= now.mono) {
                    e.timeout(now);
                }
            }
            self.collect(endpoints);
            if done(endpoints) {
                return true;
            }
            self.queue.sort_by_key(|(t, seq, ..)| (*t, *seq));
            if let Some(pos) = self.queue.iter().position(|(t, ..)| *t <= self.now) {
                let (_, _, src, dst, payload) = self.queue.remove(pos);
                if let Some(e) = endpoints.iter_mut().find(|e| e.addr() == dst) {
                    e.datagram(src, &payload, now);
                }
                continue;
            }
            if self.now >= end {
                return false;
            }
            let timers =
                endpoints.iter().filter_map(|e| e.poll_timeout()).map(|t| t.saturating_duration_since(self.t0));
            let next = self.queue.iter().map(|q| q.0).chain(timers).min().unwrap_or(end);
            self.now = next.max(self.now + Duration::from_micros(100)).min(end);
        }
    }
}
