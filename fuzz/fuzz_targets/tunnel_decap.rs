//! Arbitrary datagrams at a tunnel table with one live tunnel: never a panic, and nothing that
//! does not authenticate gets through.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use proto::data::TunnelKeys;
use proto::msg::Path;
use proto::node::TunnelSpec;
use proto::tunnel::TunnelTable;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut t = TunnelTable::new(Duration::from_secs(10));
    t.insert(
        &TunnelSpec {
            fqdn: "p.test".into(),
            vip4: Some([100, 64, 0, 2].into()),
            vip6: None,
            endpoint: "192.0.2.1:7600".parse().unwrap(),
            local_id: 0x0102_0304,
            remote_id: 9,
            keys: TunnelKeys { send: [1; 32], recv: [2; 32] },
            path: Path::Direct,
        },
        now,
    );
    let mut buf = data.to_vec();
    let r = t.decapsulate("192.0.2.9:1".parse().unwrap(), &mut buf, now);
    assert!(r.is_err(), "a forged packet authenticated");
    let mut out = Vec::new();
    let _ = t.encapsulate(data, &mut out, now);
});
