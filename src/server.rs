//! The running load balancer: binds the listeners and the admin endpoint, starts health probes, accepts until
//! shutdown, then drains. Reloads (SIGHUP, `POST /reload`) apply a new configuration in place.
//!
//! # Reload
//!
//! The file is loaded and validated first; a bad file changes nothing (the error is returned, logged and counted
//! in `mqttlb_config_reloads_total{result="error"}`). A good one is applied without dropping a relay:
//! - listeners are matched to the running ones by name (else by a non-zero bind address): a match keeps its socket
//!   and takes the new settings (certificate, limits, backend, origins, sources) for its next connections; a new
//!   listener is bound before anything is changed (a bind failure aborts the reload); a removed one stops
//!   accepting while its open connections go on;
//! - backends are matched by name; each server of the new pool takes over the health and administrative state of
//!   the server with the same name, and probes restart with the new health settings; relays to removed servers go
//!   on until they end;
//! - admission limits are replaced only when they changed (their connection counts start again from the new
//!   connections). The admin endpoint's address is not reloaded;
//! - `coap` listeners (UDP sockets) are matched the same way and keep their socket and their device flows; flows
//!   to servers that left the pool end (see [`crate::udp`], "Reload").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminContext, AdminView};
use crate::balancer::backend::Server as BackendServer;
use crate::balancer::{Balancer, Pool};
use crate::config::{self, Config, ListenerConfig, ListenerProtocol, RequireIdentity};
use crate::health;
use crate::listener::{accept_loop, Admission};
use crate::metrics::{Metrics, ReloadResult, ResultLabels};
use crate::session::SessionContext;
use crate::shutdown;
use crate::transport::ws::UpgradePolicy;
use crate::udp::{self, BoundUdp, UdpListeners};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
}

type ReloadReply = oneshot::Sender<Result<String, String>>;

/// Asks the running server to reload its configuration file.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<ReloadReply>,
}

impl ReloadHandle {
    /// Reloads and waits for the outcome: a summary, or the error (file, key, problem).
    pub async fn reload(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(reply).await.map_err(|_| "the server is not running".to_owned())?;
        answer.await.map_err(|_| "the server stopped during the reload".to_owned())?
    }
}

/// A listener's socket and its swappable settings.
struct BoundListener {
    config: ListenerConfig,
    ctx: Arc<ArcSwap<SessionContext>>,
    tcp: TcpListener,
}

/// A bound, not yet running, load balancer.
pub struct Server {
    config: Config,
    metrics: Arc<Metrics>,
    balancers: Vec<Arc<Balancer>>,
    listeners: Vec<BoundListener>,
    /// `coap` listeners (UDP).
    udp_listeners: Vec<BoundUdp>,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
    reload_tx: mpsc::Sender<ReloadReply>,
    reload_rx: mpsc::Receiver<ReloadReply>,
}

