//! The processes the benchmark starts (mosquitto, HAProxy, mqtt-lb), their configurations, and what it reads about
//! them from /proc (CPU time, resident memory).
//!
//! Every child is held by a [`Proc`] guard: dropped, it sends SIGTERM to that PID, waits briefly, then SIGKILL.
//! Each child is also started with `PR_SET_PDEATHSIG`, so it dies with the benchmark even if the benchmark is
//! killed before its guards run. Children inherit the raised open-files limit.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started child process, stopped (by its PID only) when dropped.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc { name: name.to_owned(), pid: child.id(), child, log: log.to_path_buf() })
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `addr` accepts TCP connections (20 s at most: a binary run under valgrind starts slowly),
    /// failing early if the process exits.
    pub async fn wait_accepting(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if !self.running() {
                return Err(format!("{} exited: {}", self.name, self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} does not accept on {addr} after 20 s: {}", self.name, self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(8).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Sends `signal` to this PID and waits up to `timeout` for the process to exit; whether it did.
    pub fn signal_and_wait(&mut self, signal: libc::c_int, timeout: Duration) -> bool {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            if self.running() {
                // SAFETY: kill(2) on the PID of our own unreaped child.
                unsafe { libc::kill(pid, signal) };
            }
        }
        let deadline = Instant::now() + timeout;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        !self.running()
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if self.running() {
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill(2) on the PID of our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = StdTcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Raises this process's soft open-files limit to the hard limit (children inherit it); returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// One mosquitto broker: a plain listener (behind the proxies) and a TLS listener (the direct path).
pub struct Broker {
    pub proc: Proc,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

impl Broker {
    pub async fn start(dir: &Path, name: &str, cert: &Path, key: &Path) -> Result<Broker, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let (plain, tls) = (loopback(free_port()?), loopback(free_port()?));
            if plain == tls {
                continue;
            }
            let conf = dir.join(format!("{name}.conf"));
            let mut text = String::new();
            if running_as_root() {
                // mosquitto drops to the `mosquitto` user as root; it must read our files.
                text.push_str("user root\n");
            }
            text.push_str(&format!(
                "per_listener_settings false\nallow_anonymous true\npersistence false\nmax_connections -1\n\
                 set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nconnection_messages false\n\
                 listener {} 127.0.0.1\n\
                 listener {} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                plain.port(),
                tls.port(),
                cert.display(),
                key.display()
            ));
            std::fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
            let mut cmd = Command::new(mosquitto_binary());
            cmd.arg("-c").arg(&conf);
            let mut proc = Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))?;
            match async {
                proc.wait_accepting(plain).await?;
                proc.wait_accepting(tls).await
            }
            .await
            {
                Ok(()) => return Ok(Broker { proc, plain, tls }),
                Err(e) => last = e,
            }
        }
        Err(format!("mosquitto did not start: {last}"))
    }
}

pub fn mosquitto_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/mosquitto");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("mosquitto")
    }
}

pub fn haproxy_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/haproxy");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("haproxy")
    }
}

/// mqtt-lb's default `limits.tcp_keepalive` (idle, interval in seconds, count): TCP keepalive on its client and
/// server sockets. HAProxy's `plain_tcpka` frontend does the same, for a like-for-like plain row.
pub const MQTT_LB_TCP_KEEPALIVE: (u32, u32, u32) = (120, 30, 4);

/// Where a started HAProxy listens: the reference frontend (TLS), the same without TLS, and that again with TCP
/// keepalive on both sockets as mqtt-lb's defaults have it.
pub struct HaproxyAddrs {
    pub tls: SocketAddr,
    pub plain: SocketAddr,
    pub plain_tcpka: SocketAddr,
}

