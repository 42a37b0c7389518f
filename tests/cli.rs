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
        (
            "zero rise",
            "timeout: 1s".into(),
            "timeout: 1s, rise: 0".into(),
            "backends[0].health.rise",
            "allowed 1 to 1000",
        ),
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

/// `mqtt-lb <command> --help`: the options of that command, each described for it.
fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().expect("run mqtt-lb --help");
    assert!(out.status.success(), "{args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_command_help_lists_only_its_own_options() {
    let check = help(&["check"]);
    assert!(check.contains("--config") && check.contains("Configuration file to validate"), "{check}");
    assert!(!check.contains("--log-format") && !check.contains("run"), "check ignores the log format: {check}");
    let run = help(&["run"]);
    assert!(run.contains("Configuration file to run") && run.contains("--log-format"), "{run}");
    let version = help(&["version"]);
    assert!(!version.contains("--config") && !version.contains("--log-format"), "{version}");
    // Options before a command belong to the implied `run`: refused, not silently ignored by `check`.
    let out = Command::new(BIN).args(["--config", "/nonexistent.yaml", "check"]).output().expect("run mqtt-lb");
    assert!(!out.status.success());
}

/// `mqtt-lb <args>` with `input` on its standard input: (success, stdout and stderr).
fn with_stdin(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mqtt-lb");
    // A command that refuses before reading closes its standard input: that is its answer, not the test's error.
    if let Err(e) = child.stdin.take().expect("stdin").write_all(input.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    let out = child.wait_with_output().expect("wait for mqtt-lb");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn check_reads_standard_input_for_dash_and_run_refuses_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let good = base(&pki);
    let (ok, text) = with_stdin(&["check", "--config", "-"], &good);
    assert!(ok, "{text}");
    assert!(text.contains("<stdin>: configuration is valid (1 listeners, 1 backends, 3 servers)"), "{text}");
    let (ok, text) = with_stdin(&["check", "--config", "-"], &good.replacen("\"10.0.0.3:1883\"", "\"10.0.0.3\"", 1));
    assert!(!ok, "{text}");
    assert!(text.contains("<stdin>: backends[0].servers[2].address: invalid address"), "{text}");
    // `run` rereads its file on reload: it refuses standard input and says why, instead of starting.
    let (ok, text) = with_stdin(&["run", "--config", "-"], &good);
    assert!(!ok, "{text}");
    assert!(text.contains("`run` needs a file"), "{text}");
}

#[test]
fn an_unknown_key_suggests_the_closest_and_lists_only_the_keys_valid_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let good = base(&pki);
    let path = dir.path().join("lb.yaml");
    let refused = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        std::fs::write(&path, good.replacen(from, to, 1)).expect("write");
        let (ok, text) = check(&path);
        assert!(!ok, "{to}: accepted");
        text
    };
    let text = refused("connect_timeout: 10s", "connect_timout: 10s");
    assert!(text.contains("lb.yaml: limits.connect_timout: unknown field `connect_timout`"), "{text}");
    assert!(text.contains("did you mean `connect_timeout`?"), "{text}");
    assert!(text.contains("max_connections_per_ip") && !text.contains("interval"), "limits' keys only: {text}");

    // An mqtt listener: its own keys, none of the UDP-only or WebSocket-only ones.
    let text = refused("    backend: brokers\n", "    backend: brokers\n    trusted_proxy: [\"10.0.0.0/8\"]\n");
    assert!(text.contains("listeners[0].trusted_proxy: unknown field"), "{text}");
    assert!(text.contains("did you mean `trusted_proxies`?"), "{text}");
    assert!(
        text.contains("(the keys here: name, bind, protocol, backend, routes, tls, allowed_sources, trusted_proxies)"),
        "{text}"
    );
    for other in ["max_flows", "flow_idle_timeout", "dtls_cid_length", "allowed_origins", "path"] {
        assert!(!text.contains(other), "{other} is not an mqtt listener's key: {text}");
    }
    // A key of another protocol says which one has it.
    let text = refused("    backend: brokers\n", "    backend: brokers\n    max_flows: 10\n");
    assert!(text.contains("listeners[0].max_flows: only a listener with protocol: coap has this key"), "{text}");
    // Far from every key: no guess.
    let text = refused("timeout: 1s", "timeout: 1s, colour: red");
    assert!(text.contains("unknown field `colour`") && !text.contains("did you mean"), "{text}");
}