/// The per-connection settings of a listener under a configuration.
fn session_context(
    l: &ListenerConfig,
    config: &Config,
    balancer: Arc<Balancer>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> SessionContext {
    if let Some(t) = &l.tls {
        match crate::metrics::certificate::leaf_not_after(&t.cert) {
            Ok(not_after) => metrics.set_certificate_expiry(&l.name, not_after),
            Err(e) => warn!(listener = %l.name, error = %e, "certificate expiry unknown"),
        }
    }
    SessionContext {
        name: l.name.clone(),
        protocol: l.protocol,
        tls: l.tls.as_ref().map(|t| Arc::clone(&t.server_config)),
        ws: (l.protocol == ListenerProtocol::Websocket).then(|| UpgradePolicy {
            path: l.path.clone(),
            allowed_origins: l.allowed_origins.clone(),
            timeout: config.limits.handshake_timeout,
        }),
        allowed_sources: l.allowed_sources.clone(),
        balancer,
        limits: config.limits.clone(),
        metrics: Arc::clone(metrics),
        listener_metrics: metrics.listener(&l.name),
        log_client_id: config.log.client_id,
        trusted_proxies: l.trusted_proxies.clone(),
        require_identity: l.tls.as_ref().map_or(RequireIdentity::None, |t| t.require_identity),
        shutdown_notice: config.shutdown.disconnect.reason_code().map(|reason| (shutdown.clone(), reason)),
    }
}

/// Connections the kernel may hold for a listener before they are accepted (its accept queue), as HAProxy sizes
/// its `backlog` from maxconn: a reconnect storm after a failover must queue, not have its SYNs dropped and retried
/// seconds later. The kernel caps it at `net.core.somaxconn` (4096 by default on current Linux).
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(l: &ListenerConfig) -> Result<TcpListener, ServerError> {
    let bind = || {
        let socket = if l.bind.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(l.bind)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| ServerError::Bind { name: l.name.clone(), addr: l.bind, source })
}

impl Server {
    /// Builds the pools and binds every socket (so port conflicts show before anything runs).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let balancers: Vec<Arc<Balancer>> =
            config.backends.iter().map(|b| Arc::new(Balancer::new(Pool::new(b.clone(), &metrics)))).collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut udp_listeners = Vec::new();
        for l in &config.listeners {
            if l.protocol == ListenerProtocol::Coap {
                let socket = udp::bind(l.bind).map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
                udp_listeners.push(BoundUdp { config: l.clone(), socket });
                continue;
            }
            let tcp = bind_listener(l)?;
            let Some(balancer) = balancers.get(l.backend) else { continue };
            let ctx = session_context(l, &config, Arc::clone(balancer), &metrics, &shutdown);
            listeners.push(BoundListener { config: l.clone(), ctx: Arc::new(ArcSwap::from_pointee(ctx)), tcp });
        }
        let admin = match &config.admin {
            None => None,
            Some(a) => Some(TcpListener::bind(a.bind).await.map_err(|source| ServerError::Bind {
                name: "admin".into(),
                addr: a.bind,
                source,
            })?),
        };
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Server { config, metrics, balancers, listeners, udp_listeners, admin, shutdown, reload_tx, reload_rx })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs().remove(name)
    }

    /// Every listener's bound address by name (UDP for `coap` listeners, TCP for the others).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        let tcp = self.listeners.iter().filter_map(|l| Some((l.config.name.clone(), l.tcp.local_addr().ok()?)));
        let udp = self.udp_listeners.iter().filter_map(|l| Some((l.config.name.clone(), l.socket.local_addr().ok()?)));
        tcp.chain(udp).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Reloads the configuration file of the running server (what SIGHUP does).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle { tx: self.reload_tx.clone() }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until the shutdown token is cancelled, then drains open relays up to `shutdown.drain_timeout`.
    pub async fn run(self) -> Result<(), ServerError> {
        let reload = self.reload_handle();
        let Server { config, metrics, balancers, listeners, udp_listeners, admin, shutdown, reload_tx, mut reload_rx } =
            self;
        drop(reload_tx);
        let mut running = Running {
            metrics: Arc::clone(&metrics),
            balancers: HashMap::new(),
            health_stops: HashMap::new(),
            listeners: Vec::new(),
            admission: Arc::new(ArcSwap::new(Admission::from_limits(&config.limits))),
            admin: None,
            connections: TaskTracker::new(),
            accepts: TaskTracker::new(),
            background: TaskTracker::new(),
            close_sessions: CancellationToken::new(),
            stop_background: CancellationToken::new(),
            shutdown: shutdown.clone(),
            config: config.clone(),
            udp: UdpListeners::default(),
        };
        for (b, balancer) in config.backends.iter().zip(&balancers) {
            running.balancers.insert(b.name.clone(), Arc::clone(balancer));
        }
        running.start_health();
        if let Some(admin_listener) = admin {
            let ctx = Arc::new(AdminContext {
                metrics: Arc::clone(&metrics),
                view: ArcSwap::from_pointee(running.admin_view(&config)),
                reload,
            });
            info!(addr = ?admin_listener.local_addr().ok(), "admin endpoint listening");
            let (tracker, stop) = (running.background.clone(), running.stop_background.clone());
            running.background.spawn(admin::serve(admin_listener, Arc::clone(&ctx), tracker, stop));
            running.admin = Some(ctx);
        }
        for l in listeners {
            running.start_listener(l);
        }
        for l in udp_listeners {
            let Some(balancer) = balancers.get(l.config.backend) else { continue };
            let stop = shutdown.child_token();
            running.udp.start(l, Arc::clone(balancer), &metrics, &running.accepts, stop);
        }

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                request = reload_rx.recv() => {
                    let Some(reply) = request else { break };
                    let outcome = running.reload().await;
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
        shutdown.cancel();
        running.accepts.close();
        running.accepts.wait().await;
        if !shutdown::drain(&running.connections, running.config.shutdown.drain_timeout).await {
            running.close_sessions.cancel();
            running.connections.wait().await;
        }
        running.stop_background.cancel();
        running.background.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), running.background.wait()).await;
        Ok(())
    }
}

