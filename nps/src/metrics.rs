//! Prometheus metrics, served at `GET /metrics` on `metrics_listen` (the page is `host::metrics`'s).
//!
//! They live as long as the process: a reload keeps counting.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::metrics::{self, Histogram, Labels, Page, Unit};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::metrics::family::Family;

use crate::errors::{full, BoxBody};

/// Label of requests that matched no site.
pub const NO_SITE: &str = "-";

/// The `reason` labels of `nps_refused_total`: the connection caps (by their keys), a resolved
/// address outside `vip_ranges`, and a request or connection that came back to this NPS.
pub const REFUSALS: [&str; 5] =
    ["max_connections", "max_connections_per_client", "max_connections_per_site", "not_vip", "loop"];

/// Every counter of the proxy, shared by the listeners, the request handlers and the
/// `/metrics` server. The counters without accessor methods are updated in place by whoever
/// sees the event; bytes of relayed connections are added when the connection closes cleanly.
pub struct Metrics {
    sites: Mutex<BTreeMap<String, SiteStats>>,
    /// Resolution (tunnel build) latency, by result (ok, error).
    resolve: Family<Labels, Histogram, fn() -> Histogram>,
    resolve_errors: Mutex<BTreeMap<&'static str, u64>>,
    resolve_cached: AtomicU64,
    /// Client connections accepted on a `listen_http` socket.
    pub connections_accepted_http: AtomicU64,
    /// Client connections accepted on a `listen_https` socket (before any TLS).
    pub connections_accepted_https: AtomicU64,
    /// Client connections open now (a gauge: up on accept, down on close), TLS handshakes and
    /// upgraded connections included.
    pub connections_open: AtomicI64,
    /// Connections and requests refused, by [`REFUSALS`] reason.
    refused: [AtomicU64; REFUSALS.len()],
    /// Client HTTP connections closed after `idle_timeout_ms` without a request.
    pub idle_closed_http: AtomicU64,
    /// WebSocket and TLS passthrough connections closed after `tunnel_idle_timeout_ms` without a byte.
    pub idle_closed_tunnels: AtomicU64,
    /// TLS connections that failed before HTTP: no or a bad ClientHello in time, no site
    /// terminating TLS, or a failed handshake.
    pub tls_handshake_errors: AtomicU64,
    /// Requests whose connection switched protocols (WebSocket) and was then relayed as bytes.
    pub upgrades: AtomicU64,
    /// Bytes from clients to nodes on upgraded connections.
    pub upgraded_bytes_in: AtomicU64,
    /// Bytes from nodes to clients on upgraded connections.
    pub upgraded_bytes_out: AtomicU64,
    /// TLS connections relayed untouched, by SNI, to a passthrough site's node.
    pub passthrough_connections: AtomicU64,
    /// Passthrough connections that could not reach the node (resolution or connect failed).
    pub passthrough_errors: AtomicU64,
    /// Bytes from clients to nodes on passthrough connections, ClientHello included.
    pub passthrough_bytes_in: AtomicU64,
    /// Bytes from nodes to clients on passthrough connections.
    pub passthrough_bytes_out: AtomicU64,
    /// Access log entries dropped because the writer thread fell behind.
    pub access_log_dropped: AtomicU64,
    /// Configuration reloads (SIGHUP) applied.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads rejected; the previous configuration stays in force.
    pub reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let resolve = metrics::latency_family();
        // Both series exist from the start, at zero (a dashboard's rate() needs them).
        for result in ["ok", "error"] {
            let _ = resolve.get_or_create(&vec![("result".to_owned(), result.to_owned())]);
        }
        Metrics {
            sites: Mutex::default(),
            resolve,
            resolve_errors: Mutex::default(),
            resolve_cached: AtomicU64::default(),
            connections_accepted_http: AtomicU64::default(),
            connections_accepted_https: AtomicU64::default(),
            connections_open: AtomicI64::default(),
            refused: Default::default(),
            idle_closed_http: AtomicU64::default(),
            idle_closed_tunnels: AtomicU64::default(),
            tls_handshake_errors: AtomicU64::default(),
            upgrades: AtomicU64::default(),
            upgraded_bytes_in: AtomicU64::default(),
            upgraded_bytes_out: AtomicU64::default(),
            passthrough_connections: AtomicU64::default(),
            passthrough_errors: AtomicU64::default(),
            passthrough_bytes_in: AtomicU64::default(),
            passthrough_bytes_out: AtomicU64::default(),
            access_log_dropped: AtomicU64::default(),
            reloads_ok: AtomicU64::default(),
            reloads_failed: AtomicU64::default(),
        }
    }
}

