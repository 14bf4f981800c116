//! The configuration kit: every daemon reads one TOML file, rejects unknown keys (serde's
//! `deny_unknown_fields` on its raw structs) and reports a bad value with the file, the line and
//! the key, e.g. `/etc/ntm/dc.toml:12: nodes[3].fqdn: "cam" is not a fully qualified name`.
//!
//! A daemon deserializes its file into raw structs whose fields are [`Spanned`], then validates
//! them through a [`Source`], which knows the text and turns a span into a line.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use proto::keys::{PublicKey, SecretKey};
use serde::de::DeserializeOwned;

pub use toml::Spanned;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Not TOML, or not the expected keys: the TOML crate's message names the line, the column
    /// and the key.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A value that parsed but cannot be used.
    #[error("{}{}: {key}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value, when it has one (a missing key has none).
        line: Option<usize>,
        /// The key, as a path (`nodes[3].fqdn`).
        key: String,
        /// What is wrong, and if possible what would be right.
        message: String,
    },
}

/// A configuration that can be parsed from its TOML text.
pub trait Load: Sized {
    /// Parses and validates `text`; `path` names the file in errors and anchors relative
    /// paths found in it.
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError>;

    /// Reads and validates the file at `path`.
    fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        Self::parse(&read(path)?, path)
    }
}

/// Reads the file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// A configuration text and the file it came from: parses it and locates errors in it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl<'a> Source<'a> {
    /// `path` names the file in errors and anchors relative paths found in it.
    pub fn new(text: &'a str, path: &'a Path) -> Self {
        Source { text, path }
    }

    /// The file's name.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// Deserializes the whole text.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| ConfigError::Parse { path: self.path.to_owned(), source: Box::new(e) })
    }

    /// An error about `key`, located at `span` (a byte range of the text) when there is one.
    pub fn err(&self, key: &str, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// An error about the value `v` of `key`.
    pub fn bad<T>(&self, key: &str, v: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.err(key, Some(v.span()), message)
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        // The offset comes from the parser, but never trust it to fall on a character boundary.
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// A path from the file, relative to the file's directory unless absolute.
    pub fn relative(&self, p: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new("")).join(p)
    }

    /// A DNS name of at least two labels, lowercased, without the trailing dot.
    pub fn fqdn(&self, key: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
        fqdn(v.get_ref()).map_err(|m| self.bad(key, v, m))
    }

    /// A socket address (see [`socket_addr`]).
    pub fn addr(&self, key: &str, v: &Spanned<String>, default_port: u16) -> Result<SocketAddr, ConfigError> {
        socket_addr(v.get_ref(), default_port).map_err(|m| self.bad(key, v, m))
    }

    /// A list of socket addresses; each error names its index (`dns.upstream[1]`).
    pub fn addrs(
        &self,
        key: &str,
        list: &[Spanned<String>],
        default_port: u16,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter().enumerate().map(|(i, s)| self.addr(&format!("{key}[{i}]"), s, default_port)).collect()
    }

    /// A base64 X25519 public key.
    pub fn public_key(&self, key: &str, v: &Spanned<String>) -> Result<PublicKey, ConfigError> {
        PublicKey::from_base64(v.get_ref().trim()).map_err(|e| self.bad(key, v, e.to_string()))
    }

    /// The daemon's private key: given inline as `<key>` (base64), or as `<key>_file`, a file
    /// holding it (relative to the configuration file). The file must not be accessible by
    /// others (mode 0600 or 0640): a key anyone on the host can read is refused, as ssh does.
    pub fn secret_key(
        &self,
        key: &str,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<PathBuf>>,
    ) -> Result<SecretKey, ConfigError> {
        let file_key = format!("{key}_file");
        match (inline, file) {
            (Some(k), None) => SecretKey::from_base64(k.get_ref().trim()).map_err(|e| self.bad(key, k, e.to_string())),
            (None, Some(f)) => {
                let path = self.relative(f.get_ref());
                let text = read_private(&path).map_err(|m| self.bad(&file_key, f, m))?;
                SecretKey::from_base64(text.trim())
                    .map_err(|e| self.bad(&file_key, f, format!("{}: {e}", path.display())))
            }
            (Some(k), Some(_)) => Err(self.bad(key, k, format!("give either {key} or {file_key}, not both"))),
            (None, None) => Err(self.err(
                key,
                None,
                format!("missing: give {key} (base64) or {file_key} (generate one with `ntmctl genkey`)"),
            )),
        }
    }
}

