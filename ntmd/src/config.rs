//! `ntmd`'s TOML configuration (`--config FILE`): parsed strictly (unknown keys are errors),
//! validated, with every error naming the file, the key and its line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use host::config::{ifname, socket_addr, Load, Source, Spanned};
use ipnet::IpNet;
use proto::keys::{PublicKey, SecretKey};
use serde::Deserialize;

/// Default `port`: the node's UDP port for signaling and tunnel data.
pub const DEFAULT_PORT: u16 = 7600;
/// Port assumed for a `dc` address written without one: a DC's signaling port.
pub const DEFAULT_DC_PORT: u16 = 7500;
/// Default `idle_timeout_s`: a tunnel without traffic for 3 minutes is torn down.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 180;
/// The longest idle timeout: ntm.ko's `idle-timeout-ms` policy allows a day.
pub const MAX_IDLE_TIMEOUT_S: u64 = 86_400;
/// Default `control_socket`, where `ntmctl` reaches the daemon.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ntm/ntmd.sock";
/// Default `dns.listen`: the stub resolver on the loopback, port 53.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:53";
/// Default `tun.name`.
pub const DEFAULT_TUN_NAME: &str = "ntm0";
/// Default `tun.mtu`: a 1500-byte path minus the outer IPv6 and UDP headers and the 32 bytes
/// a data packet adds.
pub const DEFAULT_TUN_MTU: u16 = 1420;
/// The VIP ranges routed into the TUN device unless `tun.routes` says otherwise.
pub const DEFAULT_TUN_ROUTES: [&str; 2] = ["100.64.0.0/10", "fd4e:544d::/32"];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's FQDN, lowercase, without the trailing dot.
    pub fqdn: String,
    /// The node's static key (`private_key` or `private_key_file`): its identity to its DC
    /// and its peers.
    pub private_key: SecretKey,
    /// The DC's public key; the node talks to no DC without it.
    pub dc_public_key: PublicKey,
    /// The DC's signaling addresses, tried in order.
    pub dc: Vec<SocketAddr>,
    /// The node's UDP port for signaling and tunnels (0: any free port).
    pub port: u16,
    /// Idle time after which a tunnel is torn down.
    pub idle_timeout: Duration,
    /// Which data plane carries the tunnels.
    pub dataplane: Dataplane,
    /// The Unix socket `ntmctl` talks to (status, monitor).
    pub control_socket: PathBuf,
    /// Where Prometheus metrics are served (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The stub resolver (`[dns]`).
    pub dns: DnsConfig,
    /// The userspace data plane's TUN device (`[tun]`).
    pub tun: TunConfig,
    /// Which interfaces' addresses the node offers as its endpoints.
    pub interfaces: InterfaceFilter,
}

/// `interfaces` and `exclude_interfaces`: names, or prefixes ending in `*` (`wg*`). An
/// interface is used if `include` is empty or matches it, and `exclude` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceFilter {
    /// `interfaces`: the only interfaces used; empty means every interface.
    pub include: Vec<String>,
    /// `exclude_interfaces`: interfaces never used, even if `include` matches them.
    pub exclude: Vec<String>,
}

impl InterfaceFilter {
    /// True if the addresses of the interface `name` may be offered as endpoints.
    pub fn allows(&self, name: &str) -> bool {
        let matches = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        (self.include.is_empty() || self.include.iter().any(matches)) && !self.exclude.iter().any(matches)
    }
}

/// Which data plane carries tunnel packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// TUN device + UDP socket in `ntmd`.
    Userspace,
    /// The `ntm.ko` kernel module.
    Kernel,
    /// The kernel module if it is loaded, else userspace.
    #[default]
    Auto,
}

impl fmt::Display for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dataplane::Userspace => "userspace",
            Dataplane::Kernel => "kernel",
            Dataplane::Auto => "auto",
        })
    }
}

/// The stub resolver (`[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where the stub listens (UDP and TCP); empty disables it.
    pub listen: Vec<SocketAddr>,
    /// Resolvers for every name that is not an NTM name, tried in order.
    pub upstream: Vec<SocketAddr>,
}

/// The TUN device of the userspace data plane (`[tun]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// The device's name (a valid interface name).
    pub name: String,
    /// The device's MTU in bytes, at least 1280.
    pub mtu: u16,
    /// Prefixes routed into the device (the VIP ranges).
    pub routes: Vec<IpNet>,
}

