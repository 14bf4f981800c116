//! Response rate limiting for DNS over UDP, after Knot's and NSD's RRL.
//!
//! A spoofed query makes an authoritative server send its answer to the victim whose address
//! was forged; RRL caps what any one network receives. Clients are grouped by prefix (/24 for
//! IPv4, /56 for IPv6); each prefix has a token bucket of `responses_per_s` tokens a second,
//! holding at most one second's worth (the burst). A response beyond it is dropped, except
//! every `slip`-th one, which is sent truncated (TC=1, no records): a real resolver behind
//! that prefix then asks again over TCP, which a forged source address cannot do.
//!
//! Memory is bounded: at most `max_prefixes` prefixes are tracked. A prefix whose bucket has
//! filled up again carries no state worth keeping and is forgotten when room is needed; while
//! the table is full of active prefixes, new ones share a single bucket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Default responses per second to one client prefix.
pub const DEFAULT_RESPONSES_PER_S: u32 = 200;
/// Default slip: every second limited response goes out truncated, the others are dropped.
pub const DEFAULT_SLIP: u32 = 2;
/// Default number of client prefixes tracked at once.
pub const DEFAULT_MAX_PREFIXES: usize = 65536;
/// Largest `slip` accepted (Knot's bound too).
pub const MAX_SLIP: u32 = 100;
/// IPv4 clients are grouped by this prefix length.
pub const IPV4_PREFIX_LEN: u32 = 24;
/// IPv6 clients are grouped by this prefix length.
pub const IPV6_PREFIX_LEN: u32 = 56;

/// A full table is swept for stale prefixes at most this often (a sweep walks all of it).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The limits of [`Rrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses per second to one client prefix, with a burst of as many; 0 disables RRL.
    pub responses_per_s: u32,
    /// Every `slip`-th limited response is sent truncated, the others are dropped; 0 drops
    /// them all, 1 truncates them all.
    pub slip: u32,
    /// Client prefixes tracked at once (at least 1).
    pub max_prefixes: usize,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self { responses_per_s: DEFAULT_RESPONSES_PER_S, slip: DEFAULT_SLIP, max_prefixes: DEFAULT_MAX_PREFIXES }
    }
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: send it as it is.
    Send,
    /// Over the limit, and this one slips through: send it truncated, without records.
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

/// One response, in the units of [`Bucket::credit`].
const TOKEN: u64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Millionths of a response; refilled by `rate` every microsecond, exactly.
    credit: u64,
    last: Instant,
    /// Responses limited since the bucket last had a token, for the slip.
    limited: u32,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Self {
        Self { credit: rate * TOKEN, last: now, limited: 0 }
    }

    /// The credit at `now`, and the whole microseconds that brought it.
    fn refilled(&self, rate: u64, now: Instant) -> (u64, u64) {
        let us = u64::try_from(now.saturating_duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
        (self.credit.saturating_add(us.saturating_mul(rate)).min(rate * TOKEN), us)
    }

    fn take(&mut self, rate: u64, slip: u32, now: Instant) -> Verdict {
        let (credit, us) = self.refilled(rate, now);
        self.credit = credit;
        self.last += Duration::from_micros(us);
        if self.credit >= TOKEN {
            self.credit -= TOKEN;
            self.limited = 0;
            return Verdict::Send;
        }
        let n = self.limited;
        self.limited = self.limited.wrapping_add(1);
        if slip != 0 && n.is_multiple_of(slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// True once the bucket has filled up again: forgetting it changes nothing.
    fn stale(&self, rate: u64, now: Instant) -> bool {
        self.refilled(rate, now).0 >= rate * TOKEN
    }
}

/// The client prefix `ip` is counted in: its /24 or /56 (IPv4-mapped IPv6 counts as IPv4).
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & (u32::MAX << (32 - IPV4_PREFIX_LEN)))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << (128 - IPV6_PREFIX_LEN)))),
    }
}

