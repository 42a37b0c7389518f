//! mqtt-lb-bench: puts mqtt-lb beside HAProxy and beside a direct broker connection, on loopback, in one run.
//!
//! It starts its own peers (Debian's mosquitto, HAProxy with a config equivalent to the WIS2 reference, the mqtt-lb
//! release binary), generates the TLS certificate they share, drives MQTT load over TLS through each path
//! (interleaved, the order rotated every round), samples CPU and memory from /proc, and writes `results.json` and
//! `RESULTS.md`. See `bench/README.md`.
//!
//! # Layout
//! - [`tls`]: the PKI and the generator's TLS client;
//! - [`mqtt`]: the hand-written packets;
//! - [`procs`]: the child processes, their configurations, /proc sampling;
//! - [`load`]: the three loads (connection rate, throughput/latency, idle connections);
//! - [`storm`]: the failover storm (every client cut at once, then all reconnecting at once);
//! - [`handshake`]: mqtt-lb built on ring beside aws-lc-rs, proxy CPU per full and resumed handshake;
//! - [`kill`]: a broker killed under load and brought back, the new-connection rate counted at each broker;
//! - [`udp`]: the UDP section, CoAP requests to libcoap's coap-server directly, through mqtt-lb's `protocol: coap`
//!   listener and (when installed) through nginx's UDP stream proxy;
//! - [`stats`] and [`report`]: percentiles, median/min/max, ratios, the JSON and the markdown.

mod handshake;
mod kill;
mod load;
mod mqtt;
mod procs;
mod report;
mod stats;
mod storm;
mod tls;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::Target;
use crate::procs::{Broker, Probe, Proc};
use crate::udp::UdpPath;

const USAGE: &str = "\
usage: mqtt-lb-bench [options]

Benchmarks mqtt-lb against HAProxy and a direct (TLS) broker connection on loopback; starts and stops its own
mosquitto, haproxy and mqtt-lb. Writes results.json and RESULTS.md into --out.

  --quick                 short run (1 round, 1 s loads, 1,000 idle connections); writes into bench/target/quick
  --rounds N              rounds, paths interleaved and rotated each round (default 3)
  --conn-secs S           connection-rate load per path and round (default 5)
  --tput-secs S           saturated throughput load per payload, path and round (default 4)
  --paced-secs S          paced latency load per payload, path and round (default 3)
  --paced-rate N          paced: messages/s per publisher (default 1000)
  --warmup-secs S         unmeasured start of every throughput load (default 0.5)
  --workers N             connection-rate workers (default 50)
  --pairs N               publisher/subscriber pairs (default 4)
  --window N              saturated: messages in flight per publisher (default 1000)
  --idle-conns N          idle TLS connections per proxy (default: 9,000 or what the open-files limit allows)
  --paths LIST            comma-separated: direct,haproxy,mqtt-lb (default all)
  --phases LIST           comma-separated: conn,resume,plain,plain_tcpka,tput,idle,wssidle,storm,kill,handshake,udp
                          (default all but wssidle, kill and handshake); handshake: ring beside aws-lc-rs; wssidle: idle memory of WSS beside MQTTS clients in mqtt-lb; kill: one
                          of three brokers killed and brought back (rates counted at the brokers); resume: the
                          connection rate with clients that resume their TLS session; plain: the same cycle
                          without TLS (plain listeners); plain_tcpka: plain again with TCP keepalive on both
                          sockets in both proxies (HAProxy's clitcpka/srvtcpka at mqtt-lb's default 2m/30s/4;
                          mqtt-lb as in plain; not direct); storm: N clients cut at once and reconnecting at once,
                          with and without resumption
  --providers LIST        handshake: NAME=PATH of mqtt-lb builds, one per crypto provider (default:
                          ring=target/release/mqtt-lb,aws-lc-rs=target/aws-lc/release/mqtt-lb)
  --kill-rate N           kill: mqtt-lb's per-server max_connection_rate in its capped variant (default 400)
  --storm-clients N       storm and kill: clients (default: as many as the open-files limit of every process allows;
                          quick: 1,000)
  --only LIST             run only these phases (as --phases), writing into bench/target/only unless --out
                          says otherwise: `--only udp` runs the UDP section alone
  --udp-secs S            UDP section: each load per path and round (default 4; quick: 1)
  --udp-senders N         UDP section, saturated: senders, one request in flight each (default 32)
  --udp-paced-rate N      UDP section, paced: requests/s over 4 senders (default 1000)
  --udp-paths LIST        comma-separated: direct,mqtt-lb,nginx (default: all; nginx only when installed with
                          its stream module, Debian's libnginx-mod-stream)
  --mqtt-lb PATH          mqtt-lb binary (default: target/release/mqtt-lb of this repository)
  --compare PATH          another mqtt-lb binary, measured as a fourth path, mqtt-lb-base (before/after)
  --no-logs               no per-connection log lines (HAProxy without `log`, mqtt-lb at RUST_LOG=warn); default:
                          both log one line per connection into a file, as the reference config does
  --threads N             threads of each proxy: HAProxy `nbthread`, mqtt-lb `workers`, nginx `worker_processes`
                          (default 1: on 2 cores the broker and the generator need the other)
  --out DIR               where results.json and RESULTS.md go (default: bench/)
  --full-verify           verify the server certificate chain and handshake signature in the generator
  --keep                  keep the work directory (configs, logs) and print its path
  --perf                  also count the proxy's system calls and context switches (perf stat) during each load
  --quiet-wait S          before each load, wait while other work keeps the machine busy; at most S seconds in
                          all (default 120; quick: 10)
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathKind {
    Direct,
    Haproxy,
    MqttLb,
    /// A second mqtt-lb binary (`--compare`), for before/after figures in one run.
    MqttLbBase,
}

impl PathKind {
    pub const ALL: [PathKind; 3] = [PathKind::Direct, PathKind::Haproxy, PathKind::MqttLb];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Haproxy => "haproxy",
            PathKind::MqttLb => "mqtt-lb",
            PathKind::MqttLbBase => "mqtt-lb-base",
        }
    }

    fn parse(s: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|p| p.name() == s)
    }
}

