//! The admin HTTP endpoint (hyper, HTTP/1.1): a read-only socket (`admin.bind`) and a control one
//! (`admin.control_bind`; without it, `admin.bind` serves control on loopback connections). Who may use what is in
//! `access`.
//!
//! Read-only:
//! - `GET /metrics`: Prometheus text format (OpenMetrics)
//! - `GET /healthz`: 200 while the process runs
//! - `GET /readyz`: 200 when every listener's backend has a server that can take clients, else 503 saying why
//!   (`not ready: brokers: 3 servers, none can take clients (2 maint, 1 down)`); 503 from the first SIGTERM/SIGINT on,
//!   while the process stops (see [`crate::shutdown`])
//!
//! Control (bearer token when `admin.token_file` is set):
//! - `GET /servers`: JSON list of backends and servers (health, state, open connections, addresses), and of
//!   listeners with their default backend and routes
//! - `PUT /servers/{backend}/{server}/state` with body `ready`, `drain` or `maint`: set a server's state
//! - `POST /reload`: reload the configuration file (as SIGHUP does); 200, 422 with the error, or 409 while another
//!   `POST /reload` runs
//!
//! Each socket holds at most `admin.max_connections` connections (further ones wait in the kernel's queue, holding
//! no file of ours); a connection carries one request, whose head and body must arrive within
//! `admin.request_timeout` of the accept, and bodies over [`MAX_BODY`] bytes are refused (413).

mod access;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use access::Endpoints;

use crate::balancer::backend::{AdminState, BackendServer};
use crate::balancer::{state_file, Balancer};
use crate::config::AdminToken;
use crate::metrics::Metrics;
use crate::reload::ReloadHandle;
use crate::shutdown::Lifecycle;
use arc_swap::ArcSwap;

/// Largest request body accepted: a server state is one word.
pub const MAX_BODY: u64 = 64;

/// What the admin endpoint reads.
pub struct AdminContext {
    pub metrics: Arc<Metrics>,
    /// What the endpoints show; a reload swaps it.
    pub view: ArcSwap<AdminView>,
    /// Where `POST /reload` goes.
    pub reload: ReloadHandle,
    /// A stopping process is not ready, whatever its servers.
    pub lifecycle: Lifecycle,
    /// Set while a `POST /reload` runs: a second one is refused rather than queued.
    pub reloading: Arc<AtomicBool>,
}

/// The backends as configured now.
pub struct AdminView {
    pub balancers: Vec<Arc<Balancer>>,
    /// Indexes into `balancers` of the listeners' default backends (`backend`): readiness needs each to have a
    /// server. Backends only routes use do not count: every instance would be alike unready for those clients, and
    /// the others would lose the front door.
    pub listened: Vec<usize>,
    /// The listeners' default backends and routes, for `GET /servers` ([`crate::config::view`]).
    pub listeners: serde_json::Value,
    /// `admin.state_file`: where a state change is recorded.
    pub state_file: Option<std::path::PathBuf>,
    /// `admin.token_file`'s token, required by the control endpoints.
    pub token: Option<AdminToken>,
    /// `admin.request_timeout`.
    pub request_timeout: Duration,
}

pub type Shared = Arc<AdminContext>;

/// Serves one admin socket until `shutdown`, with at most `max_connections` connections open at once.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    max_connections: usize,
    state: Shared,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // A free slot first: while none is, connections wait in the kernel's accept queue.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let accepted = Instant::now();
        let control = endpoints.control_allowed(tcp.local_addr().ok());
        let request_timeout = state.view.load().request_timeout;
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(req, &state, control, accepted + request_timeout).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(request_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            // The request within `request_timeout`; the answer (a reload, a client slow to read /metrics) within
            // twice that again.
            let lifetime = tokio::time::sleep_until(accepted + request_timeout * 3);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "admin connection ended") },
                () = lifetime => debug!(%peer, "admin connection closed at its deadline"),
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    info!("admin endpoint stopped");
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{value}\n"))
}