pub use host::config::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    fqdn: Spanned<String>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<PathBuf>>,
    dc_public_key: Spanned<String>,
    dc: Spanned<Vec<Spanned<String>>>,
    port: Option<u16>,
    idle_timeout_s: Option<Spanned<u64>>,
    #[serde(default)]
    dataplane: Dataplane,
    control_socket: Option<Spanned<PathBuf>>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    tun: RawTun,
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    exclude_interfaces: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    upstream: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTun {
    name: Option<Spanned<String>>,
    mtu: Option<Spanned<u16>>,
    routes: Option<Vec<Spanned<String>>>,
}

impl Load for Config {
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let src = Source::new(text, path);
        Validator { src }.config(src.parse()?)
    }
}

/// Turns the raw TOML values into a [`Config`], locating errors in `text`.
struct Validator<'a> {
    src: Source<'a>,
}

impl Validator<'_> {
    fn err(&self, key: &str, span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> ConfigError {
        self.src.err(key, span, message)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let fqdn = self.src.fqdn("fqdn", &raw.fqdn)?;
        let private_key =
            self.src.secret_key("private_key", raw.private_key.as_ref(), raw.private_key_file.as_ref())?;
        let dc_public_key = self.src.public_key("dc_public_key", &raw.dc_public_key)?;
        let dc = self.addrs("dc", raw.dc.get_ref(), DEFAULT_DC_PORT)?;
        if dc.is_empty() {
            return Err(self.err("dc", Some(raw.dc.span()), "at least one DC address is needed"));
        }
        let idle_timeout_s = match raw.idle_timeout_s {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.err("idle_timeout_s", Some(v.span()), "must be at least 1 second"))
            }
            Some(v) if *v.get_ref() > MAX_IDLE_TIMEOUT_S => {
                return Err(self.err(
                    "idle_timeout_s",
                    Some(v.span()),
                    format!("must be at most {MAX_IDLE_TIMEOUT_S} (a day; the kernel data plane's limit)"),
                ))
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_IDLE_TIMEOUT_S,
        };
        let control_socket = match raw.control_socket {
            Some(p) if p.get_ref().as_os_str().is_empty() => {
                return Err(self.err("control_socket", Some(p.span()), "must not be empty"))
            }
            Some(p) => p.into_inner(),
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        };
        Ok(Config {
            fqdn,
            private_key,
            dc_public_key,
            dc,
            port: raw.port.unwrap_or(DEFAULT_PORT),
            idle_timeout: Duration::from_secs(idle_timeout_s),
            dataplane: raw.dataplane,
            control_socket,
            metrics_listen: raw.metrics_listen,
            dns: self.dns(raw.dns)?,
            tun: self.tun(raw.tun)?,
            interfaces: InterfaceFilter {
                include: self.if_patterns("interfaces", raw.interfaces)?,
                exclude: self.if_patterns("exclude_interfaces", raw.exclude_interfaces)?,
            },
        })
    }

    fn if_patterns(&self, key: &str, list: Option<Spanned<Vec<Spanned<String>>>>) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else { return Ok(Vec::new()) };
        if list.get_ref().is_empty() {
            return Err(self.err(
                key,
                Some(list.span()),
                "must not be empty (leave the key out to use every interface)",
            ));
        }
        list.into_inner()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let span = p.span();
                let name = p.into_inner();
                let bare = name.strip_suffix('*').unwrap_or(&name);
                let checked = if bare.is_empty() {
                    Err(format!("{name:?} matches every interface"))
                } else if bare.contains('*') {
                    Err(format!("{name:?}: `*` is allowed only at the end (like \"wg*\")"))
                } else {
                    ifname(bare)
                };
                checked.map(|()| name).map_err(|m| self.err(&format!("{key}[{i}]"), Some(span), m))
            })
            .collect()
    }

    fn addrs(&self, key: &str, list: &[Spanned<String>], default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
        self.src.addrs(key, list, default_port)
    }

    fn dns(&self, raw: RawDns) -> Result<DnsConfig, ConfigError> {
        let listen = match &raw.listen {
            Some(l) => self.addrs("dns.listen", l.get_ref(), 53)?,
            None => vec![socket_addr(DEFAULT_DNS_LISTEN, 53).expect("default is valid")],
        };
        let upstream = match &raw.upstream {
            Some(u) => self.addrs("dns.upstream", u.get_ref(), 53)?,
            None => Vec::new(),
        };
        if !listen.is_empty() && upstream.is_empty() {
            let span = raw.upstream.as_ref().map(|u| u.span()).or(raw.listen.as_ref().map(|l| l.span()));
            return Err(self.err(
                "dns.upstream",
                span,
                "at least one upstream resolver is needed while dns.listen is not empty",
            ));
        }
        if let Some((i, a)) = upstream.iter().enumerate().find(|(_, a)| listen.contains(a)) {
            let span = raw.upstream.as_ref().and_then(|u| u.get_ref().get(i)).map(|s| s.span());
            return Err(self.err(
                &format!("dns.upstream[{i}]"),
                span,
                format!("{a} is also in dns.listen: queries would loop"),
            ));
        }
        Ok(DnsConfig { listen, upstream })
    }

    fn tun(&self, raw: RawTun) -> Result<TunConfig, ConfigError> {
        let name = match raw.name {
            Some(n) => {
                ifname(n.get_ref()).map_err(|m| self.err("tun.name", Some(n.span()), m))?;
                n.into_inner()
            }
            None => DEFAULT_TUN_NAME.to_owned(),
        };
        let mtu = match raw.mtu {
            Some(m) if *m.get_ref() < 1280 => {
                return Err(self.err("tun.mtu", Some(m.span()), "must be at least 1280 (the IPv6 minimum)"))
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_TUN_MTU,
        };
        let routes = match raw.routes {
            Some(r) => r
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_route(s.get_ref()).map_err(|m| self.err(&format!("tun.routes[{i}]"), Some(s.span()), m))
                })
                .collect::<Result<_, _>>()?,
            None => DEFAULT_TUN_ROUTES.iter().map(|r| r.parse().expect("default is valid")).collect(),
        };
        Ok(TunConfig { name, mtu, routes })
    }
}

