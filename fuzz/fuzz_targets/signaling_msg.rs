//! Signaling messages: decode, encode, decode again, equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::msg::{self, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = msg::decode::<Request>(data) {
        let b = msg::encode(env.ts, &env.body);
        assert_eq!(msg::decode::<Request>(&b).unwrap(), env);
    }
    if let Ok(env) = msg::decode::<Response>(data) {
        let b = msg::encode(env.ts, &env.body);
        assert_eq!(msg::decode::<Response>(&b).unwrap(), env);
    }
});
