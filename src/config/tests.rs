//! Loading and validating whole documents: defaults, and each kind of error naming its key.

use super::*;

const GOOD: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:0"
    protocol: mqtt
    backend: brokers
backends:
  - name: brokers
    health: { check: tcp, interval: 500ms }
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
      - { name: b2, address: "broker-2.example.org:1883", weight: 2 }
admin: { bind: "127.0.0.1:0" }
limits: { connect_timeout: 5s, max_connect_size: 1KiB }
"#;

#[test]
fn workers_is_auto_or_a_thread_count() {
    assert_eq!(parse(GOOD, Path::new("test.yaml")).unwrap().workers, None);
    let c = parse(&format!("{GOOD}workers: auto\n"), Path::new("test.yaml")).unwrap();
    assert_eq!(c.workers, None);
    let c = parse(&format!("{GOOD}workers: 3\n"), Path::new("test.yaml")).unwrap();
    assert_eq!(c.workers, Some(3));
    for bad in ["0", "5000", "-1", "many"] {
        let e = err_of(&format!("{GOOD}workers: {bad}\n")).to_string();
        assert!(e.starts_with("test.yaml: workers: "), "{bad}: {e}");
        assert!(e.contains("auto"), "{bad}: {e}");
    }
}

fn err_of(text: &str) -> ConfigError {
    match parse(text, Path::new("test.yaml")) {
        Ok(_) => panic!("config was accepted: {text}"),
        Err(e) => e,
    }
}

#[test]
fn good_config_loads_with_defaults() {
    let c = parse(GOOD, Path::new("test.yaml")).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.backends[0].servers[1].weight, 2);
    assert_eq!(c.backends[0].health.interval, Duration::from_millis(500));
    assert_eq!(c.backends[0].health.rise, 2);
    assert_eq!(c.limits.max_connect_size, 1024);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    assert!(c.log.client_id, "client ids are logged unless turned off");
}

