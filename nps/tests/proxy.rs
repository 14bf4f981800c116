//! The proxy end to end on 127.0.0.1: a fake ntmd stub resolver, fake node web servers, and the
//! NPS in between.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hickory_proto::rr::RecordType;
use host::config::Load as _;
use http::{header, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nps::{Config, Kind, Server};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The fake nodes listen on loopback: the NPS may connect there only when told so.
const LOOPBACK_VIPS: &str = "vip_ranges = [\"127.0.0.0/8\", \"::1/128\"]\n";

struct Harness {
    server: Server,
    http: SocketAddr,
    dns: FakeDns,
    up: Upstream,
    dir: tempfile::TempDir,
}

impl Harness {
    /// The NPS with `top` (top-level keys) and `sites`; `{UP}` is replaced by the fake node's
    /// port, `{DIR}` by a temporary directory. Every site name in `answers` resolves to 127.0.0.1.
    async fn start(top: &str, sites: &str, answers: &[&str]) -> Harness {
        let dns = FakeDns::start().await;
        let up = Upstream::start("node-a").await;
        for name in answers {
            dns.set(name, Answer::A(LOCAL), Duration::ZERO);
        }
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(config(&dns, &up, &dir, top, sites)).await.unwrap_or_else(|e| panic!("{e}"));
        let http = server.local_addrs(Kind::Http)[0];
        Harness { server, http, dns, up, dir }
    }
}

fn config(dns: &FakeDns, up: &Upstream, dir: &tempfile::TempDir, top: &str, sites: &str) -> Config {
    let text = format!(
        "listen_http = [\"127.0.0.1:0\"]\nresolver = \"{}\"\nupstream_port = {}\n{LOOPBACK_VIPS}{top}\n{sites}\n",
        dns.addr,
        up.port()
    )
    .replace("{UP}", &up.port().to_string())
    .replace("{DIR}", dir.path().to_str().unwrap());
    Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const A_SITE: &str = "[[sites]]\nfqdn = \"a.test\"\n";

#[tokio::test]
async fn routes_by_host() {
    let b = Upstream::start("node-b").await;
    let sites = format!("{A_SITE}[[sites]]\nfqdn = \"b.test\"\nupstream_port = {}\n", b.port());
    let h = Harness::start("", &sites, &["a.test", "b.test"]).await;
    let proxy = h.http;

    let (status, headers, body) = get(proxy, "a.test", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("name node-a\n"), "{body}");
    assert_eq!(headers["x-node"], "node-a");
    // Port stripped, case folded, trailing dot ignored.
    let (status, _, body) = get(proxy, "B.Test.:8080", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("name node-b\n"), "{body}");
    // The node sees the Host as the client sent it.
    assert!(body.contains("host: B.Test.:8080\n"), "{body}");
    h.server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_host_gets_404_naming_it() {
    let h = Harness::start("", A_SITE, &["a.test", "other.test"]).await;
    let (status, headers, body) = get(h.http, "other.test", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(body.contains("This proxy does not serve other.test."), "{body}");
    // Served names never reach the resolver for unknown hosts.
    assert_eq!(h.dns.count("other.test", RecordType::A), 0);
    // No Host at all (HTTP/1.0) is a bad request.
    let resp = raw(h.http, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"), "{resp}");
    // Malformed request line: hyper answers 400.
    let resp = raw(h.http, "GET / HTTP/1.1 extra\r\nHost: a.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn servfail_and_nxdomain_give_502_with_the_reason() {
    let h = Harness::start("", &format!("{A_SITE}[[sites]]\nfqdn = \"gone.test\"\n"), &[]).await;
    h.dns.set("a.test", Answer::ServFail, Duration::ZERO);
    let (status, _, body) = get(h.http, "a.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("The node a.test cannot be reached."), "{body}");
    assert!(body.contains("SERVFAIL: the tunnel to the node could not be built"), "{body}");
    let (status, _, body) = get(h.http, "gone.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("NXDOMAIN"), "{body}");
    // Failures are not cached: once the tunnel can be built, the next request goes through.
    h.dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let (status, _, _) = get(h.http, "a.test", "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn refused_connection_gives_502() {
    let closed = free_port();
    let sites = format!("[[sites]]\nfqdn = \"a.test\"\nupstream_port = {closed}\n");
    let h = Harness::start("", &sites, &["a.test"]).await;
    let (status, _, body) = get(h.http, "a.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("did not accept the connection"), "{body}");
    assert!(body.contains("refused"), "{body}");
}

#[tokio::test]
async fn slow_node_gives_504() {
    let h = Harness::start("response_timeout_ms = 300\nconnect_timeout_ms = 300", A_SITE, &["a.test"]).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(h.http, "a.test", "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("sent no response within 300 ms"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(1200));
    // A tunnel that takes too long to build: 504 as well.
    h.dns.set("a.test", Answer::Silent, Duration::ZERO);
    let sites = "[[sites]]\nfqdn = \"late.test\"\n";
    h.dns.set("late.test", Answer::A(LOCAL), Duration::from_secs(3));
    h.server.reload(config(&h.dns, &h.up, &h.dir, "connect_timeout_ms = 300", sites)).await.unwrap();
    let (status, _, body) = get(h.http, "late.test", "/").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("did not answer within 300ms"), "{body}");
}

#[tokio::test]
async fn connect_and_absolute_form_for_other_hosts_refused() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    let resp = raw(h.http, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.contains("This is not an open proxy."), "{resp}");
    let resp = raw(h.http, "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("not an open proxy"), "{resp}");
    // Even with a served Host header, the absolute-form target decides.
    let resp = raw(h.http, "GET http://example.com/ HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    // Absolute-form for a served host is fine (curl -x at the NPS for the node).
    let resp = raw(h.http, "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("name node-a"), "{resp}");
}

#[tokio::test]
async fn forwarding_headers_set_and_hop_by_hop_removed() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    let req = Request::get("/headers?x=1")
        .header(header::HOST, "a.test")
        .header(header::CONNECTION, "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-end-to-end", "yes")
        .body(empty())
        .unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), 200);
    // The node's hop-by-hop headers do not reach the client either.
    assert!(resp.headers().get("x-hop").is_none(), "{:?}", resp.headers());
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-real-ip: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: a.test\n"), "{body}");
    assert!(body.contains("forwarded: for=127.0.0.1;proto=http;host=a.test\n"), "{body}");
    assert!(body.contains("x-end-to-end: yes\n"), "{body}");
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te:", "connection"] {
        assert!(!body.contains(gone), "{gone} forwarded: {body}");
    }
}

#[tokio::test]
async fn dual_stack_listeners_with_v6_only_sockets() {
    let dns = FakeDns::start().await;
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let up = Upstream::start("node-a").await;
    // Both wildcards on one port: only possible because the IPv6 socket is v6-only.
    let port = free_port();
    let top = format!("listen_http = [\"0.0.0.0:{port}\", \"[::]:{port}\"]");
    let text = format!("resolver = \"{}\"\nupstream_port = {}\n{LOOPBACK_VIPS}{top}\n{A_SITE}", dns.addr, up.port());
    let server = Server::start(Config::parse(&text, Path::new("t.toml")).unwrap()).await.unwrap();
    assert_eq!(server.local_addrs(Kind::Http).len(), 2);
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let (status, _, body) = get(v4, "a.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    let (status, _, body) = get(v6, "a.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: ::1\n"), "{body}");
    assert!(body.contains("forwarded: for=\"[::1]\";proto=http;host=a.test\n"), "{body}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn ipv6_vip_when_there_is_no_a_record() {
    let v6 = Upstream::start_on("node-v6", "[::1]:0".parse().unwrap()).await;
    let sites = format!("[[sites]]\nfqdn = \"v6.test\"\nupstream_port = {}\n", v6.port());
    let h = Harness::start("", &sites, &[]).await;
    h.dns.set("v6.test", Answer::Aaaa(std::net::Ipv6Addr::LOCALHOST), Duration::ZERO);
    let (status, _, body) = get(h.http, "v6.test", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("name node-v6\n"), "{body}");
    assert_eq!(h.dns.count("v6.test", RecordType::A), 1);
    assert_eq!(h.dns.count("v6.test", RecordType::AAAA), 1);
}

#[tokio::test]
async fn h2c_upgrade_ignored_and_expect_continue_answered() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    // What `curl --http2 http://…` sends: the upgrade is declined by ignoring it.
    let resp = raw(
        h.http,
        "GET /headers HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    for gone in ["upgrade", "http2-settings"] {
        assert!(!resp.to_ascii_lowercase().contains(&format!("\n{gone}:")), "{gone} forwarded: {resp}");
    }
    let resp =
        raw(h.http, "POST /sha256 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
            .await;
    assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.1 100 Continue"), "{resp}");
    assert!(resp.contains("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5"), "{resp}");
}

#[tokio::test]
async fn twenty_megabytes_both_ways_intact() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    const N: usize = 20 * 1024 * 1024;
    // Upload, streamed in 1 MiB chunks (chunked encoding).
    let data: Vec<u8> = (0..N).map(|i| (i * 7 % 256) as u8).collect();
    let expect = hex(&Sha256::digest(&data));
    let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
        data.chunks(1 << 20).map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c)))).collect();
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)));
    let req = Request::post("/sha256").header(header::HOST, "a.test").body(body).unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), format!("{expect} {N}"));
    // Upload with Content-Length.
    let req = Request::post("/sha256").header(header::HOST, "a.test").body(full(data)).unwrap();
    let resp = send1(h.http, req).await;
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), format!("{expect} {N}"));
    // Download.
    let req = Request::get(format!("/bytes/{N}")).header(header::HOST, "a.test").body(empty()).unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], N.to_string().as_str());
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len();
            hasher.update(d);
        }
    }
    assert_eq!(got, N);
    assert_eq!(hex(&hasher.finalize()), pattern_sha256(N as u64));
}

