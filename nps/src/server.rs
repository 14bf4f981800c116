//! Listeners, connections, reload and graceful shutdown.
//!
//! Each listener has its accept loop. A plain HTTP connection is served by hyper's auto builder
//! (HTTP/1.1, or HTTP/2 when the client starts with the h2 preface); a TLS connection is first
//! peeked for its SNI, then either relayed untouched to the node (passthrough) or decrypted here
//! (terminate) and served the same way. Every request takes the configuration generation that is
//! current when it arrives, so a reload (SIGHUP) applies to the next request, keep-alive
//! connections included.
//!
//! A new client connection is first counted against `max_connections` and
//! `max_connections_per_client` ([`crate::limits`]), and closed at once past them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{canonical, Config, TlsMode};
use crate::idle::{relay, End};
use crate::limits::{ConnSlot, Limits};
use crate::metrics::Metrics;
use crate::proxy::{self, BuildError, ConnInfo, Shared};
use crate::tls::{self, Rewind};

/// Held by everything that must finish before the process exits (connections, upgraded
/// tunnels); shutdown waits until every token is dropped, or the grace period ends.
#[derive(Clone)]
pub struct DrainToken(#[allow(dead_code)] mpsc::Sender<()>);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Plain HTTP from clients (`listen_http`).
    Http,
    /// TLS from clients, terminated or passed through (`listen_https`).
    Https,
    /// The Prometheus page (`metrics_listen`).
    Metrics,
}

/// Why the NPS could not start, or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration's certificates or access log could not be loaded.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({kind:?}): {error}")]
    Bind {
        /// The address as configured.
        addr: SocketAddr,
        /// What it was to serve.
        kind: Kind,
        /// The bind error (address in use, not local, permission).
        error: std::io::Error,
    },
}

struct Listener {
    kind: Kind,
    /// As configured (its port may be 0).
    configured: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// State shared by the accept loops and connections.
struct Inner {
    current: RwLock<Arc<Shared>>,
    metrics: Arc<Metrics>,
    /// The open connections counted against the caps, across reloads.
    limits: Arc<Limits>,
    /// The local addresses of this NPS's own TLS passthrough connections to nodes: one of them
    /// coming in on a listener is a loop (the site's VIP leads back here).
    passthrough_sources: Mutex<HashSet<SocketAddr>>,
    /// Becomes true when the server shuts down: connections finish their requests and close.
    shutdown: watch::Receiver<bool>,
}

impl Inner {
    fn current(&self) -> Arc<Shared> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A running NPS.
pub struct Server {
    inner: Arc<Inner>,
    listeners: Mutex<Vec<Listener>>,
    shutdown: watch::Sender<bool>,
    drain: Mutex<Option<DrainToken>>,
    drained: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Server {
    /// Loads certificates, opens the access log, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits::new(metrics.clone());
        let shared = Arc::new(Shared::build(config, metrics.clone(), limits.clone())?);
        warn_if_too_few_descriptors(&shared.config);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (drain_tx, drained) = mpsc::channel(1);
        let inner = Inner {
            current: RwLock::new(shared.clone()),
            metrics,
            limits,
            passthrough_sources: Mutex::default(),
            shutdown: shutdown_rx,
        };
        let server = Server {
            inner: Arc::new(inner),
            listeners: Mutex::new(Vec::new()),
            shutdown,
            drain: Mutex::new(Some(DrainToken(drain_tx))),
            drained: tokio::sync::Mutex::new(drained),
        };
        let bound = server.bind_missing(&shared.config)?;
        server.listeners.lock().unwrap_or_else(|e| e.into_inner()).extend(bound);
        Ok(server)
    }

    /// The addresses actually bound for `kind` (ports resolved when 0 was configured).
    pub fn local_addrs(&self, kind: Kind) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.iter().filter(|l| l.kind == kind).map(|l| l.local).collect()
    }

