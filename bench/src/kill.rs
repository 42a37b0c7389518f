//! The broker-kill storm (phase `kill`): N TLS clients through a proxy to three brokers; one broker is killed
//! (SIGKILL, its address then refuses connections) and its clients reconnect at once to the survivors; then it comes
//! back (a fresh mosquitto behind the same address) and the clients it lost are made to reconnect at once, as nothing
//! moves them back before they reconnect. Measured AT THE BROKERS: each broker sits behind a [`Front`], a TCP
//! forwarder in this process that notes when each client connection was accepted (health probes are told apart by
//! their first bytes and not counted), so the new-connection rate each broker saw is the broker's own view, not the
//! proxy's. Reported: the time until every client is connected again, the peak new connections per second each
//! broker saw, the refusals the clients met by reason; and, with `max_connection_rate`, PASS/FAIL: no broker saw
//! more than the rate in any one-second window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::load::{Errors, Target};
use crate::procs::{self, Broker, Proc};

/// What the bench's kill-storm clients put in their client ids: how a front tells them from health probes.
const MARKER: &[u8] = b"kstorm";
/// A client refused (or failed) tries again after this long, as a device with a fixed retry interval.
const RETRY: Duration = Duration::from_secs(1);
/// Bound of one connection attempt (a client may queue behind a rate cap for up to the queue timeout).
const ATTEMPT_BOUND: Duration = Duration::from_secs(30);
/// Bound of each stage (first connection of every client, the storm after the kill, the return).
const STAGE_BOUND: Duration = Duration::from_secs(90);
/// Descriptors per client in this process: the client's socket and the front's two.
pub const FDS_PER_CLIENT: u64 = 3;

/// What is measured: which proxy, with or without a per-server rate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    MqttLb,
    MqttLbRate,
    Haproxy,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Haproxy, Variant::MqttLb, Variant::MqttLbRate];

    pub fn name(self) -> &'static str {
        match self {
            Variant::MqttLb => "mqtt-lb",
            Variant::MqttLbRate => "mqtt-lb max_connection_rate",
            Variant::Haproxy => "haproxy",
        }
    }
}

/// A counting TCP forwarder in front of one broker: the broker's address as the proxy sees it.
struct Front {
    addr: SocketAddr,
    state: Arc<FrontState>,
}

struct FrontState {
    /// When each client connection (its first bytes hold [`MARKER`]) was accepted.
    clients: Mutex<Vec<Instant>>,
    /// Connections that were not clients: the proxy's health probes.
    probes: AtomicU64,
    upstream: Mutex<SocketAddr>,
    /// `true` while the broker is down: the listener is closed and every forwarded connection cut.
    down: watch::Sender<bool>,
}

impl Front {
    async fn start(upstream: SocketAddr) -> Result<Front, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("front: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("front: {e}"))?;
        let state = Arc::new(FrontState {
            clients: Mutex::new(Vec::new()),
            probes: AtomicU64::new(0),
            upstream: Mutex::new(upstream),
            down: watch::channel(false).0,
        });
        tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(Front { addr, state })
    }

    /// The broker is gone: its address refuses connections, its connections are cut.
    fn down(&self) {
        self.state.down.send_replace(true);
    }

    /// The broker is back at `upstream`, behind the same address.
    async fn up(&self, upstream: SocketAddr) -> Result<(), String> {
        *self.state.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
        let listener = TcpListener::bind(self.addr).await.map_err(|e| format!("front {}: {e}", self.addr))?;
        self.state.down.send_replace(false);
        tokio::spawn(serve(listener, Arc::clone(&self.state)));
        Ok(())
    }

    fn client_accepts(&self) -> Vec<Instant> {
        self.state.clients.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn probes(&self) -> u64 {
        self.state.probes.load(Ordering::Relaxed)
    }
}

async fn serve(listener: TcpListener, state: Arc<FrontState>) {
    let mut down = state.down.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => {
                if let Ok((inbound, _)) = r {
                    tokio::spawn(relay(inbound, Instant::now(), Arc::clone(&state)));
                }
            }
            _ = down.wait_for(|d| *d) => return,
        }
    }
}

