//! Two DCs and three nodes (one behind a NAT) driven through `proto::sim`'s simulated network with
//! loss, reordering and a fake clock: registration, cross-zone and same-zone directions, tunnels
//! that carry data both ways, idle expiry and rebuild, refusals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::dc::{DcConfig, DcCore};
use proto::exchange::{Now, Transmit};
use proto::keys::{PublicKey, SecretKey};
use proto::msg::Path;
use proto::node::{NodeConfig, NodeCore, NodeEvent, PeerState};
use proto::registry::{MemRegistry, Pools, Registry};
use proto::sim::{Endpoint, Nat, NatKind, Net, SimDc};
use proto::tunnel::TunnelTable;
use proto::wire;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A node: its core, its tunnel table (the data plane), what reached its virtual device.
struct Node {
    core: NodeCore,
    table: TunnelTable,
    addr: SocketAddr,
    /// Inner packets delivered to this node's virtual device.
    delivered: Vec<Vec<u8>>,
    events: Vec<NodeEvent>,
    /// Data packets to send (the device's traffic), after the core's datagrams.
    outbox: Vec<Transmit>,
    /// Every datagram the node sent, when tracing.
    trace: Option<Vec<Transmit>>,
}

impl Node {
    /// What the daemon does with the core's events: the data plane follows the tunnels.
    fn events(&mut self, now: Now) {
        while let Some(ev) = self.core.poll_event() {
            match &ev {
                NodeEvent::TunnelUp(spec) => {
                    self.table.insert(spec, now.mono);
                }
                NodeEvent::TunnelDown { local_id, .. } => {
                    self.table.remove(*local_id, proto::tunnel::Reason::Deleted);
                }
                _ => {}
            }
            self.events.push(ev);
        }
    }
}

impl Endpoint for Node {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn datagram(&mut self, from: SocketAddr, payload: &[u8], now: Now) {
        if wire::packet_type(payload) == Some(wire::TYPE_DATA) {
            let mut buf = payload.to_vec();
            if let Ok(d) = self.table.decapsulate(from, &mut buf, now.mono) {
                if d.len > 0 {
                    self.delivered.push(buf[d.start..d.start + d.len].to_vec());
                }
            }
        } else {
            self.core.handle_datagram(from, payload, now);
        }
        self.events(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.core.poll_transmit().or_else(|| self.outbox.pop())?;
        if let Some(trace) = &mut self.trace {
            trace.push(t.clone());
        }
        Some(t)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        [self.core.poll_timeout(), self.table.next_expiry()].into_iter().flatten().min()
    }
    fn timeout(&mut self, now: Now) {
        if self.core.poll_timeout().is_some_and(|t| t <= now.mono) {
            self.core.handle_timeout(now);
        }
        if self.table.next_expiry().is_some_and(|t| t <= now.mono) {
            for gone in self.table.sweep(now.mono) {
                self.core.tunnel_destroyed(gone.local_id);
            }
        }
        self.events(now);
    }
}

struct Sim {
    net: Net,
    dcs: HashMap<SocketAddr, SimDc>,
    nodes: HashMap<String, Node>,
    dc_keys: HashMap<String, PublicKey>,
    /// What each DC was started with, to start it again or change it.
    dc_cfgs: HashMap<SocketAddr, (DcConfig, Pools)>,
}

impl Sim {
    fn now(&self) -> Now {
        self.net.now()
    }

    /// Runs the world for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let mut eps: Vec<&mut dyn Endpoint> = self
            .dcs
            .values_mut()
            .map(|d| d as &mut dyn Endpoint)
            .chain(self.nodes.values_mut().map(|n| n as &mut dyn Endpoint))
            .collect();
        self.net.run_until(&mut eps, d, |_| false);
    }

    fn node(&mut self, fqdn: &str) -> &mut Node {
        self.nodes.get_mut(fqdn).unwrap()
    }

    fn request(&mut self, from: &str, to: &str) -> PeerState {
        let now = self.now();
        let n = self.node(from);
        let state = n.core.request(to, now);
        n.events(now);
        state
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
        pkt[20..28].copy_from_slice(&self.net.elapsed().as_nanos().to_le_bytes()[..8]);
        let before = self.nodes[to].delivered.len();
        // Data is not retransmitted: try a few times like an application would.
        for _ in 0..5 {
            let n = self.node(from);
            let mut out = Vec::new();
            let Ok(ep) = n.table.encapsulate(&pkt, &mut out, now.mono) else { return false };
            n.outbox.push(Transmit { dst: ep, payload: out });
            self.run(Duration::from_millis(50));
            if self.nodes[to].delivered.len() > before {
                return self.nodes[to].delivered.last().unwrap() == &pkt;
            }
        }
        false
    }
}

