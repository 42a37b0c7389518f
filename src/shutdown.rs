//! Shutdown: SIGTERM or SIGINT stops the accept loops; open relays may go on until `shutdown.drain_timeout`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received: draining"),
                    _ = int.recv() => info!("SIGINT received: draining"),
                }
            }
            _ => {
                warn!("cannot install signal handlers; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
    pub close_sessions: CancellationToken,
    pub background: TaskTracker,
    pub stop_background: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks { shutdown, ..Tasks::default() }
    }

    /// Stops accepting, drains open connections up to `drain_timeout` (then closes them), then stops the background
    /// tasks (giving them two seconds).
    pub async fn stop(&self, drain_timeout: Duration) {
        self.shutdown.cancel();
        self.accepts.close();
        self.accepts.wait().await;
        if !drain(&self.connections, drain_timeout).await {
            self.close_sessions.cancel();
            self.connections.wait().await;
        }
        self.stop_background.cancel();
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.background.wait()).await;
    }
}
