//! Per-server caps through the real binary and real mosquitto brokers: `servers[].max_connections` makes a client
//! wait in its server's queue (and get in when a relay ends), a wait past `backends[].queue_timeout` or beyond
//! `max_queue` is answered "server busy" (5: 0x89, 3.1.1: 0x03), or sooner at the client's connect deadline, a
//! waiting client is never sent to the other server, and `servers[].max_connection_rate` is what the broker sees, counted at the broker's listening socket.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener `mqtt` (plain) in front of `b1` (with `caps` as extra keys) and `b2`; `backend` holds extra backend
/// keys. Health checks are off: only clients' relays reach the brokers. Returns the config path, the listener and
/// the admin address.
fn write_config(dir: &Path, b1: &str, caps: &str, b2: &str, backend: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    write_config_with(dir, b1, caps, b2, backend, "10s")
}

/// [`write_config`] with the client's connect deadline, `limits.connect_timeout`.
fn write_config_with(
    dir: &Path,
    b1: &str,
    caps: &str,
    b2: &str,
    backend: &str,
    connect_timeout: &str,
) -> (PathBuf, SocketAddr, SocketAddr) {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:{port}\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    health: {{ check: none }}\n{backend}    servers:\n\
         \x20     - {{ name: b1, address: \"{b1}\"{caps} }}\n      - {{ name: b2, address: \"{b2}\" }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n\
         limits: {{ connect_timeout: {connect_timeout} }}\n"
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], admin_port)))
}

/// A temporary folder and brokers `b1` and `b2` writing their files in it.
async fn two_brokers() -> (tempfile::TempDir, Mosquitto, Mosquitto) {
    let dir = tempfile::tempdir().expect("temp dir");
    let b1 = Mosquitto::start(dir.path(), "b1").await;
    let b2 = Mosquitto::start(dir.path(), "b2").await;
    (dir, b1, b2)
}

/// `n` client ids that the configuration at `config` places on `server`.
fn ids_on(config: &Path, server: &str, prefix: &str, n: usize) -> Vec<String> {
    let placement = Placement::new(&mqtt_lb::config::load(config).expect("the test config loads"));
    (0..n).map(|i| id_on(&placement, &format!("{prefix}{i}"), server)).collect()
}

