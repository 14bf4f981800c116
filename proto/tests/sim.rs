//! Two DCs and three nodes (one behind a NAT) driven through a simulated network with loss,
//! reordering and a fake clock: registration, cross-zone and same-zone directions, tunnels that
//! carry data both ways, idle expiry and rebuild, refusals.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proto::dc::{DcCommand, DcConfig, DcCore};
use proto::exchange::Now;
use proto::keys::{PublicKey, SecretKey};
use proto::node::{NodeConfig, NodeCore, NodeEvent, PeerState};
use proto::registry::{MemRegistry, Pools, Registry};
use proto::tunnel::TunnelTable;
use proto::wire;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A deterministic xorshift generator for loss and delay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Node {
    core: NodeCore,
    table: TunnelTable,
    addr: SocketAddr,
    /// Inner packets delivered to this node's virtual device.
    delivered: Vec<Vec<u8>>,
    events: Vec<NodeEvent>,
}

/// An address-restricted NAT: one mapping for the inside host, inbound packets only from
/// addresses the inside host has sent to.
struct Nat {
    inside: SocketAddr,
    outside: SocketAddr,
    allowed: Vec<IpAddr>,
}

struct Sim {
    t0: Instant,
    now: Duration,
    rng: Rng,
    loss: u64,
    queue: Vec<(Duration, u64, SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    dcs: HashMap<SocketAddr, DcCore<MemRegistry>>,
    zones: HashMap<String, SocketAddr>,
    nodes: HashMap<String, Node>,
    nat: Nat,
    dropped_by_nat: u64,
    dc_keys: HashMap<String, PublicKey>,
    trace: bool,
    sent: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Sim {
    fn now(&self) -> Now {
        Now { mono: self.t0 + self.now, unix_us: 1_800_000_000_000_000 + self.now.as_micros() as u64 }
    }

    fn send(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        if self.trace {
            self.sent.push((src, dst, payload.clone()));
        }
        if self.rng.chance(self.loss) {
            return;
        }
        let (mut src, mut dst) = (src, dst);
        if src == self.nat.inside {
            self.nat.allowed.push(dst.ip());
            src = self.nat.outside;
        }
        if dst == self.nat.outside {
            if !self.nat.allowed.contains(&src.ip()) {
                self.dropped_by_nat += 1;
                return;
            }
            dst = self.nat.inside;
        }
        // 1-20 ms of delay: packets overtake each other.
        let delay = Duration::from_millis(1 + self.rng.next() % 20);
        self.seq += 1;
        self.queue.push((self.now + delay, self.seq, src, dst, payload));
    }

    fn flush(&mut self) {
        let now = self.now();
        let mut out = Vec::new();
        let mut locates = Vec::new();
        for (addr, dc) in self.dcs.iter_mut() {
            while let Some(t) = dc.poll_transmit() {
                out.push((*addr, t.dst, t.payload));
            }
            while let Some(DcCommand::Locate { id, target }) = dc.poll_command() {
                locates.push((*addr, id, target));
            }
        }
        for (addr, id, target) in locates {
            let found = self.zones.iter().find(|(z, _)| target.ends_with(&format!(".{z}")));
            let r = found.map(|(z, a)| (z.clone(), vec![*a])).ok_or_else(|| "not an NTM name".to_string());
            self.dcs.get_mut(&addr).unwrap().dc_located(id, r, now);
        }
        for n in self.nodes.values_mut() {
            while let Some(t) = n.core.poll_transmit() {
                out.push((n.addr, t.dst, t.payload));
            }
            while let Some(ev) = n.core.poll_event() {
                match &ev {
                    NodeEvent::TunnelUp(spec) => {
                        n.table.insert(spec, now.mono);
                    }
                    NodeEvent::TunnelDown { local_id, .. } => {
                        n.table.remove(*local_id, proto::tunnel::Reason::Deleted);
                    }
                    _ => {}
                }
                n.events.push(ev);
            }
        }
        let again = !out.is_empty();
        for (s, d, p) in out {
            self.send(s, d, p);
        }
        if again {
            self.flush();
        }
    }

    fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, mut payload: Vec<u8>) {
        let now = self.now();
        if let Some(dc) = self.dcs.get_mut(&dst) {
            dc.handle_datagram(src, &payload, now);
            return;
        }
        let Some(n) = self.nodes.values_mut().find(|n| n.addr == dst) else { return };
        if wire::packet_type(&payload) == Some(wire::TYPE_DATA) {
            if let Ok(d) = n.table.decapsulate(src, &mut payload, now.mono) {
                if d.len > 0 {
                    n.delivered.push(payload[d.start..d.start + d.len].to_vec());
                }
            }
        } else {
            n.core.handle_datagram(src, &payload, now);
        }
    }

    /// Runs the world for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let now = self.now();
            for dc in self.dcs.values_mut() {
                if dc.poll_timeout().is_some_and(|t| t <= now.mono) {
                    dc.handle_timeout(now);
                }
            }
            for n in self.nodes.values_mut() {
                if n.core.poll_timeout().is_some_and(|t| t <= now.mono) {
                    n.core.handle_timeout(now);
                }
                if n.table.next_expiry().is_some_and(|t| t <= now.mono) {
                    for gone in n.table.sweep(now.mono) {
                        n.core.tunnel_destroyed(gone.local_id);
                    }
                }
            }
            self.flush();
            self.queue.sort_by_key(|(t, seq, ..)| (*t, *seq));
            if let Some(pos) = self.queue.iter().position(|(t, ..)| *t <= self.now) {
                let (_, _, s, d, p) = self.queue.remove(pos);
                self.deliver(s, d, p);
                continue;
            }
            let mut next = self.queue.first().map(|q| q.0);
            let deadlines = self
                .dcs
                .values()
                .filter_map(|d| d.poll_timeout())
                .chain(self.nodes.values().filter_map(|n| n.core.poll_timeout()))
                .chain(self.nodes.values().filter_map(|n| n.table.next_expiry()))
                .map(|t| t.saturating_duration_since(self.t0));
            for t in deadlines {
                next = Some(next.map_or(t, |n: Duration| n.min(t)));
            }
            if self.now >= end {
                break;
            }
            self.now = next.unwrap_or(end).max(self.now + Duration::from_millis(1)).min(end);
        }
    }

    fn node(&mut self, fqdn: &str) -> &mut Node {
        self.nodes.get_mut(fqdn).unwrap()
    }

    fn request(&mut self, from: &str, to: &str) -> PeerState {
        let now = self.now();
        self.node(from).core.request(to, now)
    }

    fn state(&self, from: &str, to: &str) -> PeerState {
        self.nodes[from].core.peer(to).map(|p| p.state).unwrap_or(PeerState::None)
    }

    /// Sends an IP packet from `from`'s virtual device to `to`'s VIP; true if it arrived.
    fn ping(&mut self, from: &str, to: &str) -> bool {
        let now = self.now();
        let src = self.nodes[from].core.registration().unwrap().vip4.unwrap();
        let dst = self.nodes[to].core.registration().unwrap().vip4.unwrap();
        let mut pkt = vec![0u8; 40];
        pkt[0] = 0x45;
        pkt[12..16].copy_from_slice(&src.octets());
        pkt[16..20].copy_from_slice(&dst.octets());
        pkt[20..28].copy_from_slice(&self.now.as_nanos().to_le_bytes()[..8]);
        let n = self.node(from);
        let mut out = Vec::new();
        let Ok(ep) = n.table.encapsulate(&pkt, &mut out, now.mono) else { return false };
        let addr = n.addr;
        let before = self.nodes[to].delivered.len();
        // Data is not retransmitted: try a few times like an application would.
        for _ in 0..5 {
            self.send(addr, ep, out.clone());
            self.run(Duration::from_millis(50));
            if self.nodes[to].delivered.len() > before {
                return self.nodes[to].delivered.last().unwrap() == &pkt;
            }
            let n = self.node(from);
            if n.table.encapsulate(&pkt, &mut out, now.mono).is_err() {
                return false;
            }
        }
        false
    }
}

