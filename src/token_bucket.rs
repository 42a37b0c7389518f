//! A token bucket: up to `burst` tokens, refilled continuously at `per_second`; each event takes one token or is
//! refused. The per-IP new-connection rate ([`crate::rate_limit`]), the per-flow datagram rate of coap
//! listeners ([`crate::udp`]) and a server's `max_connection_rate` ([`crate::balancer::gate`], which waits for
//! the next token instead of refusing) all count with it.
//!
//! The bucket holds no rate of its own: the caller passes the current [`Rate`] at each step, so a reload's new
//! limits apply to buckets that already exist.

use std::time::{Duration, Instant};

/// How fast tokens come back and how many a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `per_second` tokens a second, at most `burst` held. Both are at least 1 (a bucket of 0 would refuse all).
    pub fn new(per_second: u32, burst: u32) -> Rate {
        Rate { per_second: f64::from(per_second.max(1)), burst: f64::from(burst.max(1)) }
    }
}

/// The tokens left at the last step, and when that was.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A bucket with every token in it: a newcomer may burst at once.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { tokens: rate.burst, updated: now }
    }

    /// Takes a token at `now`; false if none is left (the refill up to `now` still counts).
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let tokens = self.refilled(rate, now);
        self.updated = now;
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }

    /// Whether the bucket has refilled completely by `now`: it is then the same as a new one, and may be dropped.
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.refilled(rate, now) >= rate.burst
    }

    /// When the bucket will have refilled completely (the past if it already has). Ordering buckets of one rate by
    /// this instant orders them by how full they are at any moment, the fullest first.
    pub fn full_at(&self, rate: Rate) -> Instant {
        let missing = ((rate.burst - self.tokens) / rate.per_second).max(0.0);
        let wait = std::time::Duration::try_from_secs_f64(missing).unwrap_or_default();
        self.updated.checked_add(wait).unwrap_or(self.updated)
    }

    /// How long from `now` until a token is there (zero if one is).
    pub fn until_next(&self, rate: Rate, now: Instant) -> Duration {
        let missing = 1.0 - self.refilled(rate, now);
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / rate.per_second)
    }

    fn refilled(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let rate = Rate::new(10, 2);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!(b.take(rate, t0));
        assert!(b.take(rate, t0));
        assert!(!b.take(rate, t0), "a burst of 2");
        assert!(!b.take(rate, t0 + Duration::from_millis(50)), "half a token after 50 ms");
        assert!(b.take(rate, t0 + Duration::from_millis(100)), "10/s: one token after 100 ms");
        assert!(!b.take(rate, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let rate = Rate::new(100, 3);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!(b.take(rate, t0));
        assert!(!b.is_full(rate, t0));
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(rate, later));
        assert_eq!((0..10).filter(|_| b.take(rate, later)).count(), 3, "a minute of quiet still gives only the burst");
    }

    #[test]
    fn full_at_is_when_the_refill_reaches_the_burst() {
        let rate = Rate::new(4, 8);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!(b.full_at(rate), t0, "a full bucket is full now");
        assert!(b.take(rate, t0) && b.take(rate, t0));
        let full = b.full_at(rate);
        assert_eq!(full, t0 + Duration::from_millis(500), "2 tokens at 4/s");
        assert!(!b.is_full(rate, full - Duration::from_millis(1)) && b.is_full(rate, full));
    }

    #[test]
    fn until_next_says_when_the_next_token_comes() {
        let rate = Rate::new(4, 1);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!(b.until_next(rate, t0), Duration::ZERO);
        assert!(b.take(rate, t0));
        let wait = b.until_next(rate, t0 + Duration::from_millis(100));
        assert!(wait > Duration::from_millis(149) && wait <= Duration::from_millis(150), "{wait:?}");
        assert!(b.take(rate, t0 + Duration::from_millis(250)), "a token a quarter second after the last");
    }

    #[test]
    fn zero_means_one() {
        let rate = Rate::new(0, 0);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!(b.take(rate, t0), "a burst of at least 1");
        assert!(!b.take(rate, t0));
        assert!(b.take(rate, t0 + Duration::from_secs(1)), "a rate of at least 1/s");
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let rate = Rate::new(1, 1);
        let t1 = Instant::now() + Duration::from_secs(5);
        let mut b = TokenBucket::full(rate, t1);
        assert!(b.take(rate, t1));
        assert!(!b.take(rate, t1 - Duration::from_secs(3)));
    }
}