/// Per-prefix response rate limiter. Sans-IO: the caller passes the time.
#[derive(Debug)]
pub struct Rrl {
    cfg: RrlConfig,
    table: HashMap<IpAddr, Bucket>,
    /// Shared by the prefixes that find the table full.
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl Rrl {
    /// A limiter with no history.
    pub fn new(cfg: RrlConfig) -> Self {
        let cfg = RrlConfig { max_prefixes: cfg.max_prefixes.max(1), ..cfg };
        Self { cfg, table: HashMap::new(), overflow: None, last_sweep: None }
    }

    /// Its limits.
    pub fn config(&self) -> RrlConfig {
        self.cfg
    }

    /// Prefixes tracked now (at most `max_prefixes`).
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Accounts for one response to `client` at `now` and says what to do with it.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Verdict {
        let RrlConfig { responses_per_s, slip, max_prefixes } = self.cfg;
        if responses_per_s == 0 {
            return Verdict::Send;
        }
        let rate = u64::from(responses_per_s);
        let prefix = client_prefix(client);
        if let Some(b) = self.table.get_mut(&prefix) {
            return b.take(rate, slip, now);
        }
        if self.table.len() >= max_prefixes {
            let due = self.last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
            if due {
                self.last_sweep = Some(now);
                self.table.retain(|_, b| !b.stale(rate, now));
            }
            if self.table.len() >= max_prefixes {
                return self.overflow.get_or_insert_with(|| Bucket::full(rate, now)).take(rate, slip, now);
            }
        }
        let mut b = Bucket::full(rate, now);
        let verdict = b.take(rate, slip, now);
        self.table.insert(prefix, b);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(responses_per_s: u32, slip: u32) -> RrlConfig {
        RrlConfig { responses_per_s, slip, ..RrlConfig::default() }
    }

    /// `n` responses to `client` at `now`, tallied as (sent, slipped, dropped).
    fn burst(rrl: &mut Rrl, client: &str, n: usize, now: Instant) -> (usize, usize, usize) {
        let mut tally = (0, 0, 0);
        for _ in 0..n {
            match rrl.check(ip(client), now) {
                Verdict::Send => tally.0 += 1,
                Verdict::Slip => tally.1 += 1,
                Verdict::Drop => tally.2 += 1,
            }
        }
        tally
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_56() {
        assert_eq!(client_prefix(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(client_prefix(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(client_prefix(ip("2001:db8:1:2ff:1:2:3:4")), ip("2001:db8:1:200::"));
    }

    #[test]
    fn rrl_limits_a_prefix_and_slips_every_nth() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(cfg(20, 2));
        // the burst: one second's worth, from any addresses of the /24
        assert_eq!(burst(&mut rrl, "192.0.2.1", 10, t0), (10, 0, 0));
        assert_eq!(burst(&mut rrl, "192.0.2.200", 10, t0), (10, 0, 0));
        // beyond it: one in two slips (truncated), the others are dropped
        assert_eq!(rrl.check(ip("192.0.2.1"), t0), Verdict::Slip);
        assert_eq!(rrl.check(ip("192.0.2.1"), t0), Verdict::Drop);
        assert_eq!(burst(&mut rrl, "192.0.2.9", 10, t0), (0, 5, 5));
        // tokens come back at the rate: 100 ms is two responses
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(burst(&mut rrl, "192.0.2.1", 4, t1), (2, 1, 1));
        // a second later, the whole burst again
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(burst(&mut rrl, "192.0.2.1", 25, t2), (20, 3, 2));
        // IPv6: a /56
        assert_eq!(burst(&mut rrl, "2001:db8:0:1::1", 20, t0), (20, 0, 0));
        assert_eq!(burst(&mut rrl, "2001:db8:0:ff::2", 2, t0), (0, 1, 1));
        assert_eq!(burst(&mut rrl, "2001:db8:0:100::1", 1, t0), (1, 0, 0));
    }

    #[test]
    fn rrl_does_not_limit_across_prefixes() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(cfg(20, 2));
        assert_eq!(burst(&mut rrl, "192.0.2.1", 100, t0), (20, 40, 40));
        for other in ["192.0.3.1", "198.51.100.1", "2001:db8::1", "2001:db8:0:100::1"] {
            assert_eq!(burst(&mut rrl, other, 20, t0), (20, 0, 0), "{other}");
        }
        assert_eq!(rrl.tracked(), 5);
    }

    #[test]
    fn rrl_slip_settings() {
        let t0 = Instant::now();
        let mut none = Rrl::new(cfg(5, 0));
        assert_eq!(burst(&mut none, "192.0.2.1", 15, t0), (5, 0, 10));
        let mut all = Rrl::new(cfg(5, 1));
        assert_eq!(burst(&mut all, "192.0.2.1", 15, t0), (5, 10, 0));
        let mut third = Rrl::new(cfg(5, 3));
        assert_eq!(burst(&mut third, "192.0.2.1", 14, t0), (5, 3, 6));
        let mut off = Rrl::new(cfg(0, 2));
        assert_eq!(burst(&mut off, "192.0.2.1", 1000, t0), (1000, 0, 0));
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn rrl_table_is_bounded() {
        let t0 = Instant::now();
        let mut rrl = Rrl::new(RrlConfig { responses_per_s: 2, slip: 1, max_prefixes: 3 });
        for c in ["10.0.1.1", "10.0.2.1", "10.0.3.1"] {
            assert_eq!(burst(&mut rrl, c, 2, t0), (2, 0, 0));
        }
        assert_eq!(rrl.tracked(), 3);
        // full of active prefixes: newcomers share one bucket
        assert_eq!(burst(&mut rrl, "10.0.4.1", 1, t0), (1, 0, 0));
        assert_eq!(burst(&mut rrl, "10.0.5.1", 2, t0), (1, 1, 0));
        assert_eq!(rrl.tracked(), 3);
        // the tracked ones keep their own state
        assert_eq!(burst(&mut rrl, "10.0.1.1", 1, t0), (0, 1, 0));
        // once their buckets have filled up again they are forgotten, making room
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(burst(&mut rrl, "10.0.6.1", 2, t1), (2, 0, 0));
        assert_eq!(rrl.tracked(), 1);
        for i in 0..1000 {
            rrl.check(ip(&format!("10.{}.{}.1", i / 256, i % 256)), t1 + Duration::from_millis(i));
        }
        assert!(rrl.tracked() <= 3);
    }
}
