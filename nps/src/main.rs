//! `nps --config FILE`: the NTMobile Proxy Server daemon.
//!
//! SIGHUP re-reads the configuration and certificates (a bad new one is logged and the running
//! one kept); SIGTERM and SIGINT stop accepting and give requests in flight up to 10 s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use nps::{Config, Kind, Server};
use tokio::signal::unix::{signal, SignalKind};

/// How long requests in flight get at shutdown.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(name = "nps", version, about = "NTMobile Proxy Server: reverse proxy to NTM nodes through the local ntmd")]
struct Args {
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Only check the configuration (and load the certificates), then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&args.config)?;
    if args.check {
        nps::tls::server_config(&config).context("certificates")?;
        println!("{}: OK ({} sites)", args.config.display(), config.sites.len());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(run(args, config))
}

async fn run(args: Args, config: Config) -> anyhow::Result<()> {
    let sites: Vec<String> = config.sites.iter().map(|s| format!("{} ({})", s.fqdn, s.tls)).collect();
    let server = Server::start(config).await?;
    tracing::info!(
        http = ?server.local_addrs(Kind::Http),
        https = ?server.local_addrs(Kind::Https),
        metrics = ?server.local_addrs(Kind::Metrics),
        sites = %sites.join(", "),
        "nps running"
    );
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let reloaded = match Config::load(&args.config) {
                    Ok(c) => server.reload(c).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                match reloaded {
                    Ok(()) => tracing::info!(config = %args.config.display(), "configuration reloaded"),
                    Err(e) => tracing::error!("reload failed, still serving the previous configuration: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections, {}s for requests in flight", GRACE.as_secs());
    server.shutdown(GRACE).await;
    Ok(())
}
