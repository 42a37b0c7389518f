//! `servers[].max_connections`, `servers[].max_connection_rate`, `backends[].queue_timeout` and `max_queue`:
//! defaults, and each bad value refused with its key named.

use super::*;

/// A backend `brokers` with one server; `server` and `backend` are extra keys of each, `limits` the limits section.
fn doc(server: &str, backend: &str, limits: &str) -> String {
    format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n{backend}    servers:\n      - {{ name: b1, address: \"127.0.0.1:1883\"{server} }}\n\
         limits: {{ {limits} }}\n"
    )
}

fn error(text: &str) -> String {
    match parse(text, Path::new("test.yaml")) {
        Ok(_) => panic!("config was accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn caps_are_off_and_the_queue_has_defaults_unless_set() {
    let c = parse(&doc("", "", ""), Path::new("test.yaml")).unwrap();
    let (b, s) = (&c.backends[0], &c.backends[0].servers[0]);
    assert_eq!((s.max_connections, s.max_connection_rate), (None, None));
    assert_eq!((b.queue_timeout, b.max_queue), (Duration::from_secs(5), 1000));
    let c = parse(&doc("", "", "connect_timeout: 2s"), Path::new("test.yaml")).unwrap();
    assert_eq!(c.backends[0].queue_timeout, Duration::from_secs(2), "never past the connect deadline");
    let set = doc(", max_connections: 2, max_connection_rate: 50", "    queue_timeout: 3s\n    max_queue: 0\n", "");
    let c = parse(&set, Path::new("test.yaml")).unwrap();
    let (b, s) = (&c.backends[0], &c.backends[0].servers[0]);
    assert_eq!((s.max_connections, s.max_connection_rate), (Some(2), Some(50)));
    assert_eq!((b.queue_timeout, b.max_queue), (Duration::from_secs(3), 0));
}

#[test]
fn caps_of_zero_and_waits_past_the_connect_deadline_are_refused() {
    let e = error(&doc(", max_connections: 0", "", ""));
    assert!(e.starts_with("test.yaml: backends[0].servers[0].max_connections: must be at least 1"), "{e}");
    let e = error(&doc(", max_connection_rate: 0", "", ""));
    assert!(e.starts_with("test.yaml: backends[0].servers[0].max_connection_rate: must be at least 1"), "{e}");
    let e = error(&doc("", "    queue_timeout: 11s\n", ""));
    assert!(e.starts_with("test.yaml: backends[0].queue_timeout: "), "{e}");
    assert!(e.contains("limits.connect_timeout"), "{e}");
    let e = error(&doc("", "    queue_timeout: 3s\n", "connect_timeout: 2s"));
    assert!(e.starts_with("test.yaml: backends[0].queue_timeout: "), "{e}");
    let e = error(&doc(", max_connections: -1", "", ""));
    assert!(e.contains("max_connections"), "{e}");
}
