//! `nps`'s TOML configuration (`--config FILE`): parsed strictly (unknown keys are errors),
//! validated, with every error naming the file, the key and its line.
//!
//! Which FQDNs the NPS serves comes from `[[sites]]` only: a request for any other name is refused.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use host::config::{Load, Source, Spanned};
use serde::Deserialize;

/// Default `listen_http`: port 80 on every IPv4 and every IPv6 address.
pub const DEFAULT_LISTEN_HTTP: [&str; 2] = ["0.0.0.0:80", "[::]:80"];
/// Default `resolver`: the stub of the `ntmd` running on the same host.
pub const DEFAULT_RESOLVER: &str = "127.0.0.1:53";
/// Default `upstream_port`: the node's web server speaks plain HTTP on port 80.
pub const DEFAULT_UPSTREAM_PORT: u16 = 80;
/// Default `connect_timeout_ms` (5 s): resolving the node, which may build its tunnel, plus
/// the TCP connect to its VIP.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default `response_timeout_ms` (30 s) to the node's response headers.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 30_000;
/// Default `max_request_body`, in bytes (100 MiB).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 100 << 20;
/// Default `cert_dir`, where `<fqdn>.crt` and `<fqdn>.key` are looked for.
pub const DEFAULT_CERT_DIR: &str = "/etc/ntm/certs";
/// Default `pool_idle_timeout_ms` (60 s) of an idle connection to a node.
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default `pool_max_idle_per_node`.
pub const DEFAULT_POOL_MAX_IDLE_PER_NODE: usize = 64;
/// Default `header_timeout_ms` (30 s) for a client to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 30_000;
/// Default port of a passthrough site's TLS server on the node.
pub const DEFAULT_UPSTREAM_TLS_PORT: u16 = 443;
/// Default `vip_ranges`: the VIP ranges `ntmd` routes into its tunnels (its `tun.routes`).
pub const DEFAULT_VIP_RANGES: [&str; 2] = ["100.64.0.0/10", "fd4e:544d::/32"];
/// `name` when none is configured and the host name cannot be read (or is not usable).
pub const FALLBACK_NAME: &str = "nps";
/// Default `max_connections`: client connections open at once, in total.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `max_connections_per_client`: client connections open at once from one IPv4 address
/// or one IPv6 /64.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Default `max_connections_per_site`: connections to one site's node at once (requests in
/// flight, WebSocket and TLS passthrough connections).
pub const DEFAULT_MAX_CONNECTIONS_PER_SITE: usize = 1024;
/// Default `max_header_size`, in bytes (16 KiB): a request's head (request line and headers).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 16 << 10;
/// Smallest `max_header_size` (8 KiB; hyper's smallest HTTP/1.1 read buffer).
pub const MIN_MAX_HEADER_SIZE: usize = 8 << 10;
/// Largest `max_header_size` (1 MiB).
pub const MAX_MAX_HEADER_SIZE: usize = 1 << 20;
/// Default `idle_timeout_ms` (60 s) of a client HTTP connection with no request in progress.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default `tunnel_idle_timeout_ms` (5 min) of a WebSocket or TLS passthrough connection on which
/// no byte moves either way.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT_MS: u64 = 300_000;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Plain HTTP listeners (HTTP/1.1 and h2c with prior knowledge). IPv6 sockets are v6-only.
    pub listen_http: Vec<SocketAddr>,
    /// TLS listeners (terminated: HTTP/1.1 and h2 by ALPN; or passed through by SNI).
    pub listen_https: Vec<SocketAddr>,
    /// The DNS resolver that turns an NTM name into its VIP: the local `ntmd` stub.
    pub resolver: SocketAddr,
    /// Where the combined-format access log is written; `None`: no access log.
    pub access_log: Option<LogTarget>,
    /// Where the Prometheus metrics are served (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Budget for resolving the node (which builds its tunnel) and connecting to it.
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the node's response headers.
    pub response_timeout: Duration,
    /// Time a client gets to send a request's headers.
    pub header_timeout: Duration,
    /// Largest request body accepted; 0: no limit.
    pub max_request_body: u64,
    /// Directory of `<fqdn>.crt` / `<fqdn>.key` (PEM) for sites with `tls = "terminate"`.
    pub cert_dir: PathBuf,
    /// How long an idle connection to a node stays in the pool.
    pub pool_idle_timeout: Duration,
    /// How long a request sent on a pooled (reused) connection waits for the first byte of the
    /// response before that connection is taken for dead (its tunnel died without a word): it is
    /// closed, and the request, when that is safe, is sent again once on a new connection that
    /// must be up within what is left of `connect_timeout` (see [`crate::pool::Pool::send`]).
    /// Less than `connect_timeout`; by default half of it.
    pub pool_first_byte_timeout: Duration,
    /// Idle connections kept per node (VIP and port); a connection that would exceed it is
    /// closed. 0 disables the pool.
    pub pool_max_idle_per_node: usize,
    /// The FQDNs served, without duplicates; a request for any other host gets 404.
    pub sites: Vec<Site>,
    /// This NPS's name: sent as `Via: 1.1 <name>` to the nodes, and a request that already
    /// carries it has looped back here (508). By default the host name.
    pub name: String,
    /// The only addresses the NPS connects to: a resolved address outside them is refused (502)
    /// without a connection, whatever the resolver said.
    pub vip_ranges: Vec<Prefix>,
    /// Client connections open at once, in total; past it a new one is closed at once. 0: no cap.
    pub max_connections: usize,
    /// Client connections open at once from one IPv4 address or one IPv6 /64. 0: no cap.
    pub max_connections_per_client: usize,
    /// Connections to one site's node at once: requests in flight (each holds a connection to
    /// the node), WebSocket and TLS passthrough connections. Past it a request gets 503 and a
    /// passthrough connection is closed. 0: no cap.
    pub max_connections_per_site: usize,
    /// Largest request head (request line and headers, or the HTTP/2 header list); past it the
    /// client gets 431.
    pub max_header_size: usize,
    /// How long a client's HTTP connection (HTTP/1.1 keep-alive or HTTP/2) stays open with no
    /// request in progress.
    pub idle_timeout: Duration,
    /// How long a WebSocket (upgraded) or TLS passthrough connection stays open with no byte
    /// relayed either way.
    pub tunnel_idle_timeout: Duration,
}

