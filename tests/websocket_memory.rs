//! What a WebSocket connection costs mqtt-lb (the real binary, its VmRSS read from /proc) when its client sends
//! frames and messages that would have to be buffered if they were gathered: a fragmented message whose last frame
//! never comes, then a frame header declaring nearly 1 MiB with none of its bytes. The frames are streamed, so each
//! connection costs about what a TCP one does, whatever the frames declare.
//!
//! `MQTTLB_WS_ATTACK_CONNS` sets the number of attacking connections (300 by default; 1,500 by hand).
//!
//! Beside it, what an idle WSS connection costs against an idle MQTTS one, side by side in one process
//! (`MQTTLB_IDLE_CONNS` of each, 1,000 by default).

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use binary::LbProcess;
use common::*;

/// The default `limits.max_ws_frame_size`, which used to bound a message and so what a connection could buffer.
const OLD_CAP: usize = 1 << 20;

/// The most one attacking connection may add to the proxy's resident memory.
const PER_CONNECTION_BOUND: u64 = 64 * 1024;

/// The header of a masked client frame (`opcode`, FIN bit `fin`) declaring `len` payload bytes; mask 0x5a x 4.
fn client_header(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
    let mut h = vec![opcode | if fin { 0x80 } else { 0 }];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xffff => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    h.extend_from_slice(&[0x5a; 4]);
    h
}

/// A whole masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = client_header(opcode, fin, payload.len());
    f.extend(payload.iter().map(|b| b ^ 0x5a));
    f
}

/// A QoS 0 PUBLISH (3.1.1) of `len` payload bytes on `topic`.
fn publish(topic: &str, len: usize) -> Vec<u8> {
    let body_len = 2 + topic.len() + len;
    let mut p = vec![0x30];
    let mut rest = body_len;
    loop {
        let byte = (rest % 128) as u8;
        rest /= 128;
        p.push(if rest > 0 { byte | 0x80 } else { byte });
        if rest == 0 {
            break;
        }
    }
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    p.resize(p.len() + len, 0xab);
    p
}

/// The upgrade request of every WebSocket client here.
const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Sends the upgrade request and reads the `101` answer's head.
async fn upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(UPGRADE.as_bytes()).await.expect("send the upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("read the upgrade answer"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
}

/// The attack, on one connection: upgrade, a valid CONNECT (keep alive 0: the broker never closes it) answered by
/// a CONNACK, then a binary message of just under [`OLD_CAP`] in 64 KiB fragments (QoS 0 PUBLISHes to a topic
/// nobody reads, so the broker drops them) whose final frame never comes, then a continuation frame header declaring
/// nearly 1 MiB and none of its bytes. Returns the connection, left open, and the payload bytes sent.
async fn attack(proxy: SocketAddr, id: &str) -> (TcpStream, usize) {
    let mut s = TcpStream::connect(proxy).await.expect("connect to the proxy");
    upgrade(&mut s).await;
    let mut connect = connect_packet_v311(id);
    let keep_alive_low = connect.len() - 3 - id.len();
    connect[keep_alive_low] = 0; // keep alive 0 (its high byte is 0 already)
    s.write_all(&client_frame(0x2, true, &connect)).await.expect("send the CONNECT");
    let mut connack = [0u8; 6];
    s.read_exact(&mut connack).await.expect("read the CONNACK frame");
    assert_eq!(connack, [0x82, 0x04, 0x20, 0x02, 0x00, 0x00], "{id}: a CONNACK accepting the client");

    let mut message = Vec::new();
    while message.len() < OLD_CAP - 2048 {
        message.extend(publish("nobody/reads/this", 1000));
    }
    let mut bytes = Vec::with_capacity(message.len() + 1024);
    for (i, part) in message.chunks(64 * 1024).enumerate() {
        bytes.extend(client_frame(if i == 0 { 0x2 } else { 0x0 }, false, part));
    }
    bytes.extend(client_header(0x0, true, OLD_CAP - 16));
    s.write_all(&bytes).await.expect("send the fragments");
    (s, connect.len() + message.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_fragmented_message_and_an_unfilled_frame_cost_a_websocket_connection_no_buffer() {
    let conns: usize = std::env::var("MQTTLB_WS_ATTACK_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    bounded(Duration::from_secs(120 + conns as u64 / 5), "the WebSocket memory attack", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // Limits left at their defaults: max_ws_frame_size is the old 1 MiB cap.
        let yaml = format!(
            "listeners: [{{ name: ws, bind: \"{listener}\", protocol: websocket, backend: brokers }}]\n\
             backends:\n  - name: brokers\n    health: {{ check: none }}\n\
             \x20   servers: [{{ name: b0, address: \"{}\" }}]\nadmin: {{ bind: \"{admin}\" }}\n",
            broker.addr()
        );
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, &yaml).expect("write the proxy config");
        let proxy = LbProcess::start_quiet(&config, listener, admin).await;
        let sent_to_broker = || metric(admin, "mqttlb_server_sent_bytes_total{backend=\"brokers\",server=\"b0\"}");
        let all_relayed = |want: usize| {
            eventually(Duration::from_secs(60 + conns as u64 / 5), move || async move {
                (sent_to_broker().await >= want as f64).then_some(())
            })
        };

        // Warm-up: the runtime's threads, the allocator's arenas.
        let mut open = Vec::new();
        let mut sent = 0;
        for i in 0..20 {
            let (s, n) = attack(listener, &format!("warm-{i}")).await;
            open.push(s);
            sent += n;
        }
        all_relayed(sent).await.expect("the warm-up connections' bytes reach the broker");
        let before = proxy.rss();
        assert!(before > 0, "read the proxy's VmRSS");

        for i in 0..conns {
            let (s, n) = attack(listener, &format!("attack-{i}")).await;
            open.push(s);
            sent += n;
        }
        // Every payload byte sent so far reached the broker: nothing is held back waiting for the message's end.
        all_relayed(sent).await.expect("the fragments are relayed as they arrive, before the message ends");
        let after = proxy.rss();
        let active = metric(admin, "mqttlb_connections_active{listener=\"ws\"}").await;
        assert_eq!(active, open.len() as f64, "every attacking connection is still open");

        let per_connection = after.saturating_sub(before) / conns as u64;
        eprintln!(
            "{conns} connections: VmRSS {} KiB -> {} KiB, {:.1} KiB per connection",
            before / 1024,
            after / 1024,
            per_connection as f64 / 1024.0
        );
        assert!(
            per_connection <= PER_CONNECTION_BOUND,
            "{per_connection} bytes of VmRSS per connection (bound {PER_CONNECTION_BOUND}); before {before}, after {after}"
        );
        drop(open);
        drop(proxy);
    })
    .await;
}

