//! The relay's forwarding decision: any datagram from any source, against a table with one
//! session whose two sides are bound, never panics, never forwards to an address no side bound
//! from, and opens no session.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ntm_relay::table::{Table, Verdict};
use proto::relay::BindKey;

fuzz_target!(|data: &[u8]| {
    let t = Table::new(4, Duration::from_secs(60));
    let now = Instant::now();
    let keys = [[1u8; 32], [2u8; 32]];
    let ids = t.allocate(&keys, ["a".into(), "b".into()], now).unwrap();
    let ends: [SocketAddr; 2] = ["198.18.60.2:7600".parse().unwrap(), "[2001:db8:80::2]:7600".parse().unwrap()];
    for side in 0..2 {
        let bind = BindKey::new(&keys[side]).seal(false, ids[side], 1);
        assert!(matches!(t.handle(ends[side], &bind, now), Verdict::BindAck(_)));
    }
    // The first byte picks the source: one side, or a stranger.
    let Some((&who, rest)) = data.split_first() else { return };
    let from = match who % 3 {
        0 => ends[0],
        1 => ends[1],
        _ => "192.0.2.66:4444".parse().unwrap(),
    };
    match t.handle(from, rest, now) {
        Verdict::Forward(to) => assert!(ends.contains(&to) && to != from),
        Verdict::BindAck(a) => assert_eq!(a.len(), rest.len()),
        Verdict::Control | Verdict::Drop(_) => {}
    }
    assert_eq!(t.len(), 1);
});
