//! The DC's TOML configuration (`--config FILE`). Unknown keys are errors.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use host::config::{Load, Source, Spanned};
use ipnet::{Ipv4Net, Ipv6Net};
use proto::keys::{PublicKey, SecretKey};
use proto::registry::Pools;
use serde::Deserialize;

/// Default signaling port of a DC.
pub const DEFAULT_PORT: u16 = 7500;
const DEFAULT_KEEPALIVE_S: u64 = 15;

pub use host::config::ConfigError;

/// The validated configuration of a DC. Names are lowercase, without a trailing dot.
#[derive(Debug, Clone)]
pub struct Config {
    /// The zone this DC is authoritative for, e.g. "home.ntm.test".
    pub zone: String,
    /// The DC's own name; its A/AAAA records are `addresses`.
    pub name: String,
    /// The DC's static X25519 key (`private_key` or `private_key_file`); nodes and peer DCs
    /// know its public half.
    pub private_key: SecretKey,
    /// Signaling sockets (UDP).
    pub listen: Vec<SocketAddr>,
    /// DNS sockets (UDP and TCP).
    pub dns_listen: Vec<SocketAddr>,
    /// DNS responses per second over UDP to one client prefix (/24, /56), with a burst of as
    /// many (response rate limiting); 0 turns the limit off. Default 200.
    pub dns_rrl_responses_per_s: u32,
    /// Every `dns_rrl_slip`-th response over the rate limit goes out truncated (the client then
    /// asks over TCP) and the others are dropped; 0 drops them all, 1 truncates them all, at most
    /// 100. Default 2.
    pub dns_rrl_slip: u32,
    /// The DC's public addresses (default: the specific IPs of `listen`).
    pub addresses: Vec<IpAddr>,
    /// The SQLite file holding registrations and the VIPs allocated to each node.
    pub database: PathBuf,
    /// Upstream resolver used to find other zones' DCs.
    pub resolver: SocketAddr,
    /// How often nodes re-register, in seconds (at least 1; default 15). Sent to every node in
    /// its `Registered` reply.
    pub keepalive_s: u64,
    /// Where to serve Prometheus `/metrics` over HTTP; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// The prefixes VIPs are allocated from.
    pub pools: PoolsConfig,
    /// The nodes allowed to register (`[[nodes]]`), with unique FQDNs inside `zone`.
    pub nodes: Vec<NodeConfig>,
    /// The proxy servers some nodes are published through (`[[nps]]`), with unique names.
    pub nps: Vec<NpsConfig>,
    /// Other zones' DCs that may ask this one for directions (`[[peers]]`).
    pub peers: Vec<PeerConfig>,
    /// The relays this DC opens sessions on (`[[relays]]`), for nodes that cannot reach each
    /// other directly.
    pub relays: Vec<RelayConfig>,
    /// Second addresses of the DC, one per family at most, that probes of nodes' NATs leave
    /// from (on a free port). A NAT that lets in what comes from an address its node never sent
    /// to is 1:1, and the node is reachable at its public address. Without one for a family,
    /// probes leave from the signaling address on another port, which also tells a NAT that
    /// filters by port from a 1:1 NAT, but takes a NAT that filters by address only for 1:1.
    pub probe_from: Vec<IpAddr>,
}

/// A relay server this DC may allocate sessions on.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Its addresses with their port (default 7700), at most one per family.
    pub addresses: Vec<SocketAddr>,
    /// Its static X25519 key.
    pub public_key: PublicKey,
}

/// The VIP pools (`[pools]`): at least one is set; neither has host bits set and each has room
/// for at least one VIP.
#[derive(Debug, Clone)]
pub struct PoolsConfig {
    /// The IPv4 prefix VIPs are taken from, e.g. `100.64.40.0/24`.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 prefix VIPs are taken from, e.g. `fd4e:544d:40::/64`.
    pub ipv6: Option<Ipv6Net>,
}

/// An enrolled node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name, strictly inside the DC's zone and not one the DC itself uses.
    pub fqdn: String,
    /// The node's static X25519 key: only a handshake made with it can register `fqdn`.
    pub public_key: PublicKey,
    /// The `[[nps]]` this node is served through: its name resolves to that NPS's addresses.
    pub nps: Option<String>,
}

/// An NTMobile Proxy Server serving some of this zone's nodes.
#[derive(Debug, Clone)]
pub struct NpsConfig {
    /// The name nodes refer to it by (`nodes[].nps`); not a DNS name.
    pub name: String,
    /// The NPS's public addresses, published as the A/AAAA records of the nodes it serves.
    pub addresses: Vec<IpAddr>,
}

