//! What the reloads of a running server change: its listeners of every protocol (their sockets and swappable
//! settings), its pools and their probes, and admission. Started by the server, changed by
//! [`super::apply`].

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::balancer::{address, state_file, Balancer, Pool};
use crate::config::{Config, ListenerConfig, ListenerProtocol, RequireIdentity};
use crate::health;
use crate::listener::accept_loop;
use crate::metrics::Metrics;
use crate::session::route_table::Table;
use crate::session::SessionContext;
use crate::shutdown::Tasks;
use crate::transport::ws::UpgradePolicy;
use crate::udp::{self, UdpContext};

use super::plan::Transport;

/// Connections the kernel may hold for a listener before they are accepted (its accept queue), as HAProxy sizes
/// its `backlog` from maxconn: a reconnect storm after a failover, and clients arriving while mqtt-lb is full
/// (`limits.max_connections`, `limits.max_handshakes`: listeners then stop accepting), must queue, not have their
/// SYNs dropped and retried seconds later. The kernel caps it at `net.core.somaxconn` (4096 by default on current
/// Linux), so asking for more makes that sysctl the one setting an operator raises for larger queues.
const LISTEN_BACKLOG: u32 = 65_535;

/// A listener's bound socket, not yet serving: TCP, or UDP for `coap` listeners.
pub enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    pub fn bind(l: &ListenerConfig) -> std::io::Result<Socket> {
        match Transport::of(l) {
            Transport::Udp => udp::bind(l.bind).map(Socket::Udp),
            Transport::Tcp => {
                let socket = if l.bind.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.set_reuseaddr(true)?;
                socket.bind(l.bind)?;
                socket.listen(LISTEN_BACKLOG).map(Socket::Tcp)
            }
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr().ok(),
            Socket::Udp(s) => s.local_addr().ok(),
        }
    }
}

/// The settings a listener's task reads for each new connection (TCP) or datagram (UDP); a reload swaps them.
enum Settings {
    Tcp(Arc<ArcSwap<SessionContext>>),
    Udp(Arc<ArcSwap<UdpContext>>),
}

/// A listener's task and what it reads.
pub(super) struct RunningListener {
    pub(super) name: String,
    settings: Settings,
    pub(super) stop: CancellationToken,
}

/// The part of a running server that reloads change.
pub struct Running {
    /// The configuration applied last.
    pub config: Config,
    pub(super) metrics: Arc<Metrics>,
    /// One per backend of `config`, in its order.
    pub(super) pools: Vec<Arc<Balancer>>,
    /// Cancelled when the probes restart (after each reload).
    probes: CancellationToken,
    pub(super) listeners: Vec<RunningListener>,
    pub(super) admission: Arc<ArcSwap<Admission>>,
    /// Increases with each reload: `coap` listeners then re-check the servers of their flows.
    pub(super) generation: u64,
    pub(super) tasks: Tasks,
}

impl Running {
    /// Builds the pools, starts their probes and serves every listener on its bound socket (`sockets` in the
    /// order of `config.listeners`).
    pub fn start(config: Config, metrics: Arc<Metrics>, sockets: Vec<Socket>, tasks: Tasks) -> Running {
        let pools: Vec<Arc<Balancer>> =
            config.backends.iter().map(|b| Arc::new(Balancer::new(Pool::new(b.clone(), &metrics)))).collect();
        // Before any listener accepts: a server left in maintenance stays there.
        if let Some(path) = config.admin.as_ref().and_then(|a| a.state_file.as_deref()) {
            state_file::restore(path, &pools);
        }
        let mut running = Running {
            admission: Arc::new(ArcSwap::new(Admission::from_limits(&config.limits, metrics.rate_table.clone()))),
            config,
            metrics,
            pools,
            probes: CancellationToken::new(),
            listeners: Vec::new(),
            generation: 0,
            tasks,
        };
        running.start_health();
        let listeners = running.config.listeners.clone();
        for (l, socket) in listeners.iter().zip(sockets) {
            running.start_listener(l, socket);
        }
        running
    }

    /// The pools, one per backend of [`Running::config`], in its order.
    pub fn pools(&self) -> &[Arc<Balancer>] {
        &self.pools
    }

    /// (Re)starts the probes and the DNS refresh of every backend.
    pub(super) fn start_health(&mut self) {
        self.probes.cancel();
        self.probes = self.tasks.stop_background.child_token();
        for balancer in &self.pools {
            let pool = balancer.pool();
            let c = &pool.config;
            address::spawn_refresh(&pool.servers, &self.tasks.background, self.probes.clone());
            health::spawn(&c.name, &c.health, c.on_down, &pool.servers, &self.tasks.background, self.probes.clone());
        }
    }

