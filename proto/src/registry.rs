//! The DC's node registry, as the DC core sees it. `dc` implements it on SQLite; the
//! in-memory implementation here serves tests and simulations.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

/// What the registry knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's name, normalized (the registry's key).
    pub fqdn: String,
    /// The static key the node registered with.
    pub public_key: [u8; 32],
    /// The IPv4 VIP given to the node; kept for good once given.
    pub vip4: Option<Ipv4Addr>,
    /// The IPv6 VIP given to the node; kept for good once given.
    pub vip6: Option<Ipv6Addr>,
    /// Addresses the node reported (its interfaces, with its port).
    pub addrs: Vec<SocketAddr>,
    /// The source address its last registration came from (the NAT's outer address if `nat`).
    pub observed: Option<SocketAddr>,
    /// The last registration came from an address the node did not report: it is behind a NAT.
    pub nat: bool,
    /// Unix seconds of the last registration or keepalive.
    pub last_seen: u64,
}

/// A registration to store.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// The node's name, normalized.
    pub fqdn: &'a str,
    /// The key the registration's handshake was made with (checked against enrollment).
    pub public_key: [u8; 32],
    /// The addresses the node reported, with its port.
    pub addrs: &'a [SocketAddr],
    /// The source address of the registration.
    pub observed: SocketAddr,
    /// `observed` is not among `addrs`.
    pub nat: bool,
    /// The DC's clock, in Unix seconds: becomes `last_seen`.
    pub now_unix: u64,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A new node needs a VIP of this family ("IPv4" or "IPv6") and none is free.
    #[error("the {0} VIP pool is exhausted")]
    PoolExhausted(&'static str),
    /// The storage below (SQLite) failed.
    #[error("registry storage: {0}")]
    Storage(String),
}

