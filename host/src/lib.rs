//! The layer every NTM daemon stands on, between the sans-IO protocol (`proto`) and the binaries
//! (`ntmd`, `dc`, `nps`, `relay`): what a long-running network service needs and does the same
//! way in each of them.
//!
//! - [`config`]: TOML files with unknown keys rejected and errors that name the file, the line
//!   and the key; addresses, DNS names, keys inline or from a file whose permissions are checked.
//! - [`dns`]: one DNS client (UDP with retransmission, then TCP on truncation; fresh ids; the
//!   answer must match the question).
//! - [`metrics`]: Prometheus pages (`_total` counters, units, `ntm_build_info`) and the
//!   `/metrics` HTTP server.
//! - [`loglimit`]: log lines about bad input at a bounded rate.
//! - [`driver`]: the loop that runs a sans-IO core: its inputs, its timer, signals, a periodic
//!   summary.
//! - [`daemon`]: `main` for every daemon: `-c/--config`, `--check`, `--log-format`, the same
//!   exit codes.

pub mod config;
pub mod daemon;
pub mod dns;
pub mod driver;
pub mod loglimit;
pub mod metrics;
pub mod signals;
