//! The ABI of the `ntm` generic netlink family, as `kmod/spec/ntm.yaml` defines it (values in
//! the spec's order, from 1; enums from 0). The module and the node daemon's kernel backend both
//! follow these numbers; a test checks them against the spec file.

pub const FAMILY_NAME: &str = "ntm";
pub const FAMILY_VERSION: u8 = 1;
pub const MCGRP_EVENTS: &str = "events";
pub const KEY_LEN: usize = 32;
pub const LABEL_MAX_LEN: usize = 255;

/// Commands and notifications.
pub mod cmd {
    pub const DEV_SET: u8 = 1;
    pub const DEV_GET: u8 = 2;
    pub const TUNNEL_NEW: u8 = 3;
    pub const TUNNEL_SET: u8 = 4;
    pub const TUNNEL_GET: u8 = 5;
    pub const TUNNEL_DEL: u8 = 6;
    pub const TUNNEL_DESTROYED_NTF: u8 = 7;
    pub const TUNNEL_MISS_NTF: u8 = 8;
    pub const ENDPOINT_CHANGED_NTF: u8 = 9;
    pub const TUNNEL_KEEPALIVE: u8 = 10;
}

/// Top-level attributes (set `ntm`).
pub mod attr {
    pub const IFINDEX: u16 = 1;
    pub const SOCK_FD4: u16 = 2;
    pub const SOCK_FD6: u16 = 3;
    pub const IDLE_TIMEOUT_MS: u16 = 4;
    pub const TUNNEL: u16 = 5;
    pub const MISS_VIP4: u16 = 6;
    pub const MISS_VIP6: u16 = 7;
    pub const RX_ORPHANS: u16 = 8;
}

/// Attributes nested in `tunnel`.
pub mod tunnel {
    pub const LOCAL_ID: u16 = 1;
    pub const REMOTE_ID: u16 = 2;
    pub const VIP4: u16 = 3;
    pub const VIP6: u16 = 4;
    pub const ENDPOINT_IP4: u16 = 5;
    pub const ENDPOINT_IP6: u16 = 6;
    pub const ENDPOINT_PORT: u16 = 7;
    pub const SEND_KEY: u16 = 8;
    pub const RECV_KEY: u16 = 9;
    pub const LABEL: u16 = 10;
    pub const IDLE_MS: u16 = 11;
    pub const TX_PACKETS: u16 = 12;
    pub const TX_BYTES: u16 = 13;
    pub const RX_PACKETS: u16 = 14;
    pub const RX_BYTES: u16 = 15;
    pub const RX_DROPPED: u16 = 16;
    pub const REASON: u16 = 17;
}

/// `destroy-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DestroyReason {
    Idle = 0,
    Deleted = 1,
    DeviceDown = 2,
    Error = 3,
}

impl DestroyReason {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Idle,
            1 => Self::Deleted,
            2 => Self::DeviceDown,
            3 => Self::Error,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    /// The numbers above follow the order of names in the spec file.
    #[test]
    fn numbers_follow_the_spec() {
        let spec = include_str!("../../kmod/spec/ntm.yaml");
        let section = |start: &str, end: &str| -> Vec<String> {
            let s = &spec[spec.find(start).expect(start)..];
            let s = &s[..s.find(end).unwrap_or(s.len())];
            s.lines().filter_map(|l| l.trim().strip_prefix("name: ").map(str::to_string)).collect()
        };
        let ops = section("operations:", "mcast-groups:");
        let want_ops = [
            "dev-set",
            "dev-get",
            "tunnel-new",
            "tunnel-set",
            "tunnel-get",
            "tunnel-del",
            "tunnel-destroyed-ntf",
            "tunnel-miss-ntf",
            "endpoint-changed-ntf",
        ];
        assert_eq!(ops, want_ops);
        // An attribute set's list starts with the set's own name, so index = attribute number.
        let tunnel_attrs = section("    name: tunnel\n    attributes:", "  -\n    name: ntm\n");
        assert_eq!(tunnel_attrs[0], "tunnel");
        assert_eq!(tunnel_attrs.len() - 1, super::tunnel::REASON as usize);
        assert_eq!(tunnel_attrs[super::tunnel::REASON as usize], "reason");
        assert_eq!(tunnel_attrs[super::tunnel::LABEL as usize], "label");
        assert_eq!(tunnel_attrs[super::tunnel::ENDPOINT_PORT as usize], "endpoint-port");
        let ntm_attrs = section("    name: ntm\n    attributes:", "operations:");
        assert_eq!(ntm_attrs[0], "ntm");
        assert_eq!(ntm_attrs.len() - 1, super::attr::RX_ORPHANS as usize, "{ntm_attrs:?}");
        assert_eq!(ntm_attrs[super::attr::TUNNEL as usize], "tunnel");
        assert_eq!(ntm_attrs[super::attr::SOCK_FD6 as usize], "sock-fd6");
    }
}
