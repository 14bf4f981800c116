//! Log lines about bad input at a bounded rate: whoever sends garbage cannot fill the log.
//!
//! The policy is [`proto::stats::LogLimit`] (one line per interval, counting the ones held
//! back), which the sans-IO cores use with their own clock; this is the same limiter for the
//! tasks of a daemon, shared between them and reading the real clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::stats::LogLimit;

/// One log line per interval; thread-safe.
#[derive(Debug)]
pub struct LogLimiter(Mutex<LogLimit>);

impl LogLimiter {
    /// Lets one line through every `every`.
    pub fn new(every: Duration) -> Self {
        LogLimiter(Mutex::new(LogLimit::new(every)))
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn check(&self) -> Option<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).allow(Instant::now())
    }

    /// Runs `log` (given the number of lines held back) if a line may be logged now.
    pub fn hit(&self, log: impl FnOnce(u64)) {
        if let Some(held) = self.check() {
            log(held);
        }
    }
}

impl Default for LogLimiter {
    /// One line a second.
    fn default() -> Self {
        LogLimiter::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        let mut logged = 0;
        l.hit(|_| logged += 1);
        assert_eq!(logged, 0);
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), Some(0));
    }
}
