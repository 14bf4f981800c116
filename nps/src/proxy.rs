//! The reverse proxy, in phases (the shape of pingora's `ProxyHttp`):
//!
//! 1. [`request_filter`]: which site is asked for (Host / `:authority`), and refusals: a request
//!    that went through this NPS already (its `Via` names it: 508), unknown host (404),
//!    absolute-form for another host (403), CONNECT (405), Host ≠ SNI (421), body too large
//!    (413); then the site's connection cap (`max_connections_per_site`, 503);
//! 2. [`upstream_peer`]: the node's VIP, resolved through the local `ntmd` (which builds the tunnel
//!    or waits for the build in progress); an address outside `vip_ranges` is refused (502)
//!    without a connection, whatever the resolver said;
//! 3. [`upstream_request_filter`]: the request as the node gets it (origin-form, HTTP/1.1,
//!    hop-by-hop headers removed, `Via` appended). The NPS is the edge: `X-Forwarded-For`,
//!    `-Proto`, `-Host`, `Forwarded` and `X-Real-IP` are set from what it saw, and whatever the
//!    client sent in their place, or in other headers that claim a client address, is dropped;
//! 4. the exchange, on a pooled connection to the node ([`crate::pool`]), upgrades included; a
//!    pooled connection that stays silent (its tunnel died) is dropped, and the request sent
//!    again on a new connection when that is safe;
//! 5. [`response_filter`]: hop-by-hop headers removed;
//! 6. [`RequestLog::finish`]: access log and metrics, once the response body is done.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::accesslog::{AccessLog, Entry};
use crate::body::{BodyTooLarge, RequestBody, ResponseBody};
use crate::config::{canonical, Config, Site};
use crate::errors::{BoxBody, ProxyError};
use crate::idle::Activity;
use crate::limits::{ConnSlot, Limits, SiteSlot};
use crate::metrics::{Metrics, NO_SITE};
use crate::pool::{Pool, SendError, Timeouts};
use crate::resolve::{ResolveError, Resolver};
use crate::server::DrainToken;
use crate::upgrade;

/// Everything a request needs from one generation of the configuration. A reload builds a new
/// one; requests in flight finish with the one they started with.
pub struct Shared {
    /// The configuration this generation was built from.
    pub config: Config,
    sites: HashMap<String, Site>,
    /// Turns a site's FQDN into its VIP through the local `ntmd` stub (`resolver`).
    pub resolver: Arc<Resolver>,
    /// Keep-alive connections to the nodes; a reload starts a new, empty pool.
    pub pool: Arc<Pool>,
    /// The access log writer, if `access_log` is set.
    pub access_log: Option<AccessLog>,
    /// The process's counters, the same across reloads.
    pub metrics: Arc<Metrics>,
    /// The TLS server configuration of the terminated sites.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The connection caps' counts, the same across reloads.
    pub limits: Arc<Limits>,
    /// What this NPS adds to `Via`: `1.1 <name>`.
    via: HeaderValue,
}

/// Why a configuration could not be put into service (at start or on reload).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A terminated site's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The access log file could not be opened for appending.
    #[error("{0}")]
    AccessLog(std::io::Error),
}

impl Shared {
    /// Loads the certificates and opens the access log of `config`. Needs a tokio runtime.
    pub fn build(config: Config, metrics: Arc<Metrics>, limits: Arc<Limits>) -> Result<Shared, BuildError> {
        let tls = crate::tls::server_config(&config)?;
        let access_log = match &config.access_log {
            Some(target) => Some(AccessLog::open(target, metrics.clone()).map_err(BuildError::AccessLog)?),
            None => None,
        };
        let m = metrics.clone();
        let resolver = Resolver::new(config.resolver, config.connect_timeout)
            .with_observer(Arc::new(move |took, r| m.resolution(took, r.err().map(ResolveError::kind))));
        let pool = Pool::new(config.pool_idle_timeout, config.pool_max_idle_per_node, metrics.clone());
        let via = HeaderValue::from_str(&format!("1.1 {}", config.name)).expect("a checked name is a valid value");
        Ok(Shared {
            sites: config.site_map(),
            config,
            resolver: Arc::new(resolver),
            pool,
            access_log,
            metrics,
            tls,
            limits,
            via,
        })
    }

    /// The site serving `host` (normalized: lowercase, no port, no trailing dot).
    pub fn site(&self, host: &str) -> Option<&Site> {
        self.sites.get(host)
    }
}

/// The client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address and port, as accepted.
    pub peer: SocketAddr,
    /// TLS terminated here.
    pub tls: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
    /// Counts the connection against the connection caps for as long as anything uses it: the
    /// connection, its requests, its upgraded (WebSocket) tunnel.
    pub(crate) _slot: ConnSlot,
    /// Requests in progress and the last activity, for `idle_timeout_ms`.
    pub(crate) activity: Arc<Activity>,
}