#[tokio::test]
async fn too_large_bodies_get_413() {
    let h = Harness::start("max_request_body = \"1MiB\"", A_SITE, &["a.test"]).await;
    // Announced by Content-Length: refused before anything reaches the node.
    let req = Request::post("/sha256").header(header::HOST, "a.test").body(full(vec![0u8; 2 << 20])).unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("at most 1 MiB"));
    // Chunked: cut off once the limit is crossed.
    let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
        (0..4).map(|_| Ok(http_body::Frame::data(Bytes::from(vec![1u8; 512 * 1024])))).collect();
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)));
    let req = Request::post("/sha256").header(header::HOST, "a.test").body(body).unwrap();
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    match tx.send_request(req).await {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE),
        // The proxy may close while the client is still sending the rest.
        Err(e) => assert!(e.is_incomplete_message() || e.is_canceled() || e.is_closed(), "{e}"),
    }
    // Exactly at the limit is fine.
    let req = Request::post("/sha256").header(header::HOST, "a.test").body(full(vec![0u8; 1 << 20])).unwrap();
    assert_eq!(send1(h.http, req).await.status(), 200);
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("http://a.test/headers?n={i}"))
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(empty())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.starts_with("name node-a\n"), "{body}");
        assert!(body.contains("host: a.test\n"), "{body}");
        assert!(body.contains("cookie: a=1; b=2\n"), "{body}");
    }
    // An unknown :authority is a 404 on HTTP/2 too.
    let req = Request::get("http://nope.test/").body(empty()).unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.test/ws", tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(WsMessage::text("hello through the tunnel")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("hello through the tunnel"));
    let blob: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
    ws.send(WsMessage::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::binary(blob));
    ws.close(None).await.unwrap();
    assert!(h.server.metrics().render().contains("nps_upgrades_total 1\n"));
}

