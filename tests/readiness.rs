//! Readiness health checks (`check: http`, issue 15 item 3) with real parts: mosquitto brokers on distinct loopback
//! addresses (127.0.0.1, .2, .3), each server's readiness endpoint a real HTTP server on another port of its host
//! (Python's http.server with the handler below, answering what a status file says, so the test flips it), the
//! proxy in process, and the real binary for `check`.

mod common;
mod tools;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-lb");

/// The readiness endpoint: `GET /api/v5/status` on every host given, one port, answering the status in
/// `DIR/status-HOST` (404 on other paths); each answer is logged to `DIR/requests.log` as `HOST CODE` before it is
/// sent. `--tls CERT KEY` serves HTTPS. Prints the port once listening.
const READINESS_PY: &str = r#"
import http.server, os, ssl, sys, threading
args = sys.argv[1:]
tls = None
if "--tls" in args:
    i = args.index("--tls")
    tls, args = args[i + 1:i + 3], args[:i]
state, hosts = args[0], args[1:]
log = open(os.path.join(state, "requests.log"), "a", buffering=1)
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = self.server.server_address[0]
        try:
            with open(os.path.join(state, "status-" + host)) as f:
                code = int(f.read().strip())
        except (OSError, ValueError):
            code = 500
        if self.path != "/api/v5/status":
            code = 404
        with lock:
            log.write(f"{host} {code}\n")
        body = b"ready\n" if code == 200 else b"not ready\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port, servers = 0, []
for host in hosts:
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    servers.append(server)
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print(port, flush=True)
servers[0].serve_forever()
"#;

/// Slack for scheduling on a loaded 2-core machine, on top of rise/fall x interval.
const HEALTH_WAIT: Duration = Duration::from_secs(10);

fn python3() -> Option<PathBuf> {
    tools::find_tool("python3", "PYTHON3", &["/usr/bin/python3"], "apt-get install python3")
}

/// The readiness endpoints of some hosts: one Python process, killed (by PID) on drop.
struct Readiness {
    port: u16,
    dir: PathBuf,
    _child: tokio::process::Child,
}

