//! The accept loop of one listener: admission limits, then one task per connection, spawned before any handshake
//! so that a slow client never stalls accepts.

use std::collections::HashMap;
use std::net::IpAddr;
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
use crate::slots::{Slot, Slots};
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
    open: Arc<Slots>,
    max_handshakes: usize,
    /// TLS handshakes and WebSocket upgrades in progress, every listener together.
    handshakes: Arc<Slots>,
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
    _open: Slot,
    ip: Option<(IpAddr, Arc<PerIpCounts>)>,
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
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
        Arc::new(Admission::with_counts(limits, Arc::default(), Arc::default(), Arc::default(), None, rate_table))
    }

    /// The admission of `limits` after a reload: the counts of this one go on (see [`Admission`]); the rate buckets
    /// too, unless the rate or the burst changed (then every address starts with a full bucket of the new size).
    pub fn successor(&self, limits: &Limits) -> Arc<Admission> {
        let same_rate = rate_settings(limits) == self.rate_settings;
        let rate = if same_rate { self.rate.clone() } else { None };
        if let Some(rate) = &rate {
            rate.resize(limits.connection_rate_table_size, std::time::Instant::now());
        }
        let (open, handshakes, per_ip) =
            (Arc::clone(&self.open), Arc::clone(&self.handshakes), Arc::clone(&self.per_ip));
        Arc::new(Admission::with_counts(limits, open, handshakes, per_ip, rate, self.rate_table.clone()))
    }

    /// Wakes the accept loops that wait for room: the limits may have changed (call once this one is in place).
    pub fn wake_waiting_listeners(&self) {
        self.open.wake_all();
        self.handshakes.wake_all();
    }

    fn with_counts(
        limits: &Limits,
        open: Arc<Slots>,
        handshakes: Arc<Slots>,
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
            max_handshakes: limits.max_handshakes,
            handshakes,
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
        let open = self.open.try_take(self.max_connections).ok_or(Reject::MaxConnections)?;
        // From here the ticket owns the place it took in `open`.
        Ok(AdmissionTicket { _open: open, ip: None })
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

/// Which limit a listener waits on before it accepts again: the `limit` label of the pause metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Connections,
    Handshakes,
}

impl Full {
    fn label(self) -> &'static str {
        match self {
            Full::Connections => "max_connections",
            Full::Handshakes => "max_handshakes",
        }
    }
}

/// A pause of one listener, counted when it starts and shown by a gauge while it lasts.
struct Pause {
    full: Full,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Pause {
    fn start(ctx: &SessionContext, full: Full) -> Pause {
        debug!(listener = %ctx.name, limit = full.label(), "full: not accepting until a place frees");
        let (pauses, gauge) = ctx.metrics.accept_pause(&ctx.name, full.label());
        pauses.inc();
        gauge.inc();
        Pause { full, gauge }
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Whether the listener's connections start with a handshake that `limits.max_handshakes` bounds (TLS, or the
/// WebSocket upgrade).
fn has_handshake(ctx: &SessionContext) -> bool {
    ctx.tls.is_some() || ctx.ws.is_some()
}

/// Waits until a connection may be accepted: room under `max_connections` and, for a listener with a handshake,
/// under `max_handshakes`. Meanwhile the listener does not accept: new clients wait in the kernel's accept queue.
/// Nothing is reserved (an idle listener must not hold a place another listener could use). False once `shutdown`
/// fires.
async fn wait_for_room(
    current: &ArcSwap<SessionContext>,
    admission: &ArcSwap<Admission>,
    shutdown: &CancellationToken,
) -> bool {
    let mut paused: Option<Pause> = None;
    loop {
        let (ctx, admission) = (current.load_full(), admission.load_full());
        let (connection_freed, handshake_freed) = (admission.open.freed(), admission.handshakes.freed());
        tokio::pin!(connection_freed, handshake_freed);
        connection_freed.as_mut().enable();
        handshake_freed.as_mut().enable();
        let full = if !admission.open.has_room(admission.max_connections) {
            Full::Connections
        } else if has_handshake(&ctx) && !admission.handshakes.has_room(admission.max_handshakes) {
            Full::Handshakes
        } else {
            return true;
        };
        if paused.as_ref().map(|p| p.full) != Some(full) {
            paused = Some(Pause::start(&ctx, full));
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = connection_freed => {}
            () = handshake_freed => {}
        }
    }
}

/// A handshake place for an accepted connection. One was free before the accept; if another listener took it
/// since, the connection waits (already accepted, never reset) for the next. None once `shutdown` fires.
async fn handshake_place(admission: &ArcSwap<Admission>, shutdown: &CancellationToken) -> Option<Slot> {
    loop {
        let current = admission.load_full();
        let freed = current.handshakes.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(place) = current.handshakes.try_take(current.max_handshakes) {
            return Some(place);
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = freed => {}
        }
    }
}

/// Admits an accepted connection. A place under `max_connections` was free before the accept; if another listener
/// took it since, the connection waits (already accepted, never reset) for the next. None once `shutdown` fires.
/// `ip` is None for a trusted proxy's connection, admitted under `max_connections` only until its header names the
/// client.
async fn admit(
    admission: &ArcSwap<Admission>,
    ip: Option<IpAddr>,
    shutdown: &CancellationToken,
) -> Option<Result<AdmissionTicket, Reject>> {
    loop {
        let current = admission.load_full();
        let freed = current.open.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let admitted = match ip {
            Some(ip) => current.admit(ip),
            None => current.admit_proxy(),
        };
        match admitted {
            Err(Reject::MaxConnections) => {}
            other => return Some(other),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = freed => {}
        }
    }
}

/// Accepts until `shutdown`; each connection runs as a task in `tracker` until it ends or `close` is cancelled.
///
/// While mqtt-lb is full (`limits.max_connections` open, or `limits.max_handshakes` in progress on a listener with
/// TLS or WebSocket) the loop does not accept: the kernel holds new clients in the listen backlog until a place
/// frees, as HAProxy does at `maxconn`.
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
        if !wait_for_room(&current, &admission, &shutdown).await {
            break;
        }
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
        let ip = (!ctx.from_trusted_proxy(peer.ip())).then_some(peer.ip());
        let admitted = if ip.is_none_or(|ip| source_allowed(&ctx.allowed_sources, ip)) {
            let Some(admitted) = admit(&admission, ip, &shutdown).await else { break };
            admitted
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
        let handshake = if has_handshake(&ctx) {
            let Some(place) = handshake_place(&admission, &shutdown).await else { break };
            Some(place.counted_in(ctx.listener_metrics.handshakes.clone()))
        } else {
            None
        };
        let close = close.clone();
        // The session holds the admission ticket for as long as it runs.
        let session = Session::new(ctx, peer, ticket, Arc::clone(&admission));
        let session = async move {
            // Past the drain deadline `close` fires: dropping the session closes both of its sockets.
            tokio::select! {
                () = session.run(stream, handshake) => {}
                () = close.cancelled() => {}
            }
        };
        tracker.spawn(session.instrument(span));
    }
    info!(listener = %name, "stopped accepting");
}
