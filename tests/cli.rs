//! The `mqtt-lb` binary: `check` accepts the shipped config.yaml and refuses each kind of bad configuration with a
//! message naming the file and the key; `run` stops with exit code 0 on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(BIN).args(["check", "--config"]).arg(config).output().expect("run mqtt-lb check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn base(pki: &TestPki) -> String {
    format!(
        r#"listeners:
  - name: mqtts
    bind: "127.0.0.1:18883"
    protocol: mqtt
    tls: {{ cert: "{}", key: "{}" }}
    backend: brokers
backends:
  - name: brokers
    health: {{ check: mqtt, interval: 2s, timeout: 1s }}
    servers:
      - {{ name: wbroker01, address: "wbroker01.domain.org:1883" }}
      - {{ name: wbroker02, address: "wbroker02.domain.org:1883" }}
      - {{ name: wbroker03, address: "10.0.0.3:1883" }}
admin: {{ bind: "127.0.0.1:19100" }}
limits: {{ connect_timeout: 10s, max_connect_size: 64KiB }}
"#,
        pki.cert.display(),
        pki.key.display()
    )
}

#[test]
fn check_accepts_the_shipped_example_once_it_has_a_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    // The shipped config.yaml refers to certs/server.crt and certs/server.key next to it.
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).expect("config.yaml");
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir certs");
    std::fs::copy(&pki.cert, dir.path().join("certs/server.crt")).expect("copy cert");
    std::fs::copy(&pki.key, dir.path().join("certs/server.key")).expect("copy key");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, example).expect("write");
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
}

#[test]
fn check_names_the_file_and_key_of_each_kind_of_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let good = base(&pki);
    let path = dir.path().join("lb.yaml");
    std::fs::write(&path, &good).expect("write");
    let (ok, text) = check(&path);
    assert!(ok, "the base config is valid: {text}");

    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    // (what, from, to, key path expected in the message, words expected in the message)
    let cases: Vec<(&str, String, String, &str, &str)> = vec![
        ("unknown key", "limits: {".into(), "limitz: {".into(), "limitz", "unknown field"),
        (
            "unknown nested key",
            "timeout: 1s".into(),
            "timeout: 1s, retries: 3".into(),
            "backends[0].health.retries",
            "unknown field",
        ),
        ("missing key", "    backend: brokers\n".into(), "".into(), "listeners[0]", "backend"),
        (
            "bad server address",
            "\"10.0.0.3:1883\"".into(),
            "\"10.0.0.3\"".into(),
            "backends[0].servers[2].address",
            "port",
        ),
        (
            "bad bind address",
            "\"127.0.0.1:18883\"".into(),
            "\"somewhere:18883\"".into(),
            "listeners[0].bind",
            "invalid address",
        ),
        (
            "duplicate server name",
            "name: wbroker02".into(),
            "name: wbroker01".into(),
            "backends[0].servers[1].name",
            "duplicate",
        ),
        (
            "unknown backend",
            "backend: brokers".into(),
            "backend: nobody".into(),
            "listeners[0].backend",
            "no backend named",
        ),
        ("unreadable certificate", cert.clone(), format!("{cert}.missing"), "listeners[0].tls.cert", "cannot read"),
        ("unreadable key", key.clone(), format!("{key}.missing"), "listeners[0].tls.key", "key"),
        ("key that is not a key", key.clone(), cert.clone(), "listeners[0].tls.key", "key"),
        (
            "bad duration",
            "interval: 2s".into(),
            "interval: 2 seconds".into(),
            "backends[0].health.interval",
            "invalid duration",
        ),
        ("bad size", "64KiB".into(), "64 kilobytes".into(), "limits.max_connect_size", "invalid size"),
        ("zero rise", "timeout: 1s".into(), "timeout: 1s, rise: 0".into(), "backends[0].health.rise", "at least 1"),
        ("bad protocol", "protocol: mqtt".into(), "protocol: amqp".into(), "listeners[0].protocol", "amqp"),
        ("YAML syntax", "listeners:".into(), "listeners: [".into(), "", "lb.yaml"),
    ];
    for (what, from, to, key_path, words) in cases {
        assert!(good.contains(&from), "{what}: the base config has {from:?}");
        std::fs::write(&path, good.replacen(&from, &to, 1)).expect("write");
        let (ok, text) = check(&path);
        assert!(!ok, "{what}: accepted");
        let first_line = text.lines().next().unwrap_or_default();
        assert!(first_line.contains(&path.display().to_string()), "{what}: names the file: {text}");
        assert!(first_line.contains(key_path), "{what}: names the key {key_path}: {text}");
        assert!(text.contains(words), "{what}: says {words:?}: {text}");
    }

    let (ok, text) = check(&dir.path().join("absent.yaml"));
    assert!(!ok);
    assert!(text.contains("absent.yaml") && text.contains("cannot read"), "{text}");
}