#[derive(Default, Clone)]
struct SiteStats {
    /// Responses by status class 1xx..5xx.
    by_class: [u64; 5],
    bytes_in: u64,
    bytes_out: u64,
    connects_ok: u64,
    connects_failed: u64,
    pool_reused: u64,
    retries: u64,
}

impl Metrics {
    fn site<R>(&self, site: &str, f: impl FnOnce(&mut SiteStats) -> R) -> R {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sites.get_mut(site) {
            return f(s);
        }
        f(sites.entry(site.to_owned()).or_default())
    }

    /// One finished request: its status and the body bytes in each direction.
    pub fn request(&self, site: &str, status: u16, bytes_in: u64, bytes_out: u64) {
        self.site(site, |s| {
            if let 100..=599 = status {
                s.by_class[usize::from(status / 100 - 1)] += 1;
            }
            s.bytes_in += bytes_in;
            s.bytes_out += bytes_out;
        });
    }

    /// A new TCP connection to a node (through its tunnel).
    pub fn upstream_connect(&self, site: &str, ok: bool) {
        self.site(site, |s| if ok { s.connects_ok += 1 } else { s.connects_failed += 1 });
    }

    /// A request sent on a pooled connection.
    pub fn pool_reuse(&self, site: &str) {
        self.site(site, |s| s.pool_reused += 1);
    }

    /// A request sent again on a new connection, after a pooled one gave no answer.
    pub fn upstream_retry(&self, site: &str) {
        self.site(site, |s| s.retries += 1);
    }

    /// One resolution through ntmd that went to the wire (a tunnel lookup or build).
    pub fn resolution(&self, took: Duration, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.resolve.get_or_create(&vec![("result".to_owned(), result.to_owned())]).observe(took.as_secs_f64());
        match error {
            None => {}
            Some(kind) => {
                *self.resolve_errors.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
            }
        }
    }

    /// A connection or request refused, for `reason`, one of [`REFUSALS`].
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// A site's VIP taken from the resolver's cache, without asking ntmd.
    pub fn resolution_cached(&self) {
        self.resolve_cached.fetch_add(1, Relaxed);
    }

