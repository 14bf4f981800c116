//! `main` for every daemon, so that they all take the same flags, log the same way and exit
//! with the same codes:
//!
//! ```text
//! <daemon> [-c|--config FILE] [--check] [--log-format text|json]
//! ```
//!
//! - `-c/--config FILE`: the TOML configuration (default `/etc/ntm/<daemon>.toml`).
//! - `--check`: load and validate the configuration (and what it names: keys, certificates),
//!   print `FILE: OK (...)`, exit.
//! - Logs go to stderr, in plain text (colours only on a terminal) or one JSON object per
//!   line; `RUST_LOG` sets the filter (default `info`).
//! - Exit codes: [`EXIT_OK`], [`EXIT_FAILURE`] (the daemon failed while running, or could not
//!   start), [`EXIT_CONFIG`] (bad command line or configuration: restarting will not help).

use std::future::Future;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::config::Load;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The daemon failed while running, or could not start (a port taken, a device missing).
pub const EXIT_FAILURE: u8 = 1;
/// The command line or the configuration is wrong.
pub const EXIT_CONFIG: u8 = 2;

/// A daemon as `main` runs it.
pub trait Daemon {
    /// The program's name (`dc`, `ntmd`, `nps`, `relay`): default configuration
    /// `/etc/ntm/<NAME>.toml`, the `daemon` label of `ntm_build_info`.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The validated configuration.
    type Config: Load;

    /// What `--check` verifies beyond the file itself (certificates, say); returns a summary
    /// for the `OK` line.
    fn check(_config: &Self::Config) -> anyhow::Result<String> {
        Ok(String::new())
    }

    /// Runs the daemon until it is told to stop.
    fn run(path: PathBuf, config: Self::Config) -> impl Future<Output = anyhow::Result<()>>;
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Parser)]
struct Args {
    /// The TOML configuration file (default: /etc/ntm/<daemon>.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only validate the configuration (and the files it names), then exit.
    #[arg(long)]
    check: bool,
    /// How log lines are written (stderr; RUST_LOG filters them, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Raises the soft limit of open files to the hard limit, as servers do: the default soft
/// limit (1024) is far below what a proxy or a DC with many clients holds open.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!("cannot raise the open files limit from {soft} to {hard}: {e}");
            }
        }
    }
}

/// Sets up logging on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The `main` of daemon `D`.
pub fn main<D: Daemon>() -> ExitCode {
    let command = Args::command()
        .name(D::NAME)
        .bin_name(D::NAME)
        .about(D::ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        .mut_arg("config", |a| a.help(format!("The TOML configuration file [default: /etc/ntm/{}.toml]", D::NAME)));
    let args = match Args::from_arg_matches(&command.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    init_logging(args.log_format);
    let path = args.config.unwrap_or_else(|| PathBuf::from(format!("/etc/ntm/{}.toml", D::NAME)));
    let config = match D::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", D::NAME);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        return match D::check(&config) {
            Ok(summary) if summary.is_empty() => {
                println!("{}: OK", path.display());
                ExitCode::from(EXIT_OK)
            }
            Ok(summary) => {
                println!("{}: OK ({summary})", path.display());
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("{}: {}: {e:#}", D::NAME, path.display());
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the runtime: {e}", D::NAME);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(D::run(path, config)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