fn world(loss: u64) -> Sim {
    let dca = SecretKey::generate();
    let dcb = SecretKey::generate();
    let keys: HashMap<&str, SecretKey> =
        ["n1.a.test", "n2.b.test", "n3.b.test"].into_iter().map(|f| (f, SecretKey::generate())).collect();
    let mk_dc = |zone: &str, secret: &SecretKey, nodes: &[&str], peer: (&str, PublicKey), pool: &str| {
        let cfg = DcConfig {
            zone: zone.into(),
            secret: secret.clone(),
            keepalive: Duration::from_secs(5),
            enrolled: nodes.iter().map(|f| (f.to_string(), keys[f].public())).collect(),
            peers: [(peer.0.to_string(), peer.1)].into(),
        };
        let pools = Pools { v4: Some(format!("100.64.{pool}.0/24").parse().unwrap()), v6: None };
        DcCore::new(cfg, MemRegistry::new(pools))
    };
    let mut dcs = HashMap::new();
    dcs.insert(sa("10.0.1.1:7500"), mk_dc("a.test", &dca, &["n1.a.test"], ("b.test", dcb.public()), "1"));
    dcs.insert(sa("10.0.2.1:7500"), mk_dc("b.test", &dcb, &["n2.b.test", "n3.b.test"], ("a.test", dca.public()), "2"));
    let mk_node = |fqdn: &str, addr: &str, dc: &SecretKey, dc_addr: &str| Node {
        core: NodeCore::new(NodeConfig {
            fqdn: fqdn.into(),
            secret: keys[fqdn].clone(),
            dc_key: dc.public(),
            dcs: vec![sa(dc_addr)],
        }),
        table: TunnelTable::new(Duration::from_secs(10)),
        addr: sa(addr),
        delivered: vec![],
        events: vec![],
    };
    let nodes = [
        ("n1.a.test", mk_node("n1.a.test", "10.1.0.1:7600", &dca, "10.0.1.1:7500")),
        ("n2.b.test", mk_node("n2.b.test", "192.168.0.2:7600", &dcb, "10.0.2.1:7500")),
        ("n3.b.test", mk_node("n3.b.test", "10.1.0.3:7600", &dcb, "10.0.2.1:7500")),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_string(), n))
    .collect();
    let mut sim = Sim {
        t0: Instant::now(),
        now: Duration::ZERO,
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        loss,
        queue: vec![],
        seq: 0,
        dcs,
        zones: [("a.test".to_string(), sa("10.0.1.1:7500")), ("b.test".to_string(), sa("10.0.2.1:7500"))].into(),
        nodes,
        nat: Nat { inside: sa("192.168.0.2:7600"), outside: sa("10.9.0.1:40000"), allowed: vec![] },
        dropped_by_nat: 0,
        dc_keys: [("a.test".to_string(), dca.public()), ("b.test".to_string(), dcb.public())].into(),
        trace: false,
        sent: vec![],
    };
    let now = sim.now();
    for n in sim.nodes.values_mut() {
        let a = n.addr;
        n.core.set_local_addrs(vec![a], now);
    }
    sim
}

