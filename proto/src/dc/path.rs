//! How two nodes reach each other, from what their DCs know of them: the direction policy.
//!
//! In order: a common address family with at most one side behind a NAT that filters → direct
//! (the filtered side opens, else the requester); both behind such NATs → hole punching (both
//! open at once), and a relay if that fails; no common family → through a relay, each side in
//! its own family.

use std::net::SocketAddr;

use crate::msg::NodeInfo;

/// The path a DC picks for a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Node to node.
    Direct {
        /// Where the requester sends to reach the target.
        to_target: SocketAddr,
        /// Where the target sends to reach the requester.
        to_requester: SocketAddr,
        /// The requester opens (else the target, towards the requester).
        requester_initiates: bool,
    },
    /// Both behind NATs that filter: both open at once, each toward the other's mapping.
    Punch {
        /// Where the requester sends to reach the target.
        to_target: SocketAddr,
        /// Where the target sends to reach the requester.
        to_requester: SocketAddr,
    },
    /// Through a relay: each side reaches it over the family given (true: IPv4).
    Relay {
        /// The requester's family.
        requester_v4: bool,
        /// The target's family.
        target_v4: bool,
        /// Why a relay, for logs: "both behind NAT" or "no common address family".
        why: &'static str,
    },
    /// One side has no address at all.
    None,
}

fn is_v4(a: &SocketAddr) -> bool {
    a.ip().to_canonical().is_ipv4()
}

/// A pair of endpoints of one address family, IPv4 first: (where the requester reaches the
/// target, where the target reaches the requester).
fn common_family(requester: &NodeInfo, target: &NodeInfo) -> Option<(SocketAddr, SocketAddr)> {
    [true, false].into_iter().find_map(|v4| {
        let r = requester.endpoints.iter().find(|a| is_v4(a) == v4)?;
        let t = target.endpoints.iter().find(|a| is_v4(a) == v4)?;
        Some((*t, *r))
    })
}

/// The relay to fall back on when punching failed: both sides in the family they punched in.
pub fn relay_instead(c: Choice) -> Choice {
    match c {
        Choice::Punch { to_target, to_requester } => Choice::Relay {
            requester_v4: is_v4(&to_requester),
            target_v4: is_v4(&to_target),
            why: "both behind NAT and hole punching failed",
        },
        other => other,
    }
}

/// The direction policy (see the module's documentation).
pub fn choose(requester: &NodeInfo, target: &NodeInfo) -> Choice {
    let (Some(r), Some(t)) = (requester.endpoints.first(), target.endpoints.first()) else {
        return Choice::None;
    };
    let Some((to_target, to_requester)) = common_family(requester, target) else {
        return Choice::Relay { requester_v4: is_v4(r), target_v4: is_v4(t), why: "no common address family" };
    };
    match (requester.nat, target.nat) {
        (true, true) => Choice::Punch { to_target, to_requester },
        (false, true) => Choice::Direct { to_target, to_requester, requester_initiates: false },
        _ => Choice::Direct { to_target, to_requester, requester_initiates: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(endpoints: &[&str], nat: bool) -> NodeInfo {
        NodeInfo {
            fqdn: "n.z".into(),
            public_key: [0; 32],
            vip4: None,
            vip6: None,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            nat,
        }
    }

    #[test]
    fn the_policy_in_order() {
        let v4 = node(&["198.18.60.2:7600"], false);
        let v6 = node(&["[2001:db8:80::2]:7600"], false);
        let nat_a = node(&["198.18.70.2:7600"], true);
        let nat_b = node(&["198.18.71.2:1234"], true);
        let dual = node(&["198.18.20.2:7600", "[2001:db8:20::2]:7600"], false);
        assert!(matches!(choose(&v4, &v4), Choice::Direct { requester_initiates: true, .. }));
        assert!(matches!(choose(&v4, &nat_a), Choice::Direct { requester_initiates: false, .. }));
        assert!(matches!(choose(&nat_a, &v4), Choice::Direct { requester_initiates: true, .. }));
        let punch = choose(&nat_a, &nat_b);
        assert!(matches!(punch, Choice::Punch { .. }));
        assert!(matches!(relay_instead(punch), Choice::Relay { requester_v4: true, target_v4: true, .. }));
        assert_eq!(
            choose(&v4, &v6),
            Choice::Relay { requester_v4: true, target_v4: false, why: "no common address family" }
        );
        let Choice::Direct { to_target, .. } = choose(&dual, &v6) else { panic!() };
        assert!(to_target.is_ipv6());
        assert_eq!(choose(&node(&[], false), &v4), Choice::None);
    }
}
