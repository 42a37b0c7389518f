//! Places in use against a limit that a reload may change, with a wake-up whenever one is given back: what the
//! accept loops wait on while mqtt-lb is full (`limits.max_connections`) or busy with handshakes
//! (`limits.max_handshakes`). A listener that waits does not call `accept`, so new clients wait in the kernel's
//! accept queue instead of being accepted and reset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// A count of places taken, shared by every listener (and carried over reloads).
#[derive(Debug, Default)]
pub struct Slots {
    taken: AtomicUsize,
    /// Woken when a place is given back, or when the limit may have changed ([`Slots::wake_all`]).
    freed: Notify,
}

/// One place taken, given back on drop; the gauge it was counted in, if any, goes down with it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    gauge: Option<Gauge>,
}

/// `max` as a bound: 0 means unlimited.
fn bound(max: usize) -> usize {
    if max == 0 {
        usize::MAX
    } else {
        max
    }
}

impl Slots {
    /// Takes a place if fewer than `max` (0: unlimited) are taken.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let max = bound(max);
        self.taken.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot { slots: Arc::clone(self), gauge: None })
    }

    /// Whether a place is free under `max` (0: unlimited).
    pub fn has_room(&self, max: usize) -> bool {
        self.taken.load(Ordering::Acquire) < bound(max)
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// A wake-up for the next place given back. Enable it (or poll it) before checking [`Slots::has_room`], so
    /// that a place given back in between is not missed.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// Wakes every waiter: the limit changed (a reload), they must look again.
    pub fn wake_all(&self) {
        self.freed.notify_waiters();
    }
}

impl Slot {
    /// Counts the place in `gauge` until it is given back.
    pub fn counted_in(mut self, gauge: Gauge) -> Slot {
        gauge.inc();
        self.gauge = Some(gauge);
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.taken.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_up_to_the_limit_and_gives_back_on_drop() {
        let slots = Arc::new(Slots::default());
        let a = slots.try_take(2).unwrap();
        let _b = slots.try_take(2).unwrap();
        assert!(slots.try_take(2).is_none() && !slots.has_room(2));
        assert!(slots.try_take(3).is_some(), "a higher limit (after a reload) applies at once");
        drop(a);
        assert_eq!(slots.taken(), 1);
        assert!(slots.has_room(2) && slots.has_room(0), "0 is unlimited");
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_a_place_is_given_back() {
        let slots = Arc::new(Slots::default());
        let gauge = Gauge::default();
        let held = slots.try_take(1).unwrap().counted_in(gauge.clone());
        assert_eq!(gauge.get(), 1);
        let waiter = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move {
                loop {
                    let freed = slots.freed();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if let Some(slot) = slots.try_take(1) {
                        return slot;
                    }
                    freed.await;
                }
            })
        };
        tokio::task::yield_now().await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!((slots.taken(), gauge.get()), (1, 0));
        drop(got);
    }
}
