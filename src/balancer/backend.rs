//! One server of a backend at run time: its address (and what it resolved to), weight, health, administrative state and counters.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::address::ServerAddress;
use super::gate::{Gate, Slot};
use crate::config::ServerConfig;
use crate::metrics::ServerMetrics;
use crate::signal::Signal;

/// Administrative state, set by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new clients when healthy.
    Ready = 0,
    /// Takes no new clients; connected ones stay.
    Drain = 1,
    /// Takes no new clients and is not probed.
    Maint = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// A server that clients can be relayed to.
#[derive(Debug)]
pub struct BackendServer {
    pub name: String,
    /// `host:port` as configured.
    pub address: String,
    /// `address` resolved off the connection path; shared with the successors at the same address.
    resolved: Arc<ServerAddress>,
    pub weight: u32,
    pub metrics: ServerMetrics,
    up: AtomicBool,
    /// Whether a probe has judged this server (or the one it succeeds) yet: until then it is up unproven.
    probed: AtomicBool,
    state: AtomicU8,
    /// Shared with the successors at the same address (see [`BackendServer::successor`]).
    active: Arc<AtomicUsize>,
    /// Woken when the relays to this server must end (`on_down: close`); shared like `active`.
    close_relays: Arc<Signal>,
    /// `max_connections` and `max_connection_rate`, and the clients waiting for them.
    pub gate: Gate,
    /// Why the last failed probe failed, until a probe finds the server up again (`/servers`, the DOWN log line).
    check_error: ArcSwapOption<String>,
}

impl BackendServer {
    pub fn new(config: &ServerConfig, metrics: ServerMetrics) -> BackendServer {
        metrics.up.set(1);
        metrics.state.set(AdminState::Ready.as_str());
        let gate = Gate::new(config.max_connections, config.max_connection_rate, Arc::default(), metrics.clone());
        BackendServer {
            name: config.name.clone(),
            address: config.address.clone(),
            resolved: Arc::new(ServerAddress::new(&config.address)),
            weight: config.weight,
            metrics,
            // Servers start up, as in HAProxy: the first failed probe takes them down (see `health`).
            up: AtomicBool::new(true),
            probed: AtomicBool::new(false),
            state: AtomicU8::new(AdminState::Ready as u8),
            active: Arc::new(AtomicUsize::new(0)),
            close_relays: Arc::default(),
            gate,
            check_error: ArcSwapOption::empty(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the health verdict; returns true if it changed.
    pub fn set_up(&self, up: bool) -> bool {
        self.metrics.up.set(i64::from(up));
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// Whether a probe has judged this server yet (see [`BackendServer::set_probed`]).
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    /// Notes that a probe has judged this server: from now on its verdict is proven, kept across reloads.
    pub fn set_probed(&self) {
        self.probed.store(true, Ordering::Relaxed);
    }

    /// Why the last failed probe failed, while it still explains the verdict.
    pub fn check_error(&self) -> Option<Arc<String>> {
        self.check_error.load_full()
    }

    /// Records why a probe failed (`Some`), or that the server passed and is up (`None`).
    pub fn set_check_error(&self, error: Option<String>) {
        self.check_error.store(error.map(Arc::new));
    }

    pub fn state(&self) -> AdminState {
        AdminState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: AdminState) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.metrics.state.set(state.as_str());
    }

    /// Whether a new client may be placed here.
    pub fn usable(&self) -> bool {
        self.is_up() && self.state() == AdminState::Ready
    }

    /// Ends every relay to this server that is waiting on [`BackendServer::relays_closed`].
    pub fn close_relays(&self) {
        self.close_relays.fire();
    }

    /// Resolves when [`BackendServer::close_relays`] is called (create it before the relay starts).
    pub fn relays_closed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.close_relays.next()
    }

    /// A server of a new configuration that takes over this one's health and administrative state (reload).
    /// At the same address, the relays already open stay this server's: counted in its connections (/servers,
    /// least-conn), against its `max_connections`, and closed with it (`on_down: close`).
    pub fn successor(&self, config: &ServerConfig, metrics: ServerMetrics) -> BackendServer {
        let mut next = BackendServer::new(config, metrics);
        next.set_up(self.is_up());
        next.probed.store(self.probed(), Ordering::Relaxed);
        next.set_state(self.state());
        next.check_error.store(self.check_error());
        if next.address == self.address {
            next.active = Arc::clone(&self.active);
            next.close_relays = Arc::clone(&self.close_relays);
            next.resolved = Arc::clone(&self.resolved);
            let slots = Arc::clone(self.gate.slots());
            next.gate = Gate::new(config.max_connections, config.max_connection_rate, slots, next.metrics.clone());
        }
        next
    }

    /// The server's socket address, as last resolved (see [`super::address`]).
    pub fn resolved(&self) -> &ServerAddress {
        &self.resolved
    }

    /// The socket addresses to connect to (tried in turn): the last answer, or a lookup now if there is none yet.
    pub async fn socket_addrs(&self) -> std::io::Result<Arc<Vec<std::net::SocketAddr>>> {
        self.resolved.resolve(&self.metrics.dns_lookups).await
    }

    /// Relays open to this server now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one relay to this server until the guard is dropped.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        self.metrics.connections.inc();
        ActiveGuard { server: Arc::clone(self), _slot: None }
    }

    /// Like [`BackendServer::track`], holding the relay's `slot` (its place under `max_connections`) as long.
    pub fn track_slot(self: &Arc<Self>, slot: Slot) -> ActiveGuard {
        let mut guard = self.track();
        guard._slot = Some(slot);
        guard
    }
}

/// Holds one count in a server's active connections (and, for relays, the slot the gate gave).
#[derive(Debug)]
pub struct ActiveGuard {
    server: Arc<BackendServer>,
    _slot: Option<Slot>,
}

impl ActiveGuard {
    pub fn server(&self) -> &Arc<BackendServer> {
        &self.server
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::Relaxed);
        self.server.metrics.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn config(address: &str, max_connections: Option<usize>) -> ServerConfig {
        ServerConfig {
            name: "s".into(),
            address: address.into(),
            weight: 1,
            dtls_cid_node_id: None,
            max_connections,
            max_connection_rate: None,
            assigned_id_prefix: None,
        }
    }

    #[test]
    fn a_new_max_connections_counts_the_relays_already_open_at_the_same_address() {
        let m = Metrics::new();
        let old = Arc::new(BackendServer::new(&config("127.0.0.1:1", None), m.server("b", "s")));
        let open: Vec<ActiveGuard> = (0..2).filter_map(|_| old.gate.try_admit()).map(|s| old.track_slot(s)).collect();
        assert_eq!(open.len(), 2);
        let capped = old.successor(&config("127.0.0.1:1", Some(2)), m.server("b", "s"));
        assert!(capped.gate.try_admit().is_none(), "2 relays open: at the new cap of 2");
        drop(open);
        assert!(capped.gate.try_admit().is_some(), "a relay ended: room again");
        let moved = old.successor(&config("127.0.0.1:2", Some(1)), m.server("b", "s"));
        let _one = old.gate.try_admit();
        assert!(moved.gate.try_admit().is_some(), "another address: the old relays are not its own");
    }
}
