//! `admin.state_file`: a server state set through the admin API survives a restart of the process (HAProxy's
//! `server-state-file`); a state file that names unknown servers or is garbled does not stop the start.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two servers in backend `brokers`, the admin endpoint on a free port, states kept in `states`.
fn write_config(dir: &Path, b1: &Mosquitto, b2: &Mosquitto) -> (std::path::PathBuf, SocketAddr) {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:{port}\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n    servers:\n\
         \x20     - {{ name: {}, address: \"{}\" }}\n      - {{ name: {}, address: \"{}\" }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\", state_file: states }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
        b1.name,
        b1.addr(),
        b2.name,
        b2.addr()
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, SocketAddr::from(([127, 0, 0, 1], admin_port)))
}

async fn put_state(admin: SocketAddr, server: &str, state: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin connect");
    let request = format!(
        "PUT /servers/brokers/{server}/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{state}",
        state.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, raw)
}

/// The `state` of every server, by name, from `GET /servers`.
async fn states(admin: SocketAddr) -> Vec<(String, String)> {
    let (_, body) = http_get(admin, "/servers").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let servers = v["backends"][0]["servers"].as_array().cloned().unwrap_or_default();
    servers
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or("").to_owned(), s["state"].as_str().unwrap_or("").to_owned()))
        .collect()
}

async fn stop(mut lb: LbProcess) {
    lb.signal("TERM");
    let exited = lb.wait_exit(Duration::from_secs(5)).await.expect("mqtt-lb exits on SIGTERM");
    assert!(exited.success(), "exit status {exited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_set_through_the_admin_api_survives_a_restart() {
    bounded(Duration::from_secs(40), "state file", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let b1 = Mosquitto::start(dir.path(), "b1").await;
        let b2 = Mosquitto::start(dir.path(), "b2").await;
        let (config, admin) = write_config(dir.path(), &b1, &b2);

        let lb = LbProcess::start(&config, admin).await;
        let (status, answer) = put_state(admin, "b2", "maint").await;
        assert_eq!(status, 200, "{answer}");
        assert!(!answer.contains("warning"), "recorded: {answer}");
        let file = std::fs::read_to_string(dir.path().join("states")).expect("the state file is written");
        assert!(file.contains("brokers b2 maint") && file.contains("brokers b1 ready"), "{file}");
        stop(lb).await;

        let lb = LbProcess::start(&config, admin).await;
        let want = [("b1".to_owned(), "ready".to_owned()), ("b2".to_owned(), "maint".to_owned())];
        assert_eq!(states(admin).await, want, "states restored after the restart");
        stop(lb).await;

        // A file naming a server that left the configuration, with a garbled line: both skipped with a warning,
        // the rest restored, the process starts.
        std::fs::write(dir.path().join("states"), "brokers gone maint\nnot a state line at all\nbrokers b2 drain\n")
            .expect("rewrite the state file");
        let lb = LbProcess::start(&config, admin).await;
        let want = [("b1".to_owned(), "ready".to_owned()), ("b2".to_owned(), "drain".to_owned())];
        assert_eq!(states(admin).await, want);
        let log = lb.log();
        assert!(log.contains("no such server") && log.contains("expected `backend server state`"), "{log}");
        stop(lb).await;
    })
    .await;
}
