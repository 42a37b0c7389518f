//! The running load balancer: binds the listeners and the admin endpoint, starts health probes, accepts until
//! shutdown, then drains. Reload requests (SIGHUP, `POST /reload`) are applied in turn by [`crate::reload`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminContext, AdminView, Endpoints};
use crate::config::{Config, DEFAULT_ADMIN_REQUEST_TIMEOUT};
use crate::metrics::{Metrics, ReloadResult, ResultLabels};
use crate::reload::running::{Running, Socket};
use crate::reload::{self, ReloadRequests};
use crate::shutdown::{Lifecycle, Tasks};

pub use crate::reload::ReloadHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
}

/// A bound, not yet running, load balancer.
pub struct Server {
    config: Config,
    metrics: Arc<Metrics>,
    /// One per listener of `config`, in its order.
    sockets: Vec<Socket>,
    /// The admin sockets: `admin.bind`, then `admin.control_bind` when set; and what each serves.
    admin: Vec<(TcpListener, Endpoints)>,
    shutdown: CancellationToken,
    lifecycle: Lifecycle,
    reload: ReloadHandle,
    requests: ReloadRequests,
}

impl Server {
    /// Binds every socket (so port conflicts show before anything runs).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let mut sockets = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let socket =
                Socket::bind(l).map_err(|source| ServerError::Bind { name: l.name.clone(), addr: l.bind, source })?;
            sockets.push(socket);
        }
        let mut admin = Vec::new();
        if let Some(a) = &config.admin {
            let binds = match a.control_bind {
                None => vec![("admin", a.bind, Endpoints::AllOnLoopback)],
                Some(control) => {
                    vec![("admin", a.bind, Endpoints::ReadOnly), ("admin control", control, Endpoints::All)]
                }
            };
            for (name, addr, endpoints) in binds {
                let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
                    name: name.into(),
                    addr,
                    source,
                })?;
                admin.push((listener, endpoints));
            }
        }
        let (reload, requests) = reload::channel();
        let metrics = Arc::new(Metrics::new());
        let (shutdown, lifecycle) = (CancellationToken::new(), Lifecycle::new());
        Ok(Server { config, metrics, sockets, admin, shutdown, lifecycle, reload, requests })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs().remove(name)
    }

    /// Every listener's bound address by name (UDP for `coap` listeners, TCP for the others).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        let bound = self.config.listeners.iter().zip(&self.sockets);
        bound.filter_map(|(l, s)| Some((l.name.clone(), s.local_addr()?))).collect()
    }

    /// Where the read-only endpoints answer (`admin.bind`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.first().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the control endpoints answer: `admin.control_bind`, else `admin.bind` (on loopback connections).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.admin.last().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Cancelling this token stops accepting at once and drains (a graceful shutdown without `shutdown.grace`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// What the signals drive: readiness fails at once, listeners accept for `shutdown.grace`, then drain; or a
    /// hard stop (see [`crate::shutdown`]).
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Reloads the configuration file of the running server (what SIGHUP does).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until the shutdown token is cancelled, then drains open relays up to `shutdown.drain_timeout`.
    pub async fn run(self) -> Result<(), ServerError> {
        let Server { config, metrics, sockets, admin, shutdown, lifecycle, reload, mut requests } = self;
        let tasks = Tasks::new(shutdown.clone());
        let mut running = Running::start(config, Arc::clone(&metrics), sockets, tasks.clone());
        let max_connections = running.config.admin.as_ref().map_or(0, |a| a.max_connections);
        let admin = (!admin.is_empty()).then(|| {
            let view = ArcSwap::from_pointee(admin_view(&running));
            let ctx = Arc::new(AdminContext {
                metrics: Arc::clone(&metrics),
                view,
                reload: reload.clone(),
                lifecycle: lifecycle.clone(),
                reloading: Arc::default(),
            });
            for (listener, endpoints) in admin {
                info!(addr = listener.local_addr().ok().map(display), endpoints = ?endpoints, max_connections, "admin endpoint listening");
                let (tracker, stop) = (tasks.background.clone(), tasks.stop_background.clone());
                let serve = admin::serve(listener, endpoints, max_connections, Arc::clone(&ctx), tracker, stop);
                tasks.background.spawn(serve);
            }
            ctx
        });
        // Set by the first stop request: when the listeners stop accepting.
        let mut grace_ends: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = lifecycle.hard_stop_requested() => break,
                () = lifecycle.stop_requested(), if grace_ends.is_none() => {
                    let grace = running.config.shutdown.grace;
                    info!(?grace, "stopping: /readyz fails from now on; accepting for shutdown.grace, then draining");
                    grace_ends = Some(Instant::now() + grace);
                }
                () = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now)), if grace_ends.is_some() => break,
                request = requests.next() => {
                    let Some(reply) = request else { break };
                    // Reading the files is the part that can stall: a stop request ends the wait.
                    let loaded = tokio::select! {
                        loaded = reload::load(&running.config.source) => loaded,
                        () = stop_or_cancel(&shutdown, &lifecycle) => {
                            let _ = reply.send(Err("the server is stopping: reload abandoned".to_owned()));
                            continue;
                        }
                    };
                    let outcome = loaded.and_then(|new| reload::reload(&mut running, new));
                    if let (Ok(reloaded), Some(admin)) = (&outcome, &admin) {
                        admin.view.store(Arc::new(admin_view(&running)));
                        if reloaded.admin_bind_changed {
                            warn!("admin.bind, control_bind or max_connections changed: they apply at the next start");
                        }
                    }
                    let outcome = outcome.map(|r| r.summary).map_err(|e| e.to_string());
                    let result = if outcome.is_ok() { ReloadResult::success } else { ReloadResult::error };
                    metrics.config_reloads.get_or_create(&ResultLabels { result }).inc();
                    match &outcome {
                        Ok(summary) => info!(%summary, "configuration reloaded"),
                        Err(e) => error!(error = %e, "reload refused; the running configuration stays"),
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
        drop(reload);
        lifecycle.begin_drain();
        tasks.stop(running.config.shutdown.drain_timeout, &lifecycle).await;
        Ok(())
    }
}

/// Resolves when any stop is requested (token, signal), so that the main loop takes it up.
async fn stop_or_cancel(shutdown: &CancellationToken, lifecycle: &Lifecycle) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = lifecycle.stop_requested() => {}
    }
}

/// What the admin endpoint shows of the running configuration.
fn admin_view(running: &Running) -> AdminView {
    AdminView {
        balancers: running.pools().to_vec(),
        listened: running.config.listeners.iter().filter_map(|l| l.backend).collect(),
        listeners: crate::config::view::listeners_json(&running.config),
        state_file: running.config.admin.as_ref().and_then(|a| a.state_file.clone()),
        token: running.config.admin.as_ref().and_then(|a| a.token.clone()),
        request_timeout: running.config.admin.as_ref().map_or(DEFAULT_ADMIN_REQUEST_TIMEOUT, |a| a.request_timeout),
    }
}
