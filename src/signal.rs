//! A notifier for events that almost never come (the drain deadline passed, a server taken down with `on_down:
//! close`), awaited beside a relay that is polled for every packet it moves.
//!
//! tokio's `Notified` (and tokio-util's cancellation future, built on it) takes its notifier's lock on every poll
//! while it waits, and these notifiers are shared by every connection (of the process, of a server): each wake of
//! each relay would take two locks all relays contend for. A [`Signal`] counts how often it fired; its waiter
//! registers the task once and afterwards looks at that count (one atomic load) on each poll.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Signal {
    /// How many times it fired.
    fired: AtomicU64,
    notify: Notify,
}

impl Signal {
    /// Wakes every waiter.
    pub fn fire(&self) {
        // Counted before the wake-up, so that a waiter woken sees the count moved.
        self.fired.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Whether it ever fired.
    pub fn has_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire) > 0
    }

    /// Resolves at the next [`Signal::fire`] from now.
    pub fn next(&self) -> impl Future<Output = ()> + '_ {
        self.after(self.fired.load(Ordering::Acquire))
    }

    /// Resolves once it has fired at all (at once if it already has).
    pub fn fired(&self) -> impl Future<Output = ()> + '_ {
        self.after(0)
    }

    /// Resolves once it has fired more than `count` times in all. The waiter keeps the waker of its first poll:
    /// await it in place, in one task (as a `select!` branch is), not through a combinator that changes wakers.
    async fn after(&self, count: u64) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if !registered {
                registered = true;
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            // Looked at after the registration: a fire between the count above and the registration is seen here.
            if self.fired.load(Ordering::Acquire) > count {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_by_the_next_fire_and_a_latch_by_any() {
        let signal = Arc::new(Signal::default());
        let next = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.next().await }
        });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), next).await.unwrap().unwrap();
        assert!(signal.has_fired());
        // Created after the fire: `next` waits for another one, `fired` does not.
        let later = tokio::time::timeout(Duration::from_millis(100), signal.next()).await;
        assert!(later.is_err());
        tokio::time::timeout(Duration::from_secs(5), signal.fired()).await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_task_polled_often_still_sees_the_fire() {
        // The waiter beside a future that wakes its task on every poll, as a busy relay does.
        let signal = Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move {
                let mut polls = 0u64;
                let busy = std::future::poll_fn(|cx| {
                    polls += 1;
                    cx.waker().wake_by_ref();
                    Poll::<()>::Pending
                });
                tokio::select! {
                    biased;
                    () = busy => unreachable!(),
                    () = signal.fired() => {}
                }
                polls
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        signal.fire();
        let polls = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(polls > 1);
    }
}
