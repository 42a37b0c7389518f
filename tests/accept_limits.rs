//! What the real binary does at its limits, with real mosquitto brokers: at `limits.max_connections` and
//! `limits.max_handshakes` a listener stops accepting, so new clients wait in the kernel's accept queue (never
//! accepted and reset) and get in as soon as a place frees; a client silent past 1.5 times its MQTT keep-alive is
//! closed even when its broker does not notice; TCP keepalive runs on both sockets of a relay.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A running binary: its listeners by name (in the order given) and its admin address.
struct Lb {
    process: LbProcess,
    admin: SocketAddr,
    listeners: Vec<SocketAddr>,
}

impl Lb {
    /// `listeners`: `(protocol and extra keys, backend)`; `backends`: `(name, server address)`; `limits`: YAML flow
    /// mapping content.
    async fn start(dir: &Path, listeners: &[(&str, &str)], backends: &[(&str, String)], limits: &str) -> Lb {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("admin address");
        let addrs: Vec<SocketAddr> =
            listeners.iter().map(|_| format!("127.0.0.1:{}", free_port()).parse().expect("address")).collect();
        let mut yaml = String::from("listeners:\n");
        for (i, ((keys, backend), addr)) in listeners.iter().zip(&addrs).enumerate() {
            yaml.push_str(&format!("  - {{ name: l{i}, bind: \"{addr}\", {keys}, backend: {backend} }}\n"));
        }
        yaml.push_str("backends:\n");
        for (name, server) in backends {
            yaml.push_str(&format!(
                "  - {{ name: {name}, health: {{ check: none }}, servers: [ {{ name: s, address: \"{server}\" }} ] }}\n"
            ));
        }
        yaml.push_str(&format!("admin: {{ bind: \"{admin}\" }}\nshutdown: {{ grace: 0s }}\nlimits: {{ {limits} }}\n"));
        let path = dir.join("mqtt-lb.yaml");
        std::fs::write(&path, yaml).expect("write the configuration");
        let process = LbProcess::start(&path, admin).await;
        Lb { process, admin, listeners: addrs }
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(self.admin, series).await
    }

    /// Waits (10 s at most) until `series` has `value`.
    async fn wait_metric(&self, series: &str, value: f64) {
        let reached =
            eventually(Duration::from_secs(10), || async { (self.metric(series).await == value).then_some(()) });
        if reached.await.is_none() {
            panic!("{series} never reached {value}: {}", self.metric(series).await);
        }
    }
}

/// A 3.1.1 CONNECT with keep-alive `seconds`.
fn connect_v311(client_id: &str, seconds: u16) -> Vec<u8> {
    with_keep_alive(connect_packet_v311(client_id), seconds)
}

fn with_keep_alive(mut connect: Vec<u8>, seconds: u16) -> Vec<u8> {
    // Fixed header (2 bytes for these short packets), protocol name (6), level, flags: keep-alive at 10..12.
    connect[10..12].copy_from_slice(&seconds.to_be_bytes());
    connect
}

/// Sends `connect` and reads the 4-byte 3.1.1 CONNACK.
async fn mqtt_handshake<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    connect: &[u8],
) -> std::io::Result<[u8; 4]> {
    s.write_all(connect).await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    Ok(connack)
}

/// Whether `s` stays open and silent for `time` (no byte, no EOF, no reset).
async fn stays_open<S: AsyncReadExt + Unpin>(s: &mut S, time: Duration) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(time, s.read(&mut byte)).await {
        Err(_) => Ok(()),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Err(format!("got byte {:#04x}", byte[0])),
        Ok(Err(e)) => Err(format!("error: {e}")),
    }
}

/// Reads until EOF or an error; returns how long that took (None if it did not happen within `limit`).
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 256];
    tokio::time::timeout(limit, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .ok()?;
    Some(start.elapsed())
}

