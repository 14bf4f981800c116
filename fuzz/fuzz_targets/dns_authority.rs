//! Arbitrary queries at the DC's authoritative DNS: an answer or nothing, never a panic; what it
//! answers parses.
#![no_main]
use host::config::Load as _;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ntm_dc::config::Config;
use ntm_dc::dns::{Authority, Transport};

static AUTH: OnceLock<Authority> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let auth = AUTH.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dc.toml");
        let cfg = Config::load(path).expect("example config");
        Authority::from_config(&cfg).expect("zone")
    });
    for t in [Transport::Udp, Transport::Tcp] {
        if let Some(ans) = auth.respond(data, t) {
            assert!(proto::dns::parse_response(&ans, u16::from_be_bytes([ans[0], ans[1]])).is_ok());
        }
    }
});
