//! Server-assigned client ids stay sticky: with `servers[].assigned_id_prefix` matching each broker's
//! `auto_id_prefix`, an MQTT 5 client (paho-mqtt in Python, tests/paho/assigned_ids.py) that got its id from a broker
//! and reconnects with it through another mqtt-lb instance resumes its session on that broker.
//!
//! paho-mqtt comes from Debian's `python3-paho-mqtt` (scripts/install-deps.sh). Missing: skipped, or failed under
//! `MQTT_LB_REQUIRE_TOOLS=1`.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Clients per run: each connects with an empty id through one instance and reconnects through the other.
const CLIENTS: usize = 30;

/// A Python interpreter that can import paho-mqtt: `python3` on PATH, else Debian's own.
fn python_with_paho() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import paho.mqtt.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Two mqtt-lb instances with the same configuration in front of `brokers`, each server with `prefixes` (or none).
async fn two_instances(brokers: &[Mosquitto], prefixes: bool) -> (TestProxy, TestProxy) {
    let servers: Vec<String> = brokers
        .iter()
        .map(|b| {
            let prefix = if prefixes { format!(", assigned_id_prefix: \"{}-\"", b.name) } else { String::new() };
            format!("{{ name: {}, address: \"{}\"{prefix} }}", b.name, b.addr())
        })
        .collect();
    let yaml = format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:0\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
         \x20   servers: [ {} ]\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
        servers.join(", ")
    );
    let (a, b) = (TestProxy::start(&yaml).await, TestProxy::start(&yaml).await);
    for proxy in [&a, &b] {
        for broker in brokers {
            proxy.wait_server_up(&broker.name, true, Duration::from_secs(5)).await;
        }
    }
    // `/servers` shows each server's prefix (null without one).
    let (_, body) = http_get(a.admin, "/servers").await;
    let view: serde_json::Value = serde_json::from_str(&body).expect("JSON /servers");
    let shown: Vec<Option<&str>> = view["backends"][0]["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["assigned_id_prefix"].as_str())
        .collect();
    let configured: Vec<String> = brokers.iter().map(|b| format!("{}-", b.name)).collect();
    let want: Vec<Option<&str>> = configured.iter().map(|p| prefixes.then_some(p.as_str())).collect();
    assert_eq!(shown, want, "{body}");
    (a, b)
}

/// Runs the paho clients through `a` then `b` (alternating which comes first); returns (assigned id, session
/// present on the reconnect) per client.
async fn paho_reconnects(python: &str, a: &TestProxy, b: &TestProxy) -> Vec<(String, bool)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/assigned_ids.py");
    let mut command = tokio::process::Command::new(python);
    command.arg(&script).arg("127.0.0.1").arg(a.mqtts.port().to_string()).arg(b.mqtts.port().to_string());
    command.arg(CLIENTS.to_string()).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the paho clients finish within 30 s")
        .expect("run the paho script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "paho script: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines: Vec<(String, bool)> =
        stdout.lines().filter_map(|l| l.split_once(' ')).map(|(id, present)| (id.to_owned(), present == "1")).collect();
    assert_eq!(lines.len(), CLIENTS, "one line per client: {stdout}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_ids_reconnect_to_the_broker_holding_their_session_from_either_instance() {
    let Some(python) = python_with_paho() else {
        let why = "paho-mqtt for Python is not installed (Debian: python3-paho-mqtt)";
        assert!(std::env::var("MQTT_LB_REQUIRE_TOOLS").as_deref() != Ok("1"), "{why}");
        return eprintln!("SKIPPED: {why}");
    };
    bounded(Duration::from_secs(90), "assigned ids", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut brokers = Vec::new();
        for name in ["b0", "b1", "b2"] {
            brokers.push(Mosquitto::start_with_config(dir.path(), name, &format!("auto_id_prefix {name}-\n")).await);
        }

        let (a, b) = two_instances(&brokers, true).await;
        let runs = paho_reconnects(python, &a, &b).await;
        let resumed = runs.iter().filter(|(_, present)| *present).count();
        let mut by_broker: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &runs {
            *by_broker.entry(id.split('-').next().unwrap_or_default()).or_default() += 1;
        }
        eprintln!("with assigned_id_prefix: {resumed} of {CLIENTS} sessions resumed; ids assigned by {by_broker:?}");
        assert_eq!(resumed, CLIENTS, "every reconnect resumes its session: {runs:?}");
        assert!(by_broker.len() >= 2, "the first connections were spread over the brokers: {by_broker:?}");
        a.stop().await;
        b.stop().await;

        // The same clients without the key: the assigned id is hashed like any other and mostly lands elsewhere.
        let (a, b) = two_instances(&brokers, false).await;
        let runs = paho_reconnects(python, &a, &b).await;
        let resumed = runs.iter().filter(|(_, present)| *present).count();
        eprintln!("without assigned_id_prefix: {resumed} of {CLIENTS} sessions resumed");
        assert!(resumed < CLIENTS, "without the prefixes placement ignores who assigned the id: {resumed}");
        a.stop().await;
        b.stop().await;
    })
    .await;
}
