//! Property tests (proptest): the Remaining Length codec, rendezvous placement, and that the way a byte stream is cut
//! into reads never changes what is decoded (the first packet, WebSocket frames). Case counts are kept small for CI
//! (`PROPTEST_CASES` raises them for a longer local run).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use mqtt_lb::balancer::{Balancer, Pool};
use mqtt_lb::metrics::Metrics;
use mqtt_lb::mqtt::{
    check_fixed_header, decode_varint, encode_remaining_length, parse_connect, FrameError, MAX_REMAINING_LENGTH,
};
use mqtt_lb::transport::ws;
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The number of cases: `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    // No regression files: a failure prints its minimal case, which belongs in a named test.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn encode(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_remaining_length(len, &mut out).expect("a value up to the maximum encodes");
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Remaining Length (Variable Byte Integer).

/// Values spread over all four widths (a uniform draw would almost always take four bytes).
fn remaining_length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..128, 128usize..16_384, 16_384usize..2_097_152, 2_097_152usize..=MAX_REMAINING_LENGTH]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn remaining_length_round_trips_minimally(len in remaining_length(), tail in proptest::collection::vec(any::<u8>(), 0..6)) {
        let bytes = encode(len);
        let width = match len { 0..=127 => 1, 128..=16_383 => 2, 16_384..=2_097_151 => 3, _ => 4 };
        prop_assert_eq!(bytes.len(), width);
        prop_assert_eq!(decode_varint(&bytes), Ok((len, width)));
        // What follows the integer is not part of it.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&tail);
        prop_assert_eq!(decode_varint(&longer), Ok((len, width)));
        // As a fixed header: one type byte, then the integer.
        let mut header = vec![0x10];
        header.extend_from_slice(&longer);
        let h = check_fixed_header(&header).expect("a valid fixed header");
        prop_assert_eq!((h.remaining_length, h.header_len, h.total_len()), (len, 1 + width, 1 + width + len));
        // Every proper prefix asks for more.
        for cut in 0..=width {
            prop_assert!(matches!(check_fixed_header(&header[..cut]), Err(FrameError::Incomplete(_))));
        }
    }

    #[test]
    fn non_minimal_encodings_are_refused(len in remaining_length(), pad in 1usize..4) {
        // The same value with `pad` more bytes: continuation on the last byte, then zero groups [MQTT-1.5.5-1].
        let mut bytes = encode(len);
        prop_assume!(bytes.len() + pad <= 4);
        for _ in 0..pad {
            if let Some(last) = bytes.last_mut() {
                *last |= 0x80;
            }
            bytes.push(0x00);
        }
        prop_assert_eq!(decode_varint(&bytes), Err(FrameError::MalformedRemainingLength));
        let mut header = vec![0x10];
        header.extend_from_slice(&bytes);
        prop_assert_eq!(check_fixed_header(&header), Err(FrameError::MalformedRemainingLength));
    }

    #[test]
    fn five_byte_encodings_are_refused(first4 in proptest::array::uniform4(0x80u8..=0xFF), fifth in any::<u8>()) {
        let bytes = [first4[0], first4[1], first4[2], first4[3], fifth];
        prop_assert_eq!(decode_varint(&bytes), Err(FrameError::MalformedRemainingLength));
        prop_assert_eq!(decode_varint(&bytes[..4]), Err(FrameError::MalformedRemainingLength));
    }

    #[test]
    fn only_minimal_encodings_decode(bytes in proptest::collection::vec(any::<u8>(), 0..6)) {
        match decode_varint(&bytes) {
            Ok((value, used)) => {
                prop_assert!(value <= MAX_REMAINING_LENGTH);
                prop_assert_eq!(&bytes[..used], &encode(value)[..]);
            }
            Err(FrameError::Incomplete(n)) => prop_assert!(n >= 1 && bytes.len() < 4),
            Err(FrameError::MalformedRemainingLength) => {}
        }
    }

    #[test]
    fn values_above_the_maximum_do_not_encode(len in (MAX_REMAINING_LENGTH + 1)..=usize::MAX) {
        let mut out = Vec::new();
        prop_assert_eq!(encode_remaining_length(len, &mut out), None);
        prop_assert!(out.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rendezvous placement.

/// A `client-id` balancer over servers `s0..` with these weights, built from configuration text like the server does.
fn balancer(weights: &[u32]) -> Balancer {
    let mut yaml = String::from(
        "listeners: [{ name: l, bind: \"127.0.0.1:0\", protocol: mqtt, backend: b }]\nbackends:\n  - name: b\n",
    );
    yaml.push_str("    balance: client-id\n    servers:\n");
    for (i, w) in weights.iter().enumerate() {
        yaml.push_str(&format!("      - {{ name: s{i}, address: \"127.0.0.1:{}\", weight: {w} }}\n", 2000 + i));
    }
    let config = mqtt_lb::config::parse(&yaml, Path::new("/properties/config.yaml")).expect("a valid backend");
    Balancer::new(Pool::new(config.backends[0].clone(), &Metrics::new()))
}

fn set_up(b: &Balancer, server: &str, up: bool) {
    let pool = b.pool();
    pool.servers.iter().find(|s| s.name == server).expect("a server of the pool").set_up(up);
}

/// The ranking of servers for `id`, best first.
fn ranking(b: &Balancer, id: &str) -> Vec<String> {
    b.candidates(Some(id.as_bytes())).iter().map(|s| s.name.clone()).collect()
}

fn first(b: &Balancer, id: &str) -> String {
    ranking(b, id).into_iter().next().expect("a usable server")
}

fn client_ids() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-zA-Z0-9/_.-]{1,40}", 50..200)
}

proptest! {
    #![proptest_config(config(48))]

    /// Taking one server down moves exactly its clients, each to its second choice; bringing it back moves exactly
    /// those clients back.
    #[test]
    fn only_the_failed_servers_clients_move(
        weights in proptest::collection::vec(1u32..=4, 2..=7),
        failed in any::<proptest::sample::Index>(),
        ids in client_ids(),
    ) {
        let b = balancer(&weights);
        let failed = format!("s{}", failed.index(weights.len()));
        let before: Vec<Vec<String>> = ids.iter().map(|id| ranking(&b, id)).collect();
        set_up(&b, &failed, false);
        for (id, rank) in ids.iter().zip(&before) {
            let now = first(&b, id);
            if rank[0] == failed {
                prop_assert_eq!(&now, &rank[1], "{} moves to its second choice", id);
            } else {
                prop_assert_eq!(&now, &rank[0], "{} is not on the failed server and stays", id);
            }
        }
        set_up(&b, &failed, true);
        for (id, rank) in ids.iter().zip(&before) {
            prop_assert_eq!(&first(&b, id), &rank[0], "{} is back where it was", id);
        }
    }

    /// A new server takes clients only for itself: every client either stays or moves to the new server.
    #[test]
    fn an_added_server_only_takes_clients(
        weights in proptest::collection::vec(1u32..=4, 1..=6),
        new_weight in 1u32..=4,
        ids in client_ids(),
    ) {
        let old = balancer(&weights);
        let mut more = weights.clone();
        more.push(new_weight);
        let new = balancer(&more);
        let added = format!("s{}", weights.len());
        for id in &ids {
            let (was, is) = (first(&old, id), first(&new, id));
            prop_assert!(is == was || is == added, "{id}: {was} -> {is}");
        }
    }

    /// Two instances built from the same configuration agree on every client (no shared state needed).
    #[test]
    fn instances_agree(weights in proptest::collection::vec(1u32..=4, 1..=6), ids in client_ids()) {
        let (a, b) = (balancer(&weights), balancer(&weights));
        for id in &ids {
            prop_assert_eq!(ranking(&a, id), ranking(&b, id));
        }
    }
}

proptest! {
    #![proptest_config(config(12))]

    /// Each server gets a share of clients proportional to its weight: within 3 percentage points over 20,000 ids
    /// (five standard deviations at most).
    #[test]
    fn weights_are_honoured(weights in proptest::collection::vec(1u32..=5, 2..=5), salt in any::<u32>()) {
        const N: usize = 20_000;
        let b = balancer(&weights);
        let mut counts = vec![0usize; weights.len()];
        for i in 0..N {
            let name = first(&b, &format!("{salt:08x}-client-{i}"));
            counts[name[1..].parse::<usize>().expect("server names are s<index>")] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (&count, &w)) in counts.iter().zip(&weights).enumerate() {
            let share = count as f64 / N as f64;
            let want = f64::from(w) / f64::from(total);
            prop_assert!((share - want).abs() < 0.03, "s{i} (weight {w}): {share:.3} of clients, want {want:.3}; {counts:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The first packet, however the stream is cut.

/// A CONNECT as a real client (rumqttc) writes it, with arbitrary fields.
fn connect_bytes() -> impl Strategy<Value = Vec<u8>> {
    let id = "[a-zA-Z0-9/_ü-]{0,64}";
    let text = "[a-z/]{1,32}";
    (
        any::<bool>(),
        id,
        any::<u16>(),
        proptest::option::of((text, proptest::collection::vec(any::<u8>(), 0..300), 0u8..3, any::<bool>())),
        proptest::option::of(("[a-z]{1,16}", "[a-z]{1,16}")),
        proptest::collection::vec(any::<u8>(), 0..2000),
    )
        .prop_map(|(v5, id, keep_alive, will, login, big)| {
            let mut b = BytesMut::new();
            if v5 {
                use rumqttc::v5::mqttbytes::{v5 as p, QoS};
                let qos = |q| [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(q)];
                let props = p::ConnectProperties {
                    user_properties: vec![("k".into(), "v".repeat(big.len()))],
                    ..p::ConnectProperties::new()
                };
                let c = p::Connect { keep_alive, client_id: id, clean_start: true, properties: Some(props) };
                let will = will.map(|(t, m, q, r)| p::LastWill::new(t, m, qos(q), r, None));
                let login = login.map(|(u, pw)| p::Login::new(u, pw));
                c.write(&will, &login, &mut b).expect("rumqttc encodes a 5 CONNECT");
            } else {
                use rumqttc::mqttbytes::{v4 as p, QoS};
                let qos = |q| [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(q)];
                let mut c = p::Connect::new(id);
                c.keep_alive = keep_alive;
                c.last_will = will.map(|(t, mut m, q, r)| {
                    m.extend_from_slice(&big);
                    p::LastWill::new(t, m, qos(q), r)
                });
                if let Some((u, pw)) = login {
                    c.set_login(u, pw);
                }
                c.write(&mut b).expect("rumqttc encodes a 3.1.1 CONNECT");
            }
            b.to_vec()
        })
}

/// Cut points: read sizes, used in turn.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..64, 1..16)
}

/// The CONNECT reader's rule (as `mqtt::first_packet::read_first_packet`): after each read, look at the fixed header; stop once
/// the buffer holds the whole packet. Returns the packet, or None if the stream ended first.
fn first_packet(stream: &[u8], sizes: &[usize]) -> Option<(Vec<u8>, usize)> {
    let mut buf = Vec::new();
    let mut pos = 0;
    for size in sizes.iter().cycle() {
        match check_fixed_header(&buf) {
            Ok(h) if buf.len() >= h.total_len() => return Some((buf[..h.total_len()].to_vec(), buf.len())),
            Ok(_) | Err(FrameError::Incomplete(_)) => {}
            Err(FrameError::MalformedRemainingLength) => return None,
        }
        if pos == stream.len() {
            return None;
        }
        let end = (pos + size).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
    }
    None
}

proptest! {
    #![proptest_config(config(128))]

    /// However the CONNECT and what follows it are cut into reads, the reader stops at the same packet, which parses
    /// to the same Connect as the whole packet.
    #[test]
    fn any_split_of_a_connect_stream_parses_the_same(packet in connect_bytes(), after in proptest::collection::vec(any::<u8>(), 0..64), sizes in read_sizes()) {
        let whole = parse_connect(&packet).expect("mqtt-lb accepts what rumqttc writes");
        let mut stream = packet.clone();
        stream.extend_from_slice(&after);
        let (got, buffered) = first_packet(&stream, &sizes).expect("the packet completes");
        prop_assert_eq!(&got, &packet);
        prop_assert!(buffered <= packet.len() + 63, "never more than one read past the packet");
        prop_assert_eq!(parse_connect(&got).expect("the same bytes parse"), whole);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// WebSocket frames, however the stream is cut.

/// An in-memory client connection: reads hand out the script in the given sizes (in turn), then EOF; writes are
/// dropped. Never pending.
struct Cut {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Cut {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = this.sizes[this.turn % this.sizes.len()];
        this.turn += 1;
        let n = size.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Cut {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A client's upgrade request for `/mqtt` with subprotocol `mqtt`.
const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// One masked client frame, as tungstenite's encoder writes it.
fn frame(payload: &[u8], opcode: u8, fin: bool, mask: [u8; 4]) -> Vec<u8> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let mut f = match opcode {
        0x9 => Frame::ping(payload.to_vec()),
        0x0 => Frame::message(payload.to_vec(), OpCode::Data(Data::Continue), fin),
        _ => Frame::message(payload.to_vec(), OpCode::Data(Data::Binary), fin),
    };
    f.header_mut().mask = Some(mask);
    let mut out = Vec::new();
    f.format(&mut out).expect("format a frame");
    out
}

/// Messages, each sent in 1..=3 fragments, with an optional ping before each fragment; the frame bytes and the
/// payload bytes they carry.
fn frame_stream() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let message = (proptest::collection::vec(any::<u8>(), 0..400), 1usize..=3, any::<bool>(), any::<[u8; 4]>());
    proptest::collection::vec(message, 1..8).prop_map(|messages| {
        let (mut frames, mut payload) = (Vec::new(), Vec::new());
        for (data, fragments, ping, mask) in messages {
            payload.extend_from_slice(&data);
            let step = data.len().div_ceil(fragments).max(1);
            let parts: Vec<&[u8]> = if data.is_empty() { vec![&data[..]] } else { data.chunks(step).collect() };
            for (i, part) in parts.iter().enumerate() {
                if ping {
                    frames.extend(frame(b"p", 0x9, true, mask));
                }
                frames.extend(frame(part, if i == 0 { 0x2 } else { 0x0 }, i + 1 == parts.len(), mask));
            }
        }
        (frames, payload)
    })
}

proptest! {
    #![proptest_config(config(128))]

    /// The byte stream out of a WebSocket (what the CONNECT reader and the relay see) is the concatenation of the
    /// binary payloads, however the frames (and the upgrade request before them) are cut into transport reads, and
    /// whatever the size of the reads asked of it.
    #[test]
    fn any_split_of_a_frame_stream_decodes_the_same((frames, payload) in frame_stream(), sizes in proptest::collection::vec(1usize..200, 1..12), read_size in 1usize..200) {
        let mut data = UPGRADE.as_bytes().to_vec();
        data.extend_from_slice(&frames);
        let policy = ws::UpgradePolicy {
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            timeout: std::time::Duration::from_secs(5),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
        let got = rt.block_on(async {
            let io = Cut { data, pos: 0, sizes, turn: 0 };
            let mut ws = ws::accept(io, &policy).await.expect("the upgrade is accepted");
            let mut out = Vec::new();
            // Reads of any size, down to one byte (frames are taken apart inside the reader's buffer).
            let mut buf = vec![0u8; read_size];
            loop {
                match ws.read(&mut buf).await {
                    Ok(0) => return Ok(out),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        prop_assert_eq!(got.map_err(|e| format!("read failed: {e}")), Ok(payload));
    }
}
