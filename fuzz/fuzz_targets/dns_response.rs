//! Arbitrary DNS responses at the parser that nodes and DCs use to find DCs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 2 {
        let _ = proto::dns::parse_response(data, u16::from_be_bytes([data[0], data[1]]));
    }
});
