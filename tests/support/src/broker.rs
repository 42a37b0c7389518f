//! Mosquitto brokers on 127.0.0.1 (or another loopback address), started and killed (by PID) by the test; each one names itself in a retained
//! message on [`WHOAMI_TOPIC`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::client::{MqttClient, Version};
use crate::time::free_port;

/// The topic on which every test broker keeps a retained message naming itself.
pub const WHOAMI_TOPIC: &str = "lb/whoami";

fn mosquitto_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/mosquitto");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("mosquitto")
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A mosquitto broker on 127.0.0.1 (or another loopback address), started (and killed) by the test.
pub struct Mosquitto {
    /// The broker's name: the payload of its retained `lb/whoami`, and its server name in the proxy config.
    pub name: String,
    /// The plain MQTT port.
    pub port: u16,
    /// The WebSocket port, for brokers started with [`Mosquitto::start_with_websockets`].
    pub ws_port: Option<u16>,
    pub dir: PathBuf,
    /// The loopback address it listens on: 127.0.0.1 unless started with [`Mosquitto::start_on`].
    host: Ipv4Addr,
    conf: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    /// Lines added to the configuration (e.g. `acl_file`, `auto_id_prefix`).
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker named `name` with its files in `dir`, waits until it accepts, publishes its identity.
    pub async fn start(dir: &Path, name: &str) -> Mosquitto {
        Self::start_inner(dir, name, false, Ipv4Addr::LOCALHOST, "").await
    }

    /// Like [`Mosquitto::start`], listening on another loopback address (127.0.0.2, ...): servers on distinct
    /// hosts, as a check on another port of each server's host needs.
    pub async fn start_on(dir: &Path, name: &str, host: Ipv4Addr) -> Mosquitto {
        Self::start_inner(dir, name, false, host, "").await
    }

    /// Like [`Mosquitto::start`], with `extra` lines added to the configuration (global options such as `acl_file`
    /// or `auto_id_prefix`; an ACL must let anonymous clients write `lb/whoami`).
    pub async fn start_with_config(dir: &Path, name: &str, extra: &str) -> Mosquitto {
        Self::start_inner(dir, name, false, Ipv4Addr::LOCALHOST, extra).await
    }

    /// Like [`Mosquitto::start`], plus a second listener speaking MQTT over WebSocket (`ws_port`).
    pub async fn start_with_websockets(dir: &Path, name: &str) -> Mosquitto {
        Self::start_inner(dir, name, true, Ipv4Addr::LOCALHOST, "").await
    }

    async fn start_inner(dir: &Path, name: &str, websockets: bool, host: Ipv4Addr, extra: &str) -> Mosquitto {
        // A port chosen by `free_port` can be taken by someone else before mosquitto binds it: retry with another.
        let mut last_error = String::new();
        for _ in 0..4 {
            let mut m = Mosquitto {
                name: name.to_owned(),
                port: free_port(),
                ws_port: websockets.then(free_port),
                dir: dir.to_path_buf(),
                host,
                conf: dir.join(format!("{name}.conf")),
                log_path: dir.join(format!("{name}.log")),
                stderr_path: dir.join(format!("{name}.stderr")),
                extra: extra.to_owned(),
                child: None,
            };
            if m.ws_port == Some(m.port) {
                continue;
            }
            m.write_config();
            // What accepted on the port may be another process that took it first (mosquitto then exits on its
            // bind error): only a broker that takes its identity and is still running is ours.
            let started = match m.spawn_and_wait().await {
                Ok(()) => m.try_publish_identity().await,
                Err(e) => Err(e),
            };
            match started {
                Ok(()) => return m,
                Err(e) => {
                    m.kill();
                    last_error = e;
                }
            }
        }
        panic!("mosquitto {name} did not start: {last_error}");
    }

    fn write_config(&self) {
        let mut conf = String::new();
        if running_as_root() {
            // As root, mosquitto drops to the `mosquitto` user, which cannot write the log in our 0700 temp dir.
            conf.push_str("user root\n");
        }
        conf.push_str(&format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type all\n\
             connection_messages true\nlog_timestamp true\nlistener {} {}\n",
            self.log_path.display(),
            self.port,
            self.host
        ));
        conf.push_str(&self.extra);
        conf.push('\n');
        if let Some(ws) = self.ws_port {
            conf.push_str(&format!("listener {ws} {}\nprotocol websockets\n", self.host));
        }
        std::fs::write(&self.conf, conf).expect("write mosquitto config");
    }

    /// Spawns mosquitto with the written config and waits (5 s at most) until its port(s) accept.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| format!("open {}: {e}", self.stderr_path.display()))?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", mosquitto_binary().display()))?;
        self.child = Some(child);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.ws_port).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        for port in ports {
            loop {
                if TcpStream::connect((self.host, port)).await.is_ok() {
                    break;
                }
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.child = None;
                        return Err(format!("exited with {status} ({})", self.diagnostics()));
                    }
                }
                if Instant::now() >= deadline {
                    self.kill();
                    return Err(format!("port {port} did not accept within 5s ({})", self.diagnostics()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        format!("stderr: {:?}; log tail: {:?}", err.trim(), tail)
    }

    /// Publishes the retained `lb/whoami` = name directly to the broker (QoS 1, waits for the PUBACK).
    pub async fn publish_identity(&mut self) {
        if let Err(e) = self.try_publish_identity().await {
            panic!("{e}");
        }
    }

    /// [`Self::publish_identity`], saying what failed; also fails when the broker process is no longer running.
    async fn try_publish_identity(&mut self) -> Result<(), String> {
        let id = format!("whoami-setter-{}", self.name);
        let mut c = MqttClient::connect(self.socket_addr(), None, &id, Version::V4)
            .await
            .map_err(|e| format!("connect directly to broker {}: {e} ({})", self.name, self.diagnostics()))?;
        c.publish(WHOAMI_TOPIC, self.name.as_bytes(), true)
            .await
            .map_err(|e| format!("publish the retained identity of {}: {e}", self.name))?;
        c.disconnect().await;
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            _ => Err(format!("broker {} is not running ({})", self.name, self.diagnostics())),
        }
    }

    /// `127.0.0.1:<port>` (or its other loopback address).
    pub fn addr(&self) -> String {
        self.socket_addr().to_string()
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to this PID only, then reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the broker again on the same port(s), waits until it accepts, re-publishes its identity (retained
    /// messages do not survive: `persistence false`).
    pub async fn restart(&mut self) {
        self.kill();
        let mut last_error = String::new();
        // The port was ours a moment ago; give a lingering socket a few tries.
        for _ in 0..10 {
            match self.spawn_and_wait().await {
                Ok(()) => {
                    self.publish_identity().await;
                    return;
                }
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto {} did not restart on port {}: {last_error}", self.name, self.port);
    }

    /// The broker's log so far (mosquitto writes its log file line by line, unbuffered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// TCP connections the broker accepted so far (its "New connection from" log lines), over restarts. This counts
    /// every connection: clients, health probes, and the harness's own readiness checks.
    pub fn connections_seen(&self) -> usize {
        self.log().lines().filter(|l| l.contains("New connection from")).count()
    }

    /// Client ids the broker saw connect ("New client connected from ... as <id> (...)" lines).
    pub fn client_ids_seen(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once("New client connected from ")?.1;
                let after_as = rest.split_once(" as ")?.1;
                Some(after_as.rsplit_once(" (").map_or(after_as, |(id, _)| id).to_owned())
            })
            .collect()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