fn world(loss: u64) -> Sim {
    world_with(loss, NatKind::Restricted, NatKind::Restricted)
}

/// n1 (zone a), n2 behind a NAT of `n2_nat` (a home router in most tests) and n3 (zone b), n4
/// (zone b) behind a NAT of `n4_nat`.
fn world_with(loss: u64, n2_nat: NatKind, n4_nat: NatKind) -> Sim {
    let dca = SecretKey::generate();
    let dcb = SecretKey::generate();
    let keys: HashMap<&str, SecretKey> =
        ["n1.a.test", "n2.b.test", "n3.b.test", "n4.b.test"].into_iter().map(|f| (f, SecretKey::generate())).collect();
    let mk_dc = |zone: &str, secret: &SecretKey, nodes: &[&str], peer: (&str, PublicKey), pool: &str| {
        let cfg = DcConfig {
            zone: zone.into(),
            secret: secret.clone(),
            keepalive: Duration::from_secs(5),
            enrolled: nodes.iter().map(|f| (f.to_string(), keys[f].public())).collect(),
            peers: [(peer.0.to_string(), peer.1)].into(),
            relays: Vec::new(),
        };
        let pools = Pools { v4: Some(format!("100.64.{pool}.0/24").parse().unwrap()), v6: None };
        (cfg, pools)
    };
    let dc_cfgs: HashMap<SocketAddr, (DcConfig, Pools)> = [
        (sa("10.0.1.1:7500"), mk_dc("a.test", &dca, &["n1.a.test"], ("b.test", dcb.public()), "1")),
        (
            sa("10.0.2.1:7500"),
            mk_dc("b.test", &dcb, &["n2.b.test", "n3.b.test", "n4.b.test"], ("a.test", dca.public()), "2"),
        ),
    ]
    .into();
    let dcs: HashMap<SocketAddr, DcCore<MemRegistry>> = dc_cfgs
        .iter()
        .map(|(a, (cfg, pools))| (*a, DcCore::new(cfg.clone(), MemRegistry::new(pools.clone()))))
        .collect();
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
        outbox: vec![],
        trace: None,
    };
    let nodes = [
        ("n1.a.test", mk_node("n1.a.test", "10.1.0.1:7600", &dca, "10.0.1.1:7500")),
        ("n2.b.test", mk_node("n2.b.test", "192.168.0.2:7600", &dcb, "10.0.2.1:7500")),
        ("n3.b.test", mk_node("n3.b.test", "10.1.0.3:7600", &dcb, "10.0.2.1:7500")),
        ("n4.b.test", mk_node("n4.b.test", "192.168.1.4:7600", &dcb, "10.0.2.1:7500")),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_string(), n))
    .collect();
    let zones: HashMap<String, SocketAddr> =
        [("a.test".to_string(), sa("10.0.1.1:7500")), ("b.test".to_string(), sa("10.0.2.1:7500"))].into();
    let dcs = dcs
        .into_iter()
        .map(|(addr, core)| {
            let mut dc = SimDc::new(core, addr);
            dc.zones = zones.clone();
            (addr, dc)
        })
        .collect();
    // n2 sits behind a home router that forgets a mapping after 30 s of silence.
    let mut net = Net::new(0x9e37_79b9_7f4a_7c15, loss);
    net.add_nat(Nat {
        inside: "192.168.0.2".parse().unwrap(),
        outside: "10.9.0.1".parse().unwrap(),
        kind: n2_nat,
        udp_timeout: Duration::from_secs(30),
    });
    net.add_nat(Nat {
        inside: "192.168.1.4".parse().unwrap(),
        outside: "10.9.0.4".parse().unwrap(),
        kind: n4_nat,
        udp_timeout: Duration::from_secs(30),
    });
    let mut sim = Sim {
        net,
        dcs,
        nodes,
        dc_keys: [("a.test".to_string(), dca.public()), ("b.test".to_string(), dcb.public())].into(),
        dc_cfgs,
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
    assert_eq!(n2.observed, sa("10.9.0.1:7600"), "the router kept the port");
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
    assert_eq!(ep, sa("10.9.0.1:7600"), "n1 reaches n2 at its NAT's mapping");
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
    assert!(sim.dcs[&sa("10.0.2.1:7500")].core.registry().get("n3.b.test").unwrap().is_none());
}