#[tokio::test]
async fn fifty_concurrent_first_requests_share_one_resolution() {
    let h = Harness::start("", A_SITE, &[]).await;
    // The "tunnel build" takes 100 ms.
    h.dns.set("a.test", Answer::A(LOCAL), Duration::from_millis(100));
    let tasks: Vec<_> = (0..50).map(|_| tokio::spawn(get(h.http, "a.test", "/"))).collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(h.dns.count("a.test", RecordType::A), 1);
    // The name has an A record: no AAAA query.
    assert_eq!(h.dns.count("a.test", RecordType::AAAA), 0);
    // The answer is not kept past its TTL (1 s): later requests ask again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = get(h.http, "a.test", "/").await;
    assert_eq!(status, 200);
    assert_eq!(h.dns.count("a.test", RecordType::A), 2);
}

#[tokio::test]
async fn keep_alive_reuses_client_and_node_connections() {
    let h = Harness::start("", A_SITE, &["a.test"]).await;
    let tcp = TcpStream::connect(h.http).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        let req = Request::get("/").header(header::HOST, "a.test").body(empty()).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let metrics = h.server.metrics().render();
    assert!(metrics.contains("nps_upstream_connects_total{site=\"a.test\",result=\"ok\"} 1\n"), "{metrics}");
    assert!(metrics.contains("nps_upstream_pool_reuse_total{site=\"a.test\"} 4\n"), "{metrics}");
    assert!(metrics.contains("nps_connections_accepted_total{listener=\"http\"} 1\n"), "{metrics}");
}