#[test]
fn passthrough_keep_alive_and_handshake_limits_have_safe_defaults() {
    let c = parse(GOOD, Path::new("test.yaml")).unwrap();
    let l = &c.limits;
    assert_eq!(l.idle_timeout, Duration::ZERO, "MQTT relays: the keep-alive deadline instead");
    assert_eq!(l.passthrough_idle_timeout, DEFAULT_PASSTHROUGH_IDLE_TIMEOUT);
    assert!(!l.passthrough_idle_timeout.is_zero(), "tcp listeners never hold a silent connection for ever");
    assert_eq!(l.keep_alive_factor.window(2), Some(Duration::from_secs(3)), "1.5 times the keep-alive");
    assert_eq!(l.keep_alive_factor.window(0), None, "keep-alive 0: no deadline");
    assert!(l.max_handshakes >= HANDSHAKES_PER_CORE);
    let k = l.tcp_keepalive.expect("TCP keepalive on by default");
    assert_eq!((k.idle, k.interval, k.count), (Duration::from_secs(120), Duration::from_secs(30), 4));

    let set = "limits: { idle_timeout: 10m, max_handshakes: 0, keep_alive_factor: 0, tcp_keepalive: { idle: 0 } }";
    let c =
        parse(&GOOD.replace("limits: { connect_timeout: 5s, max_connect_size: 1KiB }", set), Path::new("t")).unwrap();
    let l = &c.limits;
    let ten_minutes = Duration::from_secs(600);
    assert_eq!((l.idle_timeout, l.passthrough_idle_timeout), (ten_minutes, ten_minutes), "one key for both");
    assert_eq!((l.max_handshakes, l.keep_alive_factor.window(60), l.tcp_keepalive), (0, None, None));
    for (bad, key) in [
        ("keep_alive_factor: 0.5", "limits.keep_alive_factor"),
        ("keep_alive_factor: 11", "limits.keep_alive_factor"),
        ("tcp_keepalive: { idle: 40000s }", "limits.tcp_keepalive.idle"),
        ("tcp_keepalive: { interval: 0 }", "limits.tcp_keepalive.interval"),
        ("tcp_keepalive: { count: 0 }", "limits.tcp_keepalive.count"),
    ] {
        let e = err_of(&GOOD.replace("connect_timeout: 5s", bad)).to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn log_section() {
    let c = parse(&format!("{GOOD}log: {{ client_id: false }}\n"), Path::new("test.yaml")).unwrap();
    assert!(!c.log.client_id);
    let c = parse(&format!("{GOOD}log: {{ client_id: true }}\n"), Path::new("test.yaml")).unwrap();
    assert!(c.log.client_id);
    let e = err_of(&format!("{GOOD}log: {{ client_ids: false }}\n"));
    assert_eq!(e.key, "log.client_ids", "{e}");
    let e = err_of(&format!("{GOOD}log: {{ client_id: maybe }}\n"));
    assert_eq!(e.key, "log.client_id", "{e}");
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("2x").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("99999999999999999999h").is_err());
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("100"), Ok(100));
    assert_eq!(parse_size("1MB"), Ok(1_000_000));
    assert!(parse_size("1PB").is_err());
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("address: \"127.0.0.1:1883\" }", "address: \"127.0.0.1\" }", "backends[0].servers[0].address"),
        ("address: \"broker-2.example.org:1883\"", "address: \"bad host!:1883\"", "backends[0].servers[1].address"),
        ("backend: brokers", "backend: nowhere", "listeners[0].backend"),
        ("name: b2", "name: b1", "backends[0].servers[1].name"),
        ("interval: 500ms", "interval: 5 seconds", "backends[0].health.interval"),
        ("max_connect_size: 1KiB", "max_connect_size: 1 lot", "limits.max_connect_size"),
        ("protocol: mqtt\n", "protocol: smtp\n", "listeners[0].protocol"),
        ("bind: \"127.0.0.1:0\"\n    protocol", "bind: \"localhost\"\n    protocol", "listeners[0].bind"),
        ("weight: 2", "weight: 0", "backends[0].servers[1].weight"),
        ("interval: 500ms", "interval: 500ms, colour: red", "backends[0].health.colour"),
    ];
    for (from, to, key) in cases {
        assert!(GOOD.contains(from), "{from}");
        let e = err_of(&GOOD.replacen(from, to, 1));
        assert_eq!(e.key, *key, "{to}: {e}");
        assert!(e.to_string().starts_with("test.yaml: "), "{e}");
    }
}

#[test]
fn unknown_and_missing_keys() {
    let e = err_of(&GOOD.replace("admin:", "admni:"));
    assert!(e.message.contains("admni"), "{e}");
    let e = err_of(&GOOD.replace("    backend: brokers\n", "\n"));
    assert_eq!(e.key, "listeners[0].backend");
    assert!(e.message.contains("routes"), "{e}");
}

#[test]
fn unreadable_certificate_names_the_key() {
    let text = GOOD
        .replace("protocol: mqtt\n", "protocol: mqtt\n    tls: { cert: /nonexistent.crt, key: /nonexistent.key }\n");
    let e = err_of(&text);
    assert_eq!(e.key, "listeners[0].tls.cert");
    assert!(e.message.contains("/nonexistent.crt"), "{e}");
}

#[test]
fn the_certificate_forms_are_one_or_the_other_and_errors_name_the_key() {
    let with = |tls: &str| err_of(&GOOD.replace("protocol: mqtt\n", &format!("protocol: mqtt\n    tls: {tls}\n")));
    let cases = [
        ("{ cert: a.crt }", "listeners[0].tls.key"),
        ("{ key: a.key }", "listeners[0].tls.cert"),
        ("{ certificates: [] }", "listeners[0].tls.certificates"),
        ("{ cert: a.crt, key: a.key, certificates: [{ cert: b.crt, key: b.key }] }", "listeners[0].tls.certificates"),
        ("{ ocsp_response: a.ocsp, certificates: [{ cert: b.crt, key: b.key }] }", "listeners[0].tls.ocsp_response"),
        ("{ cert: a.crt, key: a.key, client_crl: [a.crl] }", "listeners[0].tls.client_crl"),
        ("{ certificates: [{ cert: /nonexistent.crt, key: b.key }] }", "listeners[0].tls.certificates[0].cert"),
    ];
    for (tls, key) in cases {
        assert_eq!(with(tls).key, key, "{tls}");
    }
}

