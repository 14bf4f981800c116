//! Whether each tunnel's peer still answers, from the data plane's counters alone (both data
//! planes count the same way), as WireGuard decides it:
//!
//! - a tunnel that sent data and received nothing at all (keepalives included) for
//!   [`DEAD_AFTER`] is dead: its peer moved without a word, or a NAT on the way forgot its
//!   mapping. The daemon rebuilds it through the DCs.
//! - a tunnel that received data and sent nothing for [`PASSIVE_KEEPALIVE`] sends a keepalive, so
//!   that a one-way flow does not look dead to the sender.
//!
//! No clock and no I/O: the daemon samples the counters every second or so and acts on the
//! verdicts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Data sent and nothing received for this long: the peer is gone (WireGuard: keepalive 10 s +
/// rekey timeout 5 s).
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Data received and nothing sent for this long: send a keepalive (WireGuard's 10 s).
pub const PASSIVE_KEEPALIVE: Duration = Duration::from_secs(10);

/// One tunnel's counters at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The tunnel's local id.
    pub local_id: u32,
    /// IP packets sent into the tunnel (keepalives not counted).
    pub tx_packets: u64,
    /// Packets received, keepalives included.
    pub rx_packets: u64,
    /// Bytes of the IP packets received (keepalives add none).
    pub rx_bytes: u64,
}

/// What to do about a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send a keepalive on it.
    Keepalive(u32),
    /// Its peer stopped answering: rebuild it.
    Dead(u32),
}

#[derive(Debug, Clone, Copy)]
struct Track {
    last: Sample,
    /// Since when data went out with nothing coming back.
    unanswered_since: Option<Instant>,
    /// Since when data came in with nothing going out.
    owed_since: Option<Instant>,
}

/// The tracker of every tunnel's liveness.
#[derive(Debug, Default)]
pub struct Liveness {
    tracks: HashMap<u32, Track>,
}

impl Liveness {
    /// Takes a sample of every tunnel (those not in it are forgotten); returns what to do.
    pub fn sample(&mut self, samples: impl IntoIterator<Item = Sample>, now: Instant) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(self.tracks.len());
        for s in samples {
            let t = match self.tracks.remove(&s.local_id) {
                // A tunnel replaced under the same id starts over.
                Some(t) if s.tx_packets >= t.last.tx_packets && s.rx_packets >= t.last.rx_packets => t,
                _ => {
                    seen.insert(s.local_id, Track { last: s, unanswered_since: None, owed_since: None });
                    continue;
                }
            };
            let sent = s.tx_packets > t.last.tx_packets;
            let got_any = s.rx_packets > t.last.rx_packets;
            let got_data = s.rx_bytes > t.last.rx_bytes;
            let mut t = Track { last: s, ..t };
            if got_any {
                t.unanswered_since = None;
            } else if sent && t.unanswered_since.is_none() {
                t.unanswered_since = Some(now);
            }
            if sent {
                t.owed_since = None;
            } else if got_data && t.owed_since.is_none() {
                t.owed_since = Some(now);
            }
            if t.unanswered_since.is_some_and(|u| now.saturating_duration_since(u) >= DEAD_AFTER) {
                out.push(Verdict::Dead(s.local_id));
                t.unanswered_since = None;
            }
            if t.owed_since.is_some_and(|o| now.saturating_duration_since(o) >= PASSIVE_KEEPALIVE) {
                out.push(Verdict::Keepalive(s.local_id));
                t.owed_since = None;
            }
            seen.insert(s.local_id, t);
        }
        self.tracks = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(tx: u64, rx: u64, rx_bytes: u64) -> Sample {
        Sample { local_id: 1, tx_packets: tx, rx_packets: rx, rx_bytes }
    }

    #[test]
    fn silence_after_sending_is_death() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(l.sample([s(0, 0, 0)], at(0)).is_empty());
        // Traffic both ways: alive.
        assert!(l.sample([s(5, 5, 500)], at(1)).is_empty());
        // Sending into the void from t=2 on.
        for i in 2..17 {
            assert!(l.sample([s(5 + i, 5, 500)], at(i)).is_empty(), "{i}");
        }
        assert_eq!(l.sample([s(30, 5, 500)], at(17)), vec![Verdict::Dead(1)]);
        // A keepalive from the peer (no bytes) proves it is there.
        let mut l = Liveness::default();
        l.sample([s(0, 0, 0)], at(0));
        l.sample([s(1, 0, 0)], at(1));
        assert!(l.sample([s(2, 1, 0)], at(14)).is_empty());
        assert!(l.sample([s(3, 1, 0)], at(20)).is_empty());
    }

    #[test]
    fn receiving_only_owes_a_keepalive() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        l.sample([s(0, 0, 0)], at(0));
        assert!(l.sample([s(0, 10, 1000)], at(1)).is_empty());
        assert!(l.sample([s(0, 20, 2000)], at(10)).is_empty());
        assert_eq!(l.sample([s(0, 30, 3000)], at(11)), vec![Verdict::Keepalive(1)]);
        // Keepalives alone (no bytes) are not answered: no ping-pong.
        assert!(l.sample([s(0, 40, 3000)], at(30)).is_empty());
        assert!(l.sample([s(0, 41, 3000)], at(60)).is_empty());
        // Gone from the data plane: forgotten.
        l.sample([], at(61));
        assert!(l.tracks.is_empty());
    }
}