async fn route(req: Request<Incoming>, ctx: &AdminContext, control: bool, deadline: Instant) -> Response<Full<Bytes>> {
    if req.body().size_hint().lower() > MAX_BODY {
        return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("body over {MAX_BODY} bytes\n")));
    }
    let view = ctx.view.load_full();
    let state = view.as_ref();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first().is_some_and(|s| access::is_control(s)) {
        if !control {
            let why = "control endpoints are served on admin.control_bind (or, without it, on loopback)\n";
            return text(StatusCode::FORBIDDEN, "text/plain", why.into());
        }
        if let Some(token) = &state.token {
            if !access::bearer_matches(req.headers(), &token.0) {
                debug!(path, "admin request without the right bearer token");
                return unauthorized();
            }
        }
    }
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", ctx.metrics.encode())
        }
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, ["readyz"]) => match ctx.lifecycle.not_ready_because() {
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
            None => readyz(state),
        },
        (&Method::GET, ["servers"]) => json(StatusCode::OK, &servers_json(state)),
        (&Method::PUT | &Method::POST, ["servers", backend, server, "state"]) => {
            let (backend, server) = ((*backend).to_owned(), (*server).to_owned());
            let body = Limited::new(req.into_body(), MAX_BODY as usize).collect();
            let body = match tokio::time::timeout_at(deadline, body).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => {
                    let too_large = format!("body over {MAX_BODY} bytes\n");
                    return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", too_large));
                }
                Err(_) => {
                    let late = "the body did not arrive within admin.request_timeout\n".to_owned();
                    return closing(text(StatusCode::REQUEST_TIMEOUT, "text/plain", late));
                }
            };
            set_state(state, &backend, &server, String::from_utf8_lossy(&body).trim())
        }
        (&Method::POST, ["reload"]) => reload(ctx).await,
        (_, ["metrics" | "healthz" | "readyz" | "servers" | "reload"]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz, /readyz, /servers\n".into()),
    }
}

/// Clears [`AdminContext::reloading`] when the reload it guards ends, however it ends.
struct ReloadInFlight(Arc<AtomicBool>);

impl Drop for ReloadInFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `POST /reload`: one at a time. The reload runs in its own task, so a client that goes away does not free the
/// slot before the reload ends.
async fn reload(ctx: &AdminContext) -> Response<Full<Bytes>> {
    if ctx.reloading.swap(true, Ordering::AcqRel) {
        let body =
            serde_json::json!({ "result": "refused", "error": "a reload is already in progress; retry when it ends" });
        return json(StatusCode::CONFLICT, &body);
    }
    let in_flight = ReloadInFlight(Arc::clone(&ctx.reloading));
    let handle = ctx.reload.clone();
    let outcome = tokio::spawn(async move {
        let _in_flight = in_flight;
        handle.reload().await
    });
    match outcome.await {
        Ok(Ok(summary)) => json(StatusCode::OK, &serde_json::json!({ "result": "success", "config": summary })),
        Ok(Err(error)) => {
            json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "result": "error", "error": error }))
        }
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "result": "error", "error": "the reload task failed" }),
        ),
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "text/plain", "a bearer token is required (admin.token_file)\n".into());
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"mqtt-lb admin\""),
    );
    r
}

/// Says that the connection ends with this answer (its request body was not read whole).
fn closing(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r
}

fn readyz(state: &AdminView) -> Response<Full<Bytes>> {
    let not_ready: Vec<String> = state
        .listened
        .iter()
        .filter_map(|&i| state.balancers.get(i))
        .filter_map(|b| {
            let pool = b.pool();
            unready_backend(&pool.config.name, &pool.servers)
        })
        .collect();
    if not_ready.is_empty() {
        text(StatusCode::OK, "text/plain", "ready\n".into())
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {}\n", not_ready.join("; ")))
    }
}

/// Why a backend can take no client, e.g. `brokers: 3 servers, none can take clients (2 maint, 1 down)`; None when
/// one can. A server is counted by what keeps it out: its state (`maint`, `drain`) set by an operator, else its
/// health (`down`).
fn unready_backend(name: &str, servers: &[Arc<BackendServer>]) -> Option<String> {
    if servers.iter().any(|s| s.usable()) {
        return None;
    }
    let count = |wanted: &str| {
        servers
            .iter()
            .filter(|s| match s.state() {
                AdminState::Ready => wanted == "down",
                state => wanted == state.as_str(),
            })
            .count()
    };
    let why: Vec<String> = ["maint", "drain", "down"]
        .into_iter()
        .map(|what| (count(what), what))
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    let plural = if servers.len() == 1 { "" } else { "s" };
    let why = if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) };
    Some(format!("{name}: {} server{plural}, none can take clients{why}", servers.len()))
}

