//! The lab's web app: runs on every NTM node of `scripts/lab` (see docs/lab.md).
//!
//! * `GET /`        an HTML page saying `Hello from NAME` (and the machine's host name)
//! * `GET /bytes/N` exactly N bytes (N ≤ 1 GiB) of a deterministic pattern, streamed:
//!   byte `i` of the body is `i % 251` (see [`pattern_byte`]); 400 on a bad N
//! * `GET /ws`      a WebSocket echo: text and binary messages come back unchanged
//!
//! `--listen` may be given several times; the default `[::]:80` is dual-stack (IPv4-mapped
//! addresses are accepted on the IPv6 socket).

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{body::Body, Router};
use bytes::Bytes;
use clap::Parser;
use tracing::{info, warn};

/// Largest body `/bytes/N` serves.
const MAX_BYTES: u64 = 1 << 30;
/// Period of the `/bytes` pattern (prime, so a dropped or repeated chunk shows).
const PERIOD: usize = 251;
/// Size of one streamed chunk: a multiple of [`PERIOD`], so every chunk starts at pattern offset 0.
const CHUNK: usize = PERIOD * 256;

#[derive(Parser, Debug)]
#[command(name = "ntm-webapp", about = "The NTM lab's web app")]
struct Args {
    /// Address to listen on (repeatable); an IPv6 wildcard also accepts IPv4.
    #[arg(long = "listen", value_name = "ADDR", default_value = "[::]:80")]
    listen: Vec<SocketAddr>,
    /// Name shown on the page (`Hello from NAME`).
    #[arg(long, default_value = "ntm")]
    name: String,
}

#[derive(Clone)]
struct AppState {
    name: String,
    hostname: String,
    /// One chunk of the pattern, shared by every `/bytes` response.
    chunk: Bytes,
}

/// Byte `i` of every `/bytes/N` body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PERIOD as u64) as u8
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default();
    let chunk: Bytes = (0..CHUNK as u64).map(pattern_byte).collect::<Vec<u8>>().into();
    let state = AppState { name: args.name.clone(), hostname, chunk };
    let app = Router::new()
        .route("/", get(index))
        .route("/bytes/:n", get(bytes_n))
        .route("/ws", get(ws))
        .layer(middleware::from_fn(log_request))
        .with_state(state);

    let mut tasks = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let listener = bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        info!(%addr, name = %args.name, "listening");
        let app = app.clone().into_make_service_with_connect_info::<SocketAddr>();
        tasks.spawn(async move { axum::serve(listener, app).await });
    }
    // The servers run until killed; the first one that fails ends the process.
    while let Some(res) = tasks.join_next().await {
        res.context("server task panicked")?.context("server failed")?;
    }
    Ok(())
}

/// A listening TCP socket; IPv6 sockets are made dual-stack explicitly (not left to the sysctl).
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

/// Logs every request with its peer and status.
async fn log_request(ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = next.run(req).await;
    info!(%peer, %method, %uri, status = res.status().as_u16(), "request");
    res
}

async fn index(State(st): State<AppState>) -> Html<String> {
    let name = html_escape(&st.name);
    let host = html_escape(&st.hostname);
    Html(format!(
        "<!DOCTYPE html>\n<html><head><title>Hello from {name}</title></head>\n\
         <body><h1>Hello from {name}</h1>\n<p>host: {host}</p></body></html>\n"
    ))
}

async fn bytes_n(State(st): State<AppState>, Path(n): Path<String>) -> Response {
    let n = match n.parse::<u64>() {
        Ok(n) if n <= MAX_BYTES => n,
        _ => return (StatusCode::BAD_REQUEST, format!("bad byte count {n:?}: want 0..={MAX_BYTES}\n")).into_response(),
    };
    // Every chunk is a clone of the shared one (cheap); the last is cut to length.
    let full = n / CHUNK as u64;
    let rest = (n % CHUNK as u64) as usize;
    let last = (rest > 0).then(|| st.chunk.slice(..rest));
    let chunk = st.chunk;
    let chunks = (0..full).map(move |_| chunk.clone()).chain(last).map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, n)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("valid response")
}

async fn ws(upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, peer))
}

/// Echoes text and binary messages until the peer closes.
async fn echo(mut socket: WebSocket, peer: SocketAddr) {
    info!(%peer, "websocket open");
    while let Some(msg) = socket.recv().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                warn!(%peer, "websocket error: {e}");
                return;
            }
        };
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            // The library answers pings, and answers a close with a close that the next
            // `recv` flushes before it reports the end of the stream.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if let Err(e) = socket.send(reply).await {
            warn!(%peer, "websocket send: {e}");
            return;
        }
    }
    info!(%peer, "websocket closed");
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