/// A world whose nodes registered, with n3's first registration as an eavesdropper captured
/// it: the world, zone b's DC address, n3's address and the datagram.
fn captured_registration() -> (Sim, SocketAddr, SocketAddr, Vec<u8>) {
    let mut sim = world(0);
    sim.node("n3.b.test").trace = Some(Vec::new());
    sim.run(Duration::from_secs(2));
    assert!(registered(&sim));
    let dc = sa("10.0.2.1:7500");
    let src = sim.nodes["n3.b.test"].addr;
    let payload = sim.nodes["n3.b.test"]
        .trace
        .iter()
        .flatten()
        .find(|t| t.dst == dc && wire::packet_type(&t.payload) == Some(wire::TYPE_INIT))
        .map(|t| t.payload.clone())
        .expect("a registration was sent");
    (sim, dc, src, payload)
}

#[test]
fn replayed_requests_get_no_answer() {
    let (mut sim, dc, src, payload) = captured_registration();
    let now = sim.now();
    let core = &mut sim.dcs.get_mut(&dc).unwrap().core;
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

#[test]
fn both_behind_nat_punch_holes() {
    let mut sim = world_with(5, NatKind::Restricted, NatKind::Restricted);
    sim.run(Duration::from_secs(10));
    assert!(registered(&sim));
    // Both behind routers that keep ports: the DC tells both to open at once.
    sim.request("n2.b.test", "n4.b.test");
    sim.run(Duration::from_secs(5));
    assert_eq!(
        sim.state("n2.b.test", "n4.b.test"),
        PeerState::Built,
        "{:?}\n{:?}",
        sim.nodes["n2.b.test"].events,
        sim.nodes["n4.b.test"].events
    );
    assert_eq!(sim.nodes["n2.b.test"].core.peer("n4.b.test").unwrap().path, Some(Path::Punched));
    assert_eq!(sim.nodes["n2.b.test"].table.iter().next().unwrap().endpoint, sa("10.9.0.4:7600"));
    assert_eq!(sim.nodes["n4.b.test"].table.len(), 1, "one tunnel, whoever opened first");
    assert!(sim.ping("n2.b.test", "n4.b.test"));
    assert!(sim.ping("n4.b.test", "n2.b.test"));
}

#[test]
fn punching_through_port_randomizing_nats_falls_back_to_a_relay() {
    let mut sim = world_with(0, NatKind::Symmetric, NatKind::Symmetric);
    sim.run(Duration::from_secs(10));
    assert!(registered(&sim));
    let t0 = sim.net.elapsed();
    sim.request("n2.b.test", "n4.b.test");
    sim.run(Duration::from_secs(3));
    // This world has no relay: the fallback is asked for within a second, and refused.
    let n2 = &sim.nodes["n2.b.test"];
    assert!(
        n2.events.iter().any(|e| matches!(e, NodeEvent::PathNote { fqdn, .. } if fqdn == "n4.b.test")),
        "{:?}",
        n2.events
    );
    let err = n2.core.peer("n4.b.test").unwrap().last_error.clone().unwrap_or_default();
    assert!(err.contains("no relay"), "{err}");
    assert_eq!(sim.state("n2.b.test", "n4.b.test"), PeerState::None);
    assert!(sim.net.elapsed() - t0 < Duration::from_secs(4));
}

#[test]
fn a_registration_captured_before_a_dc_restart_is_not_taken_after_it() {
    let (mut sim, dc, src, captured) = captured_registration();
    sim.run(Duration::from_secs(40));
    // The DC restarts, its registry in memory lost (the worst case: nothing remembered).
    let (cfg, pools) = sim.dc_cfgs[&dc].clone();
    sim.dcs.get_mut(&dc).unwrap().core = DcCore::new(cfg, MemRegistry::new(pools));
    let now = sim.now();
    let core = &mut sim.dcs.get_mut(&dc).unwrap().core;
    core.handle_datagram(src, &captured, now);
    assert_eq!(core.counters().registrations, 0, "a registration from before the restart was taken");
    assert!(core.registry().get("n3.b.test").unwrap().is_none());
    assert_eq!(core.drops().replayed, 1);
    // Answered once (an answer only the real node can read, smaller than the request), then
    // silence for a second.
    let answer = core.poll_transmit().expect("the floor is given once");
    assert!(answer.payload.len() < captured.len());
    core.handle_datagram(src, &captured, now);
    assert!(core.poll_transmit().is_none());
    // The real nodes register again with the restarted DC at their next refresh.
    sim.run(Duration::from_secs(10));
    assert!(sim.dcs[&dc].core.registry().get("n3.b.test").unwrap().is_some());
    assert!(registered(&sim));
}

#[test]
fn a_node_removed_from_the_dc_is_revoked_at_once() {
    let mut sim = world(0);
    sim.run(Duration::from_secs(3));
    assert!(registered(&sim));
    sim.request("n3.b.test", "n2.b.test");
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state("n3.b.test", "n2.b.test"), PeerState::Built);
    assert!(sim.ping("n3.b.test", "n2.b.test"));

    // n2 leaves the DC's configuration; the DC reloads it.
    let dc = sa("10.0.2.1:7500");
    let (mut cfg, _) = sim.dc_cfgs[&dc].clone();
    cfg.enrolled.remove("n2.b.test");
    let now = sim.now();
    let r = sim.dcs.get_mut(&dc).unwrap().core.reconfigure(cfg.enrolled.clone(), cfg.peers.clone(), now);
    assert_eq!(r.removed, ["n2.b.test"]);
    assert_eq!(r.notified, 2, "n3 and n4 are told");
    assert!(sim.dcs[&dc].core.registry().get("n2.b.test").unwrap().is_none(), "its row (and VIPs) are gone");
    sim.run(Duration::from_secs(1));
    // n3 tore its tunnel down and traffic no longer flows.
    assert_eq!(sim.state("n3.b.test", "n2.b.test"), PeerState::None);
    assert!(sim.nodes["n3.b.test"]
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::TunnelDown { fqdn, .. } if fqdn == "n2.b.test")));
    assert!(!sim.ping("n3.b.test", "n2.b.test"));
    // No new direction to it...
    sim.request("n3.b.test", "n2.b.test");
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.state("n3.b.test", "n2.b.test"), PeerState::None);
    assert!(sim.nodes["n3.b.test"].core.peer("n2.b.test").unwrap().last_error.is_some());
    // ... nor from it: its registration is refused at its next refresh.
    sim.run(Duration::from_secs(10));
    assert!(sim.nodes["n2.b.test"].core.registration().is_none());
    assert!(sim.dcs[&dc].core.registry().get("n2.b.test").unwrap().is_none());
}