/// What the logging phase needs, captured when the request arrives.
pub struct RequestLog {
    shared: Arc<Shared>,
    client: IpAddr,
    time: SystemTime,
    started: Instant,
    method: Method,
    target: String,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    site: Option<String>,
    status: u16,
    bytes_in: Arc<AtomicU64>,
    /// The request's place under `max_connections_per_site`, given back once the response is
    /// done (or handed to the upgraded tunnel).
    site_slot: Option<SiteSlot>,
}

impl RequestLog {
    fn new<B>(shared: Arc<Shared>, conn: &ConnInfo, req: &Request<B>) -> RequestLog {
        let target = match req.version() {
            Version::HTTP_2 => req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |p| p.to_string()),
            _ => req.uri().to_string(),
        };
        RequestLog {
            shared,
            client: conn.peer.ip(),
            time: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            target,
            version: req.version(),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            site: None,
            status: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            site_slot: None,
        }
    }

    /// Phase 6: once the response body is done.
    fn finish(self, bytes_out: u64) {
        let site = self.site.as_deref().unwrap_or(NO_SITE);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.shared.metrics.request(site, self.status, bytes_in, bytes_out);
        tracing::trace!(site, status = self.status, took = ?self.started.elapsed(), "request done");
        if let Some(log) = &self.shared.access_log {
            log.log(Entry {
                client: self.client,
                time: self.time,
                method: self.method,
                target: self.target,
                version: self.version,
                status: self.status,
                bytes: bytes_out,
                referer: self.referer,
                user_agent: self.user_agent,
            });
        }
    }
}

