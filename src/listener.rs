//! The accept loop of one listener: admission limits, then one task per connection, spawned before any handshake
//! so that a slow client never stalls accepts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use crate::config::source_allowed;
use crate::session::{Session, SessionContext};

/// Admission limits shared by every listener: connections overall and per source IP.
pub struct Admission {
    total: Option<Arc<Semaphore>>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in the limits, released on drop.
pub struct AdmissionTicket {
    _permit: Option<OwnedSemaphorePermit>,
    ip: Option<(IpAddr, Arc<Admission>)>,
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        if let Some((ip, admission)) = self.ip.take() {
            let mut map = admission.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// `max_connections` / `max_connections_per_ip`: 0 means unlimited.
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            per_ip_max: max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AdmissionTicket, &'static str> {
        let permit = match &self.total {
            None => None,
            Some(s) => Some(Arc::clone(s).try_acquire_owned().map_err(|_| "max_connections")?),
        };
        let ip = if self.per_ip_max > 0 {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_ip_max {
                return Err("max_connections_per_ip");
            }
            *n += 1;
            Some((ip, Arc::clone(self)))
        } else {
            None
        };
        Ok(AdmissionTicket { _permit: permit, ip })
    }
}

/// Accepts until `shutdown`; each connection runs as a task in `tracker` until it ends or `close` is cancelled.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    admission: Arc<Admission>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    close: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the listener stays open.
                error!(listener = %ctx.name, error = %e, "accept failed; retrying in {:?}", backoff);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        ctx.listener_metrics.accepted.inc();
        if !source_allowed(&ctx.allowed_sources, peer.ip()) {
            debug!(listener = %ctx.name, %peer, "source address not allowed; closed at accept");
            ctx.metrics.reject(&ctx.name, "source_not_allowed");
            drop(stream);
            continue;
        }
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(reason) => {
                debug!(listener = %ctx.name, %peer, reason, "connection refused at accept");
                ctx.metrics.reject(&ctx.name, reason);
                drop(stream);
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let close = close.clone();
        tracker.spawn(async move {
            // Past the drain deadline `close` fires: dropping the session closes both of its sockets.
            tokio::select! {
                () = Session::new(ctx, peer, ticket).run(stream) => {}
                () = close.cancelled() => {}
            }
        });
    }
    info!(listener = %ctx.name, "stopped accepting");
}