#[test]
fn a_peer_dc_claiming_a_vip_of_this_zone_is_refused() {
    let mut sim = world(0);
    // Zone b's DC hands out VIPs from zone a's pool (misconfigured, or lying).
    let (a, b) = (sa("10.0.1.1:7500"), sa("10.0.2.1:7500"));
    let (cfg, _) = sim.dc_cfgs[&b].clone();
    let a_pools = sim.dc_cfgs[&a].1.clone();
    sim.dcs.get_mut(&b).unwrap().core = DcCore::new(cfg, MemRegistry::new(a_pools));
    sim.run(Duration::from_secs(3));
    assert!(registered(&sim));
    let n1_vip = sim.nodes["n1.a.test"].core.registration().unwrap().vip4;
    assert_eq!(sim.nodes["n3.b.test"].core.registration().unwrap().vip4.map(|v| v.octets()[2]), Some(1));
    sim.request("n1.a.test", "n3.b.test");
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.state("n1.a.test", "n3.b.test"), PeerState::None);
    let err = sim.nodes["n1.a.test"].core.peer("n3.b.test").unwrap().last_error.clone().unwrap();
    assert!(err.contains("VIP of this zone"), "{err}");
    assert!(sim.dcs[&a].core.drops().unauthorized >= 1);
    assert_eq!(sim.nodes["n1.a.test"].core.registration().unwrap().vip4, n1_vip);
}

