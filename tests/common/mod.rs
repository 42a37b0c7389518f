//! Shared harness of the end-to-end tests: real mosquitto brokers, real TLS (rcgen PKI, rustls with ring), real
//! MQTT clients (rumqttc v3.1.1 and v5) and an in-process mqtt-lb started through the library API.
//!
//! Used by `tests/*.rs` with `mod common;` and by examples with `#[path = "../tests/common/mod.rs"] mod common;`,
//! so nothing here is test-only.
//!
//! Conventions:
//! - Everything listens on 127.0.0.1; ports are chosen per broker ([`free_port`]) or bound as `127.0.0.1:0`.
//! - Brokers say who they are: each one holds a retained message on [`WHOAMI_TOPIC`] whose payload is its name,
//!   which is also the server's name in the proxy configuration ([`yaml_for`]), so [`which_broker`] tells where a
//!   client id landed without looking inside the proxy.
//! - Processes started here are killed by PID (their `Child`) on `stop()` and on drop.
//! - Waits are bounded; [`eventually`] polls a condition until a deadline.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use mqtt_lb::balancer::{Balancer, Pool};
use mqtt_lb::config::Config;
use mqtt_lb::metrics::Metrics;
use mqtt_lb::server::{Server, ServerError};

/// The topic on which every test broker keeps a retained message naming itself.
pub const WHOAMI_TOPIC: &str = "lb/whoami";

/// Default bound for one MQTT operation (connect, subscribe, a message to arrive).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------------------
// Time and ports.