fn self_signed(dir: &Path, fqdn: &str) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec![fqdn.to_owned()]).unwrap();
    std::fs::write(dir.join(format!("{fqdn}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{fqdn}.key")), ck.key_pair.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

fn client_tls(roots: &[rustls::pki_types::CertificateDer<'static>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn tls_terminated_with_h2_and_http11() {
    let dns = FakeDns::start().await;
    dns.set("secure.test", Answer::A(LOCAL), Duration::ZERO);
    dns.set("a.test", Answer::A(LOCAL), Duration::ZERO);
    let up = Upstream::start("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    let secure = self_signed(dir.path(), "secure.test");
    let a = self_signed(dir.path(), "a.test");
    let sites =
        "[[sites]]\nfqdn = \"secure.test\"\ntls = \"terminate\"\n[[sites]]\nfqdn = \"a.test\"\ntls = \"terminate\"\n";
    let c = config(&dns, &up, &dir, "listen_https = [\"127.0.0.1:0\"]\ncert_dir = \"{DIR}\"", sites);
    let server = Server::start(c).await.unwrap();
    let https = server.local_addrs(Kind::Https)[0];
    let name = ServerName::try_from("secure.test").unwrap();

    // ALPN h2.
    let tls = client_tls(std::slice::from_ref(&secure), &[b"h2", b"http/1.1"]);
    let stream = tls.connect(name.clone(), TcpStream::connect(https).await.unwrap()).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(Request::get("https://secure.test/").body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(body.contains("forwarded: for=127.0.0.1;proto=https;host=secure.test\n"), "{body}");

    // ALPN http/1.1, and a Host that does not match the SNI: 421.
    let tls = client_tls(&[secure, a.clone()], &[b"http/1.1"]);
    let stream = tls.connect(name, TcpStream::connect(https).await.unwrap()).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header(header::HOST, "secure.test").body(empty()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let req = Request::get("/").header(header::HOST, "a.test").body(empty()).unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), StatusCode::MISDIRECTED_REQUEST);

    // The other site's certificate by its SNI.
    let tls = client_tls(&[a], &[]);
    let stream =
        tls.connect(ServerName::try_from("a.test").unwrap(), TcpStream::connect(https).await.unwrap()).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header(header::HOST, "a.test").body(empty()).unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), 200);

    // An SNI that is not served gets no certificate.
    let tls = client_tls(&[], &[]);
    let r = tls.connect(ServerName::try_from("nope.test").unwrap(), TcpStream::connect(https).await.unwrap()).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn tls_passthrough_by_sni() {
    let dns = FakeDns::start().await;
    dns.set("pass.test", Answer::A(LOCAL), Duration::ZERO);
    let up = Upstream::start("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    // The node's own TLS server, with a certificate the NPS does not have.
    let node_cert = rcgen::generate_simple_self_signed(vec!["pass.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(node_cert.key_pair.serialize_der().into());
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![node_cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let node_tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_port = node_tls.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = node_tls.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("TLS ended on the node")))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    let sites = format!("[[sites]]\nfqdn = \"pass.test\"\ntls = \"passthrough\"\nupstream_tls_port = {node_port}\n");
    let c = config(&dns, &up, &dir, "listen_https = [\"127.0.0.1:0\"]", &sites);
    let server = Server::start(c).await.unwrap();
    let https = server.local_addrs(Kind::Https)[0];
    let tls = client_tls(&[node_cert.cert.der().clone()], &[]);
    let stream = tls
        .connect(ServerName::try_from("pass.test").unwrap(), TcpStream::connect(https).await.unwrap())
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header(header::HOST, "pass.test").body(empty()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"TLS ended on the node");
    assert!(server.metrics().render().contains("nps_passthrough_connections_total 1\n"));
}

#[tokio::test]
async fn access_log_and_metrics() {
    let top = "access_log = \"{DIR}/access.log\"\nmetrics_listen = \"127.0.0.1:0\"";
    let h = Harness::start(top, A_SITE, &["a.test"]).await;
    let req = Request::get("/bytes/1000?x=\"q\"".replace('"', "%22"))
        .header(header::HOST, "a.test")
        .header(header::USER_AGENT, "test-agent/1.0")
        .header(header::REFERER, "http://ref.test/")
        .body(empty())
        .unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let (status, _, _) = get(h.http, "nope.test", "/missing").await;
    assert_eq!(status, 404);

    let path = h.dir.path().join("access.log");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{log}");
    assert!(
        lines[0].ends_with("\"GET /bytes/1000?x=%22q%22 HTTP/1.1\" 200 1000 \"http://ref.test/\" \"test-agent/1.0\""),
        "{log}"
    );
    assert!(lines[1].contains("\"GET /missing HTTP/1.1\" 404 "), "{log}");

    let metrics_addr = h.server.local_addrs(Kind::Metrics)[0];
    let (status, headers, text) = get(metrics_addr, "localhost", "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(text.contains("nps_requests_total{site=\"a.test\",class=\"2xx\"} 1\n"), "{text}");
    assert!(text.contains("nps_requests_total{site=\"-\",class=\"4xx\"} 1\n"), "{text}");
    assert!(text.contains("nps_response_bytes_total{site=\"a.test\"} 1000\n"), "{text}");
    assert!(text.contains("nps_resolve_duration_seconds_count{result=\"ok\"} 1\n"), "{text}");
    assert!(text.contains("nps_upstream_connects_total{site=\"a.test\",result=\"ok\"} 1\n"), "{text}");
    let (status, _, _) = get(metrics_addr, "localhost", "/other").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reload_applies_new_sites_and_keeps_old_on_error() {
    let h = Harness::start("", A_SITE, &["a.test", "b.test"]).await;
    assert_eq!(get(h.http, "b.test", "/").await.0, 404);
    let both = format!("{A_SITE}[[sites]]\nfqdn = \"b.test\"\n");
    h.server.reload(config(&h.dns, &h.up, &h.dir, "", &both)).await.unwrap();
    assert_eq!(get(h.http, "b.test", "/").await.0, 200);
    // Same listener kept: no rebinding.
    assert_eq!(h.server.local_addrs(Kind::Http), [h.http]);
    // A terminated site whose certificate is missing: the reload fails, nothing changes.
    let bad = format!("{both}[[sites]]\nfqdn = \"c.test\"\ntls = \"terminate\"\n");
    let bad = config(&h.dns, &h.up, &h.dir, "listen_https = [\"127.0.0.1:0\"]\ncert_dir = \"{DIR}\"", &bad);
    let e = h.server.reload(bad).await.unwrap_err().to_string();
    assert!(e.contains("c.test") && e.contains("c.test.crt"), "{e}");
    assert!(h.server.local_addrs(Kind::Https).is_empty());
    assert_eq!(get(h.http, "b.test", "/").await.0, 200);
    // A reload that moves the listener.
    let mut moved = config(&h.dns, &h.up, &h.dir, "", A_SITE);
    moved.listen_http = vec!["127.0.0.2:0".parse().unwrap()];
    h.server.reload(moved).await.unwrap();
    let new = h.server.local_addrs(Kind::Http);
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], h.http);
    assert_eq!(get(new[0], "a.test", "/").await.0, 200);
    assert_eq!(get(new[0], "b.test", "/").await.0, 404);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(h.http).await.is_err(), "old listener still open");
}

/// The NPS with a [`FakeNode`] as the node of `a.test`.
async fn harness_for(top: &str, node: &FakeNode) -> Harness {
    let site = format!("[[sites]]\nfqdn = \"a.test\"\nupstream_port = {}\n", node.port());
    Harness::start(top, &site, &["a.test"]).await
}

/// Lets the proxy put its connection back in the pool (a task does, once the body was read).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn silent_pooled_connection_is_dropped_and_the_request_sent_again() {
    // The tunnel under the first connection dies after its first answer: the second request
    // on it is read by no one, and nothing comes back. New connections work.
    let node = FakeNode::start(|conn, req| !(conn == 0 && req >= 1)).await;
    let h = harness_for("connect_timeout_ms = 2000\npool_first_byte_timeout_ms = 300", &node).await;
    let (status, _, body) = get(h.http, "a.test", "/one").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "GET /one "));
    settle().await;

    let started = std::time::Instant::now();
    let (status, _, body) = get(h.http, "a.test", "/two").await;
    let took = started.elapsed();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "GET /two "));
    assert!(took >= Duration::from_millis(280), "answered before the first-byte timeout: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}, the connect timeout is 2 s");
    assert_eq!(node.accepted(), 2);
    let requests = node.requests.lock().unwrap().clone();
    assert_eq!(requests, [(0, 0, "GET /one".to_owned()), (0, 1, "GET /two".to_owned()), (1, 0, "GET /two".to_owned())]);
    // The silent connection was closed, not pooled again.
    for _ in 0..100 {
        if node.closed() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.closed(), 1);

    // The new connection is pooled in its place.
    settle().await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(h.http, "a.test", "/three").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "GET /three "));
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(node.accepted(), 2);
    let metrics = h.server.metrics().render();
    assert!(metrics.contains("nps_upstream_retries_total{site=\"a.test\"} 1\n"), "{metrics}");
    assert!(metrics.contains("nps_upstream_connects_total{site=\"a.test\",result=\"ok\"} 2\n"), "{metrics}");
    assert!(metrics.contains("nps_upstream_pool_reuse_total{site=\"a.test\"} 1\n"), "{metrics}");
}

