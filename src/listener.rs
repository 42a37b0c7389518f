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
use crate::rate_limit::{RateLimiter, RateTableMetrics};
use crate::session::reject::Reject;
use crate::session::{connection_span, Session, SessionContext};
use arc_swap::ArcSwap;

/// Admission limits shared by every listener: connections overall and per source IP.
///
/// The limits are replaced by a reload; the counts are not: a successor ([`Admission::successor`]) shares the open
/// connections, the per-IP counts and, while the rate is the same, the per-IP rate buckets, so that a reload never
/// lets an address past its limit.
///
/// A connection from a listener's `trusted_proxies` is admitted in two steps: at accept against `max_connections`
/// only ([`Admission::admit_proxy`]: the proxy carries many clients, and its header phase is bounded by that and by
/// `handshake_timeout`), then, once its PROXY header names the client, against the per-IP limits of that client
/// ([`Admission::admit_client`]).
pub struct Admission {
    max_connections: usize,
    /// Client connections open now, every listener together.
    open: Arc<AtomicUsize>,
    per_ip_max: usize,
    per_ip: Arc<PerIpCounts>,
    rate: Option<Arc<RateLimiter>>,
    /// (rate, burst) of `rate`, to tell whether a successor can keep its buckets.
    rate_settings: (u32, u32),
    rate_table: RateTableMetrics,
}

/// Open client connections per source address. Addresses with none are removed, so the table holds no more
/// addresses than there are connections open, and each step is one hash look-up.
type PerIpCounts = Mutex<HashMap<IpAddr, usize>>;

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
    /// The admission rules of `limits`: connections overall, per IP, and new connections per second per IP (its
    /// table shown in `rate_table`).
    pub fn from_limits(limits: &Limits, rate_table: RateTableMetrics) -> Arc<Admission> {
        Arc::new(Admission::with_counts(limits, Arc::default(), Arc::default(), None, rate_table))
    }

    /// The admission of `limits` after a reload: the counts of this one go on (see [`Admission`]); the rate buckets
    /// too, unless the rate or the burst changed (then every address starts with a full bucket of the new size).
    pub fn successor(&self, limits: &Limits) -> Arc<Admission> {
        let same_rate = rate_settings(limits) == self.rate_settings;
        let rate = if same_rate { self.rate.clone() } else { None };
        if let Some(rate) = &rate {
            rate.resize(limits.connection_rate_table_size, std::time::Instant::now());
        }
        let (open, per_ip) = (Arc::clone(&self.open), Arc::clone(&self.per_ip));
        Arc::new(Admission::with_counts(limits, open, per_ip, rate, self.rate_table.clone()))
    }

    fn with_counts(
        limits: &Limits,
        open: Arc<AtomicUsize>,
        per_ip: Arc<PerIpCounts>,
        rate: Option<Arc<RateLimiter>>,
        rate_table: RateTableMetrics,
    ) -> Admission {
        let (per_second, burst) = rate_settings(limits);
        let size = limits.connection_rate_table_size;
        let new_table = || Arc::new(RateLimiter::new(per_second, burst, size, rate_table.clone()));
        let rate = rate.or_else(|| (per_second > 0).then(new_table));
        if rate.is_none() {
            rate_table.entries.set(0);
        }
        Admission {
            max_connections: limits.max_connections,
            open,
            per_ip_max: limits.max_connections_per_ip,
            per_ip,
            rate,
            rate_settings: (per_second, burst),
            rate_table,
        }
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(&self, ip: IpAddr) -> Result<AdmissionTicket, Reject> {
        self.within_rate(ip)?;
        let mut ticket = self.admit_proxy()?;
        self.count_per_ip(&mut ticket, ip)?;
        Ok(ticket)
    }

    /// Admits a trusted proxy's connection before its header: `max_connections` only.
    pub fn admit_proxy(&self) -> Result<AdmissionTicket, Reject> {
        let max = if self.max_connections == 0 { usize::MAX } else { self.max_connections };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Reject::MaxConnections)?;
        // From here the ticket owns the place it took in `open`.
        Ok(AdmissionTicket { open: Arc::clone(&self.open), ip: None })
    }

    /// The client at `ip` that a trusted proxy's header names, on the proxy's `ticket`: the per-IP rate and count.
    pub fn admit_client(&self, ticket: &mut AdmissionTicket, ip: IpAddr) -> Result<(), Reject> {
        self.within_rate(ip)?;
        self.count_per_ip(ticket, ip)
    }

    /// Takes one of `ip`'s new-connection tokens.
    fn within_rate(&self, ip: IpAddr) -> Result<(), Reject> {
        match &self.rate {
            Some(rate) if !rate.allow(ip, std::time::Instant::now()) => Err(Reject::RateLimited),
            _ => Ok(()),
        }
    }

    /// Counts `ticket`'s connection under `ip` (released when the ticket drops).
    fn count_per_ip(&self, ticket: &mut AdmissionTicket, ip: IpAddr) -> Result<(), Reject> {
        if self.per_ip_max == 0 || ticket.ip.is_some() {
            return Ok(());
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return Err(Reject::MaxConnectionsPerIp);
        }
        *n += 1;
        ticket.ip = Some((ip, Arc::clone(&self.per_ip)));
        Ok(())
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
        // A trusted proxy's clients are admitted once its header names them (see [`Admission`]).
        let admitted = if ctx.from_trusted_proxy(peer.ip()) {
            admission.load().admit_proxy()
        } else if source_allowed(&ctx.allowed_sources, peer.ip()) {
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
        // The session holds the admission ticket for as long as it runs.
        let session = Session::new(ctx, peer, ticket, Arc::clone(&admission));
        let session = async move {
            // Past the drain deadline `close` fires: dropping the session closes both of its sockets.
            tokio::select! {
                () = session.run(stream) => {}
                () = close.cancelled() => {}
            }
        };
        tracker.spawn(session.instrument(span));
    }
    info!(listener = %name, "stopped accepting");
}