pub struct Opts {
    pub quick: bool,
    pub rounds: usize,
    pub conn_secs: f64,
    pub tput_secs: f64,
    pub paced_secs: f64,
    pub paced_rate: u32,
    pub warmup_secs: f64,
    pub workers: usize,
    pub pairs: usize,
    pub window: u64,
    pub idle_conns: Option<usize>,
    pub storm_clients: Option<usize>,
    pub kill_rate: u32,
    pub providers: Option<String>,
    pub paths: Vec<PathKind>,
    pub phases: Vec<String>,
    pub mqtt_lb: PathBuf,
    pub compare: Option<PathBuf>,
    pub logs: bool,
    /// Threads of each proxy: HAProxy's `nbthread`, mqtt-lb's `workers`, nginx's `worker_processes`.
    pub threads: usize,
    pub out: PathBuf,
    pub full_verify: bool,
    pub keep: bool,
    pub quiet_wait: f64,
    pub perf: bool,
    pub udp_secs: f64,
    pub udp_senders: usize,
    pub udp_paced_rate: u32,
    /// Given with --udp-paths; otherwise every path, nginx when installed.
    pub udp_paths: Option<Vec<UdpPath>>,
    pub args: Vec<String>,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        quick: false,
        rounds: 3,
        conn_secs: 5.0,
        tput_secs: 4.0,
        paced_secs: 3.0,
        paced_rate: 1000,
        warmup_secs: 0.5,
        workers: 50,
        pairs: 4,
        window: 1000,
        idle_conns: None,
        storm_clients: None,
        kill_rate: 400,
        providers: None,
        paths: PathKind::ALL.to_vec(),
        phases: vec![
            "conn".into(),
            "resume".into(),
            "plain".into(),
            "plain_tcpka".into(),
            "tput".into(),
            "idle".into(),
            "storm".into(),
            "udp".into(),
        ],
        mqtt_lb: manifest_dir().join("../target/release/mqtt-lb"),
        compare: None,
        logs: true,
        threads: 1,
        out: manifest_dir(),
        full_verify: false,
        keep: false,
        quiet_wait: 120.0,
        perf: false,
        udp_secs: 4.0,
        udp_senders: 32,
        udp_paced_rate: 1000,
        udp_paths: None,
        args: args.clone(),
    };
    if args.iter().any(|a| a == "--quick") {
        o.quick = true;
        o.rounds = 1;
        o.conn_secs = 1.0;
        o.tput_secs = 1.0;
        o.paced_secs = 1.0;
        o.warmup_secs = 0.25;
        o.idle_conns = Some(1000);
        o.storm_clients = Some(1000);
        o.quiet_wait = 10.0;
        o.udp_secs = 1.0;
        o.out = manifest_dir().join("target/quick");
    }
    let mut out_given = false;
    let parse_phases = |v: String| -> Result<Vec<String>, String> {
        let phases: Vec<String> = v.split(',').map(|p| p.trim().to_owned()).collect();
        match phases.iter().find(|p| {
            !["conn", "resume", "plain", "plain_tcpka", "tput", "idle", "wssidle", "storm", "kill", "handshake", "udp"]
                .contains(&p.as_str())
        }) {
            Some(bad) => Err(format!("unknown phase {bad:?}")),
            None => Ok(phases),
        }
    };
    let mut only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{a}: not a number: {v}"));
        match a.as_str() {
            "--quick" => {}
            "--rounds" => o.rounds = num(val()?)?.max(1.0) as usize,
            "--conn-secs" => o.conn_secs = num(val()?)?,
            "--tput-secs" => o.tput_secs = num(val()?)?,
            "--paced-secs" => o.paced_secs = num(val()?)?,
            "--paced-rate" => o.paced_rate = num(val()?)?.max(1.0) as u32,
            "--warmup-secs" => o.warmup_secs = num(val()?)?,
            "--workers" => o.workers = num(val()?)?.max(1.0) as usize,
            "--pairs" => o.pairs = num(val()?)?.max(1.0) as usize,
            "--window" => o.window = num(val()?)?.max(1.0) as u64,
            "--idle-conns" => o.idle_conns = Some(num(val()?)?.max(1.0) as usize),
            "--providers" => o.providers = Some(val()?),
            "--kill-rate" => o.kill_rate = num(val()?)?.max(1.0) as u32,
            "--storm-clients" => o.storm_clients = Some(num(val()?)?.max(1.0) as usize),
            "--paths" => {
                o.paths = val()?
                    .split(',')
                    .map(|p| PathKind::parse(p.trim()).ok_or_else(|| format!("unknown path {p:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--phases" => o.phases = parse_phases(val()?)?,
            "--only" => {
                o.phases = parse_phases(val()?)?;
                only = true;
            }
            "--udp-secs" => o.udp_secs = num(val()?)?,
            "--udp-senders" => o.udp_senders = num(val()?)?.max(1.0) as usize,
            "--udp-paced-rate" => o.udp_paced_rate = num(val()?)?.max(1.0) as u32,
            "--udp-paths" => {
                let all = [UdpPath::Direct, UdpPath::MqttLb, UdpPath::Nginx];
                o.udp_paths = Some(
                    val()?
                        .split(',')
                        .map(|p| {
                            all.into_iter()
                                .find(|u| u.name() == p.trim())
                                .ok_or_else(|| format!("unknown UDP path {p:?}"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            "--mqtt-lb" => o.mqtt_lb = PathBuf::from(val()?),
            "--compare" => o.compare = Some(PathBuf::from(val()?)),
            "--no-logs" => o.logs = false,
            "--threads" => o.threads = (num(val()?)?.max(1.0) as usize).min(64),
            "--out" => {
                o.out = PathBuf::from(val()?);
                out_given = true;
            }
            "--full-verify" => o.full_verify = true,
            "--keep" => o.keep = true,
            "--perf" => o.perf = true,
            "--quiet-wait" => o.quiet_wait = num(val()?)?.max(0.0),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.compare.is_some() && !o.paths.contains(&PathKind::MqttLbBase) {
        o.paths.push(PathKind::MqttLbBase);
    }
    // A partial run never replaces the committed results by default.
    if only && !out_given && !o.quick {
        o.out = manifest_dir().join("target/only");
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprint!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let (soft, hard) = procs::raise_nofile();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The future runs on this (main) thread: children are spawned from it, so PR_SET_PDEATHSIG ties them to the
    // life of the process, and their guards are dropped here on every exit path, Ctrl-C included.
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&opts, soft, hard) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("finished with {errors} errors (see results.json)");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A path under test: where clients connect, and which processes serve it.
struct Peer {
    kind: PathKind,
    target: Arc<Target>,
    /// The same address, for clients that resume their TLS sessions (one store shared by every worker).
    resume: Arc<Target>,
    /// Its listener without TLS (the broker's plain listener for direct): the plain connection cycle.
    plain: Arc<Target>,
    /// The plain listener with TCP keepalive on both sockets: HAProxy's `plain_tcpka` frontend, mqtt-lb's plain
    /// listener (keepalive is its default); None for direct.
    plain_tcpka: Option<Arc<Target>>,
    /// The proxy's process (none for the direct path).
    proxy: Option<Proc>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Work directory: configs, certificates, logs. Removed at the end unless `--keep`.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            log(format!("work directory kept: {}", self.path.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What every path and load shares.
struct Setup {
    dir: PathBuf,
    pki: tls::Pki,
    client_tls: Arc<rustls::ClientConfig>,
    full_verify: bool,
    mqtt_lb: PathBuf,
    compare: Option<PathBuf>,
    haproxy_maxconn: u64,
    logs: bool,
    threads: usize,
    idle_conns: usize,
    quick: bool,
    perf: bool,
}

async fn run(opts: &Opts, soft: u64, hard: u64) -> Result<u64, String> {
    let started = Instant::now();
    let canonical = |p: &Path| {
        p.canonicalize().map_err(|e| format!("{}: {e} (build it with `cargo build --release`)", p.display()))
    };
    let mqtt_lb = canonical(&opts.mqtt_lb)?;
    let compare = opts.compare.as_deref().map(canonical).transpose()?;
    let work =
        WorkDir { path: std::env::temp_dir().join(format!("mqtt-lb-bench-{}", std::process::id())), keep: opts.keep };
    std::fs::create_dir_all(&work.path).map_err(|e| format!("{}: {e}", work.path.display()))?;

    // Each proxied idle connection holds two descriptors in the proxy; keep some for everything else.
    let idle_max = usize::try_from(hard.saturating_sub(1000) / 2).unwrap_or(9000);
    let idle_conns = opts.idle_conns.unwrap_or(9000).min(idle_max);
    log(format!("open files: soft {soft}, hard {hard}; idle connections: {idle_conns}"));
    let pki = tls::Pki::generate(&work.path)?;
    let client_tls = pki.client_config(opts.full_verify, false)?;
    let setup = Setup {
        dir: work.path.clone(),
        pki,
        client_tls,
        full_verify: opts.full_verify,
        mqtt_lb,
        compare,
        haproxy_maxconn: hard.saturating_sub(200) / 2,
        logs: opts.logs,
        threads: opts.threads,
        idle_conns,
        quick: opts.quick,
        perf: opts.perf,
    };
    let epoch = Instant::now();
    let mut meta =
        report::Meta::gather(opts, &setup.mqtt_lb, setup.compare.as_deref(), idle_conns, setup.haproxy_maxconn);

    let mut quiet_budget = Duration::from_secs_f64(opts.quiet_wait);
    let needs_main = opts
        .phases
        .iter()
        .any(|p| ["conn", "resume", "plain", "plain_tcpka", "tput", "storm", "handshake"].contains(&p.as_str()));
    let mut results = report::Results::new(opts, idle_conns);
    let mut broker = None;
    let mut peers: Vec<Peer> = Vec::new();
    if needs_main {
        let b = Broker::start(&setup.dir, "mosquitto", &setup.pki.cert, &setup.pki.key).await?;
        for &kind in &opts.paths {
            let (proxy, addr, plain_addr, tcpka_addr) = start_path(&setup, kind, &b, "main").await?;
            let target = Arc::new(Target::new(addr, Arc::clone(&setup.client_tls), &short(kind)));
            let plain =
                Arc::new(Target::plain(plain_addr, Arc::clone(&setup.client_tls), &format!("{}p", short(kind))));
            let plain_tcpka = tcpka_addr
                .map(|a| Arc::new(Target::plain(a, Arc::clone(&setup.client_tls), &format!("{}k", short(kind)))));
            let desc = target.describe().await.map_err(|e| format!("{}: {e}", kind.name()))?;
            log(format!("{} on {addr}: {desc}", kind.name()));
            meta.tls.insert(kind.name().to_owned(), json!(desc));
            // A session store per path: a ticket from one server is no use on another.
            let resuming = setup.pki.client_config(setup.full_verify, true)?;
            let resume = Arc::new(Target::new(addr, resuming, &format!("{}r", short(kind))));
            peers.push(Peer { kind, target, resume, plain, plain_tcpka, proxy });
        }
        if opts.phases.iter().any(|p| p == "storm") {
            let n = storm_clients(opts, soft, &b, &peers);
            results.storm_clients = n;
            meta.settings["storm_clients"] = json!(n);
        }
        broker = Some(b);
    }
    let udp_peers = if opts.phases.iter().any(|p| p == "udp") { Some(start_udp(&setup, opts).await?) } else { None };
    if let Some(u) = &udp_peers {
        results.udp_paths = u.peers.iter().map(|p| p.path).collect();
        meta.versions["libcoap"] = json!(udp::libcoap_version());
        if u.peers.iter().any(|p| p.path == UdpPath::Nginx) {
            meta.versions["nginx"] = json!(report::first_line(&udp::nginx_binary().to_string_lossy(), &["-v"]));
        }
    }

    let (mut wss_rows, mut kill_rows, mut hs_rows) = (Vec::new(), Vec::new(), Vec::new());
    let providers = handshake::parse(&opts.providers.clone().unwrap_or_else(|| {
        let root = manifest_dir().join("..");
        format!(
            "ring={},aws-lc-rs={}",
            root.join("target/release/mqtt-lb").display(),
            root.join("target/aws-lc/release/mqtt-lb").display()
        )
    }))?;
    let mut hs_pkis = Vec::new();
    if opts.phases.iter().any(|p| p == "handshake") {
        for key in [tls::ServerKey::EcdsaP256, tls::ServerKey::Rsa2048] {
            let dir = work.path.join(if key == tls::ServerKey::Rsa2048 { "rsa" } else { "ecdsa" });
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            hs_pkis.push((key, tls::Pki::generate_with(&dir, key)?));
        }
    }
    pause(&mut quiet_budget).await;
    for round in 0..opts.rounds {
        let order: Vec<usize> = (0..opts.paths.len()).map(|i| (i + round) % opts.paths.len()).collect();
        let mut names: Vec<&str> = order.iter().filter_map(|&i| opts.paths.get(i)).map(|p| p.name()).collect();
        if !opts.phases.iter().any(|p| p != "udp") {
            names.clear();
        }
        if let Some(u) = &udp_peers {
            let n = u.peers.len();
            names.extend((0..n).filter_map(|k| u.peers.get((k + round) % n)).map(|p| match p.path {
                UdpPath::Direct => "udp direct",
                UdpPath::MqttLb => "udp mqtt-lb",
                UdpPath::Nginx => "udp nginx",
            }));
        }
        log(format!("round {}/{}: order {}", round + 1, opts.rounds, names.join(", ")));
        let mut r = report::Round::new(round + 1, &names);
        if let Some(b) = &broker {
            let conn_phases = ["conn", "resume", "plain", "plain_tcpka"];
            for phase in conn_phases.into_iter().filter(|p| opts.phases.iter().any(|o| o == p)) {
                for &i in &order {
                    let Some(peer) = peers.get(i) else { continue };
                    let target = match phase {
                        "resume" => &peer.resume,
                        "plain" => &peer.plain,
                        "plain_tcpka" => match &peer.plain_tcpka {
                            Some(t) => t,
                            None => continue,
                        },
                        _ => &peer.target,
                    };
                    let run = probe(&setup, b, peer.proxy.as_ref()).start();
                    let c = load::conn_rate(Arc::clone(target), opts.workers, Duration::from_secs_f64(opts.conn_secs))
                        .await;
                    let cpu = run.finish();
                    log(format!(
                        "  {phase:6} {:12} {:8.0} conn/s  resumed {:.1}%  errors {:?}",
                        peer.kind.name(),
                        c.completed as f64 / c.secs,
                        c.resumed as f64 * 100.0 / c.completed.max(1) as f64,
                        c.errors
                    ));
                    r.conn(phase, peer.kind, c, cpu);
                    pause(&mut quiet_budget).await;
                }
            }
            if opts.phases.iter().any(|p| p == "storm") {
                for &i in &order {
                    let Some(peer) = peers.get(i) else { continue };
                    for resume in [false, true] {
                        let phase = if resume { "storm_resumed" } else { "storm_full" };
                        // With tickets: each client a store of its own, fresh, as each device keeps its own.
                        let n = results.storm_clients;
                        let (clients, tag) = if resume {
                            let own = (0..n).map(|_| tls::with_own_sessions(&setup.client_tls)).collect();
                            (own, format!("{}R{round}", short(peer.kind)))
                        } else {
                            (vec![Arc::clone(&setup.client_tls); n], format!("{}F{round}", short(peer.kind)))
                        };
                        let target = Arc::new(Target::new(peer.target.addr, Arc::clone(&setup.client_tls), &tag));
                        let tls_end = peer.proxy.as_ref().map_or(b.proc.pid, |p| p.pid);
                        let probe = probe(&setup, b, peer.proxy.as_ref());
                        let s = storm::storm(target, clients, tls_end, &probe).await;
                        log(format!(
                            "  {phase:13} {:12} {} of {} clients reconnected in {:.3} s, resumed {}, errors {:?}",
                            peer.kind.name(),
                            s.reconnected,
                            s.clients,
                            s.secs,
                            s.resumed,
                            s.errors
                        ));
                        r.storm(phase, peer.kind, s);
                        pause(&mut quiet_budget).await;
                    }
                }
            }
            if opts.phases.iter().any(|p| p == "tput") {
                for payload in [64usize, 1024] {
                    for &i in &order {
                        let Some(peer) = peers.get(i) else { continue };
                        for pace in [None, Some(opts.paced_rate)] {
                            let measure = if pace.is_some() { opts.paced_secs } else { opts.tput_secs };
                            let params = load::TputParams {
                                pairs: opts.pairs,
                                payload,
                                window: opts.window,
                                pace,
                                warmup: Duration::from_secs_f64(opts.warmup_secs),
                                measure: Duration::from_secs_f64(measure),
                            };
                            let probe = probe(&setup, b, peer.proxy.as_ref());
                            let mut t = load::throughput(Arc::clone(&peer.target), &params, epoch, &probe)
                                .await
                                .map_err(|e| format!("{}: {e}", peer.kind.name()))?;
                            let cpu = std::mem::take(&mut t.cpu);
                            log(format!(
                                "  {} {:5} B {:12} {:9.0} msg/s  errors {:?}",
                                if pace.is_some() { "paced" } else { "tput " },
                                payload,
                                peer.kind.name(),
                                t.delivered as f64 / t.secs,
                                t.errors
                            ));
                            r.tput(peer.kind, payload, pace.is_some(), t, cpu);
                            pause(&mut quiet_budget).await;
                        }
                    }
                }
            }
        }
        if opts.phases.iter().any(|p| p == "idle") {
            for &i in &order {
                let Some(&kind) = opts.paths.get(i) else { continue };
                pause(&mut quiet_budget).await;
                let v = idle_memory(&setup, kind, round).await?;
                log(format!(
                    "  idle  {:12} {} KiB per connection ({} connections) errors {}",
                    kind.name(),
                    v["kib_per_conn"],
                    v["connections"],
                    v["errors"]
                ));
                r.idle(kind, v);
            }
        }
        if let (true, Some(b)) = (opts.phases.iter().any(|p| p == "handshake"), &broker) {
            for (key, pki) in &hs_pkis {
                for k in 0..providers.len() {
                    let Some(provider) = providers.get((k + round) % providers.len()) else { continue };
                    pause(&mut quiet_budget).await;
                    let v =
                        handshake::measure(&setup, b, provider, pki, *key, opts.conn_secs, opts.workers, round).await?;
                    log(format!(
                        "  handshake {:10} {:12} proxy µs per connection: full {} resumed {} plain {}",
                        provider.name,
                        key.name(),
                        v["loads"]["full"]["proxy_cpu_us"],
                        v["loads"]["resumed"]["proxy_cpu_us"],
                        v["loads"]["plain"]["proxy_cpu_us"]
                    ));
                    hs_rows.push(v);
                }
            }
        }
        if opts.phases.iter().any(|p| p == "wssidle") {
            for wss in [round % 2 == 1, round % 2 == 0] {
                pause(&mut quiet_budget).await;
                let mut v = wss_idle_memory(&setup, wss, round).await?;
                log(format!(
                    "  idle  mqtt-lb {} {} KiB per connection ({} connections) errors {}",
                    if wss { "WSS  " } else { "MQTTS" },
                    v["kib_per_conn"],
                    v["connections"],
                    v["errors"]
                ));
                v["wss"] = json!(wss);
                v["round"] = json!(round + 1);
                wss_rows.push(v);
            }
        }
        if opts.phases.iter().any(|p| p == "kill") {
            let n = kill_clients(opts, soft);
            for k in 0..kill::Variant::ALL.len() {
                let Some(&variant) = kill::Variant::ALL.get((k + round) % kill::Variant::ALL.len()) else { continue };
                pause(&mut quiet_budget).await;
                let mut v = kill::run(&setup, variant, n, opts.kill_rate, round).await?;
                log(format!(
                    "  kill   {:28} cut {}, all back in {} s; return in {} s; peak/s at brokers {} / {}; refusals {} / {}{}",
                    variant.name(),
                    v["cut"],
                    v["storm"]["secs"],
                    v["return"]["secs"],
                    v["storm"]["peak_per_second"],
                    v["return"]["peak_per_second"],
                    v["storm"]["refusals"],
                    v["return"]["refusals"],
                    match v["rate_respected"].as_bool() {
                        Some(true) => format!("; PASS: no broker above {}/s", opts.kill_rate),
                        Some(false) => format!("; FAIL: a broker saw more than {}/s", opts.kill_rate),
                        None => String::new(),
                    }
                ));
                v["round"] = json!(round + 1);
                kill_rows.push(v);
            }
        }
        if let Some(u) = &udp_peers {
            let n = u.peers.len();
            for k in 0..n {
                let Some(peer) = u.peers.get((k + round) % n) else { continue };
                for pace in [None, Some(opts.udp_paced_rate)] {
                    let params = udp::UdpParams {
                        senders: if pace.is_some() { udp::PACED_SENDERS } else { opts.udp_senders },
                        pace,
                        warmup: Duration::from_secs_f64(opts.warmup_secs),
                        measure: Duration::from_secs_f64(opts.udp_secs),
                    };
                    let mut procs =
                        vec![("bench".to_owned(), std::process::id()), ("coap-server".to_owned(), u.server.proc.pid)];
                    if let Some(p) = &peer.proxy {
                        procs.push(("proxy".to_owned(), p.pid));
                    }
                    let perf = if setup.perf { peer.proxy.as_ref().map(|p| (p.pid, setup.dir.clone())) } else { None };
                    let (load, cpu) = udp::requests(peer.addr, &params, &Probe { procs, perf })
                        .await
                        .map_err(|e| format!("{}: {e}", peer.path.name()))?;
                    log(format!(
                        "  {} {:12} {:9.0} req/s  errors {:?}",
                        if pace.is_some() { "udp paced" } else { "udp      " },
                        peer.path.name(),
                        load.answered as f64 / load.secs,
                        load.errors
                    ));
                    r.udp(peer.path, pace.is_some(), load, cpu);
                    pause(&mut quiet_budget).await;
                }
            }
        }
        results.rounds.push(r);
    }
    drop(peers);
    drop(broker);
    drop(udp_peers);

    meta.total_secs = started.elapsed().as_secs_f64();
    meta.quiet_waited_secs = (opts.quiet_wait - quiet_budget.as_secs_f64()).max(0.0);
    let (mut json, mut markdown, ratios, errors) = results.finish(&meta);
    if !wss_rows.is_empty() {
        markdown.push_str(&wss_idle_markdown(&wss_rows, setup.idle_conns));
        json["wss_idle"] = json!(wss_rows);
    }
    if !hs_rows.is_empty() {
        markdown.push_str(&handshake::markdown(&hs_rows, &providers, opts.conn_secs, opts.workers));
        json["handshake"] = json!(hs_rows);
    }
    if !kill_rows.is_empty() {
        markdown.push_str(&kill::markdown(&kill_rows, opts.kill_rate));
        let failed = kill_rows.iter().any(|r| r["rate_respected"] == json!(false));
        json["kill"] = json!({ "rate": opts.kill_rate, "runs": kill_rows, "rate_respected": !failed });
        println!(
            "kill: every broker at most {}/s with max_connection_rate: {}",
            opts.kill_rate,
            if failed { "FAIL" } else { "PASS" }
        );
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let json_path = opts.out.join("results.json");
    let md_path = opts.out.join("RESULTS.md");
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    std::fs::write(&md_path, markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    println!("{ratios}");
    log(format!("wrote {} and {} in {:.0} s", json_path.display(), md_path.display(), meta.total_secs));
    Ok(errors)
}

/// Clients of the storm: `--storm-clients` if given, at most what every process's open-files limit allows (the
/// generator one descriptor per client, a proxy two, mosquitto one); logged with the reason.
fn storm_clients(opts: &Opts, soft: u64, broker: &Broker, peers: &[Peer]) -> usize {
    let mut procs = vec![("generator", std::process::id(), 1), ("mosquitto", broker.proc.pid, 1)];
    for p in peers {
        if let Some(proc) = &p.proxy {
            procs.push((p.kind.name(), proc.pid, 2));
        }
    }
    let (allowed, why) = storm::clients_allowed(&procs);
    let n = opts.storm_clients.map_or(allowed, |n| n.min(allowed));
    log(format!("storm: {n} clients (open files: generator soft limit {soft}; {why})"));
    n
}

/// Clients of the kill storm: as many as this process's open-files limit allows (each costs it a client socket and
/// the two of its broker's front), `--storm-clients` lowering it.
fn kill_clients(opts: &Opts, soft: u64) -> usize {
    let limit = storm::nofile_limit(std::process::id()).unwrap_or(soft);
    let allowed = usize::try_from(limit.saturating_sub(storm::FD_MARGIN) / kill::FDS_PER_CLIENT).unwrap_or(1000);
    opts.storm_clients.map_or(allowed, |n| n.min(allowed))
}

/// The WSS idle row beside the MQTTS one: KiB per idle connection of mqtt-lb, median [min – max] over rounds.
fn wss_idle_markdown(rows: &[Value], conns: usize) -> String {
    let pick = |wss: bool| -> Vec<f64> {
        rows.iter().filter(|r| r["wss"] == json!(wss)).filter_map(|r| r["kib_per_conn"].as_f64()).collect()
    };
    let cell = |v: &[f64]| match stats::summarize(v) {
        Some(s) => format!(
            "{:.1} [{:.1} – {:.1}]",
            s["median"].as_f64().unwrap_or(0.0),
            s["min"].as_f64().unwrap_or(0.0),
            s["max"].as_f64().unwrap_or(0.0)
        ),
        None => "-".into(),
    };
    let (wss, mqtts) = (pick(true), pick(false));
    let med = |v: &[f64]| stats::summarize(v).and_then(|s| s["median"].as_f64());
    let ratio = match (med(&wss), med(&mqtts)) {
        (Some(w), Some(m)) if m > 0.0 => w / m,
        _ => f64::NAN,
    };
    let errors: u64 = rows.iter().filter_map(|r| r["errors"].as_u64()).sum();
    format!(
        "\n## Idle WSS connections (phase `wssidle`)\n\nmqtt-lb's RSS per idle connection: {conns} MQTT-over-WebSocket-over-TLS \
         clients (`/mqtt`, subprotocol `mqtt`, CONNECT/CONNACK in one frame each, keep-alive 300 s) beside {conns} \
         MQTT-over-TLS clients, each on a fresh mqtt-lb and broker (one listener config with both), VmRSS after - \
         before / connections; the two interleaved, order alternating; median [min – max] of {} rounds. Target: WSS at \
         most 1.25x MQTTS.\n\n| metric | MQTTS | WSS | WSS / MQTTS | target met |\n|---|---|---|---|---|\n\
         | mqtt-lb RSS per idle connection (KiB) | {} | {} | {ratio:.2}x | {} |\n\
         | errors (all rounds) | {errors} | | | |\n",
        wss.len().max(mqtts.len()),
        cell(&mqtts),
        cell(&wss),
        if ratio <= 1.25 { "yes" } else { "**no**" },
    )
}

fn short(kind: PathKind) -> String {
    match kind {
        PathKind::Direct => "d".into(),
        PathKind::Haproxy => "h".into(),
        PathKind::MqttLb => "m".into(),
        PathKind::MqttLbBase => "n".into(),
    }
}

/// What [`start_path`] returns: the proxy (none for direct), the address TLS clients use, the one plain MQTT
/// clients use and the plain one with TCP keepalive on both sockets (none for direct).
type Started = (Option<Proc>, std::net::SocketAddr, std::net::SocketAddr, Option<std::net::SocketAddr>);

/// Starts the proxy of a path (none for direct) in front of `broker`.
async fn start_path(setup: &Setup, kind: PathKind, broker: &Broker, tag: &str) -> Result<Started, String> {
    let (dir, pki) = (setup.dir.as_path(), &setup.pki);
    let (bin, name) = match (kind, &setup.compare) {
        (PathKind::Direct, _) => return Ok((None, broker.tls, broker.plain, None)),
        (PathKind::Haproxy, _) => {
            let (p, at) = procs::start_haproxy(
                dir,
                tag,
                &pki.combined,
                &[broker.plain],
                setup.haproxy_maxconn,
                setup.threads,
                setup.logs,
            )
            .await?;
            return Ok((Some(p), at.tls, at.plain, Some(at.plain_tcpka)));
        }
        (PathKind::MqttLb, _) => (setup.mqtt_lb.as_path(), "mqtt-lb"),
        (PathKind::MqttLbBase, Some(base)) => (base.as_path(), "mqtt-lb-base"),
        (PathKind::MqttLbBase, None) => return Err("path mqtt-lb-base needs --compare".into()),
    };
    let keys = kind == PathKind::MqttLb;
    let servers = [broker.plain];
    let (p, at) = procs::start_mqtt_lb(
        bin,
        name,
        dir,
        tag,
        pki,
        keys,
        &procs::LbBackend::one(&servers),
        setup.threads,
        setup.logs,
    )
    .await?;
    // TCP keepalive on both sockets is mqtt-lb's default: its plain listener is the like-for-like one too.
    Ok((Some(p), at.tls, at.plain, Some(at.plain)))
}

/// One path of the UDP section: where the senders send, and the proxy's process (none for direct).
struct UdpPeer {
    path: UdpPath,
    addr: std::net::SocketAddr,
    proxy: Option<Proc>,
}

/// The UDP section's coap-server and the paths in front of it.
struct UdpPeers {
    server: udp::CoapServer,
    peers: Vec<UdpPeer>,
}

/// Starts coap-server and the proxies of the UDP section's paths.
async fn start_udp(setup: &Setup, opts: &Opts) -> Result<UdpPeers, String> {
    let bin = udp::coap_server_binary();
    if !bin.exists() {
        return Err(format!("{} not found: install Debian's libcoap3-bin (bench/run.sh does)", bin.display()));
    }
    let server = udp::CoapServer::start(&setup.dir).await?;
    log(format!("coap-server on {} (UDP)", server.addr));
    let paths = match &opts.udp_paths {
        Some(p) => p.clone(),
        None if udp::nginx_available() => vec![UdpPath::Direct, UdpPath::MqttLb, UdpPath::Nginx],
        None => {
            log("nginx with its stream module is not installed: the UDP section has no nginx path");
            vec![UdpPath::Direct, UdpPath::MqttLb]
        }
    };
    let mut peers = Vec::new();
    for path in paths {
        let (proxy, addr) = match path {
            UdpPath::Direct => (None, server.addr),
            UdpPath::MqttLb => {
                let (p, a) =
                    udp::start_mqtt_lb(&setup.mqtt_lb, &setup.dir, server.addr, setup.threads, setup.logs).await?;
                (Some(p), a)
            }
            UdpPath::Nginx => {
                if !udp::nginx_available() {
                    return Err("UDP path nginx: install Debian's nginx and libnginx-mod-stream".into());
                }
                let (p, a) = udp::start_nginx(&setup.dir, server.addr, setup.threads).await?;
                (Some(p), a)
            }
        };
        log(format!("udp {} on {addr}", path.name()));
        peers.push(UdpPeer { path, addr, proxy });
    }
    Ok(UdpPeers { server, peers })
}

/// What to sample during a load: the generator, mosquitto, the proxy; with `--perf`, the proxy's system calls.
fn probe(setup: &Setup, broker: &Broker, proxy: Option<&Proc>) -> Probe {
    let mut procs = vec![("bench".to_owned(), std::process::id()), ("mosquitto".to_owned(), broker.proc.pid)];
    if let Some(p) = proxy {
        procs.push(("proxy".to_owned(), p.pid));
    }
    let perf = if setup.perf { proxy.map(|p| (p.pid, setup.dir.clone())) } else { None };
    Probe { procs, perf }
}

/// Between two loads: a breath, so that one's tail does not fall into the next one's figures; then, on a machine
/// shared with other work, a wait (bounded by what is left of the run's `budget`) until the machine is quiet: less
/// than a quarter of a core busy while our processes idle.
async fn pause(budget: &mut Duration) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut logged = false;
    while let Some(busy) = procs::machine_busy_pct(Duration::from_millis(250)).await {
        if busy < 25.0 || start.elapsed() >= *budget {
            break;
        }
        if !logged {
            log(format!(
                "  (machine busy {busy:.0}% of a core with other work: waiting up to {:.0} s)",
                budget.as_secs_f64()
            ));
            logged = true;
        }
    }
    *budget = budget.saturating_sub(start.elapsed());
}

/// RSS per idle TLS connection of one path's TLS end (the proxy; for direct, mosquitto itself), with a fresh broker
/// and a fresh proxy, so that no earlier load's memory is in the figure.
async fn idle_memory(setup: &Setup, kind: PathKind, round: usize) -> Result<Value, String> {
    let tag = format!("idle{}-{}", round + 1, kind.name());
    let broker = Broker::start(&setup.dir, &format!("mosquitto-{tag}"), &setup.pki.cert, &setup.pki.key).await?;
    let (proxy, addr, _, _) = start_path(setup, kind, &broker, &tag).await?;
    let pid = proxy.as_ref().map_or(broker.proc.pid, |p| p.pid);
    let target = Arc::new(Target::new(addr, Arc::clone(&setup.client_tls), &format!("{}i", short(kind))));
    Ok(measure_idle(setup, pid, &broker, target).await)
}

/// The WSS idle row: RSS per idle connection of a fresh mqtt-lb (and broker) holding idle MQTT-over-WebSocket-over-TLS
/// clients (`wss`) or, for the figure beside it, MQTT-over-TLS clients; the same count, the same process config.
async fn wss_idle_memory(setup: &Setup, wss: bool, round: usize) -> Result<Value, String> {
    let tag = format!("wssidle{}-{}", round + 1, if wss { "wss" } else { "mqtts" });
    let broker = Broker::start(&setup.dir, &format!("mosquitto-{tag}"), &setup.pki.cert, &setup.pki.key).await?;
    let servers = [broker.plain];
    let backend = procs::LbBackend::one(&servers);
    let (dir, pki) = (setup.dir.as_path(), &setup.pki);
    let (proxy, at) =
        procs::start_mqtt_lb(&setup.mqtt_lb, "mqtt-lb", dir, &tag, pki, true, &backend, setup.threads, setup.logs)
            .await?;
    let target = if wss {
        Target::wss(at.wss, Arc::clone(&setup.client_tls), "mw")
    } else {
        Target::new(at.tls, Arc::clone(&setup.client_tls), "mt")
    };
    Ok(measure_idle(setup, proxy.pid, &broker, Arc::new(target)).await)
}

/// After 50 warm-up connections, `setup.idle_conns` idle clients of `target`: the RSS of `pid` (the TLS end) and of
/// the broker per connection, from VmRSS before and after.
async fn measure_idle(setup: &Setup, pid: u32, broker: &Broker, target: Arc<Target>) -> Value {
    // Warm up: code paths, thread-local caches, the first allocations of each worker thread.
    let (warm, mut errors) = load::open_idle(Arc::clone(&target), 50, 10).await;
    for (k, v) in load::close_idle(warm, 10).await {
        *errors.entry(k).or_insert(0) += v;
    }
    let settle = Duration::from_millis(if setup.quick { 500 } else { 1500 });
    tokio::time::sleep(settle).await;
    let before = procs::rss_kib(pid).unwrap_or(0);
    let broker_before = procs::rss_kib(broker.proc.pid).unwrap_or(0);
    let t0 = Instant::now();
    let (held, open_errors) = load::open_idle(Arc::clone(&target), setup.idle_conns, 50).await;
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after = procs::rss_kib(pid).unwrap_or(0);
    let broker_after = procs::rss_kib(broker.proc.pid).unwrap_or(0);
    let count = held.len();
    let close_errors = load::close_idle(held, 50).await;
    tokio::time::sleep(settle).await;
    let after_close = procs::rss_kib(pid).unwrap_or(0);
    for (k, v) in open_errors.into_iter().chain(close_errors) {
        *errors.entry(k).or_insert(0) += v;
    }
    let total_errors: u64 = errors.values().sum::<u64>() + setup.idle_conns.saturating_sub(count) as u64;
    let per_conn = |a: u64, b: u64| {
        if count > 0 {
            (a.saturating_sub(b) as f64 / count as f64 * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    json!({
        "connections": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": after_close,
        "kib_per_conn": per_conn(after, before),
        "broker_kib_per_conn": per_conn(broker_after, broker_before),
        "open_secs": (open_secs * 100.0).round() / 100.0,
        "errors": total_errors,
        "error_kinds": errors,
    })
}
