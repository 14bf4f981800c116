//! The signals a daemon obeys: SIGHUP reloads the configuration, SIGTERM and SIGINT stop it.

use std::io;

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// The daemon's signal handlers (installed by [`Signals::new`]: from then on SIGHUP no longer
/// kills the process).
#[derive(Debug)]
pub struct Signals {
    hup: Stream,
    term: Stream,
    int: Stream,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
        }
    }
}
