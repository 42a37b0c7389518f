//! The failover storm (phase `storm`): `n` TLS clients connect once and stay connected (so that each holds a
//! session ticket when its store keeps them), then every connection is cut at once, as when the instance they were
//! on fails, and all `n` reconnect at the same instant. Measured: the time from the start of the reconnect until the
//! last client has its CONNACK, each client's time to CONNACK, how many handshakes resumed, the errors, and the CPU
//! of the TLS end (the proxy, or mosquitto for the direct path) during the storm.
//!
//! How many clients: each one costs the generator one descriptor, a proxy two (client and broker side) and the broker
//! one; the open-files limit is per process, so [`clients_allowed`] takes the smallest share over the processes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use rustls::ClientConfig;

use crate::load::{self, Errors, Stream, Target};
use crate::procs::Probe;

/// Bound of one client's reconnect: the whole storm must fit (thousands of handshakes queue behind each other).
const RECONNECT_BOUND: Duration = Duration::from_secs(60);
/// Bound of one client's first connection (50 at a time, as the other loads).
const CONNECT_BOUND: Duration = Duration::from_secs(10);
/// Bound of the wait for the TLS end to release the cut connections' descriptors.
const RELEASE_BOUND: Duration = Duration::from_secs(30);
/// Descriptors kept free in every process for everything but the clients (listeners, logs, health checks...).
pub const FD_MARGIN: u64 = 1000;

pub struct Storm {
    /// Clients asked for.
    pub clients: usize,
    /// Clients connected before the cut.
    pub connected: usize,
    /// Clients that had their CONNACK again after the cut.
    pub reconnected: u64,
    /// From the start of the reconnect until the last client had its CONNACK (or failed), seconds.
    pub secs: f64,
    /// Each reconnected client's time to CONNACK from the start of the reconnect, µs.
    pub connack_us: Vec<u32>,
    pub resumed: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// CPU during the reconnect (from the start until the last CONNACK).
    pub cpu: serde_json::Value,
}

/// Open-files limit (soft) of a running process, from /proc/PID/limits.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors open in a process.
fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count())
}

/// How many storm clients every process can hold: for each (name, pid, descriptors per client), (limit - margin) /
/// per client; the smallest wins. Returns it with the reason, for the log and the report.
pub fn clients_allowed(procs: &[(&str, u32, u64)]) -> (usize, String) {
    let mut best: Option<(u64, String)> = None;
    let mut why = Vec::new();
    for &(name, pid, per_client) in procs {
        let Some(limit) = nofile_limit(pid) else { continue };
        let n = limit.saturating_sub(FD_MARGIN) / per_client.max(1);
        why.push(format!("{name} limit {limit}, {per_client} per client: {n}"));
        if best.as_ref().is_none_or(|(b, _)| n < *b) {
            best = Some((n, name.to_owned()));
        }
    }
    let (n, name) = best.unwrap_or((1000, "no limit readable".to_owned()));
    (usize::try_from(n).unwrap_or(1000), format!("{} (margin {FD_MARGIN}); smallest: {name}", why.join("; ")))
}

/// Runs one storm through `target`, a client per configuration in `clients` (each with its own session store, or
/// all without). `tls_end` is the process that terminates TLS, whose descriptors of the cut connections must be
/// released before the reconnect (it holds the limit's worth).
pub async fn storm(target: Arc<Target>, clients: Vec<Arc<ClientConfig>>, tls_end: u32, probe: &Probe) -> Storm {
    let n = clients.len();
    let clients = Arc::new(clients);
    let baseline = open_fds(tls_end).unwrap_or(0);
    let errs = Arc::new(Errors::default());
    let held = connect_all(&target, &clients, &errs).await;
    let connected = held.len();
    // The cut: every connection closed at once, without DISCONNECT, as a failed instance's are.
    drop(held);
    let released = Instant::now();
    while open_fds(tls_end).is_some_and(|fds| fds > baseline + 16) {
        if released.elapsed() > RELEASE_BOUND {
            errs.add("cut_not_released", 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (gate, opened) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (target, clients, errs, mut opened) =
            (Arc::clone(&target), Arc::clone(&clients), Arc::clone(&errs), opened.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = match opened.wait_for(|t| t.is_some()).await {
                Ok(t) => (*t).unwrap_or_else(Instant::now),
                Err(_) => return (None, Duration::ZERO),
            };
            let Some(tls) = clients.get(i) else { return (None, Duration::ZERO) };
            let r = target.open_as(tls, 300, RECONNECT_BOUND).await;
            let took = t0.elapsed();
            match r {
                Ok(s) => (Some(s), took),
                Err(e) => {
                    errs.add(e, 1);
                    (None, took)
                }
            }
        }));
    }
    // Every client waits at the gate (spawned, not yet connecting): open it.
    tokio::task::yield_now().await;
    let run = probe.start();
    let _ = gate.send(Some(Instant::now()));
    let (mut streams, mut connack_us, mut last) = (Vec::with_capacity(n), Vec::with_capacity(n), Duration::ZERO);
    for t in tasks {
        match t.await {
            Ok((s, took)) => {
                last = last.max(took);
                if let Some(s) = s {
                    connack_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    streams.push(s);
                }
            }
            Err(_) => errs.add("client_panicked", 1),
        }
    }
    let cpu = run.finish();
    let resumed =
        streams.iter().filter(|s| s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)).count()
            as u64;
    let reconnected = streams.len() as u64;
    let mut errors = errs.take();
    for (k, v) in load::close_idle(streams, 50).await {
        *errors.entry(k).or_insert(0) += v;
    }
    Storm { clients: n, connected, reconnected, secs: last.as_secs_f64(), connack_us, resumed, errors, cpu }
}

/// The first connection of every client (50 at a time), each with its own configuration: where a client keeps
/// sessions, it now holds the tickets of this connection.
async fn connect_all(target: &Arc<Target>, clients: &Arc<Vec<Arc<ClientConfig>>>, errs: &Arc<Errors>) -> Vec<Stream> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (target, clients, errs, next) =
            (Arc::clone(target), Arc::clone(clients), Arc::clone(errs), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(tls) = clients.get(next.fetch_add(1, Ordering::Relaxed)) {
                match target.open_as(tls, 300, CONNECT_BOUND).await {
                    Ok(s) => held.push(s),
                    Err(e) => errs.add(e, 1),
                }
            }
            held
        }));
    }
    let mut all = Vec::with_capacity(clients.len());
    for t in tasks {
        match t.await {
            Ok(h) => all.extend(h),
            Err(_) => errs.add("client_panicked", 1),
        }
    }
    all
}
