//! TLS on `listen_https`: the certificates of the sites whose TLS ends here (`tls = "terminate"`),
//! chosen by SNI, and the SNI peek that lets a `tls = "passthrough"` connection go to the node
//! untouched.
//!
//! The ClientHello is parsed by rustls (`rustls::server::Acceptor`) from a copy of the bytes read;
//! the bytes themselves are kept, then replayed either to the node (passthrough) or to the TLS
//! server (terminate) through [`Rewind`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::config::{Config, TlsMode};

/// The most ClientHello bytes read before giving up.
const MAX_HELLO: usize = 64 * 1024;

/// A terminated site's certificate that cannot be loaded, or a client's first bytes that are
/// not a usable ClientHello.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `<cert_dir>/<fqdn>.crt` is missing, unreadable or holds no PEM certificate.
    #[error("{fqdn}: cannot read certificate {path}: {error}")]
    Cert {
        /// The site.
        fqdn: String,
        /// The certificate file.
        path: PathBuf,
        /// What was wrong with it.
        error: String,
    },
    /// `<cert_dir>/<fqdn>.key` is missing, unreadable, or holds no private key rustls can use.
    #[error("{fqdn}: cannot read private key {path}: {error}")]
    Key {
        /// The site.
        fqdn: String,
        /// The key file.
        path: PathBuf,
        /// What was wrong with it.
        error: String,
    },
    /// The private key is not the one of the certificate.
    #[error("{fqdn}: {error}")]
    KeyMismatch {
        /// The site.
        fqdn: String,
        /// Which files disagree, and how.
        error: String,
    },
    /// Reading from the client failed, or it closed before a whole ClientHello.
    #[error("cannot read the ClientHello: {0}")]
    Io(#[from] io::Error),
    /// The client's first bytes are not a TLS ClientHello.
    #[error("not a TLS ClientHello: {0}")]
    BadHello(String),
    /// More than 64 KiB arrived without a whole ClientHello.
    #[error("the ClientHello is larger than {MAX_HELLO} bytes")]
    HelloTooLarge,
}

/// The certificate of each terminated site, by SNI.
#[derive(Debug, Default)]
pub struct SniCerts {
    certs: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.trim_end_matches('.').to_ascii_lowercase();
        self.certs.get(&name).cloned()
    }
}

/// Loads `<cert_dir>/<fqdn>.crt` and `.key` of every `tls = "terminate"` site and builds the TLS
/// server configuration (ALPN h2 and http/1.1). `None` when no site terminates TLS.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let mut certs = SniCerts::default();
    for site in config.sites.iter().filter(|s| s.tls == TlsMode::Terminate) {
        let key = load_site(&config.cert_dir, &site.fqdn)?;
        certs.certs.insert(site.fqdn.clone(), Arc::new(key));
    }
    if certs.certs.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::BadHello(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tls)))
}

fn load_site(dir: &Path, fqdn: &str) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join(format!("{fqdn}.crt"));
    let key_path = dir.join(format!("{fqdn}.key"));
    let cert_err = |error: String| TlsError::Cert { fqdn: fqdn.to_owned(), path: cert_path.clone(), error };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Key {
        fqdn: fqdn.to_owned(),
        path: key_path.clone(),
        error: e.to_string(),
    })?;
    let signer = any_supported_type(&key).map_err(|e| TlsError::Key {
        fqdn: fqdn.to_owned(),
        path: key_path.clone(),
        error: e.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // Keys whose public half rustls cannot compute are accepted as they are.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(TlsError::KeyMismatch {
            fqdn: fqdn.to_owned(),
            error: format!("{} does not match {}: {e}", key_path.display(), cert_path.display()),
        }),
    }
}

/// The bytes of a ClientHello and the server name it asks for.
pub struct Hello {
    /// Every byte read from the client so far, to be replayed to rustls or to the node.
    pub bytes: Vec<u8>,
    /// Lowercase, without a trailing dot; `None` without SNI.
    pub sni: Option<String>,
}

/// Reads from `stream` until a whole ClientHello has arrived; nothing is consumed for good:
/// [`Hello::bytes`] holds everything read.
pub async fn read_client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Hello, TlsError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut rd = &chunk[..n];
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd)?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni =
                        accepted.client_hello().server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase());
                    return Ok(Hello { bytes, sni });
                }
                Ok(None) => {}
                Err((e, _alert)) => return Err(TlsError::BadHello(e.to_string())),
            }
        }
        if bytes.len() > MAX_HELLO {
            return Err(TlsError::HelloTooLarge);
        }
    }
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// A stream that replays `prefix` (bytes already read from `inner`) before reading on.
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
