//! Prometheus metrics (text exposition format 0.0.4), served at `GET /metrics` on `metrics_listen`.
//!
//! They live as long as the process: a reload keeps counting.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::errors::{full, BoxBody};

/// Label of requests that matched no site.
pub const NO_SITE: &str = "-";

/// Upper bounds (seconds) of the resolution (tunnel build) latency histogram.
const RESOLVE_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    sites: Mutex<BTreeMap<String, SiteStats>>,
    resolve_ok: Histogram,
    resolve_err: Histogram,
    resolve_errors: Mutex<BTreeMap<&'static str, u64>>,
    resolve_cached: AtomicU64,
    pub connections_accepted_http: AtomicU64,
    pub connections_accepted_https: AtomicU64,
    pub connections_open: AtomicI64,
    pub tls_handshake_errors: AtomicU64,
    pub upgrades: AtomicU64,
    pub upgraded_bytes_in: AtomicU64,
    pub upgraded_bytes_out: AtomicU64,
    pub passthrough_connections: AtomicU64,
    pub passthrough_errors: AtomicU64,
    pub passthrough_bytes_in: AtomicU64,
    pub passthrough_bytes_out: AtomicU64,
    pub access_log_dropped: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
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
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; RESOLVE_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = RESOLVE_BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in RESOLVE_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
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

    /// One resolution through ntmd that went to the wire (a tunnel lookup or build).
    pub fn resolution(&self, took: Duration, error: Option<&'static str>) {
        match error {
            None => self.resolve_ok.observe(took),
            Some(kind) => {
                self.resolve_err.observe(took);
                *self.resolve_errors.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
            }
        }
    }

    pub fn resolution_cached(&self) {
        self.resolve_cached.fetch_add(1, Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        header(&mut out, "nps_requests_total", "counter", "Requests answered, by site and status class.");
        for (site, s) in &sites {
            for (i, n) in s.by_class.iter().enumerate() {
                let _ = writeln!(out, "nps_requests_total{{site=\"{}\",class=\"{}xx\"}} {n}", label(site), i + 1);
            }
        }
        header(&mut out, "nps_request_bytes_total", "counter", "Request body bytes received from clients, by site.");
        for (site, s) in &sites {
            let _ = writeln!(out, "nps_request_bytes_total{{site=\"{}\"}} {}", label(site), s.bytes_in);
        }
        header(&mut out, "nps_response_bytes_total", "counter", "Response body bytes sent to clients, by site.");
        for (site, s) in &sites {
            let _ = writeln!(out, "nps_response_bytes_total{{site=\"{}\"}} {}", label(site), s.bytes_out);
        }
        header(
            &mut out,
            "nps_upstream_connects_total",
            "counter",
            "TCP connections opened to nodes, by site and result.",
        );
        for (site, s) in sites.iter().filter(|(site, _)| *site != NO_SITE) {
            let site = label(site);
            let _ = writeln!(out, "nps_upstream_connects_total{{site=\"{site}\",result=\"ok\"}} {}", s.connects_ok);
            let _ =
                writeln!(out, "nps_upstream_connects_total{{site=\"{site}\",result=\"error\"}} {}", s.connects_failed);
        }
        header(&mut out, "nps_upstream_pool_reuse_total", "counter", "Requests sent on a pooled connection, by site.");
        for (site, s) in sites.iter().filter(|(site, _)| *site != NO_SITE) {
            let _ = writeln!(out, "nps_upstream_pool_reuse_total{{site=\"{}\"}} {}", label(site), s.pool_reused);
        }

        header(
            &mut out,
            "nps_resolve_duration_seconds",
            "histogram",
            "Resolutions of node names through ntmd (the tunnel lookup or build), by result.",
        );
        self.resolve_ok.render(&mut out, "nps_resolve_duration_seconds", "result=\"ok\"");
        self.resolve_err.render(&mut out, "nps_resolve_duration_seconds", "result=\"error\"");
        header(&mut out, "nps_resolve_errors_total", "counter", "Failed resolutions, by reason.");
        for (kind, n) in self.resolve_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "nps_resolve_errors_total{{reason=\"{kind}\"}} {n}");
        }
        header(&mut out, "nps_resolve_cached_total", "counter", "Resolutions answered from the (TTL-bound) cache.");
        let _ = writeln!(out, "nps_resolve_cached_total {}", self.resolve_cached.load(Relaxed));

        header(&mut out, "nps_connections_accepted_total", "counter", "Client connections accepted, by listener kind.");
        let _ = writeln!(
            out,
            "nps_connections_accepted_total{{listener=\"http\"}} {}",
            self.connections_accepted_http.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "nps_connections_accepted_total{{listener=\"https\"}} {}",
            self.connections_accepted_https.load(Relaxed)
        );
        let simple: [(&str, &str, &str, i64); 13] = [
            ("nps_connections_open", "gauge", "Client connections open.", self.connections_open.load(Relaxed)),
            ("nps_tls_handshake_errors_total", "counter", "Failed TLS handshakes.", load(&self.tls_handshake_errors)),
            ("nps_upgrades_total", "counter", "Upgraded connections (WebSocket) relayed.", load(&self.upgrades)),
            (
                "nps_upgraded_bytes_in_total",
                "counter",
                "Bytes from clients on upgraded connections.",
                load(&self.upgraded_bytes_in),
            ),
            (
                "nps_upgraded_bytes_out_total",
                "counter",
                "Bytes to clients on upgraded connections.",
                load(&self.upgraded_bytes_out),
            ),
            (
                "nps_passthrough_connections_total",
                "counter",
                "TLS connections passed through by SNI.",
                load(&self.passthrough_connections),
            ),
            (
                "nps_passthrough_errors_total",
                "counter",
                "TLS passthrough connections that could not reach the node.",
                load(&self.passthrough_errors),
            ),
            (
                "nps_passthrough_bytes_in_total",
                "counter",
                "Bytes from clients on passthrough connections.",
                load(&self.passthrough_bytes_in),
            ),
            (
                "nps_passthrough_bytes_out_total",
                "counter",
                "Bytes to clients on passthrough connections.",
                load(&self.passthrough_bytes_out),
            ),
            (
                "nps_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the writer fell behind.",
                load(&self.access_log_dropped),
            ),
            ("nps_reloads_total", "counter", "Configuration reloads applied.", load(&self.reloads_ok)),
            (
                "nps_reload_failures_total",
                "counter",
                "Configuration reloads rejected (the old one kept).",
                load(&self.reloads_failed),
            ),
            ("nps_up", "gauge", "1 while the proxy runs.", 1),
        ];
        for (name, kind, help, v) in simple {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }

    /// The `/metrics` endpoint.
    pub async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
        let (status, body) = match (req.uri().path(), req.method()) {
            ("/metrics", &Method::GET | &Method::HEAD) => (StatusCode::OK, self.render()),
            ("/metrics", _) => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned()),
            _ => (StatusCode::NOT_FOUND, "not found: try /metrics\n".to_owned()),
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let ctype = if status == StatusCode::OK { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain" };
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        Ok(resp)
    }
}

fn load(a: &AtomicU64) -> i64 {
    a.load(Relaxed).try_into().unwrap_or(i64::MAX)
}

/// Escapes a label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
        m.resolution(Duration::from_micros(300), None);
        m.resolution(Duration::from_millis(3), Some("servfail"));
        let text = m.render();
        assert!(text.contains("nps_requests_total{site=\"rpi.home.ntm.test\",class=\"2xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_requests_total{site=\"rpi.home.ntm.test\",class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_requests_total{site=\"-\",class=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("nps_response_bytes_total{site=\"rpi.home.ntm.test\"} 2300\n"), "{text}");
        assert!(text.contains("nps_upstream_connects_total{site=\"rpi.home.ntm.test\",result=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_bucket{result=\"ok\",le=\"0.00025\"} 0\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_bucket{result=\"ok\",le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_duration_seconds_count{result=\"error\"} 1\n"), "{text}");
        assert!(text.contains("nps_resolve_errors_total{reason=\"servfail\"} 1\n"), "{text}");
    }
}
