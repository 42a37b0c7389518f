//! The running load balancer: binds the listeners and the admin endpoint, starts health probes, accepts until
//! shutdown, then drains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminContext};
use crate::balancer::{Balancer, Pool};
use crate::config::{Config, ListenerProtocol};
use crate::health;
use crate::listener::{accept_loop, Admission};
use crate::metrics::Metrics;
use crate::session::SessionContext;
use crate::shutdown;
use crate::transport::ws::{self, UpgradePolicy};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
}

/// A bound, not yet running, load balancer.
pub struct Server {
    config: Config,
    metrics: Arc<Metrics>,
    balancers: Vec<Arc<Balancer>>,
    listeners: Vec<(Arc<SessionContext>, TcpListener)>,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
}

impl Server {
    /// Builds the pools and binds every socket (so port conflicts show before anything runs).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let balancers: Vec<Arc<Balancer>> =
            config.backends.iter().map(|b| Arc::new(Balancer::new(Pool::new(b.clone(), &metrics)))).collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tcp = TcpListener::bind(l.bind).await.map_err(|source| ServerError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            let Some(balancer) = balancers.get(l.backend) else { continue };
            if let Some(t) = &l.tls {
                match crate::metrics::certificate::leaf_not_after(&t.cert) {
                    Ok(not_after) => metrics.set_certificate_expiry(&l.name, not_after),
                    Err(e) => warn!(listener = %l.name, error = %e, "certificate expiry unknown"),
                }
            }
            let ctx = SessionContext {
                name: l.name.clone(),
                protocol: l.protocol,
                tls: l.tls.as_ref().map(|t| TlsAcceptor::from(Arc::clone(&t.server_config))),
                ws: (l.protocol == ListenerProtocol::Websocket).then(|| UpgradePolicy {
                    path: l.path.clone(),
                    allowed_origins: l.allowed_origins.clone(),
                    timeout: config.limits.handshake_timeout,
                    frames: ws::frame_config(config.limits.max_ws_frame_size),
                }),
                allowed_sources: l.allowed_sources.clone(),
                balancer: Arc::clone(balancer),
                limits: config.limits.clone(),
                metrics: Arc::clone(&metrics),
                listener_metrics: metrics.listener(&l.name),
                log_client_id: config.log.client_id,
            };
            listeners.push((Arc::new(ctx), tcp));
        }
        let admin = match &config.admin {
            None => None,
            Some(a) => Some(TcpListener::bind(a.bind).await.map_err(|source| ServerError::Bind {
                name: "admin".into(),
                addr: a.bind,
                source,
            })?),
        };
        Ok(Server { config, metrics, balancers, listeners, admin, shutdown: CancellationToken::new() })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(c, _)| c.name == name).and_then(|(_, l)| l.local_addr().ok())
    }

    /// Every listener's bound address by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.listeners.iter().filter_map(|(c, l)| Some((c.name.clone(), l.local_addr().ok()?))).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until the shutdown token is cancelled, then drains open relays up to `shutdown.drain_timeout`.
    pub async fn run(self) -> Result<(), ServerError> {
        let Server { config, metrics, balancers, listeners, admin, shutdown } = self;
        let connections = TaskTracker::new();
        let close_sessions = CancellationToken::new();
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();

        for b in &balancers {
            let pool = b.pool();
            health::spawn(&pool.config.name, &pool.config.health, &pool.servers, &background, stop_background.clone());
        }
        if let Some(admin_listener) = admin {
            let ctx = Arc::new(AdminContext {
                metrics: Arc::clone(&metrics),
                balancers: balancers.clone(),
                listened: config.listeners.iter().map(|l| l.backend).collect(),
            });
            info!(addr = ?admin_listener.local_addr().ok(), "admin endpoint listening");
            background.spawn(admin::serve(admin_listener, ctx, background.clone(), stop_background.clone()));
        }
        let admission = Admission::new(config.limits.max_connections, config.limits.max_connections_per_ip);
        let accepts = TaskTracker::new();
        for (ctx, tcp) in listeners {
            info!(listener = %ctx.name, addr = ?tcp.local_addr().ok(), protocol = ctx.protocol.as_str(), tls = ctx.tls.is_some(), "listening");
            accepts.spawn(accept_loop(
                tcp,
                ctx,
                Arc::clone(&admission),
                connections.clone(),
                shutdown.clone(),
                close_sessions.clone(),
            ));
        }
        accepts.close();

        shutdown.cancelled().await;
        accepts.wait().await;
        if !shutdown::drain(&connections, config.shutdown.drain_timeout).await {
            close_sessions.cancel();
            connections.wait().await;
        }
        stop_background.cancel();
        background.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), background.wait()).await;
        Ok(())
    }
}
