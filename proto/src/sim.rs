//! A simulated network with a fake clock, for tests that drive sans-IO endpoints (DC cores, node
//! cores, or a daemon's whole event handler) through real exchanges without sockets or root:
//! datagrams are delayed by 1 to 20 ms (so they overtake each other) and lost at a chosen rate,
//! deterministically for a seed. NATs sit in front of chosen hosts ([`Nat`]): the kinds real
//! paths offer (a home router's, a port-randomizing one, a cloud's 1:1), each forgetting an idle
//! UDP mapping after its timeout. (Feature `sim`.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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

/// How a NAT maps and filters UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// A home router (Linux masquerade): one mapping per inside socket, its port kept when free;
    /// only addresses the inside socket has sent to get in.
    Restricted,
    /// A port-randomizing router (masquerade `fully-random`): a new random port for every
    /// destination, and only that destination gets in (hole punching fails).
    Symmetric,
    /// A cloud provider's elastic address: the outside address is the inside host's, ports
    /// kept, nothing filtered, nothing forgotten.
    OneToOne,
}

/// A NAT in front of one inside host.
#[derive(Debug, Clone)]
pub struct Nat {
    /// The inside host's (private) address.
    pub inside: IpAddr,
    /// The NAT's outside (public) address.
    pub outside: IpAddr,
    /// How it maps and filters.
    pub kind: NatKind,
    /// How long a mapping lives without traffic either way (home routers: 30 s to a few minutes).
    pub udp_timeout: Duration,
}

/// A mapping of a NAT: inside socket ↔ outside port, the peers it lets in, when last used.
#[derive(Debug, Clone)]
struct Mapping {
    inside: SocketAddr,
    port: u16,
    /// `Symmetric`: the one destination of this mapping.
    dst: Option<SocketAddr>,
    allowed: Vec<IpAddr>,
    last: Duration,
}

#[derive(Debug)]
struct NatState {
    nat: Nat,
    mappings: Vec<Mapping>,
}

impl NatState {
    fn expire(&mut self, now: Duration) {
        let timeout = self.nat.udp_timeout;
        self.mappings.retain(|m| now.saturating_sub(m.last) < timeout);
    }

