//! Messages of the ntm generic netlink family as ntmd parses them (dump replies, notifications):
//! parse, serialize, parse again, equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use ntmd::dataplane::genl::NtmMsg;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(data) else { return };
    let NetlinkPayload::InnerMessage(g) = &msg.payload else { return };
    let mut again = NetlinkMessage::new(msg.header, NetlinkPayload::InnerMessage(g.clone()));
    again.finalize();
    let mut buf = vec![0u8; again.buffer_len()];
    again.serialize(&mut buf);
    let back = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(&buf).expect("re-serialized message parses");
    let NetlinkPayload::InnerMessage(b) = back.payload else { panic!("payload kind changed") };
    assert_eq!(b.payload, g.payload);
});