fn servers_json(state: &AdminView) -> serde_json::Value {
    let backends: Vec<serde_json::Value> = state
        .balancers
        .iter()
        .map(|b| {
            let pool = b.pool();
            let servers: Vec<serde_json::Value> = pool
                .servers
                .iter()
                .map(|s| {
                    let configured = pool.config.servers.iter().find(|c| c.name == s.name);
                    serde_json::json!({
                        "name": s.name,
                        "address": s.address,
                        "weight": s.weight,
                        "health": if s.is_up() { "up" } else { "down" },
                        "state": s.state().as_str(),
                        "connections": s.active(),
                        "check_error": s.check_error().map(|e| e.to_string()),
                        "max_connections": configured.and_then(|c| c.max_connections),
                        "max_connection_rate": configured.and_then(|c| c.max_connection_rate),
                        "queued": s.gate.waiting(),
                        "assigned_id_prefix": configured.and_then(|c| c.assigned_id_prefix.as_deref()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": pool.config.name,
                "balance": pool.config.balance.as_str(),
                "health_check": pool.config.health.check.as_str(),
                "max_queue": pool.config.max_queue,
                "queue_timeout_seconds": pool.config.queue_timeout.as_secs_f64(),
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({ "backends": backends, "listeners": state.listeners })
}

fn set_state(state: &AdminView, backend: &str, server: &str, wanted: &str) -> Response<Full<Bytes>> {
    let Some(new_state) = AdminState::parse(wanted) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("state {wanted:?} unknown: use ready, drain or maint\n"),
        );
    };
    let Some(b) = state.balancers.iter().find(|b| b.name() == backend) else {
        return text(StatusCode::NOT_FOUND, "text/plain", format!("no backend {backend:?}\n"));
    };
    let pool = b.pool();
    let Some(s) = pool.servers.iter().find(|s| s.name == server) else {
        return text(StatusCode::NOT_FOUND, "text/plain", format!("no server {server:?} in backend {backend:?}\n"));
    };
    s.set_state(new_state);
    info!(backend, server, state = new_state.as_str(), "server state set");
    if let Some(path) = &state.state_file {
        // The state holds in this process either way; only its survival across a restart failed.
        if let Err(e) = state_file::save(path, &state.balancers) {
            warn!(file = %path.display(), error = %e, "cannot record the server state: it will not survive a restart");
            let body = serde_json::json!({ "backend": backend, "server": server, "state": new_state.as_str(),
                "warning": format!("not recorded in {}: {e}", path.display()) });
            return json(StatusCode::OK, &body);
        }
    }
    json(StatusCode::OK, &serde_json::json!({ "backend": backend, "server": server, "state": new_state.as_str() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    fn servers(states: &[(AdminState, bool)]) -> Vec<Arc<BackendServer>> {
        let metrics = Metrics::new();
        states
            .iter()
            .enumerate()
            .map(|(i, &(state, up))| {
                let config = ServerConfig {
                    name: format!("s{i}"),
                    address: "127.0.0.1:1".into(),
                    weight: 1,
                    dtls_cid_node_id: None,
                    max_connections: None,
                    max_connection_rate: None,
                    assigned_id_prefix: None,
                };
                let s = BackendServer::new(&config, metrics.server("b", &config.name));
                s.set_state(state);
                s.set_up(up);
                Arc::new(s)
            })
            .collect()
    }

    #[test]
    fn unready_backend_says_what_keeps_each_server_out() {
        use AdminState::{Drain, Maint, Ready};
        assert_eq!(unready_backend("b", &servers(&[(Ready, true), (Maint, true)])), None);
        assert_eq!(
            unready_backend("brokers", &servers(&[(Maint, true), (Maint, true), (Ready, false)])).as_deref(),
            Some("brokers: 3 servers, none can take clients (2 maint, 1 down)")
        );
        assert_eq!(
            unready_backend("b", &servers(&[(Drain, true), (Maint, false), (Ready, false)])).as_deref(),
            Some("b: 3 servers, none can take clients (1 maint, 1 drain, 1 down)")
        );
        assert_eq!(
            unready_backend("b", &servers(&[(Ready, false)])).as_deref(),
            Some("b: 1 server, none can take clients (1 down)")
        );
        assert_eq!(unready_backend("b", &[]).as_deref(), Some("b: 0 servers, none can take clients"));
    }
}
