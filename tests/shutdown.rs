//! Graceful shutdown: MQTT 5 clients get a DISCONNECT (reason 0x8B by default) between two whole broker packets as
//! soon as the shutdown starts, so they reconnect elsewhere at once; MQTT 3.1.1 clients, which have no server
//! DISCONNECT, keep their relay until the drain deadline.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SUBSCRIBE (v5) to `filter`, QoS 0, packet id 1.
fn subscribe_v5(filter: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00]; // packet id, no properties
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0x00); // options: QoS 0
    let mut p = vec![0x82, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// Splits a byte stream into MQTT packets (type nibble, whole packet); the tail that is not a whole packet is
/// returned separately.
fn packets(mut bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let Some((&first, rest)) = bytes.split_first() else { return (out, Vec::new()) };
        let (mut len, mut shift, mut used) = (0usize, 0, 0);
        let mut complete = false;
        for b in rest.iter().take(4) {
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            used += 1;
            if b & 0x80 == 0 {
                complete = true;
                break;
            }
        }
        let total = 1 + used + len;
        if !complete || bytes.len() < total {
            return (out, bytes.to_vec());
        }
        out.push((first >> 4, bytes[..total].to_vec()));
        bytes = &bytes[total..];
    }
}

/// Reads one packet whose remaining length fits in one byte (CONNACK, SUBACK).
async fn read_packet<S: AsyncReadExt + Unpin>(s: &mut S) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.expect("packet header");
    assert!(head[1] < 0x80, "short packet expected");
    let mut body = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut body).await.expect("packet body");
    [head.to_vec(), body].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_clients_get_a_disconnect_between_whole_packets_and_311_clients_stay_until_the_deadline() {
    bounded(Duration::from_secs(40), "shutdown notice", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let yaml = yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).drain_timeout("3s").build();
        let mut proxy = TestProxy::start(&yaml).await;
        let tls = pki.client_config();

        // An MQTT 5 subscriber (raw bytes, to see every byte) and a 3.1.1 client, both through the proxy.
        let mut v5 = tls_connect(proxy.mqtts, tls.clone()).await.expect("TLS");
        v5.write_all(&connect_packet_v5("v5-subscriber")).await.expect("CONNECT");
        let connack = read_packet(&mut v5).await;
        assert_eq!((connack[0], connack[3]), (0x20, 0x00), "CONNACK success: {connack:02x?}");
        v5.write_all(&subscribe_v5("flood/#")).await.expect("SUBSCRIBE");
        let suback = read_packet(&mut v5).await;
        assert_eq!(suback[0], 0x90, "SUBACK: {suback:02x?}");
        let mut v311 =
            MqttClient::connect(proxy.mqtts, Some(tls.clone()), "v311-client", Version::V4).await.expect("v3");

        // A publisher straight to the broker keeps messages flowing to the subscriber while the shutdown starts.
        let mut publisher =
            MqttClient::connect(broker.socket_addr(), None, "publisher", Version::V4).await.expect("pub");
        let payload = vec![b'x'; 3000];
        let flood = tokio::spawn(async move {
            for i in 0..400u32 {
                if publisher.publish(&format!("flood/{}", i % 7), &payload, false).await.is_err() {
                    break;
                }
            }
        });
        // Wait until messages are arriving, then start the shutdown in the middle of the stream.
        let mut received = vec![0u8; 4096];
        let n = v5.read(&mut received).await.expect("first messages");
        received.truncate(n);
        let start = tokio::time::Instant::now();
        proxy.token.cancel();

        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), v5.read_to_end(&mut rest))
            .await
            .expect("the MQTT 5 client is closed well before the 3 s drain deadline")
            .ok();
        let notified_after = start.elapsed();
        received.extend_from_slice(&rest);
        let (all, tail) = packets(&received);
        assert!(tail.is_empty(), "the stream ends on a packet boundary ({} stray bytes)", tail.len());
        let (last_type, last) = all.last().expect("packets").clone();
        assert_eq!((last_type, last), (0x0E, vec![0xE0, 0x02, 0x8B, 0x00]), "ends with DISCONNECT 0x8B");
        let publishes = all.iter().filter(|(t, _)| *t == 3).count();
        assert_eq!(publishes + 1, all.len(), "everything before the DISCONNECT is a whole PUBLISH");
        assert!(publishes >= 1);
        eprintln!("MQTT 5 client: {publishes} whole PUBLISH packets, then DISCONNECT after {notified_after:?}");

        // The 3.1.1 client still has a working relay during the drain.
        v311.round_trip("still/here", b"ok").await.expect("3.1.1 relay works during the drain");
        let handle = proxy.handle.take().expect("server task");
        let ended = tokio::time::timeout(Duration::from_secs(8), handle).await;
        assert!(ended.is_ok(), "the server stops at the drain deadline");
        assert!(start.elapsed() >= Duration::from_millis(2800), "the 3.1.1 relay was kept until the deadline");
        let closed = v311.wait_closed(Duration::from_secs(2)).await;
        assert!(closed.is_ok(), "the 3.1.1 client is closed at the deadline: {closed:?}");
        flood.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// The real binary: readiness fails from the first signal, listeners accept during `shutdown.grace`, a second signal