/// Runs `body` under `limit`; panics with `what` if it does not finish in time.
pub async fn bounded<F: Future>(limit: Duration, what: &str, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `timeout`. Returns `None` at the deadline (one
/// check always runs, and one runs at the deadline itself). Use `.expect("what was awaited")` on the result.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A check that hangs must not overrun the deadline by more than a little.
        if let Ok(Some(v)) = tokio::time::timeout(left.max(Duration::from_millis(200)), check()).await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25).min(left)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    l.local_addr().expect("local address of the probe socket").port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_accepting(addr: SocketAddr, timeout: Duration) -> bool {
    eventually(timeout, || async move { TcpStream::connect(addr).await.ok().map(|_| ()) }).await.is_some()
}

/// Opt-in logs of the proxy: set `RUST_LOG=mqtt_lb=debug` when running the tests.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Mosquitto.

fn mosquitto_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/mosquitto");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("mosquitto")
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A mosquitto broker on 127.0.0.1, started (and killed) by the test.
pub struct Mosquitto {
    /// The broker's name: the payload of its retained `lb/whoami`, and its server name in the proxy config.
    pub name: String,
    /// The plain MQTT port.
    pub port: u16,
    /// The WebSocket port, for brokers started with [`Mosquitto::start_with_websockets`].
    pub ws_port: Option<u16>,
    pub dir: PathBuf,
    conf: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker named `name` with its files in `dir`, waits until it accepts, publishes its identity.
    pub async fn start(dir: &Path, name: &str) -> Mosquitto {
        Self::start_inner(dir, name, false).await
    }

    /// Like [`Mosquitto::start`], plus a second listener speaking MQTT over WebSocket (`ws_port`).
    pub async fn start_with_websockets(dir: &Path, name: &str) -> Mosquitto {
        Self::start_inner(dir, name, true).await
    }

    async fn start_inner(dir: &Path, name: &str, websockets: bool) -> Mosquitto {
        // A port chosen by `free_port` can be taken by someone else before mosquitto binds it: retry with another.
        let mut last_error = String::new();
        for _ in 0..4 {
            let mut m = Mosquitto {
                name: name.to_owned(),
                port: free_port(),
                ws_port: websockets.then(free_port),
                dir: dir.to_path_buf(),
                conf: dir.join(format!("{name}.conf")),
                log_path: dir.join(format!("{name}.log")),
                stderr_path: dir.join(format!("{name}.stderr")),
                child: None,
            };
            if m.ws_port == Some(m.port) {
                continue;
            }
            m.write_config();
            match m.spawn_and_wait().await {
                Ok(()) => {
                    m.publish_identity().await;
                    return m;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("mosquitto {name} did not start: {last_error}");
    }

    fn write_config(&self) {
        let mut conf = String::new();
        if running_as_root() {
            // As root, mosquitto drops to the `mosquitto` user, which cannot write the log in our 0700 temp dir.
            conf.push_str("user root\n");
        }
        conf.push_str(&format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type all\n\
             connection_messages true\nlog_timestamp true\nlistener {} 127.0.0.1\n",
            self.log_path.display(),
            self.port
        ));
        if let Some(ws) = self.ws_port {
            conf.push_str(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
        }
        std::fs::write(&self.conf, conf).expect("write mosquitto config");
    }

    /// Spawns mosquitto with the written config and waits (5 s at most) until its port(s) accept.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| format!("open {}: {e}", self.stderr_path.display()))?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", mosquitto_binary().display()))?;
        self.child = Some(child);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.ws_port).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        for port in ports {
            loop {
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    break;
                }
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.child = None;
                        return Err(format!("exited with {status} ({})", self.diagnostics()));
                    }
                }
                if Instant::now() >= deadline {
                    self.kill();
                    return Err(format!("port {port} did not accept within 5s ({})", self.diagnostics()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!("stderr: {:?}; log tail: {:?}", err.trim(), tail)
    }

    /// Publishes the retained `lb/whoami` = name directly to the broker (QoS 1, waits for the PUBACK).
    pub async fn publish_identity(&self) {
        let id = format!("whoami-setter-{}", self.name);
        let mut c = MqttClient::connect(self.socket_addr(), None, &id, Version::V4)
            .await
            .unwrap_or_else(|e| panic!("connect directly to broker {}: {e}", self.name));
        c.publish(WHOAMI_TOPIC, self.name.as_bytes(), true)
            .await
            .unwrap_or_else(|e| panic!("publish the retained identity of {}: {e}", self.name));
        c.disconnect().await;
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to this PID only, then reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the broker again on the same port(s), waits until it accepts, re-publishes its identity (retained
    /// messages do not survive: `persistence false`).
    pub async fn restart(&mut self) {
        self.kill();
        let mut last_error = String::new();
        // The port was ours a moment ago; give a lingering socket a few tries.
        for _ in 0..10 {
            match self.spawn_and_wait().await {
                Ok(()) => {
                    self.publish_identity().await;
                    return;
                }
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto {} did not restart on port {}: {last_error}", self.name, self.port);
    }

    /// The broker's log so far (mosquitto writes its log file line by line, unbuffered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// TCP connections the broker accepted so far (its "New connection from" log lines), over restarts. This counts
    /// every connection: clients, health probes, and the harness's own readiness checks.
    pub fn connections_seen(&self) -> usize {
        self.log().lines().filter(|l| l.contains("New connection from")).count()
    }

    /// Client ids the broker saw connect ("New client connected from ... as <id> (...)" lines).
    pub fn client_ids_seen(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once("New client connected from ")?.1;
                let after_as = rest.split_once(" as ")?.1;
                Some(after_as.rsplit_once(" (").map_or(after_as, |(id, _)| id).to_owned())
            })
            .collect()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// PKI.

/// A test CA and a server certificate it signed (SANs `localhost`, 127.0.0.1), as PEM files in `dir`.
pub struct TestPki {
    pub dir: PathBuf,
    /// `ca.pem`
    pub ca: PathBuf,
    /// `server.crt`
    pub cert: PathBuf,
    /// `server.key`
    pub key: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl TestPki {
    /// ECDSA P-256 CA and server key, all generated by rcgen.
    pub fn new(dir: &Path) -> TestPki {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate the CA key");
        let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate the server key");
        Self::issue(dir, ca_key, server_key)
    }

    /// RSA 2048 CA and server keys. rcgen with ring cannot generate RSA keys (ring can only sign with them), so the
    /// keys come from `openssl genpkey` and rcgen signs the certificates. Errs (with a message to print as the skip
    /// reason) when `openssl` is missing.
    pub fn new_rsa(dir: &Path) -> Result<TestPki, String> {
        let ca_key = rsa_key(dir, "ca-rsa.key")?;
        let server_key = rsa_key(dir, "server-rsa.key")?;
        Ok(Self::issue(dir, ca_key, server_key))
    }

    fn issue(dir: &Path, ca_key: rcgen::KeyPair, server_key: rcgen::KeyPair) -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "mqtt-lb test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&server_key, &ca).expect("sign the server certificate");

        let pki = TestPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca_der: ca.der().clone(),
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert, cert.pem()).expect("write server.crt");
        std::fs::write(&pki.key, server_key.serialize_pem()).expect("write server.key");
        pki
    }

    /// A rustls client configuration (ring provider) trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add the test CA to the root store");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions of the ring provider")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn rsa_key(dir: &Path, file: &str) -> Result<rcgen::KeyPair, String> {
    let path = dir.join(file);
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("skipped: RSA keys need the `openssl` command, which cannot run here ({e})"))?;
    if !out.status.success() {
        return Err(format!("openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| format!("{}: not a usable RSA key: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// MQTT clients (rumqttc).

/// The MQTT protocol version a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (rumqttc's default module).
    V4,
    /// MQTT 5 (`rumqttc::v5`).
    V5,
}

/// (host, transport) for a client of `addr`: TLS clients name `localhost` (a SAN of the test certificate).
fn transport(tls: Option<Arc<rustls::ClientConfig>>) -> (&'static str, rumqttc::Transport) {
    match tls {
        None => ("127.0.0.1", rumqttc::Transport::tcp()),
        Some(cfg) => ("localhost", rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(cfg))),
    }
}

/// Connects an MQTT 3.1.1 client and waits for a successful CONNACK (errs on refusal, error or timeout).
pub async fn connect_v4(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let (host, transport) = transport(tls);
    let mut options = rumqttc::MqttOptions::new(client_id, host, addr.port());
    options.set_transport(transport);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    eventloop.network_options.set_connection_timeout(STEP_TIMEOUT.as_secs());
    let first = tokio::time::timeout(STEP_TIMEOUT, eventloop.poll())
        .await
        .map_err(|_| format!("{client_id}: no CONNACK within {STEP_TIMEOUT:?}"))?;
    match first {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))
            if ack.code == rumqttc::ConnectReturnCode::Success =>
        {
            Ok((client, eventloop))
        }
        Ok(other) => Err(format!("{client_id}: expected CONNACK, got {other:?}")),
        Err(e) => Err(format!("{client_id}: connect failed: {e}")),
    }
}

/// Connects an MQTT 5 client and waits for a successful CONNACK (errs on refusal, error or timeout).
pub async fn connect_v5(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
) -> Result<(v5::AsyncClient, v5::EventLoop), String> {
    let (host, transport) = transport(tls);
    let mut options = v5::MqttOptions::new(client_id, host, addr.port());
    options.set_transport(transport);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_connection_timeout(STEP_TIMEOUT.as_secs());
    let (client, mut eventloop) = v5::AsyncClient::new(options, 16);
    let first = tokio::time::timeout(STEP_TIMEOUT, eventloop.poll())
        .await
        .map_err(|_| format!("{client_id}: no CONNACK within {STEP_TIMEOUT:?}"))?;
    match first {
        Ok(v5::Event::Incoming(v5::Incoming::ConnAck(ack)))
            if ack.code == v5::mqttbytes::v5::ConnectReturnCode::Success =>
        {
            Ok((client, eventloop))
        }
        Ok(other) => Err(format!("{client_id}: expected CONNACK, got {other:?}")),
        Err(e) => Err(format!("{client_id}: connect failed: {e}")),
    }
}

/// What the harness needs from an incoming packet, for both versions.
enum Seen {
    SubAck,
    PubAck,
    Publish { topic: String, payload: Vec<u8> },
    Other,
}

/// A connected rumqttc client of either version, with its event loop. Never reconnects: after the first error
/// every call fails (rumqttc would silently reconnect on the next poll).
pub enum Conn {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

pub struct MqttClient {
    pub id: String,
    conn: Conn,
    /// Publishes that arrived while waiting for something else.
    inbox: VecDeque<(String, Vec<u8>)>,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

impl fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttClient").field("id", &self.id).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Connects (plain TCP when `tls` is None) and waits for a successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: &str,
        version: Version,
    ) -> Result<MqttClient, String> {
        let conn = match version {
            Version::V4 => connect_v4(addr, tls, client_id).await.map(|(c, e)| Conn::V4(c, Box::new(e)))?,
            Version::V5 => connect_v5(addr, tls, client_id).await.map(|(c, e)| Conn::V5(c, Box::new(e)))?,
        };
        Ok(MqttClient { id: client_id.to_owned(), conn, inbox: VecDeque::new(), closed: None })
    }

    /// Why the connection ended, if it did.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// One event from the event loop; Err once the connection has ended.
    async fn poll(&mut self) -> Result<Seen, String> {
        if let Some(why) = &self.closed {
            return Err(format!("{}: connection already ended: {why}", self.id));
        }
        let seen = match &mut self.conn {
            Conn::V4(_, ev) => match ev.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => Ok(match p {
                    rumqttc::Packet::SubAck(_) => Seen::SubAck,
                    rumqttc::Packet::PubAck(_) => Seen::PubAck,
                    rumqttc::Packet::Publish(p) => Seen::Publish { topic: p.topic, payload: p.payload.to_vec() },
                    _ => Seen::Other,
                }),
                Ok(rumqttc::Event::Outgoing(_)) => Ok(Seen::Other),
                Err(e) => Err(e.to_string()),
            },
            Conn::V5(_, ev) => match ev.poll().await {
                Ok(v5::Event::Incoming(p)) => Ok(match p {
                    v5::Incoming::SubAck(_) => Seen::SubAck,
                    v5::Incoming::PubAck(_) => Seen::PubAck,
                    v5::Incoming::Publish(p) => Seen::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                    },
                    _ => Seen::Other,
                }),
                Ok(v5::Event::Outgoing(_)) => Ok(Seen::Other),
                Err(e) => Err(e.to_string()),
            },
        };
        match seen {
            Ok(Seen::Publish { topic, payload }) => {
                self.inbox.push_back((topic, payload));
                Ok(Seen::Other)
            }
            Ok(s) => Ok(s),
            Err(e) => {
                self.closed = Some(e.clone());
                Err(format!("{}: connection ended: {e}", self.id))
            }
        }
    }

    /// Polls until `want` is seen, under `timeout`.
    async fn until(&mut self, timeout: Duration, what: &str, want: fn(&Seen) -> bool) -> Result<(), String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if want(&self.poll().await?) {
                    return Ok(());
                }
            }
        })
        .await
        .map_err(|_| format!("{id}: no {what} within {timeout:?}"))?
    }

    /// Subscribes (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let sent = match &self.conn {
            Conn::V4(c, _) => c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
            Conn::V5(c, _) => c.subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
        };
        sent.map_err(|e| format!("{}: subscribe {topic}: {e}", self.id))?;
        self.until(STEP_TIMEOUT, "SUBACK", |s| matches!(s, Seen::SubAck)).await
    }

    /// Publishes (QoS 1) and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> Result<(), String> {
        let sent = match &self.conn {
            Conn::V4(c, _) => {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec()).await.map_err(|e| e.to_string())
            }
            Conn::V5(c, _) => c
                .publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload.to_vec())
                .await
                .map_err(|e| e.to_string()),
        };
        sent.map_err(|e| format!("{}: publish {topic}: {e}", self.id))?;
        self.until(STEP_TIMEOUT, "PUBACK", |s| matches!(s, Seen::PubAck)).await
    }

    /// The payload of the next PUBLISH on `topic` (earlier ones that arrived meanwhile first).
    pub async fn next_publish(&mut self, topic: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(i) = self.inbox.iter().position(|(t, _)| t == topic) {
                    let (_, payload) = self.inbox.remove(i).unwrap_or_default();
                    return Ok(payload);
                }
                self.poll().await?;
            }
        })
        .await
        .map_err(|_| format!("{id}: no PUBLISH on {topic} within {timeout:?}"))?
    }

    /// Subscribes to `topic`, publishes `payload` on it and waits for it to come back: one round trip.
    pub async fn round_trip(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.subscribe(topic).await?;
        self.publish(topic, payload, false).await?;
        let got = self.next_publish(topic, STEP_TIMEOUT).await?;
        if got != payload {
            return Err(format!("{}: sent {payload:?} on {topic}, got {got:?}", self.id));
        }
        Ok(())
    }

    /// Polls until the connection ends; returns why, or Err if it is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<String, String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async { while self.poll().await.is_ok() {} })
            .await
            .map_err(|_| format!("{id}: connection still open after {timeout:?}"))?;
        Ok(self.closed.clone().unwrap_or_default())
    }

    /// Sends DISCONNECT and waits (2 s at most) for the server to close the connection.
    pub async fn disconnect(mut self) {
        if self.closed.is_some() {
            return;
        }
        let sent = match &self.conn {
            Conn::V4(c, _) => c.disconnect().await.is_ok(),
            Conn::V5(c, _) => c.disconnect().await.is_ok(),
        };
        if sent {
            let _ = self.wait_closed(Duration::from_secs(2)).await;
        }
    }
}

