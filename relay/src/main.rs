//! `relay`: the NTM Relay Server.

use std::path::PathBuf;

use host::daemon::Daemon;
use ntm_relay::config::Config;

struct Relay;

impl Daemon for Relay {
    const NAME: &'static str = "relay";
    const ABOUT: &'static str = "NTM Relay Server: forwards sealed tunnel packets for sessions its DCs allocate";
    type Config = Config;

    fn check(config: &Config) -> anyhow::Result<String> {
        Ok(format!("{} listen addresses, {} DCs, {} workers", config.listen.len(), config.dcs.len(), config.workers))
    }

    async fn run(_path: PathBuf, config: Config) -> anyhow::Result<()> {
        ntm_relay::server::run(config).await
    }
}

fn main() -> std::process::ExitCode {
    host::daemon::main::<Relay>()
}
