//! The text lines written with [`TextFields`] and [`CachedSystemTime`] against tracing-subscriber's default
//! format, line by line, for the values the proxy and its libraries log; and the micro-benchmark of both.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::field::Empty;
use tracing::{info, info_span, warn};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::tests::Sink;
use super::text_fields::TextFields;
use super::text_line::TextLines;
use super::timestamp::CachedSystemTime;

/// An error with a cause, for the `name.sources=[..]` part.
#[derive(Debug)]
struct Outer(std::io::Error);

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("relay \"failed\"")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The proxy's `connection closed` line, as src/session/end.rs writes it.
fn connection_closed(peer: SocketAddr, client_id: Option<&str>, duration_seconds: f64, error: Option<&str>) {
    info!(
        parent: None,
        listener = "mqtts",
        peer = %peer,
        client_id = client_id,
        server = "broker-1:1883",
        bytes_to_server = 1234u64,
        bytes_to_client = 56_789u64,
        duration_seconds = duration_seconds,
        reason = "client_closed",
        error = error.map(tracing::field::display),
        "connection closed"
    );
}

/// Every kind of event and value the comparison covers.
fn events() {
    let (v6, v4): (SocketAddr, SocketAddr) =
        ("[2001:db8::1]:51234".parse().unwrap(), "192.0.2.10:1883".parse().unwrap());
    for text in [
        "plain ascii ~`$%",
        "",
        "with \"quotes\"",
        "back\\slash",
        "new\nline\ttab\rreturn",
        "é unicode ✓",
        "\u{1b}[31mred\u{1b}[0m",
        "bell\u{7} del\u{7f} nul\0 c1\u{85}\u{9b}",
        "combining e\u{301}",
    ] {
        connection_closed(v6, Some(text), 0.0012, Some(text));
        info!(value = text, shown = %text, debugged = ?text, "message {text} here");
        info!(message = text, r#type = text, "r#kind" = text, "r#message" = text);
        warn!("{}", text);
    }
    for duration in [0.0012, 12.5, 1e-7, 0.0, -0.0, 1e16, 123_456.789, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE] {
        connection_closed(v4, None, duration, None);
    }
    info!(negative = -42i64, min = i64::MIN, max = u64::MAX, yes = true, no = false, wide = -7i128, big = u128::MAX);
    info!(bytes = &b"\x00\xffab"[..], list = ?vec!["a", "b\"c"], pair = ?("x", 1), "values");
    info!(count = 3u64);
    info!(message = 7u64, after = "x");
    info!(first = "a", message = "message not first");
    let io = std::io::Error::other("broken \"pipe\"\n\u{1b}");
    info!(error = &io as &(dyn std::error::Error + 'static), "plain error");
    let outer = Outer(std::io::Error::other("inner cause"));
    info!(error = &outer as &(dyn std::error::Error + 'static), "error with a source");
    info!(
        log.target = "some_library::module",
        log.file = "/build/some_library/src/module.rs",
        log.line = 42u64,
        "by hand"
    );

    // Spans: fields, none, nested, recorded later, and an event that opts out of its parent.
    let connection = info_span!("connection", listener = "mqtts", peer = "10.0.0.1:4000", client_id = Empty);
    let _in_connection = connection.enter();
    info!("in a span");
    connection.record("client_id", "dev-\"1\"");
    let phase = info_span!("phase");
    let _in_phase = phase.enter();
    let relay = info_span!("relay", server = %"broker-1:1883", bytes = 10u64);
    let _in_relay = relay.enter();
    info!(step = "nested", "in three spans");
    connection_closed(v4, Some("dev-1"), 0.5, None);

    // A library's event through the `log` bridge (its fields `log.*`, its target the library's module).
    log::warn!(target: "some_library::module", "a library warning with \"quotes\" and {}", 5);
    log::info!("a library info");
}

/// A timer that writes the same instant every time, so that two runs' lines compare byte for byte (the real
/// timer is compared with the library's in `timestamp.rs`).
#[derive(Clone)]
struct FixedTime;

impl FormatTime for FixedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        w.write_str("2026-12-04T22:17:16.588789Z")
    }
}

/// What `events` writes through the library's default text format (`ours` false) or ours.
fn output(ours: bool, ansi: bool) -> String {
    // The bridge forwards `log` records to the subscriber current on the thread; installed once per process.
    let _ = tracing_log::LogTracer::init();
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&out);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(super::filter(Some("trace")))
        .with_writer(move || Sink(Arc::clone(&sink)))
        .with_ansi(ansi)
        .with_timer(FixedTime);
    if ours {
        let ours = builder.fmt_fields(TextFields).event_format(TextLines::with_timer(FixedTime));
        tracing::subscriber::with_default(ours.finish(), events);
    } else {
        tracing::subscriber::with_default(builder.finish(), events);
    }
    let bytes = out.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

fn assert_same_lines(ansi: bool) {
    let (library, ours) = (output(false, ansi), output(true, ansi));
    assert!(library.lines().count() > 50, "{library}");
    for (theirs, mine) in library.lines().zip(ours.lines()) {
        assert_eq!(theirs, mine);
    }
    assert_eq!(library, ours);
    // The comparison saw the cases it is about.
    for expected in [
        r#"listener="mqtts" peer=[2001:db8::1]:51234 client_id="plain ascii ~`$%" server="broker-1:1883""#,
        "duration_seconds=1e-7",
        "message \\x1b[31mred",
        "error.sources=[",
        "connection{listener=\"mqtts\" peer=\"10.0.0.1:4000\" client_id=\"dev-\\\"1\\\"\"}:phase:relay{",
        "some_library::module: a library warning with \"quotes\" and 5",
    ] {
        assert!(ansi || library.contains(expected), "{expected} in\n{library}");
    }
    assert!(!library.contains("log.file") && !library.contains("module.rs"), "{library}");
}

#[test]
fn text_lines_are_the_library_default_format() {
    assert_same_lines(false);
}

#[test]
fn coloured_text_lines_are_the_library_default_format() {
    assert_same_lines(true);
}

/// Nanoseconds per `connection closed` line written with `subscriber` (to a writer that drops the bytes).
fn line_cost(subscriber: impl tracing::Subscriber + Send + Sync + 'static) -> u128 {
    const LINES: u32 = 100_000;
    let peer = SocketAddr::from(([192, 0, 2, 10], 51_234));
    tracing::subscriber::with_default(subscriber, || {
        let started = std::time::Instant::now();
        for _ in 0..LINES {
            connection_closed(peer, Some("sensor-0042"), 0.001_234_567, None);
        }
        started.elapsed().as_nanos() / u128::from(LINES)
    })
}

/// The library's default text format against ours, and our parts one by one:
/// `cargo test --release --lib logging::text_tests -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn connection_closed_line_cost() {
    let builder = || tracing_subscriber::fmt().with_writer(std::io::sink).with_ansi(false);
    for round in 1..=3 {
        let library = line_cost(builder().finish());
        let fields = line_cost(builder().fmt_fields(TextFields).finish());
        let timer = line_cost(builder().with_timer(CachedSystemTime).finish());
        let both = line_cost(builder().fmt_fields(TextFields).with_timer(CachedSystemTime).finish());
        let ours = line_cost(builder().fmt_fields(TextFields).event_format(TextLines::default()).finish());
        println!(
            "round {round} (ns/line): library {library}, our fields {fields}, our timer {timer}, both {both}, \
             ours (fields, timer, line) {ours}"
        );
    }
}
