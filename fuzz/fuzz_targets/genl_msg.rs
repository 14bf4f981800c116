//! Messages of the ntm generic netlink family as ntmd parses them (dump replies, notifications):
//! parse, serialize, parse again, equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use ntmd::dataplane::genl::{NtmAttr, NtmMsg, TunnelAttr};

fn known(m: &NtmMsg) -> Vec<NtmAttr> {
    m.attrs
        .iter()
        .filter(|a| !matches!(a, NtmAttr::Other { .. }))
        .map(|a| match a {
            NtmAttr::Tunnel(t) => {
                NtmAttr::Tunnel(t.iter().filter(|x| !matches!(x, TunnelAttr::Other { .. })).cloned().collect())
            }
            other => other.clone(),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(data) else { return };
    let NetlinkPayload::InnerMessage(g) = &msg.payload else { return };
    let mut again = NetlinkMessage::new(msg.header, NetlinkPayload::InnerMessage(g.clone()));
    again.finalize();
    let mut buf = vec![0u8; again.buffer_len()];
    again.serialize(&mut buf);
    let back = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(&buf).expect("re-serialized message parses");
    let NetlinkPayload::InnerMessage(b) = back.payload else { panic!("payload kind changed") };
    // Attributes the family does not define are carried as they are, except that the
    // netlink-packet-core layer rewrites their flag bits: compare the ones we define.
    assert_eq!(known(&b.payload), known(&g.payload));
});
