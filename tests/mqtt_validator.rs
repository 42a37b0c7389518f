//! Differential check of `mqtt_lb::mqtt::parse_connect` against a real MQTT
//! client's encoder (rumqttc): every CONNECT rumqttc writes that the spec
//! allows must be accepted, and must decode to the same fields.

use bytes::BytesMut;
use mqtt_lb::mqtt::{check_fixed_header, parse_connect, Connect, FrameError, ProtocolVersion, RejectReason};
use rumqttc::mqttbytes::{v4, Protocol, QoS};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// The fields both sides must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    version: ProtocolVersion,
    client_id: String,
    clean_start: bool,
    keep_alive: u16,
    has_username: bool,
    has_password: bool,
    will: Option<(String, u8, bool)>,
}

impl Expected {
    fn of(connect: &Connect) -> Self {
        Expected {
            version: connect.version,
            client_id: connect.client_id.clone(),
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            has_username: connect.username.is_some(),
            has_password: connect.has_password,
            will: connect.will.as_ref().map(|w| (w.topic.clone(), w.qos, w.retain)),
        }
    }

    /// What a CONNECT that rumqttc wrote from these inputs must decode to (`will` as in [`WILLS`]).
    fn written(
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
        keep_alive: u16,
        login: Option<(&str, &str)>,
        will: Option<(&str, usize, u8, bool)>,
    ) -> Self {
        // rumqttc writes a login field only when it is non-empty.
        let (has_username, has_password) = login.map_or((false, false), |(u, p)| (!u.is_empty(), !p.is_empty()));
        Expected {
            version,
            client_id: client_id.to_owned(),
            clean_start,
            keep_alive,
            has_username,
            has_password,
            will: will.map(|(t, _, q, r)| (t.to_owned(), q, r)),
        }
    }
}

const CLIENT_IDS: [&str; 6] = [
    "c",
    "client-1",
    "ünïcødé-клиент-客户端-😀",
    "abcdefghijklmnopqrstuvw",
    "",
    // Long enough for a two-byte Remaining Length.
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];
const KEEP_ALIVES: [u16; 3] = [0, 60, u16::MAX];
const LOGINS: [Option<(&str, &str)>; 6] = [
    None,
    // Password only: fine in v5, refused in 3.1.1.
    Some(("", "token-only")),
    Some(("user", "pass")),
    Some(("user", "")),
    Some(("ü$er", "p\u{e4}ss")),
    // Username and password both empty: rumqttc writes neither flag.
    Some(("", "")),
];

/// (topic, payload length, qos, retain); a large payload forces a
/// three-byte Remaining Length.
const WILLS: [Option<(&str, usize, u8, bool)>; 5] = [
    None,
    Some(("status/c", 7, 0, false)),
    Some(("status/c", 0, 1, true)),
    Some(("státus/😀/c", 100, 2, false)),
    Some(("a", 20_000, 2, true)),
];

fn qos4(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> QoS5 {
    match qos {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"offline!"[i % 8]).collect()
}

/// Every combination of the v3.1.1 inputs above.
fn v4_cases() -> Vec<(Vec<u8>, Expected)> {
    let mut cases = Vec::new();
    for client_id in CLIENT_IDS {
        for clean in [true, false] {
            for keep_alive in KEEP_ALIVES {
                for will in WILLS {
                    for login in LOGINS {
                        let connect = v4::Connect {
                            protocol: Protocol::V4,
                            keep_alive,
                            client_id: client_id.to_owned(),
                            clean_session: clean,
                            last_will: will.map(|(topic, len, qos, retain)| {
                                v4::LastWill::new(topic, payload(len), qos4(qos), retain)
                            }),
                            login: login.map(|(u, p)| v4::Login::new(u, p)),
                        };
                        let mut buf = BytesMut::new();
                        connect.write(&mut buf).expect("rumqttc encodes");
                        let expected =
                            Expected::written(ProtocolVersion::V311, client_id, clean, keep_alive, login, will);
                        cases.push((buf.to_vec(), expected));
                    }
                }
            }
        }
    }
    cases
}

fn connect_properties(variant: usize) -> Option<v5::ConnectProperties> {
    let mut p = v5::ConnectProperties::new();
    match variant {
        0 => return None,
        1 => {}
        2 => {
            p.session_expiry_interval = Some(u32::MAX);
            p.receive_maximum = Some(1);
            p.max_packet_size = Some(268_435_460);
            p.topic_alias_max = Some(0);
            p.request_response_info = Some(1);
            p.request_problem_info = Some(0);
        }
        3 => {
            p.user_properties = vec![("k".into(), "v".into()), ("k".into(), "v2".into()), ("ключ".into(), "".into())];
        }
        _ => {
            p.authentication_method = Some("SCRAM-SHA-256".into());
            p.authentication_data = Some(bytes::Bytes::from_static(b"\x00\x01\xFF"));
            p.session_expiry_interval = Some(0);
        }
    }
    Some(p)
}

const CONNECT_PROPERTY_VARIANTS: usize = 5;

fn will_properties(variant: usize, payload_is_utf8: bool) -> Option<v5::LastWillProperties> {
    match variant {
        0 => None,
        1 => Some(v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
        _ => Some(v5::LastWillProperties {
            delay_interval: Some(30),
            payload_format_indicator: Some(u8::from(payload_is_utf8)),
            message_expiry_interval: Some(3600),
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/c".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\xDE\xAD")),
            user_properties: vec![("why".into(), "gone".into()), ("why".into(), "x".into())],
        }),
    }
}

