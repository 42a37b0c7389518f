//! End-to-end tests of raw `protocol: tcp` listeners (the WIS2 dashboard passthrough) and of `allowed_sources`: an
//! in-process mqtt-lb in front of a real mosquitto and of an echo server the test starts (a generic TCP peer).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use common::*;

const TEST_LIMIT: Duration = Duration::from_secs(45);

/// An echo server on 127.0.0.1: sends back what it reads; when the client half-closes, finishes sending and
/// closes. Counts the connections it accepted.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the echo server");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        Echo { addr, accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listeners: `dashboard` (tcp, only 127.0.0.1/32) -> the echo server; `mqtt_raw` (tcp, any source) -> the broker;
/// `mqtts_private` (MQTT over TLS, only 10.0.0.0/8) -> the broker.
fn yaml(echo: &Echo, broker: &Mosquitto, pki: &TestPki) -> String {
    format!(
        "listeners:\n\
         \x20 - {{ name: dashboard, bind: \"127.0.0.1:0\", protocol: tcp, backend: dashboards, allowed_sources: [\"127.0.0.1/32\", \"::1/128\"] }}\n\
         \x20 - {{ name: mqtt_raw, bind: \"127.0.0.1:0\", protocol: tcp, backend: brokers }}\n\
         \x20 - {{ name: mqtts_private, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers, allowed_sources: [\"10.0.0.0/8\"],\n\
         \x20     tls: {{ cert: \"{}\", key: \"{}\" }} }}\n\
         backends:\n\
         \x20 - name: dashboards\n\
         \x20   protocol: tcp\n\
         \x20   balance: round-robin\n\
         \x20   health: {{ check: none }}\n\
         \x20   servers: [ {{ name: echo, address: \"{}\" }} ]\n\
         \x20 - name: brokers\n\
         \x20   protocol: tcp\n\
         \x20   health: {{ check: none }}\n\
         \x20   servers: [ {{ name: {}, address: \"{}\" }} ]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\n\
         shutdown: {{ grace: 0s, drain_timeout: 2s }}\n",
        pki.cert.display(),
        pki.key.display(),
        echo.addr,
        broker.name,
        broker.addr(),
    )
}

struct Env {
    echo: Echo,
    broker: Mosquitto,
    pki: TestPki,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b0").await;
        Env { echo: Echo::start().await, broker, pki, _dir: dir }
    }
}

fn listener(proxy: &TestProxy, name: &str) -> SocketAddr {
    *proxy.addrs.get(name).unwrap_or_else(|| panic!("no listener {name}"))
}

/// Connects to `to` from the local address `from` (any port).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("a local address"))?;
    socket.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_relays_bytes_both_ways_with_half_close() {
    bounded(TEST_LIMIT, "tcp passthrough", async {
        let env = Env::start().await;
        let proxy = TestProxy::start(&yaml(&env.echo, &env.broker, &env.pki)).await;

        // 1 MiB through the echo server: written while the answer is read (the relay's buffers are bounded, so
        // writing it all first would stall), then a half-close; the echo finishes and closes.
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let stream = connect_from("127.0.0.1", listener(&proxy, "dashboard")).await.expect("connect to dashboard");
        let (mut r, mut w) = stream.into_split();
        let to_send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&to_send).await.expect("write through the proxy");
            w.shutdown().await.expect("half-close");
            w
        });
        let mut echoed = Vec::with_capacity(data.len());
        r.read_to_end(&mut echoed).await.expect("read the echo until the end");
        let _w = writer.await.expect("writer task");
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "the echo differs from what was sent");
        assert_eq!(env.echo.accepted(), 1);
        let labels = "{backend=\"dashboards\",server=\"echo\"}";
        let n = data.len() as f64;
        eventually(Duration::from_secs(5), || async {
            let sent = metric(proxy.admin, &format!("mqttlb_server_sent_bytes_total{labels}")).await;
            let received = metric(proxy.admin, &format!("mqttlb_server_received_bytes_total{labels}")).await;
            (sent == n && received == n).then_some(())
        })
        .await
        .expect("1 MiB counted each way");

        // A real MQTT server through a raw tcp listener: no validation, the bytes go both ways unchanged.
        let raw = listener(&proxy, "mqtt_raw");
        assert_eq!(which_broker(raw, None, "raw-tcp-client", Version::V4).await, env.broker.name);
        assert_eq!(which_broker(raw, None, "raw-tcp-client-5", Version::V5).await, env.broker.name);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_allowed_sources_is_closed_at_accept_and_counted() {
    bounded(TEST_LIMIT, "allowed_sources", async {
        let env = Env::start().await;
        let proxy = TestProxy::start(&yaml(&env.echo, &env.broker, &env.pki)).await;
        let dashboard = listener(&proxy, "dashboard");
        let rejected =
            |l: &str| format!("mqttlb_connections_rejected_total{{listener=\"{l}\",reason=\"source_not_allowed\"}}");

        // From 127.0.0.2, outside 127.0.0.1/32: closed at once, nothing reaches the echo server.
        for _ in 0..2 {
            let mut s = connect_from("127.0.0.2", dashboard).await.expect("the kernel accepts the TCP connection");
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut buf = [0u8; 64];
            let read = bounded(STEP_TIMEOUT, "the proxy closes the refused connection", s.read(&mut buf)).await;
            assert!(matches!(read, Ok(0) | Err(_)), "a refused source got an answer: {read:?}");
        }
        assert_eq!(metric(proxy.admin, &rejected("dashboard")).await, 2.0);

        // From 127.0.0.1, inside: relayed.
        let mut s = connect_from("127.0.0.1", dashboard).await.expect("connect from 127.0.0.1");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        bounded(STEP_TIMEOUT, "echo from an allowed source", s.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(env.echo.accepted(), 1, "only the allowed source reached the server");

        // The key works on an MQTT listener too: the refusal comes before TLS and before any broker.
        let before = env.broker.connections_seen();
        let tls = tls_connect(listener(&proxy, "mqtts_private"), env.pki.client_config()).await;
        assert!(tls.is_err(), "the TLS handshake of a refused source must fail");
        assert_eq!(metric(proxy.admin, &rejected("mqtts_private")).await, 1.0);
        let tls_failures = metric(
            proxy.admin,
            "mqttlb_connections_rejected_total{listener=\"mqtts_private\",reason=\"tls_handshake\"}",
        )
        .await;
        assert_eq!(tls_failures, 0.0, "closed at accept, not after a handshake attempt");
        assert_eq!(env.broker.connections_seen(), before);
        proxy.stop().await;
    })
    .await;
}
