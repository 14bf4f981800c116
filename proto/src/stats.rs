//! Counters of what the cores dropped, and a limiter that keeps log lines about bad input at a
//! sane rate.

use std::time::{Duration, Instant};

/// Datagrams and requests a core dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drops {
    /// Not a packet of ours, truncated, or a handshake that did not decrypt.
    pub malformed: u64,
    /// Authenticated, but from a key that has no business here (not enrolled, not vouched for).
    pub unauthorized: u64,
    /// A request seen before (replayed or duplicated).
    pub replayed: u64,
    /// A response to no outstanding request, or a packet of the wrong kind.
    pub unexpected: u64,
    /// A handshake initiation under load from a source that used its share of handshake work
    /// (see [`crate::cookie`]).
    #[serde(default)]
    pub limited: u64,
    /// Cookie replies sent instead of handshake work, under load.
    #[serde(default)]
    pub cookies_sent: u64,
}

impl Drops {
    /// Each cause with its count, as metrics label them.
    pub fn by_cause(&self) -> [(&'static str, u64); 6] {
        [
            ("malformed", self.malformed),
            ("unauthorized", self.unauthorized),
            ("replayed", self.replayed),
            ("unexpected", self.unexpected),
            ("rate_limited", self.limited),
            ("cookie_sent", self.cookies_sent),
        ]
    }

    /// Drops of every cause together.
    pub fn total(&self) -> u64 {
        self.malformed + self.unauthorized + self.replayed + self.unexpected + self.limited + self.cookies_sent
    }

    /// Counts what a [`crate::cookie::Guard`] said about an initiation; returns the cookie reply
    /// to send, or `None` when the initiation goes on to the handshake (`Some(None)`: dropped).
    pub fn guard(&mut self, v: crate::cookie::Verdict) -> Option<Option<Vec<u8>>> {
        use crate::cookie::{Verdict, Why};
        match v {
            Verdict::Accept => None,
            Verdict::Cookie(reply) => {
                self.cookies_sent += 1;
                Some(Some(reply))
            }
            Verdict::Drop(why) => {
                match why {
                    Why::Short | Why::BadMac1 => self.malformed += 1,
                    Why::Replay => self.replayed += 1,
                    Why::RateLimited => self.limited += 1,
                }
                Some(None)
            }
        }
    }
}

impl std::fmt::Display for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (cause, n) in self.by_cause() {
            write!(f, "{}{cause} {n}", if first { "" } else { ", " })?;
            first = false;
        }
        Ok(())
    }
}

/// Lets one log line through per interval and counts the ones it held back.
#[derive(Debug, Clone)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogLimit {
    /// A limiter letting through one line per `every`; the first one passes at once.
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, held: 0 }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < self.every) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_read_as_a_line() {
        let d = Drops { malformed: 3, replayed: 1, ..Drops::default() };
        assert_eq!(
            d.to_string(),
            "malformed 3, unauthorized 0, replayed 1, unexpected 0, rate_limited 0, cookie_sent 0"
        );
    }

    #[test]
    fn limiter_counts_what_it_holds_back() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(Duration::from_secs(1));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