const WILL_PROPERTY_VARIANTS: usize = 3;

/// Combinations of the v5 inputs; properties vary with the other fields
/// rather than as a full product, to keep the case count reasonable.
fn v5_cases() -> Vec<(Vec<u8>, Expected)> {
    let mut cases = Vec::new();
    let mut n = 0usize;
    for client_id in CLIENT_IDS {
        for clean in [true, false] {
            for keep_alive in KEEP_ALIVES {
                for will in WILLS {
                    for login in LOGINS {
                        n += 1;
                        for props in [n % CONNECT_PROPERTY_VARIANTS, (n + 2) % CONNECT_PROPERTY_VARIANTS] {
                            let connect = v5::Connect {
                                keep_alive,
                                client_id: client_id.to_owned(),
                                clean_start: clean,
                                properties: connect_properties(props),
                            };
                            let last_will = will.map(|(topic, len, qos, retain)| {
                                let props = will_properties(n % WILL_PROPERTY_VARIANTS, true);
                                v5::LastWill::new(topic, payload(len), qos5(qos), retain, props)
                            });
                            let login = login.map(|(u, p)| v5::Login::new(u, p));
                            let mut buf = BytesMut::new();
                            connect.write(&last_will, &login, &mut buf).expect("rumqttc encodes");
                            let written_login = login.as_ref().map(|l| (&*l.username, &*l.password));
                            let expected = Expected::written(
                                ProtocolVersion::V5,
                                client_id,
                                clean,
                                keep_alive,
                                written_login,
                                will,
                            );
                            cases.push((buf.to_vec(), expected));
                        }
                    }
                }
            }
        }
    }
    cases
}

/// Frames `bytes` as a reader would and validates the packet.
fn frame_and_parse(bytes: &[u8]) -> Result<Connect, RejectReason> {
    let header = check_fixed_header(bytes).expect("complete fixed header");
    assert_eq!(header.packet_type(), 1);
    assert_eq!(header.total_len(), bytes.len(), "rumqttc length matches");
    parse_connect(bytes).map_err(|e| e.reason)
}

#[test]
fn accepts_every_v311_connect_rumqttc_writes() {
    let cases = v4_cases();
    assert_eq!(cases.len(), 1080);
    let mut refused = 0;
    for (bytes, expected) in cases {
        let result = frame_and_parse(&bytes);
        // Checked in wire order: connect flags come before the client id.
        if expected.has_password && !expected.has_username {
            // Allowed by rumqttc, refused by the spec [MQTT-3.1.2-22].
            assert_eq!(result, Err(RejectReason::BadCredentialFlags), "{expected:?}");
            refused += 1;
        } else if expected.client_id.is_empty() && !expected.clean_start {
            // Allowed by rumqttc, refused by the spec [MQTT-3.1.3-8].
            assert_eq!(result, Err(RejectReason::BadClientId), "{expected:?}");
            refused += 1;
        } else {
            let connect = result.unwrap_or_else(|r| panic!("{r:?} for {expected:?}"));
            assert_eq!(Expected::of(&connect), expected);
        }
    }
    // 180 password-only cases + 90 empty-id-without-clean-session cases,
    // 15 of which are both.
    assert_eq!(refused, 180 + 90 - 15);
}

#[test]
fn accepts_every_v5_connect_rumqttc_writes() {
    let cases = v5_cases();
    assert_eq!(cases.len(), 2160);
    for (bytes, expected) in cases {
        let connect = frame_and_parse(&bytes).unwrap_or_else(|r| panic!("{r:?} for {expected:?}"));
        assert_eq!(Expected::of(&connect), expected);
    }
}

