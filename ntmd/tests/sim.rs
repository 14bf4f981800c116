//! The node daemon's handler, driven without root or sockets: two nodes and their DC on
//! `proto`'s simulated network (5 % loss, reordering, a fake clock), the nodes' data planes in
//! memory. A name lookup (what the stub resolver asks) builds the tunnel, both data planes get
//! it, the node table says built, and the next lookup is answered at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntmd::dataplane::{Dataplane, DpEvent, TunnelInfo};
use ntmd::handler::{Cmd, Handler, Input, Vips};
use ntmd::status::PeerState;
use proto::dc::{DcConfig, DcCore};
use proto::exchange::{Now, Transmit};
use proto::keys::SecretKey;
use proto::node::{NodeConfig, TunnelSpec};
use proto::registry::{MemRegistry, Pools};
use proto::sim::{Endpoint, Net, SimDc};
use tokio::sync::{broadcast, oneshot};

/// A data plane that only remembers its tunnels.
#[derive(Clone, Default)]
struct MemDataplane(Arc<Mutex<HashMap<u32, TunnelSpec>>>);

impl Dataplane for MemDataplane {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn install(&self, spec: &TunnelSpec) -> anyhow::Result<()> {
        self.0.lock().unwrap().insert(spec.local_id, spec.clone());
        Ok(())
    }
    fn remove(&self, local_id: u32) -> anyhow::Result<()> {
        self.0.lock().unwrap().remove(&local_id);
        Ok(())
    }
    fn tunnels(&self) -> Vec<TunnelInfo> {
        self.0
            .lock()
            .unwrap()
            .values()
            .map(|s| TunnelInfo {
                fqdn: s.fqdn.clone(),
                vips: s.vip4.map(IpAddr::V4).into_iter().chain(s.vip6.map(IpAddr::V6)).collect(),
                endpoint: s.endpoint,
                local_id: s.local_id,
                remote_id: s.remote_id,
                counters: Default::default(),
                idle_s: 0,
            })
            .collect()
    }
    fn orphan_drops(&self) -> u64 {
        0
    }
    fn send_keepalives(&self, _only: Option<u32>) {}
}

/// A node: its handler on the simulated network, as the daemon would run it.
struct Node {
    handler: Handler,
    addr: SocketAddr,
    dataplane: MemDataplane,
}

impl Endpoint for Node {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn datagram(&mut self, from: SocketAddr, payload: &[u8], now: Now) {
        let ev = DpEvent::Signaling { from, payload: payload.to_vec() };
        self.handler.input(Input::Dataplane(ev), now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        // What the daemon does after each step: the VIPs go on the device.
        if let Some(v) = self.handler.poll_vips() {
            self.handler.vips_set(v);
        }
        let t = self.handler.poll_transmit();
        if t.is_none() {
            self.handler.release_answers();
        }
        t
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.handler.poll_timeout()
    }
    fn timeout(&mut self, now: Now) {
        self.handler.timeout(now)
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn node(fqdn: &str, addr: &str, secret: SecretKey, dc: &SecretKey, net: &Net) -> Node {
    let dataplane = MemDataplane::default();
    let (events, _) = broadcast::channel(64);
    let config = NodeConfig { fqdn: fqdn.into(), secret, dc_key: dc.public(), dcs: vec![sa("198.18.40.2:7500")] };
    let mut handler = Handler::new(config, Arc::new(dataplane.clone()), events);
    handler.input(Input::Cmd(Cmd::LocalAddrs(vec![sa(addr)])), net.now());
    Node { handler, addr: sa(addr), dataplane }
}

fn resolve(n: &mut Node, fqdn: &str, now: Now) -> oneshot::Receiver<Result<Vips, String>> {
    let (reply, rx) = oneshot::channel();
    n.handler.input(Input::Cmd(Cmd::Resolve { fqdn: fqdn.into(), reply }), now);
    rx
}

#[test]
fn a_name_lookup_builds_the_tunnel() {
    let dc_key = SecretKey::generate();
    let (ka, kb) = (SecretKey::generate(), SecretKey::generate());
    let enrolled = [("a.home.ntm.test".to_string(), ka.public()), ("b.home.ntm.test".to_string(), kb.public())].into();
    let dc_core = DcCore::new(
        DcConfig {
            zone: "home.ntm.test".into(),
            secret: dc_key.clone(),
            keepalive: Duration::from_secs(15),
            enrolled,
            peers: HashMap::new(),
            relays: Vec::new(),
        },
        MemRegistry::new(Pools { v4: Some("100.64.40.0/24".parse().unwrap()), v6: None }),
    );
    let mut dc = SimDc::new(dc_core, sa("198.18.40.2:7500"));
    let mut net = Net::new(7, 5);
    let mut a = node("a.home.ntm.test", "198.18.60.2:7600", ka, &dc_key, &net);
    let mut b = node("b.home.ntm.test", "198.18.80.2:7600", kb, &dc_key, &net);

    // Both register and get their VIPs.
    let mut registered = false;
    for _ in 0..100 {
        net.run_until(&mut [&mut dc, &mut a, &mut b], Duration::from_millis(100), |_| false);
        if show(&mut a, &net).registered && show(&mut b, &net).registered {
            registered = true;
            break;
        }
    }
    assert!(registered, "both nodes registered within 10 s of simulated time");
    let vip_b = show(&mut b, &net).vip4.expect("b has an IPv4 VIP");

    // The lookup a DNS query makes: answered once the tunnel is up, not before.
    let mut answer = resolve(&mut a, "b.home.ntm.test", net.now());
    assert_eq!(a.handler.peer_state("b.home.ntm.test"), PeerState::Building);
    let mut answered = None;
    let built = net.run_until(&mut [&mut dc, &mut a, &mut b], Duration::from_secs(10), |_| match answer.try_recv() {
        Err(oneshot::error::TryRecvError::Empty) => false,
        r => {
            answered = Some(r);
            true
        }
    });
    assert!(built, "the lookup was answered within 10 s of simulated time");
    let vips = answered.unwrap().expect("an answer").expect("the VIPs, not an error");
    assert_eq!(a.handler.peer_state("b.home.ntm.test"), PeerState::Built);
    let ta = a.dataplane.tunnels();
    let tb = b.dataplane.tunnels();
    assert_eq!((ta.len(), tb.len()), (1, 1), "both data planes have the tunnel");
    assert_eq!(ta[0].fqdn, "b.home.ntm.test");
    assert_eq!(tb[0].fqdn, "a.home.ntm.test");
    assert_eq!((ta[0].local_id, ta[0].remote_id), (tb[0].remote_id, tb[0].local_id), "the ends know each other's ids");
    assert_eq!(ta[0].vips[0].to_string(), vip_b);
    assert_eq!(vips.0.map(|v| v.to_string()), Some(vip_b.clone()), "the lookup answered b's VIP");

    // Built: the next lookup is answered at once, with b's VIP.
    let mut again = resolve(&mut a, "b.home.ntm.test", net.now());
    let vips = again.try_recv().expect("answered at once").expect("VIPs");
    assert_eq!(vips.0.map(|v| v.to_string()), Some(vip_b));
}

/// The node's status, as `ntmctl show` gets it.
fn show(n: &mut Node, net: &Net) -> ntmd::status::Status {
    let (tx, mut rx) = oneshot::channel();
    n.handler.input(Input::Cmd(Cmd::Show { read: None, reply: tx }), net.now());
    rx.try_recv().expect("status at once")
}
