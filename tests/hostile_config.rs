//! A configuration file that could crash or wedge the real binary (issue 17 item 3): numbers out of range are
//! refused by `check` and `run` alike with the key named; a reload whose certificate names a device or a FIFO fails
//! at once with the reason, the process keeps serving with the old configuration, its memory stays small, and
//! SIGTERM stops it.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs the binary with `args` to its end (10 s at most): (success, stderr).
fn run_binary(args: &[&str], config: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-lb"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqtt-lb");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mqtt-lb {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_and_run_refuse_numbers_out_of_range_naming_the_key_and_the_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let path = dir.path().join("lb.yaml");
    let cases = [
        ("limits: { max_connections: 2305843009213693952 }", "limits.max_connections", "0 to 10000000"),
        ("limits: { max_connections_per_ip: -1 }", "limits.max_connections_per_ip", "0 to 10000000"),
        ("limits: { idle_timeout: 5124095576030431h }", "limits.idle_timeout", "0 to 168h"),
        ("limits: { connect_timeout: 100000h }", "limits.connect_timeout", "1ms to 1h"),
        ("limits: { max_connection_rate_per_ip: 4294967295 }", "limits.max_connection_rate_per_ip", "0 to 1000000"),
    ];
    for (extra, key, words) in cases {
        let text = tls_front_yaml(&pki, "127.0.0.1:1", 0, 0, extra);
        std::fs::write(&path, text).expect("write");
        for command in [&["check"][..], &["run"][..]] {
            let (ok, stderr) = run_binary(command, &path);
            assert!(!ok, "{command:?} accepted {extra}: {stderr}");
            assert!(stderr.contains(&path.display().to_string()), "{command:?} names the file: {stderr}");
            assert!(stderr.contains(key) && stderr.contains(words), "{command:?} {extra}: {stderr}");
            assert!(!stderr.contains("panicked"), "{command:?} {extra}: {stderr}");
        }
    }
}

/// POST `path` to the admin endpoint: (status, body), or an error if it does not answer within `within`.
async fn post(admin: SocketAddr, path: &str, within: Duration) -> Result<(u16, String), String> {
    tokio::time::timeout(within, async {
        let mut s = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, text))
    })
    .await
    .map_err(|_| format!("POST {path}: no answer within {within:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_device_or_a_fifo_fails_fast_keeps_serving_and_sigterm_stops() {
    bounded(Duration::from_secs(60), "hostile reload", async {
        // The directory bound first drops last, after the broker.
        let OneBroker { dir, pki, broker: _broker, front, admin, config: path, yaml: good } = OneBroker::start().await;
        let mut lb = LbProcess::start(&path, admin).await;
        let mut client =
            MqttClient::connect(front, Some(pki.client_config()), "held", Version::V4).await.expect("connect");

        let fifo = dir.path().join("cert.fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
        assert!(made.success(), "mkfifo");
        let cert = pki.cert.display().to_string();
        for (named, kind) in [("/dev/zero", "device"), (fifo.to_str().expect("utf-8 path"), "FIFO")] {
            std::fs::write(&path, good.replacen(&cert, named, 1)).expect("write");
            let started = Instant::now();
            let (status, answer) = post(admin, "/reload", Duration::from_secs(5)).await.expect("POST /reload answers");
            eprintln!("reload with cert {named}: {status} after {:?}", started.elapsed());
            assert_eq!(status, 422, "{answer}");
            assert!(answer.contains("listeners[0].tls.cert") && answer.contains(kind), "{answer}");
            // SIGHUP takes the same way: refused and counted.
            lb.signal("HUP");
            client.round_trip("still/served", named.as_bytes()).await.expect("the held client is still relayed");
            MqttClient::connect(front, Some(pki.client_config()), "new", Version::V4)
                .await
                .expect("a new client gets the old certificate")
                .disconnect()
                .await;
        }
        let refused = eventually(Duration::from_secs(5), || async {
            let n = metric(admin, "mqttlb_config_reloads_total{result=\"error\"}").await;
            (n >= 4.0).then_some(n)
        })
        .await;
        assert!(refused.is_some(), "four refused reloads counted");
        let rss = lb.rss() / 1024;
        eprintln!("VmRSS after the refused reloads: {rss} KiB");
        assert!(rss < 128 * 1024, "VmRSS {rss} KiB");

        lb.signal("TERM");
        let exited = lb.wait_exit(Duration::from_secs(10)).await.expect("SIGTERM stops the process");
        assert!(exited.success(), "{exited}");
    })
    .await;
}