#[test]
fn check_refuses_unusable_ticket_key_files_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let keys = dir.path().join("tickets.keys");
    let path = dir.path().join("lb.yaml");
    let key = format!("key: \"{}\" }}", pki.key.display());
    let with_keys = |file: &Path| {
        base(&pki).replacen(&key, &format!("key: \"{}\", ticket_keys: \"{}\" }}", pki.key.display(), file.display()), 1)
    };
    // 80 bytes, as `openssl rand 80 | base64 -w0` writes them, and 48 (an HAProxy 48-byte key).
    let good = "A".repeat(107) + "=";
    let short = "B".repeat(64);
    std::fs::write(&keys, format!("# newest first\n{good}\n")).expect("write");
    std::fs::write(&path, with_keys(&keys)).expect("write");
    let (ok, text) = check(&path);
    assert!(ok, "a good key file: {text}");

    // (what, file content or None for no file, words expected in the message)
    let cases: [(&str, Option<String>, &str); 5] = [
        ("wrong length", Some(format!("{good}\n{short}\n")), "line 2: a key is 80 bytes"),
        ("bad base64", Some(format!("{}*=\n", &good[..106])), "line 1: not base64"),
        ("empty", Some(String::new()), "no key"),
        ("only comments", Some("# rotate weekly\n\n".into()), "no key"),
        ("unreadable", None, "cannot read"),
    ];
    for (what, content, words) in cases {
        let file = dir.path().join(format!("{}.keys", what.replace(' ', "-")));
        if let Some(content) = content {
            std::fs::write(&file, content).expect("write");
        }
        std::fs::write(&path, with_keys(&file)).expect("write");
        let (ok, text) = check(&path);
        assert!(!ok, "{what}: accepted");
        assert!(text.contains("listeners[0].tls.ticket_keys"), "{what}: names the key: {text}");
        assert!(text.contains(&file.display().to_string()), "{what}: names the key file: {text}");
        assert!(text.contains(words), "{what}: says {words:?}: {text}");
    }
    // A directory is not a key file.
    std::fs::write(&path, with_keys(dir.path())).expect("write");
    let (ok, text) = check(&path);
    assert!(!ok && text.contains("listeners[0].tls.ticket_keys") && text.contains("not a regular file"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_uses_the_configured_workers_and_stops_with_exit_code_zero_on_sigterm() {
    bounded(Duration::from_secs(30), "SIGTERM", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let (port, admin_port) = (free_port(), free_port());
        let yaml = yaml_for(&pki, &[&broker])
            .build()
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1)
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{admin_port}"), 1)
            + "workers: 3\n";
        let path = dir.path().join("lb.yaml");
        std::fs::write(&path, yaml).expect("write");
        let mut child = tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mqtt-lb");
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
        let ready = eventually(Duration::from_secs(10), || async move {
            try_http_get(admin, "/readyz").await.ok().filter(|(status, _)| *status == 200)
        })
        .await;
        assert!(ready.is_some(), "mqtt-lb became ready");
        // A client through the binary works.
        let tls = pki.client_config();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        assert_eq!(which_broker(addr, Some(tls), "cli-client", Version::V4).await, "b1");

        let pid = child.id().expect("pid");
        // `workers: 3` is the number of threads carrying connections.
        let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("threads of mqtt-lb")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim_end() == "mqtt-lb-worker")
            .count();
        assert_eq!(workers, 3, "worker threads");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").expect("wait");
        assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    })
    .await;
}