fn registered(sim: &Sim) -> bool {
    sim.nodes.values().all(|n| n.core.registration().is_some())
}

#[test]
fn registration_directions_tunnels_expiry_with_loss() {
    let mut sim = world(10);
    sim.run(Duration::from_secs(10));
    assert!(registered(&sim), "every node registers despite 10% loss");
    let n2 = sim.nodes["n2.b.test"].core.registration().unwrap().clone();
    assert!(n2.nat, "the DC sees n2 behind its NAT");
    assert_eq!(n2.observed, sa("10.9.0.1:40000"));
    let vips: Vec<_> = sim.nodes.values().map(|n| n.core.registration().unwrap().vip4).collect();
    assert!(vips[0] != vips[1] && vips[1] != vips[2] && vips[0] != vips[2]);

    // Cross zone, the target behind NAT: n2 opens through its NAT.
    assert_eq!(sim.request("n1.a.test", "n2.b.test"), PeerState::Building);
    assert_eq!(sim.request("n1.a.test", "n2.b.test"), PeerState::Building, "a second request waits on the build");
    sim.run(Duration::from_secs(10));
    assert_eq!(
        sim.state("n1.a.test", "n2.b.test"),
        PeerState::Built,
        "{:?}\n{:?}",
        sim.nodes["n1.a.test"].events,
        sim.nodes["n2.b.test"].events
    );
    assert_eq!(sim.state("n2.b.test", "n1.a.test"), PeerState::Built);
    assert_eq!(sim.nodes["n1.a.test"].table.len(), 1, "one tunnel per peer");
    let ep = sim.nodes["n1.a.test"].table.iter().next().unwrap().endpoint;
    assert_eq!(ep, sa("10.9.0.1:40000"), "n1 reaches n2 at its NAT's mapping");
    assert!(sim.ping("n1.a.test", "n2.b.test"));
    assert!(sim.ping("n2.b.test", "n1.a.test"));

    // Cross zone the other way, both public.
    sim.request("n3.b.test", "n1.a.test");
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.state("n3.b.test", "n1.a.test"), PeerState::Built);
    assert!(sim.ping("n3.b.test", "n1.a.test"));

    // Same zone, requester behind NAT: it opens.
    sim.request("n2.b.test", "n3.b.test");
    sim.run(Duration::from_secs(5));
    assert_eq!(sim.state("n2.b.test", "n3.b.test"), PeerState::Built);
    assert!(sim.ping("n3.b.test", "n2.b.test"));

    // Unknown names fail cleanly.
    sim.request("n1.a.test", "nobody.b.test");
    sim.request("n1.a.test", "x.elsewhere.test");
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.state("n1.a.test", "nobody.b.test"), PeerState::None);
    assert_eq!(sim.state("n1.a.test", "x.elsewhere.test"), PeerState::None);
    let failures = sim.nodes["n1.a.test"]
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::BuildFailed { fqdn, .. } if fqdn == "nobody.b.test" || fqdn == "x.elsewhere.test"))
        .count();
    assert!(failures >= 2);

    // Idle: tunnels expire, peers go back to none, the next request rebuilds.
    sim.run(Duration::from_secs(12));
    assert_eq!(sim.state("n1.a.test", "n2.b.test"), PeerState::None);
    assert!(sim.nodes["n1.a.test"].table.is_empty());
    assert!(registered(&sim), "keepalives keep the registration");
    sim.request("n1.a.test", "n2.b.test");
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.state("n1.a.test", "n2.b.test"), PeerState::Built);
    assert!(sim.ping("n1.a.test", "n2.b.test"));
}

