//! The admin HTTP endpoint (hyper, HTTP/1.1), bound to `admin.bind` (keep it on a private address).
//!
//! - `GET /metrics`: Prometheus text format (OpenMetrics)
//! - `GET /healthz`: 200 while the process runs
//! - `GET /readyz`: 200 when every listener's backend has a server that can take clients, else 503 saying why
//!   (`not ready: brokers: 3 servers, none can take clients (2 maint, 1 down)`); 503 from the first SIGTERM/SIGINT on,
//!   while the process stops (see [`crate::shutdown`])
//! - `GET /servers`: JSON list of backends and servers (health, state, open connections)
//! - `PUT /servers/{backend}/{server}/state` with body `ready`, `drain` or `maint`: set a server's state
//! - `POST /reload`: reload the configuration file (as SIGHUP does); 200 or 422 with the error

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balancer::backend::{AdminState, BackendServer};
use crate::balancer::{state_file, Balancer};
use crate::metrics::Metrics;
use crate::reload::ReloadHandle;
use crate::shutdown::Lifecycle;
use arc_swap::ArcSwap;

/// What the admin endpoint reads.
pub struct AdminContext {
    pub metrics: Arc<Metrics>,
    /// What the endpoints show; a reload swaps it.
    pub view: ArcSwap<AdminView>,
    /// Where `POST /reload` goes.
    pub reload: ReloadHandle,
    /// A stopping process is not ready, whatever its servers.
    pub lifecycle: Lifecycle,
}

/// The backends as configured now.
pub struct AdminView {
    pub balancers: Vec<Arc<Balancer>>,
    /// Indexes into `balancers` of the backends that listeners use.
    pub listened: Vec<usize>,
    /// `admin.state_file`: where a state change is recorded.
    pub state_file: Option<std::path::PathBuf>,
}

pub type Shared = Arc<AdminContext>;

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: Shared, tracker: TaskTracker, shutdown: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "admin connection ended") },
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

async fn route(req: Request<Incoming>, ctx: &AdminContext) -> Response<Full<Bytes>> {
    let view = ctx.view.load_full();
    let state = view.as_ref();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
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
            let body = match Limited::new(req.into_body(), 64).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "body too large\n".into()),
            };
            set_state(state, &backend, &server, String::from_utf8_lossy(&body).trim())
        }
        (&Method::POST, ["reload"]) => match ctx.reload.reload().await {
            Ok(summary) => json(StatusCode::OK, &serde_json::json!({ "result": "success", "config": summary })),
            Err(error) => {
                json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({ "result": "error", "error": error }))
            }
        },
        (_, ["metrics" | "healthz" | "readyz" | "servers" | "reload"]) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz, /readyz, /servers\n".into()),
    }
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
                    serde_json::json!({
                        "name": s.name,
                        "address": s.address,
                        "weight": s.weight,
                        "health": if s.is_up() { "up" } else { "down" },
                        "state": s.state().as_str(),
                        "connections": s.active(),
                        "check_error": s.check_error().map(|e| e.to_string()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": pool.config.name,
                "balance": pool.config.balance.as_str(),
                "health_check": pool.config.health.check.as_str(),
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({ "backends": backends })
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
