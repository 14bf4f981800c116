//! Keep-alive HTTP/1.1 connections to the nodes, pooled per node (its VIP and port).
//!
//! A request takes the most recently used idle connection of its node, or opens one (within the
//! request's connect deadline). A connection goes back to the pool once its response body has
//! been read to the end. A request that a pooled connection could not even start to send (the
//! node closed it meanwhile) is tried on the next connection.
//!
//! A pooled connection may also have died silently since its last exchange: the tunnel under it
//! is gone (a NAT forgot its mapping) and what is sent on it goes nowhere, without a reset. So a
//! request sent on a reused connection that gets not a byte back within the first-byte timeout
//! (`pool_first_byte_timeout_ms`), or whose connection fails before a byte of the response came,
//! is sent again, once, on a new connection, which must be up by the request's connect deadline.
//! The silent connection is closed, never pooled again, and so are the other idle connections to
//! that node, which went through the same tunnel. See [`Pool::send`] for when a request is sent
//! again and when it is not.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::metrics::Metrics;

type Sender = http1::SendRequest<RequestBody>;

/// A connection to a node: where requests go in, and how many bytes came out of it so far.
struct Conn {
    sender: Sender,
    read: Arc<AtomicU64>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Why a request could not be relayed to its node.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No TCP connection to the node's VIP before the request's connect deadline.
    #[error("TCP connect timed out")]
    ConnectTimeout,
    /// The TCP connect failed (refused, unreachable).
    #[error("{0}")]
    Connect(io::Error),
    /// The new connection failed before it could carry a request.
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The node's response headers did not come within this time of sending the request.
    #[error("no response headers within {}ms", .0.as_millis())]
    ResponseTimeout(Duration),
    /// The connection failed while the request was sent or its response read, and the request
    /// could not be sent again (see [`Pool::send`]).
    #[error("{0}")]
    Send(hyper::Error),
}

/// How long requests may take, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From sending a request to its response headers.
    pub response: Duration,
    /// From sending a request on a reused connection to the first byte of the response, after
    /// which the connection is taken for dead (see [`Pool::send`]).
    pub first_byte: Duration,
}

/// The idle HTTP/1.1 connections to the nodes, by node address; shared by every request.
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    idle_timeout: Duration,
    max_idle: usize,
    metrics: Arc<Metrics>,
}

/// What became of a request on a reused connection.
enum Reused {
    /// The node's response, or why there is none.
    Done(Result<Response<Incoming>, SendError>),
    /// The connection was closed before the request could be sent: nothing of it went out.
    NotSent(Request<RequestBody>),
    /// The connection is taken for dead and the request may be sent again.
    Dead(Request<RequestBody>),
}

impl Pool {
    /// An empty pool whose connections stay idle at most `idle_timeout`, `max_idle` per node
    /// (0: none kept). Starts the task that sweeps expired connections (needs a tokio runtime);
    /// the task ends when the pool is dropped.
    pub fn new(idle_timeout: Duration, max_idle: usize, metrics: Arc<Metrics>) -> Arc<Pool> {
        let pool = Arc::new(Pool { idle: Mutex::new(HashMap::new()), idle_timeout, max_idle, metrics });
        tokio::spawn(sweep(Arc::downgrade(&pool), (idle_timeout / 2).max(Duration::from_secs(1))));
        pool
    }

    /// Sends `req` to the node at `addr` (`site` labels the metrics) and returns its response
    /// headers. A new connection must be up by `connect_deadline`; the response headers must
    /// arrive within `timeouts.response` of sending.
    ///
    /// A request sent on a reused (pooled) connection is sent again, once, on a new connection
    /// when all of these hold:
    /// * not a byte of the response came back on the reused connection, and either none came
    ///   within `timeouts.first_byte` (then the connection is closed), or the connection failed;
    /// * not a frame of the request body was read yet, so the same request can be sent again
    ///   (a body that was already streamed, even in part, is not kept to be sent twice);
    /// * the request is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or it has a body:
    ///   a node that got the head of, say, a POST but not a byte of its body cannot have acted
    ///   on it, while a POST without a body may have been carried out by a node that is merely
    ///   slow to answer.
    ///
    /// Otherwise a silent connection keeps the request until the response timeout (a node that
    /// is slow to answer an upload must not be given it twice, nor be cut short), and a failed
    /// one is an error. A request on a new connection is not sent again either: the connect just
    /// proved the tunnel alive.
    pub async fn send(
        self: &Arc<Self>,
        site: &str,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
        connect_deadline: Instant,
        timeouts: Timeouts,
    ) -> Result<Response<Incoming>, SendError> {
        while let Some(conn) = self.checkout(addr) {
            match self.send_reused(site, addr, conn, req, timeouts).await {
                Reused::Done(r) => return r,
                Reused::NotSent(r) => req = r,
                Reused::Dead(r) => {
                    self.metrics.upstream_retry(site);
                    // The node's other idle connections went through the same tunnel.
                    self.forget(addr);
                    req = r;
                    break;
                }
            }
        }

        let Conn { mut sender, read } = self.connect(site, addr, connect_deadline).await?;
        match tokio::time::timeout(timeouts.response, sender.send_request(req)).await {
            Err(_) => Err(SendError::ResponseTimeout(timeouts.response)),
            Ok(Err(e)) => Err(SendError::Send(e)),
            Ok(Ok(resp)) => {
                self.recycle(addr, Conn { sender, read }, &resp);
                Ok(resp)
            }
        }
    }

