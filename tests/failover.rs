//! The keepalived pair, run for real: network namespaces for two balancer hosts (`a`, `b`), the brokers' host (`k`)
//! and a client host (`c`) on one bridge; real keepalived (VRRP) on `a` and `b` with the shipped
//! `deploy/keepalived/keepalived.conf`, changed only in its addresses (and `script_user`, see [`keepalived_conf`]),
//! and the shipped `deploy/keepalived/90-mqtt-lb-floating-ip.conf` sysctls; the mqtt-lb binary on both with one
//! configuration; two mosquitto brokers; MQTT 3.1.1 and 5 clients (rumqttc, in the client namespace) connected to
//! the floating IP, each one reconnecting whenever its connection ends.
//!
//! Three failures of the host holding the IP, in turn: SIGTERM to its mqtt-lb (the IP must move during
//! `shutdown.grace`, no client is refused, every idle MQTT 5 client gets DISCONNECT 0x8B at the end of the grace,
//! every idle 3.1.1 client is closed at the end of the drain), SIGKILL to its mqtt-lb, and its interface taken
//! down. Each time every client must come back through the IP to the broker it had, and the times from the failure
//! to the IP moving, to the first and to the last client reconnected are printed.
//!
//! Needs root (namespaces), `ip`, `sysctl`, keepalived, mosquitto and curl; without them the test says so and passes, unless
//! `MQTT_LB_REQUIRE_TOOLS=1`. Everything it creates is removed on drop, also after a failed assertion.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, WHOAMI_TOPIC};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const SUBNET: &str = "10.83.0";
const VIP: &str = "10.83.0.10";
/// Host part of each namespace's address.
const HOSTS: [(&str, u8); 4] = [("a", 11), ("b", 12), ("k", 20), ("c", 50)];
const SHIPPED_CONF: &str = include_str!("../deploy/keepalived/keepalived.conf");
const SHIPPED_SYSCTLS: &str = include_str!("../deploy/keepalived/90-mqtt-lb-floating-ip.conf");
/// The test's mqtt-lb `shutdown.drain_timeout`: 3.1.1 clients are closed this long after the grace.
const DRAIN: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------------------------
// The lab: namespaces, processes, and their removal.

