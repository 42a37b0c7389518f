//! New connections per second per source IP: a [`TokenBucket`] per address, in a table of bounded size.
//!
//! Each address has a bucket of `burst` tokens refilled at `rate` per second; a new connection takes one token or
//! is refused. The table never holds more than `max_entries` addresses, and no step costs more than a few
//! `O(log n)` operations, however full it is:
//!
//! - beside the buckets, the addresses are ordered by when their bucket will be full again ([`TokenBucket::full_at`]);
//!   with one rate for all, that is the order of how full they are, the fullest first;
//! - each step drops up to two buckets that have refilled completely (a full bucket is the same as no bucket), so a
//!   table under ordinary load holds only the addresses seen in the last `burst / rate` seconds;
//! - a new address that finds the table full evicts the fullest bucket. If even that one is not full (the table is
//!   full of live buckets: very many addresses connecting at once), its address loses what it had spent: when it
//!   comes back it gets a full bucket, as any new address does, so it never holds more than `burst` tokens, and the
//!   fullest bucket is the one whose address gains the least. Evicting it needs every other address in the table to
//!   have spent at least as much, so an address that has just spent its burst is evicted last. These evictions are
//!   counted (`mqttlb_connection_rate_table_evictions_total`): a sign that the table is too small for the flood.
//!
//! Refusing new addresses instead, as this table once did, turned a flood from many addresses into a refusal of every
//! newcomer, and scanned the whole table on each of their connections.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::token_bucket::{Rate, TokenBucket};

/// Full buckets dropped per step at most, besides the one a new address may evict: enough to keep ahead of the
/// arrivals (each step adds at most one address), few enough to keep every step short.
const DROPS_PER_STEP: usize = 2;

/// What the table shows in `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct RateTableMetrics {
    /// Addresses in the table now (`mqttlb_connection_rate_table_entries`).
    pub entries: Gauge,
    /// Buckets not yet full evicted for a new address (`mqttlb_connection_rate_table_evictions_total`).
    pub evictions: Counter,
}

/// Per-IP token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    table: Mutex<Table>,
    metrics: RateTableMetrics,
}

#[derive(Debug)]
struct Table {
    max_entries: usize,
    /// Each address's bucket, and the instant it is filed under in `by_full_at`.
    buckets: HashMap<IpAddr, (TokenBucket, Instant)>,
    /// The addresses by when their bucket is full again: the first is the fullest.
    by_full_at: BTreeSet<(Instant, IpAddr)>,
}

impl Table {
    /// Drops the fullest bucket; whether it was full at `now` (then nothing was lost).
    fn evict_fullest(&mut self, now: Instant) -> Option<bool> {
        let (full_at, ip) = self.by_full_at.pop_first()?;
        self.buckets.remove(&ip);
        Some(full_at <= now)
    }

    /// Drops up to `n` buckets that are full at `now`.
    fn drop_full(&mut self, now: Instant, n: usize) {
        for _ in 0..n {
            match self.by_full_at.first() {
                Some((full_at, _)) if *full_at <= now => {
                    self.evict_fullest(now);
                }
                _ => break,
            }
        }
    }
}

impl RateLimiter {
    /// `rate` new connections per second per address, bursts of up to `burst`, `max_entries` addresses at most.
    pub fn new(rate: u32, burst: u32, max_entries: usize, metrics: RateTableMetrics) -> RateLimiter {
        let table = Table { max_entries: max_entries.max(1), buckets: HashMap::new(), by_full_at: BTreeSet::new() };
        RateLimiter { rate: Rate::new(rate, burst), table: Mutex::new(table), metrics }
    }