/// Storage of node records and VIP allocation. A VIP, once given to an FQDN, stays with it and is
/// never handed to another node.
pub trait Registry {
    /// Stores the registration; keeps the node's VIPs, or allocates unused ones on first sight.
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError>;
    /// The record of the node `fqdn` (normalized), if it ever registered.
    fn get(&self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError>;
    /// Every record, in no particular order.
    fn all(&self) -> Result<Vec<NodeRecord>, RegistryError>;
    /// Forgets the node `fqdn` (normalized): it is no longer enrolled. Its VIPs are free again.
    fn remove(&mut self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError>;
    /// The pools VIPs are given from.
    fn pools(&self) -> &Pools;
}

/// VIP pools of one zone.
#[derive(Debug, Clone)]
pub struct Pools {
    /// The IPv4 prefix VIPs are taken from; `None`: nodes get no IPv4 VIP.
    pub v4: Option<Ipv4Net>,
    /// The IPv6 prefix VIPs are taken from; `None`: nodes get no IPv6 VIP.
    pub v6: Option<Ipv6Net>,
}

impl Pools {
    /// The n-th usable host address of the IPv4 pool (network and broadcast skipped, and the
    /// first host too, which is kept for the zone's gateway use).
    pub fn v4_candidate(&self, n: u64) -> Option<Ipv4Addr> {
        let net = self.v4?;
        let base = u32::from(net.network()) as u64;
        let size = 1u64 << (32 - net.prefix_len());
        let host = n + 2;
        (host < size.saturating_sub(1)).then(|| Ipv4Addr::from((base + host) as u32))
    }

    /// The n-th usable address of the IPv6 pool (the subnet-router anycast address and the
    /// first host skipped, as in IPv4).
    pub fn v6_candidate(&self, n: u64) -> Option<Ipv6Addr> {
        let net = self.v6?;
        let base = u128::from(net.network());
        let bits = 128 - net.prefix_len() as u32;
        let host = n as u128 + 2;
        (bits >= 128 || host < (1u128 << bits)).then(|| Ipv6Addr::from(base + host))
    }
}

/// The VIP allocation policy, which every registry applies (storage is theirs): a node keeps the
/// VIPs it has; a node without one gets the lowest free address of each configured pool. A VIP,
/// once given, is never handed to another node. `used4` and `used6` give the addresses taken
/// (asked only when an address of that family must be chosen).
pub fn assign_vips(
    pools: &Pools,
    current: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    used4: impl FnOnce() -> Result<HashSet<Ipv4Addr>, RegistryError>,
    used6: impl FnOnce() -> Result<HashSet<Ipv6Addr>, RegistryError>,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), RegistryError> {
    let (mut vip4, mut vip6) = current;
    if vip4.is_none() && pools.v4.is_some() {
        let used = used4()?;
        vip4 = Some(lowest_free(&used, |n| pools.v4_candidate(n)).ok_or(RegistryError::PoolExhausted("IPv4"))?);
    }
    if vip6.is_none() && pools.v6.is_some() {
        let used = used6()?;
        vip6 = Some(lowest_free(&used, |n| pools.v6_candidate(n)).ok_or(RegistryError::PoolExhausted("IPv6"))?);
    }
    Ok((vip4, vip6))
}

/// The lowest candidate not in `used`. Only `used.len() + 1` candidates can all be taken, so the
/// search is bounded even for a /64.
fn lowest_free<T: Eq + std::hash::Hash>(used: &HashSet<T>, candidate: impl Fn(u64) -> Option<T>) -> Option<T> {
    (0..=used.len() as u64).map_while(candidate).find(|ip| !used.contains(ip))
}

/// An in-memory registry (tests and simulations).
#[derive(Debug)]
pub struct MemRegistry {
    pools: Pools,
    nodes: HashMap<String, NodeRecord>,
}

impl MemRegistry {
    /// An empty registry allocating from `pools`.
    pub fn new(pools: Pools) -> Self {
        Self { pools, nodes: HashMap::new() }
    }

    /// A registry holding `records` already (read from storage at start).
    pub fn with_records(pools: Pools, records: impl IntoIterator<Item = NodeRecord>) -> Self {
        Self { pools, nodes: records.into_iter().map(|r| (r.fqdn.clone(), r)).collect() }
    }
}

impl Registry for MemRegistry {
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError> {
        let current = self.nodes.get(reg.fqdn).map_or((None, None), |r| (r.vip4, r.vip6));
        let (vip4, vip6) = assign_vips(
            &self.pools,
            current,
            || Ok(self.nodes.values().filter_map(|r| r.vip4).collect()),
            || Ok(self.nodes.values().filter_map(|r| r.vip6).collect()),
        )?;
        let rec = NodeRecord {
            fqdn: reg.fqdn.to_string(),
            public_key: reg.public_key,
            vip4,
            vip6,
            addrs: reg.addrs.to_vec(),
            observed: Some(reg.observed),
            nat: reg.nat,
            last_seen: reg.now_unix,
        };
        self.nodes.insert(rec.fqdn.clone(), rec.clone());
        Ok(rec)
    }

    fn get(&self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError> {
        Ok(self.nodes.get(fqdn).cloned())
    }

    fn all(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        Ok(self.nodes.values().cloned().collect())
    }

    fn remove(&mut self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError> {
        Ok(self.nodes.remove(fqdn))
    }

    fn pools(&self) -> &Pools {
        &self.pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_is_bounded() {
        let used: HashSet<u64> = (0..10).collect();
        assert_eq!(lowest_free(&used, Some), Some(10));
        assert_eq!(lowest_free(&used, |n| (n < 10).then_some(n)), None);
        let used: HashSet<u64> = [0, 2].into();
        assert_eq!(lowest_free(&used, Some), Some(1));
    }

    #[test]
    fn vips_are_kept_then_lowest_free() {
        let pools = Pools { v4: Some("100.64.0.0/29".parse().unwrap()), v6: None };
        let none = || -> Result<HashSet<Ipv6Addr>, RegistryError> { panic!("no IPv6 pool: not asked") };
        let kept = Some(Ipv4Addr::new(100, 64, 0, 5));
        assert_eq!(assign_vips(&pools, (kept, None), || panic!("kept: not asked"), none).unwrap(), (kept, None));
        let used = [Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 4)];
        let got = assign_vips(&pools, (None, None), || Ok(used.into()), none).unwrap();
        assert_eq!(got, (Some(Ipv4Addr::new(100, 64, 0, 3)), None));
        let full: HashSet<Ipv4Addr> = (2..7).map(|h| Ipv4Addr::new(100, 64, 0, h)).collect();
        assert!(matches!(assign_vips(&pools, (None, None), || Ok(full), none), Err(RegistryError::PoolExhausted(_))));
    }
}