#[test]
fn a_node_with_the_wrong_key_is_refused() {
    let mut sim = world(0);
    let now = sim.now();
    let dcb = sim.dc_keys["b.test"];
    let n3 = sim.node("n3.b.test");
    n3.core = NodeCore::new(NodeConfig {
        fqdn: "n3.b.test".into(),
        secret: SecretKey::generate(),
        dc_key: dcb,
        dcs: vec![sa("10.0.2.1:7500")],
    });
    let a = n3.addr;
    n3.core.set_local_addrs(vec![a], now);
    sim.run(Duration::from_secs(5));
    assert!(sim.nodes["n3.b.test"].core.registration().is_none());
    assert!(sim.nodes["n2.b.test"].core.registration().is_some());
    assert!(sim.dcs[&sa("10.0.2.1:7500")].registry().get("n3.b.test").unwrap().is_none());
}

#[test]
fn replayed_requests_get_no_answer() {
    let mut sim = world(0);
    sim.trace = true;
    sim.run(Duration::from_secs(2));
    assert!(registered(&sim));
    let dc = sa("10.0.2.1:7500");
    let (src, payload) = sim
        .sent
        .iter()
        .find(|(_, d, p)| *d == dc && wire::packet_type(p) == Some(wire::TYPE_INIT))
        .map(|(s, _, p)| (*s, p.clone()))
        .expect("a registration was sent");
    let now = sim.now();
    let core = sim.dcs.get_mut(&dc).unwrap();
    core.handle_datagram(src, &payload, now);
    assert!(core.poll_transmit().is_none(), "a replayed registration is dropped");
    assert_eq!(core.drops().replayed, 1);
    // Garbage is dropped too.
    for junk in [&[][..], &[1, 1, 0, 0, 9, 9, 9, 9][..], &[2; 200][..], &[4; 40][..]] {
        core.handle_datagram(src, junk, now);
        assert!(core.poll_transmit().is_none());
    }
    assert_eq!(core.drops().malformed, 4, "{:?}", core.drops());
}
