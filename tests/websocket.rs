//! End-to-end tests of MQTT over secure WebSocket: real mosquitto brokers (plain MQTT listener and a `protocol
//! websockets` listener each), real TLS (rcgen CA, rustls with ring), real MQTT-over-WebSocket clients (rumqttc's
//! `websocket` transport for v3.1.1 and v5; tokio-tungstenite with hand-made frames for what a well-behaved client
//! never sends) and an in-process mqtt-lb.
//!
//! Listeners of the test proxy: `mqtts` (MQTT over TLS -> `brokers`, the brokers' MQTT ports), `wss` (WebSocket over
//! TLS -> `brokers`) and `wss_ws` (WebSocket over TLS -> `brokers_ws`, the brokers' WebSocket ports, spoken to as a
//! WebSocket client). Both backends name their servers alike, so placement agrees over all three.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use common::*;

/// Bound of every test body.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// The largest MQTT packet the test clients send or take (above the 16 MiB publishes).
const MAX_PACKET: usize = 32 << 20;

// ---------------------------------------------------------------------------------------------------------------
// Set-up.

/// The proxy configuration in front of `cluster` (started with websockets). With `probes`, `mqtt` and `websocket`
/// health probes run every 200 ms; without, there is no probing at all (so that nothing but clients could reach a
/// broker). `extra_limits` (more keys of `limits`) and `wss_extra` (more keys of the `wss` listener) are spliced in,
/// each starting with a comma.
fn ws_yaml(cluster: &Cluster, probes: bool, extra_limits: &str, wss_extra: &str) -> String {
    let tls = format!("{{ cert: \"{}\", key: \"{}\" }}", cluster.pki.cert.display(), cluster.pki.key.display());
    let (check, ws_check) = if probes { ("mqtt", "websocket") } else { ("none", "none") };
    let mut y = format!(
        "listeners:\n\
         \x20 - {{ name: mqtts, bind: \"127.0.0.1:0\", protocol: mqtt, tls: {tls}, backend: brokers }}\n\
         \x20 - {{ name: wss, bind: \"127.0.0.1:0\", protocol: websocket, tls: {tls}, backend: brokers{wss_extra} }}\n\
         \x20 - {{ name: wss_ws, bind: \"127.0.0.1:0\", protocol: websocket, path: /mqtt, tls: {tls}, backend: brokers_ws }}\n\
         backends:\n\
         \x20 - name: brokers\n\
         \x20   connect_timeout: 2s\n\
         \x20   health: {{ check: {check}, interval: 200ms, timeout: 500ms, rise: 2, fall: 2 }}\n\
         \x20   servers:\n"
    );
    for b in &cluster.brokers {
        y.push_str(&format!("      - {{ name: {}, address: \"127.0.0.1:{}\" }}\n", b.name, b.port));
    }
    y.push_str(&format!(
        "  - name: brokers_ws\n    protocol: websocket\n    path: /mqtt\n    connect_timeout: 2s\n\
         \x20   health: {{ check: {ws_check}, interval: 200ms, timeout: 500ms, rise: 2, fall: 2 }}\n    servers:\n"
    ));
    for b in &cluster.brokers {
        let ws = b.ws_port.expect("brokers started with websockets");
        y.push_str(&format!("      - {{ name: {}, address: \"127.0.0.1:{ws}\" }}\n", b.name));
    }
    y.push_str("admin: { bind: \"127.0.0.1:0\" }\n");
    y.push_str(&format!("limits: {{ handshake_timeout: 2s{extra_limits} }}\n"));
    y.push_str("shutdown: { grace: 0s, drain_timeout: 2s }\n");
    y
}

fn addr(proxy: &TestProxy, listener: &str) -> SocketAddr {
    *proxy.addrs.get(listener).unwrap_or_else(|| panic!("no listener {listener}"))
}

async fn rejected(proxy: &TestProxy, listener: &str, reason: &str) -> f64 {
    metric(proxy.admin, &format!("mqttlb_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"))
        .await
}

async fn wait_backend_up(proxy: &TestProxy, backend: &str, server: &str) {
    let series = format!("mqttlb_server_up{{backend=\"{backend}\",server=\"{server}\"}}");
    eventually(Duration::from_secs(10), || {
        let series = series.clone();
        async move { (metric(proxy.admin, &series).await == 1.0).then_some(()) }
    })
    .await
    .unwrap_or_else(|| panic!("{series} did not become 1"));
}

// ---------------------------------------------------------------------------------------------------------------
// A real MQTT-over-WebSocket client: rumqttc's `wss` transport, v3.1.1 or v5.