#[test]
fn v311_refusals_of_rumqttc_packets_carry_the_right_connack() {
    let connect = v4::Connect { client_id: String::new(), clean_session: false, ..v4::Connect::new("unused") };
    let mut buf = BytesMut::new();
    connect.write(&mut buf).expect("rumqttc encodes");
    let e = parse_connect(&buf).expect_err("empty id without clean session");
    assert_eq!(e.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
}

#[test]
fn v5_rejects_non_utf8_will_payload_declared_utf8() {
    let connect = v5::Connect { keep_alive: 10, client_id: "c".into(), clean_start: true, properties: None };
    let will = Some(v5::LastWill::new("status", vec![0xFF, 0xFE], QoS5::AtMostOnce, false, will_properties(2, true)));
    let mut buf = BytesMut::new();
    connect.write(&will, &None, &mut buf).expect("rumqttc encodes");
    let e = parse_connect(&buf).expect_err("payload is not UTF-8");
    assert_eq!(e.reason, RejectReason::BadWillPayload);
    assert_eq!(e.connack(), Some(vec![0x20, 0x03, 0x00, 0x99, 0x00]), "0x99 payload format invalid");
}

/// The largest packet of each version: will, login and all properties.
fn full_packets() -> Vec<Vec<u8>> {
    let mut v4_buf = BytesMut::new();
    v4::Connect {
        protocol: Protocol::V4,
        keep_alive: 30,
        client_id: "truncate-me-ü".into(),
        clean_session: true,
        last_will: Some(v4::LastWill::new("w/t", b"bye".to_vec(), QoS::AtLeastOnce, true)),
        login: Some(v4::Login::new("user", "pass")),
    }
    .write(&mut v4_buf)
    .expect("rumqttc encodes");

    let mut v5_buf = BytesMut::new();
    let mut props = connect_properties(2).expect("properties");
    props.user_properties = vec![("k".into(), "v".into())];
    props.authentication_method = Some("m".into());
    props.authentication_data = Some(bytes::Bytes::from_static(b"d"));
    let will = Some(v5::LastWill::new("w/t", b"bye".to_vec(), QoS5::ExactlyOnce, false, will_properties(2, true)));
    v5::Connect { keep_alive: 30, client_id: "truncate-me-ü".into(), clean_start: false, properties: Some(props) }
        .write(&will, &Some(v5::Login::new("user", "pass")), &mut v5_buf)
        .expect("rumqttc encodes");

    // A packet past 127 bytes, so the Remaining Length itself can be cut.
    let mut long_buf = BytesMut::new();
    v4::Connect::new("l".repeat(200)).write(&mut long_buf).expect("rumqttc encodes");

    vec![v4_buf.to_vec(), v5_buf.to_vec(), long_buf.to_vec()]
}

#[test]
fn every_truncation_is_incomplete_or_rejected() {
    for packet in full_packets() {
        assert!(parse_connect(&packet).is_ok());
        for cut in 0..packet.len() {
            let prefix = packet.get(..cut).expect("cut within packet");
            match check_fixed_header(prefix) {
                Err(FrameError::Incomplete(more)) => {
                    assert!(more >= 1);
                    assert!(cut + more <= packet.len(), "lower bound overshoots at {cut}");
                }
                Err(FrameError::MalformedRemainingLength) => panic!("malformed at {cut}"),
                Ok(header) => {
                    assert_eq!(header.total_len(), packet.len(), "header complete at {cut}");
                    let e = parse_connect(prefix).expect_err("prefix must be rejected");
                    assert_eq!(e.reason, RejectReason::Truncated, "cut at {cut}");
                }
            }
            // Parsing a prefix directly must never succeed either.
            assert!(parse_connect(prefix).is_err());
        }
    }
}

#[test]
fn connect_followed_by_more_packets_is_framed_by_its_header() {
    for packet in full_packets() {
        // CONNECT pipelined with SUBSCRIBE-ish bytes and a PINGREQ.
        let stream = [&packet[..], &[0x82, 0x01, 0x00, 0xC0, 0x00]].concat();
        let header = check_fixed_header(&stream).expect("header");
        let first = stream.get(..header.total_len()).expect("whole packet buffered");
        assert!(parse_connect(first).is_ok());
        let e = parse_connect(&stream).expect_err("more than one packet");
        assert_eq!(e.reason, RejectReason::TrailingBytes);
    }
}