fn parse_route(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.parse().map_err(|_| format!("{s:?} is not a prefix (like 100.64.0.0/10)"))?;
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn minimal(extra: &str) -> String {
        format!(
            "fqdn = \"rpi.home.ntm.test\"\nprivate_key = \"{KEY}\"\ndc_public_key = \"{KEY}\"\n\
             dc = [\"198.18.40.2:7500\"]\n{extra}\n[dns]\nupstream = [\"198.18.0.53\"]\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ntmd.toml");
        let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.fqdn, "rpi.home.ntm.test");
        assert_eq!(c.dc, ["198.18.40.2:7500".parse().unwrap(), "[2001:db8:40::2]:7500".parse().unwrap()]);
        assert_eq!(c.port, 7600);
        assert_eq!(c.idle_timeout, Duration::from_secs(10));
        assert_eq!(c.dataplane, Dataplane::Userspace);
        assert_eq!(c.dns.listen, ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.dns.upstream, ["198.18.0.53:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.tun.name, "ntm0");
        assert_eq!(c.tun.mtu, 1420);
        assert_eq!(c.tun.routes.len(), 2);
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&minimal("")).unwrap();
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.idle_timeout, Duration::from_secs(180));
        assert_eq!(c.dataplane, Dataplane::Auto);
        assert_eq!(c.control_socket, Path::new("/run/ntm/ntmd.sock"));
        assert_eq!(c.dns.listen, ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.tun.name, "ntm0");
        assert_eq!(c.tun.mtu, 1420);
        let routes: Vec<IpNet> = DEFAULT_TUN_ROUTES.iter().map(|r| r.parse().unwrap()).collect();
        assert_eq!(c.tun.routes, routes);
        assert_eq!(c.private_key.to_base64(), KEY);
    }

    #[test]
    fn unknown_key_rejected_with_line() {
        let text = minimal("colour = \"blue\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("colour"), "{e}");

        let text = minimal("").replace("[dns]\n", "[dns]\nlisten_on = []\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("listen_on"), "{e}");
    }

    #[test]
    fn bad_key_length_rejected() {
        let text = minimal("").replace(&format!("dc_public_key = \"{KEY}\""), "dc_public_key = \"AAECAw==\"");
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(e, "test.toml:3: dc_public_key: a key is 32 bytes, this one is 4");

        let text = minimal("").replace(&format!("private_key = \"{KEY}\""), "private_key = \"not base64!\"");
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(e, "test.toml:2: private_key: not valid base64");
    }

    #[test]
    fn private_key_file_is_read_relative_to_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node.key"), format!("{KEY}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("node.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = minimal("").replace(&format!("private_key = \"{KEY}\""), "private_key_file = \"node.key\"");
        let c = Config::parse(&text, &dir.path().join("ntmd.toml")).unwrap();
        assert_eq!(c.private_key.to_base64(), KEY);

        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:2: private_key_file: cannot read node.key"), "{e}");

        let both = minimal("private_key_file = \"node.key\"");
        let e = parse(&both).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn validation_names_key_and_line() {
        let cases = [
            (minimal("").replace("rpi.home.ntm.test", "rpi"), "test.toml:1: fqdn:"),
            (minimal("").replace("198.18.40.2:7500", "dc.example:7500"), "test.toml:4: dc[0]:"),
            (minimal("idle_timeout_s = 0"), "test.toml:5: idle_timeout_s:"),
            (minimal("idle_timeout_s = 86401"), "test.toml:5: idle_timeout_s: must be at most 86400"),
            (minimal("[tun]\nmtu = 1000"), "test.toml:6: tun.mtu:"),
            (minimal("[tun]\nroutes = [\"100.64.0.1/10\"]"), "test.toml:6: tun.routes[0]:"),
            (minimal("[tun]\nname = \"a-very-long-interface\""), "test.toml:6: tun.name:"),
            (minimal("interfaces = []"), "test.toml:5: interfaces: must not be empty"),
            (minimal("exclude_interfaces = [\"wg*\", \"*\"]"), "test.toml:5: exclude_interfaces[1]: \"*\" matches"),
            (minimal("exclude_interfaces = [\"w*g\"]"), "test.toml:5: exclude_interfaces[0]: \"w*g\": `*`"),
            (minimal("interfaces = [\"eth/0\"]"), "test.toml:5: interfaces[0]:"),
            (minimal("").replace("upstream = [\"198.18.0.53\"]", "upstream = []"), "test.toml:7: dns.upstream:"),
            (
                minimal("")
                    .replace("upstream = [\"198.18.0.53\"]", "listen = [\"127.0.0.1\"]\nupstream = [\"127.0.0.1:53\"]"),
                "test.toml:8: dns.upstream[0]:",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
        let e = parse(&minimal("dataplane = \"ebpf\"")).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("ebpf"), "{e}");
    }

    #[test]
    fn interface_filter_includes_then_excludes() {
        let c = parse(&minimal("")).unwrap();
        assert_eq!(c.interfaces, InterfaceFilter::default());
        assert!(c.interfaces.allows("eth0") && c.interfaces.allows("wg0"));

        let c = parse(&minimal("exclude_interfaces = [\"wg*\", \"tailscale0\"]")).unwrap();
        let f = &c.interfaces;
        assert!(f.allows("eth0") && f.allows("wlan0") && f.allows("tailscale1"));
        assert!(!f.allows("wg0") && !f.allows("wgbench") && !f.allows("tailscale0"));

        let c = parse(&minimal("interfaces = [\"eth*\", \"wwan0\"]\nexclude_interfaces = [\"eth9\"]")).unwrap();
        let f = &c.interfaces;
        assert!(f.allows("eth0") && f.allows("eth1") && f.allows("wwan0"));
        assert!(!f.allows("eth9") && !f.allows("wlan0") && !f.allows("wwan01"));
    }

    #[test]
    fn empty_listen_disables_stub_without_upstream() {
        let text = minimal("").replace("upstream = [\"198.18.0.53\"]", "listen = []");
        let c = parse(&text).unwrap();
        assert!(c.dns.listen.is_empty() && c.dns.upstream.is_empty());
    }

    #[test]
    fn addresses_accept_bare_ips() {
        assert_eq!(socket_addr("198.18.0.53", 53).unwrap(), "198.18.0.53:53".parse().unwrap());
        assert_eq!(socket_addr("2001:db8::53", 53).unwrap(), "[2001:db8::53]:53".parse().unwrap());
        assert_eq!(socket_addr("[2001:db8::53]", 53).unwrap(), "[2001:db8::53]:53".parse().unwrap());
        assert!(socket_addr("1.2.3.4:0", 53).is_err());
    }
}
