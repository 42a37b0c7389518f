//! Reloads (SIGHUP, `POST /reload`): a new configuration applied in place, without dropping a relay.
//!
//! The file is loaded and validated first; a bad file changes nothing (the error is returned, logged and counted
//! in `mqttlb_config_reloads_total{result="error"}`). A good one is planned ([`plan::plan`], from the running
//! configuration and the new one; a plan that cannot be applied changes nothing either), the new sockets are
//! bound (a bind failure changes nothing), then the plan is applied ([`apply`]):
//! - listeners of every protocol are matched to the running ones of the same kind (TCP, or UDP for `coap`) by
//!   name, else by a non-zero bind address; a match keeps its socket only if its address is the same, and then
//!   takes the new settings (certificate, limits, backend, routes, origins, sources, coap keys) for its next
//!   connections or datagrams; a `coap` listener also keeps its device flows (see [`crate::udp`], "Reload"). A
//!   new listener is bound before anything is changed; a removed one stops accepting while its open connections go on;
//! - backends are matched by name; each server of the new pool takes over the health and administrative state of
//!   the server with the same name, and probes restart with the new health settings; relays to removed servers go
//!   on until they end;
//! - admission limits are replaced only when they changed, and their counts carry over: connections open now, per
//!   source IP, and the per-IP rate buckets while the rate and burst stay the same. The admin endpoint's address and `workers` are not reloaded (a warning says so).

pub mod plan;
pub mod running;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::balancer::backend::BackendServer;
use crate::balancer::{Balancer, Pool};
use crate::config::{self, Config, ConfigError};
use crate::metrics::RouteLabels;
use plan::{ListenerStep, Plan, PoolStep, ServerStep, Transport};
use running::{Running, Socket};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is invalid (file, key, problem).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new listener's address is the socket of a listener that stops: it is still bound while the reload runs.
    #[error("listener {name}: {addr} is held by listener {holder} being removed in the same reload: reload twice")]
    Held { name: String, addr: SocketAddr, holder: String },
    #[error("listener {name}: cannot bind {addr}: {source}")]
    BindTcp { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("listener {name}: cannot bind {addr} (UDP): {source}")]
    BindUdp { name: String, addr: SocketAddr, source: std::io::Error },
    /// Reading the files took longer than [`LOAD_DEADLINE`] (a file on a stalled network mount, say).
    #[error("reading the configuration and the files it names took longer than {0:?}: is one on a stalled mount?")]
    Stalled(std::time::Duration),
    #[error("the configuration could not be read: {0}")]
    Failed(String),
}

/// How long a reload may spend reading the configuration and the files it names before it fails.
pub const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub type Reply = oneshot::Sender<Result<String, String>>;

/// Asks the running server to reload its configuration file.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Reply>,
}

/// The server's end of [`ReloadHandle`]s: one request per reload, answered with its outcome.
pub struct ReloadRequests {
    rx: mpsc::Receiver<Reply>,
}

/// A connected handle and request queue.
pub fn channel() -> (ReloadHandle, ReloadRequests) {
    let (tx, rx) = mpsc::channel(4);
    (ReloadHandle { tx }, ReloadRequests { rx })
}

impl ReloadHandle {
    /// Reloads and waits for the outcome: a summary, or the error (file, key, problem).
    pub async fn reload(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(reply).await.map_err(|_| "the server is not running".to_owned())?;
        answer.await.map_err(|_| "the server stopped during the reload".to_owned())?
    }
}

impl ReloadRequests {
    /// The next request: where to send its outcome. None when every handle is gone.
    pub async fn next(&mut self) -> Option<Reply> {
        self.rx.recv().await
    }
}

/// What a reload did.
pub struct Reloaded {
    /// `3 listeners (1 added, 0 removed), 2 backends, 5 servers`.
    pub summary: String,
    /// `admin.bind` changed, which a reload does not apply.
    pub admin_bind_changed: bool,
}

/// Reads and validates the configuration file at `path` again (with the certificates and keys it names) on a
/// blocking thread, so that no async worker waits on a file, and for at most [`LOAD_DEADLINE`]: past it the reload
/// fails, and the thread, if a file read is still stuck, is left to finish on its own.
pub async fn load(path: &std::path::Path) -> Result<Config, ReloadError> {
    let path = path.to_path_buf();
    load_within(LOAD_DEADLINE, move || config::load(&path)).await
}

async fn load_within(
    deadline: std::time::Duration,
    read: impl FnOnce() -> Result<Config, ConfigError> + Send + 'static,
) -> Result<Config, ReloadError> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(read)).await {
        Err(_) => Err(ReloadError::Stalled(deadline)),
        Ok(Err(e)) => Err(ReloadError::Failed(e.to_string())),
        Ok(Ok(loaded)) => Ok(loaded?),
    }
}

/// Applies a configuration loaded again ([`load`]) to the running server (see the module docs).
pub fn reload(running: &mut Running, new: Config) -> Result<Reloaded, ReloadError> {
    let plan = plan::plan(&running.config, &new)?;
    apply(running, &plan, new)
}

