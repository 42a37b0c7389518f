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
use tracing::{debug, error, info, Instrument};

use crate::config::source_allowed;
use crate::config::Limits;
use crate::rate_limit::RateLimiter;
use crate::session::reject::Reject;
use crate::session::{connection_span, Session, SessionContext};
use arc_swap::ArcSwap;

/// Admission limits shared by every listener: connections overall and per source IP.
pub struct Admission {
    total: Option<Arc<Semaphore>>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rate: Option<RateLimiter>,
}

/// Addresses the per-IP rate limiter remembers at most (a bounded table; see [`RateLimiter`]).
const RATE_TABLE_SIZE: usize = 100_000;

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
    /// The admission rules of `limits`: connections overall, per IP, and new connections per second per IP.
    pub fn from_limits(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            total: (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections))),
            per_ip_max: limits.max_connections_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            rate: (limits.max_connection_rate_per_ip > 0).then(|| {
                RateLimiter::new(limits.max_connection_rate_per_ip, limits.connection_rate_burst, RATE_TABLE_SIZE)
            }),
        })
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AdmissionTicket, Reject> {
        if let Some(rate) = &self.rate {
            if !rate.allow(ip, std::time::Instant::now()) {
                return Err(Reject::RateLimited);
            }
        }
        let permit = match &self.total {
            None => None,
            Some(s) => Some(Arc::clone(s).try_acquire_owned().map_err(|_| Reject::MaxConnections)?),
        };
        let ip = if self.per_ip_max > 0 {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_ip_max {
                return Err(Reject::MaxConnectionsPerIp);
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
    current: Arc<ArcSwap<SessionContext>>,
    admission: Arc<ArcSwap<Admission>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    close: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    let name = current.load().name.clone();
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
                error!(listener = %name, error = %e, "accept failed; retrying in {:?}", backoff);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // The settings of the moment (a reload swaps them; sessions keep the ones they started with).
        let ctx = current.load_full();
        ctx.listener_metrics.accepted.inc();
        let span = connection_span(&ctx.name, peer);
        let admitted = if source_allowed(&ctx.allowed_sources, peer.ip()) {
            admission.load().admit(peer.ip())
        } else {
            Err(Reject::SourceNotAllowed)
        };
        let ticket = match admitted {
            Ok(t) => t,
            Err(reject) => {
                span.in_scope(|| debug!(reason = reject.label(), "connection refused at accept"));
                reject.count(&ctx.metrics, &ctx.name);
                drop(stream);
                continue;
            }
        };
        let close = close.clone();
        let session = async move {
            // The admission ticket is held for as long as the session runs.
            let _ticket = ticket;
            // Past the drain deadline `close` fires: dropping the session closes both of its sockets.
            tokio::select! {
                () = Session::new(ctx, peer).run(stream) => {}
                () = close.cancelled() => {}
            }
        };
        tracker.spawn(session.instrument(span));
    }
    info!(listener = %name, "stopped accepting");
}
