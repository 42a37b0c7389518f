//! Where a server is: its configured `host:port` as a socket address, resolved beside the connection path.
//!
//! An IP literal (`10.0.0.5:1883`, `[::1]:1883`) is its own answer and is never looked up. A host name is looked
//! up by a background task per server ([`spawn_refresh`]): at once when its pool is created or reloaded, then every
//! [`REFRESH_EVERY`]. The answer is kept in an [`ArcSwapOption`], so the TCP connects, the health probes and the UDP
//! datagram path read it without a lock and without DNS. A failed lookup keeps the last good answer (a warning is
//! logged when lookups start failing, not at each attempt).
//!
//! Until a host name's first answer arrives (the first moments after start-up or a reload, or a name that never
//! resolved): a TCP connect or a probe looks it up itself ([`ServerAddress::resolve`]) and keeps the answer for the
//! connects after it, one lookup at a time: the connects of a reconnect storm that arrive meanwhile wait for that
//! lookup's answer (or its failure) instead of each asking DNS. The UDP path never waits for DNS and skips the server
//! for new flows ([`ServerAddress::get`]). Every lookup counts in `mqttlb_server_dns_lookups_total`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::backend::BackendServer;

/// How often a host name is looked up again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// The longest one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server's `host:port` and the socket addresses it resolved to last (in the resolver's order; TCP tries them in
/// turn, as a connect to the name would, UDP takes the first).
#[derive(Debug)]
pub struct ServerAddress {
    host_port: String,
    /// Whether `host_port` names a host (an IP literal is resolved once and for all).
    is_name: bool,
    resolved: ArcSwapOption<Vec<SocketAddr>>,
    /// Held while a lookup runs: one lookup at a time per server.
    in_flight: tokio::sync::Mutex<()>,
    /// Lookups finished, answered or failed: a connect that waited while another's lookup failed fails with it.
    finished: AtomicU64,
}

impl ServerAddress {
    pub fn new(host_port: &str) -> ServerAddress {
        let literal: Option<SocketAddr> = host_port.parse().ok();
        ServerAddress {
            host_port: host_port.to_owned(),
            is_name: literal.is_none(),
            resolved: ArcSwapOption::from(literal.map(|a| Arc::new(vec![a]))),
            in_flight: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
        }
    }

    /// The first address of the last answer, without waiting: None for a host name that has not resolved yet.
    pub fn get(&self) -> Option<SocketAddr> {
        self.resolved.load().as_deref().and_then(|a| a.first().copied())
    }

    /// Whether the address is a host name (looked up in the background) rather than an IP literal.
    pub fn is_name(&self) -> bool {
        self.is_name
    }

    /// The last answer, or, before the first one, a lookup now whose answer is kept; while another lookup runs, its
    /// outcome.
    pub async fn resolve(&self, lookups: &Counter) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        if let Some(addrs) = self.resolved.load_full() {
            return Ok(addrs);
        }
        let finished = self.lookups_finished();
        let _turn = self.in_flight.lock().await;
        if let Some(addrs) = self.resolved.load_full() {
            return Ok(addrs);
        }
        if self.lookups_finished() != finished {
            return Err(std::io::Error::other("the name did not resolve (a lookup just made failed)"));
        }
        self.lookup(lookups).await
    }

    /// A fresh lookup (the background refresh), after any one in flight; with `fresh_since` (a count of
    /// [`Self::lookups_finished`]), none when a lookup has finished since with an answer kept (at start-up, a
    /// connect's or probe's lookup of the same moment).
    async fn refresh(&self, lookups: &Counter, fresh_since: Option<u64>) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        let _turn = self.in_flight.lock().await;
        if fresh_since.is_some_and(|n| n != self.lookups_finished()) {
            if let Some(addrs) = self.resolved.load_full() {
                return Ok(addrs);
            }
        }
        self.lookup(lookups).await
    }

    /// Lookups finished so far, answered or failed.
    pub fn lookups_finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Looks the name up and keeps the answer; a failure (or an empty answer) keeps the previous one. Counted in
    /// `lookups` once done, so that a count seen means its answer is there to read.
    async fn lookup(&self, lookups: &Counter) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        let result = self.query().await;
        lookups.inc();
        self.finished.fetch_add(1, Ordering::Release);
        result
    }

    async fn query(&self) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        let found: Vec<SocketAddr> =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(self.host_port.as_str()))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out"))??
                .collect();
        if found.is_empty() {
            return Err(std::io::Error::other("the name has no address"));
        }
        let found = Arc::new(found);
        self.resolved.store(Some(Arc::clone(&found)));
        Ok(found)
    }
}

