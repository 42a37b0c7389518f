//! Placement: a backend's pool of servers and the choice of a server for each new client.
//!
//! The pool is held in an [`ArcSwap`] so it can be replaced whole (on reload) while the connection path reads it
//! without locks. [`Balancer::candidates`] returns the usable servers (healthy and `ready`) best first; the session
//! tries them in that order, so a connect error falls through to the next choice of the same ranking.

pub mod address;
pub mod assigned_id;
pub mod backend;
pub mod gate;
pub mod selection;
pub mod state_file;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{BackendConfig, Balance};
use crate::metrics::Metrics;
use backend::BackendServer;
use selection::{LeastConn, Rendezvous, RoundRobin, Selection};

/// The servers of one backend and how they are chosen.
pub struct Pool {
    pub config: BackendConfig,
    pub servers: Vec<Arc<BackendServer>>,
    selection: Box<dyn Selection>,
}

impl Pool {
    pub fn new(config: BackendConfig, metrics: &Metrics) -> Pool {
        let servers = config
            .servers
            .iter()
            .map(|s| Arc::new(BackendServer::new(s, metrics.server(&config.name, &s.name))))
            .collect();
        Pool::with_servers(config, servers)
    }

    /// A pool of given servers (a reload passes servers that carry their state over).
    pub fn with_servers(config: BackendConfig, servers: Vec<Arc<BackendServer>>) -> Pool {
        let selection: Box<dyn Selection> = match config.balance {
            Balance::ClientId => Box::<Rendezvous>::default(),
            Balance::RoundRobin => Box::<RoundRobin>::default(),
            Balance::LeastConn => Box::<LeastConn>::default(),
        };
        Pool { config, servers, selection }
    }

    /// Usable servers for a client with this key, best first. Empty when no server is up and ready.
    pub fn candidates(&self, key: Option<&[u8]>) -> Vec<Arc<BackendServer>> {
        let mut servers: Vec<Arc<BackendServer>> = self.servers.iter().filter(|s| s.usable()).cloned().collect();
        self.selection.order(key, &mut servers);
        servers
    }

    /// [`Self::candidates`] for an MQTT client id (None: empty), with the server whose `assigned_id_prefix` the id
    /// starts with first ([`assigned_id`]).
    pub fn candidates_for_client(&self, client_id: Option<&[u8]>) -> Vec<Arc<BackendServer>> {
        let mut servers = self.candidates(client_id);
        if let Some(id) = client_id {
            assigned_id::place_first(&self.config.servers, id, &mut servers);
        }
        servers
    }
}

/// One backend: a swappable pool.
pub struct Balancer {
    pool: ArcSwap<Pool>,
}

impl Balancer {
    pub fn new(pool: Pool) -> Balancer {
        Balancer { pool: ArcSwap::from_pointee(pool) }
    }

    /// The current pool.
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.load_full()
    }

    pub fn name(&self) -> String {
        self.pool.load().config.name.clone()
    }

    /// Replaces the pool.
    pub fn replace(&self, pool: Pool) {
        self.pool.store(Arc::new(pool));
    }

    /// Usable servers for a client with this key, best first. Empty when no server is up and ready.
    pub fn candidates(&self, key: Option<&[u8]>) -> Vec<Arc<BackendServer>> {
        self.pool.load().candidates(key)
    }

    /// Whether at least one server can take new clients.
    pub fn any_usable(&self) -> bool {
        self.pool.load().servers.iter().any(|s| s.usable())
    }
}
