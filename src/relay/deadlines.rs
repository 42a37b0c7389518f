//! The two deadlines that may end a relay, on one timer: the idle timeout (no byte either way) and the keep-alive
//! deadline (no byte from the client for the window in force, [`super::keep_alive`]). The timer is set to whichever
//! comes first and, when it fires, both are looked at again from the last bytes seen: a relay that moves bytes
//! pushes its deadlines on without touching the timer until it fires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::keep_alive::Window;
use super::RelayEnd;

/// When each side last sent a byte: milliseconds from `start`.
pub(super) struct Activity<'a> {
    pub start: Instant,
    pub client: &'a AtomicU64,
    pub server: &'a AtomicU64,
}

impl Activity<'_> {
    fn at(&self, last: &AtomicU64) -> Instant {
        self.start + Duration::from_millis(last.load(Ordering::Relaxed))
    }
}

/// The keep-alive deadline's window, and whether the broker's CONNACK may still change it (MQTT 5).
pub(super) struct KeepAliveWindow<'a> {
    pub window: &'a Window,
    pub may_change: bool,
}

/// Resolves with [`RelayEnd::Idle`] once no byte moved either way for `idle` (zero: never), or with
/// [`RelayEnd::KeepAlive`] once the client sent nothing for the keep-alive window in force.
pub(super) async fn watch(activity: Activity<'_>, idle: Duration, keep_alive: Option<KeepAliveWindow<'_>>) -> RelayEnd {
    let timer = tokio::time::sleep_until(activity.start);
    tokio::pin!(timer);
    loop {
        // Listening before looking: a window the CONNACK sets after the look below wakes the wait.
        let changed = keep_alive.as_ref().filter(|k| k.may_change).map(|k| k.window.changed());
        tokio::pin!(changed);
        if let Some(changed) = changed.as_mut().as_pin_mut() {
            changed.enable();
        }
        let now = Instant::now();
        let idle_at = (!idle.is_zero()).then(|| activity.at(activity.client).max(activity.at(activity.server)) + idle);
        if idle_at.is_some_and(|at| now >= at) {
            return RelayEnd::Idle;
        }
        let keep_alive_at = keep_alive.as_ref().and_then(|k| k.window.get()).map(|w| activity.at(activity.client) + w);
        if keep_alive_at.is_some_and(|at| now >= at) {
            return RelayEnd::KeepAlive;
        }
        let next = match (idle_at, keep_alive_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(next) = next.filter(|&next| next != timer.deadline() || timer.is_elapsed()) {
            timer.as_mut().reset(next);
        }
        match (next, changed.as_pin_mut()) {
            (Some(_), Some(changed)) => tokio::select! {
                biased;
                () = timer.as_mut() => {}
                () = changed => {}
            },
            (Some(_), None) => timer.as_mut().await,
            (None, Some(changed)) => changed.await,
            (None, None) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elapsed_ms(start: Instant) -> u64 {
        u64::try_from(start.elapsed().as_millis()).unwrap()
    }

    #[tokio::test]
    async fn the_keep_alive_deadline_fires_after_the_window_of_silence_and_a_byte_moves_it() {
        // With a fixed window (3.1.1) and with one a CONNACK may still change (5).
        for may_change in [false, true] {
            let window = Window::new(Some(Duration::from_secs(1)));
            let (client, server) = (AtomicU64::new(0), AtomicU64::new(0));
            let start = Instant::now();
            let watching = || {
                let activity = Activity { start, client: &client, server: &server };
                watch(activity, Duration::ZERO, Some(KeepAliveWindow { window: &window, may_change }))
            };
            let early = tokio::time::timeout(Duration::from_millis(500), watching()).await;
            assert!(early.is_err(), "not before the window");
            client.store(elapsed_ms(start), Ordering::Relaxed);
            let moved = tokio::time::timeout(Duration::from_millis(600), watching()).await;
            assert!(moved.is_err(), "a byte moves the deadline");
            let end = tokio::time::timeout(Duration::from_secs(5), watching()).await.unwrap();
            assert!(matches!(end, RelayEnd::KeepAlive), "{end:?}");
            assert!(start.elapsed() >= Duration::from_millis(1500));
        }
    }

    #[tokio::test]
    async fn the_first_deadline_ends_the_watch_and_server_bytes_move_only_the_idle_one() {
        let window = Window::new(Some(Duration::from_millis(1200)));
        let (client, server) = (AtomicU64::new(0), AtomicU64::new(0));
        let start = Instant::now();
        let watching = |idle| {
            let activity = Activity { start, client: &client, server: &server };
            watch(activity, idle, Some(KeepAliveWindow { window: &window, may_change: false }))
        };
        // Idle first: 400 ms of silence either way.
        let end = tokio::time::timeout(Duration::from_secs(5), watching(Duration::from_millis(400))).await.unwrap();
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
        assert!(start.elapsed() >= Duration::from_millis(400) && start.elapsed() < Duration::from_millis(1200));
        // The server keeps talking, from now on (before the watch first looks): the idle deadline moves on, the
        // client's keep-alive one does not.
        server.store(elapsed_ms(start), Ordering::Relaxed);
        let talking = async {
            loop {
                server.store(elapsed_ms(start), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let end = tokio::select! {
            biased;
            end = watching(Duration::from_millis(400)) => end,
            () = talking => unreachable!(),
        };
        assert!(matches!(end, RelayEnd::KeepAlive), "{end:?}");
        assert!(start.elapsed() >= Duration::from_millis(1200));
    }

    #[tokio::test]
    async fn a_window_the_connack_sets_is_followed() {
        let window = Window::new(Some(Duration::from_secs(60)));
        let (client, server) = (AtomicU64::new(0), AtomicU64::new(0));
        let start = Instant::now();
        let activity = Activity { start, client: &client, server: &server };
        let watching = watch(activity, Duration::ZERO, Some(KeepAliveWindow { window: &window, may_change: true }));
        tokio::pin!(watching);
        let early = tokio::time::timeout(Duration::from_millis(100), watching.as_mut()).await;
        assert!(early.is_err());
        window.set(Some(Duration::from_millis(300)));
        let end = tokio::time::timeout(Duration::from_secs(5), watching).await.unwrap();
        assert!(matches!(end, RelayEnd::KeepAlive), "{end:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