    /// Serves `l` on its bound socket until shutdown or a reload that removes it.
    pub(super) fn start_listener(&mut self, l: &ListenerConfig, socket: Socket) {
        let stop = self.tasks.shutdown.child_token();
        let addr = socket.local_addr();
        let settings = match socket {
            Socket::Tcp(tcp) => {
                let ctx = Arc::new(ArcSwap::from_pointee(self.session_context(l)));
                info!(listener = %l.name, addr = addr.map(display), protocol = l.protocol.as_str(), tls = l.tls.is_some(), "listening");
                let (tracker, close) = (self.tasks.connections.clone(), self.tasks.close_sessions.clone());
                let admission = Arc::clone(&self.admission);
                self.tasks.accepts.spawn(accept_loop(tcp, Arc::clone(&ctx), admission, tracker, stop.clone(), close));
                Settings::Tcp(ctx)
            }
            Socket::Udp(socket) => {
                let Some(balancer) = l.backend.and_then(|i| self.pools.get(i)) else { return };
                let ctx = udp::context(l, Arc::clone(balancer), &self.metrics, self.generation);
                let ctx = Arc::new(ArcSwap::from_pointee(ctx));
                info!(listener = %l.name, addr = addr.map(display), protocol = "coap", "listening (UDP)");
                self.tasks.accepts.spawn(udp::serve(
                    Arc::new(socket),
                    Arc::clone(&ctx),
                    stop.clone(),
                    self.tasks.accepts.clone(),
                ));
                Settings::Udp(ctx)
            }
        };
        self.listeners.push(RunningListener { name: l.name.clone(), settings, stop });
    }

    /// Gives a running listener the settings of `l` (of `self.config`) for its next connections or datagrams.
    pub(super) fn update_listener(&self, r: &mut RunningListener, l: &ListenerConfig) {
        match &r.settings {
            Settings::Tcp(ctx) => ctx.store(Arc::new(self.session_context(l))),
            Settings::Udp(ctx) => {
                let Some(balancer) = l.backend.and_then(|i| self.pools.get(i)) else { return };
                ctx.store(Arc::new(udp::context(l, Arc::clone(balancer), &self.metrics, self.generation)));
            }
        }
        r.name.clone_from(&l.name);
    }

    fn session_context(&self, l: &ListenerConfig) -> SessionContext {
        session_context(l, &self.config, &self.pools, &self.metrics, &self.tasks)
    }
}

/// Builds what `run` builds from `config` before it binds a socket or spawns a task (pools, admission with one
/// connection admitted, every listener's settings, the shutdown deadline) and drops it: a configuration that
/// `check` accepts must not panic here. For the fuzz target and tests.
pub fn dry_run(config: &Config) {
    let metrics = Arc::new(Metrics::new());
    let tasks = Tasks::default();
    let pools: Vec<Arc<Balancer>> =
        config.backends.iter().map(|b| Arc::new(Balancer::new(Pool::new(b.clone(), &metrics)))).collect();
    let admission = Admission::from_limits(&config.limits, metrics.rate_table.clone());
    let _ticket = admission.admit(std::net::IpAddr::from([192, 0, 2, 1]));
    let _ = admission.successor(&config.limits);
    for l in &config.listeners {
        match (Transport::of(l), l.backend.and_then(|i| pools.get(i))) {
            (Transport::Tcp, _) => drop(session_context(l, config, &pools, &metrics, &tasks)),
            (Transport::Udp, Some(balancer)) => drop(udp::context(l, Arc::clone(balancer), &metrics, 0)),
            (Transport::Udp, None) => {}
        }
    }
    let _ = tokio::time::Instant::now() + config.shutdown.grace + config.shutdown.drain_timeout;
}

/// The per-connection settings of a TCP listener under a configuration.
fn session_context(
    l: &ListenerConfig,
    config: &Config,
    pools: &[Arc<Balancer>],
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> SessionContext {
    for c in l.tls.iter().flat_map(|t| &t.certificates) {
        match &c.not_after {
            Ok(not_after) => metrics.set_certificate_expiry(&l.name, &c.label, *not_after),
            Err(e) => warn!(listener = %l.name, certificate = %c.label, error = %e, "certificate expiry unknown"),
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
        backends: Table::new(&l.name, &l.routes, l.backend, pools, metrics),
        limits: config.limits.clone(),
        metrics: Arc::clone(metrics),
        listener_metrics: metrics.listener(&l.name),
        log_client_id: config.log.client_id,
        trusted_proxies: l.trusted_proxies.clone(),
        require_identity: l.tls.as_ref().map_or(RequireIdentity::None, |t| t.require_identity),
        username_from_certificate: l.tls.as_ref().and_then(|t| t.username_from_certificate),
        shutdown_notice: config.shutdown.disconnect.reason_code().map(|reason| (tasks.shutdown.clone(), reason)),
    }
}