/// Another zone's DC that this DC trusts.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The zone that DC is authoritative for; not this DC's own zone.
    pub zone: String,
    /// That DC's static X25519 key, checked in the handshake of every exchange with it.
    pub public_key: PublicKey,
}

/// The file as written; spans locate validation errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    zone: Spanned<String>,
    name: Spanned<String>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<PathBuf>>,
    listen: Spanned<Vec<SocketAddr>>,
    dns_listen: Vec<SocketAddr>,
    dns_rrl_responses_per_s: Option<u32>,
    dns_rrl_slip: Option<Spanned<u32>>,
    addresses: Option<Spanned<Vec<IpAddr>>>,
    database: PathBuf,
    resolver: Spanned<String>,
    keepalive_s: Option<Spanned<u64>>,
    metrics_listen: Option<SocketAddr>,
    pools: Spanned<RawPools>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    nps: Vec<RawNps>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    relays: Vec<RawRelay>,
    probe_from: Option<Spanned<Vec<IpAddr>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    name: Spanned<String>,
    addresses: Spanned<Vec<String>>,
    public_key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPools {
    ipv4: Option<Spanned<Ipv4Net>>,
    ipv6: Option<Spanned<Ipv6Net>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    fqdn: Spanned<String>,
    public_key: Spanned<String>,
    nps: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNps {
    name: Spanned<String>,
    addresses: Spanned<Vec<IpAddr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    zone: Spanned<String>,
    public_key: Spanned<String>,
}

impl Load for Config {
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let src = Source::new(text, path);
        let raw: RawConfig = src.parse()?;
        let invalid = |span: Option<Range<usize>>, key: &str, msg: String| src.err(key, span, msg);

        let zone = src.fqdn("zone", &raw.zone)?;
        let name = src.fqdn("name", &raw.name)?;
        let private_key = src.secret_key("private_key", raw.private_key.as_ref(), raw.private_key_file.as_ref())?;
        let resolver = src.addr("resolver", &raw.resolver, 53)?;

        let listen_span = raw.listen.span();
        let listen = raw.listen.into_inner();
        if listen.is_empty() {
            return Err(invalid(Some(listen_span), "listen", "needs at least one address".into()));
        }
        let addresses = match raw.addresses {
            Some(a) => {
                let span = a.span();
                let addresses = a.into_inner();
                if addresses.is_empty() {
                    return Err(invalid(Some(span), "addresses", "needs at least one address".into()));
                }
                if let Some(ip) = addresses.iter().find(|ip| ip.is_unspecified()) {
                    return Err(invalid(Some(span), "addresses", format!("{ip} is not a usable address")));
                }
                addresses
            }
            None => {
                let mut addresses = Vec::new();
                for ip in listen.iter().map(|sa| sa.ip()).filter(|ip| !ip.is_unspecified()) {
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
                if addresses.is_empty() {
                    let msg = "missing, and every listen address is a wildcard".into();
                    return Err(invalid(Some(listen_span), "addresses", msg));
                }
                addresses
            }
        };
        let keepalive_s = match raw.keepalive_s {
            None => DEFAULT_KEEPALIVE_S,
            Some(k) if *k.get_ref() == 0 => {
                return Err(invalid(Some(k.span()), "keepalive_s", "must be at least 1".into()))
            }
            Some(k) => k.into_inner(),
        };

        let dns_rrl_slip = match raw.dns_rrl_slip {
            None => crate::rrl::DEFAULT_SLIP,
            Some(s) if *s.get_ref() > crate::rrl::MAX_SLIP => {
                let msg = format!("must be at most {}", crate::rrl::MAX_SLIP);
                return Err(invalid(Some(s.span()), "dns_rrl_slip", msg));
            }
            Some(s) => s.into_inner(),
        };

        let pools_span = raw.pools.span();
        let pools = raw.pools.into_inner();
        check_pools(&pools).map_err(|(span, k, m)| invalid(Some(span.unwrap_or(pools_span)), k, m))?;
        let pools =
            PoolsConfig { ipv4: pools.ipv4.map(Spanned::into_inner), ipv6: pools.ipv6.map(Spanned::into_inner) };

        let mut nps = Vec::with_capacity(raw.nps.len());
        for (i, n) in raw.nps.into_iter().enumerate() {
            let key = |field: &str| format!("nps[{i}].{field}");
            if n.name.get_ref().is_empty() {
                return Err(invalid(Some(n.name.span()), &key("name"), "must not be empty".into()));
            }
            if nps.iter().any(|o: &NpsConfig| o.name == *n.name.get_ref()) {
                let msg = format!("duplicate NPS {:?}", n.name.get_ref());
                return Err(invalid(Some(n.name.span()), &key("name"), msg));
            }
            if n.addresses.get_ref().is_empty() {
                let msg = "needs at least one address".into();
                return Err(invalid(Some(n.addresses.span()), &key("addresses"), msg));
            }
            nps.push(NpsConfig { name: n.name.into_inner(), addresses: n.addresses.into_inner() });
        }

        let mut nodes: Vec<NodeConfig> = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.into_iter().enumerate() {
            let key = |field: &str| format!("nodes[{i}].{field}");
            let err = |msg: String| invalid(Some(n.fqdn.span()), &key("fqdn"), msg);
            let fqdn = src.fqdn(&key("fqdn"), &n.fqdn)?;
            let public_key = src.public_key(&key("public_key"), &n.public_key)?;
            if !is_below(&fqdn, &zone) {
                return Err(err(format!("{fqdn:?} is not inside zone {zone:?}")));
            }
            if fqdn == name || fqdn == format!("_ntm._udp.{zone}") {
                return Err(err(format!("{fqdn:?} is a name the DC itself uses")));
            }
            if nodes.iter().any(|o| o.fqdn == fqdn) {
                return Err(err(format!("duplicate node {fqdn:?}")));
            }
            if let Some(o) = nodes.iter().find(|o| o.public_key == public_key) {
                let msg = format!("the same key as node {:?}: each node has its own", o.fqdn);
                return Err(src.bad(&key("public_key"), &n.public_key, msg));
            }
            if public_key == private_key.public() {
                return Err(src.bad(&key("public_key"), &n.public_key, "is the DC's own key"));
            }
            if let Some(r) = &n.nps {
                if !nps.iter().any(|o| o.name == *r.get_ref()) {
                    let msg = format!("no [[nps]] is named {:?}", r.get_ref());
                    return Err(invalid(Some(r.span()), &key("nps"), msg));
                }
            }
            nodes.push(NodeConfig { fqdn, public_key, nps: n.nps.map(Spanned::into_inner) });
        }

        let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peers.len());
        for (i, p) in raw.peers.into_iter().enumerate() {
            let err = |msg: String| invalid(Some(p.zone.span()), &format!("peers[{i}].zone"), msg);
            let pzone = src.fqdn(&format!("peers[{i}].zone"), &p.zone)?;
            let public_key = src.public_key(&format!("peers[{i}].public_key"), &p.public_key)?;
            if pzone == zone {
                return Err(err("is this DC's own zone".into()));
            }
            if peers.iter().any(|o| o.zone == pzone) {
                return Err(err(format!("duplicate peer zone {pzone:?}")));
            }
            let key_err = |msg: &str| src.bad(&format!("peers[{i}].public_key"), &p.public_key, msg);
            if public_key == private_key.public() {
                return Err(key_err("is this DC's own key"));
            }
            if peers.iter().any(|o| o.public_key == public_key) || nodes.iter().any(|o| o.public_key == public_key) {
                return Err(key_err("is already another peer's or a node's key"));
            }
            peers.push(PeerConfig { zone: pzone, public_key });
        }

        let mut relays: Vec<RelayConfig> = Vec::with_capacity(raw.relays.len());
        for (i, r) in raw.relays.into_iter().enumerate() {
            let key = |field: &str| format!("relays[{i}].{field}");
            if r.name.get_ref().is_empty() || relays.iter().any(|o| o.name == *r.name.get_ref()) {
                return Err(src.bad(&key("name"), &r.name, "must be non-empty and unique"));
            }
            let public_key = src.public_key(&key("public_key"), &r.public_key)?;
            let mut addresses = Vec::new();
            for a in r.addresses.get_ref() {
                let sa = host::config::socket_addr(a, 7700).map_err(|e| src.bad(&key("addresses"), &r.addresses, e))?;
                if sa.ip().is_unspecified() || addresses.iter().any(|o: &SocketAddr| o.is_ipv4() == sa.is_ipv4()) {
                    return Err(src.bad(
                        &key("addresses"),
                        &r.addresses,
                        format!("{a}: one usable address per family"),
                    ));
                }
                addresses.push(sa);
            }
            if addresses.is_empty() {
                return Err(src.bad(&key("addresses"), &r.addresses, "needs at least one address"));
            }
            relays.push(RelayConfig { name: r.name.into_inner(), addresses, public_key });
        }

        let probe_from = match raw.probe_from {
            None => Vec::new(),
            Some(p) => {
                let v = p.get_ref();
                if v.iter().any(|ip| ip.is_unspecified())
                    || v.iter().filter(|ip| ip.is_ipv4()).count() > 1
                    || v.iter().filter(|ip| ip.is_ipv6()).count() > 1
                {
                    return Err(src.bad("probe_from", &p, "one usable address per family at most"));
                }
                p.into_inner()
            }
        };

        Ok(Config {
            zone,
            name,
            private_key,
            listen,
            dns_listen: raw.dns_listen,
            dns_rrl_responses_per_s: raw.dns_rrl_responses_per_s.unwrap_or(crate::rrl::DEFAULT_RESPONSES_PER_S),
            dns_rrl_slip,
            addresses,
            database: raw.database,
            resolver,
            keepalive_s,
            metrics_listen: raw.metrics_listen,
            pools,
            nodes,
            nps,
            peers,
            relays,
            probe_from,
        })
    }
}

