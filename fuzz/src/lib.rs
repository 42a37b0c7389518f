//! The checks behind mqtt-lb's fuzz targets, and their seed corpus.
//!
//! Each `pub fn <target>(data)` is one fuzz target (`fuzz_targets/<target>.rs` only calls it): it feeds `data` to a
//! parser that meets bytes from the network (or, for `config`, from an operator's file) and panics when a property
//! that must hold for every input breaks. libFuzzer reports the panic as a crash; `-rss_limit_mb` and `-timeout`
//! (set by `scripts/fuzz.sh`) turn over-allocation and hangs into failures too.
//!
//! [`seeds`] builds the seed corpus of each target from real encoders: rumqttc's MQTT 3.1.1 and 5 CONNECT encoders,
//! mqtt-lb's own PROXY header writer, tungstenite's client handshake and frame encoder, and the configuration
//! examples. The main crate's `tests/fuzz_corpus.rs` includes this file (`#[path]`) to replay the seeds through the
//! same checks on the stable toolchain, and to write them out for `scripts/fuzz.sh`.
//!
//! # Targets
//!
//! | target | input | checks |
//! |---|---|---|
//! | `connect` | a first packet | `check_fixed_header` (minimal encodings only, prefixes decide consistently), `parse_connect` (accepted packets are consistent, exact: one byte more or less is refused), `ConnectError::connack` (a well-formed CONNACK of the client's version, or none) |
//! | `connect_differential` | a first packet | whatever `parse_connect` accepts, rumqttc's decoder (v4 or v5 by level) decodes to the same client id, level, clean flag, keep alive, user name and will |
//! | `config` | YAML text | `config::parse` returns a `Config` whose references hold and on which what `run` builds before binding (`reload::running::dry_run`) does not panic, or an error naming the file |
//! | `proxy_protocol` | bytes from a trusted balancer | `parse_v1`, `parse_v2` (what they accept is re-encoded identically), `read_header` (reads only its header, at most 16 + 1024 bytes) |
//! | `websocket` | byte 0: read size (0 = all at once); then what a client sends | `ws::check_request`, then `ws::accept` and reading the upgraded stream to its end: no more bytes out than in, bounded answers |
//!
//! # Differential: known, accepted divergences from rumqttc
//!
//! Only "mqtt-lb accepts => rumqttc decodes the same" is checked. rumqttc is less strict (it accepts non-minimal
//! lengths, set reserved flags, duplicate properties, trailing bytes...), so the converse does not hold. Where rumqttc
//! refuses what we accept, the reason must be one of these:
//! - MQTT 3.1 (`MQIsdp`, level 3): rumqttc has no 3.1 decoder; such packets are not compared.
//! - The password is Binary Data in MQTT (3.1.1 §3.1.3.5, 5 §3.1.3.6); rumqttc decodes it as a UTF-8 string and
//!   refuses a non-UTF-8 password (`TopicNotUtf8`). Accepted only when the packet carries a password.
//! - rumqttc folds an empty user name without password into "no login", so user names are compared with an empty
//!   one equal to none.

