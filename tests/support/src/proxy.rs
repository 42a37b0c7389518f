//! The proxy under test, started in process through the library API, and the placement it is expected to make.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use mqtt_lb::balancer::{Balancer, Pool};
use mqtt_lb::config::Config;
use mqtt_lb::metrics::Metrics;
use mqtt_lb::server::{Server, ServerError};

use crate::admin::metric;
use crate::time::{eventually, init_tracing};

/// A running mqtt-lb, started through the library API. Drop cancels it.
pub struct TestProxy {
    /// The first listener's address.
    pub mqtts: SocketAddr,
    /// Every listener's address by name.
    pub addrs: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), ServerError>>>,
    /// The parsed configuration (for computing expected placements).
    pub config: Config,
}

impl TestProxy {
    /// Parses `yaml` (paths in it should be absolute), binds, and runs the server in a task.
    pub async fn start(yaml: &str) -> TestProxy {
        init_tracing();
        let origin = std::env::temp_dir().join("mqtt-lb-test-config.yaml");
        let config = mqtt_lb::config::parse(yaml, &origin).unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"));
        let first = config.listeners.first().expect("a listener in the test config").name.clone();
        let server = Server::bind(config.clone()).await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addrs = server.listener_addrs();
        let mqtts = *addrs.get(&first).expect("address of the first listener");
        let admin = server.admin_addr().expect("the test config has an admin endpoint");
        let token = server.shutdown_token();
        let handle = tokio::spawn(server.run());
        TestProxy { mqtts, addrs, admin, token, handle: Some(handle), config }
    }

    /// Cancels and waits for `run` to return (up to the drain timeout plus 5 s).
    pub async fn stop(mut self) {
        self.token.cancel();
        let limit = self.config.shutdown.drain_timeout + Duration::from_secs(5);
        if let Some(h) = self.handle.take() {
            match tokio::time::timeout(limit, h).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("server returned an error: {e}"),
                Ok(Err(e)) => panic!("server task failed: {e}"),
                Err(_) => panic!("server did not stop within {limit:?}"),
            }
        }
    }

    /// `mqttlb_server_up{backend,server}` of this proxy's first backend.
    pub async fn server_up(&self, server: &str) -> f64 {
        let backend = &self.config.backends[0].name;
        metric(self.admin, &format!("mqttlb_server_up{{backend=\"{backend}\",server=\"{server}\"}}")).await
    }

    /// Waits until the health of `server` reads `up` in the metrics; returns how long that took.
    pub async fn wait_server_up(&self, server: &str, up: bool, timeout: Duration) -> Duration {
        let start = Instant::now();
        let want = if up { 1.0 } else { 0.0 };
        eventually(timeout, || async move { (self.server_up(server).await == want).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("mqttlb_server_up for {server} did not become {want} within {timeout:?}"));
        start.elapsed()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Placement as the library computes it for a backend's servers: the first candidate of a [`Balancer`] built from
/// the configuration, with every server up unless marked down here.
pub struct Placement {
    balancer: Balancer,
}

impl Placement {
    /// For the first backend of `config`.
    pub fn new(config: &Config) -> Placement {
        let backend = config.backends.first().expect("a backend").clone();
        Placement { balancer: Balancer::new(Pool::new(backend, &Metrics::new())) }
    }

    /// Marks `server` up or down for the next placements.
    pub fn set_up(&self, server: &str, up: bool) {
        let pool = self.balancer.pool();
        let s = pool.servers.iter().find(|s| s.name == server).unwrap_or_else(|| panic!("no server {server}"));
        s.set_up(up);
    }

    /// The server a client with `client_id` goes to.
    pub fn place(&self, client_id: &str) -> String {
        let c = self.balancer.candidates(Some(client_id.as_bytes()));
        c.first().map(|s| s.name.clone()).expect("no usable server in the placement")
    }

    /// Clients per server for these ids.
    pub fn spread<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for id in ids {
            *counts.entry(self.place(id)).or_insert(0) += 1;
        }
        counts
    }
}

/// The first id `prefix-N` that `placement` puts on `server`.
pub fn id_on(placement: &Placement, prefix: &str, server: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| placement.place(id) == server)
        .unwrap_or_else(|| panic!("no id with prefix {prefix} placed on {server}"))
}