/// HAProxy's configuration: the WIS2 reference frontend/backend on loopback, the same frontend without TLS on
/// `plain` (the plain connection-rate load), and on `plain_tcpka` that plain frontend with TCP keepalive on the
/// client and the server socket (`option clitcpka`/`srvtcpka`, mqtt-lb's default timings): the reference config
/// has none, mqtt-lb has it on by default. With `logs`, one line per connection to stdout (`option tcplog`), as in
/// the reference; mqtt-lb logs one line per connection at its default level.
pub fn haproxy_config(
    at: &HaproxyAddrs,
    pem: &Path,
    brokers: &[SocketAddr],
    maxconn: u64,
    threads: usize,
    logs: bool,
) -> String {
    let servers: String =
        brokers.iter().enumerate().map(|(i, b)| format!("  server broker{} {b} check inter 2s\n", i + 1)).collect();
    let (global_log, log) =
        if logs { ("  log stdout format raw local0\n", "  log global\n  option tcplog\n") } else { ("", "") };
    let (idle, intvl, cnt) = MQTT_LB_TCP_KEEPALIVE;
    let keepalive = |side: &str| {
        format!(
            "  option {side}tcpka\n  {side}tcpka-idle {idle}s\n  {side}tcpka-intvl {intvl}s\n  {side}tcpka-cnt {cnt}\n"
        )
    };
    format!(
        "global\n\
         \x20 maxconn {maxconn}\n\
         \x20 nbthread {threads}\n\
         {global_log}\
         \n\
         defaults\n\
         {log}\
         \x20 mode tcp\n\
         \x20 timeout connect 5s\n\
         \x20 timeout client 1h\n\
         \x20 timeout server 1h\n\
         {}{}{}{}{}",
        mqtt_frontend("mqtts_frontend", &format!("{} ssl crt {}", at.tls, pem.display()), "", "mqtt_backend"),
        mqtt_frontend("mqtt_frontend", &at.plain.to_string(), "", "mqtt_backend"),
        mqtt_backend("mqtt_backend", "", &servers),
        mqtt_frontend("mqtt_tcpka_frontend", &at.plain_tcpka.to_string(), &keepalive("cli"), "mqtt_tcpka_backend"),
        mqtt_backend("mqtt_tcpka_backend", &keepalive("srv"), &servers),
    )
}

/// A frontend of the reference config: the CONNECT checked (`mqtt_is_valid`) before the backend is chosen; `options`
/// are extra lines.
fn mqtt_frontend(name: &str, bind: &str, options: &str, backend: &str) -> String {
    format!(
        "\nfrontend {name}\n  bind {bind}\n  mode tcp\n{options}  tcp-request inspect-delay 10s\n  \
         tcp-request content reject unless {{ req.payload(0,0),mqtt_is_valid }}\n  default_backend {backend}\n"
    )
}

/// The backend of the reference config: sticky on the CONNECT's client id; `options` are extra lines.
fn mqtt_backend(name: &str, options: &str, servers: &str) -> String {
    format!(
        "\nbackend {name}\n  mode tcp\n{options}  stick-table type string len 32 size 100k expire 30m\n  \
         stick on req.payload(0,0),mqtt_field_value(connect,client_identifier)\n  balance roundrobin\n{servers}"
    )
}