#![allow(clippy::missing_panics_doc)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mqtt_lb::config::ProxyProtocol;
use mqtt_lb::mqtt::{
    check_fixed_header, encode_remaining_length, parse_connect, Connect, ConnectError, FrameError, ProtocolVersion,
    RejectReason, MAX_REMAINING_LENGTH,
};
use mqtt_lb::proxy_protocol::{self, Received, TlsInfo};
use mqtt_lb::transport::ws::{self, UpgradePolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The names of the fuzz targets, as in `Cargo.toml` and `scripts/fuzz.sh`.
pub const TARGETS: [&str; 5] = ["connect", "connect_differential", "config", "proxy_protocol", "websocket"];

/// Runs the check of target `name` on `data`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "connect" => connect(data),
        "connect_differential" => connect_differential(data),
        "config" => config(data),
        "proxy_protocol" => proxy_protocol(data),
        "websocket" => websocket(data),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------------------------
// connect

/// The first packet: fixed header, CONNECT validation, refusal CONNACKs.
pub fn connect(data: &[u8]) {
    check_header(data);
    match parse_connect(data) {
        Ok(c) => check_accepted(data, &c),
        Err(e) => check_refused(&e),
    }
}

fn check_header(data: &[u8]) {
    match check_fixed_header(data) {
        Ok(h) => {
            assert!((2..=5).contains(&h.header_len), "header length {h:?}");
            assert!(h.remaining_length <= MAX_REMAINING_LENGTH, "{h:?}");
            assert_eq!(Some(&h.first_byte), data.first());
            let mut minimal = Vec::new();
            assert_eq!(encode_remaining_length(h.remaining_length, &mut minimal), Some(()));
            assert_eq!(data.get(1..h.header_len), Some(&minimal[..]), "only the minimal encoding is accepted");
            for cut in 0..h.header_len {
                assert!(
                    matches!(check_fixed_header(&data[..cut]), Err(FrameError::Incomplete(n)) if n >= 1),
                    "a prefix of a complete header ({cut} bytes) is incomplete"
                );
            }
        }
        Err(FrameError::Incomplete(n)) => {
            assert!(n >= 1);
            assert!(data.len() + n <= 5, "a fixed header never needs more than 5 bytes ({} + {n})", data.len());
        }
        Err(FrameError::MalformedRemainingLength) => {
            let mut longer = data.to_vec();
            longer.push(0);
            assert_eq!(check_fixed_header(&longer), Err(FrameError::MalformedRemainingLength), "malformed stays so");
        }
    }
}

/// Where the Protocol Level byte of a CONNECT is: after the fixed header and the Protocol Name.
fn level_byte(packet: &[u8], header_len: usize) -> Option<u8> {
    let name_len = packet.get(header_len..header_len + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))?;
    packet.get(header_len + 2 + name_len).copied()
}

fn check_accepted(data: &[u8], c: &Connect) {
    let h = check_fixed_header(data).expect("an accepted CONNECT has a valid fixed header");
    assert_eq!(h.first_byte, 0x10, "CONNECT with flags 0");
    assert_eq!(h.total_len(), data.len(), "exactly one packet");
    assert_eq!(level_byte(data, h.header_len), Some(c.version.level()));
    assert!(c.client_id.len() + 10 < data.len());
    match c.version {
        ProtocolVersion::V31 => assert!((1..=23).contains(&c.client_id.chars().count()), "{c:?}"),
        ProtocolVersion::V311 => assert!(c.clean_start || !c.client_id.is_empty(), "{c:?}"),
        ProtocolVersion::V5 => {}
    }
    assert!(!c.client_id.contains('\0') && !c.username.as_deref().unwrap_or_default().contains('\0'));
    if let Some(w) = &c.will {
        assert!(w.qos <= 2 && !w.topic.is_empty() && !w.topic.contains(['+', '#']), "{w:?}");
    }
    // One byte more or less than the Remaining Length says is refused.
    let mut longer = data.to_vec();
    longer.push(0);
    assert_eq!(parse_connect(&longer).map_err(|e| e.reason), Err(RejectReason::TrailingBytes));
    assert_eq!(parse_connect(&data[..data.len() - 1]).map_err(|e| e.reason), Err(RejectReason::Truncated));
    // The same packet with a non-minimal Remaining Length is malformed [MQTT-1.5.5-1].
    if h.header_len < 5 {
        let mut padded = data[..h.header_len].to_vec();
        if let Some(last) = padded.last_mut() {
            *last |= 0x80;
        }
        padded.push(0x00);
        padded.extend_from_slice(&data[h.header_len..]);
        assert_eq!(parse_connect(&padded).map_err(|e| e.reason), Err(RejectReason::MalformedLength));
    }
}

