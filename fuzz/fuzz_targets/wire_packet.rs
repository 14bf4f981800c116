//! The outer framing: parse, re-encode, parse again, same packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use proto::wire::{self, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        let again = match p {
            Packet::Init { sender, noise } => wire::encode_init(sender, noise),
            Packet::Resp { sender, receiver, noise } => wire::encode_resp(sender, receiver, noise),
            Packet::Data { .. } | Packet::Bind { .. } | Packet::Cookie { .. } => data.to_vec(),
        };
        assert_eq!(Packet::parse(&again).unwrap(), p);
    }
});
