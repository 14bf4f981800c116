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
    use super::{attr, cmd, tunnel};

    const SPEC: &str = include_str!("../../kmod/spec/ntm.yaml");

    /// The `name:` entries of the spec between two markers, in order.
    fn section(start: &str, end: &str) -> Vec<String> {
        let s = &SPEC[SPEC.find(start).expect(start)..];
        let s = &s[..s.find(end).unwrap_or(s.len())];
        s.lines().filter_map(|l| l.trim().strip_prefix("name: ").map(str::to_string)).collect()
    }

    /// Every constant, by the name the spec gives it.
    fn cmds() -> Vec<(&'static str, u16)> {
        vec![
            ("dev-set", cmd::DEV_SET.into()),
            ("dev-get", cmd::DEV_GET.into()),
            ("tunnel-new", cmd::TUNNEL_NEW.into()),
            ("tunnel-set", cmd::TUNNEL_SET.into()),
            ("tunnel-get", cmd::TUNNEL_GET.into()),
            ("tunnel-del", cmd::TUNNEL_DEL.into()),
            ("tunnel-destroyed-ntf", cmd::TUNNEL_DESTROYED_NTF.into()),
            ("tunnel-miss-ntf", cmd::TUNNEL_MISS_NTF.into()),
            ("endpoint-changed-ntf", cmd::ENDPOINT_CHANGED_NTF.into()),
            ("tunnel-keepalive", cmd::TUNNEL_KEEPALIVE.into()),
        ]
    }

    fn ntm_attrs() -> Vec<(&'static str, u16)> {
        vec![
            ("ifindex", attr::IFINDEX),
            ("sock-fd4", attr::SOCK_FD4),
            ("sock-fd6", attr::SOCK_FD6),
            ("idle-timeout-ms", attr::IDLE_TIMEOUT_MS),
            ("tunnel", attr::TUNNEL),
            ("miss-vip4", attr::MISS_VIP4),
            ("miss-vip6", attr::MISS_VIP6),
            ("rx-orphans", attr::RX_ORPHANS),
        ]
    }

    fn tunnel_attrs() -> Vec<(&'static str, u16)> {
        vec![
            ("local-id", tunnel::LOCAL_ID),
            ("remote-id", tunnel::REMOTE_ID),
            ("vip4", tunnel::VIP4),
            ("vip6", tunnel::VIP6),
            ("endpoint-ip4", tunnel::ENDPOINT_IP4),
            ("endpoint-ip6", tunnel::ENDPOINT_IP6),
            ("endpoint-port", tunnel::ENDPOINT_PORT),
            ("send-key", tunnel::SEND_KEY),
            ("recv-key", tunnel::RECV_KEY),
            ("label", tunnel::LABEL),
            ("idle-ms", tunnel::IDLE_MS),
            ("tx-packets", tunnel::TX_PACKETS),
            ("tx-bytes", tunnel::TX_BYTES),
            ("rx-packets", tunnel::RX_PACKETS),
            ("rx-bytes", tunnel::RX_BYTES),
            ("rx-dropped", tunnel::RX_DROPPED),
            ("reason", tunnel::REASON),
        ]
    }

    /// `names` (from the spec) numbered from `first`, against the constants: the same names,
    /// the same numbers, none missing on either side.
    fn check(what: &str, names: &[String], first: u16, consts: &[(&str, u16)]) {
        let spec: Vec<(String, u16)> = names.iter().zip(first..).map(|(n, v)| (n.clone(), v)).collect();
        let ours: Vec<(String, u16)> = consts.iter().map(|&(n, v)| (n.to_string(), v)).collect();
        assert_eq!(spec, ours, "{what}: the spec and the constants differ");
    }

    /// The numbers above follow the order of names in the spec file.
    #[test]
    fn numbers_follow_the_spec() {
        check("operations", &section("operations:", "mcast-groups:"), 1, &cmds());
        // An attribute set's list starts with the set's own name, then its attributes from 1.
        let t = section("    name: tunnel\n    attributes:", "  -\n    name: ntm\n");
        assert_eq!(t[0], "tunnel");
        check("tunnel attributes", &t[1..], 1, &tunnel_attrs());
        let n = section("    name: ntm\n    attributes:", "operations:");
        assert_eq!(n[0], "ntm");
        check("ntm attributes", &n[1..], 1, &ntm_attrs());
        let r = section("    name: destroy-reason", "attribute-sets:");
        assert_eq!(r[0], "destroy-reason");
        for (i, name) in r[1..].iter().enumerate() {
            let reason = super::DestroyReason::from_u32(i as u32).expect(name);
            assert_eq!(format!("{reason:?}").to_lowercase(), name.replace('-', ""));
        }
        assert_eq!(super::DestroyReason::from_u32(r.len() as u32 - 1), None);
    }

    /// The module's own copy of the numbers (kmod/netlink.rs) is the same as ours.
    #[test]
    fn module_numbers_match() {
        let src = include_str!("../../kmod/netlink.rs");
        let module = |m: &str| -> Vec<(String, u16)> {
            let start = format!("pub(crate) mod {m} {{");
            let s = &src[src.find(&start).expect(&start) + start.len()..];
            let s = &s[..s.find('}').unwrap()];
            s.lines()
                .filter_map(|l| {
                    let l = l.trim().strip_prefix("pub(crate) const ")?;
                    let (name, rest) = l.split_once(':')?;
                    let v = rest.split('=').nth(1)?.trim().trim_end_matches(';').parse().ok()?;
                    Some((name.to_lowercase().replace('_', "-"), v))
                })
                .collect()
        };
        let norm =
            |c: Vec<(&str, u16)>| -> Vec<(String, u16)> { c.into_iter().map(|(n, v)| (n.to_string(), v)).collect() };
        assert_eq!(module("cmd"), norm(cmds()));
        assert_eq!(module("attr"), norm(ntm_attrs()));
        assert_eq!(module("tunnel"), norm(tunnel_attrs()));
    }
}