/// Starts one lookup task per server of `servers` whose address is a host name; they end when `stop` is cancelled.
/// Called before the servers' probes start, so that a probe's first lookup counts as the task's first.
pub fn spawn_refresh(servers: &[Arc<BackendServer>], tracker: &TaskTracker, stop: CancellationToken) {
    for server in servers.iter().filter(|s| s.resolved().is_name()) {
        let (server, stop) = (Arc::clone(server), stop.clone());
        let since = server.resolved().lookups_finished();
        tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = refresh_loop(&server, since) => {}
            }
        });
    }
}

/// Looks `server` up at once (unless a connect or probe did since `since`), then every [`REFRESH_EVERY`].
async fn refresh_loop(server: &BackendServer, since: u64) {
    let mut ticks = tokio::time::interval(REFRESH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut fresh_since = Some(since);
    loop {
        ticks.tick().await;
        let before = server.resolved().get();
        match server.resolved().refresh(&server.metrics.dns_lookups, fresh_since.take()).await {
            Ok(addrs) => {
                let first = addrs.first().copied();
                if (before.is_some() && before != first) || failing {
                    let resolved = first.map(|a| a.to_string());
                    info!(server = %server.name, address = %server.address, resolved = resolved.as_deref(), "server address resolved");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    let kept = before.map(|a| a.to_string());
                    warn!(server = %server.name, address = %server.address, error = %e, kept = kept.as_deref(), "cannot resolve the server's address; keeping the last answer");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_need_no_lookup() {
        let v4 = ServerAddress::new("192.0.2.1:1883");
        assert_eq!(v4.get(), Some("192.0.2.1:1883".parse().unwrap()));
        assert!(!v4.is_name());
        let v6 = ServerAddress::new("[2001:db8::1]:5683");
        assert_eq!(v6.get(), Some("[2001:db8::1]:5683".parse().unwrap()));
        let name = ServerAddress::new("localhost:1883");
        assert!(name.is_name());
        assert_eq!(name.get(), None, "a name has no answer before its first lookup");
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_then_read() {
        let lookups = Counter::default();
        let a = ServerAddress::new("localhost:1883");
        let first = a.resolve(&lookups).await.unwrap();
        assert!(first.iter().all(|a| a.ip().is_loopback() && a.port() == 1883), "{first:?}");
        for _ in 0..10 {
            assert_eq!(a.resolve(&lookups).await.unwrap(), first);
        }
        assert_eq!(lookups.get(), 1, "later connects read the kept answer");
        assert_eq!(a.get(), first.first().copied());
    }

    #[tokio::test]
    async fn connects_before_the_first_answer_share_one_lookup() {
        let lookups = Counter::default();
        let a = ServerAddress::new("localhost:1883");
        let answers = futures_util::future::join_all((0..20).map(|_| a.resolve(&lookups))).await;
        assert!(answers.iter().all(|r| r.as_ref().is_ok_and(|addrs| !addrs.is_empty())), "{answers:?}");
        assert_eq!(lookups.get(), 1, "20 connects at once, one lookup");

        // A name that does not resolve: the waiters share the failure rather than each asking again.
        let failing = Counter::default();
        let b = ServerAddress::new("mqtt-lb-test.invalid:1883");
        let answers = futures_util::future::join_all((0..5).map(|_| b.resolve(&failing))).await;
        assert!(answers.iter().all(|r| r.is_err()), "{answers:?}");
        assert_eq!(failing.get(), 1);
        // The next connect (the failure is not kept) tries again.
        assert!(b.resolve(&failing).await.is_err());
        assert_eq!(failing.get(), 2);
    }

    #[tokio::test]
    async fn the_refresh_looks_up_at_once_unless_a_connect_just_did() {
        let lookups = Counter::default();
        let a = ServerAddress::new("localhost:1883");
        // Start-up: the refresh task begins, a probe looks the name up first; the refresh's first round takes it.
        let since = a.lookups_finished();
        a.resolve(&lookups).await.unwrap();
        a.refresh(&lookups, Some(since)).await.unwrap();
        assert_eq!(lookups.get(), 1);
        // A reload: a new refresh task, an answer kept from before: it looks up at once all the same.
        a.refresh(&lookups, Some(a.lookups_finished())).await.unwrap();
        assert_eq!(lookups.get(), 2);
        // Every later round looks up.
        a.refresh(&lookups, None).await.unwrap();
        assert_eq!(lookups.get(), 3);
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_answer() {
        let lookups = Counter::default();
        // `.invalid` never resolves (RFC 6761).
        let a = ServerAddress::new("mqtt-lb-test.invalid:1883");
        assert!(a.resolve(&lookups).await.is_err());
        assert_eq!(a.get(), None);
        let kept: SocketAddr = "192.0.2.9:1883".parse().unwrap();
        a.resolved.store(Some(Arc::new(vec![kept])));
        assert!(a.lookup(&lookups).await.is_err());
        assert_eq!(a.get(), Some(kept));
        assert_eq!(lookups.get(), 2);
    }
}