impl Config {
    /// The VIP pools, as the registry takes them.
    pub fn pools(&self) -> Pools {
        Pools { v4: self.pools.ipv4, v6: self.pools.ipv6 }
    }

    /// `keepalive_s` as a duration: the re-registration interval given to nodes.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_s)
    }

    /// The signaling port published in the zone's SRV record (the first `listen` port).
    pub fn signaling_port(&self) -> u16 {
        self.listen.first().map_or(DEFAULT_PORT, |sa| sa.port())
    }

    /// The enrolled node `fqdn` (case-insensitive, trailing dot ignored).
    pub fn node(&self, fqdn: &str) -> Option<&NodeConfig> {
        let fqdn = fqdn.strip_suffix('.').unwrap_or(fqdn);
        self.nodes.iter().find(|n| n.fqdn.eq_ignore_ascii_case(fqdn))
    }

    /// The `[[nps]]` entry called `name` (exact match), as named by `nodes[].nps`.
    pub fn nps_named(&self, name: &str) -> Option<&NpsConfig> {
        self.nps.iter().find(|n| n.name == name)
    }

    /// The trusted peer DC of `zone` (case-insensitive, trailing dot ignored).
    pub fn peer(&self, zone: &str) -> Option<&PeerConfig> {
        let zone = zone.strip_suffix('.').unwrap_or(zone);
        self.peers.iter().find(|p| p.zone.eq_ignore_ascii_case(zone))
    }
}

