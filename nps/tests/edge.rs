//! The NPS as the public edge fails closed: it connects only to VIPs, cuts loops, sets the
//! forwarding headers itself, and caps connections, request heads and idle time. On 127.0.0.1,
//! with the fake ntmd stub and fake nodes of `common`.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use host::config::Load as _;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nps::{Config, Kind, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The fake nodes listen on loopback: the NPS may connect there only when told so.
const LOOPBACK_VIPS: &str = "vip_ranges = [\"127.0.0.0/8\", \"::1/128\"]";

/// The NPS on 127.0.0.1 (port 0 unless `top` gives `listen_http`) asking `dns`, with `top`
/// (top-level keys) and `sites`.
async fn start(dns: &FakeDns, top: &str, sites: &str) -> Server {
    let listen = if top.contains("listen_http") { "" } else { "listen_http = [\"127.0.0.1:0\"]" };
    let text = format!("{listen}\nresolver = \"{}\"\n{top}\n{sites}\n", dns.addr);
    let config = Config::parse(&text, Path::new("edge.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Server::start(config).await.unwrap_or_else(|e| panic!("{e}"))
}

fn site(fqdn: &str, port: u16) -> String {
    format!("[[sites]]\nfqdn = \"{fqdn}\"\nupstream_port = {port}\n")
}

fn metric(server: &Server, line: &str) -> bool {
    server.metrics().render().contains(&format!("{line}\n"))
}

async fn body_of(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[tokio::test]
async fn a_name_resolving_outside_the_vip_ranges_gets_502_and_no_connection() {
    let dns = FakeDns::start().await;
    let node = FakeNode::start(|_, _| true).await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    dns.set("mapped.test", Answer::Aaaa(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), Duration::ZERO);
    // The default ranges: 100.64.0.0/10 and fd4e:544d::/32. 127.0.0.1 is not a VIP.
    let sites = format!("{}{}", site("a.test", node.port()), site("mapped.test", node.port()));
    let server = start(&dns, "", &sites).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let (status, _, body) = get(proxy, "a.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("did not resolve to a virtual address (VIP)"), "{body}");
    assert!(!body.contains("127.0.0.1"), "the page tells where the name pointed: {body}");
    // An IPv4-mapped IPv6 answer is its IPv4 address.
    let (status, _, _) = get(proxy, "mapped.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node.accepted(), 0, "the NPS connected to an address outside vip_ranges");
    assert!(metric(&server, "nps_refused_total{reason=\"not_vip\"} 2"));
    assert!(metric(&server, "nps_upstream_connects_total{site=\"a.test\",result=\"ok\"} 0"));

    // Once the range is configured, the same name goes through.
    let text = format!(
        "listen_http = [\"127.0.0.1:0\"]\nresolver = \"{}\"\nvip_ranges = [\"127.0.0.0/8\"]\n{sites}",
        dns.addr
    );
    server.reload(Config::parse(&text, Path::new("edge.toml")).unwrap()).await.unwrap();
    let (status, _, body) = get(proxy, "a.test", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "GET / "));
    assert_eq!(node.accepted(), 1);
}

#[tokio::test]
async fn a_passthrough_site_outside_the_vip_ranges_is_not_connected() {
    let dns = FakeDns::start().await;
    let node = FakeNode::start(|_, _| true).await;
    dns.set("pass.test", Answer::A(LOCAL), Duration::ZERO);
    let port = free_port();
    let top = format!("listen_https = [\"127.0.0.1:{port}\"]");
    let sites =
        format!("[[sites]]\nfqdn = \"pass.test\"\ntls = \"passthrough\"\nupstream_tls_port = {}\n", node.port());
    let server = start(&dns, &top, &sites).await;
    let https: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(tls_hello(https, "pass.test").await, "the connection stayed open");
    assert_eq!(node.accepted(), 0);
    assert!(metric(&server, "nps_refused_total{reason=\"not_vip\"} 1"));
}

#[tokio::test]
async fn a_request_carrying_our_via_is_refused() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let server = start(&dns, &format!("{LOOPBACK_VIPS}\nname = \"edge-1\""), &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let req =
        Request::get("/").header(header::HOST, "a.test").header(header::VIA, "1.0 fred, 1.1 EDGE-1").body(empty());
    let resp = send1(proxy, req.unwrap()).await;
    assert_eq!(resp.status(), StatusCode::LOOP_DETECTED);
    assert!(body_of(resp).await.contains("already passed through this proxy (edge-1)"));
    assert!(metric(&server, "nps_refused_total{reason=\"loop\"} 1"));
    assert!(metric(&server, "nps_resolve_duration_seconds_count{result=\"ok\"} 0"), "the node was looked up");

    // Anything else goes, with this hop appended to Via.
    let req = Request::get("/").header(header::HOST, "a.test").header(header::VIA, "1.1 fred").body(empty());
    let resp = send1(proxy, req.unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_of(resp).await.contains("\nvia: 1.1 fred, 1.1 edge-1\n"));
    let (_, _, body) = get(proxy, "a.test", "/").await;
    assert!(body.contains("\nvia: 1.1 edge-1\n"), "{body}");
}

#[tokio::test]
async fn a_site_that_leads_back_here_is_cut_on_its_second_pass() {
    let dns = FakeDns::start().await;
    dns.set("loop.test", Answer::A(LOCAL), Duration::ZERO);
    // The site's "node" is the NPS itself.
    let port = free_port();
    let top = format!("listen_http = [\"127.0.0.1:{port}\"]\n{LOOPBACK_VIPS}");
    let server = start(&dns, &top, &site("loop.test", port)).await;
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _, body) = get(proxy, "loop.test", "/").await;
    // The second pass refuses it; the first relays that answer.
    assert_eq!(status, StatusCode::LOOP_DETECTED, "{body}");
    assert!(metric(&server, "nps_connections_accepted_total{listener=\"http\"} 2"));
    assert!(metric(&server, "nps_refused_total{reason=\"loop\"} 1"));
}

#[tokio::test]
async fn a_passthrough_site_that_leads_back_here_is_cut() {
    let dns = FakeDns::start().await;
    dns.set("pass.test", Answer::A(LOCAL), Duration::ZERO);
    let port = free_port();
    let top = format!("listen_https = [\"127.0.0.1:{port}\"]\n{LOOPBACK_VIPS}");
    let sites = format!("[[sites]]\nfqdn = \"pass.test\"\ntls = \"passthrough\"\nupstream_tls_port = {port}\n");
    let server = start(&dns, &top, &sites).await;
    let https: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(tls_hello(https, "pass.test").await, "the connection stayed open");
    assert!(metric(&server, "nps_connections_accepted_total{listener=\"https\"} 2"));
    assert!(metric(&server, "nps_refused_total{reason=\"loop\"} 1"));
}

/// Sends a ClientHello for `sni`; whether the NPS then closed the connection within 2 s.
async fn tls_hello(addr: SocketAddr, sni: &str) -> bool {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    matches!(tokio::time::timeout(Duration::from_secs(2), tls.connect(name, tcp)).await, Ok(Err(_)))
}

#[tokio::test]
async fn client_sent_forwarding_headers_are_replaced() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let server = start(&dns, LOOPBACK_VIPS, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let req = Request::get("/headers")
        .header(header::HOST, "a.test")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-forwarded-for", "192.0.2.8")
        .header("forwarded", "for=192.0.2.7;proto=https")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example")
        .header("x-forwarded-port", "443")
        .header("x-real-ip", "192.0.2.7")
        .header("true-client-ip", "192.0.2.7")
        .header("x-client-ip", "192.0.2.7")
        .body(empty())
        .unwrap();
    let resp = send1(proxy, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_of(resp).await;
    assert!(!body.contains("192.0.2."), "a client-sent address reached the node: {body}");
    assert!(!body.contains("bank.example") && !body.contains("x-forwarded-port"), "{body}");
    for line in [
        "x-forwarded-for: 127.0.0.1",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: a.test",
        "forwarded: for=127.0.0.1;proto=http;host=a.test",
    ] {
        assert_eq!(body.matches(&format!("\n{line}\n")).count(), 1, "{line}: {body}");
    }
    for gone in ["true-client-ip", "x-client-ip"] {
        assert!(!body.contains(gone), "{gone}: {body}");
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let server = start(&dns, LOOPBACK_VIPS, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    // The default: 16 KiB. 12 KiB of cookies go through, 20 KiB do not.
    let fits = format!("GET / HTTP/1.1\r\nHost: a.test\r\nCookie: a={}\r\n\r\n", "x".repeat(12 << 10));
    let resp = raw(proxy, &fits).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", &resp[..resp.len().min(200)]);
    let large = format!("GET / HTTP/1.1\r\nHost: a.test\r\nCookie: a={}\r\n\r\n", "x".repeat(20 << 10));
    let resp = raw(proxy, &large).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{}", &resp[..resp.len().min(200)]);
    // Many small headers add up the same.
    let many: String = (0..90).map(|i| format!("X-Header-{i}: {}\r\n", "y".repeat(200))).collect();
    let resp = raw(proxy, &format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{}", &resp[..resp.len().min(200)]);

    // HTTP/2: the header list has the same cap.
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://a.test/").header(header::COOKIE, "x".repeat(20 << 10)).body(empty()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let req = Request::get("http://a.test/").header(header::COOKIE, "x".repeat(8 << 10)).body(empty()).unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), StatusCode::OK);
}

/// A keep-alive HTTP/1.1 connection to `proxy` that has had one request for `host` answered.
async fn open_connection(proxy: SocketAddr, host: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(Request::get("/").header(header::HOST, host).body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    tx
}

/// Whether a new connection to `proxy` is closed without an answer to a request.
async fn refused(proxy: SocketAddr) -> bool {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn the_per_client_connection_cap_holds() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let top = format!("{LOOPBACK_VIPS}\nmax_connections_per_client = 2");
    let server = start(&dns, &top, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let first = open_connection(proxy, "a.test").await;
    let _second = open_connection(proxy, "a.test").await;
    assert!(refused(proxy).await, "a third connection from 127.0.0.1 was served");
    assert!(metric(&server, "nps_refused_total{reason=\"max_connections_per_client\"} 1"));
    assert!(metric(&server, "nps_connections_open 2"));
    // Another client address is another client.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = tcp.connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(Request::get("/").header(header::HOST, "a.test").body(empty()).unwrap()).await;
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
    // A connection closed gives its place back.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _third = open_connection(proxy, "a.test").await;
}

#[tokio::test]
async fn the_total_connection_cap_holds() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let top = format!("{LOOPBACK_VIPS}\nmax_connections = 1");
    let server = start(&dns, &top, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let _only = open_connection(proxy, "a.test").await;
    assert!(refused(proxy).await, "a second connection was served");
    assert!(metric(&server, "nps_refused_total{reason=\"max_connections\"} 1"));
}

#[tokio::test]
async fn the_per_site_cap_gives_503() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    dns.set("b.test", Answer::A(LOCAL), Duration::ZERO);
    let top = format!("{LOOPBACK_VIPS}\nmax_connections_per_site = 1");
    let sites = format!("{}{}", site("a.test", up.port()), site("b.test", up.port()));
    let server = start(&dns, &top, &sites).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    // A slow request (1.5 s) holds a.test's only place.
    let slow = tokio::spawn(get(proxy, "a.test", "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, headers, body) = get(proxy, "a.test", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(body.contains("The node a.test is busy."), "{body}");
    assert_eq!(get(proxy, "b.test", "/").await.0, StatusCode::OK);
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    assert_eq!(get(proxy, "a.test", "/").await.0, StatusCode::OK);
    assert!(metric(&server, "nps_refused_total{reason=\"max_connections_per_site\"} 1"));
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let top = format!("{LOOPBACK_VIPS}\nidle_timeout_ms = 300");
    let server = start(&dns, &top, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(conn);
    // Requests keep it open past the timeout, one in progress included.
    for _ in 0..3 {
        let resp = tx.send_request(Request::get("http://a.test/").body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let resp = tx.send_request(Request::get("http://a.test/slow").body(empty()).unwrap()).await.unwrap();
    assert_eq!(body_of(resp).await, "slow but here");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("the idle connection stayed open")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    assert!(metric(&server, "nps_idle_closed_total{connection=\"http\"} 1"));
    // Its place is given back once its task is done.
    let until = Instant::now() + Duration::from_secs(1);
    while !metric(&server, "nps_connections_open 0") {
        assert!(Instant::now() < until, "the closed connection is still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idle_websocket_is_closed() {
    let dns = FakeDns::start().await;
    let up = Upstream::start("node-a").await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let top = format!("{LOOPBACK_VIPS}\ntunnel_idle_timeout_ms = 300\nmax_connections_per_site = 1");
    let server = start(&dns, &top, &site("a.test", up.port())).await;
    let proxy = server.local_addrs(Kind::Http)[0];
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://a.test/ws", tcp).await.unwrap();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(WsMessage::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text(format!("ping {i}")));
    }
    let started = Instant::now();
    // The tunnel holds the site's only place while it lives.
    assert_eq!(get(proxy, "a.test", "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("the idle tunnel stayed open");
    assert!(!matches!(end, Some(Ok(WsMessage::Text(_)))), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    assert!(metric(&server, "nps_idle_closed_total{connection=\"tunnel\"} 1"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(proxy, "a.test", "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn ipv6_vips_in_range_are_connected() {
    let dns = FakeDns::start().await;
    let v6 = Upstream::start_on("node-v6", "[::1]:0".parse().unwrap()).await;
    dns.set("v6.test", Answer::Aaaa(Ipv6Addr::LOCALHOST), Duration::ZERO);
    let server = start(&dns, "vip_ranges = [\"::1/128\"]", &site("v6.test", v6.port())).await;
    let (status, _, body) = get(server.local_addrs(Kind::Http)[0], "v6.test", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