enum WsConn {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

enum Event {
    SubAck,
    PubAck,
    Publish(String, Vec<u8>),
    Other,
}

struct WsMqtt {
    id: String,
    conn: WsConn,
    inbox: VecDeque<(String, Vec<u8>)>,
    failed: Option<String>,
    /// How long one step (an acknowledgement, a delivery) may take.
    step: Duration,
}

impl WsMqtt {
    /// Connects over `wss://localhost:<port>/mqtt` (subprotocol `mqtt`) and waits for a successful CONNACK.
    async fn connect(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        id: &str,
        version: Version,
    ) -> Result<WsMqtt, String> {
        let url = format!("wss://localhost:{}/mqtt", addr.port());
        let transport = rumqttc::Transport::wss_with_config(rumqttc::TlsConfiguration::Rustls(tls));
        let conn = match version {
            Version::V4 => {
                let mut o = rumqttc::MqttOptions::new(id, url, addr.port());
                o.set_transport(transport);
                o.set_keep_alive(Duration::from_secs(30));
                o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
                let (client, mut ev) = rumqttc::AsyncClient::new(o, 16);
                ev.network_options.set_connection_timeout(STEP_TIMEOUT.as_secs());
                match tokio::time::timeout(STEP_TIMEOUT, ev.poll()).await {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))))
                        if a.code == rumqttc::ConnectReturnCode::Success => {}
                    other => return Err(format!("{id}: expected a successful CONNACK, got {other:?}")),
                }
                WsConn::V4(client, Box::new(ev))
            }
            Version::V5 => {
                let mut o = v5::MqttOptions::new(id, url, addr.port());
                o.set_transport(transport);
                o.set_keep_alive(Duration::from_secs(30));
                o.set_connection_timeout(STEP_TIMEOUT.as_secs());
                o.set_max_packet_size(Some(MAX_PACKET as u32));
                let (client, mut ev) = v5::AsyncClient::new(o, 16);
                match tokio::time::timeout(STEP_TIMEOUT, ev.poll()).await {
                    Ok(Ok(v5::Event::Incoming(v5::Incoming::ConnAck(a))))
                        if a.code == v5::mqttbytes::v5::ConnectReturnCode::Success => {}
                    other => return Err(format!("{id}: expected a successful CONNACK, got {other:?}")),
                }
                WsConn::V5(client, Box::new(ev))
            }
        };
        Ok(WsMqtt { id: id.to_owned(), conn, inbox: VecDeque::new(), failed: None, step: STEP_TIMEOUT })
    }

    /// One event; never polls again after an error (rumqttc would reconnect).
    async fn poll(&mut self) -> Result<Event, String> {
        if let Some(e) = &self.failed {
            return Err(format!("{}: connection ended: {e}", self.id));
        }
        let ev = match &mut self.conn {
            WsConn::V4(_, ev) => match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => Ok(Event::SubAck),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => Ok(Event::PubAck),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    Ok(Event::Publish(p.topic, p.payload.to_vec()))
                }
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(e.to_string()),
            },
            WsConn::V5(_, ev) => match ev.poll().await {
                Ok(v5::Event::Incoming(v5::Incoming::SubAck(_))) => Ok(Event::SubAck),
                Ok(v5::Event::Incoming(v5::Incoming::PubAck(_))) => Ok(Event::PubAck),
                Ok(v5::Event::Incoming(v5::Incoming::Publish(p))) => {
                    Ok(Event::Publish(String::from_utf8_lossy(&p.topic).into_owned(), p.payload.to_vec()))
                }
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(e.to_string()),
            },
        };
        match ev {
            Ok(Event::Publish(t, p)) => {
                self.inbox.push_back((t, p));
                Ok(Event::Other)
            }
            Ok(e) => Ok(e),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(format!("{}: {e}", self.id))
            }
        }
    }

    async fn until(&mut self, what: &str, want: fn(&Event) -> bool) -> Result<(), String> {
        let (id, step) = (self.id.clone(), self.step);
        tokio::time::timeout(step, async {
            loop {
                if want(&self.poll().await?) {
                    return Ok(());
                }
            }
        })
        .await
        .map_err(|_| format!("{id}: no {what} within {step:?}"))?
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let r = match &self.conn {
            WsConn::V4(c, _) => c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
            WsConn::V5(c, _) => c.subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
        };
        r?;
        self.until("SUBACK", |e| matches!(e, Event::SubAck)).await
    }

    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let p = payload.to_vec();
        let r = match &self.conn {
            WsConn::V4(c, _) => c.publish(topic, rumqttc::QoS::AtLeastOnce, false, p).await.map_err(|e| e.to_string()),
            WsConn::V5(c, _) => {
                c.publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, p).await.map_err(|e| e.to_string())
            }
        };
        r?;
        self.until("PUBACK", |e| matches!(e, Event::PubAck)).await
    }

    async fn next_publish(&mut self, topic: &str) -> Result<Vec<u8>, String> {
        let (id, step) = (self.id.clone(), self.step);
        tokio::time::timeout(step, async {
            loop {
                if let Some(i) = self.inbox.iter().position(|(t, _)| t == topic) {
                    return Ok(self.inbox.remove(i).map(|(_, p)| p).unwrap_or_default());
                }
                self.poll().await?;
            }
        })
        .await
        .map_err(|_| format!("{id}: no PUBLISH on {topic} within {step:?}"))?
    }

    /// The broker's name (its retained `lb/whoami`).
    async fn whoami(&mut self) -> Result<String, String> {
        self.subscribe(WHOAMI_TOPIC).await?;
        let name = self.next_publish(WHOAMI_TOPIC).await?;
        String::from_utf8(name).map_err(|e| e.to_string())
    }

    async fn disconnect(mut self) {
        let sent = match &self.conn {
            WsConn::V4(c, _) => c.disconnect().await.is_ok(),
            WsConn::V5(c, _) => c.disconnect().await.is_ok(),
        };
        if sent {
            let _ = tokio::time::timeout(Duration::from_secs(2), async { while self.poll().await.is_ok() {} }).await;
        }
    }
}

