//! Prometheus metrics in the text exposition format: a page builder and a histogram (no I/O), and
//! with the `serve` feature, a small HTTP/1.1 server for `GET /metrics` that asks the daemon's
//! core task for the page on each scrape (the core owns the state).

use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds (seconds) of the tunnel build latency histogram.
pub const BUILD_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUILD_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUILD_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += s;
        self.count += 1;
    }
}

/// Builds the exposition text.
#[derive(Default)]
pub struct Page(String);

impl Page {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// One metric with one label, a sample per (label value, value).
    pub fn labeled<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.head(name, kind, help);
        for (l, v) in samples {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {v}", escape(l));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        for (b, c) in BUILD_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            self.0,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
    }

    pub fn finish(self) -> String {
        self.0
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(feature = "serve")]
pub use serve::serve;

#[cfg(feature = "serve")]
mod serve {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};
    use tracing::{info, warn};

    /// Serves `GET /metrics` on `addr`; each scrape asks the core task for the page.
    /// `wrap` turns the reply channel of a scrape into a message for the daemon's task.
    pub async fn serve<T: Send + 'static>(
        addr: SocketAddr,
        render: mpsc::Sender<T>,
        wrap: fn(oneshot::Sender<String>) -> T,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        info!(%addr, "metrics listening");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let render = render.clone();
                    async move { Ok::<_, Infallible>(respond(req, render, wrap).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    }

    async fn respond<T>(
        req: Request<Incoming>,
        render: mpsc::Sender<T>,
        wrap: fn(oneshot::Sender<String>) -> T,
    ) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("header"));
            r
        };
        if req.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "only /metrics here\n".into());
        }
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
        }
        let (tx, rx) = oneshot::channel();
        if render.send(wrap(tx)).await.is_err() {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
        }
        match rx.await {
            Ok(page) => reply(StatusCode::OK, page),
            Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_format() {
        let mut p = Page::default();
        p.single("ntm_registered", "gauge", "1 if registered.", 1);
        p.labeled("ntm_peers", "gauge", "Peers by state.", "state", [("built", 2), ("none", 1)]);
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        p.histogram("ntm_tunnel_build_seconds", "Build latency.", &h);
        let t = p.finish();
        assert!(t.contains("ntm_registered 1\n"));
        assert!(t.contains("ntm_peers{state=\"built\"} 2\n"));
        assert!(t.contains("ntm_tunnel_build_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(t.contains("ntm_tunnel_build_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("ntm_tunnel_build_seconds_count 1\n"));
    }
}
