//! New connections per second per source IP: a token bucket per address, in a table of bounded size.
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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-IP token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_entries: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `rate` new connections per second per address, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32, max_entries: usize) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            max_entries: max_entries.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip` at `now`; false if the address is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&ip) && buckets.len() >= self.max_entries {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
            if buckets.len() >= self.max_entries {
                return false;
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket { tokens: self.burst, updated: now });
        let tokens = refilled(bucket, now, self.rate, self.burst);
        bucket.updated = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refilled(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
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
