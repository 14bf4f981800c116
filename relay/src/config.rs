//! The relay's TOML configuration (`--config FILE`). Unknown keys are errors.
//!
//! ```toml
//! listen = ["0.0.0.0:7700", "[::]:7700"]   # default
//! private_key_file = "relay.key"
//! metrics_listen = "127.0.0.1:9770"
//! max_sessions = 65536                      # default
//! session_idle_s = 60                       # default
//! workers = 2                               # default: one per CPU
//! session_mbit = 1000                       # default; 0: no cap
//!
//! [[dcs]]                                   # the DCs that may allocate sessions here
//! name = "dcr"
//! public_key = "..."
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use host::config::{Load, Source, Spanned};
use proto::keys::{PublicKey, SecretKey};
use serde::Deserialize;

pub use host::config::ConfigError;

/// The relay's port in the lab and by default.
pub const DEFAULT_PORT: u16 = 7700;

/// The validated configuration of a relay.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP sockets, one per address family at most (default: both wildcards on port 7700).
    pub listen: Vec<SocketAddr>,
    /// The relay's static X25519 key; its DCs know the public half.
    pub private_key: SecretKey,
    /// Where to serve Prometheus `/metrics` over HTTP; `None` serves no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Most sessions open at once; allocations beyond it are refused (default 65536).
    pub max_sessions: usize,
    /// A session that forwards nothing and gets no bind for this long is closed (default 60 s;
    /// nodes bind every 25 s at most while their tunnel lives).
    pub session_idle: Duration,
    /// Threads receiving and forwarding per socket (default: the number of CPUs).
    pub workers: usize,
    /// What one session may forward, in Mbit/s (default 1000; 0: no cap), so that one session
    /// cannot take the relay from the others.
    pub session_mbit: u64,
    /// The DCs allowed to allocate sessions here.
    pub dcs: Vec<DcConfig>,
}

/// A DC that may allocate sessions on this relay.
#[derive(Debug, Clone)]
pub struct DcConfig {
    /// A name for logs.
    pub name: String,
    /// The DC's static key: only a handshake made with it can allocate.
    pub public_key: PublicKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<Spanned<Vec<SocketAddr>>>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<PathBuf>>,
    metrics_listen: Option<SocketAddr>,
    max_sessions: Option<Spanned<usize>>,
    session_idle_s: Option<Spanned<u64>>,
    workers: Option<Spanned<usize>>,
    session_mbit: Option<u64>,
    #[serde(default)]
    dcs: Vec<RawDc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDc {
    name: Spanned<String>,
    public_key: Spanned<String>,
}

impl Load for Config {
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let src = Source::new(text, path);
        let raw: Raw = src.parse()?;
        let private_key = src.secret_key("private_key", raw.private_key.as_ref(), raw.private_key_file.as_ref())?;
        let listen = match raw.listen {
            None => vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)), SocketAddr::from(([0u16; 8], DEFAULT_PORT))],
            Some(l) => {
                let v = l.get_ref();
                if v.is_empty() {
                    return Err(src.bad("listen", &l, "needs at least one address"));
                }
                if v.iter().filter(|a| a.is_ipv4()).count() > 1 || v.iter().filter(|a| a.is_ipv6()).count() > 1 {
                    return Err(src.bad("listen", &l, "one address per family at most"));
                }
                l.into_inner()
            }
        };
        let positive = |key: &str, v: Option<Spanned<usize>>, default: usize| match v {
            None => Ok(default),
            Some(s) if *s.get_ref() == 0 => Err(src.bad(key, &s, "must be at least 1")),
            Some(s) => Ok(s.into_inner()),
        };
        let max_sessions = positive("max_sessions", raw.max_sessions, 65536)?;
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let workers = positive("workers", raw.workers, cpus)?;
        if workers > 64 {
            return Err(src.err("workers", None, "at most 64"));
        }
        let session_idle = match raw.session_idle_s {
            None => Duration::from_secs(60),
            Some(s) if !(5..=86400).contains(s.get_ref()) => {
                return Err(src.bad("session_idle_s", &s, "must be between 5 and 86400"))
            }
            Some(s) => Duration::from_secs(s.into_inner()),
        };
        let mut dcs: Vec<DcConfig> = Vec::new();
        for (i, d) in raw.dcs.into_iter().enumerate() {
            let public_key = src.public_key(&format!("dcs[{i}].public_key"), &d.public_key)?;
            if d.name.get_ref().is_empty() {
                return Err(src.bad(&format!("dcs[{i}].name"), &d.name, "must not be empty"));
            }
            if dcs.iter().any(|o| o.public_key == public_key) {
                return Err(src.bad(&format!("dcs[{i}].public_key"), &d.public_key, "duplicate key"));
            }
            dcs.push(DcConfig { name: d.name.into_inner(), public_key });
        }
        if dcs.is_empty() {
            return Err(src.err("dcs", None, "at least one [[dcs]] is needed: only DCs allocate sessions"));
        }
        Ok(Config {
            listen,
            private_key,
            metrics_listen: raw.metrics_listen,
            max_sessions,
            session_idle,
            workers,
            session_mbit: raw.session_mbit.unwrap_or(1000),
            dcs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "YEqtZQGdT9+Sm4AIFqDdtcBZpu1BmvgoCg5BBs0grmI=";
    const PUB: &str = "ttJ2wB1+LsKh69Mg0MEW4nlJB6k1Jy0ImEhsrZEw3Cs=";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("relay.toml"))
    }

    #[test]
    fn example_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.dcs.len(), 1);
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse(&format!("private_key = \"{KEY}\"\n[[dcs]]\nname = \"a\"\npublic_key = \"{PUB}\"\n")).unwrap();
        assert_eq!(c.listen[0].port(), 7700);
        assert_eq!(c.session_idle, Duration::from_secs(60));
        let e = parse(&format!("private_key = \"{KEY}\"\nbogus = 1\n")).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        let e = parse(&format!("private_key = \"{KEY}\"\n")).unwrap_err().to_string();
        assert!(e.contains("dcs"), "{e}");
        let e = parse(&format!(
            "private_key = \"{KEY}\"\nsession_idle_s = 1\n[[dcs]]\nname = \"a\"\npublic_key = \"{PUB}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("relay.toml:2") && e.contains("session_idle_s"), "{e}");
    }
}