async fn ws_which_broker(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, id: &str, version: Version) -> String {
    let mut c = WsMqtt::connect(addr, tls, id, version).await.unwrap_or_else(|e| panic!("{e}"));
    let who = c.whoami().await.unwrap_or_else(|e| panic!("{e}"));
    c.disconnect().await;
    who
}

// ---------------------------------------------------------------------------------------------------------------
// A raw WebSocket client (tokio-tungstenite over our TLS) for hand-made frames.

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Upgrades to `path` offering `protocol` (if any). Errs with tungstenite's error (e.g. the HTTP refusal).
async fn ws_open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, protocol: Option<&str>) -> Result<Ws, String> {
    let stream = tls_connect(addr, tls).await.map_err(|e| format!("TLS: {e}"))?;
    let mut request =
        format!("wss://localhost:{}/mqtt", addr.port()).into_client_request().map_err(|e| e.to_string())?;
    if let Some(p) = protocol {
        request.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().map_err(|_| "header value")?);
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| e.to_string())?;
    let chosen = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    assert_eq!(chosen, protocol, "the proxy echoes the offered subprotocol");
    Ok(ws)
}

/// What the server sent until it closed: binary payload bytes, text frames seen, the close frame's code.
#[derive(Debug, Default)]
struct Ending {
    binary: Vec<u8>,
    texts: usize,
    close: Option<CloseCode>,
}

async fn read_until_close(ws: &mut Ws) -> Ending {
    bounded(STEP_TIMEOUT, "the server's close frame", async {
        let mut end = Ending::default();
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Binary(b)) => end.binary.extend_from_slice(&b),
                Ok(Message::Text(_)) => end.texts += 1,
                Ok(Message::Close(frame)) => {
                    end.close = Some(frame.map_or(CloseCode::Status, |f| f.code));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        end
    })
    .await
}

/// Reads binary frames until `n` whole MQTT packets have arrived; returns them.
async fn read_packets(ws: &mut Ws, buf: &mut Vec<u8>, n: usize) -> Vec<Vec<u8>> {
    bounded(STEP_TIMEOUT, "MQTT packets from the proxy", async {
        let mut packets = Vec::new();
        loop {
            while let Some(len) = packet_len(buf) {
                packets.push(buf.drain(..len).collect());
                if packets.len() == n {
                    return packets;
                }
            }
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected binary frames, got {other:?} (packets so far {packets:02x?})"),
            }
        }
    })
    .await
}

/// The length of the first whole MQTT packet in `buf`, if it is complete.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + len;
            return (buf.len() >= total).then_some(total);
        }
    }
    panic!("malformed remaining length in {buf:02x?}")
}

/// SUBSCRIBE (3.1.1 / 5) to `topic` at QoS 0 with packet id 1.
fn subscribe_packet(topic: &str, v5: bool) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    if v5 {
        body.push(0x00); // no properties
    }
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.push(0x00);
    let mut p = vec![0x82, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// The payload of a PUBLISH (QoS 0, 3.1.1 or 5) on `topic`.
fn publish_payload(packet: &[u8], topic: &str, v5: bool) -> Vec<u8> {
    assert_eq!(packet[0] & 0xf0, 0x30, "a PUBLISH: {packet:02x?}");
    let header = 2 + usize::from(packet[1] >= 0x80);
    let tlen = usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
    let t = &packet[header + 2..header + 2 + tlen];
    assert_eq!(t, topic.as_bytes());
    let mut rest = header + 2 + tlen;
    if v5 {
        rest += 1 + usize::from(packet[rest]); // property length (short) and properties
    }
    packet[rest..].to_vec()
}

/// A 3.1 CONNECT ("MQIsdp", level 3, clean session).
fn connect_packet_v31(id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x06];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0x00, 60]);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

