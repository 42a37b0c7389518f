//! A server's caps (`servers[].max_connections`, `servers[].max_connection_rate`) and the bounded queue of clients
//! waiting for them.
//!
//! A client whose chosen server is at a cap waits here, first come first served, until the server has a free slot
//! and, with a rate, until its next connection token: the rate is one new connection every `1 / rate` seconds (a
//! bucket of one token), so the server never sees more than `rate` new connections in any one second. The wait is
//! bounded by the backend's `max_queue` (beyond it a client is refused at once) and by a deadline the session
//! gives (`queue_timeout`, and the client's own connect deadline). A client is never sent to another server from
//! here: that would break placement by client id.
//!
//! The head of the queue holds `turn` while it waits for a slot and then a token; the others wait for `turn` in
//! the order they came (tokio's mutex is fair). The count of open relays ([`Slots`]) is shared with the successor of
//! a server at the same address (reload), so a new `max_connections` applies to the relays already open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::ServerMetrics;
pub use crate::slots::{Slot, Slots};
use crate::token_bucket::{Rate, TokenBucket};

/// Why a client did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_queue` clients were waiting already.
    QueueFull,
    /// The deadline passed while the client waited.
    Timeout,
}

/// A slot if fewer than `max` are taken (None: no cap).
fn try_take(slots: &Arc<Slots>, max: Option<usize>) -> Option<Slot> {
    // `max_connections: 0` is refused by `check`, so 0 (unlimited for [`Slots`]) only ever stands for "no cap".
    slots.try_take(max.unwrap_or(0))
}

/// A slot, as soon as one is free.
async fn take(slots: &Arc<Slots>, max: Option<usize>) -> Slot {
    loop {
        // Registered before the check, so a slot given back in between still wakes us.
        let freed = slots.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(slot) = try_take(slots, max) {
            return slot;
        }
        freed.await;
    }
}

/// The caps of one server and its queue.
#[derive(Debug)]
pub struct Gate {
    max_connections: Option<usize>,
    rate: Option<Rate>,
    /// Held by the head of the queue; the rate's bucket (a token every `1 / rate` s) is inside.
    turn: tokio::sync::Mutex<Option<TokenBucket>>,
    /// Clients in the queue now (the head included).
    waiting: AtomicUsize,
    slots: Arc<Slots>,
    metrics: ServerMetrics,
}

impl Gate {
    /// A gate with these caps counting in `slots` (a fresh count, or the one of the server it succeeds).
    pub fn new(
        max_connections: Option<usize>,
        max_connection_rate: Option<u32>,
        slots: Arc<Slots>,
        metrics: ServerMetrics,
    ) -> Gate {
        // A bucket of one: tokens are evenly spaced, so no one-second window holds more than `rate` of them.
        let rate = max_connection_rate.map(|r| Rate::new(r, 1));
        let bucket = rate.map(|r| TokenBucket::full(r, std::time::Instant::now()));
        Gate {
            max_connections,
            rate,
            turn: tokio::sync::Mutex::new(bucket),
            waiting: AtomicUsize::new(0),
            slots,
            metrics,
        }
    }

    /// The count of open relays, for a successor at the same address.
    pub fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    /// Whether the server has a cap at all (an uncapped server never queues).
    pub fn capped(&self) -> bool {
        self.max_connections.is_some() || self.rate.is_some()
    }

    /// Clients waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot now, without waiting: when nobody is queued, a slot is free and (with a rate) a token is there.
    /// Clients falling through to a server other than their chosen one (after a connect error) only take this.
    pub fn try_admit(&self) -> Option<Slot> {
        if !self.capped() {
            return try_take(&self.slots, None);
        }
        if self.waiting() > 0 {
            return None;
        }
        let mut bucket = self.turn.try_lock().ok()?;
        let slot = try_take(&self.slots, self.max_connections)?;
        if let (Some(rate), Some(b)) = (self.rate, bucket.as_mut()) {
            if !b.take(rate, std::time::Instant::now()) {
                return None;
            }
        }
        Some(slot)
    }

    /// A slot, waiting in the queue (at most `max_queue` clients long) until `deadline` if the server is at a cap.
    pub async fn admit(&self, max_queue: usize, deadline: Instant) -> Result<Slot, Refused> {
        if let Some(slot) = self.try_admit() {
            if self.capped() {
                self.metrics.queue_wait_seconds.observe(0.0);
            }
            return Ok(slot);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.queue_full.inc();
            return Err(Refused::QueueFull);
        }
        self.metrics.queued.inc();
        let start = Instant::now();
        let admitted = tokio::time::timeout_at(deadline, self.wait_turn()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queued.dec();
        self.metrics.queue_wait_seconds.observe(start.elapsed().as_secs_f64());
        admitted.map_err(|_| {
            self.metrics.queue_timeouts.inc();
            Refused::Timeout
        })
    }

    /// At the head of the queue: a free slot, then the next token.
    async fn wait_turn(&self) -> Slot {
        let mut bucket = self.turn.lock().await;
        let slot = take(&self.slots, self.max_connections).await;
        if let (Some(rate), Some(b)) = (self.rate, bucket.as_mut()) {
            loop {
                let now = std::time::Instant::now();
                if b.take(rate, now) {
                    break;
                }
                // At least a millisecond: the timer's resolution, so a rounding never spins.
                tokio::time::sleep(b.until_next(rate, now).max(Duration::from_millis(1))).await;
            }
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn gate(max: Option<usize>, rate: Option<u32>) -> Gate {
        Gate::new(max, rate, Arc::default(), Metrics::new().server("b", "s"))
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn a_full_server_queues_then_admits_when_a_slot_is_given_back() {
        let g = gate(Some(1), None);
        let first = g.admit(10, soon(10)).await.expect("a free slot");
        assert_eq!(g.admit(10, soon(20)).await.err(), Some(Refused::Timeout));
        let (second, ()) = tokio::join!(g.admit(10, soon(2000)), async { drop(first) });
        assert!(second.is_ok());
        assert_eq!(g.slots().taken(), 1);
    }

    #[tokio::test]
    async fn beyond_max_queue_is_refused_at_once() {
        let g = gate(Some(1), None);
        let _held = g.admit(1, soon(10)).await.expect("a free slot");
        let waiting = g.admit(1, soon(200));
        let refused = async {
            tokio::task::yield_now().await;
            g.admit(1, soon(2000)).await.err()
        };
        let (waited, refused) = tokio::join!(waiting, refused);
        assert_eq!(refused, Some(Refused::QueueFull));
        assert_eq!(waited.err(), Some(Refused::Timeout));
        assert_eq!(g.admit(0, soon(10)).await.err(), Some(Refused::QueueFull), "max_queue 0: no waiting");
    }

    #[tokio::test]
    async fn the_rate_spaces_admissions() {
        let g = gate(None, Some(20));
        let start = Instant::now();
        for _ in 0..4 {
            let _slot = g.admit(10, soon(2000)).await.expect("admitted");
        }
        // The first at once, then one every 50 ms.
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    }

    #[test]
    fn an_uncapped_server_always_admits_and_counts() {
        let g = gate(None, None);
        let slots: Vec<Slot> = (0..3).filter_map(|_| g.try_admit()).collect();
        assert_eq!(slots.len(), 3);
        assert_eq!(g.slots().taken(), 3);
        drop(slots);
        assert_eq!(g.slots().taken(), 0);
    }
}