/// Where a client with `client_id` lands through `proxy`: connects, subscribes to `lb/whoami`, returns the retained
/// payload (the broker's name), disconnects.
pub async fn try_which_broker(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
    version: Version,
) -> Result<String, String> {
    let mut c = MqttClient::connect(proxy, tls, client_id, version).await?;
    c.subscribe(WHOAMI_TOPIC).await?;
    let name = c.next_publish(WHOAMI_TOPIC, STEP_TIMEOUT).await?;
    c.disconnect().await;
    String::from_utf8(name).map_err(|e| format!("{client_id}: whoami payload is not UTF-8: {e}"))
}

/// [`try_which_broker`], panicking with the reason on failure.
pub async fn which_broker(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
    version: Version,
) -> String {
    try_which_broker(proxy, tls, client_id, version).await.unwrap_or_else(|e| panic!("which_broker: {e}"))
}

/// [`which_broker`] for many ids, 8 at a time; results in the order of `ids`.
pub async fn which_brokers(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    ids: &[String],
    version: Version,
) -> Vec<String> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(8) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in chunk.iter().enumerate() {
            let (tls, id) = (tls.clone(), id.clone());
            tasks.spawn(async move { (i, try_which_broker(proxy, tls, &id, version).await) });
        }
        let mut got: Vec<(usize, Result<String, String>)> = Vec::with_capacity(chunk.len());
        while let Some(r) = tasks.join_next().await {
            got.push(r.expect("which_broker task panicked"));
        }
        got.sort_by_key(|(i, _)| *i);
        out.extend(got.into_iter().map(|(_, r)| r.unwrap_or_else(|e| panic!("which_broker: {e}"))));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Raw MQTT over TLS (for what rumqttc cannot show, such as the exact bytes of a refusal).

