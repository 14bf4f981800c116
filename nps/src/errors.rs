//! What went wrong while proxying a request, and the small HTML page a browser user gets for it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::resolve::ResolveError;

/// Any error a body or connection can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy builds or relays: the node's body, or an error page.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Every way a request can fail before the node's response is relayed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 400: no, several, empty or non-ASCII Host, a bad target, or a body that could not be
    /// read; the text says which.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// 404: the host (normalized) is not one of the configured sites.
    #[error("no site {0:?} on this proxy")]
    UnknownHost(String),
    /// 403: an absolute-form request (proxy style) for a host that is not a site.
    #[error("absolute-form request for {0:?}, which is not served here")]
    NotOpenProxy(String),
    /// 405: a CONNECT request; the NPS does not open tunnels for clients.
    #[error("CONNECT refused")]
    Connect,
    /// 421: a request on a terminated TLS connection for a host other than the connection's SNI.
    #[error("request for {host:?} on a TLS connection for {sni:?}")]
    Misdirected {
        /// The server name the TLS connection was made for.
        sni: String,
        /// The host the request asked for.
        host: String,
    },
    /// 508: the request already went through this NPS (its `Via` names it): the site's address
    /// leads back here.
    #[error("request loop: the request already went through this proxy ({name})")]
    Loop {
        /// This NPS's `name`.
        name: String,
    },
    /// 503: the site's node has `max_connections_per_site` connections through this NPS already.
    #[error("{fqdn} has {limit} connections already (max_connections_per_site)")]
    SiteBusy {
        /// The site's FQDN.
        fqdn: String,
        /// The configured `max_connections_per_site`.
        limit: usize,
    },
    /// 413: the body is (or announces to be) larger than `max_request_body`.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The configured limit, in bytes.
        limit: u64,
    },
    /// 502 (504 on a timeout): the local `ntmd` stub gave no VIP for the site.
    #[error("cannot resolve {fqdn}: {error}")]
    Resolve {
        /// The site's FQDN.
        fqdn: String,
        /// What the resolver reported.
        error: ResolveError,
    },
    /// 502: the site's name resolved to an address outside `vip_ranges`: no connection is made.
    #[error("{fqdn} resolved to {addr}, which is outside vip_ranges: not connecting")]
    NotVip {
        /// The site's FQDN.
        fqdn: String,
        /// What the resolver answered.
        addr: IpAddr,
    },
    /// 502: the TCP connect to the node's web server failed.
    #[error("cannot connect to {fqdn} at {addr}: {error}")]
    ConnectFailed {
        /// The site's FQDN.
        fqdn: String,
        /// The node's VIP and upstream port.
        addr: SocketAddr,
        /// The connect error.
        error: String,
    },
    /// 504: resolving plus connecting took longer than `connect_timeout`.
    #[error("connecting to {fqdn} took longer than {}ms", .after.as_millis())]
    ConnectTimeout {
        /// The site's FQDN.
        fqdn: String,
        /// The configured `connect_timeout`.
        after: Duration,
    },
    /// 504: the node took the request but sent no response headers within `response_timeout`.
    #[error("{fqdn} sent no response headers within {}ms", .after.as_millis())]
    ResponseTimeout {
        /// The site's FQDN.
        fqdn: String,
        /// The configured `response_timeout`.
        after: Duration,
    },
    /// 502: the connection to the node failed (handshake, reset, invalid response, an
    /// unrequested protocol switch).
    #[error("{fqdn} failed: {error}")]
    Upstream {
        /// The site's FQDN.
        fqdn: String,
        /// The chain of errors, outermost first.
        error: String,
    },
}

