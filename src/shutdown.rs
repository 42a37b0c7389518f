//! Shutdown, in the order an operator sees it:
//!
//! 1. the first SIGTERM or SIGINT marks the process as stopping: `/readyz` answers 503 at once, while the listeners
//!    go on accepting and serving for `shutdown.grace`, so that keepalived, a cloud balancer or the Kubernetes
//!    endpoints controller moves traffic away before any client is refused;
//! 2. then the listeners stop accepting, MQTT 5 clients get their DISCONNECT, and open relays may go on until
//!    `shutdown.drain_timeout`;
//! 3. a second SIGTERM or SIGINT at any point closes every connection at once and ends the process (a hard stop).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::signal::Signal;

/// Where the process is in its shutdown; shared by the signal handler, the server and `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// Cancelled on the first stop request: readiness fails, the grace period starts.
    stopping: CancellationToken,
    /// Cancelled when the listeners stop accepting (after the grace period, or at once without a signal).
    draining: CancellationToken,
    /// Cancelled on the second: every connection is closed now.
    hard_stop: CancellationToken,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Starts a graceful stop (what the first SIGTERM does).
    pub fn begin_stop(&self) {
        self.stopping.cancel();
    }

    /// Closes every connection now (what the second SIGTERM does); implies [`Lifecycle::begin_stop`].
    pub fn hard_stop(&self) {
        self.stopping.cancel();
        self.hard_stop.cancel();
    }

    /// Whether a stop was requested: readiness must fail from this moment.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// The listeners stop accepting from now on; implies [`Lifecycle::begin_stop`].
    pub fn begin_drain(&self) {
        self.stopping.cancel();
        self.draining.cancel();
    }

    /// What `/readyz` says while stopping; None while serving.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if self.draining.is_cancelled() {
            Some("stopping: not accepting new connections, draining open ones")
        } else if self.stopping.is_cancelled() {
            Some("stopping: still accepting during shutdown.grace, then draining")
        } else {
            None
        }
    }

    /// Whether a hard stop was requested.
    pub fn is_hard_stop(&self) -> bool {
        self.hard_stop.is_cancelled()
    }

    /// Resolves when a stop is requested.
    pub async fn stop_requested(&self) {
        self.stopping.cancelled().await;
    }

    /// Resolves when a hard stop is requested.
    pub async fn hard_stop_requested(&self) {
        self.hard_stop.cancelled().await;
    }
}

/// The first SIGTERM/SIGINT begins a graceful stop of `lifecycle`, the second a hard stop. Returns after the second.
pub async fn handle_signals(lifecycle: Lifecycle) {
    let Some(mut signals) = StopSignals::install() else {
        warn!("cannot install signal handlers; only Ctrl-C stops the process");
        let _ = tokio::signal::ctrl_c().await;
        lifecycle.hard_stop();
        return;
    };
    let name = signals.next().await;
    info!("{name} received: not ready from now on; a second {name} stops at once");
    lifecycle.begin_stop();
    let name = signals.next().await;
    warn!("{name} received again: closing every connection now");
    lifecycle.hard_stop();
}

/// The two signals that stop the process.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Option<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(StopSignals { term: signal(SignalKind::terminate()).ok()?, int: signal(SignalKind::interrupt()).ok()? })
    }

    /// The name of the next one that arrives.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for every tracked task, up to `deadline`. Returns true if all finished in time.
pub async fn drain(tracker: &TaskTracker, deadline: Duration) -> bool {
    tracker.close();
    if tracker.is_empty() {
        return true;
    }
    info!(open = tracker.len(), "waiting up to {:?} for open connections", deadline);
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => {
            info!("all connections closed");
            true
        }
        Err(_) => {
            warn!(open = tracker.len(), "drain deadline reached; closing the remaining connections");
            false
        }
    }
}

/// The tasks of a running server, in the order they stop: accept loops (and `coap` listeners), then connections
/// (drained), then background work (probes, admin endpoint).
#[derive(Clone, Default)]
pub struct Tasks {
    /// Cancelled: listeners stop accepting, and the drain begins.
    pub shutdown: CancellationToken,
    pub accepts: TaskTracker,
    pub connections: TaskTracker,
    /// Cancelled past the drain deadline: the remaining connections close.
    pub close_sessions: Arc<Signal>,
    pub background: TaskTracker,
    pub stop_background: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks { shutdown, ..Tasks::default() }
    }

    /// Stops accepting, drains open connections up to `drain_timeout` (then closes them; at once on a hard stop of
    /// `lifecycle`), then stops the background tasks (giving them two seconds, none on a hard stop).
    pub async fn stop(&self, drain_timeout: Duration, lifecycle: &Lifecycle) {
        self.shutdown.cancel();
        self.accepts.close();
        self.accepts.wait().await;
        // Closed here, not only inside `drain`: a hard stop may win the race before `drain` is first polled.
        self.connections.close();
        let drained = tokio::select! {
            drained = drain(&self.connections, drain_timeout) => drained,
            () = lifecycle.hard_stop_requested() => false,
        };
        if !drained {
            self.close_sessions.fire();
            self.connections.wait().await;
        }
        self.stop_background.cancel();
        self.background.close();
        let linger = if lifecycle.is_hard_stop() { Duration::ZERO } else { Duration::from_secs(2) };
        let _ = tokio::time::timeout(linger, self.background.wait()).await;
    }
}