/// A 3.1.1 CONNECT (clean session, keep alive 60, no credentials).
pub fn connect_packet_v311(client_id: &str) -> Vec<u8> {
    connect_packet(4, client_id)
}

/// A 5 CONNECT (clean start, keep alive 60, no properties, no credentials).
pub fn connect_packet_v5(client_id: &str) -> Vec<u8> {
    connect_packet(5, client_id)
}

fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 60];
    if level == 5 {
        body.push(0x00); // property length
    }
    let id = client_id.as_bytes();
    body.extend_from_slice(&u16::try_from(id.len()).expect("client id too long").to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Opens a TLS connection (server name `localhost`) to `addr`.
pub async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name").to_owned();
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await
}

/// Sends `bytes` over TLS and returns everything the server sends until it closes (errs after `timeout`).
pub async fn tls_exchange(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, async {
        let mut s = tls_connect(addr, tls).await.map_err(|e| format!("TLS connect to {addr}: {e}"))?;
        s.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(answer),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // A close without close_notify still ends the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(answer),
                Err(e) => return Err(format!("read after {answer:02x?}: {e}")),
            }
        }
    })
    .await
    .map_err(|_| format!("{addr}: the server did not close within {timeout:?}"))?
}

// ---------------------------------------------------------------------------------------------------------------
// The proxy under test.

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

