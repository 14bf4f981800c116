//! Test fixtures: a fake `ntmd` stub resolver, a fake node web server, and small clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// What the fake resolver answers for a name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    A(Ipv4Addr),
    /// NODATA for A, this for AAAA.
    Aaaa(Ipv6Addr),
    NxDomain,
    ServFail,
    /// No answer at all.
    Silent,
}

/// A fake `ntmd` stub: A records (TTL 1) for known names, NODATA for their AAAA, NXDOMAIN for
/// unknown names; an optional delay stands for a tunnel build.
#[derive(Clone)]
pub(crate) struct FakeDns {
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, (Answer, Duration)>>>,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl FakeDns {
    pub(crate) async fn start() -> FakeDns {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let dns = FakeDns { addr: sock.local_addr().unwrap(), names: Arc::default(), queries: Arc::default() };
        let d = dns.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                let Some(query) = q.queries().first().cloned() else { continue };
                let name = query.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                d.queries.lock().unwrap().push((name.clone(), query.query_type()));
                let (answer, delay) =
                    d.names.lock().unwrap().get(&name).copied().unwrap_or((Answer::NxDomain, Duration::ZERO));
                let sock = sock.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut r = Message::new();
                    r.set_id(q.id()).set_message_type(MessageType::Response).set_recursion_available(true);
                    r.add_query(query.clone());
                    match answer {
                        Answer::A(ip) => {
                            if query.query_type() == RecordType::A {
                                r.add_answer(Record::from_rdata(query.name().clone(), 1, RData::A(A(ip))));
                            }
                        }
                        Answer::Aaaa(ip) => {
                            if query.query_type() == RecordType::AAAA {
                                r.add_answer(Record::from_rdata(query.name().clone(), 1, RData::AAAA(AAAA(ip))));
                            }
                        }
                        Answer::NxDomain => {
                            r.set_response_code(ResponseCode::NXDomain);
                        }
                        Answer::ServFail => {
                            r.set_response_code(ResponseCode::ServFail);
                        }
                        Answer::Silent => return,
                    }
                    let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
                });
            }
        });
        dns
    }

    pub(crate) fn set(&self, name: &str, answer: Answer, delay: Duration) {
        self.names.lock().unwrap().insert(name.to_owned(), (answer, delay));
    }

    /// Queries received for `name` of type `rtype`.
    pub(crate) fn count(&self, name: &str, rtype: RecordType) -> usize {
        self.queries.lock().unwrap().iter().filter(|(n, t)| n == name && *t == rtype).count()
    }
}

/// Byte `i` of every `/bytes/N` body (the lab web app's pattern).
pub(crate) fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

pub(crate) fn pattern_sha256(n: u64) -> String {
    let chunk: Vec<u8> = (0..251 * 256).map(|i| pattern_byte(i as u64)).collect();
    let mut h = Sha256::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..k]);
        left -= k as u64;
    }
    hex(&h.finalize())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `/bytes/N`: N pattern bytes, streamed in chunks.
struct PatternBody {
    left: u64,
    chunk: Bytes,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let k = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= k as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..k)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

pub(crate) fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub(crate) fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A fake node web server (HTTP/1.1):
/// * `GET /` and `/headers`: `name NAME` then every request header as `name: value` lines
/// * `GET /bytes/N`: N pattern bytes
/// * `POST /sha256`: the hex SHA-256 and length of the request body (read streaming)
/// * `GET /slow`: 200 after 1.5 s
/// * `GET /ws`: WebSocket echo
pub(crate) struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    pub(crate) async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub(crate) async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: Arc<str> = name.into();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handle(name.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn upstream_handle(name: Arc<str>, mut req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            return Ok(Response::builder().status(400).body(full("not a websocket request")).unwrap());
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", accept)
            .body(empty())
            .unwrap());
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        let chunk: Bytes = (0..251 * 256).map(|i| pattern_byte(i as u64)).collect::<Vec<u8>>().into();
        return Ok(Response::new(PatternBody { left: n, chunk }.boxed()));
    }
    if path == "/sha256" {
        let mut h = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Ok(Response::builder().status(400).body(full("body error")).unwrap());
            };
            if let Some(d) = frame.data_ref() {
                h.update(d);
                len += d.len() as u64;
            }
        }
        return Ok(Response::new(full(format!("{} {len}", hex(&h.finalize())))));
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        return Ok(Response::new(full("slow but here")));
    }
    let mut text = format!("name {name}\n");
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(Response::builder()
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-node", &*name)
        .body(full(text))
        .unwrap())
}

