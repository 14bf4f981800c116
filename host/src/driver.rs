//! The loop that runs a sans-IO core (the DC's, the node's, the relay's): one task owns the
//! core and feeds it its inputs, the time and its timer's expiries; after each step the core's
//! requests (datagrams to send, lookups to start) are carried out. The same loop obeys the
//! signals and logs a periodic summary.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::exchange::Now;
use proto::stats::Drops;
use tokio_stream::{Stream, StreamExt};

use crate::signals::{Signal, Signals};

/// The clock a core is given: monotonic for timers, the wall clock for timestamps.
pub fn now() -> Now {
    let unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    Now { mono: Instant::now(), unix_us }
}

/// The periodic summary of what a daemon dropped: one log line when the counts changed.
#[derive(Debug, Default)]
pub struct DropReport {
    last: Option<(Drops, Vec<u64>)>,
}

impl DropReport {
    /// Logs `drops` and the `extra` counts (by name) if they changed since the last line.
    pub fn report(&mut self, drops: Drops, extra: &[(&str, u64)]) {
        let counts: Vec<u64> = extra.iter().map(|(_, n)| *n).collect();
        let now = Some((drops, counts));
        if self.last == now || (self.last.is_none() && drops.total() == 0 && extra.iter().all(|(_, n)| *n == 0)) {
            return;
        }
        let extra: String = extra.iter().map(|(name, n)| format!(", {name} {n}")).collect();
        tracing::info!("dropped since start: {drops}{extra}");
        self.last = now;
    }
}

/// How long the loop sleeps when the core has no timer.
const IDLE: Duration = Duration::from_secs(3600);

/// A core and the I/O around it, as the loop sees them.
pub trait Core {
    /// What the daemon's tasks send to the core (datagrams, commands, events).
    type Input;

    /// One input.
    fn input(&mut self, input: Self::Input, now: Now);

    /// When the core's next timer expires.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The timer expired.
    fn timeout(&mut self, now: Now);

    /// Carries out what the core asked for since the last call.
    fn flush(&mut self) -> impl Future<Output = ()>;

    /// Logs a summary (of what was dropped, say), every [`Options::summary_every`].
    fn summary(&mut self) {}

    /// SIGHUP: applies the configuration file again. `Ok` says what changed, `Err` why the
    /// running configuration was kept.
    fn reload(&mut self) -> Result<String, String> {
        Err("this daemon cannot reload its configuration yet (restart it to apply a change)".into())
    }
}

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How often [`Core::summary`] runs.
    pub summary_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { summary_every: Duration::from_secs(60) }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT.
    Signal,
    /// Every input source closed.
    InputsClosed,
}

/// Runs `core` until a stop signal or the end of `inputs`.
pub async fn run<C: Core>(
    core: &mut C,
    mut inputs: impl Stream<Item = C::Input> + Unpin,
    options: Options,
) -> io::Result<Stopped> {
    let mut signals = Signals::new()?;
    let mut summary = tokio::time::interval(options.summary_every);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    summary.tick().await;
    let stopped = loop {
        let deadline = core.poll_timeout().unwrap_or_else(|| Instant::now() + IDLE);
        tokio::select! {
            input = inputs.next() => match input {
                Some(input) => core.input(input, now()),
                None => break Stopped::InputsClosed,
            },
            _ = tokio::time::sleep_until(deadline.into()) => core.timeout(now()),
            _ = summary.tick() => core.summary(),
            signal = signals.next() => match signal {
                Signal::Stop => break Stopped::Signal,
                Signal::Reload => match core.reload() {
                    Ok(what) => tracing::info!("configuration reloaded: {what}"),
                    Err(why) => tracing::warn!("SIGHUP: {why}"),
                },
            },
        }
        core.flush().await;
    };
    tracing::info!("stopping");
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    /// Echoes inputs after a timer of 10 ms, counting expiries.
    #[derive(Default)]
    struct Echo {
        due: Option<(Instant, u32)>,
        out: Vec<u32>,
        sent: Vec<u32>,
        expiries: u32,
    }

    impl Core for Echo {
        type Input = u32;
        fn input(&mut self, input: u32, now: Now) {
            self.due = Some((now.mono + Duration::from_millis(10), input));
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.due.map(|(t, _)| t)
        }
        fn timeout(&mut self, now: Now) {
            if let Some((t, v)) = self.due {
                if now.mono >= t {
                    self.expiries += 1;
                    self.out.push(v);
                    self.due = None;
                }
            }
        }
        async fn flush(&mut self) {
            self.sent.append(&mut self.out);
        }
    }

    #[tokio::test]
    async fn inputs_timers_and_flush() {
        let (tx, rx) = mpsc::channel(4);
        let mut core = Echo::default();
        let feeder = tokio::spawn(async move {
            for v in [1, 2] {
                tx.send(v).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let stopped = run(&mut core, ReceiverStream::new(rx), Options::default()).await.unwrap();
        feeder.await.unwrap();
        assert_eq!(stopped, Stopped::InputsClosed);
        assert_eq!(core.sent, vec![1, 2]);
        assert_eq!(core.expiries, 2);
    }
}