fn binary(bytes: &[u8]) -> Message {
    Message::Binary(Bytes::copy_from_slice(bytes))
}

fn fragment(bytes: &[u8], first: bool, last: bool) -> Message {
    let op = if first { Data::Binary } else { Data::Continue };
    Message::Frame(Frame::message(Bytes::copy_from_slice(bytes), OpCode::Data(op), last))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_over_wss_to_mqtt_and_websocket_backends_v311_and_v5() {
    bounded(TEST_LIMIT, "pub/sub over WSS", async {
        let env = Cluster::start_with_websockets(2).await;
        let proxy = TestProxy::start(&ws_yaml(&env, true, "", "")).await;
        let placement = Placement::new(&proxy.config);
        for b in &env.brokers {
            // `websocket` probes (upgrade + CONNECT/CONNACK inside it) find the brokers' WebSocket ports up.
            wait_backend_up(&proxy, "brokers", &b.name).await;
            wait_backend_up(&proxy, "brokers_ws", &b.name).await;
        }
        for listener in ["wss", "wss_ws"] {
            for version in [Version::V4, Version::V5] {
                let id = format!("ws-{listener}-{version:?}");
                let mut c = WsMqtt::connect(addr(&proxy, listener), env.tls(), &id, version)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let topic = format!("t/{id}");
                c.subscribe(&topic).await.unwrap();
                // Publishes large enough to take several relay reads and frames.
                let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
                c.publish(&topic, &payload).await.unwrap();
                assert_eq!(c.next_publish(&topic).await.unwrap(), payload, "{id}: the round trip changed the bytes");
                assert_eq!(c.whoami().await.unwrap(), placement.place(&id), "{id}: placed by the rendezvous hash");
                c.disconnect().await;
            }
        }
        // Bytes were relayed to and from both kinds of backend, and the brokers saw the clients' own ids.
        for backend in ["brokers", "brokers_ws"] {
            let mut sent = 0.0;
            let mut received = 0.0;
            for b in &env.brokers {
                let l = format!("{{backend=\"{backend}\",server=\"{}\"}}", b.name);
                sent += metric(proxy.admin, &format!("mqttlb_server_sent_bytes_total{l}")).await;
                received += metric(proxy.admin, &format!("mqttlb_server_received_bytes_total{l}")).await;
            }
            assert!(sent > 80_000.0 && received > 80_000.0, "{backend}: sent {sent}, received {received}");
        }
        let seen: Vec<String> = env.brokers.iter().flat_map(Mosquitto::client_ids_seen).collect();
        for id in ["ws-wss-V4", "ws-wss-V5", "ws-wss_ws-V4", "ws-wss_ws-V5"] {
            assert!(seen.iter().any(|s| s == id), "{id} not in {seen:?}");
        }
        for listener in ["wss", "wss_ws"] {
            let accepted =
                metric(proxy.admin, &format!("mqttlb_connections_accepted_total{{listener=\"{listener}\"}}")).await;
            assert!(accepted >= 2.0, "{listener}: traffic is told apart by the listener label ({accepted})");
        }
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_lands_on_the_same_broker_over_mqtts_and_wss() {
    bounded(TEST_LIMIT, "same broker over 8883 and 443", async {
        let env = Cluster::start_with_websockets(3).await;
        let proxy = TestProxy::start(&ws_yaml(&env, true, "", "")).await;
        for b in &env.brokers {
            wait_backend_up(&proxy, "brokers", &b.name).await;
            wait_backend_up(&proxy, "brokers_ws", &b.name).await;
        }
        let mut landed = BTreeSet::new();
        for i in 0..9 {
            let id = format!("sticky-{i}");
            let version = if i % 2 == 0 { Version::V4 } else { Version::V5 };
            let over_mqtts = which_broker(proxy.mqtts, Some(env.tls()), &id, version).await;
            let over_wss = ws_which_broker(addr(&proxy, "wss"), env.tls(), &id, version).await;
            let over_wss_ws = ws_which_broker(addr(&proxy, "wss_ws"), env.tls(), &id, version).await;
            assert_eq!(over_mqtts, over_wss, "{id}: MQTTS and WSS (to 1883) disagree");
            assert_eq!(over_mqtts, over_wss_ws, "{id}: MQTTS and WSS (to 8083) disagree");
            landed.insert(over_mqtts);
        }
        assert!(landed.len() >= 2, "the ids should spread over brokers: {landed:?}");
        proxy.stop().await;
    })
    .await;
}

/// Sends `request` over TLS and returns (status, whole answer).
async fn http_status(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &[u8]) -> (u16, String) {
    let answer = tls_exchange(addr, tls, request, STEP_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text:?}"));
    (status, text)
}

/// Reads an HTTP answer's head, byte by byte (so nothing after it is consumed).
async fn read_head(raw: &mut TlsStream<TcpStream>) -> Vec<u8> {
    bounded(STEP_TIMEOUT, "the head of the HTTP answer", async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(raw.read_u8().await.expect("read the answer"));
        }
        head
    })
    .await
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://maps.example.org\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrades_get_http_answers_are_counted_and_reach_no_broker() {
    bounded(TEST_LIMIT, "malformed upgrades", async {
        let env = Cluster::start_with_websockets(1).await;
        let origins = ", allowed_origins: [\"https://maps.example.org\"]";
        let proxy = TestProxy::start(&ws_yaml(&env, false, "", origins)).await;
        let wss = addr(&proxy, "wss");
        let before = env.connections_seen();

        // The well-formed request is upgraded (a control for the cases below).
        let mut raw = tls_connect(wss, env.tls()).await.unwrap();
        raw.write_all(UPGRADE.as_bytes()).await.unwrap();
        let text = String::from_utf8(read_head(&mut raw).await).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        drop(raw);
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{text}");

        let oversized = format!("GET /mqtt HTTP/1.1\r\nX-Filler: {}", "a".repeat(8192 - 30));
        let cases: Vec<(&str, String, u16, &str)> = vec![
            ("wrong path", UPGRADE.replace("GET /mqtt", "GET /ws"), 404, "ws_bad_path"),
            ("no Upgrade", UPGRADE.replace("Upgrade: websocket\r\n", ""), 400, "ws_bad_upgrade"),
            ("no key", UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400, "ws_bad_upgrade"),
            ("old version", UPGRADE.replace("Version: 13", "Version: 8"), 426, "ws_bad_upgrade"),
            ("not HTTP", "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n".to_owned(), 400, "ws_bad_upgrade"),
            ("no subprotocol", UPGRADE.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""), 400, "ws_no_subprotocol"),
            ("other subprotocol", UPGRADE.replace("Protocol: mqtt", "Protocol: chat, wamp"), 400, "ws_no_subprotocol"),
            ("foreign origin", UPGRADE.replace("maps.example.org", "evil.example.com"), 403, "ws_origin"),
            ("oversized request", oversized, 431, "ws_upgrade_too_large"),
        ];
        for (what, request, status, _) in &cases {
            let (got, text) = http_status(wss, env.tls(), request.as_bytes()).await;
            assert_eq!(got, *status, "{what}: {text}");
            assert!(text.contains("Connection: close"), "{what}: {text}");
        }
        // A request that never ends is answered at the deadline (limits.handshake_timeout = 2s).
        let started = std::time::Instant::now();
        let (got, text) = http_status(wss, env.tls(), b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n").await;
        assert_eq!(got, 408, "{text}");
        assert!(started.elapsed() >= Duration::from_millis(1500), "answered before the deadline");

        let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
        for (_, _, _, reason) in &cases {
            *expected.entry(reason).or_default() += 1.0;
        }
        expected.insert("ws_upgrade_timeout", 1.0);
        for (reason, n) in expected {
            assert_eq!(rejected(&proxy, "wss", reason).await, n, "reason {reason}");
        }
        // Nothing reached a broker: no probes run in this test, and no client got past the upgrade.
        assert_eq!(env.connections_seen(), before, "a broker saw a connection");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_invalid_connects_are_refused_in_websocket_terms_and_reach_no_broker() {
    bounded(TEST_LIMIT, "bad frames", async {
        let env = Cluster::start_with_websockets(1).await;
        // A CONNECT over 1 KiB is refused; the 1 KiB frame size is accepted and limits nothing.
        let proxy =
            TestProxy::start(&ws_yaml(&env, false, ", max_connect_size: 1KiB, max_ws_frame_size: 1KiB", "")).await;
        let wss = addr(&proxy, "wss");
        let before = env.connections_seen();

        // A text frame, even one holding a valid CONNECT: close 1003, no CONNACK.
        let mut ws = ws_open(wss, env.tls(), Some("mqtt")).await.unwrap();
        let connect = connect_packet_v311("text-client");
        ws.send(Message::text(String::from_utf8_lossy(&connect).into_owned())).await.unwrap();
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.close, Some(CloseCode::Unsupported), "{end:?}");
        assert!(end.binary.is_empty(), "{end:?}");

        // `max_ws_frame_size` no longer limits anything: frames stream, and only the MQTT limits apply. A 2000-byte
        // frame (over the former cap of 1 KiB) holding a CONNECT that declares 2000 bytes reaches the CONNECT reader,
        // which refuses it for `max_connect_size` on its fixed header: a normal close, no 1009.
        let mut too_long = vec![0x10, 0xcd, 0x0f];
        too_long.resize(2000, 0);
        let mut ws = ws_open(wss, env.tls(), Some("mqtt")).await.unwrap();
        ws.send(binary(&too_long)).await.unwrap();
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.close, Some(CloseCode::Normal), "{end:?}");

        // The same for a fragmented message of 1500 bytes in 300-byte fragments: the fragments are never gathered.
        let mut in_fragments = vec![0x10, 0xdc, 0x0b];
        in_fragments.resize(1500, 0);
        let mut ws = ws_open(wss, env.tls(), Some("mqtt")).await.unwrap();
        for (i, part) in in_fragments.chunks(300).enumerate() {
            ws.send(fragment(part, i == 0, i == 4)).await.unwrap();
        }
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.close, Some(CloseCode::Normal), "{end:?}");

        // An unknown protocol level in a valid binary frame: CONNACK 0x01 (in a binary frame), then a close.
        let mut ws = ws_open(wss, env.tls(), Some("mqtt")).await.unwrap();
        let mut bad_level = connect_packet_v311("level-9");
        bad_level[8] = 9;
        ws.send(binary(&bad_level)).await.unwrap();
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.binary, vec![0x20, 0x02, 0x00, 0x01], "{end:?}");
        assert_eq!(end.close, Some(CloseCode::Normal), "{end:?}");

        // MQTT 5 with the reserved connect flag: CONNACK 0x81 (malformed) in a binary frame, then a close.
        let mut ws = ws_open(wss, env.tls(), Some("mqtt")).await.unwrap();
        let mut reserved = connect_packet_v5("reserved-flag");
        reserved[9] |= 0x01;
        ws.send(binary(&reserved)).await.unwrap();
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.binary, vec![0x20, 0x03, 0x00, 0x81, 0x00], "{end:?}");
        assert_eq!(end.close, Some(CloseCode::Normal), "{end:?}");

        // An unmasked client frame (tungstenite always masks, so the upgrade and the frame are written by hand):
        // close 1002.
        let mut raw = tls_connect(wss, env.tls()).await.unwrap();
        raw.write_all(UPGRADE.as_bytes()).await.unwrap();
        let head = read_head(&mut raw).await;
        assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
        let mut frame = vec![0x82, connect.len() as u8];
        frame.extend_from_slice(&connect);
        raw.write_all(&frame).await.unwrap();
        let mut answer = Vec::new();
        let _ = bounded(STEP_TIMEOUT, "close after an unmasked frame", raw.read_to_end(&mut answer)).await;
        assert_eq!(answer.get(..4), Some(&[0x88, 0x02, 0x03, 0xea][..]), "a close frame with code 1002: {answer:02x?}");

        for (reason, n) in [
            ("ws_text_frame", 1.0),
            ("ws_frame_too_large", 0.0),
            ("connect_too_large", 2.0),
            ("unsupported_version", 1.0),
            ("reserved_flag", 1.0),
            ("ws_protocol", 1.0),
        ] {
            assert_eq!(rejected(&proxy, "wss", reason).await, n, "reason {reason}");
        }
        for (reason, n) in [("ws_text_frame", 1.0), ("ws_frame_too_large", 0.0), ("ws_protocol", 1.0)] {
            let series = format!("mqttlb_websocket_frame_errors_total{{listener=\"wss\",reason=\"{reason}\"}}");
            assert_eq!(metric(proxy.admin, &series).await, n, "{series}");
        }
        assert_eq!(env.connections_seen(), before, "a broker saw a connection");
        assert!(env.brokers[0].client_ids_seen().iter().all(|id| id.starts_with("whoami-setter")));
        proxy.stop().await;
    })
    .await;
}