    /// Takes a token for `ip` at `now`; false if the address is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.drop_full(now, DROPS_PER_STEP);
        let mut bucket = match table.buckets.get(&ip) {
            Some(&(bucket, filed)) => {
                table.by_full_at.remove(&(filed, ip));
                bucket
            }
            None => {
                if table.buckets.len() >= table.max_entries && table.evict_fullest(now) == Some(false) {
                    self.metrics.evictions.inc();
                }
                TokenBucket::full(self.rate, now)
            }
        };
        let allowed = bucket.take(self.rate, now);
        let full_at = bucket.full_at(self.rate);
        table.buckets.insert(ip, (bucket, full_at));
        table.by_full_at.insert((full_at, ip));
        self.metrics.entries.set(i64::try_from(table.buckets.len()).unwrap_or(i64::MAX));
        allowed
    }

    /// A new table size (a reload): a smaller one evicts the fullest buckets down to it at once.
    pub fn resize(&self, max_entries: usize, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.max_entries = max_entries.max(1);
        while table.buckets.len() > table.max_entries {
            if table.evict_fullest(now) == Some(false) {
                self.metrics.evictions.inc();
            }
        }
        self.metrics.entries.set(i64::try_from(table.buckets.len()).unwrap_or(i64::MAX));
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.buckets.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: u32, burst: u32, max_entries: usize) -> RateLimiter {
        RateLimiter::new(rate, burst, max_entries, RateTableMetrics::default())
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = limiter(10, 5, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| limiter.allow(ip, t0)).count(), 5, "burst of 5");
        assert!(!limiter.allow(ip, t0 + Duration::from_millis(50)), "half a token after 50 ms");
        assert!(limiter.allow(ip, t0 + Duration::from_millis(110)), "one token after 100 ms");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.allow(other, t0), "another address has its own bucket");
    }

    #[test]
    fn full_buckets_are_dropped_as_time_goes_by() {
        let limiter = limiter(1, 1, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.allow(ip(i), t0));
        }
        assert_eq!(limiter.len(), 10);
        // Refilled after 1 s: each step drops two of them, so the table empties faster than it fills.
        let later = t0 + Duration::from_secs(2);
        for i in 100..104 {
            assert!(limiter.allow(ip(i), later));
        }
        assert_eq!(limiter.len(), 10 - 4 * DROPS_PER_STEP + 4);
        assert_eq!(limiter.metrics.evictions.get(), 0, "only full buckets were dropped");
    }

    #[test]
    fn a_full_table_of_live_buckets_admits_new_addresses_and_evicts_the_fullest() {
        let limiter = limiter(1, 10, 4);
        let t0 = Instant::now();
        // Address i spends i + 1 tokens: address 0 has the fullest bucket, address 3 the emptiest.
        for i in 0..4 {
            for _ in 0..=i {
                assert!(limiter.allow(ip(i), t0));
            }
        }
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.allow(ip(50), t1), "a new address gets in");
        assert_eq!(limiter.len(), 4, "the table does not grow");
        assert_eq!(limiter.metrics.evictions.get(), 1);
        let table = limiter.table.lock().unwrap();
        assert!(!table.buckets.contains_key(&ip(0)), "the fullest bucket went");
        assert!((1..4).all(|i| table.buckets.contains_key(&ip(i))), "the others stay");
    }

    #[test]
    fn an_evicted_address_comes_back_with_no_more_than_its_burst() {
        let limiter = limiter(1, 3, 1);
        let t0 = Instant::now();
        assert_eq!((0..5).filter(|_| limiter.allow(ip(1), t0)).count(), 3);
        assert!(limiter.allow(ip(2), t0), "evicts address 1");
        assert_eq!((0..10).filter(|_| limiter.allow(ip(1), t0)).count(), 3, "a fresh bucket: the burst, no more");
    }

    #[test]
    fn each_step_costs_the_same_however_full_the_table_is() {
        // 100,000 live buckets: every new address still gets in, evicting exactly one bucket, and the steps touch
        // no more than a few entries (the old table scanned all of them for each newcomer, then refused it).
        let limiter = limiter(1, 100, 100_000);
        let t0 = Instant::now();
        for i in 0..100_000 {
            assert!(limiter.allow(ip(i), t0) && limiter.allow(ip(i), t0));
        }
        for i in 0..1_000 {
            assert!(limiter.allow(ip(1_000_000 + i), t0), "newcomer {i}");
        }
        assert_eq!(limiter.len(), 100_000);
        assert_eq!(limiter.metrics.evictions.get(), 1_000, "one eviction per newcomer");
        assert_eq!(limiter.metrics.entries.get(), 100_000);
    }

    #[test]
    fn a_smaller_size_evicts_down_to_it() {
        let limiter = limiter(1, 5, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.allow(ip(i), t0));
        }
        limiter.resize(3, t0);
        assert_eq!(limiter.len(), 3);
        assert!(limiter.allow(ip(20), t0));
        assert_eq!(limiter.len(), 3);
    }
}