// ---------------------------------------------------------------------------------------------------------------
// Admin HTTP.

/// GET over a plain TCP connection (HTTP/1.1, `Connection: close`): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

pub async fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        Ok((status, body))
    })
    .await
    .map_err(|_| format!("no complete answer within {STEP_TIMEOUT:?}"))?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A series: metric name and label set.
fn parse_series(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('{') else {
        return Some((text.to_owned(), BTreeMap::new()));
    };
    let labels_text = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = labels_text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
    Some((name.trim().to_owned(), labels))
}

/// The value of one series in an exposition text (None if absent). `series` is `name{label="value",...}`; labels
/// are compared as a set (order-independent, exact).
pub fn metric_in(exposition: &str, series: &str) -> Option<f64> {
    let want = parse_series(series).unwrap_or_else(|| panic!("not a series: {series}"));
    exposition.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|line| {
        // `name{labels} value [timestamp]`: the labels may contain spaces, so split after the closing brace.
        let split_at = line.rfind('}').map_or_else(|| line.find(' ').unwrap_or(line.len()), |i| i + 1);
        let (series_text, rest) = line.split_at(split_at);
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        (parse_series(series_text)? == want).then_some(value)
    })
}

/// Reads `/metrics` of `admin` and returns the value of `series` (0.0 when the series is absent).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    metric_in(&body, series).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------------------------
// Proxy configuration.