#[test]
fn syntax_error_is_reported() {
    let e = err_of("listeners: [\n");
    assert!(e.to_string().starts_with("test.yaml"), "{e}");
}

/// GOOD plus a WSS listener to a WebSocket backend and a tcp passthrough.
const WS: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:0"
    protocol: mqtt
    backend: brokers
  - name: wss
    bind: "127.0.0.1:0"
    protocol: websocket
    path: /mqtt
    allowed_origins: ["https://maps.example.org"]
    backend: brokers_ws
  - name: dashboard
    bind: "127.0.0.1:0"
    protocol: tcp
    allowed_sources: ["10.0.0.0/8", "127.0.0.1/32", "::1"]
    backend: dashboards
backends:
  - name: brokers
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
  - name: brokers_ws
    protocol: websocket
    path: /mqtt
    servers:
      - { name: b1, address: "127.0.0.1:8083" }
  - name: dashboards
    protocol: tcp
    servers:
      - { name: b1, address: "127.0.0.1:18083" }
limits: { max_connect_size: 1KiB }
"#;

#[test]
fn websocket_and_tcp_keys_load_with_defaults() {
    let c = parse(WS, Path::new("test.yaml")).unwrap();
    let wss = &c.listeners[1];
    assert_eq!(wss.protocol, ListenerProtocol::Websocket);
    assert_eq!(wss.path, "/mqtt");
    assert_eq!(wss.allowed_origins, vec!["https://maps.example.org".to_owned()]);
    assert_eq!(c.listeners[2].allowed_sources.len(), 3);
    assert_eq!(c.listeners[0].path, DEFAULT_WS_PATH);
    assert!(c.listeners[0].allowed_sources.is_empty());
    // The health check follows the backend's protocol unless set.
    assert_eq!(c.backends[0].health.check, HealthCheckKind::Mqtt);
    assert_eq!(c.backends[1].health.check, HealthCheckKind::Websocket);
    assert_eq!(c.backends[1].health.path, "/mqtt");
    assert_eq!(c.backends[2].health.check, HealthCheckKind::Tcp);
    assert_eq!(c.limits.max_ws_frame_size, DEFAULT_MAX_WS_FRAME_SIZE);
    let big = parse(&WS.replace("1KiB", "2MiB"), Path::new("test.yaml")).unwrap();
    assert_eq!(big.limits.max_ws_frame_size, 2 << 20, "never below max_connect_size");
}