    /// The counters of this server, which outlive reloads.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Applies a new configuration: certificates and access log reopened, listeners added and
    /// removed as needed. On any error nothing changes.
    pub async fn reload(&self, config: Config) -> Result<(), ServerError> {
        let result = self.try_reload(config);
        let counter = if result.is_ok() { &self.inner.metrics.reloads_ok } else { &self.inner.metrics.reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), ServerError> {
        let shared = Arc::new(Shared::build(config, self.inner.metrics.clone(), self.inner.limits.clone())?);
        warn_if_too_few_descriptors(&shared.config);
        let bound = self.bind_missing(&shared.config)?;
        let wanted = wanted(&shared.config);
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|l| {
            let keep = wanted.contains(&(l.kind, l.configured));
            if !keep {
                tracing::info!(kind = ?l.kind, addr = %l.local, "no longer listening");
                let _ = l.stop.send(true);
            }
            keep
        });
        listeners.extend(bound);
        let old = std::mem::replace(&mut *self.inner.current.write().unwrap_or_else(|e| e.into_inner()), shared);
        drop(old);
        Ok(())
    }

    /// Binds the listeners `config` wants that are not bound yet; all or none.
    fn bind_missing(&self, config: &Config) -> Result<Vec<Listener>, ServerError> {
        let existing: Vec<(Kind, SocketAddr)> = {
            let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.iter().map(|l| (l.kind, l.configured)).collect()
        };
        let drain = self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(drain) = drain else { return Ok(Vec::new()) };
        let mut sockets = Vec::new();
        for (kind, addr) in wanted(config) {
            if existing.contains(&(kind, addr)) {
                continue;
            }
            let listener = bind(addr).map_err(|error| ServerError::Bind { addr, kind, error })?;
            sockets.push((kind, addr, listener));
        }
        let mut out = Vec::new();
        for (kind, configured, listener) in sockets {
            let local = listener.local_addr().unwrap_or(configured);
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(accept_loop(self.inner.clone(), kind, listener, stop_rx, drain.clone()));
            tracing::info!(?kind, addr = %local, "listening");
            out.push(Listener { kind, configured, local, stop, task });
        }
        Ok(out)
    }