#[tokio::test]
async fn only_requests_that_can_safely_be_repeated_are_sent_again() {
    // Every connection answers its first request only.
    let node = FakeNode::start(|_, req| req == 0).await;
    let top = "connect_timeout_ms = 2000\nresponse_timeout_ms = 1000\npool_first_byte_timeout_ms = 300";
    let h = harness_for(top, &node).await;
    assert_eq!(get(h.http, "a.test", "/").await.0, StatusCode::OK);
    settle().await;

    // A POST whose body the client has not sent yet: the silent connection got its head but
    // not a byte of its body, so it goes again, body and all, on a new connection.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
    let body =
        BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))));
    let req =
        Request::post("/upload").header(header::HOST, "a.test").header(header::CONTENT_LENGTH, "5").body(body).unwrap();
    let proxy = h.http;
    let sent = tokio::spawn(async move { send1(proxy, req).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(node.accepted(), 2, "no new connection after the first-byte timeout");
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
    let resp = sent.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"POST /upload hello");
    drop(tx);
    settle().await;

    // A POST without a body may have been carried out by a node that is slow to answer: it
    // stays on its connection until the response timeout.
    let started = std::time::Instant::now();
    let req = Request::post("/action").header(header::HOST, "a.test").body(empty()).unwrap();
    let resp = send1(h.http, req).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("sent no response within 1 s"));
    assert_eq!(node.accepted(), 2);
    let metrics = h.server.metrics().render();
    assert!(metrics.contains("nps_upstream_retries_total{site=\"a.test\"} 1\n"), "{metrics}");
}