/// Executes `plan`, from `running.config` to `new`: binds the new sockets (nothing changes if one fails), swaps
/// the pools, replaces admission, then continues, starts and stops listeners.
pub fn apply(running: &mut Running, plan: &Plan, new: Config) -> Result<Reloaded, ReloadError> {
    let sockets = bind_new(plan, &new)?;
    swap_pools(running, plan, &new);
    running.start_health();
    if plan.admission_changed {
        let successor = running.admission.load().successor(&new.limits);
        running.admission.store(Arc::clone(&successor));
        successor.wake_waiting_listeners();
    }
    if plan.workers_changed {
        warn!("workers changed: a restart is needed for the number of threads to change");
    }
    let reloaded = Reloaded { summary: plan.summary(&new), admin_bind_changed: plan.admin_bind_changed };
    let old = std::mem::replace(&mut running.config, new);
    swap_listeners(running, plan, &old, sockets);
    Ok(reloaded)
}

/// The sockets of the listeners the plan binds, one per listener of `new` (None for those that continue).
fn bind_new(plan: &Plan, new: &Config) -> Result<Vec<Option<Socket>>, ReloadError> {
    let mut sockets = Vec::with_capacity(new.listeners.len());
    for (l, step) in new.listeners.iter().zip(&plan.listeners) {
        if *step != ListenerStep::Bind {
            sockets.push(None);
            continue;
        }
        let socket = Socket::bind(l).map_err(|source| {
            let (name, addr) = (l.name.clone(), l.bind);
            match Transport::of(l) {
                Transport::Tcp => ReloadError::BindTcp { name, addr, source },
                Transport::Udp => ReloadError::BindUdp { name, addr, source },
            }
        })?;
        sockets.push(Some(socket));
    }
    Ok(sockets)
}

/// Gives every backend of `new` its pool: a continuing backend keeps its balancer (listeners and relays hold it)
/// and takes a pool whose same-named servers carry their state over.
fn swap_pools(running: &mut Running, plan: &Plan, new: &Config) {
    let metrics = Arc::clone(&running.metrics);
    let mut pools = Vec::with_capacity(new.backends.len());
    for (b, step) in new.backends.iter().zip(&plan.pools) {
        let continued = match step {
            PoolStep::Swap { old, servers } => running.pools.get(*old).map(|balancer| (balancer, servers)),
            PoolStep::New => None,
        };
        let Some((balancer, steps)) = continued else {
            pools.push(Arc::new(Balancer::new(Pool::new(b.clone(), &metrics))));
            continue;
        };
        let old_pool = balancer.pool();
        let servers = b.servers.iter().zip(steps).map(|(s, step)| {
            let server_metrics = metrics.server(&b.name, &s.name);
            let before = |i: &usize| old_pool.servers.get(*i);
            match step {
                ServerStep::Same(i) => before(i).map(Arc::clone),
                ServerStep::Successor(i) => before(i).map(|o| Arc::new(o.successor(s, server_metrics.clone()))),
                ServerStep::New => None,
            }
            .unwrap_or_else(|| Arc::new(BackendServer::new(s, server_metrics)))
        });
        balancer.replace(Pool::with_servers(b.clone(), servers.collect()));
        pools.push(Arc::clone(balancer));
    }
    for (backend, server) in &plan.forgotten {
        metrics.forget_server(backend, server);
    }
    for (listener, route) in &plan.forgotten_routes {
        metrics.route_matches.remove(&RouteLabels { listener: listener.clone(), route: route.clone() });
    }
    running.pools = pools;
}

/// Continues, starts and stops listeners per `plan` (`old` is the configuration the plan's indexes refer to).
fn swap_listeners(running: &mut Running, plan: &Plan, old: &Config, sockets: Vec<Option<Socket>>) {
    running.generation += 1;
    let mut before = std::mem::take(&mut running.listeners);
    let mut take = |i: usize| {
        let name = old.listeners.get(i).map(|l| l.name.as_str())?;
        let at = before.iter().position(|r| r.name == name)?;
        Some(before.swap_remove(at))
    };
    let mut kept = Vec::new();
    let mut started = Vec::new();
    for ((l, step), socket) in running.config.listeners.iter().zip(&plan.listeners).zip(sockets) {
        match (step, socket) {
            (ListenerStep::Keep(i), _) => kept.extend(take(*i).map(|r| (l, r))),
            (ListenerStep::Bind, Some(socket)) => started.push((l.clone(), socket)),
            (ListenerStep::Bind, None) => {}
        }
    }
    for &i in &plan.removed {
        if let Some(r) = take(i) {
            r.stop.cancel();
        }
    }
    // None is left (every running listener was kept or removed); a stray one must not serve on.
    for r in before {
        r.stop.cancel();
    }
    // Every listener kept or started sets the expiry of its certificates again: a certificate no longer served
    // must not stay in the gauge (its alert would fire for a file nobody serves).
    running.metrics.tls_certificate_expiry.clear();
    for (l, mut r) in kept {
        running.update_listener(&mut r, l);
        running.listeners.push(r);
    }
    for (l, socket) in started {
        running.start_listener(&l, socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_read_fails_at_the_deadline() {
        let (_writer, stuck) = std::sync::mpsc::channel::<()>();
        let read = move || {
            let _ = stuck.recv_timeout(std::time::Duration::from_secs(5));
            Err(ConfigError { file: "late".into(), key: String::new(), message: "too late".into() })
        };
        let started = std::time::Instant::now();
        let outcome = load_within(std::time::Duration::from_millis(50), read).await;
        assert!(matches!(outcome, Err(ReloadError::Stalled(_))), "{:?}", outcome.map(|_| ()));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