#[test]
fn websocket_and_tcp_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("\"::1\"]", "\"::1\", \"10.0.0.1/8\"]", "listeners[2].allowed_sources[3]"),
        ("\"127.0.0.1/32\"", "\"127.0.0.1/33\"", "listeners[2].allowed_sources[1]"),
        ("[\"10.0.0.0/8\"", "[\"ten/8\"", "listeners[2].allowed_sources[0]"),
        (
            "allowed_sources: [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1\"]",
            "allowed_sources: []",
            "listeners[2].allowed_sources",
        ),
        ("path: /mqtt\n    allowed", "path: mqtt\n    allowed", "listeners[1].path"),
        ("path: /mqtt\n    allowed", "path: /mqtt?x=1\n    allowed", "listeners[1].path"),
        ("\"https://maps.example.org\"", "\"maps.example.org\"", "listeners[1].allowed_origins[0]"),
        ("protocol: tcp\n    allowed_sources", "protocol: tcp\n    path: /x\n    allowed_sources", "listeners[2].path"),
        ("backend: dashboards", "backend: brokers_ws", "listeners[2].backend"),
        (
            "path: /mqtt\n    servers",
            "path: /mqtt\n    health: { check: mqtt }\n    servers",
            "backends[1].health.check",
        ),
        (
            "protocol: tcp\n    servers",
            "protocol: tcp\n    health: { check: websocket }\n    servers",
            "backends[2].health.check",
        ),
        ("protocol: tcp\n    servers", "protocol: tcp\n    path: /x\n    servers", "backends[2].path"),
        (
            "protocol: websocket\n    path: /mqtt\n    servers",
            "protocol: websocket\n    path: \"/a b\"\n    servers",
            "backends[1].path",
        ),
        ("max_connect_size: 1KiB", "max_connect_size: 2KiB, max_ws_frame_size: 1KiB", "limits.max_ws_frame_size"),
        ("max_connect_size: 1KiB", "max_ws_frame_size: 1 lot", "limits.max_ws_frame_size"),
        ("max_connect_size: 1KiB", "connection_rate_table_size: 0", "limits.connection_rate_table_size"),
        ("max_connect_size: 1KiB", "connection_rate_table_size: 10000001", "limits.connection_rate_table_size"),
        ("protocol: websocket\n    path", "protocol: websockets\n    path", "listeners[1].protocol"),
    ];
    for (from, to, key) in cases {
        assert!(WS.contains(from), "{from}");
        let e = err_of(&WS.replacen(from, to, 1));
        assert_eq!(e.key, *key, "{to}: {e}");
        assert!(e.to_string().starts_with("test.yaml: "), "{e}");
    }
    let e = err_of(&WS.replacen("\"::1\"]", "\"10.0.0.1/8\"]", 1));
    assert!(e.message.contains("10.0.0.0/8"), "the message suggests the network: {e}");
}

/// An MQTT listener, plain CoAP and DTLS passthrough listeners on the same CoAP servers.
const COAP: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:5683"
    protocol: mqtt
    backend: brokers
  - name: coap
    bind: "127.0.0.1:5683"
    protocol: coap
    backend: coap_servers
    flow_idle_timeout: 2m
    max_flows: 500
    max_flows_per_ip: 20
    max_datagram_size: 1500
    max_datagram_rate_per_flow: 100
    receive_buffer: 4MiB
  - name: coaps
    bind: "127.0.0.1:5684"
    protocol: coap
    backend: coaps_servers
    dtls_cid_length: 8
    allowed_sources: ["10.0.0.0/8"]
backends:
  - name: brokers
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
  - name: coap_servers
    protocol: coap
    servers:
      - { name: c1, address: "127.0.0.1:15683" }
  - name: coaps_servers
    protocol: coap
    health: { check: dtls-hello }
    servers:
      - { name: c1, address: "127.0.0.1:15684", dtls_cid_node_id: 1 }
      - { name: c2, address: "127.0.0.1:25684", dtls_cid_node_id: 2 }
      - { name: c3, address: "127.0.0.1:35684" }
"#;

#[test]
fn coap_keys_load_with_defaults() {
    let c = parse(COAP, Path::new("test.yaml")).unwrap();
    assert_eq!(c.listeners[0].coap, None);
    let coap = c.listeners[1].coap.clone().unwrap();
    assert_eq!(c.listeners[1].protocol, ListenerProtocol::Coap);
    assert_eq!(coap.flow_idle_timeout, Duration::from_secs(120));
    assert_eq!((coap.max_flows, coap.max_flows_per_ip, coap.max_datagram_size), (500, 20, 1500));
    assert_eq!((coap.max_datagram_rate_per_flow, coap.datagram_rate_burst), (100, 100), "burst defaults to rate");
    assert_eq!(coap.dtls_cid_length, None);
    assert_eq!(coap.receive_buffer, Some(4 << 20));
    let coaps = c.listeners[2].coap.clone().unwrap();
    let defaults = CoapListenerConfig::default();
    assert_eq!(coaps.dtls_cid_length, Some(8));
    assert_eq!(coaps.dtls_cid_timeout, defaults.dtls_cid_timeout);
    assert_eq!((coaps.max_datagram_rate_per_flow, coaps.datagram_rate_burst), (1000, 1000), "a rate by default");
    assert_eq!(coaps.receive_buffer, None, "the system's default buffer");
    assert_eq!((coaps.max_flows, coaps.flow_idle_timeout), (defaults.max_flows, defaults.flow_idle_timeout));
    assert_eq!(c.listeners[2].allowed_sources.len(), 1);
    assert_eq!(c.backends[1].protocol, BackendProtocol::Coap);
    assert_eq!(c.backends[1].health.check, HealthCheckKind::CoapPing, "coap backends ping by default");
    assert_eq!(c.backends[2].health.check, HealthCheckKind::DtlsHello);
    let node_ids: Vec<_> = c.backends[2].servers.iter().map(|s| s.dtls_cid_node_id).collect();
    assert_eq!(node_ids, [Some(1), Some(2), None]);
    assert_eq!(c.backends[1].servers[0].dtls_cid_node_id, None);
    // UDP 5683 and TCP 5683 are different sockets; two coap listeners on one address are not.
    let e = err_of(&COAP.replacen("\"127.0.0.1:5684\"", "\"127.0.0.1:5683\"", 1));
    assert_eq!(e.key, "listeners[2].bind", "{e}");
}