const ACCEPTED: &[u8; 4] = &[0x20, 0x02, 0x00, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_clients_wait_in_the_backlog_and_get_in_when_a_place_frees() {
    bounded(TEST_LIMIT, "max_connections", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let lb = Lb::start(
            dir.path(),
            &[("protocol: mqtt", "brokers")],
            &[("brokers", broker.addr())],
            "max_connections: 3",
        )
        .await;
        let front = lb.listeners[0];
        // The queue the waiting clients rely on: as large as the kernel allows (net.core.somaxconn).
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").expect("somaxconn");
        let ss = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{}", front.port())]).output();
        let ss = String::from_utf8_lossy(&ss.expect("run ss").stdout).to_string();
        let backlog = ss.split_whitespace().nth(2).expect("Send-Q of the listener");
        assert_eq!(backlog, somaxconn.trim().parse::<u32>().expect("a number").min(65_535).to_string(), "{ss}");

        let mut holders = Vec::new();
        for i in 0..3 {
            let mut s = TcpStream::connect(front).await.expect("connect");
            assert_eq!(
                &mqtt_handshake(&mut s, &connect_v311(&format!("holder-{i}"), 60)).await.expect("CONNACK"),
                ACCEPTED
            );
            holders.push(s);
        }

        // Two more clients: the kernel completes their TCP handshakes (the accept queue) and holds their CONNECTs.
        let mut waiting = Vec::new();
        for i in 0..2 {
            let mut s = TcpStream::connect(front).await.expect("connect while full");
            s.write_all(&connect_v311(&format!("waiting-{i}"), 60)).await.expect("CONNECT while full");
            waiting.push(s);
        }
        for s in &mut waiting {
            stays_open(s, Duration::from_millis(800)).await.expect("a client over the limit waits, not reset");
        }
        lb.wait_metric("mqttlb_accept_paused{listener=\"l0\",limit=\"max_connections\"}", 1.0).await;
        assert_eq!(lb.metric("mqttlb_connections_accepted_total{listener=\"l0\"}").await, 3.0, "not accepted");
        assert_eq!(
            lb.metric("mqttlb_connections_rejected_total{listener=\"l0\",reason=\"max_connections\"}").await,
            0.0
        );

        // One holder leaves: exactly one waiting client gets in, at once; the other one waits on.
        let left = Instant::now();
        drop(holders.remove(0));
        let (mut w0, mut w1) = (waiting.remove(0), waiting.remove(0));
        let (mut first0, mut first1) = ([0u8; 4], [0u8; 4]);
        let (first, mut other) = tokio::select! {
            r = w0.read_exact(&mut first0) => { r.expect("CONNACK"); (first0, w1) }
            r = w1.read_exact(&mut first1) => { r.expect("CONNACK"); (first1, w0) }
            () = tokio::time::sleep(Duration::from_secs(5)) => panic!("no waiting client got in after a place freed"),
        };
        assert_eq!(&first, ACCEPTED);
        eprintln!("a waiting client got in {:?} after a holder left", left.elapsed());
        stays_open(&mut other, Duration::from_millis(500)).await.expect("the limit still holds for the other");
        drop(holders.remove(0));
        let mut second = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut second))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&second, ACCEPTED);
        assert!(lb.metric("mqttlb_accept_pauses_total{listener=\"l0\",limit=\"max_connections\"}").await >= 1.0);
        assert_eq!(lb.metric("mqttlb_connections_accepted_total{listener=\"l0\"}").await, 5.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_max_connections_lets_the_waiting_clients_in_at_once() {
    bounded(TEST_LIMIT, "max_connections reload", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let backends = [("brokers", broker.addr())];
        let lb = Lb::start(dir.path(), &[("protocol: mqtt", "brokers")], &backends, "max_connections: 1").await;
        let front = lb.listeners[0];
        let mut holder = TcpStream::connect(front).await.expect("connect");
        assert_eq!(&mqtt_handshake(&mut holder, &connect_v311("holder", 60)).await.expect("CONNACK"), ACCEPTED);
        let mut waiting = TcpStream::connect(front).await.expect("connect while full");
        waiting.write_all(&connect_v311("waiting", 60)).await.expect("CONNECT while full");
        lb.wait_metric("mqttlb_accept_paused{listener=\"l0\",limit=\"max_connections\"}", 1.0).await;

        let path = dir.path().join("mqtt-lb.yaml");
        let yaml = std::fs::read_to_string(&path).expect("read the configuration");
        std::fs::write(&path, yaml.replace("max_connections: 1", "max_connections: 2")).expect("write");
        lb.process.signal("HUP");
        let mut connack = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), waiting.read_exact(&mut connack)).await;
        read.expect("the waiting client gets in once the reload raised the limit, with the holder still there")
            .expect("CONNACK");
        assert_eq!(&connack, ACCEPTED);
        stays_open(&mut holder, Duration::from_millis(100)).await.expect("the holder is still connected");
        // Full again at the new limit: a second pause.
        lb.wait_metric("mqttlb_accept_pauses_total{listener=\"l0\",limit=\"max_connections\"}", 2.0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_handshakes_1_a_stalled_handshake_makes_the_next_client_wait_not_reset() {
    bounded(TEST_LIMIT, "max_handshakes", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let tls_keys =
            format!("protocol: mqtt, tls: {{ cert: \"{}\", key: \"{}\" }}", pki.cert.display(), pki.key.display());
        let limits = "max_handshakes: 1, handshake_timeout: 4s";
        let lb = Lb::start(dir.path(), &[(&tls_keys, "brokers")], &[("brokers", broker.addr())], limits).await;
        let front = lb.listeners[0];
        let tls = pki.client_config();
        let in_flight = "mqttlb_handshakes_in_flight{listener=\"l0\"}";
        let paused = "mqttlb_accept_paused{listener=\"l0\",limit=\"max_handshakes\"}";

        // A client that stops in the middle of its ClientHello (a record header, then nothing) holds the one place.
        let stall = || async {
            let mut s = TcpStream::connect(front).await.expect("connect");
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.expect("record header");
            s
        };
        // A complete client: TLS, CONNECT, CONNACK; returns when it got in.
        let client = |id: &'static str| {
            let tls = tls.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut s = tls_connect(front, tls).await.map_err(|e| format!("{id}: TLS: {e}"))?;
                let connack = mqtt_handshake(&mut s, &connect_v311(id, 60)).await.map_err(|e| format!("{id}: {e}"))?;
                if &connack != ACCEPTED {
                    return Err(format!("{id}: CONNACK {connack:02x?}"));
                }
                Ok::<_, String>((started.elapsed(), s))
            })
        };

        // The stalled client leaves: the waiting one gets in at once, long before the handshake timeout.
        let stalled = stall().await;
        lb.wait_metric(in_flight, 1.0).await;
        lb.wait_metric(paused, 1.0).await;
        let waiting = client("after-leave");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!waiting.is_finished(), "the second client waits while the stalled handshake holds the place");
        let left = Instant::now();
        drop(stalled);
        let (_, _in1) = waiting.await.expect("task").expect("the waiting client gets in");
        let after_leave = left.elapsed();
        assert!(after_leave < Duration::from_secs(3), "in {after_leave:?} after the stalled client left");

        // The stalled client stays: the waiting one gets in once its handshake times out (4 s), not reset before.
        let _stalled = stall().await;
        lb.wait_metric(in_flight, 1.0).await;
        let (waited, _in2) = client("after-timeout").await.expect("task").expect("the waiting client gets in");
        assert!(waited >= Duration::from_secs(2), "waited {waited:?}: only the handshake timeout frees the place");
        let timeouts = lb.metric("mqttlb_tls_handshake_failures_total{listener=\"l0\",kind=\"timeout\"}").await;
        assert_eq!(timeouts, 1.0);
        lb.wait_metric(in_flight, 0.0).await;
        assert!(lb.metric("mqttlb_accept_pauses_total{listener=\"l0\",limit=\"max_handshakes\"}").await >= 2.0);
        eprintln!("in {after_leave:?} after the stalled client left; after waiting {waited:?} for its timeout");
    })
    .await;
}

