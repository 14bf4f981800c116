//! Resolving a node's FQDN to its VIP through the local `ntmd` stub resolver.
//!
//! The stub answers an NTM name only once the tunnel to that node is up: *built* → at once,
//! *building* → when that build ends, *none* → after building it. Resolving is therefore how the
//! NPS drives the node table, and it must not be cached longer than the answer's TTL (ntmd gives
//! 1 s): the tunnel behind a VIP may go away at any time, and the next query rebuilds it.
//!
//! A is asked first, AAAA only when the name has no A record (so one node always gets one VIP,
//! and one connection pool). Concurrent resolutions of one name share one query. Messages are
//! sent by the daemons' one DNS client (`host::dns`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host::dns::{Client, ClientError};
use proto::dns::{RecordType, ResponseCode};
use tokio::sync::watch;

/// An answer is never kept longer than this, whatever its TTL.
pub const MAX_CACHE: Duration = Duration::from_secs(1);

/// Why a name could not be resolved, in words a browser user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// SERVFAIL: `ntmd` could not build the tunnel to the node.
    #[error("the resolver answered SERVFAIL: the tunnel to the node could not be built")]
    ServFail,
    /// NXDOMAIN: the name does not exist; no such node is enrolled.
    #[error("the name does not exist (NXDOMAIN): no such node is registered")]
    NxDomain,
    /// The name exists but has neither an A nor an AAAA record.
    #[error("the resolver has no address (VIP) for this name")]
    NoAddress,
    /// REFUSED: the resolver, or the server behind it, would not answer the query.
    #[error("the resolver refused the query (REFUSED)")]
    Refused,
    /// Any other response code, by name.
    #[error("the resolver answered {0}")]
    Rcode(String),
    /// The query could not be sent or its answer read.
    #[error("cannot query the resolver {server}: {error}")]
    Io {
        /// The resolver asked (`resolver` in the configuration).
        server: SocketAddr,
        /// What the DNS client reported.
        error: String,
    },
    /// No answer within the resolution's time budget (`connect_timeout`).
    #[error("the resolver {server} did not answer within {}ms (the tunnel is still being built?)", .after.as_millis())]
    Timeout {
        /// The resolver asked.
        server: SocketAddr,
        /// The budget that ran out.
        after: Duration,
    },
    /// The name could not be put in a query, or the answer made no sense.
    #[error("bad answer from the resolver: {0}")]
    BadAnswer(String),
}

impl ResolveError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::ServFail => "servfail",
            ResolveError::NxDomain => "nxdomain",
            ResolveError::NoAddress => "noaddress",
            ResolveError::Refused => "refused",
            ResolveError::Rcode(_) => "rcode",
            ResolveError::Io { .. } => "io",
            ResolveError::Timeout { .. } => "timeout",
            ResolveError::BadAnswer(_) => "badanswer",
        }
    }
}

/// One successful resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The node's VIP: its IPv4 VIP if it has one, else its IPv6 VIP.
    pub addr: IpAddr,
    /// Time the queries took (the tunnel build, when there was one); zero for a cached answer.
    pub took: Duration,
    /// Whether the answer came from the (≤ TTL) cache.
    pub cached: bool,
}

type Outcome = Option<Result<IpAddr, ResolveError>>;

enum Slot {
    Ready { addr: IpAddr, until: Instant },
    Pending(watch::Receiver<Outcome>),
}

/// Observes every query pair sent (not cache hits): for the tunnel-build latency histogram.
pub type Observer = Arc<dyn Fn(Duration, Result<(), &ResolveError>) + Send + Sync>;

/// The resolver client. Cheap to share (`Arc`).
pub struct Resolver {
    server: SocketAddr,
    client: Client,
    /// Upper bound of one resolution (queries and retransmissions).
    timeout: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    observer: Option<Observer>,
}

impl Resolver {
    /// A resolver asking `server` (the local `ntmd` stub); one resolution, retransmissions
    /// included, fails with [`ResolveError::Timeout`] after `timeout`.
    pub fn new(server: SocketAddr, timeout: Duration) -> Resolver {
        let client = Client::new(vec![server]).with_timeout(timeout);
        Resolver { server, client, timeout, slots: Mutex::new(HashMap::new()), observer: None }
    }

    /// Calls `observer` after every resolution that went to the resolver (not cache hits).
    pub fn with_observer(mut self, observer: Observer) -> Resolver {
        self.observer = Some(observer);
        self
    }

