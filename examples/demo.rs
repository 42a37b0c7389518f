//! The mqtt-lb demo: three real brokers (Debian's mosquitto) on loopback, mqtt-lb in front of them terminating TLS
//! with a freshly generated certificate, and real MQTT clients (v3.1.1 and v5) showing
//! - where each client id lands (each broker answers with its own name in a retained message),
//! - that a reconnect lands on the same broker, and that a second mqtt-lb instance agrees with no shared state,
//! - that a broker going down moves only its own clients, and coming back takes them back,
//! - that a malformed CONNECT is refused with a CONNACK and never reaches a broker,
//! - the admin endpoint: /servers and /metrics.
//!
//! Run it with `scripts/demo.sh` (installs mosquitto if needed) or `cargo run --example demo`.

use std::time::{Duration, Instant};

use mqtt_lb_testkit::*;

const IDS: [&str; 12] = [
    "wis2-gb-fr-meteofrance",
    "wis2-gb-cn-cma",
    "wis2-gc-de-dwd",
    "wis2-gb-br-inmet",
    "sensor-0001",
    "sensor-0002",
    "sensor-0003",
    "sensor-0004",
    "weather-station-oslo",
    "weather-station-lima",
    "dashboard-7f3a",
    "dashboard-c210",
];

fn step(title: &str) {
    println!("\n== {title}");
}