/// A listener's accept loop and what it reads.
struct RunningListener {
    config: ListenerConfig,
    ctx: Arc<ArcSwap<SessionContext>>,
    stop: CancellationToken,
}

/// The state a running server changes on reload.
struct Running {
    config: Config,
    metrics: Arc<Metrics>,
    balancers: HashMap<String, Arc<Balancer>>,
    health_stops: HashMap<String, CancellationToken>,
    listeners: Vec<RunningListener>,
    admission: Arc<ArcSwap<Admission>>,
    admin: Option<Arc<AdminContext>>,
    /// The `coap` listeners.
    udp: UdpListeners,
    connections: TaskTracker,
    accepts: TaskTracker,
    background: TaskTracker,
    close_sessions: CancellationToken,
    stop_background: CancellationToken,
    shutdown: CancellationToken,
}

impl Running {
    fn admin_view(&self, config: &Config) -> AdminView {
        let balancers: Vec<Arc<Balancer>> =
            config.backends.iter().filter_map(|b| self.balancers.get(&b.name).cloned()).collect();
        AdminView { balancers, listened: config.listeners.iter().map(|l| l.backend).collect() }
    }

    /// (Re)starts the probes of every backend.
    fn start_health(&mut self) {
        for stop in self.health_stops.values() {
            stop.cancel();
        }
        self.health_stops.clear();
        for (name, balancer) in &self.balancers {
            let pool = balancer.pool();
            let stop = self.stop_background.child_token();
            let c = &pool.config;
            health::spawn(&c.name, &c.health, c.on_down, &pool.servers, &self.background, stop.clone());
            self.health_stops.insert(name.clone(), stop);
        }
    }

    fn start_listener(&mut self, l: BoundListener) {
        let ctx = l.ctx.load();
        info!(listener = %ctx.name, addr = ?l.tcp.local_addr().ok(), protocol = ctx.protocol.as_str(), tls = ctx.tls.is_some(), "listening");
        drop(ctx);
        let stop = self.shutdown.child_token();
        self.accepts.spawn(accept_loop(
            l.tcp,
            Arc::clone(&l.ctx),
            Arc::clone(&self.admission),
            self.connections.clone(),
            stop.clone(),
            self.close_sessions.clone(),
        ));
        self.listeners.push(RunningListener { config: l.config, ctx: l.ctx, stop });
    }

