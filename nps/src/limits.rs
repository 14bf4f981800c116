//! Caps on what clients may hold at once, so that no one of them (and not all of them together)
//! can take the NPS's file descriptors or a node's capacity:
//!
//! * client connections in total (`max_connections`) and from one client (`max_connections_per_client`;
//!   a client is an IPv4 address, or an IPv6 /64, which one host commonly has whole): counted from
//!   the accept to the close, TLS handshake and upgraded (WebSocket) life included. Past a cap the
//!   new connection is closed at once (with a reset, so that it leaves nothing in TIME_WAIT);
//! * connections to one site's node (`max_connections_per_site`): requests in flight (each holds
//!   a connection to the node until its response body is done), WebSocket and TLS passthrough
//!   connections. Past it a request gets 503 and a passthrough connection is closed.
//!
//! A cap of 0 is no cap. The counts live as long as the process: a reload changes the caps, not
//! what is open.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::loglimit::LogLimiter;

use crate::config::canonical;
use crate::metrics::Metrics;

/// Lines about refusals (caps, loops, addresses outside `vip_ranges`) and upstream failures
/// are logged at most this often, each kind on its own.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Who a client is, for `max_connections_per_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(Ipv4Addr),
    /// The /64 (its first 64 bits).
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match canonical(ip) {
            IpAddr::V4(v4) => Client::V4(v4),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Which cap refused a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `max_connections`.
    Total(usize),
    /// `max_connections_per_client`.
    Client(usize),
    /// `max_connections_per_site`.
    Site(usize),
}

impl Over {
    /// The configuration key, which is also the `reason` label of `nps_refused_total`.
    pub fn key(&self) -> &'static str {
        match self {
            Over::Total(_) => "max_connections",
            Over::Client(_) => "max_connections_per_client",
            Over::Site(_) => "max_connections_per_site",
        }
    }

    /// The cap that was reached.
    pub fn limit(&self) -> usize {
        match self {
            Over::Total(n) | Over::Client(n) | Over::Site(n) => *n,
        }
    }
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) reached", self.key(), self.limit())
    }
}

#[derive(Debug, Default)]
struct Conns {
    total: usize,
    clients: HashMap<Client, usize>,
}

/// The open connections, by client and by site, and the log limiters of refusals. One per
/// process (it outlives reloads); cheap to share (`Arc`).
pub struct Limits {
    conns: Mutex<Conns>,
    sites: Mutex<HashMap<String, usize>>,
    metrics: Arc<Metrics>,
    /// Connections refused by `max_connections` or `max_connections_per_client`.
    pub(crate) log_connections: LogLimiter,
    /// Requests and connections refused by `max_connections_per_site`.
    pub(crate) log_sites: LogLimiter,
    /// Loops, and resolved addresses outside `vip_ranges`.
    pub(crate) log_refused: LogLimiter,
    /// Requests that failed upstream (502, 504).
    pub(crate) log_upstream: LogLimiter,
}

impl Limits {
    /// No connection open yet; `metrics.connections_open` follows the connections.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Limits> {
        Arc::new(Limits {
            conns: Mutex::default(),
            sites: Mutex::default(),
            metrics,
            log_connections: LogLimiter::new(LOG_EVERY),
            log_sites: LogLimiter::new(LOG_EVERY),
            log_refused: LogLimiter::new(LOG_EVERY),
            log_upstream: LogLimiter::new(LOG_EVERY),
        })
    }

    /// Counts a new connection from `ip`, unless that would make more than `total` open
    /// connections, or more than `per_client` from its client (0: no cap).
    pub fn connection(self: &Arc<Self>, ip: IpAddr, total: usize, per_client: usize) -> Result<ConnSlot, Over> {
        let client = Client::of(ip);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if total != 0 && conns.total >= total {
            return Err(Over::Total(total));
        }
        let mine = conns.clients.get(&client).copied().unwrap_or(0);
        if per_client != 0 && mine >= per_client {
            return Err(Over::Client(per_client));
        }
        conns.total += 1;
        conns.clients.insert(client, mine + 1);
        self.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnSlot { limits: self.clone(), client })
    }

    /// Counts a new connection to `site`'s node, unless it has `cap` already (0: no cap).
    pub fn site(self: &Arc<Self>, site: &str, cap: usize) -> Result<SiteSlot, Over> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let n = sites.get(site).copied().unwrap_or(0);
        if cap != 0 && n >= cap {
            return Err(Over::Site(cap));
        }
        sites.insert(site.to_owned(), n + 1);
        Ok(SiteSlot { limits: self.clone(), site: site.to_owned() })
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Connections to `site`'s node open now.
    pub fn site_connections(&self, site: &str) -> usize {
        self.sites.lock().unwrap_or_else(|e| e.into_inner()).get(site).copied().unwrap_or(0)
    }
}

/// One client connection, counted until this is dropped.
pub struct ConnSlot {
    limits: Arc<Limits>,
    client: Client,
}

impl fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSlot").field("client", &self.client).finish()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = self.limits.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.total = conns.total.saturating_sub(1);
        if let Some(n) = conns.clients.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                conns.clients.remove(&self.client);
            }
        }
        self.limits.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection to a site's node, counted until this is dropped.
pub struct SiteSlot {
    limits: Arc<Limits>,
    site: String,
}

impl fmt::Debug for SiteSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteSlot").field("site", &self.site).finish()
    }
}

impl Drop for SiteSlot {
    fn drop(&mut self) {
        let mut sites = self.limits.sites.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = sites.get_mut(&self.site) {
            *n -= 1;
            if *n == 0 {
                sites.remove(&self.site);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_give_back() {
        let l = Limits::new(Arc::new(Metrics::default()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let one = l.connection(a, 3, 2).unwrap();
        let two = l.connection(a, 3, 2).unwrap();
        assert_eq!(l.connection(a, 3, 2).unwrap_err(), Over::Client(2));
        let three = l.connection(b, 3, 2).unwrap();
        assert_eq!(l.connection("192.0.2.3".parse().unwrap(), 3, 2).unwrap_err(), Over::Total(3));
        assert_eq!(l.connections(), 3);
        drop(one);
        let again = l.connection(a, 3, 2).unwrap();
        drop((two, three, again));
        assert_eq!(l.connections(), 0);
        assert!(l.conns.lock().unwrap().clients.is_empty());
        // 0: no cap.
        let many: Vec<ConnSlot> = (0..100).map(|_| l.connection(a, 0, 0).unwrap()).collect();
        assert_eq!(l.metrics.connections_open.load(Ordering::Relaxed), 100);
        drop(many);
        assert_eq!(l.metrics.connections_open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = Limits::new(Arc::new(Metrics::default()));
        let _a = l.connection("2001:db8:1:2::1".parse().unwrap(), 0, 1).unwrap();
        let e = l.connection("2001:db8:1:2:ffff::9".parse().unwrap(), 0, 1).unwrap_err();
        assert_eq!(e.to_string(), "max_connections_per_client (1) reached");
        let _b = l.connection("2001:db8:1:3::1".parse().unwrap(), 0, 1).unwrap();
    }

    #[test]
    fn sites_are_counted_apart() {
        let l = Limits::new(Arc::new(Metrics::default()));
        let a = l.site("a.test", 1).unwrap();
        assert_eq!(l.site("a.test", 1).unwrap_err(), Over::Site(1));
        let _b = l.site("b.test", 1).unwrap();
        assert_eq!(l.site_connections("a.test"), 1);
        drop(a);
        assert_eq!(l.site_connections("a.test"), 0);
        let _a = l.site("a.test", 1).unwrap();
    }
}
