//! The admin endpoint under abuse, against the real binary: stalled control requests are capped and ended at
//! `admin.request_timeout` without costing the MQTT listeners or `/healthz` anything; oversize bodies are refused
//! with 413 before they are read; the control endpoints need the bearer token of `admin.token_file`; and a second
//! `POST /reload` while one runs is refused instead of queued.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// One MQTT listener in front of `broker`, and `admin` as the admin section; returns the file and the listener.
fn write_config(dir: &Path, broker: &Mosquitto, admin: &str) -> (PathBuf, SocketAddr) {
    let listener = free_addr();
    let yaml = format!(
        "listeners: [{{ name: mqtt, bind: \"{listener}\", protocol: mqtt, backend: brokers }}]\n\
         backends:\n  - name: brokers\n    health: {{ check: tcp, interval: 500ms, timeout: 1s, rise: 1, fall: 1 }}\n\
         \x20   servers: [{{ name: b0, address: \"{}\" }}]\n\
         admin: {admin}\nworkers: 4\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
        broker.addr()
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, listener)
}

/// Sends `request` as is and reads the answer until the server closes: (status, the whole answer).
async fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let answer = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.expect("admin connect");
        s.write_all(request.as_bytes()).await.expect("write the request");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    })
    .await
    .unwrap_or_else(|_| panic!("no answer from {addr} within {STEP_TIMEOUT:?} to {request:?}"));
    (status_of(&answer), answer)
}

fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn put_state(state: &str, authorization: Option<&str>) -> String {
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!("PUT /servers/brokers/b0/state HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{state}", state.len())
}

/// 5,000 connections to the control socket each send a `PUT` head announcing a 64-byte body and nothing more, with
/// mqtt-lb limited to 1,024 open files. The control socket holds at most `admin.max_connections` (32) of them, so
/// mqtt-lb's open files stay near their idle count, an MQTT client gets through the MQTT listener and `/healthz`
/// answers meanwhile (without the cap, mqtt-lb accepts until it runs out of files, and the MQTT listener with it);
/// the ones accepted are answered 408 and closed at `admin.request_timeout` (2 s), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_control_requests_leave_mqtt_and_healthz_alone_and_end_at_the_deadline() {
    bounded(Duration::from_secs(90), "test", async {
        let cluster = Cluster::start(1).await;
        let (admin, control) = (free_addr(), free_addr());
        let section =
            format!("{{ bind: \"{admin}\", control_bind: \"{control}\", max_connections: 32, request_timeout: 2s }}");
        let (config, listener) = write_config(cluster.dir.path(), &cluster.brokers[0], &section);
        let lb = LbProcess::start_with_open_files(&config, admin, Some(1024)).await;
        let idle_files = lb.open_files();

        const STALLED: usize = 5000;
        let head = "PUT /servers/brokers/b0/state HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n";
        let started = Instant::now();
        let attempts: Vec<_> = (0..STALLED)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(control)).await.ok()?.ok()?;
                    s.write_all(head.as_bytes()).await.ok()?;
                    Some(s)
                })
            })
            .collect();
        let mut stalled = Vec::new();
        for attempt in attempts {
            stalled.extend(attempt.await.expect("connect task"));
        }
        let files_under_attack = lb.open_files();
        eprintln!(
            "{} of {STALLED} stalled requests connected in {:?}; mqtt-lb holds {files_under_attack} files ({idle_files} idle)",
            stalled.len(),
            started.elapsed()
        );
        // The rest found the accept queue full: the kernel, not mqtt-lb, holds (or drops) them.
        assert!(stalled.len() > 32, "only {} stalled connections", stalled.len());
        assert!(
            files_under_attack <= idle_files + 32 + 8,
            "mqtt-lb holds {files_under_attack} files ({idle_files} idle): the admin connections are not capped"
        );

        let mut client = MqttClient::connect(listener, None, "beside-the-attack", Version::V4)
            .await
            .unwrap_or_else(|e| panic!("an MQTT client during the attack: {e}\nlog:\n{}", lb.log()));
        client.round_trip("admin/limits", b"through").await.expect("a round trip during the attack");
        assert_eq!(http_get(admin, "/healthz").await.0, 200, "/healthz during the attack");
        client.disconnect().await;

        // Each accepted one is answered at its deadline; the cap lets 32 in at a time.
        let ends: Vec<_> = stalled
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut raw = Vec::new();
                    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
                    read.is_ok().then(|| (started.elapsed(), status_of(&String::from_utf8_lossy(&raw))))
                })
            })
            .collect();
        let mut closed = Vec::new();
        for end in ends {
            closed.extend(end.await.expect("read task"));
        }
        let first = closed.iter().map(|(at, _)| *at).min();
        eprintln!("{} stalled requests closed within {:?}; the first at {first:?}", closed.len(), started.elapsed());
        assert!(closed.len() >= 32, "only {} stalled requests were ended at the deadline", closed.len());
        assert!(first.is_some_and(|at| at >= Duration::from_millis(1500)), "one was closed before the deadline: {first:?}");
        assert!(closed.iter().all(|(_, status)| *status == 408), "stalled requests are answered 408: {closed:?}");
    })
    .await;
}

