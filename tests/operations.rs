//! Operating mqtt-lb (issue 4), end to end with real parts: real mosquitto brokers, real TLS (the testkit's rcgen
//! CA, with client certificates and a second CA), real MQTT clients (rumqttc v3.1.1 and v5, raw bytes where the
//! exact answer matters), Debian's HAProxy as the PROXY protocol receiver, and the real binary for SIGHUP.
//!
//! - Hot reload under load: 200 clients publish while the configuration file is reloaded 20 times (certificate
//!   swaps, servers added and removed, weights, health and limits changed, invalid files) through `POST /reload`
//!   and the server's reload handle; SIGHUP reloads the real binary.
//! - Server states through the admin API: `drain`, `maint`, `ready`.
//! - `on_down: close` against `keep`, with health failing while the broker still runs.
//! - PROXY protocol v1/v2 to HAProxy (`accept-proxy`), and from trusted proxies in front of a listener.
//! - mTLS with `require_identity: client-id | username`, and the v2 TLVs that carry the TLS session to a broker.
//! - The per-IP connection rate limit against a flood, while another source connects normally.

mod common;
mod tools;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::*;
use mqtt_lb::server::{ReloadHandle, Server, ServerError};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

/// Slack for scheduling on a loaded 2-core machine, on top of rise/fall x interval.
const HEALTH_MARGIN: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------------------------------
// PKI: the testkit's CA ([`TestCa`]).

/// A server certificate of `ca` for `localhost` / 127.0.0.1 with this CN and serial, written to `cert` and `key`;
/// returns its DER (what a client must see in the handshake).
fn server_cert(ca: &TestCa, cert: &Path, key: &Path, cn: &str, serial: u64) -> CertificateDer<'static> {
    ca.server_to(cert, key, cn, &["localhost", "127.0.0.1"], serial).der
}

// ---------------------------------------------------------------------------------------------------------------
// An mqtt-lb whose configuration is a real file (so reloads read it again).

struct FileProxy {
    path: PathBuf,
    addrs: HashMap<String, SocketAddr>,
    admin: SocketAddr,
    reload: ReloadHandle,
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl FileProxy {
    /// Writes `yaml` to `path`, loads it from there, binds and runs the server in a task.
    async fn start(path: PathBuf, yaml: &str) -> FileProxy {
        init_tracing();
        std::fs::write(&path, yaml).expect("write the configuration file");
        let config = mqtt_lb::config::load(&path).unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"));
        let server = Server::bind(config).await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addrs = server.listener_addrs();
        let admin = server.admin_addr().expect("an admin endpoint in the test config");
        let reload = server.reload_handle();
        let token = server.shutdown_token();
        let handle = tokio::spawn(server.run());
        FileProxy { path, addrs, admin, reload, token, handle: Some(handle) }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        *self.addrs.get(listener).unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Replaces the configuration file (not applied until a reload).
    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("rewrite the configuration file");
    }

    async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            match tokio::time::timeout(Duration::from_secs(10), h).await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("the server did not stop cleanly: {other:?}"),
            }
        }
    }
}

impl Drop for FileProxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Admin HTTP beyond GET.

/// One HTTP/1.1 request with a body (`Connection: close`): (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let what = format!("{method} http://{addr}{path}");
    bounded(STEP_TIMEOUT, &what, async {
        let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap_or_else(|e| panic!("{what}: read: {e}"));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{what}: no headers in {text:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
        (status, body.to_owned())
    })
    .await
}

async fn set_state(admin: SocketAddr, backend: &str, server: &str, state: &str) {
    let (status, body) = http(admin, "PUT", &format!("/servers/{backend}/{server}/state"), state).await;
    assert_eq!(status, 200, "PUT {state} on {backend}/{server}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(v["state"], state, "{body}");
}

/// A server as `GET /servers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerView {
    name: String,
    address: String,
    weight: u64,
    health: String,
    state: String,
    connections: u64,
}

async fn servers(admin: SocketAddr, backend: &str) -> Vec<ServerView> {
    let (status, body) = http_get(admin, "/servers").await;
    assert_eq!(status, 200, "GET /servers: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON /servers");
    let b = v["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == backend))
        .unwrap_or_else(|| panic!("no backend {backend} in {body}"));
    b["servers"]
        .as_array()
        .expect("servers array")
        .iter()
        .map(|s| ServerView {
            name: s["name"].as_str().expect("name").to_owned(),
            address: s["address"].as_str().expect("address").to_owned(),
            weight: s["weight"].as_u64().expect("weight"),
            health: s["health"].as_str().expect("health").to_owned(),
            state: s["state"].as_str().expect("state").to_owned(),
            connections: s["connections"].as_u64().expect("connections"),
        })
        .collect()
}

async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    metric(admin, &format!("mqttlb_config_reloads_total{{result=\"{result}\"}}")).await
}

async fn rejected(admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    metric(admin, &format!("mqttlb_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}")).await
}

// ---------------------------------------------------------------------------------------------------------------
// Raw MQTT and sockets.

/// A CONNECT (clean session/start, keep alive 60) with an optional user name (no password).
fn connect_packet(level: u8, client_id: &str, username: Option<&str>) -> Vec<u8> {
    let mut flags = 0x02u8;
    if username.is_some() {
        flags |= 0x80;
    }
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 60];
    if level == 5 {
        body.push(0x00);
    }
    for s in std::iter::once(client_id).chain(username) {
        body.extend_from_slice(&u16::try_from(s.len()).expect("short string").to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// What came back on a connection.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// One complete MQTT packet.
    Packet(Vec<u8>),
    /// Closed (EOF, reset or TLS alert) before a complete packet; the bytes read so far and why.
    Closed(Vec<u8>, String),
}

/// Reads one MQTT packet (fixed header, remaining length, body) under `timeout`.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> Answer {
    let read = async {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let mut need: Option<usize> = None;
        loop {
            if need.is_some_and(|n| got.len() >= n) {
                return Answer::Packet(got);
            }
            match s.read(&mut byte).await {
                Ok(0) => return Answer::Closed(got, "EOF".into()),
                Ok(_) => got.push(byte[0]),
                Err(e) => return Answer::Closed(got, e.to_string()),
            }
            if need.is_none() && got.len() >= 2 && got.last().is_some_and(|b| b & 0x80 == 0) {
                let mut len = 0usize;
                for (i, b) in got[1..].iter().enumerate() {
                    len |= usize::from(b & 0x7f) << (7 * i);
                }
                need = Some(got.len() + len);
            }
        }
    };
    tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| panic!("no answer and no close within {timeout:?}"))
}

/// A TCP connection to `dst` from the local address `src` (any 127.0.0.0/8 address works on loopback).
async fn tcp_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    socket.connect(dst).await
}

async fn tls_over(
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name").to_owned();
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await
}

/// Sends `packet` and reads the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, packet: &[u8]) -> Answer {
    if let Err(e) = async {
        s.write_all(packet).await?;
        s.flush().await
    }
    .await
    {
        return Answer::Closed(Vec::new(), format!("write: {e}"));
    }
    read_packet(s, STEP_TIMEOUT).await
}

/// CONNACK bytes of an accepted 3.1.1 client.
const CONNACK_OK_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// The certificate a fresh TLS handshake with `addr` presents.
async fn presented_certificate(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let s = tls_connect(addr, tls).await.expect("TLS handshake with the proxy");
    let certs = s.get_ref().1.peer_certificates().expect("the server presented a certificate");
    certs.first().expect("a leaf certificate").clone().into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Clients that publish (QoS 1) until told to stop.

struct Publisher {
    id: String,
    acks: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<Result<u64, String>>,
}

impl Publisher {
    /// Publishes on `ops/<id>` every `period` (after `offset`), waiting for each PUBACK; the first failure ends it.
    fn spawn(mut client: MqttClient, period: Duration, offset: Duration) -> Publisher {
        let acks = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let id = client.id.clone();
        let (count, stopped) = (Arc::clone(&acks), stop.clone());
        let task = tokio::spawn(async move {
            let topic = format!("ops/{}", client.id);
            let mut pause = offset;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                let n = count.load(Ordering::Relaxed);
                client.publish(&topic, &n.to_be_bytes(), false).await?;
                count.fetch_add(1, Ordering::Relaxed);
                pause = period;
            }
            let n = count.load(Ordering::Relaxed);
            client.disconnect().await;
            Ok(n)
        });
        Publisher { id, acks, stop, task }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    fn failed(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops and returns the number of PUBACKs, or the failure that ended it.
    async fn finish(self) -> Result<u64, String> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("{}: publisher panicked: {e}", self.id)),
            Err(_) => Err(format!("{}: publisher did not stop", self.id)),
        }
    }
}

