//! The accept loop of one listener: waits for room under the shared limits ([`crate::admission`]), admits, then one
//! task per connection, spawned before any handshake so that a slow client never stalls accepts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, Instrument};

use crate::admission::{Admission, AdmissionTicket};
use crate::config::source_allowed;
use crate::reject::Reject;
use crate::session::{connection_span, Session, SessionContext};
use crate::signal::Signal;
use crate::slots::Slot;
use crate::transport::socket_options::ListenerOptions;
use arc_swap::ArcSwap;

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

/// Which limit, if any, keeps `ctx`'s listener from accepting now.
fn full(ctx: &SessionContext, admission: &Admission) -> Option<Full> {
    if !admission.open().has_room(admission.max_connections()) {
        Some(Full::Connections)
    } else if has_handshake(ctx) && !admission.handshakes().has_room(admission.max_handshakes()) {
        Some(Full::Handshakes)
    } else {
        None
    }
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
    // With room (the usual case) nothing waits: no waiter is registered on the limits' notifications, which every
    // listener shares.
    if full(&current.load(), &admission.load()).is_none() {
        return true;
    }
    let mut paused: Option<Pause> = None;
    loop {
        let (ctx, admission) = (current.load_full(), admission.load_full());
        let (connection_freed, handshake_freed) = (admission.open().freed(), admission.handshakes().freed());
        tokio::pin!(connection_freed, handshake_freed);
        // Listening before looking: a place freed after the look below wakes the wait.
        connection_freed.as_mut().enable();
        handshake_freed.as_mut().enable();
        let Some(full) = full(&ctx, &admission) else { return true };
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
    let current = admission.load();
    if let Some(place) = current.handshakes().try_take(current.max_handshakes()) {
        return Some(place);
    }
    loop {
        let current = admission.load_full();
        let freed = current.handshakes().freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if let Some(place) = current.handshakes().try_take(current.max_handshakes()) {
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
    let admit_now = |current: &Admission| match ip {
        Some(ip) => current.admit(ip),
        None => current.admit_proxy(),
    };
    match admit_now(&admission.load()) {
        Err(Reject::MaxConnections) => {}
        other => return Some(other),
    }
    loop {
        let current = admission.load_full();
        let freed = current.open().freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match admit_now(&current) {
            Err(Reject::MaxConnections) => {}
            other => return Some(other),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = freed => {}
        }
    }
}

/// Accepts until `shutdown`; each connection runs as a task in `tracker` until it ends or `close` fires.
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
    close: Arc<Signal>,
) {
    let mut backoff = Duration::from_millis(5);
    let name = current.load().name.clone();
    let mut socket_options = ListenerOptions::default();
    loop {
        if !wait_for_room(&current, &admission, &shutdown).await {
            break;
        }
        // What the next accepted socket inherits: TCP_NODELAY and the keepalive settings of the moment.
        socket_options.follow(&listener, current.load().limits.tcp_keepalive.as_ref());
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
        socket_options.accepted(&listener, &stream, ctx.limits.tcp_keepalive.as_ref());
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
        let close = Arc::clone(&close);
        // The session holds the admission ticket for as long as it runs.
        let session = Session::new(ctx, peer, ticket, Arc::clone(&admission));
        let session = async move {
            // Past the drain deadline `close` fires: dropping the session closes both of its sockets.
            tokio::select! {
                biased;
                () = session.run(stream, handshake) => {}
                () = close.fired() => {}
            }
        };
        tracker.spawn(session.instrument(span));
    }
    info!(listener = %name, "stopped accepting");
}