impl Readiness {
    /// Serves on `hosts`, each answering 200 until [`Readiness::set`] says otherwise.
    async fn start(python: &Path, dir: &Path, hosts: &[&str], tls: Option<&TestPki>) -> Readiness {
        let script = dir.join("readiness.py");
        std::fs::write(&script, READINESS_PY).expect("write the readiness script");
        for host in hosts {
            set_status(dir, host, 200);
        }
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(&script).arg(dir).args(hosts);
        if let Some(pki) = tls {
            cmd.arg("--tls").arg(&pki.cert).arg(&pki.key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the readiness endpoint");
        let stdout = child.stdout.take().expect("the endpoint's stdout");
        let mut line = String::new();
        bounded(Duration::from_secs(10), "the readiness endpoint's port", async {
            tokio::io::BufReader::new(stdout).read_line(&mut line).await.expect("read the port")
        })
        .await;
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the endpoint printed {line:?}, not a port"));
        Readiness { port, dir: dir.to_path_buf(), _child: child }
    }

    fn set(&self, host: &str, code: u16) {
        set_status(&self.dir, host, code);
    }

    /// How many times the endpoint of `host` answered `code` so far.
    fn answered(&self, host: &str, code: u16) -> usize {
        let log = std::fs::read_to_string(self.dir.join("requests.log")).unwrap_or_default();
        log.lines().filter(|l| *l == format!("{host} {code}")).count()
    }
}

/// Writes the status `host` answers, atomically (the endpoint never reads half a file).
fn set_status(dir: &Path, host: &str, code: u16) {
    let tmp = dir.join(format!("status-{host}.tmp"));
    std::fs::write(&tmp, code.to_string()).expect("write the status");
    std::fs::rename(&tmp, dir.join(format!("status-{host}"))).expect("move the status in place");
}

/// A server's entry in `GET /servers` (first backend).
async fn server_view(admin: std::net::SocketAddr, server: &str) -> serde_json::Value {
    let (status, body) = http_get(admin, "/servers").await;
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).expect("/servers is JSON");
    let servers = all["backends"][0]["servers"].as_array().cloned().unwrap_or_default();
    servers.into_iter().find(|s| s["name"] == server).unwrap_or_else(|| panic!("no {server} in {body}"))
}

/// Waits until `/servers` shows `server` with `health` and a `check_error` containing each of `reason` (none: null).
async fn wait_view(admin: std::net::SocketAddr, server: &str, health: &str, reason: &[&str]) -> serde_json::Value {
    let found = eventually(HEALTH_WAIT, || async move {
        let view = server_view(admin, server).await;
        let error = view["check_error"].as_str().unwrap_or_default().to_owned();
        let reason_ok =
            if reason.is_empty() { view["check_error"].is_null() } else { reason.iter().all(|r| error.contains(r)) };
        (view["health"] == health && reason_ok).then_some(view)
    })
    .await;
    match found {
        Some(view) => view,
        None => {
            let last = server_view(admin, server).await;
            panic!("{server} did not become {health} with reason {reason:?}: now {last}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_readiness_endpoint_answers_503_leaves_placement_and_returns_after_rise_good_answers() {
    let Some(python) = python3() else { return };
    bounded(Duration::from_secs(90), "the readiness scenario", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let b0 = Mosquitto::start_on(dir.path(), "b0", Ipv4Addr::new(127, 0, 0, 1)).await;
        let b1 = Mosquitto::start_on(dir.path(), "b1", Ipv4Addr::new(127, 0, 0, 2)).await;
        let b2 = Mosquitto::start_on(dir.path(), "b2", Ipv4Addr::new(127, 0, 0, 3)).await;
        // b2's host has no readiness endpoint: its MQTT port is fine, its readiness port refuses.
        let ready = Readiness::start(&python, dir.path(), &["127.0.0.1", "127.0.0.2"], None).await;
        let check = format!("http, port: {}, path: /api/v5/status", ready.port);
        let yaml = yaml_for(&pki, &[&b0, &b1, &b2]).health(&check, "200ms", "500ms", 2, 2).build();
        let proxy = TestProxy::start(&yaml).await;
        let tls = Some(pki.client_config());

        let view = wait_view(proxy.admin, "b2", "down", &["readiness endpoint", "127.0.0.3", "refused"]).await;
        assert_eq!(view["state"], "ready", "an unreachable health port is a DOWN server, nothing else: {view}");
        eventually(HEALTH_WAIT, || async { (ready.answered("127.0.0.2", 200) >= 2).then_some(()) })
            .await
            .expect("b1's endpoint is probed");
        wait_view(proxy.admin, "b1", "up", &[]).await;
        let placement = Placement::new(&proxy.config);
        placement.set_up("b2", false);
        let id = id_on(&placement, "ready", "b1");
        assert_eq!(which_broker(proxy.mqtts, tls.clone(), &id, Version::V4).await, "b1");

        // b1 is being evacuated: its readiness endpoint answers 503 while its MQTT port still accepts.
        ready.set("127.0.0.2", 503);
        wait_view(proxy.admin, "b1", "down", &["HTTP 503", "ready is 200"]).await;
        assert_eq!(proxy.server_up("b1").await, 0.0);
        let direct = MqttClient::connect(b1.socket_addr(), None, "direct-to-b1", Version::V4).await;
        direct.expect("b1's MQTT port still takes clients").disconnect().await;
        placement.set_up("b1", false);
        let elsewhere = placement.place(&id);
        assert_ne!(elsewhere, "b1");
        assert_eq!(which_broker(proxy.mqtts, tls.clone(), &id, Version::V4).await, elsewhere);
        assert_eq!(server_view(proxy.admin, "b0").await["health"], "up", "the others stay");

        // Ready again: back after `rise` (2) good answers, not on the first.
        let good_before = ready.answered("127.0.0.2", 200);
        ready.set("127.0.0.2", 200);
        wait_view(proxy.admin, "b1", "up", &[]).await;
        let good = ready.answered("127.0.0.2", 200) - good_before;
        assert!(good >= 2, "b1 came back after {good} good answer(s), rise is 2");
        assert_eq!(which_broker(proxy.mqtts, tls.clone(), &id, Version::V4).await, "b1", "its clients return");
        assert_eq!(server_view(proxy.admin, "b2").await["health"], "down");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_readiness_endpoint_is_verified_against_the_given_ca_and_the_server_host() {
    let Some(python) = python3() else { return };
    bounded(Duration::from_secs(60), "the HTTPS readiness scenario", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let b0 = Mosquitto::start_on(dir.path(), "b0", Ipv4Addr::new(127, 0, 0, 1)).await;
        let b1 = Mosquitto::start_on(dir.path(), "b1", Ipv4Addr::new(127, 0, 0, 2)).await;
        // One certificate (SANs localhost, 127.0.0.1) on both hosts: right for b0, the wrong name for b1.
        let ready = Readiness::start(&python, dir.path(), &["127.0.0.1", "127.0.0.2"], Some(&pki)).await;
        let check = format!(
            "http, port: {}, path: /api/v5/status, expect_status: 2xx, tls: {{ ca: \"{}\" }}",
            ready.port,
            pki.ca.display()
        );
        let yaml = yaml_for(&pki, &[&b0, &b1]).health(&check, "200ms", "500ms", 2, 2).build();
        let proxy = TestProxy::start(&yaml).await;
        wait_view(proxy.admin, "b1", "down", &["TLS handshake", "certificate"]).await;
        // b0 passes over HTTPS: answered (past the start-up verdict) and still up, with no error on record.
        eventually(HEALTH_WAIT, || async { (ready.answered("127.0.0.1", 200) >= 3).then_some(()) })
            .await
            .expect("b0's endpoint answers over HTTPS");
        wait_view(proxy.admin, "b0", "up", &[]).await;
        assert_eq!(ready.answered("127.0.0.2", 200), 0, "b1's endpoint is never asked: the handshake fails first");
        proxy.stop().await;
    })
    .await;
}

/// `mqtt-lb check` on `text`: (success, stderr + stdout).
fn check(dir: &Path, text: &str) -> (bool, String, PathBuf) {
    let path = dir.join("lb.yaml");
    std::fs::write(&path, text).expect("write the config");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().expect("run mqtt-lb check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text, path)
}

fn config(backend_protocol: &str, health: &str) -> String {
    format!(
        "listeners:\n  - {{ name: front, bind: \"127.0.0.1:0\", protocol: {backend_protocol}, backend: brokers }}\n\
         backends:\n  - name: brokers\n    protocol: {backend_protocol}\n    health: {health}\n\
         \x20   servers:\n      - {{ name: emqx1, address: \"10.0.0.1:1883\" }}\n"
    )
}

#[test]
fn check_refuses_each_bad_http_check_naming_the_key_and_allows_it_on_tcp_backends() {
    let dir = tempfile::tempdir().expect("temp dir");
    for protocol in ["mqtt", "tcp"] {
        let good = config(protocol, "{ check: http, port: 18083, path: /api/v5/status, expect_status: [200, 2xx] }");
        let (ok, text, _) = check(dir.path(), &good);
        assert!(ok, "a {protocol} backend may be checked over HTTP: {text}");
    }
    let cases = [
        ("{ check: http }", "backends[0].health.port", "needs the port"),
        ("{ check: http, port: 0 }", "backends[0].health.port", "out of range 1 to 65535"),
        ("{ check: http, port: 18083, path: api/v5/status }", "backends[0].health.path", "must start with /"),
        ("{ check: http, port: 18083, expect_status: 600 }", "backends[0].health.expect_status", "100 to 599"),
        ("{ check: http, port: 18083, expect_status: [200, 99] }", "backends[0].health.expect_status[1]", "100 to 599"),
        ("{ check: tcp, port: 18083 }", "backends[0].health.port", "only check: http"),
    ];
    for (health, key, what) in cases {
        let (ok, text, path) = check(dir.path(), &config("tcp", health));
        assert!(!ok, "{health} was accepted");
        let line = format!("{}: {key}: ", path.display());
        assert!(text.contains(&line) && text.contains(what), "{health}: want {line}...{what}, got: {text}");
    }
}