/// Through `listener`: a CONNECT in 1-byte frames, a SUBSCRIBE as a fragmented message with a ping between its
/// fragments, two PINGREQs in one frame, then the close handshake.
async fn frames_are_a_byte_stream(env: &Cluster, proxy: &TestProxy, listener: &str) {
    let id = format!("tiny-frames-{listener}");
    let mut ws = ws_open(addr(proxy, listener), env.tls(), Some("mqtt")).await.unwrap();
    for byte in connect_packet_v311(&id) {
        ws.send(binary(&[byte])).await.unwrap();
    }
    let mut buf = Vec::new();
    let connack = read_packets(&mut ws, &mut buf, 1).await;
    assert_eq!(connack[0], vec![0x20, 0x02, 0x00, 0x00], "{listener}: CONNACK accepted");

    let subscribe = subscribe_packet(WHOAMI_TOPIC, false);
    let last = subscribe.len() - 1;
    for (i, byte) in subscribe.iter().enumerate() {
        ws.send(fragment(&[*byte], i == 0, i == last)).await.unwrap();
        if i == 3 {
            ws.send(Message::Ping(Bytes::from_static(b"between fragments"))).await.unwrap();
        }
    }
    let mut packets = Vec::new();
    // SUBACK and the retained PUBLISH, in any frame layout; the pong is skipped by read_packets.
    packets.extend(read_packets(&mut ws, &mut buf, 2).await);
    assert_eq!(packets[0], vec![0x90, 0x03, 0x00, 0x01, 0x00], "{listener}: SUBACK");
    let who = publish_payload(&packets[1], WHOAMI_TOPIC, false);
    assert_eq!(String::from_utf8(who).unwrap(), env.brokers[0].name);

    ws.send(binary(&[0xC0, 0x00, 0xC0, 0x00])).await.unwrap();
    let pongs = read_packets(&mut ws, &mut buf, 2).await;
    assert_eq!(pongs, vec![vec![0xD0, 0x00], vec![0xD0, 0x00]], "{listener}: two PINGRESPs");

    // A ping is answered with a pong carrying its payload.
    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    let pong = bounded(STEP_TIMEOUT, "pong", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) if p.as_ref() == b"are you there" => return p,
                Some(Ok(_)) => {}
                other => panic!("{listener}: no pong: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(pong.as_ref(), b"are you there");

    // DISCONNECT then our close: the proxy answers the close and ends.
    ws.send(binary(&[0xE0, 0x00])).await.unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    let end = read_until_close(&mut ws).await;
    assert!(end.close.is_some(), "{listener}: the close was answered: {end:?}");
    let seen = env.brokers[0].client_ids_seen();
    assert!(seen.contains(&id), "{id} not in {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_frames_fragments_pings_and_packed_frames_are_one_byte_stream() {
    bounded(TEST_LIMIT, "frames as a byte stream", async {
        let env = Cluster::start_with_websockets(1).await;
        let proxy = TestProxy::start(&ws_yaml(&env, false, "", "")).await;
        frames_are_a_byte_stream(&env, &proxy, "wss").await;
        frames_are_a_byte_stream(&env, &proxy, "wss_ws").await;

        // A 3.1 client offers `mqttv3.1` and speaks MQIsdp.
        let mut ws = ws_open(addr(&proxy, "wss"), env.tls(), Some("mqttv3.1")).await.unwrap();
        ws.send(binary(&connect_packet_v31("v31-client"))).await.unwrap();
        let mut buf = Vec::new();
        let connack = read_packets(&mut ws, &mut buf, 1).await;
        assert_eq!(connack[0], vec![0x20, 0x02, 0x00, 0x00], "3.1 CONNACK accepted");
        ws.send(binary(&subscribe_packet(WHOAMI_TOPIC, false))).await.unwrap();
        let packets = read_packets(&mut ws, &mut buf, 2).await;
        assert_eq!(publish_payload(&packets[1], WHOAMI_TOPIC, false), env.brokers[0].name.as_bytes());
        ws.close(None).await.unwrap();

        // MQTT 5 raw, with the CONNECT and the SUBSCRIBE packed into one frame.
        let mut ws = ws_open(addr(&proxy, "wss_ws"), env.tls(), Some("mqtt")).await.unwrap();
        let mut both = connect_packet_v5("v5-packed");
        both.extend_from_slice(&subscribe_packet(WHOAMI_TOPIC, true));
        ws.send(binary(&both)).await.unwrap();
        let mut buf = Vec::new();
        let packets = read_packets(&mut ws, &mut buf, 3).await;
        assert_eq!(packets[0][0], 0x20, "CONNACK: {:02x?}", packets[0]);
        assert_eq!(packets[0][3], 0x00, "CONNACK success: {:02x?}", packets[0]);
        assert_eq!(packets[1][0], 0x90, "SUBACK: {:02x?}", packets[1]);
        assert_eq!(publish_payload(&packets[2], WHOAMI_TOPIC, true), env.brokers[0].name.as_bytes());
        ws.close(None).await.unwrap();

        assert_eq!(rejected(&proxy, "wss", "ws_protocol").await, 0.0);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_health_check_follows_the_brokers_websocket_listener() {
    bounded(TEST_LIMIT, "websocket health check", async {
        let mut env = Cluster::start_with_websockets(1).await;
        let proxy = TestProxy::start(&ws_yaml(&env, true, "", "")).await;
        // Servers start up; the probes must keep them up. Both backends probe the same broker (`mqtt` on its
        // MQTT port, `websocket` on its WebSocket port), so wait for several probe clients in its log.
        let probes = || env.brokers[0].client_ids_seen().iter().filter(|id| id.starts_with("mqtt-lb-probe-")).count();
        eventually(Duration::from_secs(10), || async { (probes() >= 6).then_some(()) })
            .await
            .expect("the probes connect as MQTT clients of the broker");
        let series = "mqttlb_server_up{backend=\"brokers_ws\",server=\"b0\"}";
        assert_eq!(metric(proxy.admin, series).await, 1.0, "the websocket probes succeed");

        env.brokers[0].stop();
        eventually(Duration::from_secs(10), || async { (metric(proxy.admin, series).await == 0.0).then_some(()) })
            .await
            .expect("brokers_ws/b0 goes down when its broker stops");
        // While it is down, a WSS client of that backend is refused with "server unavailable" in its CONNACK.
        let mut ws = ws_open(addr(&proxy, "wss_ws"), env.tls(), Some("mqtt")).await.unwrap();
        ws.send(binary(&connect_packet_v311("while-down"))).await.unwrap();
        let end = read_until_close(&mut ws).await;
        assert_eq!(end.binary, vec![0x20, 0x02, 0x00, 0x03], "{end:?}");
        assert_eq!(rejected(&proxy, "wss_ws", "no_server_available").await, 1.0);

        env.brokers[0].restart().await;
        wait_backend_up(&proxy, "brokers_ws", "b0").await;
        let who = ws_which_broker(addr(&proxy, "wss_ws"), env.tls(), "after-restart", Version::V5).await;
        assert_eq!(who, "b0");
        proxy.stop().await;
    })
    .await;
}

/// Messages of 1 MiB and 16 MiB each way: rumqttc puts each PUBLISH in one WebSocket message (of one frame), which
/// the proxy relays as it arrives rather than gathering it (it used to refuse any message over `max_ws_frame_size`,
/// 1 MiB by default, with close 1009), and the broker's deliveries come back in frames of one relay read each.
///
/// Through `wss` (to the brokers' MQTT port) both sizes go both ways. Through `wss_ws` (to mosquitto's own WebSocket
/// listener), 1 MiB goes both ways and 16 MiB from the client to the broker, delivered to a subscriber on `wss`:
/// mosquitto 2.0.11's WebSocket listener sends at about 40 KiB/s here (rumqttc straight to it, no proxy: 25.7 s for
/// 1 MiB), so 16 MiB from it would take minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_1_and_16_mib_pass_each_way_over_wss_to_both_backends() {
    bounded(Duration::from_secs(240), "large messages over WSS", async {
        let env = Cluster::start_with_websockets(1).await;
        let proxy = TestProxy::start(&ws_yaml(&env, false, "", "")).await;
        let payload = |size: usize| -> Vec<u8> { (0..size).map(|i| (i % 251) as u8).collect() };
        let connect = |listener: &'static str, id: &'static str, version| {
            let (addr, tls) = (addr(&proxy, listener), env.tls());
            async move {
                let mut c = WsMqtt::connect(addr, tls, id, version).await.unwrap_or_else(|e| panic!("{e}"));
                c.step = Duration::from_secs(90);
                c
            }
        };
        let mut plain = connect("wss", "large-wss", Version::V5).await;
        let mut ws = connect("wss_ws", "large-wss_ws", Version::V4).await;
        plain.subscribe("t/plain").await.unwrap();
        ws.subscribe("t/ws").await.unwrap();
        for size in [1 << 20, 16 << 20] {
            let sent = payload(size);
            plain.publish("t/plain", &sent).await.unwrap_or_else(|e| panic!("wss: publish {size} bytes: {e}"));
            let back = plain.next_publish("t/plain").await.unwrap_or_else(|e| panic!("wss: deliver {size}: {e}"));
            assert!(back == sent, "wss: {size} bytes sent, {} bytes came back (or other bytes)", back.len());
        }
        let sent = payload(1 << 20);
        ws.publish("t/ws", &sent).await.unwrap_or_else(|e| panic!("wss_ws: publish 1 MiB: {e}"));
        let back = ws.next_publish("t/ws").await.unwrap_or_else(|e| panic!("wss_ws: deliver 1 MiB: {e}"));
        assert!(back == sent, "wss_ws: 1 MiB sent, {} bytes came back (or other bytes)", back.len());
        plain.subscribe("t/from-ws").await.unwrap();
        let sent = payload(16 << 20);
        ws.publish("t/from-ws", &sent).await.unwrap_or_else(|e| panic!("wss_ws: publish 16 MiB: {e}"));
        let back = plain.next_publish("t/from-ws").await.unwrap_or_else(|e| panic!("wss: deliver 16 MiB: {e}"));
        assert!(back == sent, "16 MiB sent through wss_ws, {} bytes came through wss (or other bytes)", back.len());
        plain.disconnect().await;
        ws.disconnect().await;
        for listener in ["wss", "wss_ws"] {
            assert_eq!(rejected(&proxy, listener, "ws_frame_too_large").await, 0.0);
        }
        proxy.stop().await;
    })
    .await;
}