    /// Stops accepting, lets connections finish their requests (and upgraded connections run)
    /// for at most `grace`, then returns. The access log is flushed.
    pub async fn shutdown(&self, grace: Duration) {
        let listeners: Vec<Listener> = std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        for l in &listeners {
            let _ = l.stop.send(true);
        }
        for l in listeners {
            let _ = l.task.await;
        }
        let _ = self.shutdown.send(true);
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut drained = self.drained.lock().await;
        match tokio::time::timeout(grace, drained.recv()).await {
            Ok(_) => tracing::info!("all connections finished"),
            Err(_) => tracing::warn!("connections still open after {grace:?}; closing them"),
        }
        if let Some(log) = &self.inner.current().access_log {
            log.flush(Duration::from_secs(1)).await;
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

fn wanted(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let mut w: Vec<(Kind, SocketAddr)> = config.listen_http.iter().map(|a| (Kind::Http, *a)).collect();
    w.extend(config.listen_https.iter().map(|a| (Kind::Https, *a)));
    w.extend(config.metrics_listen.iter().map(|a| (Kind::Metrics, *a)));
    w
}

/// Warns when the process may open fewer files than `max_connections` needs (a client and a
/// node connection each, and some more), which would fail connections at random instead.
fn warn_if_too_few_descriptors(config: &Config) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    let needed = config.max_connections.saturating_mul(2).saturating_add(256);
    match soft {
        Some(soft) if config.max_connections != 0 && soft < needed => tracing::warn!(
            "max_connections = {} needs about {needed} file descriptors, but the limit is {soft}: \
             raise it (LimitNOFILE=, ulimit -n) or lower max_connections",
            config.max_connections
        ),
        _ => {}
    }
}

/// A listening socket; IPv6 ones are v6-only (list both families to serve both).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

async fn accept_loop(
    inner: Arc<Inner>,
    kind: Kind,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: DrainToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(?kind, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let drain = drain.clone();
        if kind == Kind::Metrics {
            tokio::spawn(serve_metrics(inner, stream, drain));
            continue;
        }
        let counter = match kind {
            Kind::Http => &inner.metrics.connections_accepted_http,
            _ => &inner.metrics.connections_accepted_https,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = admit(&inner, &stream, peer) else { continue };
        match kind {
            Kind::Http => {
                let conn = Arc::new(ConnInfo { peer, tls: false, sni: None, _slot: slot, activity: Arc::default() });
                tokio::spawn(serve_http(inner, stream, conn, drain));
            }
            _ => {
                tokio::spawn(serve_https(inner, stream, peer, slot, drain));
            }
        }
    }
}

/// Counts a new client connection against `max_connections` and `max_connections_per_client`;
/// past them, `None`, and the connection is reset (it leaves nothing in TIME_WAIT here).
fn admit(inner: &Inner, stream: &TcpStream, peer: SocketAddr) -> Option<ConnSlot> {
    let config = &inner.current().config;
    match inner.limits.connection(peer.ip(), config.max_connections, config.max_connections_per_client) {
        Ok(slot) => Some(slot),
        Err(over) => {
            inner.metrics.refused(over.key());
            inner
                .limits
                .log_connections
                .hit(|held| tracing::warn!(client = %peer, unlogged_since_last = held, "connection refused: {over}"));
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            None
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge, or ALPN h2 under TLS) on `io`.
async fn serve_http<I>(inner: Arc<Inner>, io: I, conn: Arc<ConnInfo>, drain: DrainToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_timeout, idle_timeout, max_header_size) = {
        let shared = inner.current();
        (shared.config.header_timeout, shared.config.idle_timeout, shared.config.max_header_size)
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A request head larger than the read buffer gets 431 (from hyper, or h2 for HTTP/2).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // Pings find HTTP/2 clients that vanished without closing.
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let service = {
        let inner = inner.clone();
        let conn = conn.clone();
        let drain = drain.clone();
        service_fn(move |req| proxy::handle(inner.current(), conn.clone(), drain.clone(), req))
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut shutdown = inner.shutdown.clone();
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        _ = conn.activity.idle(idle_timeout) => {
            inner.metrics.idle_closed_http.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %conn.peer, "connection idle for {idle_timeout:?}: closing");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %conn.peer, "connection ended: {e}");
    }
    drop(drain);
}

/// A TLS connection: relayed by SNI to a passthrough site's node, or terminated here.
async fn serve_https(inner: Arc<Inner>, mut stream: TcpStream, peer: SocketAddr, slot: ConnSlot, drain: DrainToken) {
    let shared = inner.current();
    let hello = match tokio::time::timeout(shared.config.header_timeout, tls::read_client_hello(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            inner.metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "TLS: {e}");
            return;
        }
        Err(_) => {
            inner.metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "TLS: no ClientHello in time");
            return;
        }
    };
    // Our own passthrough connection has come back: its site's VIP leads here. (Its ClientHello
    // was sent only once its source address was recorded.)
    if inner.passthrough_sources.lock().unwrap_or_else(|e| e.into_inner()).contains(&peer) {
        inner.metrics.refused("loop");
        inner.limits.log_refused.hit(|held| {
            tracing::warn!(sni = ?hello.sni, unlogged_since_last = held, "TLS passthrough loop: the site's VIP leads back to this NPS")
        });
        return;
    }
    let site = hello.sni.as_deref().and_then(|sni| shared.site(sni)).cloned();
    if let Some(site) = site.filter(|s| s.tls == TlsMode::Passthrough) {
        let cap = shared.config.max_connections_per_site;
        let site_slot = match inner.limits.site(&site.fqdn, cap) {
            Ok(s) => s,
            Err(over) => {
                inner.metrics.refused(over.key());
                inner.limits.log_sites.hit(|held| {
                    tracing::warn!(client = %peer, site = site.fqdn, unlogged_since_last = held, "TLS passthrough refused: {over}")
                });
                return;
            }
        };
        passthrough(&inner, &shared, &site.fqdn, site.upstream_tls_port, hello.bytes, stream, peer).await;
        drop((site_slot, slot, drain));
        return;
    }
    let Some(config) = shared.tls.clone() else {
        inner.metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = %peer, sni = ?hello.sni, "TLS: no site terminates TLS here");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accepting = acceptor.accept(Rewind::new(hello.bytes, stream));
    let tls = match tokio::time::timeout(shared.config.header_timeout, accepting).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            inner.metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, sni = ?hello.sni, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            inner.metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    drop(shared);
    let conn = Arc::new(ConnInfo { peer, tls: true, sni: hello.sni, _slot: slot, activity: Arc::default() });
    serve_http(inner, tls, conn, drain).await;
}

/// Relays a TLS connection untouched to `port` (443) of the node `fqdn`, until either side
/// closes or nothing moves for `tunnel_idle_timeout_ms`.
async fn passthrough(
    inner: &Inner,
    shared: &Shared,
    fqdn: &str,
    port: u16,
    hello: Vec<u8>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let m = &shared.metrics;
    let log = &inner.limits.log_upstream;
    m.passthrough_connections.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout;
    let vip = match tokio::time::timeout_at(deadline, shared.resolver.resolve(fqdn)).await {
        Ok(Ok(r)) => r.addr,
        Ok(Err(e)) => {
            m.passthrough_errors.fetch_add(1, Ordering::Relaxed);
            log.hit(|held| {
                tracing::warn!(client = %peer, site = fqdn, unlogged_since_last = held, "TLS passthrough: cannot resolve: {e}")
            });
            return;
        }
        Err(_) => {
            m.passthrough_errors.fetch_add(1, Ordering::Relaxed);
            log.hit(|held| {
                tracing::warn!(client = %peer, site = fqdn, unlogged_since_last = held, "TLS passthrough: resolution timed out")
            });
            return;
        }
    };
    if !shared.config.is_vip(vip) {
        m.passthrough_errors.fetch_add(1, Ordering::Relaxed);
        m.refused("not_vip");
        inner.limits.log_refused.hit(|held| {
            tracing::warn!(
                client = %peer,
                site = fqdn,
                unlogged_since_last = held,
                "TLS passthrough: {fqdn} resolved to {vip}, which is outside vip_ranges: not connecting"
            )
        });
        return;
    }
    let addr = SocketAddr::new(canonical(vip), port);
    let mut node = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            m.upstream_connect(fqdn, false);
            m.passthrough_errors.fetch_add(1, Ordering::Relaxed);
            log.hit(|held| {
                tracing::warn!(client = %peer, site = fqdn, %addr, unlogged_since_last = held, "TLS passthrough: cannot connect: {e}")
            });
            return;
        }
        Err(_) => {
            m.upstream_connect(fqdn, false);
            m.passthrough_errors.fetch_add(1, Ordering::Relaxed);
            log.hit(|held| {
                tracing::warn!(client = %peer, site = fqdn, %addr, unlogged_since_last = held, "TLS passthrough: connect timed out")
            });
            return;
        }
    };
    m.upstream_connect(fqdn, true);
    let _ = node.set_nodelay(true);
    let source = node.local_addr().ok();
    let _source = source.map(|a| PassthroughSource::new(inner, a));
    if let Err(e) = node.write_all(&hello).await {
        tracing::debug!(client = %peer, site = fqdn, "TLS passthrough: {e}");
        return;
    }
    tracing::debug!(client = %peer, site = fqdn, %addr, "TLS passthrough");
    let idle = shared.config.tunnel_idle_timeout;
    let r = relay(&mut client, &mut node, idle).await;
    m.passthrough_bytes_in.fetch_add(r.a_to_b + hello.len() as u64, Ordering::Relaxed);
    m.passthrough_bytes_out.fetch_add(r.b_to_a, Ordering::Relaxed);
    match r.end {
        End::Closed => {}
        End::Idle => {
            m.idle_closed_tunnels.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, site = fqdn, "TLS passthrough idle for {idle:?}: closed");
        }
        End::Failed(e) => tracing::debug!(client = %peer, site = fqdn, "TLS passthrough ended: {e}"),
    }
}

/// Records the source address of a passthrough connection for as long as it is open.
struct PassthroughSource<'a> {
    inner: &'a Inner,
    addr: SocketAddr,
}

impl<'a> PassthroughSource<'a> {
    fn new(inner: &'a Inner, addr: SocketAddr) -> Self {
        inner.passthrough_sources.lock().unwrap_or_else(|e| e.into_inner()).insert(addr);
        PassthroughSource { inner, addr }
    }
}

impl Drop for PassthroughSource<'_> {
    fn drop(&mut self) {
        self.inner.passthrough_sources.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.addr);
    }
}

async fn serve_metrics(inner: Arc<Inner>, stream: TcpStream, drain: DrainToken) {
    let metrics = inner.metrics.clone();
    let service = service_fn(move |req| metrics.clone().serve(req));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut shutdown = inner.shutdown.clone();
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
    drop(drain);
}
