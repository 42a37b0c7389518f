//! The accept loop of one listener: admission limits, then one task per connection, spawned before any handshake
//! so that a slow client never stalls accepts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
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
///
/// The limits are replaced by a reload; the counts are not: a successor ([`Admission::successor`]) shares the open
/// connections, the per-IP counts and, while the rate is the same, the per-IP rate buckets, so that a reload never
/// lets an address past its limit.
pub struct Admission {
    max_connections: usize,
    /// Client connections open now, every listener together.
    open: Arc<AtomicUsize>,
    per_ip_max: usize,
    per_ip: Arc<PerIpCounts>,
    rate: Option<Arc<RateLimiter>>,
    /// (rate, burst) of `rate`, to tell whether a successor can keep its buckets.
    rate_settings: (u32, u32),
}

/// Open client connections per source address (addresses with none are removed).
type PerIpCounts = Mutex<HashMap<IpAddr, usize>>;

/// Addresses the per-IP rate limiter remembers at most (a bounded table; see [`RateLimiter`]).
const RATE_TABLE_SIZE: usize = 100_000;

/// A connection's place in the limits, released on drop (into the counts its admission shares with successors).
pub struct AdmissionTicket {
    open: Arc<AtomicUsize>,
    ip: Option<(IpAddr, Arc<PerIpCounts>)>,
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some((ip, per_ip)) = self.ip.take() {
            let mut map = per_ip.lock().unwrap_or_else(|p| p.into_inner());
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
        Arc::new(Admission::with_counts(limits, Arc::default(), Arc::default(), None))
    }

    /// The admission of `limits` after a reload: the counts of this one go on (see [`Admission`]); the rate buckets
    /// too, unless the rate or the burst changed (then every address starts with a full bucket of the new size).
    pub fn successor(&self, limits: &Limits) -> Arc<Admission> {
        let same_rate = rate_settings(limits) == self.rate_settings;
        let rate = if same_rate { self.rate.clone() } else { None };
        Arc::new(Admission::with_counts(limits, Arc::clone(&self.open), Arc::clone(&self.per_ip), rate))
    }

    fn with_counts(
        limits: &Limits,
        open: Arc<AtomicUsize>,
        per_ip: Arc<PerIpCounts>,
        rate: Option<Arc<RateLimiter>>,
    ) -> Admission {
        let (per_second, burst) = rate_settings(limits);
        let rate =
            rate.or_else(|| (per_second > 0).then(|| Arc::new(RateLimiter::new(per_second, burst, RATE_TABLE_SIZE))));
        Admission {
            max_connections: limits.max_connections,
            open,
            per_ip_max: limits.max_connections_per_ip,
            per_ip,
            rate,
            rate_settings: (per_second, burst),
        }
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(&self, ip: IpAddr) -> Result<AdmissionTicket, Reject> {
        if let Some(rate) = &self.rate {
            if !rate.allow(ip, std::time::Instant::now()) {
                return Err(Reject::RateLimited);
            }
        }
        let max = if self.max_connections == 0 { usize::MAX } else { self.max_connections };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Reject::MaxConnections)?;
        // From here the ticket owns the place it took in `open`.
        let mut ticket = AdmissionTicket { open: Arc::clone(&self.open), ip: None };
        if self.per_ip_max > 0 {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_ip_max {
                return Err(Reject::MaxConnectionsPerIp);
            }
            *n += 1;
            ticket.ip = Some((ip, Arc::clone(&self.per_ip)));
        }
        Ok(ticket)
    }
}

/// `(max_connection_rate_per_ip, connection_rate_burst)` of `limits`.
fn rate_settings(limits: &Limits) -> (u32, u32) {
    (limits.max_connection_rate_per_ip, limits.connection_rate_burst)
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
