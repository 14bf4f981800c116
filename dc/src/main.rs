//! `dc`: the NTM Direction Coordinator.

use std::path::PathBuf;

use host::daemon::Daemon;
use ntm_dc::config::Config;

struct Dc;

impl Daemon for Dc {
    const NAME: &'static str = "dc";
    const ABOUT: &'static str = "NTM Direction Coordinator: VIPs, node registry, DNS, tunnel direction";
    type Config = Config;

    fn check(config: &Config) -> anyhow::Result<String> {
        Ok(format!("zone {}, {} nodes, {} peers", config.zone, config.nodes.len(), config.peers.len()))
    }

    async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
        ntm_dc::server::run(path, config).await
    }
}

fn main() -> std::process::ExitCode {
    host::daemon::main::<Dc>()
}