/// The hyper service: one request from a client, answered by its node or with an error page.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    drain: DrainToken,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let busy = conn.activity.begin();
    let mut log = RequestLog::new(shared.clone(), &conn, &req);
    let http1 = req.version() < Version::HTTP_2;
    let resp = match proxy(&shared, &conn, &drain, &mut log, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status();
            let site = log.site.as_deref().unwrap_or(NO_SITE);
            let limits = &shared.limits;
            let limiter = match &e {
                ProxyError::Loop { .. } | ProxyError::NotVip { .. } => Some(&limits.log_refused),
                ProxyError::SiteBusy { .. } => Some(&limits.log_sites),
                _ if status.is_server_error() => Some(&limits.log_upstream),
                _ => None,
            };
            match limiter {
                // Anyone can cause these: at most a line a second of each kind.
                Some(l) => {
                    l.hit(|held| tracing::warn!(client = %conn.peer, site, unlogged_since_last = held, "{status}: {e}"))
                }
                None => tracing::debug!(client = %conn.peer, site, "{status}: {e}"),
            }
            let mut resp = e.response();
            if http1 && matches!(e, ProxyError::TooLarge { .. } | ProxyError::BadRequest(_)) {
                // The rest of the request body is left unread: the connection cannot be reused.
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    log.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let done = move |sent| {
        log.finish(sent);
        drop(busy);
    };
    Ok(Response::from_parts(parts, ResponseBody::new(body, Box::new(done))))
}

async fn proxy(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    drain: &DrainToken,
    log: &mut RequestLog,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, ProxyError> {
    let (site, host) = request_filter(shared, conn, &req)?;
    log.site = Some(site.fqdn.clone());
    let cap = shared.config.max_connections_per_site;
    let slot = shared.limits.site(&site.fqdn, cap).map_err(|_| {
        shared.metrics.refused("max_connections_per_site");
        ProxyError::SiteBusy { fqdn: site.fqdn.clone(), limit: cap }
    })?;
    log.site_slot = Some(slot);
    let connect_deadline = tokio::time::Instant::now() + shared.config.connect_timeout;
    let peer = upstream_peer(shared, &site, connect_deadline).await?;

    let upgrading = upgrade::is_upgrade_request(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = upstream_request_filter(shared, conn, req, &host, upgrading, log.bytes_in.clone())?;

    let timeouts =
        Timeouts { response: shared.config.response_timeout, first_byte: shared.config.pool_first_byte_timeout };
    let sent = shared.pool.send(&site.fqdn, peer, upstream_req, connect_deadline, timeouts);
    let mut resp = sent.await.map_err(|e| send_error(&site, peer, shared, e))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match client_upgrade {
            Some(client) => {
                let node = hyper::upgrade::on(&mut resp);
                // The tunnel holds the client connection's and the site's slots for its life.
                let keep = (conn.clone(), log.site_slot.take());
                upgrade::spawn_tunnel(client, node, site.fqdn.clone(), shared, keep, drain.clone());
            }
            None => {
                return Err(ProxyError::Upstream {
                    fqdn: site.fqdn.clone(),
                    error: "the node switched protocols without being asked to".into(),
                })
            }
        }
    }
    Ok(response_filter(resp))
}

/// Phase 1: the site asked for, or why the request is refused.
fn request_filter<B: http_body::Body>(
    shared: &Shared,
    conn: &ConnInfo,
    req: &Request<B>,
) -> Result<(Site, String), ProxyError> {
    if via_names(req.headers(), &shared.config.name) {
        shared.metrics.refused("loop");
        return Err(ProxyError::Loop { name: shared.config.name.clone() });
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    let absolute_form = req.version() < Version::HTTP_2 && req.uri().scheme().is_some();
    let raw = if absolute_form || req.version() >= Version::HTTP_2 && req.uri().authority().is_some() {
        req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_default()
    } else {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let first = hosts.next().ok_or_else(|| ProxyError::BadRequest("the Host header is missing".into()))?;
        if hosts.next().is_some() {
            return Err(ProxyError::BadRequest("the request has more than one Host header".into()));
        }
        first.to_str().map_err(|_| ProxyError::BadRequest("the Host header is not ASCII".into()))?.to_owned()
    };
    let host = normalize_host(&raw);
    if host.is_empty() {
        return Err(ProxyError::BadRequest("the Host header is empty".into()));
    }
    let Some(site) = shared.site(&host) else {
        return Err(if absolute_form { ProxyError::NotOpenProxy(host) } else { ProxyError::UnknownHost(host) });
    };
    if conn.tls {
        if let Some(sni) = &conn.sni {
            if *sni != host {
                return Err(ProxyError::Misdirected { sni: sni.clone(), host });
            }
        }
    }
    let limit = shared.config.max_request_body;
    if limit != 0 && req.body().size_hint().lower() > limit {
        return Err(ProxyError::TooLarge { limit });
    }
    Ok((site.clone(), raw))
}

/// The host part of a Host header or authority: port stripped, lowercase, without trailing dot.
pub fn normalize_host(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        // An IPv6 literal: keep up to the bracket.
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// Phase 2: the node's VIP and port, once its tunnel is up.
async fn upstream_peer(shared: &Shared, site: &Site, deadline: tokio::time::Instant) -> Result<SocketAddr, ProxyError> {
    let err = |error| ProxyError::Resolve { fqdn: site.fqdn.clone(), error };
    let resolved = tokio::time::timeout_at(deadline, shared.resolver.resolve(&site.fqdn))
        .await
        .map_err(|_| {
            err(ResolveError::Timeout { server: shared.resolver.server(), after: shared.config.connect_timeout })
        })?
        .map_err(err)?;
    if resolved.cached {
        shared.metrics.resolution_cached();
    }
    // Fail closed: a resolver that failed over to the public DNS, or an answer spoofed, must not
    // send the request (decrypted, for a terminated site) anywhere but into a tunnel.
    if !shared.config.is_vip(resolved.addr) {
        shared.metrics.refused("not_vip");
        return Err(ProxyError::NotVip { fqdn: site.fqdn.clone(), addr: resolved.addr });
    }
    Ok(SocketAddr::new(canonical(resolved.addr), site.upstream_port))
}

/// Whether a `Via` header names `name` as a proxy the message went through (`1.1 name`, or
/// `HTTP/1.1 name:port`; case-insensitive).
pub fn via_names(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.split_whitespace().nth(1))
        .any(|by| {
            let host = match by.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => by,
            };
            host.eq_ignore_ascii_case(name)
        })
}

/// Headers in which clients claim an address of theirs, read by one web framework or another:
/// the NPS, the edge, sends the nodes none but its own (`X-Forwarded-*` go too, all of them).
const CLIENT_ADDRESS_HEADERS: [&str; 9] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; `Upgrade` survives for upgrades.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and those the `Connection` header names. With `upgrade`,
/// `Upgrade` stays and `Connection: upgrade` is set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if !(upgrade && name == "upgrade") {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Phase 3: the request as the node gets it.
fn upstream_request_filter(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    host: &str,
    upgrade: bool,
    bytes_in: Arc<AtomicU64>,
) -> Result<Request<RequestBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let from_h2 = parts.version >= Version::HTTP_2;
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => {
            Uri::try_from(pq.as_str()).map_err(|e| ProxyError::BadRequest(format!("bad request target: {e}")))?
        }
        None => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    // `Expect: 100-continue` was answered here (hyper sends the 100 when the body is read).
    h.remove(header::EXPECT);
    if from_h2 && h.get_all(header::COOKIE).iter().nth(1).is_some() {
        // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
        let joined = join_values(h, header::COOKIE, "; ");
        h.insert(header::COOKIE, joined);
    }
    let host_value = HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest("bad host".into()))?;
    h.insert(header::HOST, host_value.clone());

    // The NPS is the edge: where the request came from is what it saw, not what the client says.
    let claimed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-forwarded-") || CLIENT_ADDRESS_HEADERS.contains(&k.as_str()))
        .cloned()
        .collect();
    for name in claimed {
        h.remove(name);
    }
    let client = canonical(conn.peer.ip());
    let proto = if conn.tls { "https" } else { "http" };
    let client_value = HeaderValue::from_str(&client.to_string()).expect("an IP is valid");
    h.insert(HeaderName::from_static("x-forwarded-for"), client_value.clone());
    h.insert(HeaderName::from_static("x-real-ip"), client_value);
    h.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(proto));
    h.insert(HeaderName::from_static("x-forwarded-host"), host_value);
    let for_param = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let forwarded = format!("for={for_param};proto={proto};host={}", forwarded_value(host));
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        h.insert(header::FORWARDED, v);
    }
    // Via: the hops before, then this one (a request that comes back here is refused).
    let via = if h.contains_key(header::VIA) {
        let mut v = join_values(h, header::VIA, ", ").as_bytes().to_vec();
        v.extend_from_slice(b", ");
        v.extend_from_slice(shared.via.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| shared.via.clone())
    } else {
        shared.via.clone()
    };
    h.insert(header::VIA, via);
    let body = RequestBody::new(body, shared.config.max_request_body, bytes_in);
    Ok(Request::from_parts(parts, body))
}

