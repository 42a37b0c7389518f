//! New connections per second per source IP: a [`TokenBucket`] per address, in a table of bounded size.
//!
//! Each address has a bucket of `burst` tokens refilled at `rate` per second; a new connection takes one token or
//! is refused. The table never holds more than `max_entries` addresses: when it is full, buckets that have refilled
//! completely (their address has been quiet for `burst / rate` seconds) are dropped, since a full bucket is the same
//! as no bucket; if none can be dropped, new addresses are refused until some can (a flood from very many
//! addresses then meets `max_connections` anyway).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::token_bucket::{Rate, TokenBucket};

/// Per-IP token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_entries: usize,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl RateLimiter {
    /// `rate` new connections per second per address, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32, max_entries: usize) -> RateLimiter {
        RateLimiter {
            rate: Rate::new(rate, burst),
            max_entries: max_entries.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip` at `now`; false if the address is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_entries {
            buckets.retain(|_, b| !b.is_full(self.rate, now));
            if buckets.len() >= self.max_entries {
                return false;
            }
        }
        buckets.entry(ip).or_insert_with(|| TokenBucket::full(self.rate, now)).take(self.rate, now)
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10, 5, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| limiter.allow(ip, t0)).count(), 5, "burst of 5");
        assert!(!limiter.allow(ip, t0 + Duration::from_millis(50)), "half a token after 50 ms");
        assert!(limiter.allow(ip, t0 + Duration::from_millis(110)), "one token after 100 ms");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.allow(other, t0), "another address has its own bucket");
    }

    #[test]
    fn table_stays_bounded() {
        let limiter = RateLimiter::new(1, 1, 10);
        let t0 = Instant::now();
        for i in 0..10u8 {
            assert!(limiter.allow(IpAddr::from([10, 0, 0, i]), t0));
        }
        // Full of fresh buckets: a new address is refused, the table does not grow.
        assert!(!limiter.allow(IpAddr::from([10, 0, 1, 0]), t0));
        assert_eq!(limiter.len(), 10);
        // Once the buckets have refilled, they are dropped and new addresses get in.
        assert!(limiter.allow(IpAddr::from([10, 0, 1, 0]), t0 + Duration::from_secs(2)));
        assert_eq!(limiter.len(), 1);
    }
}