/// A body announced larger than 64 bytes is refused at once with 413, without waiting for (or reading) it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_is_refused_with_413_before_it_arrives() {
    bounded(Duration::from_secs(30), "test", async {
        let cluster = Cluster::start(1).await;
        let admin = free_addr();
        let (config, _) = write_config(cluster.dir.path(), &cluster.brokers[0], &format!("{{ bind: \"{admin}\" }}"));
        let lb = LbProcess::start(&config, admin).await;
        for request in [
            "PUT /servers/brokers/b0/state HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
            "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n",
        ] {
            let (status, answer) = exchange(admin, request).await;
            assert_eq!(status, 413, "{request:?} -> {answer}");
        }
        let (status, answer) = exchange(admin, &put_state("drain", None)).await;
        assert_eq!(status, 200, "a small body still passes: {answer}");
        drop(lb);
    })
    .await;
}

/// With `admin.token_file`, the control endpoints answer 401 (with `WWW-Authenticate`) without the token or with
/// a wrong one, and work with it; the read-only socket serves `/metrics` and `/healthz` to anyone and no control
/// endpoint, token or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_need_the_bearer_token_and_the_read_only_socket_has_none() {
    bounded(Duration::from_secs(30), "test", async {
        let cluster = Cluster::start(1).await;
        let (admin, control) = (free_addr(), free_addr());
        let token_file = cluster.dir.path().join("admin-token");
        std::fs::write(&token_file, "correct-horse-battery\n").expect("write the token");
        let section = format!("{{ bind: \"{admin}\", control_bind: \"{control}\", token_file: admin-token }}");
        let (config, _) = write_config(cluster.dir.path(), &cluster.brokers[0], &section);
        let lb = LbProcess::start(&config, admin).await;

        for authorization in [None, Some("Bearer wrong-horse-battery"), Some("Basic correct-horse-battery")] {
            let (status, answer) = exchange(control, &put_state("maint", authorization)).await;
            assert_eq!(status, 401, "{authorization:?}: {answer}");
            assert!(answer.to_ascii_lowercase().contains("www-authenticate: bearer"), "{answer}");
        }
        let (status, _) = exchange(control, "GET /servers HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 401, "GET /servers shows the servers' addresses: it needs the token too");
        assert_eq!(metric(admin, "mqttlb_server_state{backend=\"brokers\",server=\"b0\",state=\"ready\"}").await, 1.0);

        let (status, answer) = exchange(control, &put_state("maint", Some("Bearer correct-horse-battery"))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(metric(admin, "mqttlb_server_state{backend=\"brokers\",server=\"b0\",state=\"maint\"}").await, 1.0);

        let (status, answer) = exchange(admin, &put_state("ready", Some("Bearer correct-horse-battery"))).await;
        assert_eq!(status, 403, "the read-only socket has no control endpoint: {answer}");
        assert_eq!(http_get(admin, "/healthz").await.0, 200);
        assert_eq!(http_get(control, "/healthz").await.0, 200, "the control socket serves the read-only ones too");
        drop(lb);
    })
    .await;
}

/// A configuration whose reload takes a while for a real reason: 2,000 servers (each a pool entry, a health task
/// and its metrics), so that two reloads asked for at the same moment overlap (one takes about half a second in a
/// debug build). Config files must be regular files, so a FIFO cannot hold a reload open.
fn write_slow_config(dir: &Path, broker: &Mosquitto, admin: SocketAddr) -> PathBuf {
    let mut yaml = format!(
        "listeners: [{{ name: mqtt, bind: \"{}\", protocol: mqtt, backend: brokers }}]\n\
         backends:\n  - name: brokers\n    health: {{ check: tcp, interval: 1h }}\n    servers:\n\
         \x20     - {{ name: b0, address: \"{}\" }}\n",
        free_addr(),
        broker.addr()
    );
    for i in 1..2000 {
        yaml.push_str(&format!("      - {{ name: s{i}, address: \"127.0.0.1:{}\" }}\n", 20_000 + i));
    }
    yaml.push_str(&format!("admin: {{ bind: \"{admin}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n"));
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Two `POST /reload` at once: one reloads (200), the other is refused at once with 409 instead of waiting behind
/// it. Without the guard both answer 200, one after the other.
#[tokio::test]
async fn a_second_reload_while_one_runs_is_refused() {
    bounded(Duration::from_secs(60), "test", async {
        let cluster = Cluster::start(1).await;
        let admin = free_addr();
        let config = write_slow_config(cluster.dir.path(), &cluster.brokers[0], admin);
        let lb = LbProcess::start(&config, admin).await;
        let reload = "POST /reload HTTP/1.1\r\nHost: x\r\n\r\n";
        let (a, b) = tokio::join!(exchange(admin, reload), exchange(admin, reload));
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "two reloads at once:\n{}\n{}\nlog:\n{}", a.1, b.1, lb.log());
        let refused = if a.0 == 409 { &a.1 } else { &b.1 };
        assert!(refused.contains("already in progress"), "{refused}");
        // Once it is done, the next reload runs.
        let (status, answer) = exchange(admin, reload).await;
        assert_eq!(status, 200, "a reload after the first: {answer}");
        drop(lb);
    })
    .await;
}