#[test]
fn coap_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("protocol: mqtt\n    backend", "protocol: mqtt\n    max_flows: 5\n    backend", "listeners[0].max_flows"),
        ("protocol: mqtt\n    backend: brokers", "protocol: mqtt\n    backend: coap_servers", "listeners[0].backend"),
        ("backend: coap_servers", "backend: brokers", "listeners[1].backend"),
        ("flow_idle_timeout: 2m", "flow_idle_timeout: 0", "listeners[1].flow_idle_timeout"),
        ("flow_idle_timeout: 2m", "flow_idle_timeout: soon", "listeners[1].flow_idle_timeout"),
        ("max_flows: 500", "max_flows: 0", "listeners[1].max_flows"),
        ("max_datagram_size: 1500", "max_datagram_size: 70000", "listeners[1].max_datagram_size"),
        ("max_datagram_size: 1500", "max_datagram_size: 16", "listeners[1].max_datagram_size"),
        (
            "max_datagram_rate_per_flow: 100",
            "max_datagram_rate_per_flow: 0\n    datagram_rate_burst: 5",
            "listeners[1].datagram_rate_burst",
        ),
        ("max_datagram_size: 1500", "receive_buffer: 512", "listeners[1].receive_buffer"),
        ("max_datagram_size: 1500", "receive_buffer: 2GiB", "listeners[1].receive_buffer"),
        ("max_flows: 500", "max_flows: 500\n    dtls_cid_timeout: 1h", "listeners[1].dtls_cid_timeout"),
        ("max_flows: 500", "max_flows: 500\n    max_dtls_cids: 9", "listeners[1].max_dtls_cids"),
        ("dtls_cid_length: 8", "dtls_cid_length: 0", "listeners[2].dtls_cid_length"),
        ("dtls_cid_length: 8", "dtls_cid_length: 256", "listeners[2].dtls_cid_length"),
        ("dtls_cid_length: 8", "dtls_cid_length: 8\n    tls: { cert: a.crt, key: a.key }", "listeners[2].tls"),
        (
            "dtls_cid_length: 8",
            "dtls_cid_length: 8\n    trusted_proxies: [\"10.0.0.0/8\"]",
            "listeners[2].trusted_proxies",
        ),
        ("health: { check: dtls-hello }", "health: { check: mqtt }", "backends[2].health.check"),
        (
            "health: { check: dtls-hello }",
            "health: { check: tcp }\n    proxy_protocol: v2",
            "backends[2].proxy_protocol",
        ),
        (
            "servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
            "health: { check: coap-ping }\n    servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
            "backends[0].health.check",
        ),
        (
            "servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
            "health: { check: dtls-hello }\n    servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
            "backends[0].health.check",
        ),
        (
            "protocol: coap\n    backend: coap_servers",
            "protocol: udp\n    backend: coap_servers",
            "listeners[1].protocol",
        ),
        ("dtls_cid_node_id: 2", "dtls_cid_node_id: 1", "backends[2].servers[1].dtls_cid_node_id"),
        ("dtls_cid_node_id: 2", "dtls_cid_node_id: 256", "backends[2].servers[1].dtls_cid_node_id"),
        ("dtls_cid_node_id: 2", "dtls_cid_node_id: -1", "backends[2].servers[1].dtls_cid_node_id"),
        (
            "\"127.0.0.1:1883\" }",
            "\"127.0.0.1:1883\", dtls_cid_node_id: 1 }",
            "backends[0].servers[0].dtls_cid_node_id",
        ),
    ];
    for (from, to, key) in cases {
        assert!(COAP.contains(from), "{from}");
        let e = err_of(&COAP.replacen(from, to, 1));
        assert_eq!(e.key, *key, "{to}: {e}");
        assert!(e.to_string().starts_with("test.yaml: "), "{e}");
    }
    let e = err_of(&COAP.replacen("dtls_cid_node_id: 2", "dtls_cid_node_id: 1", 1));
    assert_eq!(
        e.to_string(),
        "test.yaml: backends[2].servers[1].dtls_cid_node_id: node id 1 is also server \"c1\"'s: each server of a \
         backend needs its own"
    );
    let e = err_of(&COAP.replacen("dtls_cid_node_id: 2", "dtls_cid_node_id: 300", 1));
    assert!(
        e.to_string().ends_with("dtls_cid_node_id: must be 0 to 255: the first byte of the Connection IDs it issues"),
        "{e}"
    );
}

