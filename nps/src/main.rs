//! `nps`: the NTMobile Proxy Server daemon.
//!
//! SIGHUP re-reads the configuration and certificates (a bad new one is logged and the running
//! one kept); SIGTERM and SIGINT stop accepting and give requests in flight up to 10 s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use host::config::Load as _;
use host::daemon::Daemon;
use host::signals::{Signal, Signals};
use nps::{Config, Kind, Server};

/// How long requests in flight get at shutdown.
const GRACE: Duration = Duration::from_secs(10);

struct Nps;

impl Daemon for Nps {
    const NAME: &'static str = "nps";
    const ABOUT: &'static str = "NTMobile Proxy Server: reverse proxy to NTM nodes through the local ntmd";
    type Config = Config;

    fn check(config: &Config) -> anyhow::Result<String> {
        nps::tls::server_config(config).context("certificates")?;
        Ok(format!("{} sites", config.sites.len()))
    }

    async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
        let sites: Vec<String> = config.sites.iter().map(|s| format!("{} ({})", s.fqdn, s.tls)).collect();
        let mut signals = Signals::new().context("signal handlers")?;
        let server = Server::start(config).await?;
        tracing::info!(
            http = ?server.local_addrs(Kind::Http),
            https = ?server.local_addrs(Kind::Https),
            metrics = ?server.local_addrs(Kind::Metrics),
            sites = %sites.join(", "),
            "nps running"
        );
        while signals.next().await == Signal::Reload {
            let reloaded = match Config::load(&path) {
                Ok(c) => server.reload(c).await.map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            match reloaded {
                Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                Err(e) => tracing::error!("reload failed, still serving the previous configuration: {e:#}"),
            }
        }
        tracing::info!("shutting down: no new connections, {}s for requests in flight", GRACE.as_secs());
        server.shutdown(GRACE).await;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    host::daemon::main::<Nps>()
}
