//! Results: per-round figures, median/min/max over rounds, ratios, targets, and the two outputs (`results.json`,
//! `RESULTS.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::load::{ConnRate, Tput};
use crate::stats::{ms, percentile, summarize};
use crate::storm::Storm;
use crate::udp::{UdpLoad, UdpPath};
use crate::{Opts, PathKind};

/// What the run was and where it ran.
pub struct Meta {
    pub date: String,
    pub machine: Value,
    pub versions: Value,
    pub settings: Value,
    /// Negotiated TLS version and suite per path.
    pub tls: Map<String, Value>,
    pub total_secs: f64,
    /// Time spent waiting for other work on the machine to calm down.
    pub quiet_waited_secs: f64,
}

pub fn first_line(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn mem_total_gib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0
}

/// UTC date and time now, `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Meta {
    pub fn gather(
        opts: &Opts,
        mqtt_lb: &Path,
        compare: Option<&Path>,
        idle_conns: usize,
        haproxy_maxconn: u64,
    ) -> Meta {
        let repo = crate::manifest_dir().join("..");
        let commit = first_line("git", &["-C", &repo.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args(["-C", &repo.to_string_lossy(), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Meta {
            date: utc_now(),
            machine: json!({
                "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "cpu_model": cpu_model(),
                "memory_gib": mem_total_gib(),
                "kernel": kernel,
            }),
            versions: json!({
                "mqtt_lb": format!("{} (git {commit}{})", first_line(&mqtt_lb.to_string_lossy(), &["version"]),
                    if dirty { ", uncommitted changes in src/" } else { "" }),
                "haproxy": first_line(&crate::procs::haproxy_binary().to_string_lossy(), &["-v"]),
                "mosquitto": first_line(&crate::procs::mosquitto_binary().to_string_lossy(), &["-h"]),
                "rustc": first_line("rustc", &["-V"]),
                "mqtt_lb_binary": mqtt_lb.display().to_string(),
                "mqtt_lb_base_binary": compare.map(|p| p.display().to_string()),
            }),
            settings: json!({
                "command": format!("mqtt-lb-bench {}", opts.args.join(" ")).trim().to_owned(),
                "quick": opts.quick,
                "rounds": opts.rounds,
                "conn_secs": opts.conn_secs,
                "conn_workers": opts.workers,
                "tput_secs": opts.tput_secs,
                "paced_secs": opts.paced_secs,
                "paced_rate_per_publisher": opts.paced_rate,
                "warmup_secs": opts.warmup_secs,
                "pairs": opts.pairs,
                "window": opts.window,
                "idle_connections": idle_conns,
                "haproxy_maxconn": haproxy_maxconn,
                "client_tls": if opts.full_verify { "full verification" } else { "pinned certificate, no signature check" },
                "tls_resumption": false,
                "per_connection_logs": opts.logs,
                "proxy_threads": opts.threads,
                "udp_secs": opts.udp_secs,
                "udp_senders": opts.udp_senders,
                "udp_paced_senders": crate::udp::PACED_SENDERS,
                "udp_paced_rate": opts.udp_paced_rate,
                "udp_answer_wait_ms": crate::udp::ANSWER_WAIT.as_millis() as u64,
            }),
            tls: Map::new(),
            total_secs: 0.0,
            quiet_waited_secs: 0.0,
        }
    }
}

/// One round's figures: the JSON kept as is, and the numbers summarized over rounds.
pub struct Round {
    json: Map<String, Value>,
    /// (metric, path, value)
    values: Vec<(String, &'static str, f64)>,
    /// (phase, path, cpu sample)
    cpu: Vec<(String, &'static str, Value)>,
}

/// Proxy system calls and context switches per operation (with `--perf`).
fn proxy_per_op(cpu: &Value, what: &str, ops: u64) -> Option<f64> {
    let n = cpu["perf"][what].as_f64()?;
    (ops > 0).then(|| (n / ops as f64 * 1000.0).round() / 1000.0)
}

/// Proxy CPU time per operation, µs (none for the direct path).
fn proxy_cpu_us(cpu: &Value, ops: u64) -> Option<f64> {
    let secs = cpu["processes"]["proxy"]["cpu_secs"].as_f64()?;
    (ops > 0).then(|| (secs * 1e6 / ops as f64 * 100.0).round() / 100.0)
}

fn error_count(errors: &BTreeMap<&'static str, u64>) -> u64 {
    errors.values().sum()
}

fn insert(json: &mut Map<String, Value>, phase: &str, path: &str, v: Value) {
    let entry = json.entry(phase.to_owned()).or_insert_with(|| json!({}));
    if let Some(m) = entry.as_object_mut() {
        m.insert(path.to_owned(), v);
    }
}

impl Round {
    pub fn new(n: usize, order: &[&str]) -> Round {
        let mut json = Map::new();
        json.insert("round".into(), json!(n));
        json.insert("order".into(), json!(order));
        Round { json, values: Vec::new(), cpu: Vec::new() }
    }

    fn value(&mut self, metric: &str, path: PathKind, v: Option<f64>) {
        if let Some(v) = v {
            self.values.push((metric.to_owned(), path.name(), v));
        }
    }

    /// A connection-rate load: `phase` is `conn` (full handshakes), `resume` (resumed ones) or `plain` (no TLS).
    pub fn conn(&mut self, phase: &str, path: PathKind, mut c: ConnRate, cpu: Value) {
        let rate = c.completed as f64 / c.secs;
        let p50 = percentile(&mut c.connack_us, 50.0);
        let p99 = percentile(&mut c.connack_us, 99.0);
        let errors = error_count(&c.errors);
        let resumed_pct = (c.completed > 0).then(|| (c.resumed as f64 * 1000.0 / c.completed as f64).round() / 10.0);
        self.value(&format!("{phase}.rate"), path, Some(rate));
        self.value(&format!("{phase}.p50"), path, ms(p50).as_f64());
        self.value(&format!("{phase}.p99"), path, ms(p99).as_f64());
        self.value(&format!("{phase}.cpu_us"), path, proxy_cpu_us(&cpu, c.completed));
        self.value(&format!("{phase}.syscalls"), path, proxy_per_op(&cpu, "syscalls", c.completed));
        if phase == "resume" {
            self.value("resume.resumed_pct", path, resumed_pct);
        }
        self.value("errors", path, Some(errors as f64));
        self.cpu.push((phase.to_owned(), path.name(), cpu.clone()));
        insert(
            &mut self.json,
            phase,
            path.name(),
            json!({
                "conn_per_s": rate.round(),
                "completed": c.completed,
                "resumed": c.resumed,
                "secs": c.secs,
                "connack_p50_ms": ms(p50),
                "connack_p99_ms": ms(p99),
                "errors": errors,
                "error_kinds": c.errors,
                "cpu": cpu,
            }),
        );
    }

    pub fn tput(&mut self, path: PathKind, payload: usize, paced: bool, mut t: Tput, cpu: Value) {
        let phase = phase_key(payload, paced);
        let rate = t.delivered as f64 / t.secs;
        let p50 = percentile(&mut t.latency_us, 50.0);
        let p99 = percentile(&mut t.latency_us, 99.0);
        let errors = error_count(&t.errors);
        self.value(&format!("{phase}.rate"), path, Some(rate));
        self.value(&format!("{phase}.p50"), path, ms(p50).as_f64());
        self.value(&format!("{phase}.p99"), path, ms(p99).as_f64());
        if !paced {
            self.value(&format!("{phase}.cpu_us"), path, proxy_cpu_us(&cpu, t.delivered));
            self.value(&format!("{phase}.syscalls"), path, proxy_per_op(&cpu, "syscalls", t.delivered));
            self.value(&format!("{phase}.switches"), path, proxy_per_op(&cpu, "context_switches", t.delivered));
        }
        self.value("errors", path, Some(errors as f64));
        self.cpu.push((phase.clone(), path.name(), cpu.clone()));
        insert(
            &mut self.json,
            &phase,
            path.name(),
            json!({
                "msgs_per_s": rate.round(),
                "delivered_in_window": t.delivered,
                "secs": t.secs,
                "latency_p50_ms": ms(p50),
                "latency_p99_ms": ms(p99),
                "sent": t.sent,
                "received": t.received,
                "errors": errors,
                "error_kinds": t.errors,
                "cpu": cpu,
            }),
        );
    }

    /// One load of the UDP section (`paced`: the fixed-rate one).
    pub fn udp(&mut self, path: UdpPath, paced: bool, mut l: UdpLoad, cpu: Value) {
        let phase = if paced { "udp_paced" } else { "udp" };
        let name = path.name();
        let rate = l.answered as f64 / l.secs;
        let p50 = percentile(&mut l.rtt_us, 50.0);
        let p99 = percentile(&mut l.rtt_us, 99.0);
        let errors = error_count(&l.errors);
        let mut value = |metric: String, v: Option<f64>| {
            if let Some(v) = v {
                self.values.push((metric, name, v));
            }
        };
        value(format!("{phase}.rate"), Some(rate));
        value(format!("{phase}.p50"), p50.map(f64::from));
        value(format!("{phase}.p99"), p99.map(f64::from));
        if !paced {
            value(format!("{phase}.cpu_us"), proxy_cpu_us(&cpu, l.answered));
            value(format!("{phase}.syscalls"), proxy_per_op(&cpu, "syscalls", l.answered));
        }
        value("udp.errors".to_owned(), Some(errors as f64));
        value("errors".to_owned(), Some(errors as f64));
        self.cpu.push((phase.to_owned(), name, cpu.clone()));
        insert(
            &mut self.json,
            phase,
            name,
            json!({
                "requests_per_s": rate.round(),
                "answered_in_window": l.answered,
                "secs": l.secs,
                "rtt_p50_us": p50,
                "rtt_p99_us": p99,
                "sent": l.sent,
                "errors": errors,
                "error_kinds": l.errors,
                "cpu": cpu,
            }),
        );
    }

    /// A failover storm: `phase` is `storm_full` (clients without tickets) or `storm_resumed` (each with its own).
    pub fn storm(&mut self, phase: &str, path: PathKind, mut s: Storm) {
        let p50 = percentile(&mut s.connack_us, 50.0);
        let p99 = percentile(&mut s.connack_us, 99.0);
        let errors = error_count(&s.errors);
        let resumed_pct =
            (s.reconnected > 0).then(|| (s.resumed as f64 * 1000.0 / s.reconnected as f64).round() / 10.0);
        let proxy_secs = s.cpu["processes"]["proxy"]["cpu_secs"].as_f64();
        self.value(&format!("{phase}.secs"), path, Some((s.secs * 1000.0).round() / 1000.0));
        self.value(&format!("{phase}.p50"), path, ms(p50).as_f64());
        self.value(&format!("{phase}.p99"), path, ms(p99).as_f64());
        self.value(&format!("{phase}.resumed_pct"), path, resumed_pct);
        self.value(&format!("{phase}.cpu_secs"), path, proxy_secs.map(|c| (c * 1000.0).round() / 1000.0));
        self.value(&format!("{phase}.cpu_us"), path, proxy_cpu_us(&s.cpu, s.reconnected));
        self.value("errors", path, Some(errors as f64));
        self.cpu.push((phase.to_owned(), path.name(), s.cpu.clone()));
        insert(
            &mut self.json,
            phase,
            path.name(),
            json!({
                "clients": s.clients,
                "connected_before_cut": s.connected,
                "reconnected": s.reconnected,
                "resumed": s.resumed,
                "secs_until_all_connack": s.secs,
                "connack_p50_ms": ms(p50),
                "connack_p99_ms": ms(p99),
                "errors": errors,
                "error_kinds": s.errors,
                "cpu": s.cpu,
            }),
        );
    }

    pub fn idle(&mut self, path: PathKind, v: Value) {
        self.value("idle.kib", path, v["kib_per_conn"].as_f64());
        self.value("errors", path, v["errors"].as_f64());
        insert(&mut self.json, "idle", path.name(), v);
    }
}

fn phase_key(payload: usize, paced: bool) -> String {
    let size = if payload == 1024 { "1k".to_owned() } else { payload.to_string() };
    format!("{}{size}", if paced { "paced" } else { "tput" })
}

pub struct Results {
    pub rounds: Vec<Round>,
    /// The paths of the UDP section that ran (none without the `udp` phase).
    pub udp_paths: Vec<UdpPath>,
    udp_senders: usize,
    udp_paced_rate: u32,
    /// Whether any of the MQTT loads (conn, tput, idle) ran: without them, only the UDP section is written.
    mqtt_phases: bool,
    paths: Vec<PathKind>,
    idle_conns: usize,
    /// Clients of the failover storm (0 without the `storm` phase).
    pub storm_clients: usize,
    paced_rate: u32,
    pairs: usize,
    window: u64,
}

/// Table rows: metric key and label.
fn rows(r: &Results) -> Vec<(String, String)> {
    let mut v = vec![
        ("conn.rate".to_owned(), "connections/s (TLS handshake + CONNECT/CONNACK + DISCONNECT)".to_owned()),
        ("conn.p50".to_owned(), "time to CONNACK p50 (ms)".to_owned()),
        ("conn.p99".to_owned(), "time to CONNACK p99 (ms)".to_owned()),
        ("conn.cpu_us".to_owned(), "proxy CPU per connection (µs)".to_owned()),
        ("conn.syscalls".to_owned(), "proxy system calls per connection".to_owned()),
        ("resume.rate".to_owned(), "resumed TLS: connections/s (same cycle, the session resumed)".to_owned()),
        ("resume.resumed_pct".to_owned(), "resumed TLS: handshakes that resumed (%)".to_owned()),
        ("resume.p50".to_owned(), "resumed TLS: time to CONNACK p50 (ms)".to_owned()),
        ("resume.p99".to_owned(), "resumed TLS: time to CONNACK p99 (ms)".to_owned()),
        ("resume.cpu_us".to_owned(), "resumed TLS: proxy CPU per connection (µs)".to_owned()),
        ("resume.syscalls".to_owned(), "resumed TLS: proxy system calls per connection".to_owned()),
        ("plain.rate".to_owned(), "plain MQTT: connections/s (no TLS, CONNECT/CONNACK + DISCONNECT)".to_owned()),
        ("plain.p50".to_owned(), "plain MQTT: time to CONNACK p50 (ms)".to_owned()),
        ("plain.p99".to_owned(), "plain MQTT: time to CONNACK p99 (ms)".to_owned()),
        ("plain.cpu_us".to_owned(), "plain MQTT: proxy CPU per connection (µs)".to_owned()),
        ("plain.syscalls".to_owned(), "plain MQTT: proxy system calls per connection".to_owned()),
        ("plain_tcpka.rate".to_owned(), "plain MQTT, TCP keepalive both sides: connections/s".to_owned()),
        ("plain_tcpka.p99".to_owned(), "plain MQTT, TCP keepalive both sides: time to CONNACK p99 (ms)".to_owned()),
        (
            "plain_tcpka.cpu_us".to_owned(),
            "plain MQTT, TCP keepalive both sides: proxy CPU per connection (µs)".to_owned(),
        ),
        (
            "plain_tcpka.syscalls".to_owned(),
            "plain MQTT, TCP keepalive both sides: proxy system calls per connection".to_owned(),
        ),
    ];
    for (size, label) in [("64", "64 B"), ("1k", "1 KiB")] {
        v.push((format!("tput{size}.rate"), format!("QoS 0 {label}, saturated: delivered msg/s")));
        v.push((format!("tput{size}.p50"), format!("QoS 0 {label}, saturated: latency p50 (ms)")));
        v.push((format!("tput{size}.p99"), format!("QoS 0 {label}, saturated: latency p99 (ms)")));
        v.push((format!("tput{size}.cpu_us"), format!("QoS 0 {label}, saturated: proxy CPU per message (µs)")));
        v.push((format!("tput{size}.syscalls"), format!("QoS 0 {label}, saturated: proxy system calls per message")));
        v.push((
            format!("tput{size}.switches"),
            format!("QoS 0 {label}, saturated: proxy context switches per message"),
        ));
        v.push((
            format!("paced{size}.rate"),
            format!("QoS 0 {label}, paced {}×{}/s: delivered msg/s", r.pairs, r.paced_rate),
        ));
        v.push((format!("paced{size}.p50"), format!("QoS 0 {label}, paced: latency p50 (ms)")));
        v.push((format!("paced{size}.p99"), format!("QoS 0 {label}, paced: latency p99 (ms)")));
    }
    v.push(("idle.kib".to_owned(), format!("RSS per idle TLS connection (KiB), {} connections", r.idle_conns)));
    let n = r.storm_clients;
    for (phase, what) in [("storm_full", "no tickets"), ("storm_resumed", "each with a ticket")] {
        let storm = format!("failover storm, {n} clients {what}");
        v.push((format!("{phase}.secs"), format!("{storm}: time until all have their CONNACK (s)")));
        v.push((format!("{phase}.p50"), format!("{storm}: time to CONNACK p50 (ms)")));
        v.push((format!("{phase}.p99"), format!("{storm}: time to CONNACK p99 (ms)")));
        v.push((format!("{phase}.resumed_pct"), format!("{storm}: handshakes that resumed (%)")));
        v.push((format!("{phase}.cpu_secs"), format!("{storm}: proxy CPU during the storm (s)")));
        v.push((format!("{phase}.cpu_us"), format!("{storm}: proxy CPU per connection (µs)")));
    }
    v.push(("errors".to_owned(), "errors (all loads, per round)".to_owned()));
    v
}

fn fmt_num(x: f64, metric: &str) -> String {
    if metric.ends_with(".rate") {
        let n = x.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if metric == "errors" {
        format!("{}", x.round() as i64)
    } else if metric.ends_with(".syscalls") || metric.ends_with(".switches") {
        format!("{x:.2}")
    } else if metric == "idle.kib" || metric.ends_with(".cpu_us") {
        format!("{x:.1}")
    } else if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

impl Results {
    pub fn new(opts: &Opts, idle_conns: usize) -> Results {
        Results {
            rounds: Vec::new(),
            udp_paths: Vec::new(),
            udp_senders: opts.udp_senders,
            udp_paced_rate: opts.udp_paced_rate,
            mqtt_phases: opts.phases.iter().any(|p| p != "udp"),
            paths: opts.paths.clone(),
            idle_conns,
            storm_clients: 0,
            paced_rate: opts.paced_rate,
            pairs: opts.pairs,
            window: opts.window,
        }
    }

    /// metric -> path -> values over rounds (errors: summed within a round first).
    fn collect(&self) -> BTreeMap<String, BTreeMap<&'static str, Vec<f64>>> {
        let mut out: BTreeMap<String, BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
        for r in &self.rounds {
            let mut errors: BTreeMap<(&str, &'static str), f64> = BTreeMap::new();
            for (metric, path, v) in &r.values {
                if metric == "errors" || metric == "udp.errors" {
                    *errors.entry((metric.as_str(), path)).or_insert(0.0) += v;
                } else {
                    out.entry(metric.clone()).or_default().entry(path).or_default().push(*v);
                }
            }
            for ((metric, path), v) in errors {
                out.entry(metric.to_owned()).or_default().entry(path).or_default().push(v);
            }
        }
        out
    }

    /// Returns the JSON, the markdown, the ratio text printed at the end, and the number of errors.
    pub fn finish(self, meta: &Meta) -> (Value, String, String, u64) {
        let values = self.collect();
        let mut summary = Map::new();
        for (metric, per_path) in &values {
            let mut m = Map::new();
            for (path, v) in per_path {
                if let Some(s) = summarize(v) {
                    m.insert((*path).to_owned(), s);
                }
            }
            summary.insert(metric.clone(), Value::Object(m));
        }
        let med = |metric: &str, path: PathKind| -> Option<f64> {
            summary.get(metric)?.get(path.name())?.get("median")?.as_f64()
        };
        let ratio = |metric: &str, den: PathKind| -> Option<f64> {
            let (a, b) = (med(metric, PathKind::MqttLb)?, med(metric, den)?);
            // Rounded once, so that the table, the targets and the printed ratios agree.
            (b != 0.0).then(|| round3(a / b))
        };
        let total_errors: u64 =
            values.get("errors").map(|p| p.values().flatten().sum::<f64>().round() as u64).unwrap_or(0);

        // Ratios for every row.
        let mut ratios = Map::new();
        for (metric, _) in rows(&self) {
            ratios.insert(
                metric.clone(),
                json!({
                    "mqtt_lb_over_haproxy": ratio(&metric, PathKind::Haproxy).map(round3),
                    "mqtt_lb_over_direct": ratio(&metric, PathKind::Direct).map(round3),
                    "mqtt_lb_over_base": ratio(&metric, PathKind::MqttLbBase).map(round3),
                }),
            );
        }

        // Targets.
        let added = |phase: &str, path: PathKind| -> Option<f64> {
            Some(med(&format!("{phase}.p99"), path)? - med(&format!("{phase}.p99"), PathKind::Direct)?)
        };
        let mut targets = Vec::new();
        let mut target = |name: String, value: Option<f64>, shown: String, met: Option<bool>| {
            targets.push(json!({ "target": name, "value": value.map(round3), "shown": shown, "met": met }));
        };
        let r = ratio("conn.rate", PathKind::Haproxy);
        target("connection rate >= 1.0x HAProxy".into(), r, fmt_ratio(r), r.map(|x| x >= 1.0));
        let (a, b) = (med("conn.p99", PathKind::MqttLb), med("conn.p99", PathKind::Haproxy));
        target(
            "p99 time to CONNACK <= HAProxy".into(),
            a,
            format!("{} ms vs {} ms", fmt_opt(a), fmt_opt(b)),
            a.zip(b).map(|(a, b)| a <= b),
        );
        for (size, label) in [("64", "64 B"), ("1k", "1 KiB")] {
            let r = ratio(&format!("tput{size}.rate"), PathKind::Haproxy);
            target(format!("QoS 0 {label} throughput >= 1.1x HAProxy"), r, fmt_ratio(r), r.map(|x| x >= 1.1));
        }
        for (phase, label) in [
            ("paced64", "64 B paced"),
            ("paced1k", "1 KiB paced"),
            ("tput64", "64 B saturated"),
            ("tput1k", "1 KiB saturated"),
        ] {
            let (a, b) = (added(phase, PathKind::MqttLb), added(phase, PathKind::Haproxy));
            target(
                format!("p99 latency added over direct ({label}) <= HAProxy's"),
                a,
                format!("{} ms vs {} ms", fmt_opt(a), fmt_opt(b)),
                a.zip(b).map(|(a, b)| a <= b),
            );
        }
        // CPU per plain connection: the median of the per-round ratios (each round runs the paths back to back, so
        // its ratio is steadier on a shared machine than the ratio of the two medians).
        let paired = |metric: &str| -> Option<f64> {
            let per_path = values.get(metric)?;
            let (lb, ha) = (per_path.get(PathKind::MqttLb.name())?, per_path.get(PathKind::Haproxy.name())?);
            let ratios: Vec<f64> = lb.iter().zip(ha).filter(|(_, h)| **h > 0.0).map(|(l, h)| l / h).collect();
            let median = summarize(&ratios)?.get("median")?.as_f64()?;
            (lb.len() == ha.len()).then(|| round3(median))
        };
        for (metric, label) in [
            ("plain.cpu_us", "proxy CPU per plain connection <= HAProxy's (reference config: no TCP keepalive)"),
            ("plain_tcpka.cpu_us", "proxy CPU per plain connection <= HAProxy's (both: TCP keepalive both sides)"),
        ] {
            let r = paired(metric);
            target(label.into(), r, format!("{} (median of per-round ratios)", fmt_ratio(r)), r.map(|x| x <= 1.0));
        }
        let r = ratio("idle.kib", PathKind::Haproxy);
        target("idle memory per TLS connection <= 0.5x HAProxy".into(), r, fmt_ratio(r), r.map(|x| x <= 0.5));
        let lb = med("idle.kib", PathKind::MqttLb);
        let gib = lb.map(|k| k * 100_000.0 / 1024.0 / 1024.0);
        target(
            "100,000 idle TLS connections in 1 GiB (<= 10.5 KiB each)".into(),
            lb,
            format!("{} KiB each: {} GiB for 100,000", fmt_opt(lb), gib.map_or("-".into(), |g| format!("{g:.2}"))),
            gib.map(|g| g <= 1.0),
        );
        // mqtt-lb's own errors: the direct path is mosquitto alone, which a 9,500-client TLS storm overwhelms (its
        // errors are in the table's errors row, and in the total below).
        let path_errors = |path: PathKind| -> u64 {
            values
                .get("errors")
                .and_then(|p| p.get(path.name()))
                .map(|v| v.iter().sum::<f64>().round() as u64)
                .unwrap_or(0)
        };
        let lb_errors = path_errors(PathKind::MqttLb);
        target(
            "zero errors in every run (mqtt-lb)".into(),
            Some(lb_errors as f64),
            format!("{lb_errors} (all paths: {total_errors})"),
            Some(lb_errors == 0),
        );

        let cpu = self.cpu_summary();
        let udp = self.udp_summary(&summary);
        let mut markdown = self.markdown(meta, &summary, &ratios, &targets, &cpu);
        if !self.udp_paths.is_empty() {
            markdown.push_str(&self.udp_markdown(meta, &summary, &udp, &cpu));
        }
        let mut text = String::from("\nmqtt-lb ratios (medians):\n");
        for (metric, label) in rows(&self) {
            let (h, d) = (ratio(&metric, PathKind::Haproxy), ratio(&metric, PathKind::Direct));
            let b = ratio(&metric, PathKind::MqttLbBase);
            if h.is_some() || d.is_some() || b.is_some() {
                let _ = write!(
                    text,
                    "  {label:66} mqtt-lb/HAProxy {:>7}  mqtt-lb/direct {:>7}",
                    fmt_ratio(h),
                    fmt_ratio(d)
                );
                if b.is_some() {
                    let _ = write!(text, "  mqtt-lb/base {:>7}", fmt_ratio(b));
                }
                text.push('\n');
            }
        }
        if !self.udp_paths.is_empty() {
            text.push_str("UDP section (CoAP):\n");
            for (metric, label) in udp_rows(&self) {
                if !summary.contains_key(&metric) {
                    continue;
                }
                let r = &udp["ratios"][&metric];
                let _ = writeln!(
                    text,
                    "  {label:66} mqtt-lb/direct {:>7}  mqtt-lb/nginx {:>7}",
                    fmt_ratio(r["mqtt_lb_over_direct"].as_f64()),
                    fmt_ratio(r["mqtt_lb_over_nginx"].as_f64())
                );
            }
            for (key, label) in [("udp", "saturated"), ("udp_paced", "paced")] {
                let added = &udp["added_latency_us"][key]["mqtt-lb"];
                let _ = writeln!(
                    text,
                    "  round trip added by mqtt-lb over direct, {label}: p50 {} µs, p99 {} µs",
                    added["p50"].as_f64().map_or("-".into(), |x| format!("{x:.0}")),
                    added["p99"].as_f64().map_or("-".into(), |x| format!("{x:.0}"))
                );
            }
        }
        text.push_str("targets:\n");
        for t in targets.iter().filter(|t| self.mqtt_phases || t["met"].as_bool().is_some()) {
            let met = match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "n/a",
            };
            let _ = writeln!(
                text,
                "  {:62} {:28} {met}",
                t["target"].as_str().unwrap_or(""),
                t["shown"].as_str().unwrap_or("")
            );
        }
        let json = json!({
            "schema": 1,
            "date": meta.date,
            "machine": meta.machine,
            "versions": meta.versions,
            "settings": meta.settings,
            "tls": meta.tls,
            "total_secs": round3(meta.total_secs),
            "quiet_waited_secs": round3(meta.quiet_waited_secs),
            "summary": summary,
            "ratios": ratios,
            "targets": targets,
            "cpu": cpu,
            "udp": udp,
            "errors_total": total_errors,
            "rounds": self.rounds.iter().map(|r| Value::Object(r.json.clone())).collect::<Vec<_>>(),
        });
        (json, markdown, text, total_errors)
    }

    /// The UDP section's ratios (from the medians) and the round trip each proxy adds over direct (its median
    /// minus direct's, µs).
    fn udp_summary(&self, summary: &Map<String, Value>) -> Value {
        if self.udp_paths.is_empty() {
            return Value::Null;
        }
        let med = |metric: &str, path: UdpPath| -> Option<f64> {
            summary.get(metric)?.get(path.name())?.get("median")?.as_f64()
        };
        let ratio = |metric: &str, a: UdpPath, b: UdpPath| -> Option<f64> {
            let (a, b) = (med(metric, a)?, med(metric, b)?);
            (b != 0.0).then(|| round3(a / b))
        };
        let mut ratios = Map::new();
        for (metric, _) in udp_rows(self) {
            ratios.insert(
                metric.clone(),
                json!({
                    "mqtt_lb_over_direct": ratio(&metric, UdpPath::MqttLb, UdpPath::Direct),
                    "mqtt_lb_over_nginx": ratio(&metric, UdpPath::MqttLb, UdpPath::Nginx),
                    "nginx_over_direct": ratio(&metric, UdpPath::Nginx, UdpPath::Direct),
                }),
            );
        }
        let mut added = Map::new();
        for phase in ["udp", "udp_paced"] {
            let mut per = Map::new();
            for path in [UdpPath::MqttLb, UdpPath::Nginx] {
                let d = |q: &str| {
                    let m = format!("{phase}.{q}");
                    Some(med(&m, path)? - med(&m, UdpPath::Direct)?)
                };
                if self.udp_paths.contains(&path) {
                    per.insert(path.name().to_owned(), json!({ "p50": d("p50"), "p99": d("p99") }));
                }
            }
            added.insert(phase.to_owned(), Value::Object(per));
        }
        json!({
            "paths": self.udp_paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "ratios": ratios,
            "added_latency_us": added,
        })
    }

    /// The UDP section of `RESULTS.md`.
    fn udp_markdown(&self, meta: &Meta, summary: &Map<String, Value>, udp: &Value, cpu: &Value) -> String {
        let mut md = String::new();
        let s = &meta.settings;
        let nginx = self.udp_paths.contains(&UdpPath::Nginx);
        let _ = writeln!(md, "\n## CoAP over UDP\n");
        let _ = writeln!(
            md,
            "What the `protocol: coap` path costs a CoAP device. A real CoAP server, libcoap's `coap-server` ({}, built \
             without DTLS), holds a 2-byte resource; senders, each a UDP socket of its own (one device, one flow in \
             mqtt-lb), send Confirmable GETs and wait for the piggybacked 2.05 response before the next: one request in \
             flight per sender, round trip measured per request. *Saturated*: {} senders back to back; *paced*: {} senders, \
             {} requests/s in all, far below every path's capacity (the latency a request sees on an unloaded path). {} s \
             per load after {} s of warm-up, paths interleaved and rotated every round; each figure the median of {} rounds \
             [min – max]. *direct*: the senders talk to coap-server; *mqtt-lb*: a `protocol: coap` listener in front of it \
             (one server, CoAP ping health check){}. Every answered request is two datagrams relayed by the proxy \
             (request and response). \"added\" is the path's median round trip minus direct's. A request unanswered \
             within {} ms counts as an error. The generator, coap-server and the proxy share the machine's {} cores: what \
             a proxy uses is taken from the other two, which bounds the saturated rate through it (see the CPU table); \
             proxy CPU per request depends least on that.\n",
            meta.versions["libcoap"].as_str().unwrap_or("libcoap"),
            self.udp_senders,
            crate::udp::PACED_SENDERS,
            self.udp_paced_rate,
            s["udp_secs"],
            s["warmup_secs"],
            self.rounds.len(),
            if nginx {
                "; *nginx*: nginx's UDP stream proxy (`listen ... udp reuseport`, one worker per core, a session per device \
                 address kept 5 minutes, as mqtt-lb keeps a flow)"
            } else {
                ""
            },
            s["udp_answer_wait_ms"],
            meta.machine["nproc"],
        );
        let names: Vec<&str> = self.udp_paths.iter().map(|p| p.label()).collect();
        let _ = writeln!(
            md,
            "| metric | {} | mqtt-lb / direct |{}",
            names.join(" | "),
            if nginx { " mqtt-lb / nginx |" } else { "" }
        );
        let _ = writeln!(md, "|---|{}---|{}", "---|".repeat(names.len()), if nginx { "---|" } else { "" });
        let cell = |x: &Value, metric: &str| {
            let (a, lo, hi) = (
                x["median"].as_f64().unwrap_or(0.0),
                x["min"].as_f64().unwrap_or(0.0),
                x["max"].as_f64().unwrap_or(0.0),
            );
            if x["n"].as_u64() == Some(1) || lo == hi {
                fmt_udp(a, metric)
            } else {
                format!("{} [{} – {}]", fmt_udp(a, metric), fmt_udp(lo, metric), fmt_udp(hi, metric))
            }
        };
        for (metric, label) in udp_rows(self) {
            let Some(per) = summary.get(&metric) else { continue };
            let cells: Vec<String> =
                self.udp_paths.iter().map(|p| per.get(p.name()).map_or("-".into(), |x| cell(x, &metric))).collect();
            let r = &udp["ratios"][&metric];
            let _ =
                write!(md, "| {label} | {} | {} |", cells.join(" | "), fmt_ratio(r["mqtt_lb_over_direct"].as_f64()));
            if nginx {
                let _ = write!(md, " {} |", fmt_ratio(r["mqtt_lb_over_nginx"].as_f64()));
            }
            md.push('\n');
            // The latency added over direct, after each latency row.
            if let Some((phase, q)) = metric.split_once('.').filter(|(_, q)| *q == "p50" || *q == "p99") {
                let added: Vec<String> = self
                    .udp_paths
                    .iter()
                    .map(|p| match p {
                        UdpPath::Direct => "-".to_owned(),
                        _ => udp["added_latency_us"][phase][p.name()][q]
                            .as_f64()
                            .map_or("-".into(), |x| format!("{x:+.0}")),
                    })
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {} | |{}",
                    label.replace("round trip", "round trip added over direct"),
                    added.join(" | "),
                    if nginx { " |" } else { "" }
                );
            }
        }
        let _ = writeln!(
            md,
            "\nCPU during the saturated load, percent of one core (median over rounds): generator, coap-server, the proxy and \
             its busiest thread, the machine, and other work on the machine.\n\n\
             | path | generator | coap-server | proxy | proxy busiest thread | machine | other |\n|---|---|---|---|---|---|---|"
        );
        for p in &self.udp_paths {
            let Some(c) = cpu.get("udp").and_then(|x| x.get(p.name())) else { continue };
            let pct = |k: &str| c.get(k).and_then(Value::as_f64).map_or("-".to_owned(), |x| format!("{x:.0}%"));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.name(),
                pct("bench"),
                pct("coap-server"),
                pct("proxy"),
                pct("proxy busiest thread"),
                pct("machine_busy_pct"),
                pct("other_pct")
            );
        }
        md
    }

    /// phase -> path -> process -> median CPU % (and of the busiest thread), plus the machine's other load.
    fn cpu_summary(&self) -> Value {
        let mut acc: BTreeMap<(String, &'static str), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        for r in &self.rounds {
            for (phase, path, cpu) in &r.cpu {
                let e = acc.entry((phase.clone(), path)).or_default();
                if let Some(procs) = cpu["processes"].as_object() {
                    for (name, p) in procs {
                        if let Some(v) = p["cpu_pct"].as_f64() {
                            e.entry(name.clone()).or_default().push(v);
                        }
                        if let Some(v) = p["busiest_thread_pct"].as_f64() {
                            e.entry(format!("{name} busiest thread")).or_default().push(v);
                        }
                    }
                }
                for k in ["other_pct", "machine_busy_pct"] {
                    if let Some(v) = cpu[k].as_f64() {
                        e.entry(k.to_owned()).or_default().push(v);
                    }
                }
            }
        }
        let mut out = Map::new();
        for ((phase, path), m) in acc {
            let entry = out.entry(phase).or_insert_with(|| json!({}));
            let mut per = Map::new();
            for (k, v) in m {
                if let Some(s) = summarize(&v) {
                    per.insert(k, s["median"].clone());
                }
            }
            if let Some(e) = entry.as_object_mut() {
                e.insert(path.to_owned(), Value::Object(per));
            }
        }
        Value::Object(out)
    }

    fn markdown(
        &self,
        meta: &Meta,
        summary: &Map<String, Value>,
        ratios: &Map<String, Value>,
        targets: &[Value],
        cpu: &Value,
    ) -> String {
        let mut md = String::new();
        let s = &meta.settings;
        let v = &meta.versions;
        let m = &meta.machine;
        let _ = writeln!(md, "# mqtt-lb benchmark: mqtt-lb beside HAProxy and a direct broker connection\n");
        let _ = writeln!(
            md,
            "Generated by `bench/run.sh` (the `mqtt-lb-bench` load generator in `bench/`); do not edit by hand.\n"
        );
        let _ = writeln!(
            md,
            "- date: {} (run took {:.0} s, of which {:.0} s waiting for other work on the machine to calm down){}",
            meta.date,
            meta.total_secs,
            meta.quiet_waited_secs,
            if s["quick"] == json!(true) { " — QUICK RUN, not the reference figures" } else { "" }
        );
        let _ = writeln!(
            md,
            "- machine: {} cores, {}, {} GiB RAM, Linux {}; shared with other work (see \"other\" CPU below)",
            m["nproc"],
            m["cpu_model"].as_str().unwrap_or(""),
            m["memory_gib"],
            m["kernel"].as_str().unwrap_or("")
        );
        for (k, label) in [
            ("mqtt_lb", "mqtt-lb"),
            ("haproxy", "HAProxy"),
            ("mosquitto", "mosquitto"),
            ("libcoap", "libcoap"),
            ("nginx", "nginx"),
            ("rustc", "rustc"),
        ] {
            if let Some(version) = v[k].as_str() {
                let _ = writeln!(md, "- {label}: {version}");
            }
        }
        let _ = writeln!(md, "- command: `{}`", s["command"].as_str().unwrap_or(""));
        let _ = writeln!(
            md,
            "- threads per proxy: {} (HAProxy `nbthread`, mqtt-lb `workers`, nginx `worker_processes`; `--threads`)",
            s["proxy_threads"]
        );
        let tls: Vec<String> = meta.tls.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or(""))).collect();
        if !tls.is_empty() {
            let _ = writeln!(
                md,
                "- TLS negotiated (full handshakes, no resumption, ECDSA P-256 certificate): {}",
                tls.join("; ")
            );
        }
        if !self.mqtt_phases {
            return md;
        }
        let _ = writeln!(
            md,
            "\nEach figure: median of {} rounds [min – max]. Paths interleaved, order rotated every round. Loads per path and round: \
             connection rate {} s with {} workers; QoS 0 saturated {} s ({} publishers → {} subscribers, one topic per pair, \
             up to {} messages in flight per publisher) and paced {} s ({}/s per publisher), each after {} s of warm-up; \
             idle memory with {} connections on a fresh broker and proxy.\n",
            self.rounds.len(), s["conn_secs"], s["conn_workers"], s["tput_secs"], s["pairs"], s["pairs"], self.window,
            s["paced_secs"], self.paced_rate, s["warmup_secs"], self.idle_conns
        );
        let names: Vec<&str> = self
            .paths
            .iter()
            .map(|p| match p {
                PathKind::Direct => "direct (mosquitto TLS)",
                PathKind::Haproxy => "HAProxy",
                PathKind::MqttLb => "mqtt-lb",
                PathKind::MqttLbBase => "mqtt-lb-base (--compare)",
            })
            .collect();
        let base = self.paths.contains(&PathKind::MqttLbBase);
        let _ = writeln!(
            md,
            "| metric | {} | mqtt-lb / HAProxy | mqtt-lb / direct |{}",
            names.join(" | "),
            if base { " mqtt-lb / base |" } else { "" }
        );
        let _ = writeln!(md, "|---|{}---|---|{}", "---|".repeat(names.len()), if base { "---|" } else { "" });
        for (metric, label) in rows(self) {
            let Some(per) = summary.get(&metric) else { continue };
            let mut cells = Vec::new();
            for p in &self.paths {
                cells.push(match per.get(p.name()) {
                    Some(x) => {
                        let (a, lo, hi) = (
                            x["median"].as_f64().unwrap_or(0.0),
                            x["min"].as_f64().unwrap_or(0.0),
                            x["max"].as_f64().unwrap_or(0.0),
                        );
                        if x["n"].as_u64() == Some(1) || metric == "errors" && lo == hi {
                            fmt_num(a, &metric)
                        } else {
                            format!("{} [{} – {}]", fmt_num(a, &metric), fmt_num(lo, &metric), fmt_num(hi, &metric))
                        }
                    }
                    None => "-".into(),
                });
            }
            let r = &ratios[&metric];
            let _ = write!(
                md,
                "| {label} | {} | {} | {} |",
                cells.join(" | "),
                fmt_ratio(r["mqtt_lb_over_haproxy"].as_f64()),
                fmt_ratio(r["mqtt_lb_over_direct"].as_f64())
            );
            if base {
                let _ = write!(md, " {} |", fmt_ratio(r["mqtt_lb_over_base"].as_f64()));
            }
            md.push('\n');
        }
        let _ = writeln!(md, "\nFor the direct path, the idle-memory row is mosquitto's own RSS per TLS connection (a reference, not a proxy).\n");
        let _ = writeln!(md, "## Targets\n\n| target | mqtt-lb | met |\n|---|---|---|");
        for t in targets {
            let met = match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {met} |",
                t["target"].as_str().unwrap_or(""),
                t["shown"].as_str().unwrap_or("")
            );
        }
        let cores = m["nproc"].as_f64().unwrap_or(2.0);
        let _ = writeln!(
            md,
            "\n## CPU per process during each load\n\nPercent of one core (this machine has {cores}: 100% = one core), median over \
             rounds. \"busiest thread\" shows whether one thread of the proxy held a whole core (mosquitto and the generator's \
             I/O are single-threaded or nearly). \"machine\" is all CPU used on the machine ({}% = every core busy); \"other\" is \
             the part used by processes outside the benchmark (noise: other work on a shared machine). \"saturated\" names \
             what ran at >= 90% of a core, and \"all cores\" when the machine was >= 95% busy.\n",
            cores * 100.0
        );
        let _ = writeln!(
            md,
            "| load | path | generator | mosquitto | proxy | proxy busiest thread | machine | other | saturated |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        if let Some(phases) = cpu.as_object() {
            for phase in [
                "conn",
                "resume",
                "plain",
                "plain_tcpka",
                "tput64",
                "paced64",
                "tput1k",
                "paced1k",
                "storm_full",
                "storm_resumed",
            ] {
                let Some(per_path) = phases.get(phase).and_then(|p| p.as_object()) else { continue };
                for p in &self.paths {
                    let Some(c) = per_path.get(p.name()) else { continue };
                    let num = |k: &str| c.get(k).and_then(|x| x.as_f64());
                    let pct = |k: &str| num(k).map_or("-".to_owned(), |x| format!("{x:.0}%"));
                    let proxy = match p {
                        PathKind::Direct => ("-".to_owned(), "-".to_owned()),
                        _ => (pct("proxy"), pct("proxy busiest thread")),
                    };
                    let mut saturated = Vec::new();
                    if num("machine_busy_pct").is_some_and(|x| x >= cores * 95.0) {
                        saturated.push("all cores".to_owned());
                    }
                    for (k, label) in [("mosquitto", "mosquitto"), ("proxy busiest thread", "a proxy thread")] {
                        if num(k).is_some_and(|x| x >= 90.0) {
                            saturated.push(label.to_owned());
                        }
                    }
                    let _ = writeln!(
                        md,
                        "| {phase} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        p.name(),
                        pct("bench"),
                        pct("mosquitto"),
                        proxy.0,
                        proxy.1,
                        pct("machine_busy_pct"),
                        pct("other_pct"),
                        if saturated.is_empty() { "-".to_owned() } else { saturated.join(", ") }
                    );
                }
            }
        }
        md
    }
}

/// Rows of the UDP table: metric key and label.
fn udp_rows(r: &Results) -> Vec<(String, String)> {
    let n = r.udp_senders;
    let paced =
        format!("paced ({}×{}/s)", crate::udp::PACED_SENDERS, r.udp_paced_rate as usize / crate::udp::PACED_SENDERS);
    vec![
        ("udp.rate".to_owned(), format!("CoAP GET, {n} senders: requests answered/s")),
        ("udp.p50".to_owned(), format!("CoAP GET, {n} senders: round trip p50 (µs)")),
        ("udp.p99".to_owned(), format!("CoAP GET, {n} senders: round trip p99 (µs)")),
        ("udp.cpu_us".to_owned(), format!("CoAP GET, {n} senders: proxy CPU per request (µs)")),
        ("udp.syscalls".to_owned(), format!("CoAP GET, {n} senders: proxy system calls per request")),
        ("udp_paced.rate".to_owned(), format!("CoAP GET, {paced}: requests answered/s")),
        ("udp_paced.p50".to_owned(), format!("CoAP GET, {paced}: round trip p50 (µs)")),
        ("udp_paced.p99".to_owned(), format!("CoAP GET, {paced}: round trip p99 (µs)")),
        ("udp.errors".to_owned(), "errors (lost or wrong answers, both loads, per round)".to_owned()),
    ]
}

fn fmt_udp(x: f64, metric: &str) -> String {
    if metric.ends_with(".cpu_us") {
        format!("{x:.1}")
    } else if metric.ends_with(".syscalls") {
        format!("{x:.2}")
    } else {
        fmt_num(x, if metric.ends_with(".rate") { metric } else { "errors" })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |x| format!("{x:.2}x"))
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3}"))
}