/// Everything the test created; removed on drop (processes by PID, then the namespaces).
struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    /// (what, process); keepalived is stopped with SIGTERM so that it ends its VRRP child too.
    processes: Vec<(String, Child)>,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) -> Result<String, String> {
    let Some((program, rest)) = args.split_first() else { return Err("no command".into()) };
    let out = Command::new(program).args(rest).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// The bridge namespace and one namespace per host, each with `eth0` on the bridge and `lo` up.
    fn create() -> Result<Lab, String> {
        let prefix = format!("mlbfo{}", std::process::id());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut lab = Lab { prefix, dir, processes: Vec::new(), namespaces: Vec::new() };
        let bridge = lab.ns("br");
        run(&["ip", "netns", "add", &bridge])?;
        lab.namespaces.push(bridge.clone());
        run(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &bridge, "link", "set", "br0", "up"])?;
        for (host, n) in HOSTS {
            let ns = lab.ns(host);
            run(&["ip", "netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let port = format!("p{host}");
            run(&["ip", "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run(&["ip", "-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{SUBNET}.{n}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `cmd` inside the namespace of `host`, its output appended to `<what>.log`.
    fn spawn(&mut self, what: &str, host: &str, cmd: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path(&format!("{what}.log")));
        let log = log.expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        self.processes.push((what.to_owned(), child));
    }

    /// Sends `signal` to the process started as `what` (`ip netns exec` execs it: same PID) without waiting.
    fn signal(&self, what: &str, signal: &str) {
        if let Some((_, child)) = self.processes.iter().find(|(w, _)| w == what) {
            let _ = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        }
    }

    /// Sends `signal` to the process started as `what` and waits (5 s at most, then SIGKILL) for it to end.
    fn stop(&mut self, what: &str, signal: &str) {
        self.signal(what, signal);
        let Some(i) = self.processes.iter().position(|(w, _)| w == what) else { return };
        let (_, mut child) = self.processes.remove(i);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{what}.log"))).unwrap_or_default()
    }

    /// Whether `host` holds the floating IP on its `eth0`.
    fn holds_vip(&self, host: &str) -> bool {
        run(&["ip", "-n", &self.ns(host), "-o", "-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|out| out.contains(&format!("inet {VIP}/")))
    }

    /// Runs a short command inside `host`'s namespace; true if it succeeded.
    fn exec_ok(&self, host: &str, cmd: &[&str]) -> bool {
        let ns = self.ns(host);
        let mut args = vec!["ip", "netns", "exec", ns.as_str()];
        args.extend_from_slice(cmd);
        run(&args).is_ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self.processes.iter().map(|(w, _)| w.clone()).collect();
        for what in names {
            // keepalived's parent ends its VRRP child on SIGTERM; the others may be killed outright.
            let signal = if what.starts_with("keepalived") { "TERM" } else { "KILL" };
            self.stop(&what, signal);
        }
        // A VRRP child left behind by a parent that died first: by its PID file.
        for host in ["a", "b"] {
            if let Ok(pid) = std::fs::read_to_string(self.path(&format!("keepalived-{host}.vrrp.pid"))) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The shipped files, adapted.

/// The shipped keepalived.conf for host `a` (priority 100) or `b` (90), changed only where its comments tell an
/// operator to change it (addresses; router_id and priority on the second host). One change beyond that:
/// `script_user` is `nobody` (present on every system) instead of the `keepalived_script` user the comment asks to
/// create, so that the test adds no user to the machine; `enable_script_security` stays.
fn keepalived_conf(host: &str) -> String {
    let (me, peer) = if host == "a" { ("11", "12") } else { ("12", "11") };
    let conf = SHIPPED_CONF
        .replace("192.0.2.10/", &format!("{VIP}/"))
        .replace("192.0.2.11", &format!("{SUBNET}.{me}"))
        .replace("192.0.2.12", &format!("{SUBNET}.{peer}"))
        .replace("script_user keepalived_script", "script_user nobody");
    if host == "a" {
        conf
    } else {
        conf.replace("router_id mqtt-lb-1", "router_id mqtt-lb-2").replace("priority 100", "priority 90")
    }
}

/// One configuration for both mqtt-lb instances: plain MQTT on 0.0.0.0:1883 (so it serves the floating IP once
/// it arrives), the admin endpoint where the shipped keepalived check looks, `shutdown.grace` left at its default.
fn lb_config() -> String {
    format!(
        "listeners:\n  - {{ name: mqtt, bind: \"0.0.0.0:1883\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 500ms, timeout: 500ms }}\n    servers:\n\
         \x20     - {{ name: b1, address: \"{SUBNET}.20:1883\" }}\n      - {{ name: b2, address: \"{SUBNET}.20:1884\" }}\n\
         admin: {{ bind: \"127.0.0.1:9100\" }}\nshutdown: {{ drain_timeout: {}s }}\n",
        DRAIN.as_secs()
    )
}

/// Applies the shipped sysctl file (`key = value` lines) inside `host`'s namespace, as `sysctl --system` would.
fn apply_shipped_sysctls(lab: &Lab, host: &str) {
    let settings = SHIPPED_SYSCTLS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    for setting in settings {
        let setting: String = setting.split_whitespace().collect();
        assert!(lab.exec_ok(host, &["sysctl", "-qw", &setting]), "sysctl -w {setting} on {host}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The clients: a helper process in the client namespace (this test binary again, running the ignored test
// `failover_client_pool`), reporting on stdout: `EV up <id> <broker>`, `EV down <id> <why>`, `EV fail <id> <why>`.

/// What a client reported, and when the parent read it.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    kind: String,
    id: String,
    detail: String,
}

type Events = Arc<Mutex<Vec<Event>>>;

enum Client {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

/// What a poll of either version's event loop saw.
enum Seen {
    ConnAck(bool),
    Whoami(String),
    Other,
}

impl Client {
    /// Keep alive 60 s: an idle client learns of a failure from the server (DISCONNECT, close), not from a ping.
    fn new(version: &str, id: &str, host: &str, port: u16) -> Client {
        let keep_alive = Duration::from_secs(60);
        if version == "5" {
            let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
            o.set_keep_alive(keep_alive);
            o.set_connection_timeout(2);
            let (c, e) = rumqttc::v5::AsyncClient::new(o, 16);
            Client::V5(c, Box::new(e))
        } else {
            let mut o = rumqttc::MqttOptions::new(id, host, port);
            o.set_keep_alive(keep_alive);
            let (c, mut e) = rumqttc::AsyncClient::new(o, 16);
            e.network_options.set_connection_timeout(2);
            Client::V4(c, Box::new(e))
        }
    }

    async fn poll(&mut self) -> Result<Seen, String> {
        use rumqttc::v5::{mqttbytes::v5::ConnectReturnCode as Code5, Event as Event5, Incoming};
        use rumqttc::{ConnectReturnCode as Code4, Event as Event4, Packet};
        let whoami = |payload: &[u8]| Seen::Whoami(String::from_utf8_lossy(payload).into_owned());
        match self {
            Client::V4(_, e) => match e.poll().await.map_err(|e| e.to_string())? {
                Event4::Incoming(Packet::ConnAck(a)) => Ok(Seen::ConnAck(a.code == Code4::Success)),
                Event4::Incoming(Packet::Publish(p)) if p.topic == WHOAMI_TOPIC => Ok(whoami(&p.payload)),
                _ => Ok(Seen::Other),
            },
            Client::V5(_, e) => match e.poll().await.map_err(|e| e.to_string())? {
                Event5::Incoming(Incoming::ConnAck(a)) => Ok(Seen::ConnAck(a.code == Code5::Success)),
                Event5::Incoming(Incoming::Publish(p)) if p.topic == WHOAMI_TOPIC.as_bytes() => Ok(whoami(&p.payload)),
                _ => Ok(Seen::Other),
            },
        }
    }

    fn subscribe_whoami(&self) -> Result<(), String> {
        match self {
            Client::V4(c, _) => c.try_subscribe(WHOAMI_TOPIC, rumqttc::QoS::AtMostOnce).map_err(|e| e.to_string()),
            Client::V5(c, _) => {
                c.try_subscribe(WHOAMI_TOPIC, rumqttc::v5::mqttbytes::QoS::AtMostOnce).map_err(|e| e.to_string())
            }
        }
    }

    /// A QoS 0 message: traffic that shows a dead connection as soon as the IP has moved.
    fn heartbeat(&self) {
        let topic = "failover/heartbeat";
        let _ = match self {
            Client::V4(c, _) => c.try_publish(topic, rumqttc::QoS::AtMostOnce, false, "hb").map_err(|e| e.to_string()),
            Client::V5(c, _) => {
                c.try_publish(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, "hb").map_err(|e| e.to_string())
            }
        };
    }
}

/// One connection of a client: connect, learn the broker, stay until the connection ends. Prints `up` and `down`
/// (or `fail` when it could not get in).
async fn one_connection(version: &str, id: &str, host: &str, active: &tokio::sync::watch::Receiver<bool>) {
    // A client named `busy` sends from the start, as a device publishing often.
    let busy = id.contains("busy");
    let mut client = Client::new(version, id, host, 1883);
    match tokio::time::timeout(Duration::from_secs(3), client.poll()).await {
        Ok(Ok(Seen::ConnAck(true))) => {}
        Ok(Ok(_)) => return println!("EV fail {id} CONNACK refused"),
        Ok(Err(e)) => return println!("EV fail {id} {e}"),
        Err(_) => return println!("EV fail {id} no CONNACK within 3s"),
    }
    if let Err(e) = client.subscribe_whoami() {
        return println!("EV fail {id} subscribe: {e}");
    }
    let mut announced = false;
    let mut beat = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            seen = client.poll() => match seen {
                Ok(Seen::Whoami(broker)) if !announced => {
                    announced = true;
                    println!("EV up {id} {broker}");
                }
                Ok(_) => {}
                Err(e) => return println!("EV down {id} {e}"),
            },
            _ = beat.tick() => if busy || *active.borrow() { client.heartbeat() },
        }
    }
}

/// Helper process, not a test of its own: started by `keepalived_pair_fails_over` inside the client namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of keepalived_pair_fails_over"]
async fn failover_client_pool() {
    let (Ok(vip), Ok(clients)) = (std::env::var("FAILOVER_VIP"), std::env::var("FAILOVER_CLIENTS")) else { return };
    // stdin: a line `active` makes every client send a message every 250 ms; end of input ends the helper.
    let (active_tx, active) = tokio::sync::watch::channel(false);
    for spec in clients.split(',') {
        let Some((version, id)) = spec.split_once(':') else { continue };
        let (version, id, vip, active) = (version.to_owned(), id.to_owned(), vip.clone(), active.clone());
        tokio::spawn(async move {
            loop {
                one_connection(&version, &id, &vip, &active).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "active" {
            let _ = active_tx.send(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The test.

/// Can this machine run the lab? None if yes, else why not.
fn missing_prerequisite() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")));
    if root != Some(true) {
        return Some("not root: cannot create network namespaces".into());
    }
    for tool in
        ["/usr/sbin/keepalived", "/usr/sbin/sysctl", "/usr/sbin/mosquitto", "/usr/bin/mosquitto_pub", "/usr/bin/curl"]
    {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} missing (scripts/install-deps.sh installs it)"));
        }
    }
    None
}

/// Polls `check` every 20 ms for at most `limit`; the time it first held, from `since`.
async fn time_until(since: Instant, limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events_since(events: &Events, since: Instant, kind: &str) -> Vec<Event> {
    let all = events.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().filter(|e| e.at >= since && e.kind == kind).cloned().collect()
}

/// How each of `ids` saw its connection end (its first `down` after `since`); panics if one has none.
fn connection_ends(events: &Events, ids: &[String], since: Instant) -> BTreeMap<String, Event> {
    let mut ends: BTreeMap<String, Event> = BTreeMap::new();
    for e in events_since(events, since, "down") {
        ends.entry(e.id.clone()).or_insert(e);
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !ends.contains_key(*id)).collect();
    assert!(missing.is_empty(), "clients whose connection never ended: {missing:?}");
    ends
}

/// When every client was back after `since`: (first, last) times from `since` and each client's broker.
struct Back {
    first: Duration,
    last: Duration,
    brokers: BTreeMap<String, String>,
}

/// Waits until every client reported `up` after `since`.
async fn all_back(events: &Events, ids: &[String], since: Instant, limit: Duration) -> Back {
    let deadline = Instant::now() + limit;
    loop {
        let mut back: BTreeMap<String, (Instant, String)> = BTreeMap::new();
        for e in events_since(events, since, "up") {
            back.entry(e.id).or_insert((e.at, e.detail));
        }
        if ids.iter().all(|id| back.contains_key(id)) {
            let times: Vec<Duration> = back.values().map(|(at, _)| *at - since).collect();
            return Back {
                first: times.iter().min().copied().unwrap_or_default(),
                last: times.iter().max().copied().unwrap_or_default(),
                brokers: back.into_iter().map(|(id, (_, b))| (id, b)).collect(),
            };
        }
        if Instant::now() >= deadline {
            let all = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
            panic!("not all clients back within {limit:?}: back {:?}; every event: {all:#?}", back.keys());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts mqtt-lb on `host` and waits until its /readyz answers 200 (curl inside the namespace).
async fn start_lb(lab: &mut Lab, host: &str) {
    let config = lab.path("mqtt-lb.yaml").to_string_lossy().into_owned();
    lab.spawn(&format!("mqtt-lb-{host}"), host, &[env!("CARGO_BIN_EXE_mqtt-lb"), "run", "--config", &config]);
    let ready = time_until(Instant::now(), Duration::from_secs(10), || {
        lab.exec_ok(host, &["curl", "-fs", "-m", "1", "-o", "/dev/null", "http://127.0.0.1:9100/readyz"])
    });
    assert!(ready.await.is_some(), "mqtt-lb on {host} not ready:\n{}", lab.log(&format!("mqtt-lb-{host}")));
}

/// Waits until keepalived on `host` logs, after its first `skip` lines, that it is a BACKUP again (its check
/// passed `rise` times), so that it can take the IP in the next step.
async fn wait_backup(lab: &Lab, host: &str, skip: usize) {
    let what = format!("keepalived-{host}");
    let back = time_until(Instant::now(), Duration::from_secs(12), || {
        lab.log(&what).lines().skip(skip).any(|l| l.contains("Entering BACKUP STATE"))
    });
    assert!(back.await.is_some(), "keepalived on {host} back to BACKUP:\n{}", lab.log(&what));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalived_pair_fails_over() {
    let required = std::env::var("MQTT_LB_REQUIRE_TOOLS").as_deref() == Ok("1");
    let lab = match missing_prerequisite().map_or_else(Lab::create, Err) {
        Ok(lab) => lab,
        Err(why) => {
            assert!(!required, "the failover test cannot run: {why}");
            return eprintln!("SKIPPED keepalived_pair_fails_over: {why}");
        }
    };
    let mut lab = lab;
    bounded(Duration::from_secs(90), "keepalived pair", pair_scenarios(&mut lab)).await;
}

/// Starts keepalived on `host` with the adapted shipped configuration.
fn start_keepalived(lab: &mut Lab, host: &str) {
    apply_shipped_sysctls(lab, host);
    let conf = lab.path(&format!("keepalived-{host}.conf"));
    std::fs::write(&conf, keepalived_conf(host)).expect("keepalived config");
    let file = |kind: &str| lab.path(&format!("keepalived-{host}.{kind}.pid")).to_string_lossy().into_owned();
    let (main, vrrp, checkers) = (file("main"), file("vrrp"), file("checkers"));
    let conf = conf.to_string_lossy().into_owned();
    let cmd = ["/usr/sbin/keepalived", "-n", "-l", "-D", "-P", "-f", &conf, "-p", &main, "-r", &vrrp, "-c", &checkers];
    lab.spawn(&format!("keepalived-{host}"), host, &cmd);
}

/// Two brokers on the brokers' host, each keeping a retained message that names it.
async fn start_brokers(lab: &mut Lab) {
    for (name, port) in [("b1", 1883), ("b2", 1884)] {
        let conf = lab.path(&format!("{name}.conf"));
        let log = lab.path(&format!("{name}.mosquitto.log"));
        let text = format!(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
             log_dest file {}\nlistener {port} {SUBNET}.20\n",
            log.display()
        );
        std::fs::write(&conf, text).expect("broker config");
        lab.spawn(name, "k", &["/usr/sbin/mosquitto", "-c", &conf.to_string_lossy()]);
        let (port, host) = (port.to_string(), format!("{SUBNET}.20"));
        let set = ["mosquitto_pub", "-h", &host, "-p", &port, "-q", "1", "-r", "-t", WHOAMI_TOPIC, "-m", name];
        let published = time_until(Instant::now(), Duration::from_secs(5), || lab.exec_ok("k", &set));
        assert!(published.await.is_some(), "broker {name} up:\n{}", lab.log(name));
    }
}

/// The client helper in the client namespace, its events collected into the returned list.
fn start_clients(lab: &Lab, ids: &[String]) -> (tokio::process::Child, Events) {
    let spec: Vec<String> = ids.iter().map(|id| format!("{}:{id}", if id.contains("v5") { 5 } else { 4 })).collect();
    let exe = std::env::current_exe().expect("test binary");
    let mut helper = tokio::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("c")])
        .arg(&exe)
        .args(["failover_client_pool", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("FAILOVER_VIP", VIP)
        .env("FAILOVER_CLIENTS", spec.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(lab.path("clients.log")).expect("helper log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the client helper");
    let events: Events = Arc::default();
    let stdout = helper.stdout.take().expect("helper stdout");
    let sink = Arc::clone(&events);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // The test harness may print `test failover_client_pool ... ` before the first event on its line.
            let Some(at) = line.find("EV ") else { continue };
            let mut parts = line.get(at..).unwrap_or_default().splitn(4, ' ').skip(1).map(str::to_owned);
            let (kind, id, detail) = (parts.next(), parts.next(), parts.next());
            let (kind, id, detail) = (kind.unwrap_or_default(), id.unwrap_or_default(), detail.unwrap_or_default());
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(Event { at: Instant::now(), kind, id, detail });
        }
    });
    (helper, events)
}

async fn pair_scenarios(lab: &mut Lab) {
    start_brokers(lab).await;
    std::fs::write(lab.path("mqtt-lb.yaml"), lb_config()).expect("mqtt-lb config");
    for host in ["a", "b"] {
        start_lb(lab, host).await;
        start_keepalived(lab, host);
    }
    let elected = time_until(Instant::now(), Duration::from_secs(10), || lab.holds_vip("a")).await;
    let elected = elected.unwrap_or_else(|| panic!("a never took the IP:\n{}", lab.log("keepalived-a")));
    eprintln!("a holds {VIP} {elected:?} after keepalived started");

    let mut ids: Vec<String> = (0..4).flat_map(|i| [format!("fo-v5-{i}"), format!("fo-v4-{i}")]).collect();
    ids.extend(["fo-v5-busy".to_owned(), "fo-v4-busy".to_owned()]);
    let started = Instant::now();
    let (mut helper, events) = start_clients(lab, &ids);
    let placed = all_back(&events, &ids, started, Duration::from_secs(10)).await.brokers;
    let on: Vec<&str> = placed.values().map(String::as_str).collect();
    assert!(on.contains(&"b1") && on.contains(&"b2"), "clients on both brokers: {placed:?}");
    let mut report = Vec::new();
    let mut measure = |what: &str, moved: Duration, back: &Back| {
        assert_eq!(back.brokers, placed, "{what}: every client back on the broker it had");
        let (first, last) = (back.first, back.last);
        report.push(format!("{what}: IP moved {moved:.1?}, first client back {first:.1?}, all back {last:.1?}"));
    };

    // 1. SIGTERM to a's mqtt-lb: the IP moves during the grace, nobody is refused, MQTT 5 clients are told to go at
    // its end and 3.1.1 clients are closed at the end of the drain. Most clients are idle (as subscribers and sensors
    // between readings are); the two busy ones send after the move, reach b, which resets them (docs/deployment.md):
    // they come back earlier, to the same broker, and are not refused either.
    let t0 = Instant::now();
    lab.signal("mqtt-lb-a", "TERM");
    let moved = time_until(t0, Duration::from_secs(10), || lab.holds_vip("b")).await.expect("the IP moves to b");
    let grace = mqtt_lb::config::DEFAULT_SHUTDOWN_GRACE;
    assert!(moved < grace, "the IP moved within shutdown.grace: {moved:?}");
    let back = all_back(&events, &ids, t0, grace + DRAIN + Duration::from_secs(5)).await;
    let fails = events_since(&events, t0, "fail");
    assert!(fails.is_empty(), "no client refused during a planned stop: {fails:?}");
    let told = connection_ends(&events, &ids, t0);
    measure("SIGTERM  ", moved, &back);
    let mut busy_ends = Vec::new();
    for (id, end) in &told {
        let after = end.at - t0;
        if id.contains("busy") {
            busy_ends.push(format!("{id} at {after:.1?}: {}", end.detail));
        } else if id.contains("v5") {
            let disconnect = end.detail.contains("ServerShuttingDown");
            assert!(disconnect && after >= grace, "{id}: DISCONNECT 0x8B at the end of the grace, got {end:?}");
        } else {
            assert!(after >= grace + DRAIN, "{id}: closed at the end of the drain, not before: {end:?}");
        }
    }
    eprintln!("SIGTERM: how the busy clients' connections ended: {busy_ends:?}");
    let idle = |v: &str, id: &str| id.contains(v) && !id.contains("busy");
    let ends = |v: &str| told.iter().filter(|(id, _)| idle(v, id)).map(|(_, e)| e.at - t0).max();
    let (v5, v4) = (ends("v5").unwrap_or_default(), ends("v4").unwrap_or_default());
    let told_at =
        format!("SIGTERM  : last MQTT 5 DISCONNECT 0x8B read {v5:.1?}, last 3.1.1 connection closed {v4:.1?}");
    lab.stop("mqtt-lb-a", "TERM");
    let skip = lab.log("keepalived-a").lines().count();
    start_lb(lab, "a").await;
    wait_backup(lab, "a", skip).await;
    // From now on the clients send every 250 ms: a connection to the host that lost its interface shows as dead
    // at the next message (the new holder resets it), not only at the 60 s keep-alive.
    if let Some(stdin) = helper.stdin.as_mut() {
        stdin.write_all(b"active\n").await.expect("tell the clients to send");
    }

    // 2. SIGKILL to b's mqtt-lb: clients are refused until the IP moves, then all come back.
    let t0 = Instant::now();
    lab.stop("mqtt-lb-b", "KILL");
    let moved = time_until(t0, Duration::from_secs(10), || lab.holds_vip("a")).await.expect("the IP moves to a");
    let back = all_back(&events, &ids, t0, Duration::from_secs(15)).await;
    measure("SIGKILL  ", moved, &back);
    let skip = lab.log("keepalived-b").lines().count();
    start_lb(lab, "b").await;
    wait_backup(lab, "b", skip).await;

    // 3. a's interface goes down: b stops hearing adverts and takes the IP.
    let t0 = Instant::now();
    run(&["ip", "-n", &lab.ns("a"), "link", "set", "eth0", "down"]).expect("a's interface down");
    let moved = time_until(t0, Duration::from_secs(10), || lab.holds_vip("b")).await.expect("the IP moves to b");
    let back = all_back(&events, &ids, t0, Duration::from_secs(15)).await;
    measure("link down", moved, &back);

    report.push(told_at);
    for line in &report {
        eprintln!("failover, {} clients (half MQTT 5, half 3.1.1; 2 busy): {line}", ids.len());
    }
    let _ = helper.kill().await;
}
