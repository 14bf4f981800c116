//! The DC's node registry, as the DC core sees it. `dc` implements it on SQLite; the
//! in-memory implementation here serves tests and simulations.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

/// What the registry knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub fqdn: String,
    pub public_key: [u8; 32],
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    /// Addresses the node reported (its interfaces, with its port).
    pub addrs: Vec<SocketAddr>,
    /// The source address its last registration came from (the NAT's outer address if `nat`).
    pub observed: Option<SocketAddr>,
    pub nat: bool,
    /// Unix seconds of the last registration or keepalive.
    pub last_seen: u64,
}

/// A registration to store.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub fqdn: &'a str,
    pub public_key: [u8; 32],
    pub addrs: &'a [SocketAddr],
    pub observed: SocketAddr,
    pub nat: bool,
    pub now_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the {0} VIP pool is exhausted")]
    PoolExhausted(&'static str),
    #[error("registry storage: {0}")]
    Storage(String),
}

/// Storage of node records and VIP allocation. A VIP, once given to an FQDN, stays with it and is
/// never handed to another node.
pub trait Registry {
    /// Stores the registration; keeps the node's VIPs, or allocates unused ones on first sight.
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError>;
    fn get(&self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError>;
    fn all(&self) -> Result<Vec<NodeRecord>, RegistryError>;
}

/// VIP pools of one zone.
#[derive(Debug, Clone)]
pub struct Pools {
    pub v4: Option<Ipv4Net>,
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

    pub fn v6_candidate(&self, n: u64) -> Option<Ipv6Addr> {
        let net = self.v6?;
        let base = u128::from(net.network());
        let bits = 128 - net.prefix_len() as u32;
        let host = n as u128 + 2;
        (bits >= 128 || host < (1u128 << bits)).then(|| Ipv6Addr::from(base + host))
    }
}

/// An in-memory registry (tests and simulations).
#[derive(Debug)]
pub struct MemRegistry {
    pools: Pools,
    nodes: HashMap<String, NodeRecord>,
}

impl MemRegistry {
    pub fn new(pools: Pools) -> Self {
        Self { pools, nodes: HashMap::new() }
    }

    fn used(&self, ip: IpAddr) -> bool {
        self.nodes.values().any(|r| r.vip4.map(IpAddr::V4) == Some(ip) || r.vip6.map(IpAddr::V6) == Some(ip))
    }
}

impl Registry for MemRegistry {
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError> {
        let (mut vip4, mut vip6) = match self.nodes.get(reg.fqdn) {
            Some(r) => (r.vip4, r.vip6),
            None => (None, None),
        };
        if vip4.is_none() && self.pools.v4.is_some() {
            let ip = (0..)
                .map_while(|n| self.pools.v4_candidate(n))
                .find(|ip| !self.used(IpAddr::V4(*ip)))
                .ok_or(RegistryError::PoolExhausted("IPv4"))?;
            vip4 = Some(ip);
        }
        if vip6.is_none() && self.pools.v6.is_some() {
            let ip = (0..)
                .map_while(|n| self.pools.v6_candidate(n))
                .find(|ip| !self.used(IpAddr::V6(*ip)))
                .ok_or(RegistryError::PoolExhausted("IPv6"))?;
            vip6 = Some(ip);
        }
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
}