/// True if `name` is strictly below `zone` (both normalized).
fn is_below(name: &str, zone: &str) -> bool {
    name.len() > zone.len() + 1 && name.ends_with(zone) && name.as_bytes()[name.len() - zone.len() - 1] == b'.'
}

type PoolProblem = (Option<Range<usize>>, &'static str, String);

fn check_pools(p: &RawPools) -> Result<(), PoolProblem> {
    if p.ipv4.is_none() && p.ipv6.is_none() {
        return Err((None, "pools", "set ipv4, ipv6 or both".into()));
    }
    if let Some(net) = &p.ipv4 {
        let (span, net) = (net.span(), *net.get_ref());
        if net != net.trunc() {
            let msg = format!("{net} has host bits set (did you mean {}?)", net.trunc());
            return Err((Some(span), "pools.ipv4", msg));
        }
        if (Pools { v4: Some(net), v6: None }).v4_candidate(0).is_none() {
            return Err((Some(span), "pools.ipv4", format!("{net} has no room for any VIP")));
        }
    }
    if let Some(net) = &p.ipv6 {
        let (span, net) = (net.span(), *net.get_ref());
        if net != net.trunc() {
            let msg = format!("{net} has host bits set (did you mean {}?)", net.trunc());
            return Err((Some(span), "pools.ipv6", msg));
        }
        if (Pools { v4: None, v6: Some(net) }).v6_candidate(0).is_none() {
            return Err((Some(span), "pools.ipv6", format!("{net} has no room for any VIP")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dc.toml")
    }

    fn minimal() -> String {
        format!(
            "zone = \"home.ntm.test\"\n\
             name = \"dc.home.ntm.test\"\n\
             private_key = \"{KEY}\"\n\
             listen = [\"198.18.40.2:7500\", \"0.0.0.0:7501\"]\n\
             dns_listen = []\n\
             database = \"dc.sqlite\"\n\
             resolver = \"198.18.0.53\"\n\
             [pools]\n\
             ipv4 = \"100.64.40.0/24\"\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ntm/dc.toml"))
    }

    #[test]
    fn example_file_parses() {
        let cfg = Config::load(example_path()).unwrap();
        assert_eq!(cfg.zone, "home.ntm.test");
        assert_eq!(cfg.name, "dc.home.ntm.test");
        assert_eq!(cfg.signaling_port(), 7500);
        assert_eq!(cfg.keepalive(), Duration::from_secs(5));
        assert_eq!(cfg.addresses, ["198.18.40.2".parse::<IpAddr>().unwrap(), "2001:db8:40::2".parse().unwrap()]);
        assert_eq!(cfg.dns_listen.len(), 2);
        assert!(cfg.pools().v4_candidate(0).is_some() && cfg.pools().v6_candidate(0).is_some());
        let rpi = cfg.node("RPI.home.ntm.test.").unwrap();
        assert_eq!(rpi.nps.as_deref(), Some("nps"));
        assert_eq!(cfg.nps_named("nps").unwrap().addresses.len(), 2);
        assert!(cfg.node("tv.home.ntm.test").unwrap().nps.is_none());
        assert!(cfg.peer("proxy.ntm.test").is_some());
        assert!(cfg.metrics_listen.is_some());
        assert_eq!((cfg.dns_rrl_responses_per_s, cfg.dns_rrl_slip), (200, 2));
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(&minimal()).unwrap();
        assert_eq!(cfg.keepalive_s, 15);
        // wildcard listen addresses are not published
        assert_eq!(cfg.addresses, ["198.18.40.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(cfg.resolver, "198.18.0.53:53".parse().unwrap());
        assert!(cfg.nodes.is_empty() && cfg.peers.is_empty() && cfg.metrics_listen.is_none());
        assert_eq!(cfg.private_key.bytes()[1], 1);
        assert_eq!((cfg.dns_rrl_responses_per_s, cfg.dns_rrl_slip), (200, 2));
    }

    #[test]
    fn dns_rrl_keys() {
        let with = |keys: &str| parse(&minimal().replace("database =", &format!("{keys}\ndatabase =")));
        let cfg = with("dns_rrl_responses_per_s = 50\ndns_rrl_slip = 0").unwrap();
        assert_eq!((cfg.dns_rrl_responses_per_s, cfg.dns_rrl_slip), (50, 0));
        let cfg = with("dns_rrl_responses_per_s = 0\ndns_rrl_slip = 100").unwrap();
        assert_eq!((cfg.dns_rrl_responses_per_s, cfg.dns_rrl_slip), (0, 100));

        let err = with("dns_rrl_slip = 101").unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { key, line: Some(6), .. } if key == "dns_rrl_slip"), "{err}");
        assert_eq!(err.to_string(), "/etc/ntm/dc.toml:6: dns_rrl_slip: must be at most 100");
        for bad in ["dns_rrl_responses_per_s = -1", "dns_rrl_responses_per_s = \"many\"", "dns_rrl_slip = 1.5"] {
            let err = with(bad).unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains("line 6") && err.contains(key), "{bad}: {err}");
        }
        let err = with("dns_rrl_rate = 5").unwrap_err().to_string();
        assert!(err.contains("line 6") && err.contains("dns_rrl_rate"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = minimal().replace("database =", "databse =");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("/etc/ntm/dc.toml: "), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("databse"), "{err}");

        let text = format!("{}[[nodes]]\nfqdn = \"a.home.ntm.test\"\npublic_key = \"{KEY}\"\ncolour = 1\n", minimal());
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 13") && err.contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let text = minimal().replace("ipv4 = \"100.64.40.0/24\"", "ipv4 = \"100.64.40.0/33\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 9"), "{err}");

        let text = minimal().replace("[pools]", "keepalive_s = \"five\"\n[pools]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 8") && err.contains("keepalive_s"), "{err}");

        let text = minimal().replace(KEY, "AAAA");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(":3: private_key:") && err.contains("32 bytes"), "{err}");

        let text = minimal().replace("198.18.40.2:7500", "198.18.40.2");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn validation_names_the_key_and_line() {
        let check = |text: String, key: &str, line: Option<usize>| {
            let err = parse(&text).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, line: l, .. } if k == key && *l == line),
                "{key} {line:?}: {err}"
            );
        };
        let listen = "listen = [\"198.18.40.2:7500\", \"0.0.0.0:7501\"]";
        let ipv4 = "ipv4 = \"100.64.40.0/24\"";
        check(minimal().replace("zone = \"home.ntm.test\"", "zone = \"\""), "zone", Some(1));
        let pk = SecretKey::generate().public().to_base64();
        let two = format!(
            "{}[[nodes]]\nfqdn = \"a.home.ntm.test\"\npublic_key = \"{pk}\"\n[[nodes]]\nfqdn = \"b.home.ntm.test\"\npublic_key = \"{pk}\"\n",
            minimal()
        );
        check(two, "nodes[1].public_key", Some(15));
        let zeros =
            format!("{}[[nodes]]\nfqdn = \"a.home.ntm.test\"\npublic_key = \"{}\"\n", minimal(), "A".repeat(43) + "=");
        check(zeros, "nodes[0].public_key", Some(12));
        check(minimal().replace("\"dc.home.ntm.test\"", "\"a b\""), "name", Some(2));
        check(minimal().replace(listen, "listen = []"), "listen", Some(4));
        check(minimal().replace(listen, "listen = [\"0.0.0.0:7500\"]"), "addresses", Some(4));
        check(minimal().replace("dns_listen", "addresses = [\"::\"]\ndns_listen"), "addresses", Some(5));
        check(minimal().replace(ipv4, "ipv4 = \"100.64.40.1/24\""), "pools.ipv4", Some(9));
        check(minimal().replace(ipv4, "ipv4 = \"100.64.40.0/31\""), "pools.ipv4", Some(9));
        check(minimal().replace(ipv4, "ipv6 = \"fd00::1/64\""), "pools.ipv6", Some(9));
        check(minimal().replace(ipv4, ""), "pools", Some(8));
        check(minimal().replace(&format!("private_key = \"{KEY}\""), ""), "private_key", None);
        check(minimal().replace("resolver", "keepalive_s = 0\nresolver"), "keepalive_s", Some(7));
        let node =
            |fqdn: &str, nps: &str| format!("{}[[nodes]]\nfqdn = \"{fqdn}\"\npublic_key = \"{KEY}\"\n{nps}", minimal());
        check(node("rpi.other.test", ""), "nodes[0].fqdn", Some(11));
        check(node("xhome.ntm.test", ""), "nodes[0].fqdn", Some(11));
        check(node("home.ntm.test", ""), "nodes[0].fqdn", Some(11));
        check(node("dc.home.ntm.test", ""), "nodes[0].fqdn", Some(11));
        check(node("rpi.home.ntm.test", "nps = \"nope\"\n"), "nodes[0].nps", Some(13));
        let dup = format!(
            "{}[[nodes]]\nfqdn = \"RPI.home.ntm.test\"\npublic_key = \"{KEY}\"\n",
            node("rpi.home.ntm.test", "")
        );
        check(dup, "nodes[1].fqdn", Some(14));
        let own = format!("{}[[peers]]\nzone = \"home.ntm.test.\"\npublic_key = \"{KEY}\"\n", minimal());
        check(own, "peers[0].zone", Some(11));
        check(format!("{}[[nps]]\nname = \"n\"\naddresses = []\n", minimal()), "nps[0].addresses", Some(12));
        let dup = format!("{0}[[nps]]\nname = \"n\"\naddresses = [\"192.0.2.1\"]\n[[nps]]\nname = \"n\"\naddresses = [\"192.0.2.2\"]\n", minimal());
        check(dup, "nps[1].name", Some(14));

        let err = parse(&node("rpi.other.test", "")).unwrap_err().to_string();
        assert_eq!(err, "/etc/ntm/dc.toml:11: nodes[0].fqdn: \"rpi.other.test\" is not inside zone \"home.ntm.test\"");
    }

    #[test]
    fn private_key_file_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dc.key"), format!("{KEY}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("dc.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = minimal().replace(&format!("private_key = \"{KEY}\""), "private_key_file = \"dc.key\"");
        let cfg = Config::parse(&text, &dir.path().join("dc.toml")).unwrap();
        assert_eq!(cfg.private_key.bytes()[31], 31);

        let err = Config::parse(&text, Path::new("/nonexistent/dc.toml")).unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "private_key_file"), "{err}");
        let both = format!("private_key_file = \"dc.key\"\n{}", minimal());
        let err = Config::parse(&both, &dir.path().join("dc.toml")).unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { key, line: Some(4), .. } if key == "private_key"), "{err}");
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = Config::load("/nonexistent/dc.toml").unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/dc.toml: "), "{err}");
    }
}