/// A broker that answers every CONNECT with `connack` and then never closes anything nor checks keep-alive (what a
/// broker does with a half-open client it has not noticed). Reports, per connection, when it saw EOF.
async fn deaf_broker(connack: Vec<u8>) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (connack, tx) = (connack.clone(), tx.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) && s.write_all(&connack).await.is_ok() {
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    let _ = tx.send(Instant::now());
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_past_one_and_a_half_keep_alives_is_closed_even_if_the_broker_does_not_notice() {
    bounded(TEST_LIMIT, "keep-alive", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let (deaf_v311, mut deaf_v311_eofs) = deaf_broker(ACCEPTED.to_vec()).await;
        // MQTT 5: the broker imposes Server Keep Alive 2 on a client that asked for 60.
        let (deaf_v5, mut deaf_v5_eofs) = deaf_broker(vec![0x20, 0x06, 0x00, 0x00, 0x03, 0x13, 0x00, 0x02]).await;
        let lb = Lb::start(
            dir.path(),
            &[("protocol: mqtt", "deaf311"), ("protocol: mqtt", "deaf5"), ("protocol: mqtt", "mosquitto")],
            &[("deaf311", deaf_v311.to_string()), ("deaf5", deaf_v5.to_string()), ("mosquitto", broker.addr())],
            "",
        )
        .await;

        // A 3.1.1 client with keep-alive 2 that goes silent (neither writes nor closes).
        let mut silent = TcpStream::connect(lb.listeners[0]).await.expect("connect");
        assert_eq!(&mqtt_handshake(&mut silent, &connect_v311("silent", 2)).await.expect("CONNACK"), ACCEPTED);
        // An MQTT 5 client that asked for 60 s and was told 2 s, then silent.
        let mut told = TcpStream::connect(lb.listeners[1]).await.expect("connect");
        told.write_all(&with_keep_alive(connect_packet_v5("told"), 60)).await.expect("CONNECT");
        let mut connack = [0u8; 8];
        told.read_exact(&mut connack).await.expect("CONNACK with Server Keep Alive");
        // A live client of a real broker with keep-alive 2, pinging every second: never closed.
        let mut live = TcpStream::connect(lb.listeners[2]).await.expect("connect");
        assert_eq!(&mqtt_handshake(&mut live, &connect_v311("live", 2)).await.expect("CONNACK"), ACCEPTED);
        let pinger = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                live.write_all(&[0xC0, 0x00]).await.map_err(|e| format!("PINGREQ: {e}"))?;
                let mut pingresp = [0u8; 2];
                live.read_exact(&mut pingresp).await.map_err(|e| format!("PINGRESP: {e}"))?;
                if pingresp != [0xD0, 0x00] {
                    return Err(format!("PINGRESP {pingresp:02x?}"));
                }
            }
            Ok::<_, String>(())
        });

        let limit = Duration::from_secs(8);
        let (silent_after, told_after) =
            tokio::join!(closed_within(&mut silent, limit), closed_within(&mut told, limit));
        let silent_after = silent_after.expect("the silent 3.1.1 client is closed");
        let told_after = told_after.expect("the MQTT 5 client is closed on the broker's keep-alive, not its own");
        eprintln!("silent client closed after {silent_after:?}, MQTT 5 client after {told_after:?}");
        for after in [silent_after, told_after] {
            assert!((Duration::from_millis(2500)..Duration::from_secs(6)).contains(&after), "{after:?}: about 3 s");
        }
        let eof = Duration::from_secs(2);
        tokio::time::timeout(eof, deaf_v311_eofs.recv()).await.expect("the broker side is closed too");
        tokio::time::timeout(eof, deaf_v5_eofs.recv()).await.expect("the broker side is closed too");
        for listener in ["l0", "l1"] {
            let series =
                format!("mqttlb_connections_closed_total{{listener=\"{listener}\",reason=\"keep_alive_timeout\"}}");
            lb.wait_metric(&series, 1.0).await;
        }
        pinger.await.expect("task").expect("a client that keeps to its keep-alive stays");
    })
    .await;
}

