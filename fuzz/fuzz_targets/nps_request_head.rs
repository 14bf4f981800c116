//! Arbitrary bytes at the NPS's own handling of untrusted input around hyper's and rustls's
//! parsers: Host normalization, hop-by-hop header stripping, upgrade detection (the first half,
//! as a header block), and the ClientHello peek that decides TLS passthrough (the whole input).
#![no_main]
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len() / 2];
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let host = lines.next().unwrap_or_default();
    let normalized = nps::proxy::normalize_host(host);
    assert!(normalized.len() <= host.len());
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value.trim())) {
                headers.append(n, v);
            }
        }
    }
    let mut req = Request::new(());
    *req.headers_mut() = headers.clone();
    let upgrade = nps::upgrade::is_upgrade_request(&req);
    nps::proxy::strip_hop_by_hop(&mut headers, upgrade);
    assert!(!headers.contains_key("keep-alive") && !headers.contains_key("transfer-encoding"));

    let mut hello = data;
    let _ = runtime().block_on(nps::tls::read_client_hello(&mut hello));
});