/// Connects `ids` (alternating 3.1.1 and 5), `batch` at a time.
async fn connect_all(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, ids: &[String]) -> Vec<MqttClient> {
    let mut out = Vec::with_capacity(ids.len());
    for (c, chunk) in ids.chunks(20).enumerate() {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in chunk.iter().enumerate() {
            let (tls, id) = (tls.clone(), id.clone());
            let version = if (c * 20 + i) % 2 == 0 { Version::V4 } else { Version::V5 };
            tasks.spawn(async move { (i, MqttClient::connect(addr, tls, &id, version).await) });
        }
        let mut got = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (i, c) = r.expect("connect task");
            got.push((i, c.unwrap_or_else(|e| panic!("connect through the proxy: {e}"))));
        }
        got.sort_by_key(|(i, _)| *i);
        out.extend(got.into_iter().map(|(_, c)| c));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Hot reload under load.

/// The reloadable part of test 1's configuration.
#[derive(Debug, Clone)]
struct Plan {
    cert: PathBuf,
    key: PathBuf,
    /// (server name, weight), in order.
    servers: Vec<(String, u32)>,
    interval: &'static str,
    max_connections: u32,
}

impl Plan {
    fn yaml(&self, addrs: &HashMap<String, String>) -> String {
        let mut y = format!(
            "listeners:\n  - name: mqtts\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    \
             tls: {{ cert: \"{}\", key: \"{}\" }}\n    backend: brokers\n\
             backends:\n  - name: brokers\n    connect_timeout: 2s\n    \
             health: {{ check: mqtt, interval: {}, timeout: 500ms, rise: 2, fall: 2 }}\n    servers:\n",
            self.cert.display(),
            self.key.display(),
            self.interval,
        );
        for (name, weight) in &self.servers {
            y.push_str(&format!("      - {{ name: {name}, address: \"{}\", weight: {weight} }}\n", addrs[name]));
        }
        y.push_str(&format!(
            "admin: {{ bind: \"127.0.0.1:0\" }}\nlimits: {{ max_connections: {} }}\nshutdown: {{ grace: 0s, drain_timeout: 2s }}\n",
            self.max_connections
        ));
        y
    }

    fn set_weight(&mut self, server: &str, weight: u32) {
        let s = self.servers.iter_mut().find(|(n, _)| n == server).expect("server in the plan");
        s.1 = weight;
    }
}

/// One reload of test 1.
#[derive(Debug, Clone)]
enum Step {
    Weight(&'static str, u32),
    /// New certificate written over the configured files (a renewal in place).
    CertInPlace(&'static str),
    /// New certificate in new files, the configuration pointing to them.
    CertNewFiles(&'static str),
    Add(&'static str),
    Remove(&'static str),
    Interval(&'static str),
    MaxConnections(u32),
    /// A configuration that must be refused: (what to break, the key the error must name).
    Invalid(&'static str, &'static str),
}

/// Where a client with each of `ids` must land under `yaml`.
fn placements(yaml: &str, path: &Path, ids: &[String]) -> Vec<String> {
    let config = mqtt_lb::config::parse(yaml, path).unwrap_or_else(|e| panic!("plan config: {e}"));
    let p = Placement::new(&config);
    ids.iter().map(|id| p.place(id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_twenty_times_under_load_without_dropping_a_relay() {
    bounded(Duration::from_secs(55), "reload under load", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = TestCa::new(d, "reload-ca");
        let tls = ca.client_config(None);
        let mut brokers = Vec::new();
        for i in 0..4 {
            brokers.push(Mosquitto::start(d, &format!("b{i}")).await);
        }
        let addrs: HashMap<String, String> = brokers.iter().map(|b| (b.name.clone(), b.addr())).collect();

        let (cert, key) = (d.join("server.crt"), d.join("server.key"));
        let mut current_cert = server_cert(&ca, &cert, &key, "mqtt-lb-1", 1);
        let mut plan = Plan {
            cert: cert.clone(),
            key: key.clone(),
            servers: vec![("b0".into(), 1), ("b1".into(), 1), ("b2".into(), 1)],
            interval: "200ms",
            max_connections: 100_000,
        };
        let path = d.join("mqtt-lb.yaml");
        let proxy = FileProxy::start(path.clone(), &plan.yaml(&addrs)).await;
        let front = proxy.addr("mqtts");
        assert_eq!(presented_certificate(front, tls.clone()).await, current_cert, "the first certificate");

        // 200 clients, spread over b0..b2 by client id, each publishing every 250 ms.
        let ids: Vec<String> = (0..200).map(|i| format!("load-{i:03}")).collect();
        let homes = placements(&plan.yaml(&addrs), &path, &ids);
        for b in ["b0", "b1", "b2"] {
            let n = homes.iter().filter(|h| *h == b).count();
            assert!(n >= 40, "the 200 ids should spread over the 3 brokers: {n} on {b}");
        }
        let started = Instant::now();
        let clients = connect_all(front, Some(tls.clone()), &ids).await;
        eprintln!("200 clients connected over TLS in {:?}", started.elapsed());
        let period = Duration::from_millis(250);
        let publishers: Vec<Publisher> = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| Publisher::spawn(c, period, Duration::from_millis(i as u64 * 250 / 200)))
            .collect();
        let on = |b: &str| publishers.iter().zip(&homes).filter(|(_, h)| *h == b).count() as u64;
        let wanted_on_b1 = on("b1");
        eventually(Duration::from_secs(10), || async { publishers.iter().all(|p| p.acks() >= 1).then_some(()) })
            .await
            .expect("every client got a first PUBACK");
        let view = servers(proxy.admin, "brokers").await;
        for b in ["b0", "b1", "b2"] {
            let s = view.iter().find(|s| s.name == b).expect("server listed");
            assert_eq!(s.connections, on(b), "relays open to {b} before any reload");
        }

        // Ids whose placement is checked after each change of servers or weights (through the proxy).
        let sample: Vec<String> = (0..40).map(|i| format!("probe-{i:02}")).collect();
        let mut expected = placements(&plan.yaml(&addrs), &path, &sample);

        let steps = [
            Step::Weight("b1", 3),
            Step::CertInPlace("mqtt-lb-2"),
            Step::Add("b3"),
            Step::Invalid("weight", "backends[0].servers[1].weight"),
            Step::Interval("300ms"),
            Step::Remove("b2"),
            Step::CertNewFiles("mqtt-lb-3"),
            Step::Weight("b0", 2),
            Step::MaxConnections(50_000),
            Step::Invalid("cert", "listeners[0].tls.cert"),
            Step::Add("b2"),
            Step::Weight("b1", 1),
            Step::CertInPlace("mqtt-lb-4"),
            Step::Interval("200ms"),
            Step::Remove("b3"),
            Step::Weight("b2", 2),
            Step::CertNewFiles("mqtt-lb-5"),
            Step::MaxConnections(100_000),
            Step::Weight("b0", 1),
            Step::Add("b3"),
        ];
        assert_eq!(steps.len(), 20);
        let (mut successes, mut errors) = (0.0, 0.0);
        let mut serial = 1u64;
        let mut b2_removed_at: Option<Vec<u64>> = None;
        for (n, step) in steps.iter().enumerate() {
            let before_servers = servers(proxy.admin, "brokers").await;
            let mut next = plan.clone();
            let mut new_cert = None;
            match step {
                Step::Weight(s, w) => next.set_weight(s, *w),
                Step::Add(s) => next.servers.push(((*s).to_owned(), 1)),
                Step::Remove(s) => next.servers.retain(|(name, _)| name != s),
                Step::Interval(i) => next.interval = i,
                Step::MaxConnections(m) => next.max_connections = *m,
                Step::CertInPlace(cn) => {
                    serial += 1;
                    new_cert = Some(server_cert(&ca, &next.cert, &next.key, cn, serial));
                }
                Step::CertNewFiles(cn) => {
                    serial += 1;
                    next.cert = d.join(format!("{cn}.crt"));
                    next.key = d.join(format!("{cn}.key"));
                    new_cert = Some(server_cert(&ca, &next.cert, &next.key, cn, serial));
                }
                Step::Invalid(..) => {}
            }
            if let Step::Invalid(what, key) = step {
                let mut text = plan.yaml(&addrs);
                text = match *what {
                    "weight" => text.replacen(", weight: 3 }", ", weight: 0 }", 1),
                    _ => text.replacen(&plan.cert.display().to_string(), "/nonexistent/server.crt", 1),
                };
                assert_ne!(text, plan.yaml(&addrs), "the invalid file differs");
                proxy.write(&text);
                let (status, body) = http(proxy.admin, "POST", "/reload", "").await;
                assert_eq!(status, 422, "reload {n}: an invalid file is refused: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                assert_eq!(v["result"], "error", "{body}");
                let error = v["error"].as_str().expect("error text");
                assert!(error.contains(key), "reload {n}: the error names the key {key}: {error}");
                assert!(error.contains(&path.display().to_string()), "the error names the file: {error}");
                errors += 1.0;
                // The running configuration is unchanged: servers, weights, certificate, placement.
                assert_eq!(servers(proxy.admin, "brokers").await.len(), before_servers.len());
                for (a, b) in servers(proxy.admin, "brokers").await.iter().zip(&before_servers) {
                    assert_eq!((&a.name, &a.address, a.weight, &a.state), (&b.name, &b.address, b.weight, &b.state));
                }
                assert_eq!(presented_certificate(front, tls.clone()).await, current_cert, "same certificate");
                let id = &sample[n];
                let got = which_broker(front, Some(tls.clone()), id, Version::V5).await;
                assert_eq!(&got, &expected[n], "{id}: placement unchanged by the refused reload");
            } else {
                let yaml = next.yaml(&addrs);
                proxy.write(&yaml);
                // Half through the admin API, half through the handle SIGHUP uses.
                let summary = if n % 2 == 0 {
                    let (status, body) = http(proxy.admin, "POST", "/reload", "").await;
                    assert_eq!(status, 200, "reload {n} ({step:?}): {body}");
                    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                    assert_eq!(v["result"], "success", "{body}");
                    v["config"].as_str().expect("summary").to_owned()
                } else {
                    proxy.reload.reload().await.unwrap_or_else(|e| panic!("reload {n} ({step:?}): {e}"))
                };
                successes += 1.0;
                let want: Vec<(String, u64)> = next.servers.iter().map(|(s, w)| (s.clone(), u64::from(*w))).collect();
                let view = servers(proxy.admin, "brokers").await;
                let got: Vec<(String, u64)> = view.iter().map(|s| (s.name.clone(), s.weight)).collect();
                assert_eq!(got, want, "reload {n} ({step:?}): servers and weights in /servers ({summary})");
                if let Some(c) = new_cert {
                    assert_ne!(c, current_cert);
                    let seen = presented_certificate(front, tls.clone()).await;
                    assert_eq!(seen, c, "reload {n}: the next handshake presents the new certificate");
                    current_cert = c;
                }
                if matches!(step, Step::Weight(..) | Step::Add(_) | Step::Remove(_)) {
                    let now = placements(&yaml, &path, &sample);
                    let moved: Vec<usize> = (0..sample.len()).filter(|&i| now[i] != expected[i]).collect();
                    assert!(!moved.is_empty(), "reload {n} ({step:?}) moves some of the sample ids");
                    let stayed = (0..sample.len()).filter(|i| !moved.contains(i));
                    let check: Vec<usize> = moved.iter().copied().take(4).chain(stayed.take(2)).collect();
                    let check_ids: Vec<String> = check.iter().map(|&i| sample[i].clone()).collect();
                    let got = which_brokers(front, Some(tls.clone()), &check_ids, Version::V4).await;
                    for (i, g) in check.iter().zip(&got) {
                        assert_eq!(
                            g, &now[*i],
                            "reload {n} ({step:?}): new client {} lands per the new config",
                            sample[*i]
                        );
                    }
                    expected = now;
                }
                if matches!(step, Step::Weight("b1", 3)) {
                    // The server whose weight changed still counts the relays opened before the reload.
                    let s = view.iter().find(|s| s.name == "b1").expect("b1");
                    assert!(s.connections >= wanted_on_b1, "b1 after its weight changed: {s:?}, {wanted_on_b1} relays");
                }
                if matches!(step, Step::Remove("b2")) {
                    b2_removed_at = Some(publishers.iter().map(Publisher::acks).collect());
                }
                plan = next;
            }
            if let Some(p) = publishers.iter().find(|p| p.failed()) {
                panic!("after reload {n} ({step:?}), client {} stopped publishing", p.id);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }

        // Every client keeps getting PUBACKs after the last reload, including those of b2, which a reload removed:
        // relays to a removed server go on until they end (the design; they are not cut).
        let last: Vec<u64> = publishers.iter().map(Publisher::acks).collect();
        eventually(Duration::from_secs(10), || async {
            publishers.iter().zip(&last).all(|(p, l)| p.acks() >= l + 2).then_some(())
        })
        .await
        .unwrap_or_else(|| {
            let stuck: Vec<&str> =
                publishers.iter().zip(&last).filter(|(p, l)| p.acks() < *l + 2).map(|(p, _)| p.id.as_str()).collect();
            panic!("clients without new PUBACKs after the last reload: {stuck:?}")
        });
        let at_removal = b2_removed_at.expect("b2 was removed");
        let b2_clients: Vec<usize> = (0..ids.len()).filter(|&i| homes[i] == "b2").collect();
        for &i in &b2_clients {
            assert!(
                publishers[i].acks() >= at_removal[i] + 5,
                "{} (on b2) kept publishing after b2 was removed: {} then {}",
                ids[i],
                at_removal[i],
                publishers[i].acks()
            );
        }
        assert_eq!(reloads(proxy.admin, "success").await, successes);
        assert_eq!(reloads(proxy.admin, "error").await, errors);
        assert_eq!((successes, errors), (18.0, 2.0));

        let mut total = 0;
        for p in publishers {
            let id = p.id.clone();
            total += p.finish().await.unwrap_or_else(|e| panic!("{id}: a relay was dropped: {e}"));
        }
        eprintln!(
            "20 reloads (18 applied, 2 refused) under 200 publishing clients in {:?}: {total} PUBACKs, none dropped; \
             {} clients on b2 kept publishing after its removal",
            started.elapsed(),
            b2_clients.len()
        );
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// SIGHUP reloads the real binary.

/// A child process killed (by PID) on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    bounded(Duration::from_secs(40), "SIGHUP", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let b0 = Mosquitto::start(d, "b0").await;
        let b1 = Mosquitto::start(d, "b1").await;
        let (port, admin_port) = (free_port(), free_port());
        let yaml = |servers: &[&Mosquitto]| {
            let mut y = format!(
                "listeners:\n  - name: mqtt\n    bind: \"127.0.0.1:{port}\"\n    protocol: mqtt\n    backend: brokers\n\
                 backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n    servers:\n"
            );
            for b in servers {
                y.push_str(&format!("      - {{ name: {}, address: \"{}\" }}\n", b.name, b.addr()));
            }
            y.push_str(&format!("admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n"));
            y
        };
        let path = d.join("mqtt-lb.yaml");
        std::fs::write(&path, yaml(&[&b0])).expect("write config");
        let stderr = std::fs::File::create(d.join("mqtt-lb.stderr")).expect("stderr file");
        let mut child = ChildGuard(
            Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start mqtt-lb"),
        );
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(Duration::from_secs(10), || async { try_http_get(admin, "/readyz").await.ok().filter(|r| r.0 == 200) })
            .await
            .expect("mqtt-lb ready");
        let id = (0..1000).map(|i| format!("hup-{i}")).find(|id| {
            let config = mqtt_lb::config::parse(&yaml(&[&b0, &b1]), &path).expect("config");
            Placement::new(&config).place(id) == "b1"
        });
        let id = id.expect("an id placed on b1");
        assert_eq!(which_broker(front, None, &id, Version::V4).await, "b0", "only b0 before the reload");

        std::fs::write(&path, yaml(&[&b0, &b1])).expect("rewrite config");
        signal(&child.0, "HUP");
        eventually(Duration::from_secs(5), || async { (reloads(admin, "success").await == 1.0).then_some(()) })
            .await
            .expect("the SIGHUP reload is counted as a success");
        let names: Vec<String> = servers(admin, "brokers").await.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["b0", "b1"], "b1 added by SIGHUP");
        assert_eq!(which_broker(front, None, &id, Version::V5).await, "b1", "{id} goes to the new server");

        // An invalid file on SIGHUP: counted, logged with the key, and the process goes on with the old config.
        std::fs::write(&path, yaml(&[&b0, &b1]).replace("interval: 200ms", "interval: soon")).expect("rewrite");
        signal(&child.0, "HUP");
        eventually(Duration::from_secs(5), || async { (reloads(admin, "error").await == 1.0).then_some(()) })
            .await
            .expect("the refused SIGHUP reload is counted");
        assert!(child.0.try_wait().expect("try_wait").is_none(), "still running");
        assert_eq!(servers(admin, "brokers").await.len(), 2);
        assert_eq!(which_broker(front, None, &id, Version::V4).await, "b1");
        let log = std::fs::read_to_string(d.join("mqtt-lb.stderr")).unwrap_or_default();
        assert!(log.contains("backends[0].health.interval"), "the log names the key:\n{log}");

        signal(&child.0, "TERM");
        let exited = eventually(Duration::from_secs(5), || {
            let status = child.0.try_wait().expect("try_wait");
            async move { status }
        })
        .await
        .expect("mqtt-lb exits on SIGTERM");
        assert!(exited.success(), "exit status {exited}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Drain and maintenance through the admin API.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_clients_moves_new_ones_and_maint_stops_probes() {
    bounded(Duration::from_secs(45), "drain", async {
        let cluster = Cluster::start(3).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let tls = cluster.tls();
        let placement = Placement::new(&proxy.config);

        // Four ids of each broker.
        let pool: Vec<String> = (0..200).map(|i| format!("drain-{i:03}")).collect();
        let sample: Vec<String> = ["b0", "b1", "b2"]
            .iter()
            .flat_map(|b| pool.iter().filter(|id| placement.place(id) == *b).take(4).cloned().collect::<Vec<_>>())
            .collect();
        assert_eq!(sample.len(), 12);
        let before = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        for (id, got) in sample.iter().zip(&before) {
            assert_eq!(got, &placement.place(id), "{id}");
        }

        // Three clients of b1 publishing every 100 ms.
        let own: Vec<String> =
            (0..1000).map(|i| format!("drain-own-{i}")).filter(|id| placement.place(id) == "b1").take(3).collect();
        let clients = connect_all(proxy.mqtts, Some(tls.clone()), &own).await;
        let publishers: Vec<Publisher> =
            clients.into_iter().map(|c| Publisher::spawn(c, Duration::from_millis(100), Duration::ZERO)).collect();
        let progress = |from: Vec<u64>| {
            let publishers = &publishers;
            async move {
                eventually(Duration::from_secs(5), || {
                    let ok = publishers.iter().zip(&from).all(|(p, f)| p.acks() >= f + 3);
                    async move { ok.then_some(()) }
                })
                .await
                .is_some()
            }
        };
        let acks = |ps: &[Publisher]| ps.iter().map(Publisher::acks).collect::<Vec<u64>>();
        assert!(progress(acks(&publishers)).await, "b1's clients publish");

        set_state(proxy.admin, "brokers", "b1", "drain").await;
        let view = servers(proxy.admin, "brokers").await;
        let b1 = view.iter().find(|s| s.name == "b1").expect("b1");
        assert_eq!((b1.state.as_str(), b1.health.as_str(), b1.connections), ("drain", "up", 3), "{b1:?}");
        assert_eq!(
            metric(proxy.admin, "mqttlb_server_state{backend=\"brokers\",server=\"b1\",state=\"drain\"}").await,
            1.0
        );
        assert_eq!(http_get(proxy.admin, "/readyz").await.0, 200, "still ready with b0 and b2");

        let drained = Placement::new(&proxy.config);
        drained.set_up("b1", false);
        let during = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V5).await;
        for ((id, was), now) in sample.iter().zip(&before).zip(&during) {
            if was == "b1" {
                assert_eq!(now, &drained.place(id), "{id}: a new client of the drained b1 goes to its next choice");
            } else {
                assert_eq!(now, was, "{id}: placement of the other servers' clients is unchanged by the drain");
            }
        }
        assert!(progress(acks(&publishers)).await, "b1's existing clients keep publishing while it drains");
        assert!(publishers.iter().all(|p| !p.failed()), "no client of b1 was closed");

        set_state(proxy.admin, "brokers", "b1", "ready").await;
        let after = which_brokers(proxy.mqtts, Some(tls.clone()), &sample, Version::V4).await;
        assert_eq!(after, before, "ready again restores placement");

        // maint: no new clients, no probes, shown as such; existing relays stay.
        let probes = |server: &'static str| {
            let admin = proxy.admin;
            async move {
                metric(
                    admin,
                    &format!("mqttlb_health_probe_duration_seconds_count{{backend=\"brokers\",server=\"{server}\"}}"),
                )
                .await
            }
        };
        set_state(proxy.admin, "brokers", "b1", "maint").await;
        // A probe already under way when maint was set may still finish: one interval plus the probe timeout.
        tokio::time::sleep(Duration::from_millis(200 + 500 + 300)).await;
        let (b1_at, b0_at) = (probes("b1").await, probes("b0").await);
        // Five probe intervals pass.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (b1_then, b0_then) = (probes("b1").await, probes("b0").await);
        assert_eq!(b1_then, b1_at, "no probe of b1 in maint");
        assert!(b0_then >= b0_at + 3.0, "b0 probed meanwhile: {b0_at} -> {b0_then}");
        let b1 = servers(proxy.admin, "brokers").await.into_iter().find(|s| s.name == "b1").expect("b1");
        assert_eq!((b1.state.as_str(), b1.connections), ("maint", 3), "{b1:?}");
        let id = sample.iter().zip(&before).find(|(_, b)| *b == "b1").map(|(id, _)| id.clone()).expect("id on b1");
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id, Version::V4).await, drained.place(&id));
        assert!(progress(acks(&publishers)).await, "b1's existing clients keep publishing in maint");

        set_state(proxy.admin, "brokers", "b1", "ready").await;
        let resumed = probes("b1").await;
        eventually(Duration::from_secs(3), || async { (probes("b1").await >= resumed + 2.0).then_some(()) })
            .await
            .expect("probes of b1 resume when it is ready again");
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id, Version::V5).await, "b1");

        let (status, _) = http(proxy.admin, "PUT", "/servers/brokers/b1/state", "sleep").await;
        assert_eq!(status, 400, "an unknown state is refused");
        let (status, _) = http(proxy.admin, "PUT", "/servers/brokers/b9/state", "drain").await;
        assert_eq!(status, 404, "an unknown server is refused");

        for p in publishers {
            let id = p.id.clone();
            let n = p.finish().await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(n >= 12, "{id}: {n} PUBACKs");
        }
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3. on_down: close against keep.

/// A mosquitto that accepts anonymous clients but refuses every user name (an empty password file): an MQTT health
/// probe with credentials fails while the broker keeps serving its clients.
struct AuthBroker {
    child: ChildGuard,
    port: u16,
}

impl AuthBroker {
    async fn start(dir: &Path) -> AuthBroker {
        let passwords = dir.join("passwords");
        std::fs::write(&passwords, "").expect("write the password file");
        let mut last = String::new();
        for attempt in 0..4 {
            let port = free_port();
            let conf = dir.join(format!("auth-{attempt}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "user root\nper_listener_settings false\nallow_anonymous true\npassword_file {}\n\
                     persistence false\nlog_dest file {}\nconnection_messages true\nlistener {port} 127.0.0.1\n",
                    passwords.display(),
                    dir.join("auth.log").display()
                ),
            )
            .expect("write mosquitto config");
            let bin = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
            let child = ChildGuard(
                Command::new(bin)
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start mosquitto"),
            );
            if wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).await {
                return AuthBroker { child, port };
            }
            last = format!("port {port} did not accept");
        }
        panic!("mosquitto with a password file did not start: {last}");
    }
}

fn on_down_yaml(port: u16, weight: u32, probe_user: bool) -> String {
    let creds = if probe_user { ", username: probe, password: wrong" } else { "" };
    let mut y = String::from("listeners:\n");
    for (l, b) in [("to_close", "closing"), ("to_keep", "keeping")] {
        y.push_str(&format!("  - name: {l}\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    backend: {b}\n"));
    }
    y.push_str("backends:\n");
    for (b, on_down) in [("closing", "close"), ("keeping", "keep")] {
        y.push_str(&format!(
            "  - name: {b}\n    on_down: {on_down}\n    \
             health: {{ check: mqtt, interval: 200ms, timeout: 500ms, rise: 2, fall: 2{creds} }}\n    \
             servers:\n      - {{ name: m, address: \"127.0.0.1:{port}\", weight: {weight} }}\n"
        ));
    }
    y.push_str("admin: { bind: \"127.0.0.1:0\" }\nshutdown: { grace: 0s, drain_timeout: 1s }\n");
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_close_ends_relays_when_health_fails_and_keep_does_not() {
    bounded(Duration::from_secs(40), "on_down", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = AuthBroker::start(dir.path()).await;
        let proxy = FileProxy::start(dir.path().join("mqtt-lb.yaml"), &on_down_yaml(broker.port, 1, false)).await;
        let (to_close, to_keep) = (proxy.addr("to_close"), proxy.addr("to_keep"));
        let up = |backend: &'static str| {
            let admin = proxy.admin;
            async move { metric(admin, &format!("mqttlb_server_up{{backend=\"{backend}\",server=\"m\"}}")).await }
        };

        // Clients connected before a reload that changes the server's weight, and after it.
        let mut close_old = MqttClient::connect(to_close, None, "close-old", Version::V5).await.expect("close-old");
        let mut keep_old = MqttClient::connect(to_keep, None, "keep-old", Version::V4).await.expect("keep-old");
        proxy.write(&on_down_yaml(broker.port, 2, false));
        proxy.reload.reload().await.expect("reload with a new weight");
        let mut close_new = MqttClient::connect(to_close, None, "close-new", Version::V4).await.expect("close-new");
        let mut keep_new = MqttClient::connect(to_keep, None, "keep-new", Version::V5).await.expect("keep-new");
        for c in [&mut close_old, &mut keep_old, &mut close_new, &mut keep_new] {
            let topic = format!("down/{}", c.id);
            c.round_trip(&topic, b"before").await.expect("works before");
        }
        assert_eq!((up("closing").await, up("keeping").await), (1.0, 1.0));

        // The probes now log in with a user name the broker refuses: health fails, the broker keeps running.
        proxy.write(&on_down_yaml(broker.port, 2, true));
        proxy.reload.reload().await.expect("reload with probe credentials");
        let start = Instant::now();
        let down = Duration::from_millis(200 * 2) + HEALTH_MARGIN;
        eventually(down, || async { (up("closing").await == 0.0 && up("keeping").await == 0.0).then_some(()) })
            .await
            .expect("both backends mark m down");
        let marked = start.elapsed();
        for c in [&mut close_old, &mut close_new] {
            let why = c.wait_closed(Duration::from_secs(2)).await.unwrap_or_else(|e| panic!("on_down: close: {e}"));
            eprintln!("{} closed {:?} after the reload ({marked:?} to mark m down): {why}", c.id, start.elapsed());
        }
        assert!(start.elapsed() < marked + Duration::from_secs(1), "closed promptly once down");
        for c in [&mut keep_old, &mut keep_new] {
            let topic = format!("down/{}", c.id);
            c.round_trip(&topic, b"after").await.unwrap_or_else(|e| panic!("on_down: keep: the relay stays: {e}"));
            assert!(c.closed().is_none());
        }
        // New clients are refused: no server is up.
        let mut s = TcpStream::connect(to_close).await.expect("connect");
        assert_eq!(exchange(&mut s, &connect_packet(4, "close-late", None)).await, Answer::Packet(vec![0x20, 2, 0, 3]));
        keep_old.disconnect().await;
        keep_new.disconnect().await;
        drop(broker.child);
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. PROXY protocol: to a real HAProxy, and from trusted proxies.

/// Debian's HAProxy in front of a broker: frontends `fe_v2` and `fe_v1` with `accept-proxy`, each logging the client
/// address it was told (`%ci:%cp %f`) to stdout as soon as the broker connection is up (`option logasap`).
struct Haproxy {
    _child: ChildGuard,
    v2: SocketAddr,
    v1: SocketAddr,
    log: PathBuf,
}

impl Haproxy {
    async fn start(bin: &Path, dir: &Path, broker: SocketAddr) -> Haproxy {
        let mut last = String::new();
        for attempt in 0..4 {
            let (p2, p1) = (free_port(), free_port());
            let cfg = dir.join(format!("haproxy-{attempt}.cfg"));
            let log = dir.join(format!("haproxy-{attempt}.log"));
            let mut text = String::from(
                "global\n    log stdout format raw local0\ndefaults\n    mode tcp\n    log global\n    option logasap\n    \
                 timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n",
            );
            for (name, port) in [("fe_v2", p2), ("fe_v1", p1)] {
                text.push_str(&format!(
                    "frontend {name}\n    bind 127.0.0.1:{port} accept-proxy\n    log-format \"%ci:%cp %f\"\n    \
                     default_backend broker\n"
                ));
            }
            text.push_str(&format!("backend broker\n    server m {broker}\n"));
            std::fs::write(&cfg, text).expect("write haproxy.cfg");
            let out = std::fs::File::create(&log).expect("haproxy log file");
            let err = std::fs::File::create(dir.join(format!("haproxy-{attempt}.stderr"))).expect("stderr file");
            let child = ChildGuard(
                Command::new(bin)
                    .arg("-db")
                    .arg("-f")
                    .arg(&cfg)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .expect("start haproxy"),
            );
            let (v2, v1) = (SocketAddr::from(([127, 0, 0, 1], p2)), SocketAddr::from(([127, 0, 0, 1], p1)));
            if wait_accepting(v2, Duration::from_secs(5)).await && wait_accepting(v1, Duration::from_secs(5)).await {
                return Haproxy { _child: child, v2, v1, log };
            }
            last = std::fs::read_to_string(dir.join(format!("haproxy-{attempt}.stderr"))).unwrap_or_default();
        }
        panic!("haproxy did not start: {last}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until HAProxy logged `line` (exactly, as a whole line).
    async fn saw(&self, line: &str) -> bool {
        eventually(Duration::from_secs(3), || async { self.log().lines().any(|l| l.trim() == line).then_some(()) })
            .await
            .is_some()
    }
}

/// A hand-written PROXY v2 header: TCP over IPv4, `src` -> `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else { panic!("IPv4 only") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_reaches_haproxy_and_is_accepted_only_from_trusted_proxies() {
    let Some(bin) =
        tools::find_tool("haproxy", "MQTT_LB_HAPROXY", &["/usr/sbin/haproxy"], "run scripts/install-deps.sh")
    else {
        return;
    };
    bounded(Duration::from_secs(40), "PROXY protocol", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let haproxy = Haproxy::start(&bin, dir.path(), broker.socket_addr()).await;
        let tls = format!("tls: {{ cert: \"{}\", key: \"{}\" }}", pki.cert.display(), pki.key.display());
        let yaml = format!(
            "listeners:\n\
             \x20 - {{ name: tls_v2, bind: \"127.0.0.1:0\", protocol: mqtt, {tls}, backend: pp2 }}\n\
             \x20 - {{ name: tls_v1, bind: \"127.0.0.1:0\", protocol: mqtt, {tls}, backend: pp1 }}\n\
             \x20 - {{ name: trusted, bind: \"127.0.0.1:0\", protocol: mqtt, trusted_proxies: [\"127.0.0.1/32\"], backend: pp2 }}\n\
             backends:\n\
             \x20 - name: pp2\n    proxy_protocol: v2\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: haproxy, address: \"{}\" }} ]\n\
             \x20 - name: pp1\n    proxy_protocol: v1\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: haproxy, address: \"{}\" }} ]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
            haproxy.v2, haproxy.v1
        );
        let proxy = TestProxy::start(&yaml).await;
        let client_tls = pki.client_config();
        let src = Ipv4Addr::new(127, 0, 0, 3);
        // The health probes pass through HAProxy too (they must speak PROXY protocol to it).
        for backend in ["pp2", "pp1"] {
            let series = format!("mqttlb_health_probe_duration_seconds_count{{backend=\"{backend}\",server=\"haproxy\"}}");
            eventually(Duration::from_secs(3), || async { (metric(proxy.admin, &series).await >= 3.0).then_some(()) })
                .await
                .expect("probes ran");
            let up = metric(proxy.admin, &format!("mqttlb_server_up{{backend=\"{backend}\",server=\"haproxy\"}}")).await;
            assert_eq!(up, 1.0, "{backend}: HAProxy with accept-proxy passes the health probes:\n{}", haproxy.log());
        }

        // A TLS client from 127.0.0.3, through mqtt-lb, v2 then v1 to HAProxy, then mosquitto.
        for (listener, frontend) in [("tls_v2", "fe_v2"), ("tls_v1", "fe_v1")] {
            let tcp = tcp_from(src, proxy.addrs[listener]).await.expect("connect from 127.0.0.3");
            let local = tcp.local_addr().expect("local address");
            let mut s = tls_over(tcp, client_tls.clone()).await.expect("TLS");
            let answer = exchange(&mut s, &connect_packet(4, &format!("pp-{listener}"), None)).await;
            assert_eq!(answer, Answer::Packet(CONNACK_OK_V311.to_vec()), "{listener}: CONNACK from mosquitto");
            let line = format!("{local} {frontend}");
            assert!(haproxy.saw(&line).await, "{listener}: HAProxy logs {line:?}:\n{}", haproxy.log());
        }

        // From a trusted proxy (127.0.0.1): a v2 header, then a v1 header, name the real client; that address is
        // what reaches HAProxy.
        let trusted = proxy.addrs["trusted"];
        let headers: [(Vec<u8>, &str); 2] = [
            (v2_header("203.0.113.7:4242".parse().unwrap(), "198.51.100.1:1883".parse().unwrap()), "203.0.113.7:4242"),
            (b"PROXY TCP4 203.0.113.8 198.51.100.1 4343 1883\r\n".to_vec(), "203.0.113.8:4343"),
        ];
        for (i, (header, client)) in headers.iter().enumerate() {
            let mut s = tcp_from(Ipv4Addr::LOCALHOST, trusted).await.expect("connect from 127.0.0.1");
            let mut bytes = header.clone();
            bytes.extend_from_slice(&connect_packet(5, &format!("behind-nlb-{i}"), None));
            let answer = exchange(&mut s, &bytes).await;
            assert!(matches!(&answer, Answer::Packet(p) if p.starts_with(&[0x20]) && p.get(3) == Some(&0)), "{answer:?}");
            let line = format!("{client} fe_v2");
            assert!(haproxy.saw(&line).await, "HAProxy logs {line:?}:\n{}", haproxy.log());
        }

        // From an untrusted source (127.0.0.2), a PROXY header is not read: the client is direct, and its first
        // bytes are not a CONNECT.
        let not_connect = rejected(proxy.admin, "trusted", "not_connect").await;
        for (i, (header, _)) in headers.iter().enumerate() {
            let mut s = tcp_from(Ipv4Addr::new(127, 0, 0, 2), trusted).await.expect("connect from 127.0.0.2");
            let mut bytes = header.clone();
            bytes.extend_from_slice(&connect_packet(4, &format!("spoofer-{i}"), None));
            let answer = exchange(&mut s, &bytes).await;
            assert!(matches!(answer, Answer::Closed(ref got, _) if got.is_empty()), "refused without an answer: {answer:?}");
        }
        assert_eq!(rejected(proxy.admin, "trusted", "not_connect").await, not_connect + 2.0);
        // A trusted source without a header.
        let mut s = tcp_from(Ipv4Addr::LOCALHOST, trusted).await.expect("connect");
        let answer = exchange(&mut s, &connect_packet(4, "no-header", None)).await;
        assert!(matches!(answer, Answer::Closed(ref got, _) if got.is_empty()), "refused without an answer: {answer:?}");
        assert_eq!(rejected(proxy.admin, "trusted", "proxy_protocol_invalid").await, 1.0);

        let log = haproxy.log();
        assert_eq!(log.lines().filter(|l| l.starts_with("203.0.113.")).count(), 2, "only the trusted headers:\n{log}");
        assert!(broker.client_ids_seen().iter().any(|c| c == "behind-nlb-0"), "the CONNECT reached mosquitto");
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 5. mTLS and require_identity.

/// Accepts one connection, reads a PROXY v2 header and the CONNECT after it, answers CONNACK 0; returns
/// (header, CONNECT).
async fn record_one(listener: TcpListener) -> (Vec<u8>, Vec<u8>) {
    let (mut s, _) = listener.accept().await.expect("accept");
    let mut header = vec![0u8; 16];
    s.read_exact(&mut header).await.expect("PROXY v2 fixed part");
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await.expect("PROXY v2 addresses and TLVs");
    header.extend_from_slice(&rest);
    let Answer::Packet(connect) = read_packet(&mut s, STEP_TIMEOUT).await else {
        panic!("no CONNECT after the header")
    };
    s.write_all(&CONNACK_OK_V311).await.expect("CONNACK");
    let mut end = Vec::new();
    let _ = tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut end)).await;
    (header, connect)
}

/// The TLVs of a v2 header after the IPv4 addresses: (type, value).
fn tlvs(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        out.push((b[0], b[3..3 + len].to_vec()));
        b = &b[3 + len..];
    }
    assert!(b.is_empty(), "trailing bytes in the TLVs");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_certificate_that_vouches_for_the_client_id_or_username() {
    bounded(Duration::from_secs(40), "mTLS", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = TestCa::new(d, "clients-ca");
        let other_ca = TestCa::new(d, "other-ca");
        let (cert, key) = (d.join("server.crt"), d.join("server.key"));
        server_cert(&ca, &cert, &key, "localhost", 7);
        let broker = Mosquitto::start(d, "b0").await;
        let recorder = TcpListener::bind("127.0.0.1:0").await.expect("bind the recorder");
        let recorder_addr = recorder.local_addr().expect("recorder address");
        let tls = |require: &str| {
            format!(
                "tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", require_identity: {require} }}",
                cert.display(),
                key.display(),
                ca.pem.display()
            )
        };
        let yaml = format!(
            "listeners:\n\
             \x20 - {{ name: by_id, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: brokers }}\n\
             \x20 - {{ name: by_user, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: brokers }}\n\
             \x20 - {{ name: tlv, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: recorder }}\n\
             backends:\n\
             \x20 - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: b0, address: \"{}\" }} ]\n\
             \x20 - name: recorder\n    proxy_protocol: v2\n    health: {{ check: none }}\n\
             \x20   servers: [ {{ name: r, address: \"{recorder_addr}\" }} ]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
            tls("client-id"),
            tls("username"),
            tls("none"),
            broker.addr()
        );
        let proxy = TestProxy::start(&yaml).await;
        let (by_id, by_user) = (proxy.addrs["by_id"], proxy.addrs["by_user"]);
        let sensor = ca.client_with_sans("sensor-1", "sensor-1", &["sensor-1.example.org"], 201);
        let alice = ca.client("alice", "alice", 202);
        let stranger = other_ca.client("stranger", "sensor-1", 203);

        // No certificate, and a certificate of another CA: the handshake fails, nothing reaches the broker.
        for (what, config) in
            [("no certificate", ca.client_config(None)), ("another CA", ca.client_config(Some(&stranger)))]
        {
            let answer = match tls_connect(by_id, config).await {
                Err(e) => Answer::Closed(Vec::new(), e.to_string()),
                Ok(mut s) => exchange(&mut s, &connect_packet(4, "sensor-1", None)).await,
            };
            assert!(matches!(answer, Answer::Closed(ref got, _) if got.is_empty()), "{what}: refused: {answer:?}");
        }
        let failures = "mqttlb_tls_handshake_failures_total{listener=\"by_id\",kind=\"client_certificate\"}";
        eventually(Duration::from_secs(2), || async { (metric(proxy.admin, failures).await == 2.0).then_some(()) })
            .await
            .expect("both failed handshakes counted as client_certificate");
        assert_eq!(rejected(proxy.admin, "by_id", "tls_handshake").await, 2.0);

        // A valid certificate whose CN is not the client id: CONNACK not authorized, 0x05 (3.1.1) and 0x87 (5).
        let sensor_tls = ca.client_config(Some(&sensor));
        for (level, want) in [(4u8, vec![0x20, 0x02, 0x00, 0x05]), (5, vec![0x20, 0x03, 0x00, 0x87, 0x00])] {
            let mut s = tls_connect(by_id, sensor_tls.clone()).await.expect("TLS with a valid certificate");
            assert_eq!(exchange(&mut s, &connect_packet(level, "sensor-2", None)).await, Answer::Packet(want.clone()));
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest)).await.expect("closed after the CONNACK");
            assert!(rest.is_empty(), "nothing after the refusal: {rest:02x?}");
        }
        assert_eq!(rejected(proxy.admin, "by_id", "identity_mismatch").await, 2.0);
        assert!(!broker.client_ids_seen().iter().any(|c| c.starts_with("sensor")), "nothing reached b0");

        // A matching client id (the CN, or a SAN) gets the broker's CONNACK.
        for (level, id) in [(4u8, "sensor-1"), (5, "sensor-1.example.org")] {
            let mut s = tls_connect(by_id, sensor_tls.clone()).await.expect("TLS");
            let answer = exchange(&mut s, &connect_packet(level, id, None)).await;
            assert!(matches!(&answer, Answer::Packet(p) if p[0] == 0x20 && p[3] == 0x00), "{id}: {answer:?}");
        }
        let mut c = connect_with_cert(by_id, sensor_tls.clone(), "sensor-1").await;
        c.round_trip("mtls/sensor-1", b"hello").await.expect("the matching client publishes and receives");
        c.disconnect().await;
        eventually(Duration::from_secs(2), || async {
            broker.client_ids_seen().iter().any(|c| c == "sensor-1.example.org").then_some(())
        })
        .await
        .expect("the SAN client reached mosquitto");

        // require_identity: username.
        let alice_tls = ca.client_config(Some(&alice));
        for (user, want) in [(Some("alice"), 0x00), (Some("bob"), 0x05), (None, 0x05)] {
            let mut s = tls_connect(by_user, alice_tls.clone()).await.expect("TLS");
            let answer = exchange(&mut s, &connect_packet(4, "any-client-id", user)).await;
            assert!(matches!(&answer, Answer::Packet(p) if p.len() == 4 && p[3] == want), "user {user:?}: {answer:?}");
        }
        assert_eq!(rejected(proxy.admin, "by_user", "identity_mismatch").await, 2.0);

        // The v2 TLVs tell the server about the TLS session: version and the client certificate's CN.
        let recording = tokio::spawn(record_one(recorder));
        let tcp = TcpStream::connect(proxy.addrs["tlv"]).await.expect("connect");
        let client = tcp.local_addr().expect("local address");
        let mut s = tls_over(tcp, sensor_tls.clone()).await.expect("TLS");
        let version = s.get_ref().1.protocol_version().expect("version");
        let connect = connect_packet(4, "sensor-1", None);
        assert_eq!(exchange(&mut s, &connect).await, Answer::Packet(CONNACK_OK_V311.to_vec()));
        drop(s);
        let (header, forwarded) = recording.await.expect("recorder");
        assert_eq!(forwarded, connect, "the CONNECT is forwarded unchanged after the header");
        assert_eq!(&header[12..14], &[0x21, 0x11], "v2, PROXY, TCP over IPv4");
        assert_eq!(&header[16..20], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([header[24], header[25]]), client.port(), "the client's port");
        assert_eq!(&header[20..24], &[127, 0, 0, 1], "the address the client reached");
        assert_eq!(u16::from_be_bytes([header[26], header[27]]), proxy.addrs["tlv"].port(), "the port it reached");
        let tlv = tlvs(&header[28..]);
        let ssl = tlv.iter().find(|(t, _)| *t == 0x20).map(|(_, v)| v.clone()).expect("PP2_TYPE_SSL");
        assert_eq!(ssl[0], 0x01 | 0x02, "PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN");
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verify: 0 (the certificate was verified)");
        let sub = tlvs(&ssl[5..]);
        let want_version = match version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "TLSv1.2",
        };
        assert!(
            sub.contains(&(0x21, want_version.as_bytes().to_vec())),
            "PP2_SUBTYPE_SSL_VERSION {want_version}: {sub:?}"
        );
        assert!(sub.contains(&(0x22, b"sensor-1".to_vec())), "PP2_SUBTYPE_SSL_CN: {sub:?}");
        proxy.stop().await;
    })
    .await;
}

/// A rumqttc 3.1.1 client over mTLS.
async fn connect_with_cert(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, id: &str) -> MqttClient {
    MqttClient::connect(addr, Some(tls), id, Version::V4).await.unwrap_or_else(|e| panic!("{id}: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Connection rate limit per source IP.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_rate_limited_while_another_connects() {
    bounded(Duration::from_secs(40), "rate limit", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let yaml = format!(
            "listeners:\n  - {{ name: plain, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
             backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 500ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: b0, address: \"{}\" }} ]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\n\
             limits: {{ max_connection_rate_per_ip: 20, connection_rate_burst: 20 }}\n\
             shutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
            broker.addr()
        );
        let proxy = TestProxy::start(&yaml).await;
        let addr = proxy.mqtts;
        let flooder = Ipv4Addr::new(127, 0, 0, 2);

        // 200 connections from 127.0.0.2 within about a second (10 at a time, each sending a CONNECT), 10 times the
        // allowed rate.
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..10 {
            let done = Arc::clone(&done);
            workers.spawn(async move {
                let (mut ok, mut refused) = (0usize, 0usize);
                for i in 0..20 {
                    let mut s = tcp_from(flooder, addr).await.expect("connect from 127.0.0.2");
                    match exchange(&mut s, &connect_packet(4, &format!("flood-{w}-{i}"), None)).await {
                        Answer::Packet(p) if p == CONNACK_OK_V311 => ok += 1,
                        Answer::Closed(got, _) if got.is_empty() => refused += 1,
                        other => panic!("flood: unexpected answer {other:?}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                (ok, refused)
            });
        }
        // Meanwhile, once the flood is well under way, a client from 127.0.0.1 connects as usual.
        eventually(Duration::from_secs(10), || async { (done.load(Ordering::Relaxed) >= 60).then_some(()) })
            .await
            .expect("the flood is under way");
        let t = Instant::now();
        let mut c =
            MqttClient::connect(addr, None, "normal-client", Version::V5).await.expect("the other source connects");
        let took = t.elapsed();
        let during = done.load(Ordering::Relaxed);
        c.round_trip("rate/normal", b"fine").await.expect("and works");
        let (mut ok, mut refused) = (0, 0);
        while let Some(r) = workers.join_next().await {
            let (o, r) = r.expect("flood worker");
            ok += o;
            refused += r;
        }
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "flood: {ok} admitted, {refused} refused in {elapsed:.2}s; the client from 127.0.0.1 got its CONNACK in \
             {took:?} (after {during} flood connections)"
        );
        assert!(during < 200, "the normal client connected during the flood");
        assert!(took < Duration::from_secs(1), "the other source is not slowed: {took:?}");
        assert_eq!(ok + refused, 200);
        // The bucket: a burst of 20, then 20 per second.
        let allowed = 20.0 + 20.0 * elapsed;
        assert!(ok >= 20 && (ok as f64) <= allowed + 1.0, "{ok} admitted, at most {allowed:.0} allowed");
        assert_eq!(rejected(proxy.admin, "plain", "rate_limited").await, refused as f64, "every refusal counted");
        assert!(refused >= 100, "most of the flood is refused: {refused}");
        // 127.0.0.1 still has its own bucket.
        for i in 0..5 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            assert_eq!(
                exchange(&mut s, &connect_packet(4, &format!("normal-{i}"), None)).await,
                Answer::Packet(CONNACK_OK_V311.to_vec())
            );
        }
        c.disconnect().await;
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// A server new to the pool goes down on its first failed probe.

/// (`mqttlb_server_up`, `mqttlb_health_probe_failures_total`) of `brokers/server`, from one scrape.
async fn health_of(admin: SocketAddr, server: &str) -> (f64, f64) {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    let labels = format!("{{backend=\"brokers\",server=\"{server}\"}}");
    let up = metric_in(&body, &format!("mqttlb_server_up{labels}")).unwrap_or(-1.0);
    let failures = metric_in(&body, &format!("mqttlb_health_probe_failures_total{labels}")).unwrap_or(0.0);
    (up, failures)
}

/// Waits until `server` is down and returns the failed probes counted by then: with one probe a second, a server
/// that went down on its first failure shows 1.
async fn failures_when_down(admin: SocketAddr, server: &str) -> f64 {
    let down = eventually(Duration::from_secs(5), || async {
        let (up, failures) = health_of(admin, server).await;
        (up == 0.0).then_some(failures)
    })
    .await;
    match down {
        Some(failures) => failures,
        None => panic!("{server} did not go down: (up, failures) = {:?}", health_of(admin, server).await),
    }
}

fn new_server_yaml(live: &Mosquitto, dead: &[(&str, u16)]) -> String {
    let mut y = format!(
        "listeners:\n  - {{ name: plain, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    \
         health: {{ check: tcp, interval: 1s, timeout: 300ms, rise: 2, fall: 3 }}\n    servers:\n      \
         - {{ name: live, address: \"{}\" }}\n",
        live.addr()
    );
    for (name, port) in dead {
        y.push_str(&format!("      - {{ name: {name}, address: \"127.0.0.1:{port}\" }}\n"));
    }
    y.push_str("admin: { bind: \"127.0.0.1:0\" }\nshutdown: { grace: 0s, drain_timeout: 300ms }\n");
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_new_to_the_pool_goes_down_on_its_first_failed_probe() {
    bounded(Duration::from_secs(30), "new server health", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = Mosquitto::start(dir.path(), "live").await;
        // Nobody listens on these ports.
        let (dead_at_start, dead_by_reload) = (free_port(), free_port());
        let proxy =
            FileProxy::start(dir.path().join("lb.yaml"), &new_server_yaml(&live, &[("at-start", dead_at_start)])).await;
        assert_eq!(failures_when_down(proxy.admin, "at-start").await, 1.0, "at start-up");

        proxy.write(&new_server_yaml(&live, &[("at-start", dead_at_start), ("by-reload", dead_by_reload)]));
        let (status, body) = http(proxy.admin, "POST", "/reload", "").await;
        assert_eq!(status, 200, "reload: {body}");
        assert_eq!(failures_when_down(proxy.admin, "by-reload").await, 1.0, "added by a reload");
        let view = servers(proxy.admin, "brokers").await;
        let health: Vec<(&str, &str)> = view.iter().map(|s| (s.name.as_str(), s.health.as_str())).collect();
        assert_eq!(health, [("live", "up"), ("at-start", "down"), ("by-reload", "down")]);
        // A server the reload carried over keeps its proven verdict: `live` stays up, `at-start` stays down.
        assert_eq!(health_of(proxy.admin, "live").await.0, 1.0);
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// /readyz says what keeps a backend's servers out.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_states_that_keep_servers_out() {
    bounded(Duration::from_secs(30), "readyz states", async {
        // Two servers that accept (a TCP probe is answered by the kernel), one nobody listens on.
        let (up0, up1) = (
            TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        );
        let addr = |l: &TcpListener| l.local_addr().expect("local addr");
        let yaml = format!(
            "listeners:\n  - {{ name: plain, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
             backends:\n  - name: brokers\n    health: {{ check: tcp, interval: 200ms, timeout: 300ms }}\n    \
             servers:\n      - {{ name: a, address: \"{}\" }}\n      - {{ name: b, address: \"{}\" }}\n      \
             - {{ name: c, address: \"127.0.0.1:{}\" }}\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\nshutdown: {{ grace: 0s, drain_timeout: 300ms }}\n",
            addr(&up0),
            addr(&up1),
            free_port()
        );
        let proxy = TestProxy::start(&yaml).await;
        proxy.wait_server_up("c", false, Duration::from_secs(5)).await;
        assert_eq!(http_get(proxy.admin, "/readyz").await, (200, "ready\n".to_owned()));
        set_state(proxy.admin, "brokers", "a", "maint").await;
        set_state(proxy.admin, "brokers", "b", "drain").await;
        let (status, body) = http_get(proxy.admin, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, "not ready: brokers: 3 servers, none can take clients (1 maint, 1 drain, 1 down)\n");
        set_state(proxy.admin, "brokers", "b", "maint").await;
        let (_, body) = http_get(proxy.admin, "/readyz").await;
        assert_eq!(body, "not ready: brokers: 3 servers, none can take clients (2 maint, 1 down)\n");
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// Server host names are resolved off the connection path.

/// A broker given by host name (`localhost:PORT`) is looked up in the background (at start, then every 30 s), not
/// per connect: a burst of connections and the health probes all read the kept answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_by_host_name_is_looked_up_once_not_per_connection() {
    bounded(Duration::from_secs(30), "host name", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let yaml = format!(
            "listeners:\n  - {{ name: plain, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
             backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 100ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: b0, address: \"localhost:{}\" }} ]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\n\
             shutdown: {{ drain_timeout: 1s }}\n",
            broker.socket_addr().port()
        );
        let proxy = TestProxy::start(&yaml).await;
        let lookups = "mqttlb_server_dns_lookups_total{backend=\"brokers\",server=\"b0\"}";
        eventually(Duration::from_secs(5), || async { (metric(proxy.admin, lookups).await >= 1.0).then_some(()) })
            .await
            .expect("the name looked up at start");
        let before = metric(proxy.admin, lookups).await;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..5 {
            let addr = proxy.mqtts;
            tasks.spawn(async move {
                for i in 0..10 {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    let answer = exchange(&mut s, &connect_packet(4, &format!("named-{w}-{i}"), None)).await;
                    assert_eq!(answer, Answer::Packet(CONNACK_OK_V311.to_vec()), "through localhost");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("connect worker");
        }
        let connections = "mqttlb_server_connections_total{backend=\"brokers\",server=\"b0\"}";
        assert_eq!(metric(proxy.admin, connections).await, 50.0);
        let probes = "mqttlb_health_probe_duration_seconds_count{backend=\"brokers\",server=\"b0\"}";
        let probed = metric(proxy.admin, probes).await;
        eventually(Duration::from_secs(5), || async {
            (metric(proxy.admin, probes).await >= probed + 3.0).then_some(())
        })
        .await
        .expect("three more probes");
        assert_eq!(metric(proxy.admin, lookups).await, before, "50 connects and the probes looked nothing up");
        proxy.stop().await;
    })
    .await;
}

/// A reload that changes `limits` keeps the counts: an address at its `max_connections_per_ip` stays there (the
/// counts started again from zero before, so every such reload let it open as many again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_limits_keeps_the_per_ip_counts() {
    bounded(Duration::from_secs(30), "per-IP counts across reloads", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let yaml = |timeout: &str| {
            let limits = format!("max_connections_per_ip: 2, connect_timeout: {timeout}");
            yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits(&limits).build()
        };
        let proxy = FileProxy::start(dir.path().join("lb.yaml"), &yaml("10s")).await;
        let front = proxy.addr("mqtts");
        let tls = pki.client_config();
        let mut held = Vec::new();
        for n in 0..2 {
            let c = MqttClient::connect(front, Some(tls.clone()), &format!("held-{n}"), Version::V4).await;
            held.push(c.expect("under the per-IP limit"));
        }
        for timeout in ["9s", "8s"] {
            proxy.write(&yaml(timeout));
            proxy.reload.reload().await.expect("reload with other limits");
            let refused = MqttClient::connect(front, Some(tls.clone()), "one-more", Version::V4).await;
            assert!(refused.is_err(), "a third connection from 127.0.0.1 after a reload of the limits");
        }
        let series = "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"max_connections_per_ip\"}";
        assert_eq!(metric(proxy.admin, series).await, 2.0);
        // A slot freed under the old limits is free under the new ones.
        held.pop().expect("a held client").disconnect().await;
        let again = eventually(Duration::from_secs(5), || {
            let tls = tls.clone();
            async move { MqttClient::connect(front, Some(tls), "after-close", Version::V4).await.ok() }
        })
        .await;
        assert!(again.is_some(), "a freed slot admits a new client");
        drop(held);
        proxy.stop().await;
    })
    .await;
}
