//! The DC's relays: which ones answer, how loaded they are, and which one a session gets.
//!
//! Every relay is pinged every few seconds (an authenticated exchange, answered with its session
//! count). A relay whose ping or allocation goes unanswered is avoided until it answers again; the
//! least loaded one that has an address of each family a session needs is picked.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::keys::PublicKey;

/// How often each relay is pinged.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// A relay as the DC's configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Its addresses (port included), one or more of each family it serves.
    pub addrs: Vec<SocketAddr>,
    /// Its static key: allocations are addressed to it.
    pub key: PublicKey,
}

/// What the DC knows of one relay now, for its status and metrics.
#[derive(Debug, Clone)]
pub struct RelayView {
    /// The configuration's name.
    pub name: String,
    /// It answered its last ping or allocation.
    pub up: bool,
    /// Sessions it reported at its last ping, plus those allocated here since.
    pub load: u32,
}

#[derive(Debug)]
struct State {
    cfg: RelayConfig,
    up: bool,
    load: u32,
    ping_pending: bool,
    next_ping: Option<Instant>,
}

/// The DC's relays.
#[derive(Debug, Default)]
pub struct Relays {
    list: Vec<State>,
}

fn is_v4(a: &SocketAddr) -> bool {
    a.ip().to_canonical().is_ipv4()
}

impl Relays {
    /// The relays of the configuration, all presumed up until a ping says otherwise.
    pub fn new(cfgs: Vec<RelayConfig>) -> Self {
        Self {
            list: cfgs
                .into_iter()
                .map(|cfg| State { cfg, up: true, load: 0, ping_pending: false, next_ping: None })
                .collect(),
        }
    }

    /// True if no relay is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The relay `i`'s configuration.
    pub fn config(&self, i: usize) -> &RelayConfig {
        &self.list[i].cfg
    }

    /// The relay `i`'s address of the family asked for (true: IPv4).
    pub fn addr(&self, i: usize, v4: bool) -> Option<SocketAddr> {
        self.list[i].cfg.addrs.iter().copied().find(|a| is_v4(a) == v4)
    }

    /// Where the relay's pings go: IPv4 first.
    fn ping_addr(&self, i: usize) -> Option<SocketAddr> {
        self.addr(i, true).or_else(|| self.addr(i, false))
    }

    /// The least loaded relay that is up, not in `skip`, and has an address of both families.
    pub fn pick(&self, v4_a: bool, v4_b: bool, skip: &[usize]) -> Option<usize> {
        (0..self.list.len())
            .filter(|i| self.list[*i].up && !skip.contains(i))
            .filter(|i| self.addr(*i, v4_a).is_some() && self.addr(*i, v4_b).is_some())
            .min_by_key(|i| self.list[*i].load)
    }

    /// A session was allocated on relay `i`.
    pub fn allocated(&mut self, i: usize) {
        self.list[i].up = true;
        self.list[i].load = self.list[i].load.saturating_add(1);
    }

    /// Relay `i` did not answer an allocation or a ping: avoid it until it answers one.
    pub fn failed(&mut self, i: usize) {
        if let Some(s) = self.list.get_mut(i) {
            s.ping_pending = false;
            if s.up {
                tracing::warn!(relay = %s.cfg.name, "the relay does not answer: avoided until it does");
            }
            s.up = false;
        }
    }

    /// Relay `i` answered a ping with its session count.
    pub fn answered(&mut self, i: usize, sessions: u32) {
        if let Some(s) = self.list.get_mut(i) {
            if !s.up {
                tracing::info!(relay = %s.cfg.name, "the relay answers again");
            }
            s.up = true;
            s.ping_pending = false;
            s.load = sessions;
        }
    }

    /// The relays to ping now (address and key), each marked as pinged.
    pub fn due_pings(&mut self, now: Instant) -> Vec<(usize, SocketAddr, PublicKey)> {
        let mut v = Vec::new();
        for i in 0..self.list.len() {
            let s = &self.list[i];
            if s.ping_pending || s.next_ping.is_some_and(|t| t > now) {
                continue;
            }
            let Some(addr) = self.ping_addr(i) else { continue };
            let s = &mut self.list[i];
            s.ping_pending = true;
            s.next_ping = Some(now + PING_EVERY);
            v.push((i, addr, s.cfg.key));
        }
        v
    }

    /// When the next ping is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.list.iter().filter(|s| !s.ping_pending).map(|s| s.next_ping.unwrap_or(Instant::now())).min()
    }

    /// Every relay's state.
    pub fn view(&self) -> Vec<RelayView> {
        self.list.iter().map(|s| RelayView { name: s.cfg.name.clone(), up: s.up, load: s.load }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_family_and_load_and_avoids_the_silent() {
        let cfg = |n: &str, a: &[&str]| RelayConfig {
            name: n.into(),
            addrs: a.iter().map(|x| x.parse().unwrap()).collect(),
            key: PublicKey([0; 32]),
        };
        let mut r = Relays::new(vec![
            cfg("v4only", &["192.0.2.1:7700"]),
            cfg("dual1", &["192.0.2.2:7700", "[2001:db8::2]:7700"]),
            cfg("dual2", &["192.0.2.3:7700", "[2001:db8::3]:7700"]),
        ]);
        assert_eq!(r.pick(true, true, &[]), Some(0));
        assert_eq!(r.pick(true, false, &[]), Some(1));
        r.allocated(1);
        assert_eq!(r.pick(true, false, &[]), Some(2));
        r.failed(2);
        assert_eq!(r.pick(true, false, &[]), Some(1));
        assert_eq!(r.pick(true, false, &[1]), None);
        let now = Instant::now();
        assert_eq!(r.due_pings(now).len(), 3);
        assert!(r.due_pings(now).is_empty());
        r.answered(2, 0);
        assert_eq!(r.pick(true, false, &[]), Some(2));
    }
}
