//! Arbitrary handshake initiations and responses at a node and a DC core. Initiations get a
//! valid mac1 for their responder, so that the fuzzer reaches the Noise handshake behind the
//! MAC check (and the raw bytes are tried too). Then, past authentication: the input's bytes
//! as the payload of a real Noise initiation from a key the responder trusts (the enrolled node
//! to the DC, the DC to the node), so that the fuzzer drives message decoding and every request
//! handler with arbitrary requests, timestamps and versions.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use proto::dc::{DcConfig, DcCore};
use proto::exchange::Now;
use proto::keys::SecretKey;
use proto::node::{NodeConfig, NodeCore};
use proto::registry::{MemRegistry, Pools};

static KEYS: OnceLock<(SecretKey, SecretKey)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (dc_key, node_key) = KEYS.get_or_init(|| (SecretKey::generate(), SecretKey::generate()));
    let now = Now { mono: Instant::now(), unix_us: 1 };
    let from = "192.0.2.1:7600".parse().unwrap();
    let mut dc = DcCore::new(
        DcConfig {
            zone: "z.test".into(),
            secret: dc_key.clone(),
            keepalive: Duration::from_secs(5),
            enrolled: [("n.z.test".to_string(), node_key.public())].into(),
            peers: Default::default(),
            relays: Vec::new(),
        },
        MemRegistry::new(Pools { v4: Some("100.64.0.0/24".parse().unwrap()), v6: None }),
    );
    dc.handle_datagram(from, data, now);
    while dc.poll_transmit().is_some() {}
    let mut sealed = data.to_vec();
    if sealed.first() == Some(&proto::wire::TYPE_INIT) && sealed.len() >= 8 + proto::cookie::MACS_LEN {
        proto::cookie::seal_init(&mut sealed, &proto::cookie::PeerKeys::new(&dc_key.public()), None);
        dc.handle_datagram(from, &sealed, now);
        while dc.poll_transmit().is_some() {}
        proto::cookie::seal_init(&mut sealed, &proto::cookie::PeerKeys::new(&node_key.public()), None);
    }
    let mut node = NodeCore::new(NodeConfig {
        fqdn: "n.z.test".into(),
        secret: node_key.clone(),
        dc_key: dc_key.public(),
        dcs: vec!["192.0.2.2:7500".parse().unwrap()],
    });
    node.set_local_addrs(vec![from], now);
    node.handle_datagram("192.0.2.2:7500".parse().unwrap(), data, now);
    node.handle_datagram("192.0.2.2:7500".parse().unwrap(), &sealed, now);
    assert!(node.registration().is_none());

    // Past authentication: the bytes as the payload of a genuine initiation.
    let authentic = |from: &SecretKey, to: &SecretKey| {
        let (_, m1) = proto::noise::initiate(from, &to.public(), data).ok()?;
        let mut p = proto::wire::encode_init(7, &m1);
        proto::cookie::seal_init(&mut p, &proto::cookie::PeerKeys::new(&to.public()), None);
        Some(p)
    };
    if let Some(p) = authentic(node_key, dc_key) {
        dc.handle_datagram(from, &p, now);
        while dc.poll_transmit().is_some() {}
        while dc.poll_command().is_some() {}
    }
    if let Some(p) = authentic(dc_key, node_key) {
        node.handle_datagram("192.0.2.2:7500".parse().unwrap(), &p, now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }
});