    /// An outgoing datagram from `src` to `dst`: the source it leaves with.
    fn outbound(&mut self, src: SocketAddr, dst: SocketAddr, now: Duration, rng: &mut Rng) -> SocketAddr {
        if self.nat.kind == NatKind::OneToOne {
            return SocketAddr::new(self.nat.outside, src.port());
        }
        self.expire(now);
        let symmetric = self.nat.kind == NatKind::Symmetric;
        let found = self.mappings.iter().position(|m| m.inside == src && (!symmetric || m.dst == Some(dst)));
        let i = match found {
            Some(i) => i,
            None => {
                let taken = |p: u16, ms: &[Mapping]| ms.iter().any(|m| m.port == p);
                let mut port = src.port();
                if symmetric || taken(port, &self.mappings) {
                    port = loop {
                        let p = 1024 + (rng.next_u64() % 64512) as u16;
                        if !taken(p, &self.mappings) {
                            break p;
                        }
                    };
                }
                let dst = symmetric.then_some(dst);
                self.mappings.push(Mapping { inside: src, port, dst, allowed: Vec::new(), last: now });
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[i];
        m.last = now;
        if !m.allowed.contains(&dst.ip()) {
            m.allowed.push(dst.ip());
        }
        SocketAddr::new(self.nat.outside, m.port)
    }

    /// An incoming datagram from `src` to the NAT's `dst`: the inside socket it goes to, or
    /// `None` when the NAT drops it.
    fn inbound(&mut self, src: SocketAddr, dst: SocketAddr, now: Duration) -> Option<SocketAddr> {
        if self.nat.kind == NatKind::OneToOne {
            return Some(SocketAddr::new(self.nat.inside, dst.port()));
        }
        self.expire(now);
        let m = self.mappings.iter_mut().find(|m| m.port == dst.port())?;
        let ok = match self.nat.kind {
            NatKind::Symmetric => m.dst == Some(src),
            _ => m.allowed.contains(&src.ip()),
        };
        if !ok {
            return None;
        }
        m.last = now;
        Some(m.inside)
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
    nats: Vec<NatState>,
    /// Datagrams a NAT dropped on their way in (no mapping, or a peer it does not let in).
    pub dropped_by_nat: u64,
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
            nats: Vec::new(),
            dropped_by_nat: 0,
        }
    }

    /// Puts `nat` in front of its inside host.
    pub fn add_nat(&mut self, nat: Nat) {
        self.nats.push(NatState { nat, mappings: Vec::new() });
    }

    /// The outside socket a NAT maps `inside` to now (its mapping toward `dst` for a
    /// symmetric NAT), if any.
    pub fn nat_mapping(&self, inside: SocketAddr, dst: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.nats.iter().find(|n| n.nat.inside == inside.ip())?;
        if n.nat.kind == NatKind::OneToOne {
            return Some(SocketAddr::new(n.nat.outside, inside.port()));
        }
        n.mappings
            .iter()
            .find(|m| m.inside == inside && (dst.is_none() || m.dst.is_none() || m.dst == dst))
            .filter(|m| self.now.saturating_sub(m.last) < n.nat.udp_timeout)
            .map(|m| SocketAddr::new(n.nat.outside, m.port))
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
        let (now, mut src) = (self.now, src);
        if let Some(n) = self.nats.iter_mut().find(|n| n.nat.inside == src.ip()) {
            src = n.outbound(src, t.dst, now, &mut self.rng);
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
                let (_, _, src, mut dst, payload) = self.queue.remove(pos);
                let at = self.now;
                if let Some(n) = self.nats.iter_mut().find(|n| n.nat.outside == dst.ip()) {
                    match n.inbound(src, dst, at) {
                        Some(inside) => dst = inside,
                        None => {
                            self.dropped_by_nat += 1;
                            continue;
                        }
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that answers every datagram with one of its own, and sends what it is told to.
    struct Echo {
        addr: SocketAddr,
        out: Vec<Transmit>,
        got: Vec<SocketAddr>,
        echo: bool,
    }

    impl Echo {
        fn new(addr: &str, echo: bool) -> Echo {
            Echo { addr: addr.parse().unwrap(), out: Vec::new(), got: Vec::new(), echo }
        }
        fn send(&mut self, dst: SocketAddr) {
            self.out.push(Transmit { dst, payload: vec![1] });
        }
    }

    impl Endpoint for Echo {
        fn addr(&self) -> SocketAddr {
            self.addr
        }
        fn datagram(&mut self, from: SocketAddr, _payload: &[u8], _now: Now) {
            self.got.push(from);
            if self.echo {
                self.send(from);
            }
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.pop()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn timeout(&mut self, _now: Now) {}
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nat(kind: NatKind) -> Nat {
        Nat {
            inside: "192.168.0.2".parse().unwrap(),
            outside: "198.51.100.1".parse().unwrap(),
            kind,
            udp_timeout: Duration::from_secs(30),
        }
    }

    fn settle(net: &mut Net, hosts: &mut [&mut dyn Endpoint], d: Duration) {
        net.run_until(hosts, d, |_| false);
    }

    #[test]
    fn a_home_router_lets_in_whom_it_sent_to_until_it_forgets() {
        let mut net = Net::new(1, 0);
        net.add_nat(nat(NatKind::Restricted));
        let (mut inside, mut server, mut other) = (
            Echo::new("192.168.0.2:7600", false),
            Echo::new("203.0.113.1:7500", true),
            Echo::new("203.0.113.9:7600", false),
        );
        inside.send(server.addr);
        settle(&mut net, &mut [&mut inside, &mut server, &mut other], Duration::from_secs(1));
        assert_eq!(server.got, [sa("198.51.100.1:7600")], "the port is kept");
        assert_eq!(inside.got, [server.addr], "the answer comes back in");
        other.send(sa("198.51.100.1:7600"));
        settle(&mut net, &mut [&mut inside, &mut server, &mut other], Duration::from_secs(1));
        assert_eq!(inside.got.len(), 1, "a host it never sent to stays out");
        assert_eq!(net.dropped_by_nat, 1);
        // 31 s of silence: the mapping is gone, and so is the way in.
        settle(&mut net, &mut [&mut inside, &mut server, &mut other], Duration::from_secs(31));
        assert_eq!(net.nat_mapping(inside.addr, None), None);
        server.send(sa("198.51.100.1:7600"));
        settle(&mut net, &mut [&mut inside, &mut server, &mut other], Duration::from_secs(1));
        assert_eq!(inside.got.len(), 1);
        assert_eq!(net.dropped_by_nat, 2);
    }

    #[test]
    fn a_port_randomizing_router_maps_each_destination_apart() {
        let mut net = Net::new(2, 0);
        net.add_nat(nat(NatKind::Symmetric));
        let (mut inside, mut a, mut b) = (
            Echo::new("192.168.0.2:7600", false),
            Echo::new("203.0.113.1:7500", true),
            Echo::new("203.0.113.9:7600", false),
        );
        inside.send(a.addr);
        inside.send(b.addr);
        settle(&mut net, &mut [&mut inside, &mut a, &mut b], Duration::from_secs(1));
        assert_eq!(inside.got, [a.addr], "the answer on its own mapping comes in");
        assert_ne!(a.got[0].port(), b.got[0].port(), "one port per destination");
        // b answers to the port a saw: dropped.
        b.send(a.got[0]);
        settle(&mut net, &mut [&mut inside, &mut a, &mut b], Duration::from_secs(1));
        assert_eq!(inside.got.len(), 1);
    }

    #[test]
    fn a_cloud_elastic_address_lets_everyone_in() {
        let mut net = Net::new(3, 0);
        net.add_nat(nat(NatKind::OneToOne));
        let (mut inside, mut stranger) = (Echo::new("192.168.0.2:7600", true), Echo::new("203.0.113.9:7600", false));
        stranger.send(sa("198.51.100.1:7600"));
        settle(&mut net, &mut [&mut inside, &mut stranger], Duration::from_secs(1));
        assert_eq!(inside.got, [stranger.addr], "unsolicited, and it gets in");
        assert_eq!(stranger.got, [sa("198.51.100.1:7600")], "the answer leaves from the elastic address");
    }
}