    /// The page.
    pub fn render(&self) -> String {
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut p = Page::new("nps");
        let site = |s: &str| ("site".to_owned(), s.to_owned());
        let nodes = || sites.iter().filter(|(s, _)| *s != NO_SITE);
        p.counter_family(
            "nps_requests",
            "Requests answered, by site and status class.",
            sites.iter().flat_map(|(s, st)| {
                st.by_class
                    .iter()
                    .enumerate()
                    .map(move |(i, n)| (vec![site(s), ("class".to_owned(), format!("{}xx", i + 1))], *n))
            }),
        );
        p.counter_family(
            "nps_request_bytes",
            "Request body bytes received from clients, by site.",
            sites.iter().map(|(s, st)| (vec![site(s)], st.bytes_in)),
        );
        p.counter_family(
            "nps_response_bytes",
            "Response body bytes sent to clients, by site.",
            sites.iter().map(|(s, st)| (vec![site(s)], st.bytes_out)),
        );
        p.counter_family(
            "nps_upstream_connects",
            "TCP connections opened to nodes, by site and result.",
            nodes().flat_map(|(s, st)| {
                [("ok", st.connects_ok), ("error", st.connects_failed)]
                    .map(|(r, n)| (vec![site(s), ("result".to_owned(), r.to_owned())], n))
            }),
        );
        p.counter_family(
            "nps_upstream_pool_reuse",
            "Requests sent on a pooled connection, by site.",
            nodes().map(|(s, st)| (vec![site(s)], st.pool_reused)),
        );
        p.counter_family(
            "nps_upstream_retries",
            "Requests sent again on a new connection after a pooled one gave no answer (a dead tunnel), by site.",
            nodes().map(|(s, st)| (vec![site(s)], st.retries)),
        );
        p.register(
            "nps_resolve_duration",
            "Resolutions of node names through ntmd (the tunnel lookup or build), by result.",
            Some(Unit::Seconds),
            self.resolve.clone(),
        );
        p.counters(
            "nps_resolve_errors",
            "Failed resolutions, by reason.",
            "reason",
            self.resolve_errors.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, n)| (*k, *n)),
        );
        p.counter("nps_resolve_cached", "Resolutions answered from the (TTL-bound) cache.", load(&self.resolve_cached));
        p.counters(
            "nps_connections_accepted",
            "Client connections accepted, by listener kind.",
            "listener",
            [("http", load(&self.connections_accepted_http)), ("https", load(&self.connections_accepted_https))],
        );
        p.gauge("nps_connections_open", "Client connections open.", self.connections_open.load(Relaxed));
        p.counters(
            "nps_refused",
            "Connections and requests refused: by a connection cap (named by its key), for a resolved \
             address outside vip_ranges (not_vip), or because they came back to this NPS (loop).",
            "reason",
            REFUSALS.iter().zip(&self.refused).map(|(r, n)| (*r, load(n))),
        );
        p.counters(
            "nps_idle_closed",
            "Connections closed for being idle: client HTTP connections without a request (http), \
             WebSocket and TLS passthrough connections without a byte (tunnel).",
            "connection",
            [("http", load(&self.idle_closed_http)), ("tunnel", load(&self.idle_closed_tunnels))],
        );
        let counters: [(&str, &str, &AtomicU64); 11] = [
            ("nps_tls_handshake_errors", "Failed TLS handshakes.", &self.tls_handshake_errors),
            ("nps_upgrades", "Upgraded connections (WebSocket) relayed.", &self.upgrades),
            ("nps_upgraded_bytes_in", "Bytes from clients on upgraded connections.", &self.upgraded_bytes_in),
            ("nps_upgraded_bytes_out", "Bytes to clients on upgraded connections.", &self.upgraded_bytes_out),
            ("nps_passthrough_connections", "TLS connections passed through by SNI.", &self.passthrough_connections),
            (
                "nps_passthrough_errors",
                "TLS passthrough connections that could not reach the node.",
                &self.passthrough_errors,
            ),
            ("nps_passthrough_bytes_in", "Bytes from clients on passthrough connections.", &self.passthrough_bytes_in),
            ("nps_passthrough_bytes_out", "Bytes to clients on passthrough connections.", &self.passthrough_bytes_out),
            (
                "nps_access_log_dropped",
                "Access log lines dropped because the writer fell behind.",
                &self.access_log_dropped,
            ),
            ("nps_reloads", "Configuration reloads applied.", &self.reloads_ok),
            ("nps_reload_failures", "Configuration reloads rejected (the old one kept).", &self.reloads_failed),
        ];
        for (name, help, v) in counters {
            p.counter(name, help, load(v));
        }
        p.gauge("nps_up", "1 while the proxy runs.", 1);
        p.encode()
    }

    /// The `/metrics` endpoint.
    pub async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
        let (status, ctype, body) = match metrics::route(req.method(), req.uri().path()) {
            Ok(()) => (StatusCode::OK, metrics::CONTENT_TYPE, self.render()),
            Err((status, body)) => (status, "text/plain; charset=utf-8", body.to_owned()),
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        Ok(resp)
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.request("rpi.home.ntm.test", 200, 10, 2000);
        m.request("rpi.home.ntm.test", 502, 0, 300);
        m.request(NO_SITE, 404, 0, 100);
        m.upstream_connect("rpi.home.ntm.test", true);
        m.upstream_retry("rpi.home.ntm.test");
        m.resolution(Duration::from_micros(300), None);
        m.resolution(Duration::from_millis(3), Some("servfail"));
        m.refused("not_vip");
        let text = m.render();
        assert!(text.contains("nps_requests_total{site=\"rpi.home.ntm.test\",class=\"2xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_requests_total{site=\"rpi.home.ntm.test\",class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_requests_total{site=\"-\",class=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_response_bytes_total{site=\"rpi.home.ntm.test\"} 2300\n"), "{text}");
        assert!(text.contains("nps_upstream_connects_total{site=\"rpi.home.ntm.test\",result=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("nps_upstream_retries_total{site=\"rpi.home.ntm.test\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_bucket{le=\"0.00025\",result=\"ok\"} 0\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_bucket{le=\"0.0005\",result=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_count{result=\"error\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_errors_total{reason=\"servfail\"} 1\n"), "{text}");
        assert!(text.contains("nps_refused_total{reason=\"not_vip\"} 1\n"), "{text}");
        assert!(text.contains("nps_refused_total{reason=\"loop\"} 0\n"), "{text}");
        assert!(text.contains("nps_idle_closed_total{connection=\"tunnel\"} 0\n"), "{text}");
    }
}