/// One request over a fresh HTTP/1.1 connection to `proxy`.
pub(crate) async fn send1(proxy: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    tx.send_request(req).await.unwrap()
}

/// `GET path` with `Host: host` over a fresh HTTP/1.1 connection; status, headers and body.
pub(crate) async fn get(proxy: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    let req = Request::get(path).header(header::HOST, host).body(empty()).unwrap();
    let resp = send1(proxy, req).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// Sends raw bytes and returns everything read until the server closes or 2 s pass.
pub(crate) async fn raw(proxy: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough.
                let text = String::from_utf8_lossy(&out);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if let Some(len) = len {
                        if out.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Decides whether the `request`th request on the `connection`th connection (both counted from
/// 0, in order of arrival) gets an answer.
pub(crate) type AnswerRule = Arc<dyn Fn(usize, usize) -> bool + Send + Sync>;

/// A fake node whose tunnel can die: it speaks just enough HTTP/1.1 (requests without a body or
/// with a `Content-Length` one) and answers `200` with `METHOD PATH BODY`, as long as the rule
/// says so. Once a request goes unanswered, its connection hears nothing more from the node, as
/// when packets vanish into a NAT that forgot its mapping (no reset, no ICMP).
///
/// With `accept_at_most`, the listener stops accepting after that many connections, and its
/// backlog is 0: once [`FakeNode::fill_backlog`] took the one queued slot, the kernel drops
/// new SYNs, so connecting hangs as through a dead tunnel.
pub(crate) struct FakeNode {
    pub addr: SocketAddr,
    /// `(connection, request, "METHOD PATH")` of every complete request read.
    pub requests: Arc<Mutex<Vec<(usize, usize, String)>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    _listener: Arc<TcpListener>,
    fillers: Mutex<Vec<std::net::TcpStream>>,
}

impl FakeNode {
    pub(crate) async fn start(rule: impl Fn(usize, usize) -> bool + Send + Sync + 'static) -> FakeNode {
        FakeNode::start_with(Arc::new(rule), None).await
    }

    pub(crate) async fn start_with(rule: AnswerRule, accept_at_most: Option<usize>) -> FakeNode {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = Arc::new(socket.listen(if accept_at_most.is_some() { 0 } else { 128 }).unwrap());
        let node = FakeNode {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            accepted: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicUsize::new(0)),
            _listener: listener.clone(),
            fillers: Mutex::default(),
        };
        let (accepted, closed, requests) = (node.accepted.clone(), node.closed.clone(), node.requests.clone());
        tokio::spawn(async move {
            loop {
                if accept_at_most.is_some_and(|max| accepted.load(Ordering::SeqCst) >= max) {
                    return;
                }
                let Ok((stream, _)) = listener.accept().await else { return };
                let conn = accepted.fetch_add(1, Ordering::SeqCst);
                let (rule, closed, requests) = (rule.clone(), closed.clone(), requests.clone());
                tokio::spawn(async move {
                    fake_node_connection(stream, conn, rule, requests).await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        node
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections the other side closed so far.
    pub(crate) fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes the listen backlog's only slot (see [`FakeNode::start_with`]).
    pub(crate) fn fill_backlog(&self) {
        let s = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).unwrap();
        self.fillers.lock().unwrap().push(s);
    }
}

async fn fake_node_connection(
    mut stream: TcpStream,
    conn: usize,
    rule: AnswerRule,
    requests: Arc<Mutex<Vec<(usize, usize, String)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut n_req = 0;
    let mut silent = false;
    loop {
        while !silent {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { break };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .map_or(0, |v| v.parse().unwrap());
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            let line: Vec<&str> = head.lines().next().unwrap_or_default().split(' ').collect();
            let what = format!("{} {}", line[0], line.get(1).unwrap_or(&""));
            requests.lock().unwrap().push((conn, n_req, what.clone()));
            if rule(conn, n_req) {
                let text = format!("{what} {body}");
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                if stream.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            } else {
                silent = true;
            }
            n_req += 1;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !silent {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}