#[test]
fn a_duplicate_key_names_the_key_and_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let good = base(&pki);
    let path = dir.path().join("lb.yaml");
    let twice = good.replacen("    backend: brokers\n", "    backend: brokers\n    backend: brokers\n", 1);
    let line = twice.lines().position(|l| l == "    backend: brokers").expect("the key") + 2;
    std::fs::write(&path, twice).expect("write");
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("lb.yaml: listeners[0].backend: duplicate key `backend` (again at line {line})")),
        "{text}"
    );
    assert!(!text.contains("DuplicateKeyPolicy") && !text.contains("Options"), "no library text: {text}");
}

#[test]
fn a_server_at_port_zero_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let path = dir.path().join("lb.yaml");
    for (from, to) in [("\"10.0.0.3:1883\"", "\"10.0.0.3:0\""), ("wbroker01.domain.org:1883", "wbroker01.domain.org:0")]
    {
        std::fs::write(&path, base(&pki).replacen(from, to, 1)).expect("write");
        let (ok, text) = check(&path);
        assert!(!ok, "{to}: accepted");
        assert!(text.contains("servers[") && text.contains("].address: invalid address"), "{text}");
        assert!(text.contains("the port must be 1 to 65535"), "{text}");
    }
}

#[test]
fn a_missing_certificate_or_key_says_how_to_get_a_test_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    // The shipped config.yaml as on a fresh clone: certs/server.crt and certs/server.key do not exist.
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).expect("config.yaml");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, example).expect("write");
    let hint = "run scripts/make-test-cert.sh for a test certificate (see certs/README.md)";
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(text.contains("listeners[0].tls.cert: cannot read") && text.contains("certs/server.crt"), "{text}");
    assert!(text.contains(hint), "{text}");
    // With the certificate but not its key.
    std::fs::create_dir(dir.path().join("certs")).expect("mkdir certs");
    std::fs::copy(&pki.cert, dir.path().join("certs/server.crt")).expect("copy cert");
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(text.contains("listeners[0].tls.key: cannot read") && text.contains("certs/server.key"), "{text}");
    assert!(text.contains(hint), "{text}");
}

/// The soft open-file limit (and so the number of clients) is not left at a low default: `run` raises it to the hard
/// limit at start. Started from a shell whose soft limit is 1024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_raises_the_soft_open_file_limit_to_the_hard_one() {
    bounded(Duration::from_secs(30), "open-file limit", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let admin_port = free_port();
        let yaml = yaml_for(&pki, &[&broker]).build().replacen(
            "admin: { bind: \"127.0.0.1:0\" }",
            &format!("admin: {{ bind: \"127.0.0.1:{admin_port}\" }}"),
            1,
        );
        let path = dir.path().join("lb.yaml");
        std::fs::write(&path, yaml).expect("write");
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 1024 && exec \"$0\" run --config \"$1\"", BIN])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mqtt-lb");
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
        let up =
            eventually(Duration::from_secs(10), || async move { try_http_get(admin, "/healthz").await.ok() }).await;
        assert!(up.is_some(), "mqtt-lb answers");
        let pid = child.id().expect("pid");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits of mqtt-lb");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
        let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(numbers.len(), 2, "{line}");
        assert_eq!(numbers.first(), numbers.get(1), "soft limit raised to the hard one: {line}");
        assert_ne!(numbers.first(), Some(&"1024"), "the hard limit of this test run is above 1024: {line}");
        let _ = child.kill().await;
    })
    .await;
}

#[test]
fn check_warns_loudly_when_control_is_bound_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(dir.path());
    let path = dir.path().join("config.yaml");
    let admin = |section: &str| base(&pki).replace("admin: { bind: \"127.0.0.1:19100\" }", section);
    std::fs::write(&path, admin("admin: { bind: \"0.0.0.0:19100\", control_bind: \"0.0.0.0:19101\" }")).expect("write");
    let (ok, text) = check(&path);
    assert!(ok, "a warning, not an error: {text}");
    assert!(text.contains("WARNING: admin.control_bind 0.0.0.0:19101") && text.contains("admin.token_file"), "{text}");

    std::fs::write(dir.path().join("token"), "t0ken\n").expect("write the token");
    for quiet in [
        "admin: { bind: \"0.0.0.0:19100\", control_bind: \"0.0.0.0:19101\", token_file: token }",
        "admin: { bind: \"0.0.0.0:19100\", control_bind: \"127.0.0.1:19101\" }",
        "admin: { bind: \"0.0.0.0:19100\" }",
    ] {
        std::fs::write(&path, admin(quiet)).expect("write");
        let (ok, text) = check(&path);
        assert!(ok && !text.contains("WARNING"), "{quiet}: {text}");
    }
}
