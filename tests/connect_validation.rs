//! Malformed first packets over real TLS against a real broker: each gets the expected CONNACK (or a bare close),
//! is counted under its reason, and never reaches the broker. Also the first-packet limits: a client that sends
//! nothing is closed at `connect_timeout`, one that declares or sends more than `max_connect_size` is closed early.

mod common;
mod tools;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A UTF-8 string or binary field: u16 length + bytes.
fn s(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// A packet with a correctly encoded remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT body: protocol name, level, flags, keep alive 60, then `rest` (properties and payload).
fn connect(name: &[u8], level: u8, flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    let mut body = s(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0, 60]);
    for part in rest {
        body.extend_from_slice(part);
    }
    packet(0x10, &body)
}

fn v311(flags: u8, rest: &[&[u8]]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, rest)
}

/// v5 CONNECT with the given property block (without its length) and payload.
fn v5(flags: u8, props: &[u8], payload: &[&[u8]]) -> Vec<u8> {
    let mut rest: Vec<&[u8]> = Vec::new();
    let len = [props.len() as u8];
    rest.push(&len);
    rest.push(props);
    rest.extend_from_slice(payload);
    connect(b"MQTT", 5, flags, &rest)
}

const CLEAN: u8 = 0x02;
const V3_ID_REJECTED: &[u8] = &[0x20, 0x02, 0x00, 0x02];
const V3_BAD_VERSION: &[u8] = &[0x20, 0x02, 0x00, 0x01];
const V5_MALFORMED: &[u8] = &[0x20, 0x03, 0x00, 0x81, 0x00];
const V5_PROTOCOL_ERROR: &[u8] = &[0x20, 0x03, 0x00, 0x82, 0x00];
const V5_PACKET_TOO_LARGE: &[u8] = &[0x20, 0x03, 0x00, 0x95, 0x00];
const V5_PAYLOAD_FORMAT_INVALID: &[u8] = &[0x20, 0x03, 0x00, 0x99, 0x00];
const CLOSE: &[u8] = &[];

/// The first bytes of a CONNECT that declares 64 KiB: fixed header, protocol name and level.
fn too_large_start(name: &[u8], level: u8) -> Vec<u8> {
    let mut p = vec![0x10, 0x80, 0x80, 0x04];
    p.extend_from_slice(&s(name));
    p.push(level);
    p
}

struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    answer: &'static [u8],
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let id = s(b"client-1");
    let will_topic = s(b"w/t");
    let will_payload = s(b"bye");
    let user = s(b"user");
    let pass = s(b"secret");
    let c = |what, bytes, answer, reason| Case { what, bytes, answer, reason };
    vec![
        c("PUBLISH first", packet(0x30, &[0, 1, b't', b'x']), CLOSE, "not_connect"),
        c("PINGREQ first", vec![0xC0, 0x00], CLOSE, "not_connect"),
        c("HTTP request on the MQTT port", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), CLOSE, "not_connect"),
        c(
            "CONNECT with header flags 0010",
            {
                let mut p = v311(CLEAN, &[&id]);
                p[0] = 0x12;
                p
            },
            CLOSE,
            "bad_header_flags",
        ),
        c("remaining length in 5 bytes", vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], CLOSE, "malformed_length"),
        c(
            "remaining length not minimal",
            {
                let body = &v311(CLEAN, &[&id])[2..];
                let mut p = vec![0x10, 0x80 | body.len() as u8, 0x00];
                p.extend_from_slice(body);
                p
            },
            CLOSE,
            "malformed_length",
        ),
        c("protocol name MQTX", connect(b"MQTX", 4, CLEAN, &[&id]), CLOSE, "bad_protocol_name"),
        c("MQIsdp with level 4", connect(b"MQIsdp", 4, CLEAN, &[&id]), CLOSE, "bad_protocol_name"),
        c("MQTT with level 3", connect(b"MQTT", 3, CLEAN, &[&id]), CLOSE, "bad_protocol_name"),
        c("protocol level 6", connect(b"MQTT", 6, CLEAN, &[&id]), V3_BAD_VERSION, "unsupported_version"),
        c("3.1.1 reserved flag set", v311(CLEAN | 0x01, &[&id]), CLOSE, "reserved_flag"),
        c("5 reserved flag set", v5(CLEAN | 0x01, &[], &[&id]), V5_MALFORMED, "reserved_flag"),
        c("will QoS 3", v311(CLEAN | 0x04 | 0x18, &[&id, &will_topic, &will_payload]), CLOSE, "bad_will_flags"),
        c("will retain without will flag", v311(CLEAN | 0x20, &[&id]), CLOSE, "bad_will_flags"),
        c("will QoS without will flag (v5)", v5(CLEAN | 0x08, &[], &[&id]), V5_MALFORMED, "bad_will_flags"),
        c("password without user name (3.1.1)", v311(CLEAN | 0x40, &[&id, &pass]), CLOSE, "bad_credential_flags"),
        c("client id not UTF-8", v311(CLEAN, &[&s(&[0xC3, 0x28])]), CLOSE, "bad_utf8"),
        c("client id with U+0000", v311(CLEAN, &[&s(b"a\0b")]), CLOSE, "bad_utf8"),
        c("user name not UTF-8", v311(CLEAN | 0x80, &[&id, &s(&[0xFF])]), CLOSE, "bad_utf8"),
        c("3.1.1 empty client id without clean session", v311(0x00, &[&s(b"")]), V3_ID_REJECTED, "bad_client_id"),
        c("3.1 empty client id", connect(b"MQIsdp", 3, CLEAN, &[&s(b"")]), V3_ID_REJECTED, "bad_client_id"),
        c("will topic with #", v311(CLEAN | 0x04, &[&id, &s(b"a/#"), &will_payload]), CLOSE, "bad_will_topic"),
        c(
            "v5 will topic with +",
            v5(CLEAN | 0x04, &[], &[&id, &[0], &s(b"a/+"), &will_payload]),
            V5_PROTOCOL_ERROR,
            "bad_will_topic",
        ),
        c("v5 unknown property 0x7F", v5(CLEAN, &[0x7F, 0], &[&id]), V5_MALFORMED, "bad_properties"),
        c(
            "v5 session expiry twice",
            v5(CLEAN, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &[&id]),
            V5_MALFORMED,
            "bad_properties",
        ),
        c("v5 receive maximum 0", v5(CLEAN, &[0x21, 0, 0], &[&id]), V5_MALFORMED, "bad_properties"),
        c(
            "v5 authentication data without method",
            v5(CLEAN, &[0x16, 0, 1, 0xAA], &[&id]),
            V5_MALFORMED,
            "bad_properties",
        ),
        c(
            "v5 property value cut off by the block end",
            v5(CLEAN, &[0x11, 0, 0], &[&id]),
            V5_MALFORMED,
            "bad_properties",
        ),
        c(
            "v5 unknown will property",
            v5(CLEAN | 0x04, &[], &[&id, &[2, 0x7F, 0], &will_topic, &will_payload]),
            V5_MALFORMED,
            "bad_will_properties",
        ),
        c("v5 user property not UTF-8", v5(CLEAN, &[0x26, 0, 1, 0xFF, 0, 1, b'v'], &[&id]), V5_MALFORMED, "bad_utf8"),
        c(
            "v5 empty client id is fine but a bad id length is not",
            v5(CLEAN, &[], &[&[0x00, 0x09, b'a']]),
            V5_MALFORMED,
            "truncated",
        ),
        c("3.1.1 client id length past the end", v311(CLEAN, &[&[0x00, 0x64, b'a', b'b']]), CLOSE, "truncated"),
        c(
            "bytes left over inside the packet",
            v311(CLEAN | 0x80 | 0x40, &[&id, &user, &pass, &[0xAB, 0xCD]]),
            CLOSE,
            "trailing_bytes",
        ),
        c("v5 bytes left over inside the packet", v5(CLEAN, &[], &[&id, &[0x01]]), V5_MALFORMED, "trailing_bytes"),
        c(
            "v5 will payload not UTF-8 though its format indicator says so",
            v5(CLEAN | 0x04, &[], &[&id, &[2, 0x01, 0x01], &will_topic, &s(&[0xC3, 0x28])]),
            V5_PAYLOAD_FORMAT_INVALID,
            "bad_will_payload",
        ),
        c("declared size over max_connect_size", vec![0x10, 0xFF, 0xFF, 0x03], CLOSE, "connect_too_large"),
        c("3.1.1 declared size over max_connect_size", too_large_start(b"MQTT", 4), CLOSE, "connect_too_large"),
        c("3.1 declared size over max_connect_size", too_large_start(b"MQIsdp", 3), CLOSE, "connect_too_large"),
        c(
            "v5 declared size over max_connect_size",
            too_large_start(b"MQTT", 5),
            V5_PACKET_TOO_LARGE,
            "connect_too_large",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connects_are_refused_counted_and_never_reach_a_broker() {
    bounded(Duration::from_secs(60), "malformed CONNECT table", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        // No probes: every connection the broker sees from here on comes from a relayed client.
        let yaml = yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits("max_connect_size: 4KiB").build();
        let proxy = TestProxy::start(&yaml).await;
        let tls = pki.client_config();
        let seen_before = broker.connections_seen();

        let cases = cases();
        assert!(cases.len() >= 25, "at least 25 distinct defects");
        for case in &cases {
            let series = format!("mqttlb_connections_rejected_total{{listener=\"mqtts\",reason=\"{}\"}}", case.reason);
            let before = metric(proxy.admin, &series).await;
            let answer = tls_exchange(proxy.mqtts, tls.clone(), &case.bytes, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", case.what));
            assert_eq!(answer, case.answer, "{}: answer", case.what);
            // The refusal is counted before the connection is closed.
            assert_eq!(metric(proxy.admin, &series).await, before + 1.0, "{}: {series}", case.what);
        }
        // The broker saw none of them.
        assert_eq!(broker.connections_seen(), seen_before, "a refused client reached the broker:\n{}", broker.log());

        // Positive control: a valid CONNECT through the same proxy does reach the broker and is answered by it.
        let answer = {
            let mut s = tls_connect(proxy.mqtts, tls.clone()).await.expect("TLS connect");
            s.write_all(&connect_packet_v311("control-client")).await.expect("write");
            let mut connack = [0u8; 4];
            s.read_exact(&mut connack).await.expect("CONNACK from the broker");
            connack
        };
        assert_eq!(answer, [0x20, 0x02, 0x00, 0x00]);
        assert!(eventually(Duration::from_secs(5), || async {
            broker.client_ids_seen().iter().any(|id| id == "control-client").then_some(())
        })
        .await
        .is_some());
        assert_eq!(broker.connections_seen(), seen_before + 1);
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_at_connect_timeout() {
    bounded(Duration::from_secs(30), "connect timeout", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let yaml = yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits("connect_timeout: 700ms").build();
        let proxy = TestProxy::start(&yaml).await;
        let tls = pki.client_config();

        // TLS completes, then the client sends nothing; a second client sends half a CONNECT and stalls.
        let start = tokio::time::Instant::now();
        let mut silent = tls_connect(proxy.mqtts, tls.clone()).await.expect("TLS connect");
        let mut partial = tls_connect(proxy.mqtts, tls.clone()).await.expect("TLS connect");
        let half = connect_packet_v311("slow-client");
        partial.write_all(&half[..half.len() / 2]).await.expect("write half");
        let mut buf = [0u8; 16];
        let n = silent.read(&mut buf).await.unwrap_or(0);
        let elapsed = start.elapsed();
        assert_eq!(n, 0, "closed without an answer");
        assert!(elapsed >= Duration::from_millis(650), "closed too early: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "closed too late: {elapsed:?}");
        assert_eq!(partial.read(&mut buf).await.unwrap_or(0), 0, "the half-CONNECT client is closed too");
        let timeouts = eventually(Duration::from_secs(2), || async {
            let v =
                metric(proxy.admin, "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"connect_timeout\"}")
                    .await;
            (v == 2.0).then_some(v)
        })
        .await;
        assert_eq!(timeouts, Some(2.0));
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_connect_is_closed_without_buffering_it() {
    bounded(Duration::from_secs(30), "max_connect_size", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let yaml = yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits("max_connect_size: 1KiB").build();
        let proxy = TestProxy::start(&yaml).await;
        let seen_before = broker.connections_seen();

        // A CONNECT that honestly declares 8 KiB: refused as soon as the fixed header is read; MQTT 5 has a code
        // to say why (0x95 packet too large), 3.1.1 does not.
        let big = v311(CLEAN | 0x80, &[&s(b"id"), &s(&[b'u'; 8000])]);
        let answer = tls_exchange(proxy.mqtts, pki.client_config(), &big, Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Ok(&[][..]));
        let big5 = v5(CLEAN | 0x80, &[], &[&s(b"id"), &s(&[b'u'; 8000])]);
        let answer = tls_exchange(proxy.mqtts, pki.client_config(), &big5, Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Ok(V5_PACKET_TOO_LARGE));

        // A client streaming endless bytes: the proxy stops reading and closes; the stream is cut, not buffered.
        let mut s = tls_connect(proxy.mqtts, pki.client_config()).await.expect("TLS connect");
        let mut header = vec![0x10, 0xFF, 0xFF, 0xFF, 0x7F];
        header.truncate(2); // starts like a CONNECT, the declared size comes byte by byte
        let mut sent = 0usize;
        let chunk = vec![0xFFu8; 4096];
        s.write_all(&header).await.expect("write header");
        let write_result = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                s.write_all(&chunk).await?;
                sent += chunk.len();
                if sent > 64 * 1024 * 1024 {
                    return Ok::<(), std::io::Error>(());
                }
            }
        })
        .await;
        assert!(
            matches!(write_result, Ok(Err(_))),
            "the proxy did not close a never-ending first packet (sent {sent} bytes)"
        );
        assert!(sent < 16 * 1024 * 1024, "the proxy swallowed {sent} bytes before closing");
        let refused =
            metric(proxy.admin, "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"connect_too_large\"}")
                .await
                + metric(
                    proxy.admin,
                    "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"malformed_length\"}",
                )
                .await;
        assert!(refused >= 2.0, "both refusals counted: {refused}");
        assert_eq!(broker.connections_seen(), seen_before, "nothing reached the broker");
        proxy.stop().await;
    })
    .await;
}

/// `mosquitto_pub -V mqttv31 -i <id>` through the proxy: (exit status success, stderr).
async fn mosquitto_pub_v31(pki: &TestPki, port: u16, client_id: &str) -> (bool, String) {
    let bin = tools::mosquitto_pub().expect("checked by the caller");
    let out = tokio::process::Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&pki.ca)
        .args(["-V", "mqttv31", "-i", client_id, "-t", "v31/long-id", "-m", "hello"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run mosquitto_pub");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt31_client_ids_over_23_characters_pass_unless_strict() {
    if tools::mosquitto_pub().is_none() {
        return;
    }
    bounded(Duration::from_secs(30), "3.1 long client ids", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let long_id = "a-24-character-client-id";
        assert_eq!(long_id.len(), 24);

        // Default: accepted, as the broker behind accepts it.
        let proxy = TestProxy::start(&yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).build()).await;
        let (ok, stderr) = mosquitto_pub_v31(&pki, proxy.mqtts.port(), long_id).await;
        assert!(ok, "mosquitto_pub -V mqttv31 -i {long_id}: {stderr}");
        assert!(broker.client_ids_seen().iter().any(|id| id == long_id), "the broker saw it:\n{}", broker.log());
        proxy.stop().await;

        // limits.strict_v31_client_id: refused with 0x02 (identifier rejected), counted, never at the broker.
        let yaml = yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits("strict_v31_client_id: true");
        let proxy = TestProxy::start(&yaml.build()).await;
        let seen = broker.connections_seen();
        let (ok, stderr) = mosquitto_pub_v31(&pki, proxy.mqtts.port(), long_id).await;
        assert!(!ok, "strict: refused");
        assert!(stderr.contains("identifier rejected"), "the client is told why: {stderr}");
        let series = "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"bad_client_id\"}";
        assert_eq!(metric(proxy.admin, series).await, 1.0);
        let (ok, stderr) = mosquitto_pub_v31(&pki, proxy.mqtts.port(), "a-23-character-clientid").await;
        assert!(ok, "23 characters pass when strict: {stderr}");
        assert_eq!(broker.connections_seen(), seen + 1, "only the 23-character client reached the broker");
        proxy.stop().await;
    })
    .await;
}