/// Reads a file holding a secret, refusing one that others can read or write.
pub fn read_private(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is accessible by every user of this host (mode {mode:04o}); `chmod 600 {}` it",
            path.display(),
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Lowercases and checks a DNS name of at least two labels; strips a trailing dot.
pub fn fqdn(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("{name:?} is not a fully qualified name (like rpi.home.ntm.test)"));
    }
    for label in labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{name:?}: label {label:?} must be 1 to 63 letters, digits or inner hyphens"));
        }
    }
    Ok(name)
}

/// `ip:port`, `[ip6]:port`, or a bare address (`ip`, `ip6`, `[ip6]`) that gets `default_port`.
/// Port 0 is refused.
pub fn socket_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let addr = socket_addr_any_port(s, default_port)?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 is not allowed here"));
    }
    Ok(addr)
}

/// As [`socket_addr`], port 0 allowed (a listener on any free port, for tests).
pub fn socket_addr_any_port(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, default_port)))
        .or_else(|_| {
            let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).ok_or(())?;
            inner.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, default_port)).map_err(|_| ())
        })
        .map_err(|_| format!("{s:?} is not an address (like 198.18.0.53:53 or [2001:db8::53]:53)"))
}

/// A network interface name as the kernel accepts it.
pub fn ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?} must be 1 to 15 bytes long"));
    }
    if name == "." || name == ".." || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        name: Spanned<String>,
        private_key: Option<Spanned<String>>,
        private_key_file: Option<Spanned<PathBuf>>,
        #[serde(default)]
        servers: Vec<Spanned<String>>,
    }

    fn load(text: &str, path: &Path) -> Result<(String, SecretKey, Vec<SocketAddr>), ConfigError> {
        let src = Source::new(text, path);
        let raw: Raw = src.parse()?;
        let name = src.fqdn("name", &raw.name)?;
        let key = src.secret_key("private_key", raw.private_key.as_ref(), raw.private_key_file.as_ref())?;
        let servers = src.addrs("servers", &raw.servers, 53)?;
        Ok((name, key, servers))
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("/etc/ntm/x.toml");
        let text =
            format!("name = \"rpi.home.test.\"\nprivate_key = \"{KEY}\"\nservers = [\"1.2.3.4\",\n  \"nope\"]\n");
        let e = load(&text, p).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/ntm/x.toml:4: servers[1]: \"nope\" is not an address (like 198.18.0.53:53 or [2001:db8::53]:53)"
        );
        let e = load(&format!("name = \"rpi\"\nprivate_key = \"{KEY}\"\n"), p).unwrap_err().to_string();
        assert!(e.starts_with("/etc/ntm/x.toml:1: name: \"rpi\" is not a fully qualified name"), "{e}");
        let e = load("name = \"a.b\"\n", p).unwrap_err().to_string();
        assert!(e.starts_with("/etc/ntm/x.toml: private_key: missing"), "{e}");
        let e = load("name = \"a.b\"\nbogus = 1\n", p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        let (name, _, servers) = load(&format!("name = \"RPi.Home.Test.\"\nprivate_key = \"{KEY}\"\nservers = [\"[2001:db8::53]\", \"198.18.0.53:5353\"]\n"), p).unwrap();
        assert_eq!(name, "rpi.home.test");
        assert_eq!(servers, vec!["[2001:db8::53]:53".parse().unwrap(), "198.18.0.53:5353".parse().unwrap()]);
    }

    #[test]
    fn key_files_are_relative_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("d.toml");
        let keyfile = dir.path().join("d.key");
        std::fs::write(&keyfile, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "name = \"a.b\"\nprivate_key_file = \"d.key\"\n";
        assert!(load(text, &cfg).is_ok());
        std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(text, &cfg).unwrap_err().to_string();
        assert!(e.contains(":2: private_key_file: ") && e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        let both = format!("name = \"a.b\"\nprivate_key = \"{KEY}\"\nprivate_key_file = \"d.key\"\n");
        assert!(load(&both, &cfg).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn addresses() {
        assert_eq!(socket_addr("10.0.0.1", 53).unwrap(), "10.0.0.1:53".parse().unwrap());
        assert_eq!(socket_addr("[::1]", 7).unwrap(), "[::1]:7".parse().unwrap());
        assert!(socket_addr("10.0.0.1:0", 53).is_err());
        assert_eq!(socket_addr_any_port("127.0.0.1:0", 53).unwrap().port(), 0);
        assert!(fqdn("-a.b").is_err());
        assert!(ifname("wg0").is_ok() && ifname("a/b").is_err());
    }
}
