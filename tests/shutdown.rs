//! Graceful shutdown: MQTT 5 clients get a DISCONNECT (reason 0x8B by default) between two whole broker packets as
//! soon as the shutdown starts, so they reconnect elsewhere at once; MQTT 3.1.1 clients, which have no server
//! DISCONNECT, keep their relay until the drain deadline.

mod common;

use std::time::Duration;

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