#[tokio::test]
async fn node_that_never_answers_gets_504_in_time() {
    let node = FakeNode::start(|_, _| false).await;
    let h = harness_for("connect_timeout_ms = 1000\nresponse_timeout_ms = 1000", &node).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(h.http, "a.test", "/").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("sent no response within 1 s"), "{body}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(1500), "took {took:?}");
    // A fresh connection is not given up early: its connect just proved the tunnel alive.
    assert_eq!(node.accepted(), 1);
    assert!(!h.server.metrics().render().contains("nps_upstream_retries_total{site=\"a.test\"} 1"));
}

#[tokio::test]
async fn dead_tunnel_gets_504_within_the_connect_timeout() {
    // After its first answer, the node is gone: the pooled connection goes silent, and new
    // connections never complete (SYNs dropped).
    let node = FakeNode::start_with(Arc::new(|_, req| req == 0), Some(1)).await;
    // The first-byte timeout is half the connect timeout: 500 ms.
    let h = harness_for("connect_timeout_ms = 1000", &node).await;
    assert_eq!(get(h.http, "a.test", "/").await.0, StatusCode::OK);
    settle().await;
    node.fill_backlog();

    let started = std::time::Instant::now();
    let (status, _, body) = get(h.http, "a.test", "/").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("No connection to the node could be made within 1 s"), "{body}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(1500), "took {took:?}");
    let metrics = h.server.metrics().render();
    assert!(metrics.contains("nps_upstream_retries_total{site=\"a.test\"} 1\n"), "{metrics}");
    assert!(metrics.contains("nps_upstream_connects_total{site=\"a.test\",result=\"error\"} 1\n"), "{metrics}");
}