impl ProxyError {
    /// The status code the client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NotOpenProxy(_) => StatusCode::FORBIDDEN,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Loop { .. } => StatusCode::LOOP_DETECTED,
            ProxyError::SiteBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Resolve { error: ResolveError::Timeout { .. }, .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Resolve { .. }
            | ProxyError::NotVip { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The page's headline and explanation (plain text; escaped when rendered).
    fn explain(&self) -> (String, String) {
        match self {
            ProxyError::BadRequest(why) => ("The request could not be understood.".into(), format!("{why}.")),
            ProxyError::UnknownHost(host) => (
                format!("This proxy does not serve {host}."),
                format!(
                    "No site named \"{host}\" is configured on this NTMobile Proxy Server. \
                     Check the address you typed."
                ),
            ),
            ProxyError::NotOpenProxy(host) => (
                "This is not an open proxy.".into(),
                format!(
                    "This server relays requests only to the NTM nodes it serves; \"{host}\" is not one of them. \
                     Remove this server from your proxy settings."
                ),
            ),
            ProxyError::Connect => (
                "This is not an open proxy.".into(),
                "CONNECT is not accepted: this server relays requests only to the NTM nodes it serves. \
                 Remove this server from your proxy settings."
                    .into(),
            ),
            ProxyError::Misdirected { sni, host } => (
                format!("This connection is for {sni}, not {host}."),
                "The browser reused a secure connection for another site. Reload the page.".into(),
            ),
            ProxyError::TooLarge { limit } => (
                "The request is too large.".into(),
                format!("This proxy accepts request bodies of at most {}.", human_bytes(*limit)),
            ),
            ProxyError::Loop { name } => (
                "This request went round in a loop.".into(),
                format!(
                    "It had already passed through this proxy ({name}): the site's address leads back to the proxy."
                ),
            ),
            ProxyError::SiteBusy { fqdn, .. } => (
                format!("The node {fqdn} is busy."),
                "It has as many connections through this proxy as it may have at once. Try again in a moment.".into(),
            ),
            ProxyError::NotVip { fqdn, .. } => (
                format!("The node {fqdn} cannot be reached."),
                "Its name did not resolve to a virtual address (VIP) of the NTM network, so this proxy does not \
                 connect to it."
                    .into(),
            ),
            ProxyError::Resolve { fqdn, error } => (
                format!("The node {fqdn} cannot be reached."),
                format!("Its virtual address could not be resolved through the local ntmd: {error}."),
            ),
            ProxyError::ConnectFailed { fqdn, addr, error } => (
                format!("The node {fqdn} cannot be reached."),
                format!(
                    "The tunnel to the node is up, but its web server at {addr} did not accept the connection: {error}."
                ),
            ),
            ProxyError::ConnectTimeout { fqdn, after } => (
                format!("The node {fqdn} did not answer in time."),
                format!(
                    "No connection to the node could be made within {} (tunnel build and TCP connect).",
                    human_duration(*after)
                ),
            ),
            ProxyError::ResponseTimeout { fqdn, after } => (
                format!("The node {fqdn} did not answer in time."),
                format!("The node accepted the request but sent no response within {}.", human_duration(*after)),
            ),
            ProxyError::Upstream { fqdn, error } => (
                format!("The node {fqdn} sent no valid response."),
                format!("The connection to the node failed: {error}."),
            ),
        }
    }

    /// The error page.
    pub fn response(&self) -> Response<BoxBody> {
        let status = self.status();
        let (headline, detail) = self.explain();
        let mut resp = page(status, &headline, &detail);
        if matches!(self, ProxyError::Connect) {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"));
        }
        if matches!(self, ProxyError::SiteBusy { .. }) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A small HTML page with `status`, a headline and a detail line.
pub fn page(status: StatusCode, headline: &str, detail: &str) -> Response<BoxBody> {
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut html = String::with_capacity(1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em;\
         color:#222}}h1{{font-size:1.4em}}p.code{{color:#666}}</style></head>\n<body><h1>{headline}</h1>\n\
         <p>{detail}</p>\n<p class=\"code\">{title}</p>\n<hr><address>nps, the NTMobile Proxy Server</address>\
         </body></html>\n",
        title = escape(&title),
        headline = escape(headline),
        detail = escape(detail),
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A response body made of `body`, whole.
pub fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

/// HTML-escapes `s` (text and attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn human_duration(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_and_carry_status() {
        let e = ProxyError::UnknownHost("<script>.test".into());
        let resp = e.response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = futures_body(resp);
        assert!(body.contains("&lt;script&gt;.test"), "{body}");
        assert!(!body.contains("<script>"), "{body}");
        assert_eq!(ProxyError::Connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        let e = ProxyError::Resolve { fqdn: "a.test".into(), error: ResolveError::ServFail };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(futures_body(e.response()).contains("SERVFAIL: the tunnel to the node could not be built"));
        let e = ProxyError::NotVip { fqdn: "a.test".into(), addr: "192.0.2.9".parse().unwrap() };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        // The page does not tell the client where the name pointed.
        assert!(!futures_body(e.response()).contains("192.0.2.9"));
        assert_eq!(ProxyError::Loop { name: "nps".into() }.status(), StatusCode::LOOP_DETECTED);
        let resp = ProxyError::SiteBusy { fqdn: "a.test".into(), limit: 1 }.response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(human_bytes(100 << 20), "100 MiB");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500 ms");
    }

    fn futures_body(resp: Response<BoxBody>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