/// Runs `mqtt-lb check` on `cfg`, then starts `mqtt-lb run` with it, its output into `log`; RUST_LOG=warn
/// without per-connection logs.
pub fn spawn_checked_mqtt_lb(bin: &Path, name: &str, cfg: &Path, log: &Path, logs: bool) -> Result<Proc, String> {
    let check = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(cfg)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !check.status.success() {
        return Err(format!(
            "mqtt-lb check rejects {}: {}{}",
            cfg.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(cfg);
    if logs {
        cmd.env_remove("RUST_LOG");
    } else {
        cmd.env("RUST_LOG", "warn");
    }
    Proc::spawn(name, cmd, log)
}

/// The backend behind mqtt-lb's listeners: its servers, keys added to each server (e.g. `max_connection_rate`) and
/// keys added to the backend (e.g. `queue_timeout`), as YAML flow entries / lines.
pub struct LbBackend<'a> {
    pub servers: &'a [SocketAddr],
    pub server_keys: &'a str,
    pub backend_keys: &'a str,
}

impl<'a> LbBackend<'a> {
    /// One server, no extra keys: the backend of the single-broker loads.
    pub fn one(server: &'a [SocketAddr; 1]) -> LbBackend<'a> {
        LbBackend { servers: server, server_keys: "", backend_keys: "" }
    }
}

/// Where a started mqtt-lb listens: MQTT over TLS, plain MQTT, MQTT over WebSocket over TLS (`/mqtt`).
pub struct LbAddrs {
    pub tls: SocketAddr,
    pub plain: SocketAddr,
    pub wss: SocketAddr,
}

/// mqtt-lb's configuration: the same front door (TLS, CONNECT validation, placement by client id, MQTT probe), the
/// same without TLS on `plain` (the plain connection-rate load) and inside WebSocket over TLS on `wss` (the WSS idle
/// row); with `ticket_keys`, session tickets sealed by the key file (`tls.ticket_keys`), as a pair of instances
/// would run (a `--compare` binary older than the key runs without it).
pub fn mqtt_lb_config(
    at: &LbAddrs,
    pki: &crate::tls::Pki,
    ticket_keys: bool,
    backend: &LbBackend,
    threads: usize,
) -> String {
    let keys = if ticket_keys { format!(", ticket_keys: \"{}\"", pki.ticket_keys.display()) } else { String::new() };
    let servers: String = backend
        .servers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!("      - {{ name: broker{}, address: \"{b}\", weight: 1{} }}\n", i + 1, backend.server_keys)
        })
        .collect();
    format!(
        "listeners:\n\
         \x20 - name: mqtts\n\
         \x20   bind: \"{tls}\"\n\
         \x20   protocol: mqtt\n\
         \x20   tls: {{ cert: \"{cert}\", key: \"{key}\"{keys} }}\n\
         \x20   backend: brokers\n\
         \x20 - name: mqtt\n\
         \x20   bind: \"{plain}\"\n\
         \x20   protocol: mqtt\n\
         \x20   backend: brokers\n\
         \x20 - name: wss\n\
         \x20   bind: \"{wss}\"\n\
         \x20   protocol: websocket\n\
         \x20   path: /mqtt\n\
         \x20   tls: {{ cert: \"{cert}\", key: \"{key}\"{keys} }}\n\
         \x20   backend: brokers\n\
         backends:\n\
         \x20 - name: brokers\n\
         \x20   protocol: mqtt\n\
         \x20   balance: client-id\n\
         \x20   connect_timeout: 5s\n\
         \x20   health: {{ check: mqtt, interval: 2s, timeout: 1s, rise: 2, fall: 3 }}\n\
         {backend_keys}\
         \x20   servers:\n\
         {servers}\
         limits:\n\
         \x20 connect_timeout: 10s\n\
         \x20 max_connections: 100000\n\
         shutdown:\n\
         \x20 drain_timeout: 1s\n\
         workers: {threads}\n",
        tls = at.tls,
        plain = at.plain,
        wss = at.wss,
        backend_keys = backend.backend_keys,
        cert = pki.cert.display(),
        key = pki.key.display(),
    )
}

/// Starts HAProxy in the foreground (`-db`: its own PID, no daemon, no master) after `haproxy -c`.
pub async fn start_haproxy(
    dir: &Path,
    tag: &str,
    pem: &Path,
    brokers: &[SocketAddr],
    maxconn: u64,
    threads: usize,
    logs: bool,
) -> Result<(Proc, HaproxyAddrs), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let at = HaproxyAddrs {
            tls: loopback(free_port()?),
            plain: loopback(free_port()?),
            plain_tcpka: loopback(free_port()?),
        };
        let cfg = dir.join(format!("haproxy-{tag}.cfg"));
        std::fs::write(&cfg, haproxy_config(&at, pem, brokers, maxconn, threads, logs))
            .map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let check = Command::new(haproxy_binary())
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .map_err(|e| format!("cannot run haproxy -c: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy -c rejects {}: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let mut cmd = Command::new(haproxy_binary());
        cmd.arg("-db").arg("-f").arg(&cfg);
        let mut proc = Proc::spawn("haproxy", cmd, &dir.join(format!("haproxy-{tag}.log")))?;
        match proc.wait_accepting(at.tls).await {
            Ok(()) => return Ok((proc, at)),
            Err(e) => last = e,
        }
    }
    Err(format!("haproxy did not start: {last}"))
}

/// Starts an mqtt-lb release binary after `mqtt-lb check`; without `logs`, at `RUST_LOG=warn`.
#[allow(clippy::too_many_arguments)]
pub async fn start_mqtt_lb(
    bin: &Path,
    name: &str,
    dir: &Path,
    tag: &str,
    pki: &crate::tls::Pki,
    ticket_keys: bool,
    backend: &LbBackend<'_>,
    threads: usize,
    logs: bool,
) -> Result<(Proc, LbAddrs), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let at = LbAddrs { tls: loopback(free_port()?), plain: loopback(free_port()?), wss: loopback(free_port()?) };
        let cfg = dir.join(format!("{name}-{tag}.yaml"));
        std::fs::write(&cfg, mqtt_lb_config(&at, pki, ticket_keys, backend, threads))
            .map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let mut proc = spawn_checked_mqtt_lb(bin, name, &cfg, &dir.join(format!("{name}-{tag}.log")), logs)?;
        match proc.wait_accepting(at.tls).await {
            Ok(()) => return Ok((proc, at)),
            Err(e) => last = e,
        }
    }
    Err(format!("mqtt-lb did not start: {last}"))
}

// ---------------------------------------------------------------------------------------------------------------
// /proc

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (clock ticks) of a /proc/.../stat line.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of each thread of a process and of its child processes (nginx's workers; the benchmark's own
/// children are the processes it measures, so not for itself), by thread id.
fn thread_ticks(pid: u32) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let children = if pid == std::process::id() { Vec::new() } else { children(pid) };
    for p in std::iter::once(pid).chain(children) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(t) = std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(stat_ticks) {
                out.insert(tid, t);
            }
        }
    }
    out
}