/// The established TCP sockets of mqtt-lb processes, as `ss` shows them with their timers.
fn mqtt_lb_sockets() -> Vec<String> {
    let out = std::process::Command::new("ss").args(["-tnopH", "state", "established"]).output().expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter(|l| l.contains("\"mqtt-lb\"")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_runs_on_the_client_and_the_broker_socket() {
    bounded(TEST_LIMIT, "tcp keepalive", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let limits = "tcp_keepalive: { idle: 77s, interval: 5s, count: 3 }";
        let lb = Lb::start(dir.path(), &[("protocol: tcp", "brokers")], &[("brokers", broker.addr())], limits).await;
        let mut client = TcpStream::connect(lb.listeners[0]).await.expect("connect");
        assert_eq!(&mqtt_handshake(&mut client, &connect_v311("kept", 60)).await.expect("CONNACK"), ACCEPTED);
        let client_port = client.local_addr().expect("address").port();
        let lines = mqtt_lb_sockets();
        // mqtt-lb's side of the client connection (peer: the client's port), and its connection to the broker.
        let ours = |peer: &str| lines.iter().find(|l| l.split_whitespace().nth(3) == Some(peer)).cloned();
        let front = ours(&format!("127.0.0.1:{client_port}")).expect("mqtt-lb's socket to the client");
        let back = ours(&broker.addr()).expect("mqtt-lb's socket to the broker");
        for line in [&front, &back] {
            assert!(line.contains("timer:(keepalive,1min1"), "77 s keepalive timer expected: {line}");
        }
        eprintln!("{front}\n{back}");
    })
    .await;
}