/// All the values of `name`, joined by `sep`.
fn join_values(h: &HeaderMap, name: HeaderName, sep: &str) -> HeaderValue {
    let mut out: Vec<u8> = Vec::new();
    for v in h.get_all(name).iter() {
        if !out.is_empty() {
            out.extend_from_slice(sep.as_bytes());
        }
        out.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Forwarded` parameter value: a token as it is, anything else quoted (RFC 7239 §4).
fn forwarded_value(v: &str) -> String {
    let token = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Phase 5: the node's response as the client gets it.
fn response_filter(resp: Response<Incoming>) -> Response<BoxBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, parts.status == StatusCode::SWITCHING_PROTOCOLS);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

fn send_error(site: &Site, addr: SocketAddr, shared: &Shared, e: SendError) -> ProxyError {
    let fqdn = site.fqdn.clone();
    match e {
        SendError::ConnectTimeout => ProxyError::ConnectTimeout { fqdn, after: shared.config.connect_timeout },
        SendError::Connect(e) => ProxyError::ConnectFailed { fqdn, addr, error: e.to_string() },
        SendError::ResponseTimeout(after) => ProxyError::ResponseTimeout { fqdn, after },
        SendError::Handshake(e) => ProxyError::Upstream { fqdn, error: e.to_string() },
        SendError::Send(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if let Some(too_large) = s.downcast_ref::<BodyTooLarge>() {
                    return ProxyError::TooLarge { limit: too_large.limit };
                }
                source = s.source();
            }
            if e.is_user() {
                // The client's own body failed: it went away, or sent a broken body.
                return ProxyError::BadRequest(format!("the request body could not be read: {}", error_chain(&e)));
            }
            ProxyError::Upstream { fqdn, error: error_chain(&e) }
        }
    }
}

/// `e: cause: cause…`
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("RPI.home.ntm.test"), "rpi.home.ntm.test");
        assert_eq!(normalize_host("rpi.home.ntm.test.:8080"), "rpi.home.ntm.test");
        assert_eq!(normalize_host("rpi.home.ntm.test:"), "rpi.home.ntm.test");
        assert_eq!(normalize_host("[2001:db8::1]:80"), "[2001:db8::1]");
        assert_eq!(normalize_host("198.18.20.2"), "198.18.20.2");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(!up.contains_key("x-secret"));
    }

    #[test]
    fn via_names_this_proxy_in_any_hop() {
        let mut h = HeaderMap::new();
        assert!(!via_names(&h, "edge-1"));
        h.append(header::VIA, HeaderValue::from_static("1.0 fred, 1.1 p.example.net (Apache/1.1)"));
        assert!(!via_names(&h, "edge-1"));
        assert!(via_names(&h, "P.example.NET"));
        h.append(header::VIA, HeaderValue::from_static("HTTP/1.1 EDGE-1:8080"));
        assert!(via_names(&h, "edge-1"));
        assert!(!via_names(&h, "edge"));
    }

    #[test]
    fn forwarded_values_quoted_when_needed() {
        assert_eq!(forwarded_value("rpi.home.ntm.test"), "rpi.home.ntm.test");
        assert_eq!(forwarded_value("rpi.home.ntm.test:8080"), "\"rpi.home.ntm.test:8080\"");
    }
}