    /// Sends `req` on a pooled connection; see [`Pool::send`].
    async fn send_reused(
        self: &Arc<Self>,
        site: &str,
        addr: SocketAddr,
        conn: Conn,
        req: Request<RequestBody>,
        timeouts: Timeouts,
    ) -> Reused {
        let Conn { mut sender, read } = conn;
        // What it takes to send the request again: its head, and a handle on its body.
        let mut again = Request::new(());
        *again.method_mut() = req.method().clone();
        *again.uri_mut() = req.uri().clone();
        *again.version_mut() = req.version();
        *again.headers_mut() = req.headers().clone();
        *again.extensions_mut() = req.extensions().clone();
        let replay = req.body().replay();
        // A request without a body must be idempotent to be sent twice; one with a body need
        // only not have been read from.
        let needs_body = !is_idempotent(req.method());
        let before = read.load(Ordering::Relaxed);
        let silent = || read.load(Ordering::Relaxed) == before;

        let sending = sender.try_send_request(req);
        tokio::pin!(sending);
        let probe = timeouts.first_byte.min(timeouts.response);
        let result = match tokio::time::timeout(probe, &mut sending).await {
            Ok(result) => result,
            Err(_) => {
                if silent() {
                    if let Some(body) = replay.take_unread(needs_body) {
                        tracing::debug!(%addr, "no answer on a pooled connection within {probe:?}: sending again");
                        return Reused::Dead(again.map(|()| body));
                    }
                }
                // Some of the response came (the node is slow, not gone), or the request
                // cannot be sent again: it waits for the rest of the response timeout.
                match tokio::time::timeout(timeouts.response.saturating_sub(probe), &mut sending).await {
                    Ok(result) => result,
                    Err(_) => return Reused::Done(Err(SendError::ResponseTimeout(timeouts.response))),
                }
            }
        };
        match result {
            Ok(resp) => {
                self.metrics.pool_reuse(site);
                self.recycle(addr, Conn { sender, read }, &resp);
                Reused::Done(Ok(resp))
            }
            Err(mut e) => match e.take_message() {
                Some(r) => {
                    tracing::debug!(%addr, "pooled connection unusable ({}), trying another", e.error());
                    Reused::NotSent(r)
                }
                None => {
                    if silent() {
                        if let Some(body) = replay.take_unread(needs_body) {
                            tracing::debug!(%addr, "pooled connection failed ({}): sending again", e.error());
                            return Reused::Dead(again.map(|()| body));
                        }
                    }
                    Reused::Done(Err(SendError::Send(e.into_error())))
                }
            },
        }
    }

    /// A new connection to `addr`, up by `deadline`.
    async fn connect(&self, site: &str, addr: SocketAddr, deadline: Instant) -> Result<Conn, SendError> {
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.upstream_connect(site, false);
                return Err(SendError::Connect(e));
            }
            Err(_) => {
                self.metrics.upstream_connect(site, false);
                return Err(SendError::ConnectTimeout);
            }
        };
        self.metrics.upstream_connect(site, true);
        let _ = stream.set_nodelay(true);
        let read = Arc::new(AtomicU64::new(0));
        let io = Counted { stream, read: read.clone() };
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "connection to node ended: {e}");
            }
        });
        Ok(Conn { sender, read })
    }

    /// The most recently idle usable connection to `addr`.
    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            let sender = &c.conn.sender;
            if sender.is_ready() && !sender.is_closed() && now.duration_since(c.since) < self.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    /// Closes every idle connection to `addr`.
    fn forget(&self, addr: SocketAddr) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
    }

    /// Puts the connection back once the response (body included) is done with it.
    fn recycle(self: &Arc<Self>, addr: SocketAddr, mut conn: Conn, resp: &Response<Incoming>) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS || self.max_idle == 0 {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if conn.sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(addr).or_default();
            if list.len() < pool.max_idle {
                list.push(Idle { conn, since: Instant::now() });
            }
        });
    }
}

/// Whether a request with `method` means the same when sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE].contains(method)
}

/// A connection to a node that counts the bytes read from it.
struct Counted {
    stream: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len() - filled;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Drops expired and closed idle connections now and then.
async fn sweep(pool: Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.conn.sender.is_closed() && now.duration_since(c.since) < pool.idle_timeout);
            !list.is_empty()
        });
    }
}