async fn placements(proxy: std::net::SocketAddr, tls: &std::sync::Arc<rustls::ClientConfig>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let version = if i % 2 == 0 { Version::V4 } else { Version::V5 };
        out.push(which_broker(proxy, Some(tls.clone()), id, version).await);
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temporary folder");
    step("Starting three real brokers (mosquitto) on loopback");
    let mut brokers = Vec::new();
    for name in ["wbroker01", "wbroker02", "wbroker03"] {
        let b = Mosquitto::start(dir.path(), name).await;
        println!("   {name}: mosquitto on {} (retained lb/whoami = \"{name}\")", b.addr());
        brokers.push(b);
    }

    step("Starting mqtt-lb: TLS on a free port, a fresh self-signed CA and certificate (rcgen)");
    let pki = TestPki::new(dir.path());
    let refs: Vec<&Mosquitto> = brokers.iter().collect();
    let yaml = yaml_for(&pki, &refs).health("mqtt", "300ms", "500ms", 2, 2).drain_timeout("2s").build();
    println!("   config:\n{}", yaml.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n"));
    let proxy = TestProxy::start(&yaml).await;
    let tls = pki.client_config();
    println!("   mqtt-lb listening on {} (MQTT over TLS), admin on http://{}", proxy.mqtts, proxy.admin);

    step("Clients connect over TLS; each broker tells who it is");
    let first = placements(proxy.mqtts, &tls).await;
    for (i, (id, broker)) in IDS.iter().zip(&first).enumerate() {
        let v = if i % 2 == 0 { "3.1.1" } else { "5" };
        println!("   {id:<26} (MQTT {v:<5}) -> {broker}");
    }

    step("The same clients reconnect: every one lands on the same broker");
    let again = placements(proxy.mqtts, &tls).await;
    let same = first.iter().zip(&again).filter(|(a, b)| a == b).count();
    println!("   {same}/{} on the same broker as before", IDS.len());

    step("A second mqtt-lb instance with the same server list, no shared state: does it agree?");
    let second = TestProxy::start(&yaml).await;
    let other = placements(second.mqtts, &tls).await;
    let agree = first.iter().zip(&other).filter(|(a, b)| a == b).count();
    println!("   {agree}/{} clients placed identically by instance 2 ({})", IDS.len(), second.mqtts);
    second.stop().await;

    step("Publish/subscribe through the proxy");
    let mut c = MqttClient::connect(proxy.mqtts, Some(tls.clone()), "demo-pubsub", Version::V5).await.expect("connect");
    c.round_trip("wis2/demo/obs", b"temperature=21.5").await.expect("round trip");
    println!("   demo-pubsub (MQTT 5) subscribed, published and received 'temperature=21.5' on wis2/demo/obs");
    c.disconnect().await;

    // Take down the broker of the first client, so that the demo shows clients moving.
    let victim = brokers.iter().position(|b| Some(&b.name) == first.first()).unwrap_or(1);
    let victim_name = brokers[victim].name.clone();
    step(&format!("{victim_name} goes down (killed)"));
    brokers[victim].stop();
    let took = proxy.wait_server_up(&victim_name, false, Duration::from_secs(10)).await;
    println!("   health checks marked {victim_name} DOWN after {took:.1?} (interval 300ms, fall 2)");
    let during = placements(proxy.mqtts, &tls).await;
    for (id, (before, now)) in IDS.iter().zip(first.iter().zip(&during)) {
        let note = if before == now {
            "stays"
        } else if *before == victim_name {
            "moved: its broker is down"
        } else {
            "MOVED although its broker is up"
        };
        println!("   {id:<26} {before} -> {now} ({note})");
    }

    step(&format!("{victim_name} comes back"));
    brokers[victim].restart().await;
    let took = proxy.wait_server_up(&victim_name, true, Duration::from_secs(10)).await;
    println!("   marked UP after {took:.1?} (rise 2)");
    let after = placements(proxy.mqtts, &tls).await;
    let home = first.iter().zip(&after).filter(|(a, b)| a == b).count();
    println!("   {home}/{} clients are back on their original broker", IDS.len());

    step("A malformed CONNECT (protocol level 6) is refused and never reaches a broker");
    let seen: usize = brokers.iter().map(|b| b.connections_seen()).sum();
    let mut bad = connect_packet_v311("bad-client");
    if let Some(level) = bad.get_mut(8) {
        *level = 6;
    }
    let answer = tls_exchange(proxy.mqtts, tls.clone(), &bad, Duration::from_secs(5)).await.expect("answer");
    println!("   answer: {answer:02x?} (CONNACK 0x01: unacceptable protocol version), then close");
    let garbage = tls_exchange(proxy.mqtts, tls.clone(), b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5))
        .await
        .expect("answer");
    println!("   an HTTP request on the MQTT port: {} bytes of answer, closed", garbage.len());
    let seen_after: usize = brokers.iter().map(|b| b.connections_seen()).sum();
    // Health probes keep connecting; count only what is not a probe by looking at client ids.
    let leaked = brokers.iter().flat_map(|b| b.client_ids_seen()).filter(|id| id == "bad-client").count();
    println!(
        "   brokers saw {leaked} connection(s) from bad-client ({} probe connections meanwhile)",
        seen_after - seen
    );

    step("Admin endpoint");
    let (_, servers) = http_get(proxy.admin, "/servers").await;
    println!("   GET /servers -> {}", servers.trim());
    let (_, metrics) = http_get(proxy.admin, "/metrics").await;
    for line in metrics.lines().filter(|l| {
        (l.starts_with("mqttlb_connections_")
            || l.starts_with("mqttlb_server_up")
            || l.starts_with("mqttlb_server_connections_total"))
            && !l.ends_with(" 0")
    }) {
        println!("   {line}");
    }

    proxy.stop().await;
    let wrongly_moved = first.iter().zip(&during).filter(|(b, n)| b != n && **b != victim_name).count();
    let ok = wrongly_moved == 0
        && same == IDS.len()
        && agree == IDS.len()
        && home == IDS.len()
        && answer == [0x20, 0x02, 0x00, 0x01]
        && leaked == 0;
    println!(
        "\n== Demo finished in {:.1?}: {}",
        started.elapsed(),
        if ok { "all checks passed" } else { "SOMETHING IS WRONG" }
    );
    if !ok {
        std::process::exit(1);
    }
}