/// Where each bounded key stands in a document (`{}` is its value), so that every key of
/// [`super::validate::bounds::BOUNDS`] is tried.
fn document_with(field: &str, value: &str) -> Option<String> {
    let coap = |keys: String| {
        format!(
            "listeners:\n  - {{ name: c, bind: \"127.0.0.1:0\", protocol: coap, backend: things, {keys} }}\n\
             backends:\n  - name: things\n    protocol: coap\n    servers: [ {{ name: s, address: \"127.0.0.1:5683\" }} ]\n"
        )
    };
    let stream = |backend: String, rest: String| {
        format!(
            "listeners:\n  - {{ name: m, bind: \"127.0.0.1:0\", protocol: mqtt, backend: b }}\n\
             backends:\n  - name: b\n    {backend}\n    servers: [ {{ name: s, address: \"127.0.0.1:1883\" }} ]\n{rest}"
        )
    };
    Some(match field {
        "connect_timeout"
        | "handshake_timeout"
        | "idle_timeout"
        | "max_connections"
        | "max_handshakes"
        | "max_connections_per_ip"
        | "max_connection_rate_per_ip"
        | "max_connect_size" => stream(String::new(), format!("limits: {{ {field}: {value} }}\n")),
        "max_ws_frame_size" => stream(String::new(), format!("limits: {{ max_connect_size: 16, {field}: {value} }}\n")),
        "weight" => format!(
            "listeners:\n  - {{ name: m, bind: \"127.0.0.1:0\", protocol: mqtt, backend: b }}\n\
             backends:\n  - name: b\n    servers: [ {{ name: s, address: \"127.0.0.1:1883\", weight: {value} }} ]\n"
        ),
        "connection_rate_burst" => {
            stream(String::new(), format!("limits: {{ max_connection_rate_per_ip: 5, {field}: {value} }}\n"))
        }
        "interval" | "timeout" | "rise" | "fall" => stream(format!("health: {{ {field}: {value} }}"), String::new()),
        "request_timeout" => stream(String::new(), format!("admin: {{ bind: \"127.0.0.1:0\", {field}: {value} }}\n")),
        "grace" | "drain_timeout" => stream(String::new(), format!("shutdown: {{ {field}: {value} }}\n")),
        "flow_idle_timeout"
        | "max_flows_per_ip"
        | "max_datagram_rate_per_flow"
        | "max_flows"
        | "max_datagram_size"
        | "dtls_cid_length" => coap(format!("{field}: {value}")),
        "max_dtls_cids" => coap(format!("dtls_cid_length: 4, {field}: {value}")),
        "datagram_rate_burst" => coap(format!("max_datagram_rate_per_flow: 5, {field}: {value}")),
        "dtls_cid_timeout" => coap(format!("dtls_cid_length: 4, {field}: {value}")),
        _ => return None,
    })
}