/// An idle client of `listener`: TLS, the upgrade if `websocket`, CONNECT and its CONNACK; then silence.
async fn idle_client(
    listener: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    websocket: bool,
    id: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls_connect(listener, tls).await.expect("TLS to the proxy");
    let connect = connect_packet_v311(id);
    if websocket {
        upgrade(&mut s).await;
        s.write_all(&client_frame(0x2, true, &connect)).await.expect("send the CONNECT");
        let mut connack = [0u8; 6];
        s.read_exact(&mut connack).await.expect("read the CONNACK frame");
        assert_eq!(connack, [0x82, 0x04, 0x20, 0x02, 0x00, 0x00], "{id}");
    } else {
        s.write_all(&connect).await.expect("send the CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("read the CONNACK");
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{id}");
    }
    s
}

/// An idle WSS connection costs the proxy at most a quarter more than an idle MQTTS one: the WebSocket layer holds
/// no buffer, only its frame state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wss_connection_costs_at_most_a_quarter_more_than_an_idle_mqtts_one() {
    let conns: usize = std::env::var("MQTTLB_IDLE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    bounded(Duration::from_secs(120 + conns as u64 / 20), "idle WSS and MQTTS connections", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let (mqtts, wss) =
            (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls = format!("{{ cert: \"{}\", key: \"{}\" }}", pki.cert.display(), pki.key.display());
        let yaml = format!(
            "listeners:\n\
             \x20 - {{ name: mqtts, bind: \"{mqtts}\", protocol: mqtt, tls: {tls}, backend: brokers }}\n\
             \x20 - {{ name: wss, bind: \"{wss}\", protocol: websocket, tls: {tls}, backend: brokers }}\n\
             backends:\n  - name: brokers\n    health: {{ check: none }}\n\
             \x20   servers: [{{ name: b0, address: \"{}\" }}]\nadmin: {{ bind: \"{admin}\" }}\n",
            broker.addr()
        );
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, &yaml).expect("write the proxy config");
        let proxy = LbProcess::start_quiet(&config, mqtts, admin).await;
        let mut open = Vec::new();
        for i in 0..50 {
            open.push(idle_client(mqtts, pki.client_config(), false, &format!("warm-m{i}")).await);
            open.push(idle_client(wss, pki.client_config(), true, &format!("warm-w{i}")).await);
        }
        // Each figure: connections opened, then the RSS once the proxy has settled (read twice, 1 s apart, the
        // larger kept: what the connections hold, not what their handshakes left in flight).
        let settled = || async {
            let first = proxy.rss();
            tokio::time::sleep(Duration::from_secs(1)).await;
            first.max(proxy.rss())
        };
        let base = settled().await;
        for i in 0..conns {
            open.push(idle_client(mqtts, pki.client_config(), false, &format!("idle-m{i}")).await);
        }
        let with_mqtts = settled().await;
        for i in 0..conns {
            open.push(idle_client(wss, pki.client_config(), true, &format!("idle-w{i}")).await);
        }
        let with_wss = settled().await;
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / conns as f64 / 1024.0;
        let (mqtts_cost, wss_cost) = (per(base, with_mqtts), per(with_mqtts, with_wss));
        eprintln!("{conns} idle connections each: MQTTS {mqtts_cost:.1} KiB, WSS {wss_cost:.1} KiB per connection");
        let active = metric(admin, "mqttlb_connections_active{listener=\"wss\"}").await;
        assert_eq!(active, (conns + 50) as f64, "the WSS clients are all connected");
        assert!(wss_cost <= 1.25 * mqtts_cost, "WSS {wss_cost:.1} KiB vs MQTTS {mqtts_cost:.1} KiB per connection");
        drop(open);
        drop(proxy);
    })
    .await;
}
