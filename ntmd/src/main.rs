//! `ntmd`: the NTM node daemon.

use std::path::PathBuf;

use host::daemon::Daemon;
use ntmd::config::Config;

struct Ntmd;

impl Daemon for Ntmd {
    const NAME: &'static str = "ntmd";
    const ABOUT: &'static str = "NTM node daemon: registers with its DC, builds tunnels, serves NTM names";
    type Config = Config;

    fn check(config: &Config) -> anyhow::Result<String> {
        Ok(format!("{}, {} data plane, DC {:?}", config.fqdn, config.dataplane, config.dc))
    }

    async fn run(_path: PathBuf, config: Config) -> anyhow::Result<()> {
        ntmd::daemon::run(config).await
    }
}

fn main() -> std::process::ExitCode {
    host::daemon::main::<Ntmd>()
}