/// Every bounded key with extreme values: each is accepted only within its range, refused with the key and the
/// range named otherwise, and what `run` builds before binding never panics on what was accepted.
#[test]
fn extreme_numbers_are_refused_by_key_or_run_without_panic() {
    use super::validate::bounds::{Measure, BOUNDS};
    for b in BOUNDS {
        let ms = |n: u64| format!("{n}ms");
        let values: Vec<(String, Option<u64>)> = match b.measure {
            Measure::Count | Measure::Bytes => [0, 1, b.min, b.max, b.max + 1, u64::from(u32::MAX), 1 << 61, u64::MAX]
                .into_iter()
                .map(|n| (n.to_string(), Some(n)))
                .chain([("-1".to_owned(), None), ("99999999999999999999999".to_owned(), None)])
                .collect(),
            Measure::Millis => [0, 1, b.min, b.max, b.max + 1, u64::MAX]
                .into_iter()
                .map(|n| (if n == 0 { "0".to_owned() } else { ms(n) }, Some(n)))
                .chain([("5124095576030431h".to_owned(), None), ("-1s".to_owned(), None)])
                .collect(),
        };
        for (text, value) in values {
            let doc = document_with(b.field, &text).unwrap_or_else(|| panic!("no document for {}", b.field));
            match parse(&doc, Path::new("extreme.yaml")) {
                Ok(c) => {
                    assert!(value.is_some_and(|v| b.contains(v)), "{}: {text} accepted", b.field);
                    crate::reload::running::dry_run(&c);
                }
                Err(e) => {
                    let shown = e.to_string();
                    assert!(value.is_none_or(|v| !b.contains(v)), "{}: {text} refused: {shown}", b.field);
                    assert!(shown.starts_with("extreme.yaml: "), "{shown}");
                    assert!(e.key.ends_with(b.field) && shown.contains(&format!("allowed {b}")), "{shown}");
                }
            }
        }
    }
}

#[test]
fn http_checks_load_with_defaults_codes_classes_and_tls() {
    let http = |health: &str| GOOD.replace("{ check: tcp, interval: 500ms }", health);
    let c = parse(&http("{ check: http, port: 18083 }"), Path::new("test.yaml")).unwrap();
    let h = c.backends[0].health.http.clone().unwrap();
    assert_eq!((h.port, h.path.as_str(), h.host.as_deref()), (18083, "/", None));
    assert_eq!(h.expect, ExpectStatus(vec![(200, 200)]));
    assert!(h.tls.is_none());
    let text =
        http("{ check: http, port: 8080, path: /api/v5/status, expect_status: [2xx, 404], host: emqx, tls: false }");
    let h = parse(&text, Path::new("test.yaml")).unwrap().backends[0].health.http.clone().unwrap();
    assert_eq!(h.expect, ExpectStatus(vec![(200, 299), (404, 404)]));
    assert_eq!((h.path.as_str(), h.host.as_deref()), ("/api/v5/status", Some("emqx")));
    let text = http("{ check: http, port: 8443, expect_status: 204, tls: { server_name: emqx.example.org } }");
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        assert!(err_of(&text).to_string().contains("backends[0].health.tls: no system CA certificates"));
    } else {
        let h = parse(&text, Path::new("test.yaml")).unwrap().backends[0].health.http.clone().unwrap();
        assert_eq!(h.tls.and_then(|t| t.server_name).as_deref(), Some("emqx.example.org"));
        assert_eq!(h.expect, ExpectStatus(vec![(204, 204)]));
    }
    assert!(c.backends[0].health.check == HealthCheckKind::Http);
}