#[test]
fn one_node_cannot_pile_up_directions() {
    use proto::exchange::{Initiator, TsSource};
    use proto::msg::{DirectionRequest, ErrorCode, Register, Request, Response};
    let dc_key = SecretKey::generate();
    let node = SecretKey::generate();
    let cfg = DcConfig {
        zone: "z.test".into(),
        secret: dc_key.clone(),
        keepalive: Duration::from_secs(5),
        enrolled: [("n.z.test".to_string(), node.public())].into(),
        peers: HashMap::new(),
        relays: Vec::new(),
    };
    let mut dc = DcCore::new(cfg, MemRegistry::new(Pools { v4: Some("100.64.0.0/24".parse().unwrap()), v6: None }));
    let (from, dc_addr) = (sa("192.0.2.1:7600"), sa("192.0.2.2:7500"));
    let now = Now { mono: Instant::now(), unix_us: 1_800_000_000_000_000 };
    let mut ini: Initiator<u32> = Initiator::default();
    let mut ts = TsSource::default();
    let mut ask = |dc: &mut DcCore<MemRegistry>, id: u32, req: Request| -> Option<Response> {
        let t = ini.start(id, id, dc_addr, dc_key.public(), req, &node, &mut ts, now).unwrap();
        dc.handle_datagram(from, &t.payload, now);
        let r = dc.poll_transmit()?;
        let wire::Packet::Resp { sender, receiver, noise } = wire::Packet::parse(&r.payload).unwrap() else {
            panic!("not a response")
        };
        Some(ini.on_response(sender, receiver, noise, dc_addr, now).unwrap().response)
    };
    let reg = Request::Register(Register { fqdn: "n.z.test".into(), addrs: vec![from] });
    assert!(matches!(ask(&mut dc, 1, reg), Some(Response::Registered(_))));
    let mut busy = 0;
    for i in 0..40u32 {
        // Names in a zone whose DC is never found: each direction waits on a lookup.
        let req =
            Request::Direction(DirectionRequest { target: format!("x{i}.far.test"), relay: false, upgrade: false });
        match ask(&mut dc, 100 + i, req) {
            None => {}
            Some(Response::Error(e)) if e.code == ErrorCode::Busy => busy += 1,
            Some(r) => panic!("unexpected {r:?}"),
        }
    }
    assert_eq!(busy, 8, "32 directions under way at most for one node");
    let mut lookups = 0;
    while dc.poll_command().is_some() {
        lookups += 1;
    }
    assert_eq!(lookups, 32);
}

#[test]
fn a_revocation_reaches_nodes_of_other_zones_through_their_dc() {
    let mut sim = world(0);
    sim.run(Duration::from_secs(3));
    assert!(registered(&sim));
    sim.request("n1.a.test", "n3.b.test");
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state("n1.a.test", "n3.b.test"), PeerState::Built);
    assert!(sim.ping("n1.a.test", "n3.b.test"));
    // Zone b's DC drops n3; zone a's DC is told, and tells n1.
    let b = sa("10.0.2.1:7500");
    let (mut cfg, _) = sim.dc_cfgs[&b].clone();
    cfg.enrolled.remove("n3.b.test");
    let now = sim.now();
    let dc = sim.dcs.get_mut(&b).unwrap();
    dc.core.reconfigure(cfg.enrolled.clone(), cfg.peers.clone(), now);
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.state("n1.a.test", "n3.b.test"), PeerState::None);
    assert!(!sim.ping("n1.a.test", "n3.b.test"));
    // A peer DC's word counts for its own zone only: zone a cannot revoke b's nodes.
    let a = sa("10.0.1.1:7500");
    let (mut cfg_a, _) = sim.dc_cfgs[&a].clone();
    cfg_a.enrolled.insert("n2.b.test".into(), SecretKey::generate().public());
    let now = sim.now();
    let dc = sim.dcs.get_mut(&a).unwrap();
    dc.core.reconfigure(cfg_a.enrolled.clone(), cfg_a.peers.clone(), now);
    cfg_a.enrolled.remove("n2.b.test");
    let r = dc.core.reconfigure(cfg_a.enrolled.clone(), cfg_a.peers.clone(), now);
    assert_eq!(r.removed, ["n2.b.test"]);
    sim.request("n4.b.test", "n2.b.test");
    sim.run(Duration::from_secs(3));
    assert!(sim.dcs[&b].core.drops().unauthorized >= 1, "zone b's DC ignored a's claim on n2");
    assert_eq!(sim.state("n4.b.test", "n2.b.test"), PeerState::Built);
}