/// An address prefix (`vip_ranges`), like `100.64.0.0/10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Whether `ip` is in this prefix; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// `address/length`, without host bits.
    fn from_str(s: &str) -> Result<Prefix, String> {
        let bad = || format!("{s:?} is not a prefix (like 100.64.0.0/10 or fd4e:544d::/32)");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: a prefix length is at most {max}"));
        }
        let net = Prefix { addr: mask(addr, len), len };
        if net.addr != addr {
            return Err(format!("{s:?} has host bits set; did you mean {net}?"));
        }
        Ok(net)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr` with its bits past `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)).into()),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`access_log = "-"`).
    Stdout,
    /// A file, appended to and created if missing; a relative path is taken from the
    /// configuration file's directory.
    File(PathBuf),
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("stdout"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One served FQDN (`[[sites]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Lowercase, without the trailing dot.
    pub fqdn: String,
    /// Whether HTTPS requests for this site are refused, terminated here or passed through.
    /// Any mode but `none` needs `listen_https`.
    pub tls: TlsMode,
    /// Port of the web server on the node (plain HTTP).
    pub upstream_port: u16,
    /// Port of the node's TLS server, for `tls = "passthrough"`.
    pub upstream_tls_port: u16,
}

/// What the NPS does with TLS for a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// HTTP only: no TLS for this site.
    #[default]
    None,
    /// TLS ends at the NPS with `cert_dir/<fqdn>.crt` and `.key`; HTTP to the node.
    Terminate,
    /// The TLS connection is relayed by SNI, untouched, to the node's `upstream_tls_port` (443).
    Passthrough,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::None => "none",
            TlsMode::Terminate => "terminate",
            TlsMode::Passthrough => "passthrough",
        })
    }
}

impl Load for Config {
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let src = Source::new(text, path);
        Validator { src }.config(src.parse()?)
    }
}

impl Config {
    /// The site serving `host` (lowercase, no port, no trailing dot).
    pub fn site(&self, host: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.fqdn == host)
    }

    /// A map from FQDN to site, for lookups on the hot path.
    pub fn site_map(&self) -> HashMap<String, Site> {
        self.sites.iter().map(|s| (s.fqdn.clone(), s.clone())).collect()
    }

    /// Whether the NPS may connect to `ip`: it is in one of the `vip_ranges`.
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.vip_ranges.iter().any(|r| r.contains(ip))
    }
}

pub use host::config::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen_http: Option<Spanned<Vec<Spanned<String>>>>,
    listen_https: Option<Spanned<Vec<Spanned<String>>>>,
    resolver: Option<Spanned<String>>,
    access_log: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    upstream_port: Option<Spanned<u16>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    response_timeout_ms: Option<Spanned<u64>>,
    header_timeout_ms: Option<Spanned<u64>>,
    max_request_body: Option<Spanned<RawSize>>,
    cert_dir: Option<Spanned<PathBuf>>,
    pool_idle_timeout_ms: Option<Spanned<u64>>,
    pool_first_byte_timeout_ms: Option<Spanned<u64>>,
    pool_max_idle_per_node: Option<usize>,
    name: Option<Spanned<String>>,
    vip_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_connections_per_site: Option<usize>,
    max_header_size: Option<Spanned<RawSize>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    tunnel_idle_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    sites: Vec<Spanned<RawSite>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    fqdn: Spanned<String>,
    #[serde(default)]
    tls: TlsMode,
    upstream_port: Option<Spanned<u16>>,
    upstream_tls_port: Option<Spanned<u16>>,
}

type Span = std::ops::Range<usize>;

/// Turns the raw TOML values into a [`Config`], locating errors in `text`.
struct Validator<'a> {
    src: Source<'a>,
}

impl Validator<'_> {
    fn err(&self, key: &str, span: Option<Span>, message: impl Into<String>) -> ConfigError {
        self.src.err(key, span, message)
    }

    fn relative(&self, p: &Path) -> PathBuf {
        self.src.relative(p)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_http = match &raw.listen_http {
            Some(l) => self.listens("listen_http", l.get_ref(), 80)?,
            None => DEFAULT_LISTEN_HTTP.iter().map(|a| a.parse().expect("default is valid")).collect(),
        };
        let listen_https = match &raw.listen_https {
            Some(l) => self.listens("listen_https", l.get_ref(), 443)?,
            None => Vec::new(),
        };
        if listen_http.is_empty() && listen_https.is_empty() {
            let span = raw.listen_http.as_ref().map(|l| l.span());
            return Err(self.err("listen_http", span, "no listener: give listen_http or listen_https"));
        }
        let resolver = match &raw.resolver {
            Some(r) => parse_addr(r.get_ref(), 53, false).map_err(|m| self.err("resolver", Some(r.span()), m))?,
            None => DEFAULT_RESOLVER.parse().expect("default is valid"),
        };
        let access_log = match &raw.access_log {
            Some(a) if a.get_ref().is_empty() => {
                return Err(self.err("access_log", Some(a.span()), "must not be empty (use \"-\" for stdout)"))
            }
            Some(a) if a.get_ref() == "-" => Some(LogTarget::Stdout),
            Some(a) => Some(LogTarget::File(self.relative(Path::new(a.get_ref())))),
            None => None,
        };
        let metrics_listen = match &raw.metrics_listen {
            Some(m) => {
                Some(parse_addr(m.get_ref(), 9780, true).map_err(|e| self.err("metrics_listen", Some(m.span()), e))?)
            }
            None => None,
        };
        if let Some(m) = metrics_listen {
            if m.port() != 0 && (listen_http.contains(&m) || listen_https.contains(&m)) {
                let span = raw.metrics_listen.as_ref().map(|m| m.span());
                return Err(self.err("metrics_listen", span, format!("{m} is also a proxy listener")));
            }
        }
        let upstream_port = self.port("upstream_port", raw.upstream_port.as_ref())?.unwrap_or(DEFAULT_UPSTREAM_PORT);
        let connect_timeout = self.millis("connect_timeout_ms", raw.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS)?;
        let response_timeout =
            self.millis("response_timeout_ms", raw.response_timeout_ms, DEFAULT_RESPONSE_TIMEOUT_MS)?;
        let header_timeout = self.millis("header_timeout_ms", raw.header_timeout_ms, DEFAULT_HEADER_TIMEOUT_MS)?;
        let pool_idle_timeout =
            self.millis("pool_idle_timeout_ms", raw.pool_idle_timeout_ms, DEFAULT_POOL_IDLE_TIMEOUT_MS)?;
        // By default the silent pooled connection and the new one share the connect budget.
        let pool_first_byte_timeout = match raw.pool_first_byte_timeout_ms {
            Some(v) if Duration::from_millis(*v.get_ref()) >= connect_timeout => {
                return Err(self.err(
                    "pool_first_byte_timeout_ms",
                    Some(v.span()),
                    format!(
                        "must be less than connect_timeout_ms ({}), which also covers the new connection of a retry",
                        connect_timeout.as_millis()
                    ),
                ))
            }
            Some(v) => self.millis("pool_first_byte_timeout_ms", Some(v), 0)?,
            None => (connect_timeout / 2).max(Duration::from_millis(1)),
        };
        let max_request_body = match &raw.max_request_body {
            Some(s) => self.size("max_request_body", s)?,
            None => DEFAULT_MAX_REQUEST_BODY,
        };
        let max_header_size = match &raw.max_header_size {
            Some(s) => match self.size("max_header_size", s)? {
                n if (MIN_MAX_HEADER_SIZE as u64..=MAX_MAX_HEADER_SIZE as u64).contains(&n) => n as usize,
                n => {
                    return Err(self.err(
                        "max_header_size",
                        Some(s.span()),
                        format!("{n} bytes: must be from 8KiB ({MIN_MAX_HEADER_SIZE}) to 1MiB ({MAX_MAX_HEADER_SIZE})"),
                    ))
                }
            },
            None => DEFAULT_MAX_HEADER_SIZE,
        };
        let idle_timeout = self.millis("idle_timeout_ms", raw.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS)?;
        let tunnel_idle_timeout =
            self.millis("tunnel_idle_timeout_ms", raw.tunnel_idle_timeout_ms, DEFAULT_TUNNEL_IDLE_TIMEOUT_MS)?;
        let name = match &raw.name {
            Some(n) => check_name(n.get_ref()).map_err(|m| self.err("name", Some(n.span()), m))?,
            None => default_name(),
        };
        let vip_ranges = match &raw.vip_ranges {
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.err(
                    "vip_ranges",
                    Some(list.span()),
                    "must not be empty: the NPS connects only to addresses in these ranges",
                ))
            }
            Some(list) => list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, s)| s.get_ref().parse().map_err(|m| self.err(&format!("vip_ranges[{i}]"), Some(s.span()), m)))
                .collect::<Result<Vec<Prefix>, _>>()?,
            None => DEFAULT_VIP_RANGES.iter().map(|r| r.parse().expect("default is valid")).collect(),
        };
        let cert_dir = match raw.cert_dir {
            Some(d) if d.get_ref().as_os_str().is_empty() => {
                return Err(self.err("cert_dir", Some(d.span()), "must not be empty"))
            }
            Some(d) => self.relative(d.get_ref()),
            None => PathBuf::from(DEFAULT_CERT_DIR),
        };
        let mut sites: Vec<Site> = Vec::with_capacity(raw.sites.len());
        for (i, s) in raw.sites.iter().enumerate() {
            let key = |k: &str| format!("sites[{i}].{k}");
            let r = s.get_ref();
            let fqdn = self.src.fqdn(&key("fqdn"), &r.fqdn)?;
            if sites.iter().any(|o| o.fqdn == fqdn) {
                return Err(self.err(&key("fqdn"), Some(r.fqdn.span()), format!("{fqdn} is listed twice")));
            }
            if r.tls != TlsMode::None && listen_https.is_empty() {
                return Err(self.err(
                    &key("tls"),
                    Some(s.span()),
                    format!("{fqdn} has tls = \"{}\" but listen_https is empty", r.tls),
                ));
            }
            let port = self.port(&key("upstream_port"), r.upstream_port.as_ref())?.unwrap_or(upstream_port);
            let tls_port = self.port(&key("upstream_tls_port"), r.upstream_tls_port.as_ref())?;
            if let (Some(p), false) = (&r.upstream_tls_port, r.tls == TlsMode::Passthrough) {
                return Err(self.err(&key("upstream_tls_port"), Some(p.span()), "only for tls = \"passthrough\""));
            }
            sites.push(Site {
                fqdn,
                tls: r.tls,
                upstream_port: port,
                upstream_tls_port: tls_port.unwrap_or(DEFAULT_UPSTREAM_TLS_PORT),
            });
        }
        if sites.is_empty() {
            tracing::warn!(config = %self.src.path().display(), "no [[sites]]: every request will get 404");
        }
        Ok(Config {
            listen_http,
            listen_https,
            resolver,
            access_log,
            metrics_listen,
            connect_timeout,
            response_timeout,
            header_timeout,
            max_request_body,
            cert_dir,
            pool_idle_timeout,
            pool_first_byte_timeout,
            pool_max_idle_per_node: raw.pool_max_idle_per_node.unwrap_or(DEFAULT_POOL_MAX_IDLE_PER_NODE),
            sites,
            name,
            vip_ranges,
            max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client: raw.max_connections_per_client.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
            max_connections_per_site: raw.max_connections_per_site.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_SITE),
            max_header_size,
            idle_timeout,
            tunnel_idle_timeout,
        })
    }

    fn size(&self, key: &str, s: &Spanned<RawSize>) -> Result<u64, ConfigError> {
        match s.get_ref() {
            RawSize::Bytes(n) => Ok(*n),
            RawSize::Text(t) => parse_size(t).map_err(|m| self.err(key, Some(s.span()), m)),
        }
    }

    fn listens(&self, key: &str, list: &[Spanned<String>], default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
        let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let a = parse_addr(s.get_ref(), default_port, true)
                .map_err(|m| self.err(&format!("{key}[{i}]"), Some(s.span()), m))?;
            if a.port() != 0 && out.contains(&a) {
                return Err(self.err(&format!("{key}[{i}]"), Some(s.span()), format!("{a} is listed twice")));
            }
            out.push(a);
        }
        Ok(out)
    }

    fn port(&self, key: &str, v: Option<&Spanned<u16>>) -> Result<Option<u16>, ConfigError> {
        match v {
            Some(p) if *p.get_ref() == 0 => Err(self.err(key, Some(p.span()), "port 0 is not allowed here")),
            Some(p) => Ok(Some(*p.get_ref())),
            None => Ok(None),
        }
    }

    fn millis(&self, key: &str, v: Option<Spanned<u64>>, default: u64) -> Result<Duration, ConfigError> {
        match v {
            Some(v) if *v.get_ref() == 0 => Err(self.err(key, Some(v.span()), "must be at least 1 ms")),
            Some(v) => Ok(Duration::from_millis(*v.get_ref())),
            None => Ok(Duration::from_millis(default)),
        }
    }
}

/// A `name`: what goes in `Via` after `1.1 `, so letters, digits, `.`, `-` and `_` only.
fn check_name(name: &str) -> Result<String, String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    if name.is_empty() || name.len() > 253 || !name.bytes().all(ok) {
        return Err(format!(
            "{name:?}: must be 1 to 253 letters, digits, '.', '-' or '_' (it is sent in the Via header)"
        ));
    }
    Ok(name.to_owned())
}

/// The host name (`/proc/sys/kernel/hostname`), or [`FALLBACK_NAME`].
fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| check_name(h.trim()).ok())
        .unwrap_or_else(|| FALLBACK_NAME.to_owned())
}

/// `ip:port`, `[ip6]:port`, or a bare address that gets `default_port`.
fn parse_addr(s: &str, default_port: u16, port_zero_ok: bool) -> Result<SocketAddr, String> {
    if port_zero_ok {
        host::config::socket_addr_any_port(s, default_port)
    } else {
        host::config::socket_addr(s, default_port)
    }
}

/// A byte count: `1048576`, `512KiB`, `100MiB`, `1GiB`, `10MB`, `1 kB` (case-insensitive units).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size (like 100MiB, 512KiB, 10MB or a number of bytes)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ntm/nps.toml"))
    }

    #[test]
    fn defaults_apply() {
        let c = parse("[[sites]]\nfqdn = \"RPI.home.ntm.test.\"\n").unwrap();
        assert_eq!(c.listen_http, ["0.0.0.0:80".parse::<SocketAddr>().unwrap(), "[::]:80".parse().unwrap()]);
        assert!(c.listen_https.is_empty());
        assert_eq!(c.resolver, "127.0.0.1:53".parse::<SocketAddr>().unwrap());
        assert_eq!(c.access_log, None);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.response_timeout, Duration::from_secs(30));
        assert_eq!(c.pool_first_byte_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_request_body, 100 << 20);
        assert_eq!(c.cert_dir, Path::new(DEFAULT_CERT_DIR));
        assert_eq!(
            c.sites,
            [Site { fqdn: "rpi.home.ntm.test".into(), tls: TlsMode::None, upstream_port: 80, upstream_tls_port: 443 }]
        );
        let vips: Vec<String> = c.vip_ranges.iter().map(|r| r.to_string()).collect();
        assert_eq!(vips, ["100.64.0.0/10", "fd4e:544d::/32"]);
        assert!(check_name(&c.name).is_ok(), "{}", c.name);
        assert_eq!(
            (c.max_connections, c.max_connections_per_client, c.max_connections_per_site, c.max_header_size),
            (4096, 64, 1024, 16 << 10)
        );
        assert_eq!((c.idle_timeout, c.tunnel_idle_timeout), (Duration::from_secs(60), Duration::from_secs(300)));
    }

    #[test]
    fn vip_ranges_are_prefixes() {
        let c = parse("vip_ranges = [\"100.64.0.0/10\", \"FD4E:544D::/32\", \"127.0.0.1/32\"]\n").unwrap();
        let is_vip = |ip: &str| c.is_vip(ip.parse().unwrap());
        assert!(is_vip("100.64.0.2") && is_vip("100.127.255.255") && is_vip("127.0.0.1"));
        assert!(is_vip("fd4e:544d::2") && is_vip("fd4e:544d:ffff::1"));
        assert!(is_vip("::ffff:100.64.0.2"), "an IPv4-mapped address is its IPv4 address");
        for outside in ["100.128.0.1", "100.63.255.255", "127.0.0.2", "198.18.20.2", "fd4e:544e::1", "::1", "::"] {
            assert!(!is_vip(outside), "{outside}");
        }
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()) && !all.contains("2001:db8::1".parse().unwrap()));
        let one: Prefix = "2001:db8::1/128".parse().unwrap();
        assert!(one.contains("2001:db8::1".parse().unwrap()) && !one.contains("2001:db8::2".parse().unwrap()));

        let e = parse("\nvip_ranges = [\"100.64.0.0/10\", \"100.64.0.1/10\"]\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/ntm/nps.toml:2: vip_ranges[1]: \"100.64.0.1/10\" has host bits set; did you mean 100.64.0.0/10?"
        );
        let e = parse("vip_ranges = [\"100.64.0.0\"]\n").unwrap_err().to_string();
        assert!(e.contains(":1: vip_ranges[0]: \"100.64.0.0\" is not a prefix"), "{e}");
        let e = parse("vip_ranges = [\"10.0.0.0/33\"]\n").unwrap_err().to_string();
        assert!(e.contains(":1: vip_ranges[0]: \"10.0.0.0/33\": a prefix length is at most 32"), "{e}");
        let e = parse("vip_ranges = [\"fd4e::/129\"]\n").unwrap_err().to_string();
        assert!(e.contains(":1: vip_ranges[0]: ") && e.contains("at most 128"), "{e}");
        let e = parse("vip_ranges = [\"ntm\"]\n").unwrap_err().to_string();
        assert!(e.contains(":1: vip_ranges[0]: "), "{e}");
        let e = parse("\n\nvip_ranges = []\n").unwrap_err().to_string();
        assert!(e.contains(":3: vip_ranges: must not be empty"), "{e}");
    }

    #[test]
    fn name_goes_in_via() {
        assert_eq!(parse("name = \"nps-1.proxy.ntm.test\"\n").unwrap().name, "nps-1.proxy.ntm.test");
        for bad in ["", "nps 1", "nps,1", "nps(1)", "é"] {
            let e = parse(&format!("\nname = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(e.contains(":2: name: ") && e.contains("Via"), "{bad:?}: {e}");
        }
        assert!(check_name(&"a".repeat(254)).is_err());
        assert_eq!(check_name("nps_1"), Ok("nps_1".to_owned()));
    }

    #[test]
    fn caps_and_idle_timeouts() {
        let c = parse(
            "max_connections = 0\nmax_connections_per_client = 8\nmax_connections_per_site = 2\n\
             max_header_size = \"8KiB\"\nidle_timeout_ms = 1500\ntunnel_idle_timeout_ms = 2500\n",
        )
        .unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_client, c.max_connections_per_site), (0, 8, 2));
        assert_eq!(c.max_header_size, 8192);
        assert_eq!(c.idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.tunnel_idle_timeout, Duration::from_millis(2500));
        assert_eq!(parse("max_header_size = 1048576\n").unwrap().max_header_size, 1 << 20);
        let e = parse("\nmax_header_size = \"4KiB\"\n").unwrap_err().to_string();
        assert!(e.contains(":2: max_header_size: 4096 bytes: must be from 8KiB"), "{e}");
        let e = parse("max_header_size = \"2MiB\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: max_header_size: "), "{e}");
        let e = parse("max_header_size = \"lots\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: max_header_size: \"lots\" is not a size"), "{e}");
        let e = parse("idle_timeout_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains(":1: idle_timeout_ms: must be at least 1 ms"), "{e}");
        let e = parse("\ntunnel_idle_timeout_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains(":2: tunnel_idle_timeout_ms: must be at least 1 ms"), "{e}");
        let e = parse("max_connections_per_client = -1\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("max_connections_per_client"), "{e}");
    }

    #[test]
    fn unknown_keys_rejected_with_line() {
        let e = parse("resolver = \"127.0.0.1\"\ncolour = \"blue\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/ntm/nps.toml: "), "{e}");
        assert!(e.contains("line 2") && e.contains("colour"), "{e}");
        let e = parse("[[sites]]\nfqdn = \"a.test\"\n\n[[sites]]\nfqdn = \"b.test\"\nport = 8080\n").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("line 6") && e.contains("port"), "{e}");
    }

    #[test]
    fn invalid_values_named_with_line() {
        let e = parse("[[sites]]\nfqdn = \"a.test\"\n[[sites]]\nfqdn = \"A.test.\"\n").unwrap_err().to_string();
        assert_eq!(e, "/etc/ntm/nps.toml:4: sites[1].fqdn: a.test is listed twice");
        let e = parse("\n[[sites]]\nfqdn = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/ntm/nps.toml:3: sites[0].fqdn: "), "{e}");
        let e = parse("max_request_body = \"12 parsecs\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/ntm/nps.toml:1: max_request_body: "), "{e}");
        let e = parse("connect_timeout_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains(":1: connect_timeout_ms: must be at least 1 ms"), "{e}");
        let e = parse("resolver = \"ntmd\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: resolver: "), "{e}");
        let e = parse("listen_http = []\n").unwrap_err().to_string();
        assert!(e.contains(":1: listen_http: no listener"), "{e}");
        let e = parse("\n[[sites]]\nfqdn = \"a.test\"\ntls = \"terminate\"\n").unwrap_err().to_string();
        assert!(e.contains(":2: sites[0].tls: a.test has tls = \"terminate\" but listen_https is empty"), "{e}");
        let e = parse("[[sites]]\nfqdn = \"a.test\"\ntls = \"maybe\"\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("maybe"), "{e}");
        let e = parse("[[sites]]\nfqdn = \"a.test\"\nupstream_port = 0\n").unwrap_err().to_string();
        assert!(e.contains(":3: sites[0].upstream_port: port 0"), "{e}");
    }

    #[test]
    fn first_byte_timeout_fits_in_the_connect_timeout() {
        let c = parse("connect_timeout_ms = 1000\n").unwrap();
        assert_eq!(c.pool_first_byte_timeout, Duration::from_millis(500));
        let c = parse("connect_timeout_ms = 1000\npool_first_byte_timeout_ms = 200\n").unwrap();
        assert_eq!(c.pool_first_byte_timeout, Duration::from_millis(200));
        let e = parse("connect_timeout_ms = 1000\n\npool_first_byte_timeout_ms = 1000\n").unwrap_err().to_string();
        assert!(e.contains(":3: pool_first_byte_timeout_ms: must be less than connect_timeout_ms (1000)"), "{e}");
        let e = parse("pool_first_byte_timeout_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains(":1: pool_first_byte_timeout_ms: must be at least 1 ms"), "{e}");
        let e = parse("pool_first_byte_timeout_ms = \"1s\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("pool_first_byte_timeout_ms"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("512kib"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse("max_request_body = 1024\n").unwrap().max_request_body, 1024);
        assert_eq!(parse("max_request_body = 0\n").unwrap().max_request_body, 0);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("cert_dir = \"certs\"\naccess_log = \"log/access.log\"\n").unwrap();
        assert_eq!(c.cert_dir, Path::new("/etc/ntm/certs"));
        assert_eq!(c.access_log, Some(LogTarget::File("/etc/ntm/log/access.log".into())));
        assert_eq!(parse("access_log = \"-\"\n").unwrap().access_log, Some(LogTarget::Stdout));
    }

    #[test]
    fn example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nps.toml");
        let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen_http.len(), 2);
        assert_eq!(c.listen_https.len(), 2);
        assert!(c.listen_https.iter().all(|a| a.port() == 443));
        assert_eq!(c.resolver, "127.0.0.1:53".parse::<SocketAddr>().unwrap());
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9780".parse().unwrap()));
        assert_eq!(c.max_request_body, 100 << 20);
        assert_eq!(c.name, "nps");
        let vips: Vec<String> = c.vip_ranges.iter().map(|r| r.to_string()).collect();
        assert_eq!(vips, DEFAULT_VIP_RANGES);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.max_connections_per_client, DEFAULT_MAX_CONNECTIONS_PER_CLIENT);
        assert_eq!(c.max_connections_per_site, DEFAULT_MAX_CONNECTIONS_PER_SITE);
        assert_eq!(c.max_header_size, DEFAULT_MAX_HEADER_SIZE);
        assert_eq!(c.idle_timeout, Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS));
        assert_eq!(c.tunnel_idle_timeout, Duration::from_millis(DEFAULT_TUNNEL_IDLE_TIMEOUT_MS));
        assert_eq!(c.site("rpi.home.ntm.test").map(|s| s.tls), Some(TlsMode::Terminate));
        assert_eq!(c.site("cam.home.ntm.test").map(|s| s.tls), Some(TlsMode::None));
        assert_eq!(c.site("v6.home.ntm.test").map(|s| s.tls), Some(TlsMode::Passthrough));
        assert!(c.site("tv.home.ntm.test").is_some());
        assert!(c.site("example.com").is_none());
    }
}
