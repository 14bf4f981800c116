//! Keep-alive HTTP/1.1 connections to the nodes, pooled per node (its VIP and port).
//!
//! A request takes the most recently used idle connection of its node, or opens one (within the
//! request's connect deadline). A connection goes back to the pool once its response body has
//! been read to the end. A request that a pooled connection could not even start to send (the
//! node closed it meanwhile) is retried on the next connection; one that was sent is not.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::metrics::Metrics;

type Sender = http1::SendRequest<RequestBody>;

struct Idle {
    sender: Sender,
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
    /// The connection failed while the request was sent or its response read; the request
    /// is not retried, since the node may have acted on it.
    #[error("{0}")]
    Send(hyper::Error),
}

/// The idle HTTP/1.1 connections to the nodes, by node address; shared by every request.
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    idle_timeout: Duration,
    max_idle: usize,
    metrics: Arc<Metrics>,
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
    /// arrive within `response_timeout` of sending.
    pub async fn send(
        self: &Arc<Self>,
        site: &str,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
        connect_deadline: Instant,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        while let Some(mut sender) = self.checkout(addr) {
            match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
                Err(_) => return Err(SendError::ResponseTimeout(response_timeout)),
                Ok(Ok(resp)) => {
                    self.metrics.pool_reuse(site);
                    self.recycle(addr, sender, &resp);
                    return Ok(resp);
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(r) => {
                        tracing::debug!(%addr, "pooled connection unusable ({}), trying another", e.error());
                        req = r;
                    }
                    None => return Err(SendError::Send(e.into_error())),
                },
            }
        }

        let stream = match tokio::time::timeout_at(connect_deadline, TcpStream::connect(addr)).await {
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
        let (mut sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "connection to node ended: {e}");
            }
        });
        match tokio::time::timeout(response_timeout, sender.send_request(req)).await {
            Err(_) => Err(SendError::ResponseTimeout(response_timeout)),
            Ok(Err(e)) => Err(SendError::Send(e)),
            Ok(Ok(resp)) => {
                self.recycle(addr, sender, &resp);
                Ok(resp)
            }
        }
    }

    /// The most recently idle usable connection to `addr`.
    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    /// Puts the connection back once the response (body included) is done with it.
    fn recycle(self: &Arc<Self>, addr: SocketAddr, mut sender: Sender, resp: &Response<Incoming>) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS || self.max_idle == 0 {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(addr).or_default();
            if list.len() < pool.max_idle {
                list.push(Idle { sender, since: Instant::now() });
            }
        });
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
            list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < pool.idle_timeout);
            !list.is_empty()
        });
    }
}
