//! The `ntm` generic netlink family from userspace: its messages, whose typed attributes and
//! their encoding come from `proto::netlink` (generated from `kmod/spec/ntm.yaml`), carried by
//! netlink-packet-generic.

use netlink_packet_core::{DecodeError, Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};
use proto::netlink::{attrs_len, emit_attrs, parse_attrs, FAMILY_NAME, FAMILY_VERSION};

pub use proto::netlink::{NtmAttr, TunnelAttr};

/// A message of the family: its command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtmMsg {
    /// The generic netlink command: one of `proto::netlink::cmd` (requests, and the
    /// `*_NTF` notifications of the `events` group).
    pub cmd: u8,
    /// The top-level attributes, in order; a tunnel's own attributes are nested in
    /// [`NtmAttr::Tunnel`].
    pub attrs: Vec<NtmAttr>,
}

impl GenlFamily for NtmMsg {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for NtmMsg {
    fn buffer_len(&self) -> usize {
        attrs_len(&self.attrs)
    }
    fn emit(&self, buffer: &mut [u8]) {
        emit_attrs(&self.attrs, buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NtmMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = parse_attrs(buf).map_err(|e| DecodeError::from(format!("ntm attributes: {e}")))?;
        Ok(NtmMsg { cmd: header.cmd, attrs })
    }
}

impl NtmMsg {
    /// A message with command `cmd` carrying `attrs`.
    pub fn new(cmd: u8, attrs: Vec<NtmAttr>) -> Self {
        Self { cmd, attrs }
    }

    /// The attributes of the nested `tunnel`, if any.
    pub fn tunnel(&self) -> Option<&[TunnelAttr]> {
        self.attrs.iter().find_map(|a| match a {
            NtmAttr::Tunnel(t) => Some(t.as_slice()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_generic::GenlMessage;

    /// A request in a whole netlink message and back: the generic netlink header carries the
    /// command and the family's version, the attributes follow it.
    #[test]
    fn round_trip_through_the_wire_format() {
        let msg = NtmMsg::new(
            proto::netlink::cmd::TUNNEL_NEW,
            vec![
                NtmAttr::Ifindex(3),
                NtmAttr::Tunnel(vec![
                    TunnelAttr::LocalId(0x01020304),
                    TunnelAttr::Vip4(Ipv4Addr::new(100, 64, 40, 2)),
                    TunnelAttr::EndpointPort(7600),
                    TunnelAttr::Label("rpi.home.ntm.test".into()),
                ]),
            ],
        );
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(GenlMessage::from_payload(msg.clone())),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        assert_eq!(buf[16..18], [proto::netlink::cmd::TUNNEL_NEW, FAMILY_VERSION]);
        let back = NetlinkMessage::<GenlMessage<NtmMsg>>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(g) = back.payload else { panic!() };
        assert_eq!(g.payload, msg);
        assert_eq!(g.payload.tunnel().map(<[_]>::len), Some(4));
    }

    #[test]
    fn bad_attributes_are_errors() {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&8u16.to_ne_bytes());
        b[2..4].copy_from_slice(&proto::netlink::attr::MISS_VIP6.to_ne_bytes());
        let header = GenlHeader { cmd: proto::netlink::cmd::TUNNEL_MISS_NTF, version: FAMILY_VERSION };
        assert!(NtmMsg::parse_with_param(&b[..], header).is_err());
    }
}