// stops at once.

/// A plain MQTT listener and an admin endpoint on free ports, in front of `broker`.
fn binary_config(dir: &Path, broker: &Mosquitto, shutdown: &str) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:{port}\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
         \x20   servers:\n      - {{ name: {}, address: \"{}\" }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ {shutdown} }}\n",
        broker.name,
        broker.addr()
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], admin_port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_at_once_accepts_during_the_grace_then_refuses() {
    bounded(Duration::from_secs(40), "grace", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let (config, front, admin) = binary_config(dir.path(), &broker, "grace: 3s, drain_timeout: 10s");
        let mut lb = LbProcess::start(&config, admin).await;
        let mut v311 = MqttClient::connect(front, None, "held-v311", Version::V4).await.expect("3.1.1 client");

        lb.signal("TERM");
        let signalled = Instant::now();
        let (status, body) = eventually(Duration::from_secs(1), || async {
            try_http_get(admin, "/readyz").await.ok().filter(|r| r.0 == 503)
        })
        .await
        .expect("/readyz answers 503 within a second of SIGTERM");
        assert!(body.contains("stopping"), "/readyz says why: {status} {body:?}");
        eprintln!("/readyz 503 {:?} after SIGTERM: {}", signalled.elapsed(), body.trim());

        // During the grace a new client is still served, and lands on the broker.
        let mut v5 = MqttClient::connect(front, None, "late-v5", Version::V5).await.expect("connect during the grace");
        assert_eq!(which_broker(front, None, "late-v311", Version::V4).await, "b1");
        assert!(signalled.elapsed() < Duration::from_secs(3), "those connects happened inside the grace");
        v311.round_trip("during/grace", b"ok").await.expect("open relays work during the grace");

        // Then the listener closes: connects are refused, the MQTT 5 client gets its DISCONNECT, the 3.1.1 one stays.
        eventually(Duration::from_secs(6), || async { tokio::net::TcpStream::connect(front).await.err().map(|_| ()) })
            .await
            .expect("new connections are refused after the grace");
        let refused_after = signalled.elapsed();
        assert!(refused_after >= Duration::from_millis(2900), "refused only after the 3 s grace: {refused_after:?}");
        let why = v5.wait_closed(Duration::from_secs(3)).await.expect("the MQTT 5 client is told to go");
        eprintln!("new connections refused {refused_after:?} after SIGTERM; MQTT 5 client closed: {why}");
        assert!(why.contains("ServerShuttingDown"), "DISCONNECT 0x8B (server shutting down): {why}");
        v311.round_trip("during/drain", b"ok").await.expect("3.1.1 relay kept during the drain");
        drop(v311);
        let exited = lb.wait_exit(Duration::from_secs(5)).await.expect("mqtt-lb exits once the relays are gone");
        assert!(exited.success(), "exit status {exited}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_every_connection_and_exits_at_once() {
    bounded(Duration::from_secs(40), "hard stop", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let (config, front, admin) = binary_config(dir.path(), &broker, "grace: 20s, drain_timeout: 60s");
        let mut lb = LbProcess::start(&config, admin).await;
        let mut v311 = MqttClient::connect(front, None, "hard-v311", Version::V4).await.expect("3.1.1 client");
        let mut v5 = MqttClient::connect(front, None, "hard-v5", Version::V5).await.expect("5 client");

        lb.signal("TERM");
        eventually(Duration::from_secs(2), || async {
            try_http_get(admin, "/readyz").await.ok().filter(|r| r.0 == 503)
        })
        .await
        .expect("the first SIGTERM was taken (readiness fails)");
        v311.round_trip("still/open", b"ok").await.expect("relays open during the grace");
        let second = Instant::now();
        lb.signal("TERM");
        let exited = lb.wait_exit(Duration::from_secs(3)).await;
        let exited = exited.unwrap_or_else(|| panic!("a second SIGTERM ends the process at once; log:\n{}", lb.log()));
        eprintln!("exited {:?} after the second SIGTERM ({exited})", second.elapsed());
        assert!(exited.success(), "exit status {exited}");
        v311.wait_closed(Duration::from_secs(2)).await.expect("the 3.1.1 connection is closed");
        v5.wait_closed(Duration::from_secs(2)).await.expect("the MQTT 5 connection is closed");
    })
    .await;
}