#[test]
fn http_check_errors_name_the_key() {
    let http = |health: &str| GOOD.replace("{ check: tcp, interval: 500ms }", health);
    let cases = [
        ("{ check: http }", "backends[0].health.port", "needs the port"),
        ("{ check: http, port: 0 }", "backends[0].health.port", "out of range 1 to 65535"),
        ("{ check: http, port: 70000 }", "backends[0].health.port", "out of range 1 to 65535"),
        ("{ check: http, port: 80, path: status }", "backends[0].health.path", "must start with /"),
        ("{ check: http, port: 80, expect_status: 600 }", "backends[0].health.expect_status", "100 to 599"),
        ("{ check: http, port: 80, expect_status: [200, 99] }", "backends[0].health.expect_status[1]", "100 to 599"),
        ("{ check: http, port: 80, expect_status: 6xx }", "backends[0].health.expect_status", "1xx to 5xx"),
        ("{ check: http, port: 80, expect_status: [] }", "backends[0].health.expect_status", "at least one"),
        ("{ check: http, port: 80, host: \"a b\" }", "backends[0].health.host", "without spaces"),
        ("{ check: http, port: 80, tls: { ca: /nonexistent.pem } }", "backends[0].health.tls.ca", "cannot read"),
        ("{ check: http, port: 80, tls: { cert: x } }", "backends[0].health.tls.cert", "ca, server_name"),
        ("{ check: http, port: 80, tls: yes please }", "backends[0].health.tls", "true, false"),
        ("{ check: mqtt, port: 18083 }", "backends[0].health.port", "only check: http"),
        ("{ check: tcp, path: /status }", "backends[0].health.path", "only check: http"),
    ];
    for (health, key, what) in cases {
        let e = err_of(&http(health));
        assert_eq!(e.key, key, "{health}: {e}");
        assert!(e.message.contains(what), "{health}: {e}");
    }
}

#[test]
fn username_from_certificate_needs_client_ca_and_names_cn_or_san() {
    let with =
        |tls: &str| GOOD.replacen("    backend: brokers\n", &format!("    tls: {tls}\n    backend: brokers\n"), 1);
    let e = err_of(&with("{ cert: a.crt, key: a.key, username_from_certificate: cn }"));
    assert_eq!(
        e.to_string(),
        "test.yaml: listeners[0].tls.username_from_certificate: needs tls.client_ca: the user name is taken from a \
         verified client certificate"
    );
    let tcp = with("{ cert: a.crt, key: a.key, client_ca: ca.pem, username_from_certificate: cn }");
    let e = err_of(&tcp.replacen("protocol: mqtt", "protocol: tcp", 1)).to_string();
    assert!(e.starts_with("test.yaml: listeners[0].tls.username_from_certificate: a tcp listener"), "{e}");
    let e = err_of(&with("{ cert: a.crt, key: a.key, client_ca: ca.pem, username_from_certificate: subject }"));
    assert!(e.to_string().contains("username_from_certificate"), "{e}");
    assert!(e.to_string().contains("cn") && e.to_string().contains("san"), "{e}");
}

#[test]
fn assigned_id_prefixes_are_set_per_server_and_never_overlap() {
    let with =
        |p1: &str, p2: &str| {
            GOOD.replacen("\"127.0.0.1:1883\" }", &format!("\"127.0.0.1:1883\", assigned_id_prefix: {p1} }}"), 1)
                .replacen("weight: 2 }", &format!("weight: 2, assigned_id_prefix: {p2} }}"), 1)
        };
    let c = parse(&with("b1-", "b2-"), Path::new("test.yaml")).unwrap();
    let prefixes: Vec<_> = c.backends[0].servers.iter().map(|s| s.assigned_id_prefix.as_deref()).collect();
    assert_eq!(prefixes, [Some("b1-"), Some("b2-")]);
    assert_eq!(parse(GOOD, Path::new("test.yaml")).unwrap().backends[0].servers[0].assigned_id_prefix, None);
    for (p1, p2, why) in [
        ("b-", "b-2", "overlaps server \"b1\"'s prefix \"b-\""),
        ("b-1", "b-", "overlaps"),
        ("a", "\"\"", "must be 1 to"),
    ] {
        let e = err_of(&with(p1, p2)).to_string();
        assert!(e.starts_with("test.yaml: backends[0].servers[1].assigned_id_prefix: "), "{p1} {p2}: {e}");
        assert!(e.contains(why), "{p1} {p2}: {e}");
    }
}