    /// Loads the configuration file again and applies it (see the module docs).
    async fn reload(&mut self) -> Result<String, String> {
        let new = config::load(&self.config.source).map_err(|e| e.to_string())?;

        // Which running listener each new one continues, and the sockets of the new ones, before changing anything.
        let mut taken = vec![false; self.listeners.len()];
        let mut continues: Vec<Option<usize>> = Vec::with_capacity(new.listeners.len());
        for l in &new.listeners {
            if l.protocol == ListenerProtocol::Coap {
                continues.push(None); // UDP: see `self.udp` below
                continue;
            }
            let by_name = self.listeners.iter().position(|r| r.config.name == l.name);
            let by_bind = || {
                self.listeners.iter().enumerate().position(|(i, r)| {
                    l.bind.port() != 0 && r.config.bind == l.bind && !taken.get(i).copied().unwrap_or(true)
                })
            };
            let found = by_name.filter(|&i| !taken.get(i).copied().unwrap_or(true)).or_else(by_bind);
            // A listener keeps its socket only if its address is the same.
            let found = found.filter(|&i| self.listeners.get(i).is_some_and(|r| r.config.bind == l.bind));
            if let Some(i) = found {
                if let Some(t) = taken.get_mut(i) {
                    *t = true;
                }
            }
            continues.push(found);
        }
        // Listeners that end free their addresses first (a listener may move to another's address).
        let mut fresh = Vec::new();
        for (l, found) in new.listeners.iter().zip(&continues) {
            if found.is_none() && l.protocol != ListenerProtocol::Coap {
                let conflict = self.listeners.iter().enumerate().any(|(i, r)| {
                    r.config.bind == l.bind && l.bind.port() != 0 && !taken.get(i).copied().unwrap_or(true)
                });
                if conflict {
                    return Err(format!(
                        "listener {}: {} is held by listener {} being removed in the same reload: reload twice",
                        l.name,
                        l.bind,
                        self.listeners.iter().find(|r| r.config.bind == l.bind).map_or("?", |r| r.config.name.as_str())
                    ));
                }
                fresh.push(bind_listener(l).map_err(|e| e.to_string())?);
            }
        }
        let udp_plan = self.udp.prepare(&new)?;

        // Backends: same-named servers carry their state over.
        let mut balancers = HashMap::new();
        for b in &new.backends {
            let pool = match self.balancers.get(&b.name) {
                Some(old) => {
                    let old_pool = old.pool();
                    let servers = b
                        .servers
                        .iter()
                        .map(|s| {
                            let metrics = self.metrics.server(&b.name, &s.name);
                            match old_pool.servers.iter().find(|o| o.name == s.name) {
                                Some(o) if o.address == s.address && o.weight == s.weight => Arc::clone(o),
                                Some(o) => Arc::new(o.successor(s, metrics)),
                                None => Arc::new(BackendServer::new(s, metrics)),
                            }
                        })
                        .collect();
                    for gone in old_pool.servers.iter().filter(|o| !b.servers.iter().any(|s| s.name == o.name)) {
                        self.metrics.forget_server(&b.name, &gone.name);
                    }
                    let pool = Pool::with_servers(b.clone(), servers);
                    old.replace(pool);
                    Arc::clone(old)
                }
                None => Arc::new(Balancer::new(Pool::new(b.clone(), &self.metrics))),
            };
            balancers.insert(b.name.clone(), pool);
        }
        for (name, old) in &self.balancers {
            if !balancers.contains_key(name) {
                for s in &old.pool().servers {
                    self.metrics.forget_server(name, &s.name);
                }
            }
        }
        self.balancers = balancers;
        self.start_health();

        if new.limits != self.config.limits {
            self.admission.store(Admission::from_limits(&new.limits));
        }

        // Listeners: continue, stop, start.
        let mut fresh = fresh.into_iter();
        let mut kept = Vec::new();
        let mut old: Vec<Option<RunningListener>> = std::mem::take(&mut self.listeners).into_iter().map(Some).collect();
        let mut started = Vec::new();
        for (l, found) in new.listeners.iter().zip(continues) {
            if l.protocol == ListenerProtocol::Coap {
                continue;
            }
            let Some(balancer) = new.backends.get(l.backend).and_then(|b| self.balancers.get(&b.name)) else {
                continue;
            };
            let ctx = session_context(l, &new, Arc::clone(balancer), &self.metrics, &self.shutdown);
            match found.and_then(|i| old.get_mut(i).and_then(Option::take)) {
                Some(mut running) => {
                    running.ctx.store(Arc::new(ctx));
                    running.config = l.clone();
                    kept.push(running);
                }
                None => {
                    if let Some(tcp) = fresh.next() {
                        started.push(BoundListener {
                            config: l.clone(),
                            ctx: Arc::new(ArcSwap::from_pointee(ctx)),
                            tcp,
                        });
                    }
                }
            }
        }
        let mut stopped = Vec::new();
        for r in old.into_iter().flatten() {
            r.stop.cancel();
            stopped.push(r.config.name);
        }
        self.listeners = kept;
        let mut added: Vec<String> = started.iter().map(|l| l.config.name.clone()).collect();
        for l in started {
            self.start_listener(l);
        }
        let (udp_added, udp_stopped) =
            self.udp.apply(udp_plan, &self.balancers, &new, &self.metrics, &self.accepts, &self.shutdown);
        added.extend(udp_added);
        stopped.extend(udp_stopped);
        if let Some(admin) = &self.admin {
            admin.view.store(Arc::new(self.admin_view(&new)));
            if new.admin.as_ref().map(|a| a.bind) != self.config.admin.as_ref().map(|a| a.bind) {
                warn!("admin.bind changed: a restart is needed for the admin endpoint to move");
            }
        }
        if new.workers != self.config.workers {
            warn!("workers changed: a restart is needed for the number of threads to change");
        }
        let servers: usize = new.backends.iter().map(|b| b.servers.len()).sum();
        let summary = format!(
            "{} listeners ({} added, {} removed), {} backends, {} servers",
            new.listeners.len(),
            added.len(),
            stopped.len(),
            new.backends.len(),
            servers
        );
        self.config = new;
        Ok(summary)
    }
}