    /// The resolver this client asks.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The VIP of `fqdn` (lowercase, no trailing dot), after the tunnel to it is up.
    pub async fn resolve(self: &Arc<Self>, fqdn: &str) -> Result<Resolved, ResolveError> {
        let started = Instant::now();
        loop {
            let mut rx = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                match slots.get(fqdn) {
                    Some(Slot::Ready { addr, until }) if *until > Instant::now() => {
                        return Ok(Resolved { addr: *addr, took: Duration::ZERO, cached: true });
                    }
                    Some(Slot::Pending(rx)) => rx.clone(),
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        slots.insert(fqdn.to_owned(), Slot::Pending(rx.clone()));
                        // The queries run in their own task, so that a cancelled request does not
                        // cancel them for the others waiting on the same name.
                        let this = Arc::clone(self);
                        let name = fqdn.to_owned();
                        tokio::spawn(async move { this.lead(name, tx).await });
                        rx
                    }
                }
            };
            let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                Ok(Some(outcome)) => {
                    return outcome.map(|addr| Resolved { addr, took: started.elapsed(), cached: false });
                }
                // The leader died without an answer (runtime shutting down): try again.
                _ => continue,
            }
        }
    }

    async fn lead(&self, fqdn: String, tx: watch::Sender<Outcome>) {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.lookup(&fqdn)).await {
            Ok(r) => r,
            Err(_) => Err(ResolveError::Timeout { server: self.server, after: self.timeout }),
        };
        if let Some(observe) = &self.observer {
            observe(started.elapsed(), result.as_ref().map(|_| ()));
        }
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok((addr, ttl)) if !ttl.is_zero() => {
                    slots.insert(fqdn.clone(), Slot::Ready { addr: *addr, until: Instant::now() + *ttl });
                }
                _ => {
                    slots.remove(&fqdn);
                }
            }
            // Drop entries that expired long ago, so the map does not grow with every name ever seen.
            if slots.len() > 1024 {
                let now = Instant::now();
                slots.retain(|_, s| !matches!(s, Slot::Ready { until, .. } if *until <= now));
            }
        }
        match &result {
            Ok((addr, _)) => tracing::debug!(fqdn, %addr, took = ?started.elapsed(), "resolved"),
            Err(e) => tracing::info!(fqdn, took = ?started.elapsed(), "cannot resolve: {e}"),
        }
        let _ = tx.send(Some(result.map(|(addr, _)| addr)));
    }

    /// A first (the IPv4 VIP), AAAA when the name has no A record. A failed A query is not
    /// repeated as AAAA: both would wait on the same tunnel build.
    async fn lookup(&self, fqdn: &str) -> Result<(IpAddr, Duration), ResolveError> {
        if let Some(found) = self.query(fqdn, RecordType::A).await? {
            return Ok(found);
        }
        self.query(fqdn, RecordType::AAAA).await?.ok_or(ResolveError::NoAddress)
    }

    /// One question: the first address in the answer and its TTL (capped at [`MAX_CACHE`]), or
    /// `None` if the name exists without an address of that type.
    async fn query(&self, fqdn: &str, rtype: RecordType) -> Result<Option<(IpAddr, Duration)>, ResolveError> {
        let answer = self.client.lookup(fqdn, rtype).await.map_err(|e| match e {
            e if e.timed_out() => ResolveError::Timeout { server: self.server, after: self.timeout },
            ClientError::BadQuery(e) => ResolveError::BadAnswer(format!("{fqdn:?}: {e}")),
            e => ResolveError::Io { server: self.server, error: e.to_string() },
        })?;
        match answer.rcode {
            ResponseCode::NoError => {}
            ResponseCode::ServFail => return Err(ResolveError::ServFail),
            ResponseCode::NXDomain => return Err(ResolveError::NxDomain),
            ResponseCode::Refused => return Err(ResolveError::Refused),
            other => return Err(ResolveError::Rcode(other.to_string())),
        }
        let found = answer.addrs_of(fqdn).into_iter().find(|ip| ip.is_ipv4() == (rtype == RecordType::A));
        Ok(found.map(|addr| {
            let ttl = answer.addrs.iter().filter(|a| a.addr == addr).map(|a| a.ttl).min().unwrap_or(0);
            (addr, Duration::from_secs(ttl.into()).min(MAX_CACHE))
        }))
    }
}