fn check_refused(e: &ConnectError) {
    assert!(RejectReason::ALL.contains(&e.reason));
    assert!(!e.reason.label().is_empty() && !e.detail.is_empty());
    let Some(ack) = e.connack() else { return };
    let h = check_fixed_header(&ack).expect("a CONNACK has a valid fixed header");
    assert_eq!((h.packet_type(), h.flags(), h.total_len()), (2, 0, ack.len()), "{ack:02x?}");
    assert_eq!(ack.get(2), Some(&0), "session present is 0 on a refusal");
    let code = ack.get(3).copied().unwrap_or_default();
    match e.version {
        Some(ProtocolVersion::V5) => assert!(ack.len() == 5 && code >= 0x80, "{e:?}: {ack:02x?}"),
        Some(_) => assert!(ack.len() == 4 && (1..=5).contains(&code), "{e:?}: {ack:02x?}"),
        None => assert_eq!((e.reason, ack), (RejectReason::UnsupportedVersion, vec![0x20, 0x02, 0x00, 0x01])),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// connect_differential

/// What both decoders must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    level: u8,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    username: String,
    /// (topic, qos, retain)
    will: Option<(Vec<u8>, u8, bool)>,
}

impl Decoded {
    fn ours(c: &Connect) -> Decoded {
        Decoded {
            level: c.version.level(),
            client_id: c.client_id.clone(),
            clean: c.clean_start,
            keep_alive: c.keep_alive,
            username: c.username.clone().unwrap_or_default(),
            will: c.will.as_ref().map(|w| (w.topic.as_bytes().to_vec(), w.qos, w.retain)),
        }
    }
}

/// Differential: what our validator accepts, rumqttc's decoder must decode to the same values.
pub fn connect_differential(data: &[u8]) {
    let Ok(ours) = parse_connect(data) else { return };
    let expected = Decoded::ours(&ours);
    let mut buf = BytesMut::from(data);
    let theirs: Result<Decoded, String> = match ours.version {
        // rumqttc has no MQTT 3.1 decoder.
        ProtocolVersion::V31 => return,
        ProtocolVersion::V311 => {
            use rumqttc::mqttbytes::v4::Packet;
            match Packet::read(&mut buf, usize::MAX) {
                Ok(Packet::Connect(c)) => Ok(Decoded {
                    level: match c.protocol {
                        rumqttc::mqttbytes::Protocol::V4 => 4,
                        rumqttc::mqttbytes::Protocol::V5 => 5,
                    },
                    client_id: c.client_id,
                    clean: c.clean_session,
                    keep_alive: c.keep_alive,
                    username: c.login.map(|l| l.username).unwrap_or_default(),
                    will: c.last_will.map(|w| (w.topic.into_bytes(), w.qos as u8, w.retain)),
                }),
                Ok(other) => Err(format!("decoded as {other:?}")),
                Err(rumqttc::mqttbytes::Error::TopicNotUtf8) if ours.has_password => return,
                Err(e) => Err(format!("{e:?}")),
            }
        }
        ProtocolVersion::V5 => {
            use rumqttc::v5::mqttbytes::v5::Packet;
            match Packet::read(&mut buf, None) {
                Ok(Packet::Connect(c, will, login)) => Ok(Decoded {
                    level: 5,
                    client_id: c.client_id,
                    clean: c.clean_start,
                    keep_alive: c.keep_alive,
                    username: login.map(|l| l.username).unwrap_or_default(),
                    will: will.map(|w| (w.topic.to_vec(), w.qos as u8, w.retain)),
                }),
                Ok(other) => Err(format!("decoded as {other:?}")),
                Err(rumqttc::v5::mqttbytes::Error::TopicNotUtf8) if ours.has_password => return,
                Err(e) => Err(format!("{e:?}")),
            }
        }
    };
    match theirs {
        Ok(theirs) => assert_eq!(theirs, expected, "rumqttc decodes {data:02x?} differently"),
        Err(e) => panic!("mqtt-lb accepts {ours:?} ({data:02x?}) but rumqttc refuses it: {e}"),
    }
    assert!(buf.is_empty(), "rumqttc left {} bytes of an exact packet", buf.len());
}

// ---------------------------------------------------------------------------------------------------------------
// config

/// Where relative paths of a fuzzed configuration point: nowhere, so every TLS file simply fails to load.
const FUZZ_ORIGIN: &str = "/nonexistent-mqtt-lb-fuzz/config.yaml";

/// The configuration loader on arbitrary text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Devices and FIFOs are refused unread (config::named_file); kernel files are left alone all the same.
    if ["/proc/", "/sys/"].iter().any(|p| text.contains(p)) {
        return;
    }
    match mqtt_lb::config::parse(text, Path::new(FUZZ_ORIGIN)) {
        Ok(c) => {
            assert!(!c.backends.is_empty());
            for l in &c.listeners {
                assert!(l.backend.is_some() || !l.routes.is_empty(), "listener {} goes nowhere", l.name);
                for backend in l.backend.iter().chain(l.routes.iter().map(|r| &r.backend)) {
                    assert!(*backend < c.backends.len(), "listener {} refers to backend {backend}", l.name);
                }
            }
            for b in &c.backends {
                assert!(!b.servers.is_empty(), "backend {} without servers", b.name);
                assert!(!b.health.interval.is_zero() && !b.health.timeout.is_zero() && !b.connect_timeout.is_zero());
                assert!(b.health.rise >= 1 && b.health.fall >= 1);
            }
            assert!((16..=256 << 20).contains(&c.limits.max_connect_size));
            assert!(c.limits.max_ws_frame_size >= c.limits.max_connect_size);
            // What `run` builds before binding must not panic on anything `check` accepts.
            mqtt_lb::reload::running::dry_run(&c);
        }
        Err(e) => {
            assert!(e.to_string().contains("nonexistent-mqtt-lb-fuzz"), "the error names the file: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// proxy_protocol

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY protocol v1 and v2 parsers, and the header reader.
pub fn proxy_protocol(data: &[u8]) {
    for (kind, parsed) in
        [(ProxyProtocol::V1, proxy_protocol::parse_v1(data)), (ProxyProtocol::V2, proxy_protocol::parse_v2(data))]
    {
        if let Ok(Received { source: Some(s), destination: Some(d) }) = parsed {
            let again = proxy_protocol::header(kind, s, d);
            let reparsed = if kind == ProxyProtocol::V1 {
                proxy_protocol::parse_v1(&again)
            } else {
                proxy_protocol::parse_v2(&again)
            };
            assert_eq!(reparsed, parsed, "{kind:?} header re-encoded as {again:02x?}");
        }
    }
    let mut rest = data;
    let got = block_on(proxy_protocol::read_header(&mut rest, Duration::from_secs(1)));
    let used = data.len() - rest.len();
    assert!(used <= 16 + 1024, "read {used} bytes for a header");
    match got {
        Ok(received) => {
            let head = &data[..used];
            let direct = if head.starts_with(V2_SIGNATURE) {
                proxy_protocol::parse_v2(head)
            } else {
                assert!(head.len() <= 107 && head.ends_with(b"\r\n"), "v1 header {head:02x?}");
                proxy_protocol::parse_v1(head)
            };
            assert_eq!(direct, Ok(received), "read_header and the parser disagree on {head:02x?}");
        }
        Err(e) => assert!(!e.label().is_empty()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// websocket

/// The upgrade policy of the fuzzed listener.
pub fn fuzz_policy() -> UpgradePolicy {
    UpgradePolicy {
        path: "/mqtt".into(),
        allowed_origins: vec!["https://example.org".into()],
        timeout: Duration::from_secs(2),
    }
}

/// The client side of a WebSocket listener: upgrade request, then frames. Byte 0 is the size of each read the
/// server gets (0: everything at once), so the fuzzer also explores how the stream is cut.
pub fn websocket(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let policy = fuzz_policy();
    if let Ok(accepted) = ws::check_request(stream, &policy) {
        assert_eq!(accepted.accept_key.len(), 28, "base64 of a SHA-1");
        assert!(["mqtt", "mqttv3.1"].iter().any(|p| p.eq_ignore_ascii_case(&accepted.protocol)));
    }
    let io = Scripted::new(stream.to_vec(), usize::from(chunk));
    let written = Arc::clone(&io.written);
    let read = block_on(async {
        let mut ws = match ws::accept(io, &policy).await {
            Ok(ws) => ws,
            Err(failure) => {
                let reason = failure.label();
                assert!(reason.starts_with("ws_") || reason == "client_error", "reason {reason}");
                return 0;
            }
        };
        let mut total = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match ws.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        let _ = ws.shutdown().await;
        ws.linger().await;
        total
    });
    assert!(read <= stream.len(), "{read} payload bytes out of {} bytes in", stream.len());
    let written = *written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(written <= stream.len() + 4096, "answered {written} bytes to {} bytes", stream.len());
}

/// An in-memory connection: reads return the script in pieces of `chunk` bytes (0: as much as asked), then EOF;
/// writes are counted and dropped. Never pending.
pub struct Scripted {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    pub written: Arc<Mutex<usize>>,
}

impl Scripted {
    pub fn new(data: Vec<u8>, chunk: usize) -> Scripted {
        Scripted { data, pos: 0, chunk, written: Arc::new(Mutex::new(0)) }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.data.get(this.pos..).unwrap_or_default();
        let mut n = left.len().min(buf.remaining());
        if this.chunk > 0 {
            n = n.min(this.chunk);
        }
        buf.put_slice(&left[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        *self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future on this thread's current-thread runtime (with timers: the parsers have deadlines).
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

// ---------------------------------------------------------------------------------------------------------------
// Seed corpus.

/// The seed inputs of `target`, from real encoders.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "connect" | "connect_differential" => connect_seeds(),
        "config" => config_seeds(),
        "proxy_protocol" => proxy_seeds(),
        "websocket" => websocket_seeds(),
        _ => Vec::new(),
    }
}

/// CONNECTs as rumqttc writes them (3.1.1 and 5, with and without will, login and properties), and MQTT 3.1 ones
/// made from them (rumqttc cannot write 3.1: protocol name and level swapped by hand).
pub fn connect_seeds() -> Vec<Vec<u8>> {
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5;
    let mut out = Vec::new();
    let ids = ["", "client-1", "wis2-node/ü-ñ", &"x".repeat(300)];
    for (i, id) in ids.iter().enumerate() {
        let mut c = v4::Connect::new(*id);
        c.keep_alive = 60;
        if i % 2 == 1 {
            c.set_login("user", "secret");
            c.last_will = Some(v4::LastWill::new("clients/gone", b"bye".to_vec(), rumqttc::QoS::AtLeastOnce, i == 3));
        }
        let mut b = BytesMut::new();
        c.write(&mut b).expect("rumqttc encodes a 3.1.1 CONNECT");
        out.push(b.to_vec());
    }
    let mut persistent = v4::Connect::new("sticky");
    persistent.clean_session = false;
    let mut b = BytesMut::new();
    persistent.write(&mut b).expect("rumqttc encodes a 3.1.1 CONNECT");
    out.push(b.to_vec());

    for (i, id) in ids.iter().enumerate() {
        let props = v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            max_packet_size: Some(1 << 20),
            topic_alias_max: Some(10),
            request_response_info: Some(1),
            request_problem_info: Some(0),
            user_properties: vec![("site".into(), "de-dwd".into())],
            authentication_method: (i == 2).then(|| "SCRAM-SHA-1".to_owned()),
            authentication_data: (i == 2).then(|| bytes::Bytes::from_static(b"\x01\x02")),
        };
        let c =
            v5::Connect { keep_alive: 30, client_id: (*id).to_owned(), clean_start: i != 1, properties: Some(props) };
        let will = (i % 2 == 1).then(|| {
            let wp = v5::LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(bytes::Bytes::from_static(b"42")),
                user_properties: vec![("k".into(), "v".into())],
            };
            v5::LastWill::new("clients/gone", "bye", rumqttc::v5::mqttbytes::QoS::ExactlyOnce, true, Some(wp))
        });
        let login = (i >= 2).then(|| v5::Login::new("user", "secret"));
        let mut b = BytesMut::new();
        c.write(&will, &login, &mut b).expect("rumqttc encodes a 5 CONNECT");
        out.push(b.to_vec());
        let bare = v5::Connect { keep_alive: 0, client_id: (*id).to_owned(), clean_start: true, properties: None };
        let mut b = BytesMut::new();
        bare.write(&None, &None, &mut b).expect("rumqttc encodes a 5 CONNECT");
        out.push(b.to_vec());
    }

    // MQTT 3.1: "MQIsdp", level 3, a 1..23 character id.
    for (id, login) in [("c31", false), ("paho-3.1-client", true)] {
        let mut c = v4::Connect::new(id);
        if login {
            c.set_login("user", "pw");
        }
        let mut b = BytesMut::new();
        c.write(&mut b).expect("rumqttc encodes a 3.1.1 CONNECT");
        out.push(as_mqtt31(&b));
    }
    out
}

/// A 3.1.1 CONNECT (short, one-byte remaining length) turned into its 3.1 form.
fn as_mqtt31(v311: &[u8]) -> Vec<u8> {
    let body = &v311[2 + 6 + 1..]; // fixed header (2), "\0\x04MQTT" (6), level (1)
    let mut inner = b"\x00\x06MQIsdp\x03".to_vec();
    inner.extend_from_slice(body);
    let mut out = vec![0x10];
    encode_remaining_length(inner.len(), &mut out).expect("small");
    out.extend_from_slice(&inner);
    out
}

/// The shipped example configuration, and smaller ones without TLS (so the fuzzer gets past the file loads) for
/// each listener protocol and backend option.
pub fn config_seeds() -> Vec<Vec<u8>> {
    let plain = "listeners:\n  - name: mqtt\n    bind: \"127.0.0.1:1883\"\n    protocol: mqtt\n    backend: brokers\n\
                 backends:\n  - name: brokers\n    balance: client-id\n    health: { check: mqtt, interval: 2s, timeout: 1s, rise: 2, fall: 3 }\n\
                 \x20   servers:\n      - { name: b1, address: \"127.0.0.1:1884\", weight: 1 }\n      - { name: b2, address: \"broker.example.org:1883\", weight: 2 }\n\
                 admin: { bind: \"127.0.0.1:9100\" }\n\
                 limits: { connect_timeout: 10s, max_connect_size: 64KiB, max_connections: 100000, max_connections_per_ip: 0 }\n";
    let ws = "listeners:\n  - name: wss\n    bind: \"[::1]:8443\"\n    protocol: websocket\n    path: /mqtt\n    allowed_origins: [\"https://example.org\"]\n    backend: ws\n\
              \x20 - name: dash\n    bind: \"127.0.0.1:18083\"\n    protocol: tcp\n    allowed_sources: [\"10.0.0.0/8\", \"::1/128\"]\n    trusted_proxies: [\"127.0.0.1/32\"]\n    backend: dash\n\
              backends:\n  - name: dash\n    protocol: tcp\n    balance: round-robin\n    servers: [{ name: d1, address: \"127.0.0.1:18084\" }]\n  - name: ws\n    protocol: websocket\n    path: /mqtt\n    balance: least-conn\n    proxy_protocol: v2\n    on_down: close\n    connect_timeout: 500ms\n\
              \x20   servers: [{ name: w1, address: \"127.0.0.1:8083\" }]\n\
              shutdown: { drain_timeout: 30s, disconnect: use-another-server }\nlog: { client_id: false }\n\
              limits: { max_ws_frame_size: 1MiB, idle_timeout: 1h, max_connection_rate_per_ip: 10, connection_rate_burst: 20 }\n";
    let tls = "listeners:\n  - name: mqtts\n    bind: \"0.0.0.0:8883\"\n    protocol: mqtt\n    tls: { cert: certs/server.crt, key: certs/server.key, client_ca: ca.pem, require_identity: client-id }\n    backend: b\n\
               backends: [{ name: b, servers: [{ name: s, address: \"s:1\" }] }]\n";
    vec![include_str!("../../config.yaml").as_bytes().to_vec(), plain.into(), ws.into(), tls.into()]
}

/// PROXY headers as mqtt-lb writes them to brokers (v1, v2, IPv4, IPv6, with TLS TLVs), the LOCAL and UNKNOWN
/// forms, each followed by the start of what a client sends next.
pub fn proxy_seeds() -> Vec<Vec<u8>> {
    let v4s: SocketAddr = "192.0.2.1:5000".parse().expect("address");
    let v4d: SocketAddr = "198.51.100.2:8883".parse().expect("address");
    let v6s: SocketAddr = "[2001:db8::7]:5001".parse().expect("address");
    let v6d: SocketAddr = "[2001:db8::1]:8883".parse().expect("address");
    let tls = TlsInfo { version: "TLSv1_3".into(), common_name: Some("sensor-1".into()) };
    let after = connect_seeds().into_iter().nth(1).unwrap_or_default();
    let mut out = Vec::new();
    for kind in [ProxyProtocol::V1, ProxyProtocol::V2] {
        for (s, d) in [(v4s, v4d), (v6s, v6d), (v4s, v6d)] {
            out.push(proxy_protocol::header(kind, s, d));
            let mut with_tls = proxy_protocol::header_with_tls(kind, s, d, Some(&tls));
            with_tls.extend_from_slice(&after);
            out.push(with_tls);
        }
    }
    out.push(b"PROXY UNKNOWN\r\n".to_vec());
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out.push(local);
    out
}

/// What WebSocket clients send: tungstenite's client handshake (as rumqttc's `websocket` transport sends it), then
/// masked binary frames carrying rumqttc CONNECTs, whole, split over a continuation frame, with a ping between, and a
/// close. Byte 0 of each seed is the read size.
pub fn websocket_seeds() -> Vec<Vec<u8>> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let frame = |payload: &[u8], opcode: OpCode, fin: bool| {
        let mut f = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
            OpCode::Control(_) => Frame::close(None),
            OpCode::Data(_) => Frame::message(payload.to_vec(), opcode, fin),
        };
        f.header_mut().mask = Some([0x12, 0x34, 0x56, 0x78]);
        let mut out = Vec::new();
        f.format(&mut out).expect("format a frame");
        out
    };
    let request = client_handshake("/mqtt", "mqtt");
    let connects = connect_seeds();
    let connect = connects.get(1).cloned().unwrap_or_default();
    let (a, b) = connect.split_at(connect.len() / 2);
    let mut out = Vec::new();
    for (read_size, body) in [
        (0u8, [frame(&connect, OpCode::Data(Data::Binary), true)].concat()),
        (
            7,
            [
                frame(a, OpCode::Data(Data::Binary), false),
                frame(b"ping", OpCode::Control(Control::Ping), true),
                frame(b, OpCode::Data(Data::Continue), true),
                frame(b"", OpCode::Control(Control::Close), true),
            ]
            .concat(),
        ),
        (
            1,
            [frame(&connects[6], OpCode::Data(Data::Binary), true), frame(b"text", OpCode::Data(Data::Text), true)]
                .concat(),
        ),
    ] {
        let mut seed = vec![read_size];
        seed.extend_from_slice(&request);
        seed.extend_from_slice(&body);
        out.push(seed);
    }
    // Refused upgrades: another path, no subprotocol.
    for request in [client_handshake("/other", "mqtt"), client_handshake("/mqtt", "chat")] {
        let mut seed = vec![0u8];
        seed.extend_from_slice(&request);
        out.push(seed);
    }
    out
}

/// The upgrade request tungstenite's client writes for `path` offering `subprotocol`.
pub fn client_handshake(path: &str, subprotocol: &str) -> Vec<u8> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request =
        format!("ws://127.0.0.1:8083{path}").into_client_request().expect("a WebSocket request for a literal URL");
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(subprotocol).expect("a header value"));
    // The client writes its request, then reads an answer that never comes (EOF): the request is what it wrote.
    let io = Recorder::default();
    let written = Arc::clone(&io.written);
    let _ = block_on(tokio_tungstenite::client_async(request, io));
    let bytes = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    bytes
}

/// Records what is written; reads are EOF.
#[derive(Default)]
struct Recorder {
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, _buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