fn queued(admin_text: &str) -> f64 {
    metric_in(admin_text, r#"mqttlb_server_queued_clients{backend="brokers",server="b1"}"#).unwrap_or(0.0)
}

/// Waits until `n` clients are queued for b1.
async fn wait_queued(admin: SocketAddr, n: f64) {
    let seen = eventually(Duration::from_secs(5), || async {
        let (_, text) = http_get(admin, "/metrics").await;
        (queued(&text) == n).then_some(())
    });
    assert!(seen.await.is_some(), "{n} client(s) queued for b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_max_connections_waits_and_gets_in_when_a_relay_ends() {
    bounded(Duration::from_secs(40), "max_connections queue", async {
        let (dir, b1, b2) = two_brokers().await;
        let (config, lb_addr, admin) =
            write_config(dir.path(), &b1.addr(), ", max_connections: 2", &b2.addr(), "    queue_timeout: 8s\n");
        let ids = ids_on(&config, "b1", "wait", 3);
        let _lb = LbProcess::start(&config, admin).await;

        let first = MqttClient::connect(lb_addr, None, &ids[0], Version::V5).await.expect("first client");
        let _second = MqttClient::connect(lb_addr, None, &ids[1], Version::V4).await.expect("second client");
        let third_id = ids[2].clone();
        let started = Instant::now();
        let mut third = tokio::spawn(async move { which_broker(lb_addr, None, &third_id, Version::V5).await });
        wait_queued(admin, 1.0).await;
        // `/servers` shows the cap, the waiting client and the backend's queue settings.
        let (status, body) = http_get(admin, "/servers").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("JSON /servers");
        let brokers = &view["backends"][0];
        assert_eq!((brokers["max_queue"].as_u64(), brokers["queue_timeout_seconds"].as_f64()), (Some(1000), Some(8.0)));
        let b1_view = &brokers["servers"][0];
        assert_eq!(b1_view["name"], "b1", "{body}");
        assert_eq!((b1_view["max_connections"].as_u64(), b1_view["queued"].as_u64()), (Some(2), Some(1)), "{body}");
        assert!(b1_view["max_connection_rate"].is_null() && brokers["servers"][1]["max_connections"].is_null());
        // Held in the queue while b1 has 2 relays: nothing else lets it in.
        let hold = Duration::from_millis(400);
        assert!(tokio::time::timeout(hold, &mut third).await.is_err(), "the third client waits while b1 is full");
        first.disconnect().await;
        let landed = tokio::time::timeout(Duration::from_secs(5), third).await.expect("admitted").expect("task");
        let waited = started.elapsed();
        assert_eq!(landed, "b1", "the waiting client lands on its own server, not on the idle b2");
        assert!(!b2.client_ids_seen().contains(&ids[2]), "b2 never saw the waiting client");

        let (_, text) = http_get(admin, "/metrics").await;
        assert_eq!(queued(&text), 0.0, "the queue is empty again");
        let series = |s: &str| metric_in(&text, &format!("{s}{{backend=\"brokers\",server=\"b1\"}}")).unwrap_or(0.0);
        let sum = series("mqttlb_server_queue_wait_seconds_sum");
        assert!(sum >= hold.as_secs_f64(), "the wait is in the histogram: sum {sum} s");
        assert!(sum <= waited.as_secs_f64(), "sum {sum} s, waited {waited:?}");
        assert_eq!(series("mqttlb_server_queue_wait_seconds_count"), 3.0, "two admitted at once and one after a wait");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_queue_timeout_or_beyond_max_queue_is_answered_server_busy() {
    bounded(Duration::from_secs(40), "server busy", async {
        let (dir, b1, b2) = two_brokers().await;
        let backend = "    queue_timeout: 600ms\n    max_queue: 1\n";
        let (config, lb_addr, admin) =
            write_config(dir.path(), &b1.addr(), ", max_connections: 1", &b2.addr(), backend);
        let ids = ids_on(&config, "b1", "busy", 4);
        let _lb = LbProcess::start(&config, admin).await;
        let _holder = MqttClient::connect(lb_addr, None, &ids[0], Version::V4).await.expect("the one slot");

        for (id, version, code) in
            [(&ids[1], Version::V5, "`ServerBusy`"), (&ids[2], Version::V4, "`ServiceUnavailable`")]
        {
            let started = Instant::now();
            let refused = MqttClient::connect(lb_addr, None, id, version).await.expect_err("b1 stays full");
            let waited = started.elapsed();
            assert!(refused.contains(&format!("return code: {code}")), "{version:?}: {refused}");
            assert!(waited >= Duration::from_millis(550), "{version:?} waited queue_timeout: {waited:?}");
            assert!(waited < Duration::from_secs(3), "{version:?}: {waited:?}");
        }
        let rejected =
            |reason: &str| format!("mqttlb_connections_rejected_total{{listener=\"mqtt\",reason=\"{reason}\"}}");
        assert_eq!(metric(admin, &rejected("server_busy")).await, 2.0);

        // One client waits (max_queue 1): the next is refused at once, before any timeout.
        let waiter_id = ids[1].clone();
        let waiter = tokio::spawn(async move { MqttClient::connect(lb_addr, None, &waiter_id, Version::V5).await });
        wait_queued(admin, 1.0).await;
        let started = Instant::now();
        let refused = MqttClient::connect(lb_addr, None, &ids[3], Version::V5).await.expect_err("the queue is full");
        assert!(refused.contains("return code: `ServerBusy`"), "{refused}");
        assert!(started.elapsed() < Duration::from_millis(500), "refused at once: {:?}", started.elapsed());
        assert!(waiter.await.expect("task").is_err(), "the waiter is refused at its timeout");
        assert_eq!(metric(admin, &rejected("server_queue_full")).await, 1.0);
        assert_eq!(metric(admin, &rejected("server_busy")).await, 3.0);
        let per_server = |reason: &str| {
            format!("mqttlb_server_queue_refusals_total{{backend=\"brokers\",server=\"b1\",reason=\"{reason}\"}}")
        };
        assert_eq!(metric(admin, &per_server("server_busy")).await, 3.0);
        assert_eq!(metric(admin, &per_server("server_queue_full")).await, 1.0);

        let on_b2 = b2.client_ids_seen();
        assert!(ids.iter().all(|id| !on_b2.contains(id)), "no refused client went to b2 instead: {on_b2:?}");
        assert!(b1.client_ids_seen().contains(&ids[0]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_at_the_clients_connect_deadline_when_that_comes_first() {
    bounded(Duration::from_secs(30), "connect deadline", async {
        let (dir, b1, b2) = two_brokers().await;
        let (config, lb_addr, admin) = write_config_with(
            dir.path(),
            &b1.addr(),
            ", max_connections: 1",
            &b2.addr(),
            "    queue_timeout: 1500ms\n",
            "1500ms",
        );
        let ids = ids_on(&config, "b1", "late", 2);
        let _lb = LbProcess::start(&config, admin).await;
        let _holder = MqttClient::connect(lb_addr, None, &ids[0], Version::V4).await.expect("the one slot");

        // A slow client: its CONNECT comes 1 s into its 1.5 s deadline, so it may wait 0.5 s, not queue_timeout.
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(lb_addr).await.expect("connect");
        tokio::time::sleep(Duration::from_secs(1)).await;
        tcp.write_all(&connect_packet_v5(&ids[1])).await.expect("send CONNECT");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("closed")
            .expect("read");
        let elapsed = started.elapsed();
        assert_eq!(answer, [0x20, 0x03, 0x00, 0x89, 0x00], "CONNACK server busy");
        assert!(elapsed >= Duration::from_millis(1450), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2200), "the wait ended at the connect deadline: {elapsed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_the_broker_at_no_more_than_max_connection_rate() {
    bounded(Duration::from_secs(40), "max_connection_rate", async {
        const RATE: usize = 4;
        const CLIENTS: usize = 12;
        let (dir, b1, b2) = two_brokers().await;
        let (front, accepts) = counting_forwarder(b1.socket_addr(), None).await;
        let caps = format!(", max_connection_rate: {RATE}");
        let (config, lb_addr, admin) =
            write_config(dir.path(), &front.to_string(), &caps, &b2.addr(), "    queue_timeout: 9s\n");
        let ids = ids_on(&config, "b1", "burst", CLIENTS);
        let _lb = LbProcess::start(&config, admin).await;

        let started = Instant::now();
        let burst = ids.iter().cloned().map(|id| {
            tokio::spawn(async move { MqttClient::connect(lb_addr, None, &id, Version::V4).await.map(|_c| id) })
        });
        let results = futures_util::future::join_all(burst).await;
        let elapsed = started.elapsed();
        let connected = results.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, CLIENTS, "every client of the burst gets in, in turn");

        let times = accepts.lock().expect("accept times").clone();
        assert_eq!(times.len(), CLIENTS, "the broker saw each client once (no health checks)");
        let busiest = busiest_window(&times, started);
        assert!(
            busiest <= RATE,
            "the broker saw {busiest} new connections within {CAP_WINDOW:?} (cap {RATE} a second)"
        );
        // 12 at 4 a second: the first at once, the last 2.75 s later.
        assert!(elapsed >= Duration::from_millis(2700), "{elapsed:?}");
        let on_b2 = b2.client_ids_seen();
        assert!(ids.iter().all(|id| !on_b2.contains(id)), "no client of the burst went to b2: {on_b2:?}");
    })
    .await;
}