/// Reads the connection's first bytes (a client's CONNECT holds [`MARKER`]), counts it, then forwards both ways
/// until either side closes or the front goes down.
async fn relay(mut inbound: TcpStream, accepted: Instant, state: Arc<FrontState>) {
    let mut down = state.down.subscribe();
    let upstream = *state.upstream.lock().unwrap_or_else(|p| p.into_inner());
    let forward = async {
        let mut first = [0u8; 512];
        let n = match tokio::time::timeout(Duration::from_secs(10), inbound.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => {
                state.probes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let head = first.get(..n).unwrap_or_default();
        if head.windows(MARKER.len()).any(|w| w == MARKER) {
            state.clients.lock().unwrap_or_else(|p| p.into_inner()).push(accepted);
        } else {
            state.probes.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
        if outbound.write_all(head).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    };
    tokio::select! {
        () = forward => {}
        _ = down.wait_for(|d| *d) => {}
    }
}

/// The most accepts in any one-second window starting at an accept, among those in `[from, to)`.
pub fn peak_per_second(times: &[Instant], from: Instant, to: Instant) -> usize {
    let mut t: Vec<Instant> = times.iter().copied().filter(|t| *t >= from && *t < to).collect();
    t.sort_unstable();
    let (mut best, mut end) = (0, 0);
    for (start, at) in t.iter().enumerate() {
        while t.get(end).is_some_and(|e| *e < *at + Duration::from_secs(1)) {
            end += 1;
        }
        best = best.max(end - start);
    }
    best
}

/// The clients: each keeps its id, reconnects at once when its connection is cut, and after [`RETRY`] when an
/// attempt fails.
struct Fleet {
    connected: AtomicUsize,
    /// Clients whose connection the server side cut (the killed broker's).
    cut: Mutex<Vec<usize>>,
    /// Per client: reconnect now (the return to the recovered broker).
    recall: Vec<Notify>,
    errors: Errors,
}

async fn client(
    i: usize,
    target: Arc<Target>,
    tls: Arc<rustls::ClientConfig>,
    fleet: Arc<Fleet>,
    first: Arc<Semaphore>,
) {
    let id = format!("kstorm{i:x}");
    let mut permit = first.acquire_owned().await.ok();
    loop {
        let attempt = target.open_with_id(&tls, &id, 300, ATTEMPT_BOUND).await;
        permit.take();
        let mut s = match attempt {
            Ok(s) => s,
            Err(e) => {
                fleet.errors.add(e, 1);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        fleet.connected.fetch_add(1, Ordering::SeqCst);
        let Some(recall) = fleet.recall.get(i) else { return };
        let mut scratch = [0u8; 64];
        let recalled = tokio::select! {
            () = async { while matches!(s.read(&mut scratch).await, Ok(n) if n > 0) {} } => false,
            () = recall.notified() => true,
        };
        fleet.connected.fetch_sub(1, Ordering::SeqCst);
        if recalled {
            let _ = s.write_all(&crate::mqtt::DISCONNECT).await;
            let _ = s.flush().await;
        } else {
            fleet.cut.lock().unwrap_or_else(|p| p.into_inner()).push(i);
        }
    }
}

/// Waits (bounded) until `n` clients are connected; the time it took, or `None` past the bound.
async fn all_connected(fleet: &Fleet, n: usize, since: Instant) -> Option<f64> {
    while fleet.connected.load(Ordering::SeqCst) < n {
        if since.elapsed() > STAGE_BOUND {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(since.elapsed().as_secs_f64())
}

/// Waits (bounded) until the proxy has probed the front `k` times since `before` probes: the proxy sees the broker up.
async fn probed(front: &Front, before: u64, k: u64) -> bool {
    let since = Instant::now();
    while front.probes() < before + k {
        if since.elapsed() > Duration::from_secs(30) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits (bounded) until HAProxy's log says `server` is UP (it logs its servers' state changes on stderr).
async fn haproxy_saw_up(proxy: &Proc, server: &str) -> bool {
    let since = Instant::now();
    let line = format!("/{server} is UP");
    while !std::fs::read_to_string(&proxy.log).unwrap_or_default().contains(&line) {
        if since.elapsed() > Duration::from_secs(30) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// One storm: brokers and fronts, the proxy of `variant`, `n` clients; kill broker 1, then bring it back and recall
/// its clients. `rate` is the per-server `max_connection_rate` of the capped variant.
pub async fn run(setup: &crate::Setup, variant: Variant, n: usize, rate: u32, round: usize) -> Result<Value, String> {
    let tag = format!("kill{}-{}", round + 1, variant.name().replace(' ', "-"));
    let mut brokers = Vec::new();
    let mut fronts = Vec::new();
    for b in 0..3 {
        let broker =
            Broker::start(&setup.dir, &format!("mosquitto-{tag}-{b}"), &setup.pki.cert, &setup.pki.key).await?;
        fronts.push(Front::start(broker.plain).await?);
        brokers.push(broker);
    }
    let servers: Vec<SocketAddr> = fronts.iter().map(|f| f.addr).collect();
    let (proxy, addr): (Proc, SocketAddr) = match variant {
        Variant::Haproxy => {
            let (p, at) = procs::start_haproxy(
                &setup.dir,
                &tag,
                &setup.pki.combined,
                &servers,
                setup.haproxy_maxconn,
                setup.threads,
                setup.logs,
            )
            .await?;
            (p, at.tls)
        }
        Variant::MqttLb | Variant::MqttLbRate => {
            let server_keys = format!(", max_connection_rate: {rate}");
            let backend_keys = format!("    queue_timeout: 9s\n    max_queue: {}\n", n.max(1));
            let capped = variant == Variant::MqttLbRate;
            let backend = procs::LbBackend {
                servers: &servers,
                server_keys: if capped { &server_keys } else { "" },
                backend_keys: if capped { &backend_keys } else { "" },
            };
            let (p, at) = procs::start_mqtt_lb(
                &setup.mqtt_lb,
                "mqtt-lb",
                &setup.dir,
                &tag,
                &setup.pki,
                true,
                &backend,
                setup.threads,
                setup.logs,
            )
            .await?;
            (p, at.tls)
        }
    };
    // mqtt-lb probes every 2 s and needs 2 good probes: wait until each broker was probed twice. HAProxy counts its
    // servers up from the start (and its connect-only probes end before this process accepts them: unseen here).
    if variant != Variant::Haproxy {
        for f in &fronts {
            if !probed(f, 0, 2).await {
                return Err(format!("{tag}: the proxy never probed {}", f.addr));
            }
        }
    }

    let fleet = Arc::new(Fleet {
        connected: AtomicUsize::new(0),
        cut: Mutex::new(Vec::new()),
        recall: (0..n).map(|_| Notify::new()).collect(),
        errors: Errors::default(),
    });
    let target = Arc::new(Target::new(addr, Arc::clone(&setup.client_tls), "k"));
    let first = Arc::new(Semaphore::new(50));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let tls = Arc::clone(&setup.client_tls);
            tokio::spawn(client(i, Arc::clone(&target), tls, Arc::clone(&fleet), Arc::clone(&first)))
        })
        .collect();
    let result = async {
        let connect_secs = all_connected(&fleet, n, started).await.ok_or(format!("{tag}: not all {n} connected"))?;
        let connect_errors = fleet.errors.take();
        crate::log(format!("  kill   {:28} {n} clients connected in {connect_secs:.1} s", variant.name()));

        // The kill.
        let killed_at = Instant::now();
        // The address refuses first, then the process dies: no connection reaches a dying broker.
        if let Some(f) = fronts.first() {
            f.down();
        }
        if let Some(b) = brokers.get_mut(0) {
            b.proc.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
        }
        // Every cut client is connected again when all n are; first, the cut must have reached the clients.
        while fleet.connected.load(Ordering::SeqCst) == n && killed_at.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let storm_secs = all_connected(&fleet, n, killed_at).await;
        let storm_end = Instant::now();
        let storm_errors = fleet.errors.take();
        let cut: Vec<usize> = std::mem::take(&mut *fleet.cut.lock().unwrap_or_else(|p| p.into_inner()));

        // The return: a fresh broker behind the same address; once the proxy has seen it up, its clients reconnect.
        let back = Broker::start(&setup.dir, &format!("mosquitto-{tag}-0b"), &setup.pki.cert, &setup.pki.key).await?;
        let front0 = fronts.first().ok_or("no front")?;
        let probes_before = front0.probes();
        front0.up(back.plain).await?;
        brokers.push(back);
        let seen_up = if variant == Variant::Haproxy {
            haproxy_saw_up(&proxy, "broker1").await
        } else {
            probed(front0, probes_before, 2).await
        };
        if !seen_up {
            return Err(format!("{tag}: the proxy never saw the returned broker up"));
        }
        let returned_at = Instant::now();
        for &i in &cut {
            if let Some(r) = fleet.recall.get(i) {
                r.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let return_secs = all_connected(&fleet, n, returned_at).await;
        let return_end = Instant::now();
        let return_errors = fleet.errors.take();

        let accepts: Vec<Vec<Instant>> = fronts.iter().map(Front::client_accepts).collect();
        let window = |from: Instant, to: Instant| -> Vec<usize> {
            accepts.iter().map(|a| peak_per_second(a, from, to)).collect()
        };
        let count = |from: Instant, to: Instant| -> Vec<usize> {
            accepts.iter().map(|a| a.iter().filter(|t| **t >= from && **t < to).count()).collect()
        };
        let peak_all = window(started, return_end).into_iter().max().unwrap_or(0);
        let pass = (variant == Variant::MqttLbRate).then_some(peak_all <= rate as usize);
        Ok::<Value, String>(json!({
            "variant": variant.name(),
            "clients": n,
            "rate": (variant == Variant::MqttLbRate).then_some(rate),
            "connect_secs": connect_secs,
            "connect_errors": connect_errors,
            "cut": cut.len(),
            "storm": {
                "secs": storm_secs,
                "peak_per_second": window(killed_at, storm_end),
                "new_connections": count(killed_at, storm_end),
                "refusals": storm_errors,
            },
            "return": {
                "secs": return_secs,
                "peak_per_second": window(returned_at, return_end),
                "new_connections": count(returned_at, return_end),
                "refusals": return_errors,
            },
            "peak_per_second_whole_run": peak_all,
            "rate_respected": pass,
        }))
    }
    .await;
    for t in &tasks {
        t.abort();
    }
    drop(proxy);
    result
}

/// Median [min – max] of a number over the rounds' values at `pointer` (JSON pointer), for the markdown.
fn spread(runs: &[&Value], pointer: &str, decimals: usize) -> String {
    let v: Vec<f64> = runs.iter().filter_map(|r| r.pointer(pointer).and_then(Value::as_f64)).collect();
    match crate::stats::summarize(&v) {
        Some(s) if v.len() > 1 => format!(
            "{:.d$} [{:.d$} – {:.d$}]",
            s["median"].as_f64().unwrap_or(0.0),
            s["min"].as_f64().unwrap_or(0.0),
            s["max"].as_f64().unwrap_or(0.0),
            d = decimals
        ),
        Some(s) => format!("{:.d$}", s["median"].as_f64().unwrap_or(0.0), d = decimals),
        None => "-".into(),
    }
}

/// Refusals summed over rounds, by reason.
fn refusals(runs: &[&Value], stage: &str) -> String {
    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    for r in runs {
        if let Some(m) = r.pointer(&format!("/{stage}/refusals")).and_then(Value::as_object) {
            for (k, v) in m {
                *sum.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
            }
        }
    }
    if sum.is_empty() {
        return "none".into();
    }
    sum.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// The section of RESULTS.md: one column per variant, median [min – max] over rounds.
pub fn markdown(all: &[Value], rate: u32) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let n = all.first().and_then(|r| r["clients"].as_u64()).unwrap_or(0);
    let rounds = all.iter().filter(|r| r["variant"] == Variant::MqttLb.name()).count();
    let _ = writeln!(
        md,
        "\n## Broker killed under load (phase `kill`)\n\n{n} TLS clients through the proxy to three mosquitto brokers \
         (MQTT 3.1.1, keep-alive 300 s, each client its own id, reconnecting at once when cut and 1 s after a failed \
         attempt); broker 1 is killed (SIGKILL; its address then refuses), its clients reconnect to the survivors; then \
         a fresh broker 1 comes back behind the same address and, once the proxy has probed it twice, its former clients \
         are made to reconnect at once (nothing moves them back before they reconnect). Rates are counted AT THE BROKERS \
         (a counting TCP forwarder in front of each, health probes not counted): the most new client connections in any \
         one-second window. mqtt-lb `max_connection_rate: {rate}` per server with `queue_timeout: 9s`; HAProxy: the WIS2 \
         backend (stick table on the client id, `balance roundrobin`, `check inter 2s`) with three servers. Each \
         figure: median [min – max] of {rounds} rounds, variants interleaved (order rotated). Refusals: what the \
         clients met, summed over the rounds.\n"
    );
    let variants: Vec<Variant> =
        Variant::ALL.into_iter().filter(|v| all.iter().any(|r| r["variant"] == v.name())).collect();
    let runs = |v: Variant| -> Vec<&Value> { all.iter().filter(|r| r["variant"] == v.name()).collect() };
    let _ = writeln!(md, "| metric | {} |", variants.iter().map(|v| v.name()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(variants.len()));
    let mut row = |label: &str, f: &dyn Fn(&[&Value]) -> String| {
        let cells: Vec<String> = variants.iter().map(|v| f(&runs(*v))).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    };
    row("clients cut by the kill", &|r| spread(r, "/cut", 0));
    row("kill: time until every client is connected again (s)", &|r| spread(r, "/storm/secs", 2));
    for b in 0..3 {
        row(&format!("kill: peak new connections/s at broker {}", b + 1), &|r| {
            spread(r, &format!("/storm/peak_per_second/{b}"), 0)
        });
    }
    row("kill: refusals by reason", &|r| refusals(r, "storm"));
    row("return: time until every recalled client is connected (s)", &|r| spread(r, "/return/secs", 2));
    row("return: clients that went back to broker 1", &|r| spread(r, "/return/new_connections/0", 0));
    for b in 0..3 {
        row(&format!("return: peak new connections/s at broker {}", b + 1), &|r| {
            spread(r, &format!("/return/peak_per_second/{b}"), 0)
        });
    }
    row("return: refusals by reason", &|r| refusals(r, "return"));
    row("peak new connections/s at any broker, whole run", &|r| spread(r, "/peak_per_second_whole_run", 0));
    row(&format!("every broker at most {rate}/s"), &|r| {
        let verdicts: Vec<bool> = r.iter().filter_map(|v| v["rate_respected"].as_bool()).collect();
        if verdicts.is_empty() {
            "-".into()
        } else if verdicts.iter().all(|p| *p) {
            "PASS".into()
        } else {
            "**FAIL**".into()
        }
    });
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_the_busiest_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = vec![at(0), at(100), at(900), at(1000), at(1950), at(2000), at(2100)];
        assert_eq!(peak_per_second(&times, t0, at(5000)), 3);
        assert_eq!(peak_per_second(&times, at(1950), at(5000)), 3);
        assert_eq!(peak_per_second(&[], t0, at(5000)), 0);
    }
}