/// The PIDs of the processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parent_of = |stat: &str| -> Option<u32> { stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok().as_deref().and_then(parent_of) == Some(pid))
        .collect()
}

/// Busy and total ticks of the whole machine (first line of /proc/stat).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of named processes (and their threads) and of the machine at one instant.
pub struct CpuSnapshot {
    at: Instant,
    procs: Vec<(String, u32, BTreeMap<u32, u64>)>,
    machine: Option<(u64, u64)>,
}

impl CpuSnapshot {
    pub fn take(procs: &[(String, u32)]) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            procs: procs.iter().map(|(n, p)| (n.clone(), *p, thread_ticks(*p))).collect(),
            machine: machine_ticks(),
        }
    }

    /// CPU use since `self`, per process: percent of one core for the process and for its busiest thread; and for
    /// the machine: busy percent of all cores, and the part of it that none of the named processes used (other
    /// work on the machine: noise).
    pub fn since(&self) -> serde_json::Value {
        let now = CpuSnapshot::take(&self.procs.iter().map(|(n, p, _)| (n.clone(), *p)).collect::<Vec<_>>());
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_second();
        let mut per = serde_json::Map::new();
        let mut ours_ticks = 0u64;
        for ((name, _, before), (_, _, after)) in self.procs.iter().zip(&now.procs) {
            let mut total = 0u64;
            let mut busiest = 0u64;
            for (tid, t) in after {
                let d = t.saturating_sub(before.get(tid).copied().unwrap_or(0));
                total += d;
                busiest = busiest.max(d);
            }
            ours_ticks += total;
            per.insert(
                name.clone(),
                serde_json::json!({
                    "cpu_secs": total as f64 / hz,
                    "cpu_pct": round1(total as f64 / hz / secs * 100.0),
                    "busiest_thread_pct": round1(busiest as f64 / hz / secs * 100.0),
                    "threads": after.len(),
                }),
            );
        }
        let mut out = serde_json::json!({ "processes": per });
        if let (Some((b0, t0)), Some((b1, t1))) = (self.machine, now.machine) {
            let (busy, total) = (b1.saturating_sub(b0), t1.saturating_sub(t0).max(1));
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
            let busy_pct = busy as f64 / total as f64 * 100.0 * cores;
            let other = (busy as f64 - ours_ticks as f64).max(0.0) / total as f64 * 100.0 * cores;
            out["machine_busy_pct"] = serde_json::json!(round1(busy_pct));
            out["other_pct"] = serde_json::json!(round1(other));
            out["cores"] = serde_json::json!(cores);
        }
        out
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// CPU used on the whole machine over `window`, in percent of one core.
pub async fn machine_busy_pct(window: Duration) -> Option<f64> {
    let (b0, t0) = machine_ticks()?;
    tokio::time::sleep(window).await;
    let (b1, t1) = machine_ticks()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    Some(b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64 * 100.0 * cores)
}

/// What is measured during one load: the CPU of named processes and of the machine, and, with `perf` (optional),
/// the system calls and context switches of one process (the proxy).
pub struct Probe {
    pub procs: Vec<(String, u32)>,
    /// PID to count system calls of, and the directory for perf's output.
    pub perf: Option<(u32, PathBuf)>,
}

/// A probe running over a load's measurement window.
pub struct ProbeRun {
    cpu: CpuSnapshot,
    perf: Option<(Proc, PathBuf)>,
}

impl Probe {
    pub fn start(&self) -> ProbeRun {
        let perf = self.perf.as_ref().and_then(|(pid, dir)| {
            let out = dir.join(format!("perf-stat-{pid}.csv"));
            let mut cmd = Command::new("perf");
            cmd.args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches", "-p"])
                .arg(pid.to_string())
                .arg("-o")
                .arg(&out);
            Proc::spawn("perf", cmd, &dir.join("perf.log")).ok().map(|p| (p, out))
        });
        ProbeRun { cpu: CpuSnapshot::take(&self.procs), perf }
    }
}

impl ProbeRun {
    /// CPU use over the window (see [`CpuSnapshot::since`]), plus `perf: { syscalls, context_switches }`.
    pub fn finish(self) -> serde_json::Value {
        let mut out = self.cpu.since();
        if let Some((mut proc, file)) = self.perf {
            // perf stat prints its counts on SIGINT.
            proc.signal_and_wait(libc::SIGINT, Duration::from_secs(3));
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let count = |event: &str| -> Option<u64> {
                text.lines().find(|l| l.contains(event)).and_then(|l| l.split(',').next()?.trim().parse().ok())
            };
            out["perf"] = serde_json::json!({
                "syscalls": count("raw_syscalls:sys_enter"),
                "context_switches": count("context-switches"),
            });
        }
        out
    }
}
