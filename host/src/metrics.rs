//! Prometheus metrics: the page a daemon renders on each scrape, and the `GET /metrics` server.
//!
//! Pages are encoded by `prometheus-client` in the OpenMetrics text format, which Prometheus
//! scrapes: counters get their `_total` suffix there, units their `# UNIT` line and suffix,
//! and every page starts with `ntm_build_info{daemon="…",version="…"} 1`.
//!
//! A daemon whose state lives in one task (a sans-IO core) answers a scrape by building a
//! [`Page`] from that state; values that must survive between scrapes and be updated from many
//! tasks (histograms, the NPS's counters) are `prometheus-client` metrics registered into each
//! page with [`Page::register`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;

pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Unit;

/// The content type of a page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label names and values of one sample.
pub type Labels = Vec<(String, String)>;

/// A histogram with these upper bounds (seconds, say).
pub fn histogram(buckets: &[f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

/// A family of latency histograms ([`LATENCY_BUCKETS`]), one per label set.
pub fn latency_family() -> Family<Labels, Histogram, fn() -> Histogram> {
    Family::new_with_constructor(|| histogram(&LATENCY_BUCKETS))
}

/// Upper bounds (seconds) of the latency histograms: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One scrape's page.
#[derive(Debug)]
pub struct Page {
    registry: Registry,
}

impl Page {
    /// A page of `daemon` (`ntmd`, `dc`, `nps`, `relay`), with its `ntm_build_info`.
    pub fn new(daemon: &str) -> Page {
        let mut registry = Registry::default();
        let info = Info::new(vec![
            ("daemon".to_owned(), daemon.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]);
        registry.register("ntm_build", "The daemon and its version", info);
        Page { registry }
    }

    /// A counter; `name` may end in `_total` (the encoder adds it anyway).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(counter_name(name), help_text(help), c);
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let g: Gauge = Gauge::default();
        g.set(value);
        self.registry.register(name, help_text(help), g);
    }

    /// A counter with one label, a sample per (label value, count).
    pub fn counters<L: Into<String>>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) {
        self.counter_family(name, help, samples.into_iter().map(|(l, v)| (vec![(label.to_owned(), l.into())], v)));
    }

    /// A counter with any labels, a sample per label set.
    pub fn counter_family(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in samples {
            family.get_or_create(&escaped(labels)).inc_by(v);
        }
        self.registry.register(counter_name(name), help_text(help), family);
    }

    /// A gauge with one label, a sample per (label value, value).
    pub fn gauges<L: Into<String>>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, i64)>,
    ) {
        let family = Family::<Labels, Gauge>::default();
        for (l, v) in samples {
            family.get_or_create(&vec![(label.to_owned(), escape(&l.into()))]).set(v);
        }
        self.registry.register(name, help_text(help), family);
    }

    /// A metric that lives longer than the page (a histogram, a family of counters shared by
    /// tasks); `name` without its unit, which the encoder appends.
    pub fn register(&mut self, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help_text(help), unit, metric),
            None => self.registry.register(name, help_text(help), metric),
        }
    }

    /// The page's text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an encoding error would be a bad metric name.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// A label value as the text format wants it (the encoder writes values as they are): a peer's
/// name comes from the network, and one quote in it would break the whole page.
pub fn escape(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_owned();
    }
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escaped(labels: Labels) -> Labels {
    labels.into_iter().map(|(k, v)| (k, escape(&v))).collect()
}

/// The encoder ends every help text with a period: the daemons' own texts end with one too.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

fn counter_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// How a request to the metrics endpoint is answered: `Ok` for a scrape (`GET` or `HEAD
/// /metrics`), else the status and a short body.
pub fn route(method: &Method, path: &str) -> Result<(), (StatusCode, &'static str)> {
    match (path, method) {
        ("/metrics", &Method::GET | &Method::HEAD) => Ok(()),
        ("/metrics", _) => Err((StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n")),
        _ => Err((StatusCode::NOT_FOUND, "not found: try /metrics\n")),
    }
}

/// The `/metrics` listener, bound (so that a taken port fails the daemon's start) but not yet
/// serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
}

/// How long a scrape connection may stay open, and may take to send its request head.
const CONN_TIMEOUT: Duration = Duration::from_secs(30);
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("metrics on {addr}/tcp: {e}")))?;
        Ok(Server { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes for ever: each one calls `render`, which gives the page, or `None` when
    /// the daemon is stopping (503).
    pub async fn run<F, Fut>(self, render: F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "metrics listening");
        }
        let errors = crate::loglimit::LogLimiter::default();
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    errors.hit(|held| tracing::warn!(held, "metrics accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let render = render.clone();
                    async move { Ok::<_, Infallible>(respond(req, render).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONN_TIMEOUT, conn).await;
            });
        }
    }
}

async fn respond<F, Fut>(req: Request<Incoming>, render: F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let (status, ctype, body) = match route(req.method(), req.uri().path()) {
        Err((status, body)) => (status, "text/plain; charset=utf-8", body.to_owned()),
        Ok(()) => match render().await {
            Some(page) => (StatusCode::OK, CONTENT_TYPE, page),
            None => (StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "stopping\n".to_owned()),
        },
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn page_follows_the_conventions() {
        let mut p = Page::new("ntmd");
        p.gauge("ntm_registered", "1 while registered.", 1);
        p.counter("ntm_tunnels_built_total", "Tunnels built.", 3);
        p.counters("ntm_tunnels_destroyed", "By reason.", "reason", [("idle", 2), ("deleted", 0)]);
        let h = histogram(&LATENCY_BUCKETS);
        h.observe(0.003);
        p.register("ntm_tunnel_build", "Build latency.", Some(Unit::Seconds), h.clone());
        let t = p.encode();
        assert!(t.contains("ntm_build_info{daemon=\"ntmd\",version=\""), "{t}");
        assert!(t.contains("\nntm_registered 1\n"), "{t}");
        assert!(t.contains("\nntm_tunnels_built_total 3\n"), "{t}");
        assert!(t.contains("\nntm_tunnels_destroyed_total{reason=\"idle\"} 2\n"), "{t}");
        assert!(t.contains("# UNIT ntm_tunnel_build_seconds seconds\n"), "{t}");
        assert!(t.contains("ntm_tunnel_build_seconds_bucket{le=\"0.0025\"} 0\n"), "{t}");
        assert!(t.contains("ntm_tunnel_build_seconds_bucket{le=\"0.005\"} 1\n"), "{t}");
        assert!(t.contains("ntm_tunnel_build_seconds_count 1\n"), "{t}");
        assert!(t.contains("# HELP ntm_registered 1 while registered.\n"), "{t}");
        let mut p = Page::new("ntmd");
        p.counters("ntm_tunnel_tx_bytes", "Bytes.", "peer", [("a\"b\\c\nd", 1)]);
        let t = p.encode();
        assert!(t.contains("ntm_tunnel_tx_bytes_total{peer=\"a\\\"b\\\\c\\nd\"} 1\n"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    async fn get(addr: SocketAddr, line: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn server_answers_scrapes_only() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(|| async {
            let mut p = Page::new("dc");
            p.gauge("ntm_dc_nodes", "Nodes.", 4);
            Some(p.encode())
        }));
        let r = get(addr, "GET /metrics HTTP/1.1").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("application/openmetrics-text"), "{r}");
        assert!(r.contains("ntm_dc_nodes 4\n"), "{r}");
        assert!(get(addr, "GET / HTTP/1.1").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1").await.starts_with("HTTP/1.1 405"));
        // A taken port is an error at bind time.
        assert!(Server::bind(addr).await.is_err());
    }
}