/// The configuration text of a proxy in front of test brokers: listener `mqtts` (TLS, 127.0.0.1:0) -> backend
/// `brokers` (server names = broker names), admin on 127.0.0.1:0. Health: mqtt probe every 200 ms, timeout 500 ms,
/// rise 2, fall 2.
#[derive(Debug, Clone)]
pub struct ProxyYaml {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// (name, address, weight)
    pub servers: Vec<(String, String, u32)>,
    pub balance: String,
    pub check: String,
    pub interval: String,
    pub timeout: String,
    pub rise: u32,
    pub fall: u32,
    pub drain_timeout: String,
    /// Extra `limits:` entries, as YAML flow mapping content (e.g. `max_connections: 5`).
    pub limits: Option<String>,
}

/// A [`ProxyYaml`] for `brokers` behind the TLS certificate of `pki`.
pub fn yaml_for(pki: &TestPki, brokers: &[&Mosquitto]) -> ProxyYaml {
    ProxyYaml {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        servers: brokers.iter().map(|b| (b.name.clone(), b.addr(), 1)).collect(),
        balance: "client-id".into(),
        check: "mqtt".into(),
        interval: "200ms".into(),
        timeout: "500ms".into(),
        rise: 2,
        fall: 2,
        drain_timeout: "5s".into(),
        limits: None,
    }
}

impl ProxyYaml {
    /// Weights of the servers, in order.
    pub fn weights(mut self, weights: &[u32]) -> Self {
        assert_eq!(weights.len(), self.servers.len(), "one weight per server");
        for (s, w) in self.servers.iter_mut().zip(weights) {
            s.2 = *w;
        }
        self
    }

    pub fn balance(mut self, balance: &str) -> Self {
        self.balance = balance.into();
        self
    }

    pub fn health(mut self, check: &str, interval: &str, timeout: &str, rise: u32, fall: u32) -> Self {
        (self.check, self.interval, self.timeout, self.rise, self.fall) =
            (check.into(), interval.into(), timeout.into(), rise, fall);
        self
    }

    pub fn drain_timeout(mut self, drain: &str) -> Self {
        self.drain_timeout = drain.into();
        self
    }

    pub fn limits(mut self, limits: &str) -> Self {
        self.limits = Some(limits.into());
        self
    }

    pub fn build(&self) -> String {
        let mut y = format!(
            "listeners:\n  - name: mqtts\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n    backend: brokers\n\
             backends:\n  - name: brokers\n    balance: {}\n    connect_timeout: 2s\n    health: {{ check: {}, interval: {}, timeout: {}, rise: {}, fall: {} }}\n    servers:\n",
            self.cert.display(),
            self.key.display(),
            self.balance,
            self.check,
            self.interval,
            self.timeout,
            self.rise,
            self.fall
        );
        for (name, address, weight) in &self.servers {
            y.push_str(&format!("      - {{ name: {name}, address: \"{address}\", weight: {weight} }}\n"));
        }
        y.push_str("admin: { bind: \"127.0.0.1:0\" }\n");
        y.push_str(&format!("shutdown: {{ drain_timeout: {} }}\n", self.drain_timeout));
        if let Some(l) = &self.limits {
            y.push_str(&format!("limits: {{ {l} }}\n"));
        }
        y
    }
}
