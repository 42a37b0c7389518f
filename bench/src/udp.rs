//! The UDP section: what mqtt-lb's `protocol: coap` path costs a CoAP device (issue 7).
//!
//! A real CoAP server, libcoap's `coap-server` (Debian's `libcoap3-bin`, the build without (D)TLS), on loopback,
//! holding one small resource `/b` (PUT at start, 2 bytes). Senders, each with a UDP socket of its own (one device,
//! one flow in mqtt-lb), send Confirmable GET `/b` requests and wait for the piggybacked response (an ACK with the
//! same message id and token, code 2.05) before sending the next: one request in flight per sender, so the
//! round-trip time of each request is measured alone and the rate is what N devices get. Two loads per path:
//! - *saturated*: `senders` senders back to back: requests answered per second, and the round trip under that
//!   load;
//! - *paced*: 4 senders at a fixed total rate far below every path's capacity: the round trip on an unloaded path,
//!   the figure for "latency added over direct".
//!
//! Paths: `direct` (the senders talk to coap-server), `mqtt-lb` (a `protocol: coap` listener in front of it, one
//! server, CoAP ping health check) and, when nginx with its stream module is installed, `nginx` (its UDP stream
//! proxy, one session per device address as mqtt-lb has one flow: [`nginx_config`]), each the same coap-server. A request that gets no answer within [`ANSWER_WAIT`] is
//! counted as lost (an error: nothing should be lost on loopback at one request in flight per sender).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::UdpSocket;

use crate::load::Errors;
use crate::procs::{loopback, Probe, Proc};

/// How long a sender waits for the answer to one request before counting it lost.
pub const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Senders of the paced load.
pub const PACED_SENDERS: usize = 4;

/// The resource the senders read, and its content.
const RESOURCE: &str = "b";
const CONTENT: &[u8] = b"ok";

/// The paths of the UDP section, by name (also the keys in the results).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UdpPath {
    Direct,
    MqttLb,
    Nginx,
}

impl UdpPath {
    pub fn name(self) -> &'static str {
        match self {
            UdpPath::Direct => "direct",
            UdpPath::MqttLb => "mqtt-lb",
            UdpPath::Nginx => "nginx",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            UdpPath::Direct => "direct (coap-server)",
            UdpPath::MqttLb => "mqtt-lb",
            UdpPath::Nginx => "nginx (UDP stream proxy)",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CoAP messages.

/// A Confirmable GET `/b` with a 4-byte token.
fn get_request(message_id: u16, token: [u8; 4]) -> [u8; 10] {
    let [m0, m1] = message_id.to_be_bytes();
    let [t0, t1, t2, t3] = token;
    // Version 1, CON, token length 4; GET; message id; token; Uri-Path (option 11) of 1 byte.
    [0x44, 0x01, m0, m1, t0, t1, t2, t3, 0xB1, RESOURCE.as_bytes()[0]]
}

/// A Confirmable PUT `/b` with [`CONTENT`].
fn put_request(message_id: u16) -> Vec<u8> {
    let mut m = vec![0x40, 0x03];
    m.extend_from_slice(&message_id.to_be_bytes());
    m.extend_from_slice(&[0xB1, RESOURCE.as_bytes()[0], 0xFF]);
    m.extend_from_slice(CONTENT);
    m
}

/// An Empty Confirmable message (CoAP ping), answered by a Reset with the same message id.
fn ping(message_id: u16) -> [u8; 4] {
    let [m0, m1] = message_id.to_be_bytes();
    [0x40, 0x00, m0, m1]
}

/// What an answer to a request of ours is.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The piggybacked response to it, with its code.
    Response(u8),
    /// A Reset of it.
    Reset,
    /// Another message (say the late answer to an earlier request).
    Other,
}

/// Reads `datagram` as the answer to the request with `message_id` and `token`.
fn answer_to(datagram: &[u8], message_id: u16, token: &[u8]) -> Answer {
    let [first, code, m0, m1, rest @ ..] = datagram else { return Answer::Other };
    if first >> 6 != 1 || u16::from_be_bytes([*m0, *m1]) != message_id {
        return Answer::Other;
    }
    match (first >> 4) & 0x3 {
        3 => Answer::Reset,
        2 if usize::from(first & 0x0F) == token.len() && rest.starts_with(token) => Answer::Response(*code),
        _ => Answer::Other,
    }
}

/// Code 2.05 Content.
const CONTENT_CODE: u8 = 0x45;
/// Code 2.01 Created, 2.04 Changed.
const PUT_OK: [u8; 2] = [0x41, 0x44];

/// Sends `request` to `addr` until it is answered (a CoAP answer whose message id is `message_id`), for at most
/// `limit`; returns the answer. Used to wait for a server or a proxy to be ready.
async fn exchange(addr: SocketAddr, request: &[u8], message_id: u16, limit: Duration) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    socket.connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 2048];
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Err(e) = socket.send(request).await {
            last = e.to_string();
        }
        // An ICMP port unreachable (nothing bound yet) shows as an error on the next receive.
        match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let answer = buf.get(..n).unwrap_or_default();
                if answer.get(2..4) == Some(&message_id.to_be_bytes()[..]) {
                    return Ok(answer.to_vec());
                }
            }
            Ok(Err(e)) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {}
        }
    }
    Err(format!("no CoAP answer from {addr} within {limit:?} ({last})"))
}

/// Waits until `addr` answers a CoAP ping with a Reset, failing early if `proc` exits.
pub async fn wait_coap(proc: &mut Proc, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0x5000u16;
    loop {
        id = id.wrapping_add(1);
        if let Ok(answer) = exchange(addr, &ping(id), id, Duration::from_millis(300)).await {
            if answer_to(&answer, id, &[]) == Answer::Reset {
                return Ok(());
            }
        }
        if !proc.running() {
            return Err(format!("{} exited: {}", proc.name, proc.log_tail()));
        }
        if Instant::now() >= deadline {
            return Err(format!("{} does not answer a CoAP ping on {addr} after 20 s: {}", proc.name, proc.log_tail()));
        }
    }
}

/// A GET `/b` through `addr` answers 2.05 with the resource's content (a path works end to end).
pub async fn check_get(addr: SocketAddr) -> Result<(), String> {
    let token = [0xC0, 0xFF, 0xEE, 0x01];
    let answer = exchange(addr, &get_request(0x6001, token), 0x6001, Duration::from_secs(3)).await?;
    match answer_to(&answer, 0x6001, &token) {
        Answer::Response(CONTENT_CODE) if answer.ends_with(CONTENT) => Ok(()),
        other => Err(format!("GET /{RESOURCE} via {addr}: unexpected answer {other:?} {answer:02x?}")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The processes.

/// A port on 127.0.0.1 free for both UDP and TCP a moment ago (coap-server listens on both).
fn free_udp_port() -> Result<u16, String> {
    for _ in 0..100 {
        let udp = StdUdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind UDP: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no port free for both UDP and TCP".into())
}

pub fn coap_server_binary() -> PathBuf {
    PathBuf::from("/usr/bin/coap-server-notls")
}

/// libcoap's version, from coap-server's usage text (`coap-server-notls v4.3.1 -- ...`).
pub fn libcoap_version() -> String {
    let out = Command::new(coap_server_binary()).arg("-h").output();
    let text = out.map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned()).unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("coap-server") && l.contains(" v"));
    line.and_then(|l| l.split(" -- ").next()).unwrap_or("unknown").trim().to_owned()
}

pub fn nginx_binary() -> PathBuf {
    PathBuf::from("/usr/sbin/nginx")
}

/// The stream module of Debian's nginx (package libnginx-mod-stream).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Whether nginx and its stream module are installed (the `nginx` path runs only then).
pub fn nginx_available() -> bool {
    nginx_binary().exists() && Path::new(NGINX_STREAM_MODULE).exists()
}

/// libcoap's coap-server with the resource `/b` in place.
pub struct CoapServer {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl CoapServer {
    pub async fn start(dir: &Path) -> Result<CoapServer, String> {
        let mut last = String::new();
        for attempt in 0..3 {
            let addr = loopback(free_udp_port()?);
            let mut cmd = Command::new(coap_server_binary());
            cmd.args(["-A", "127.0.0.1", "-p", &addr.port().to_string(), "-d", "4", "-v", "3"]);
            let mut proc = Proc::spawn("coap-server", cmd, &dir.join(format!("coap-server-{attempt}.log")))?;
            if let Err(e) = wait_coap(&mut proc, addr).await {
                last = e;
                continue;
            }
            let answer = exchange(addr, &put_request(0x7001), 0x7001, Duration::from_secs(3)).await?;
            match answer_to(&answer, 0x7001, &[]) {
                Answer::Response(code) if PUT_OK.contains(&code) => {}
                other => return Err(format!("PUT /{RESOURCE} on coap-server: {other:?} {answer:02x?}")),
            }
            check_get(addr).await?;
            return Ok(CoapServer { proc, addr });
        }
        Err(format!("coap-server did not start: {last}"))
    }
}

/// mqtt-lb in front of `server`: one `protocol: coap` listener, one server, the default CoAP ping health check. No
/// per-device rate limit (on by default): a saturated sender is one device far above what devices send.
pub fn mqtt_lb_config(bind: SocketAddr, server: SocketAddr, threads: usize) -> String {
    format!(
        "listeners:\n\
         \x20 - name: coap\n\
         \x20   bind: \"{bind}\"\n\
         \x20   protocol: coap\n\
         \x20   backend: coap_servers\n\
         \x20   max_datagram_rate_per_flow: 0\n\
         backends:\n\
         \x20 - name: coap_servers\n\
         \x20   protocol: coap\n\
         \x20   health: {{ check: coap-ping, interval: 2s, timeout: 1s, rise: 2, fall: 3 }}\n\
         \x20   servers:\n\
         \x20     - {{ name: coap1, address: \"{server}\" }}\n\
         shutdown:\n\
         \x20 drain_timeout: 1s\n\
         workers: {threads}\n"
    )
}

/// Starts mqtt-lb (after `mqtt-lb check`) with a coap listener in front of `server`; ready when a CoAP ping
/// through it is answered.
pub async fn start_mqtt_lb(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    threads: usize,
    logs: bool,
) -> Result<(Proc, SocketAddr), String> {
    let mut last = String::new();
    for attempt in 0..3 {
        let bind = loopback(free_udp_port()?);
        let cfg = dir.join(format!("mqtt-lb-udp-{attempt}.yaml"));
        std::fs::write(&cfg, mqtt_lb_config(bind, server, threads))
            .map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let log = dir.join(format!("mqtt-lb-udp-{attempt}.log"));
        let mut proc = crate::procs::spawn_checked_mqtt_lb(bin, "mqtt-lb", &cfg, &log, logs)?;
        match wait_coap(&mut proc, bind).await {
            Ok(()) => {
                check_get(bind).await?;
                return Ok((proc, bind));
            }
            Err(e) => last = e,
        }
    }
    Err(format!("mqtt-lb (coap listener) did not start: {last}"))
}

/// nginx's UDP stream proxy in front of `server`, configured as mqtt-lb is for devices: a session per device
/// address that lives until 5 minutes without a datagram (`proxy_timeout 5m`, mqtt-lb's default
/// `flow_idle_timeout`) with no limit on the answers (server-initiated CoAP traffic needs that), so a session's
/// upstream socket serves all of a device's requests; `reuseport` and one worker per core, so each device stays
/// with one worker.
pub fn nginx_config(dir: &Path, bind: SocketAddr, server: SocketAddr, workers: usize) -> String {
    format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         daemon off;\n\
         worker_processes {workers};\n\
         pid {pid};\n\
         error_log {log} warn;\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n\
         \x20 upstream coap {{ server {server}; }}\n\
         \x20 server {{\n\
         \x20   listen {bind} udp reuseport;\n\
         \x20   proxy_pass coap;\n\
         \x20   proxy_timeout 5m;\n\
         \x20 }}\n\
         }}\n",
        pid = dir.join("nginx-udp.pid").display(),
        log = dir.join("nginx-udp-error.log").display(),
    )
}

/// Starts nginx (after `nginx -t`) with its UDP stream proxy in front of `server`.
pub async fn start_nginx(dir: &Path, server: SocketAddr, workers: usize) -> Result<(Proc, SocketAddr), String> {
    let mut last = String::new();
    for attempt in 0..3 {
        let bind = loopback(free_udp_port()?);
        let cfg = dir.join(format!("nginx-udp-{attempt}.conf"));
        std::fs::write(&cfg, nginx_config(dir, bind, server, workers))
            .map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let check = Command::new(nginx_binary())
            .arg("-t")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&cfg)
            .output()
            .map_err(|e| format!("cannot run nginx -t: {e}"))?;
        if !check.status.success() {
            return Err(format!("nginx -t rejects {}: {}", cfg.display(), String::from_utf8_lossy(&check.stderr)));
        }
        let mut cmd = Command::new(nginx_binary());
        cmd.arg("-p").arg(dir).arg("-c").arg(&cfg);
        let mut proc = Proc::spawn("nginx", cmd, &dir.join(format!("nginx-udp-{attempt}.log")))?;
        match wait_coap(&mut proc, bind).await {
            Ok(()) => {
                check_get(bind).await?;
                return Ok((proc, bind));
            }
            Err(e) => last = e,
        }
    }
    Err(format!("nginx did not start: {last}"))
}

// ---------------------------------------------------------------------------------------------------------------
// The load.

pub struct UdpParams {
    pub senders: usize,
    /// Total requests per second over all senders; `None`: saturated (back to back).
    pub pace: Option<u32>,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one load measured.
pub struct UdpLoad {
    /// Requests answered inside the measurement window (by answer time).
    pub answered: u64,
    pub secs: f64,
    /// Round-trip time of those requests, µs.
    pub rtt_us: Vec<u32>,
    /// Requests sent in all (warm-up included).
    pub sent: u64,
    pub errors: BTreeMap<&'static str, u64>,
}

/// Runs `params.senders` senders against `target` for warm-up + measurement; `probe` runs over the measurement
/// window only (its result is returned with the load).
pub async fn requests(target: SocketAddr, params: &UdpParams, probe: &Probe) -> Result<(UdpLoad, Value), String> {
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let window_start = start + params.warmup;
    let end = window_start + params.measure;
    let period = params.pace.map(|rate| Duration::from_secs_f64(params.senders.max(1) as f64 / f64::from(rate.max(1))));
    let mut tasks = Vec::with_capacity(params.senders);
    for i in 0..params.senders {
        let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|e| format!("bind a sender: {e}"))?;
        socket.connect(target).await.map_err(|e| format!("connect a sender: {e}"))?;
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(sender(socket, i, period, window_start, end, errors)));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let run = probe.start();
    tokio::time::sleep_until(end.into()).await;
    let cpu = run.finish();
    let (mut answered, mut sent, mut rtt_us) = (0, 0, Vec::new());
    for t in tasks {
        match t.await {
            Ok((a, s, r)) => {
                answered += a;
                sent += s;
                rtt_us.extend(r);
            }
            Err(_) => errors.add("sender_panicked", 1),
        }
    }
    let load = UdpLoad { answered, secs: params.measure.as_secs_f64(), rtt_us, sent, errors: errors.take() };
    Ok((load, cpu))
}

/// One sender: requests one at a time (paced by `period` if given) until `end`; returns (answered in the window,
/// sent, round trips in the window).
async fn sender(
    socket: UdpSocket,
    index: usize,
    period: Option<Duration>,
    window_start: Instant,
    end: Instant,
    errors: Arc<Errors>,
) -> (u64, u64, Vec<u32>) {
    let mut tick = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    });
    // Message ids start apart per sender; a sender sends far fewer than 65,536 requests in a load, so no id is
    // reused within the server's deduplication lifetime.
    let mut message_id = (index as u16).wrapping_mul(0x9E37);
    let mut buf = vec![0u8; 2048];
    let (mut answered, mut sent, mut rtt) = (0u64, 0u64, Vec::with_capacity(1 << 14));
    let tag = (index as u32).to_be_bytes();
    loop {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        if Instant::now() >= end {
            break;
        }
        message_id = message_id.wrapping_add(1);
        let token = [tag[2], tag[3], (sent >> 8) as u8, sent as u8];
        let request = get_request(message_id, token);
        let t0 = Instant::now();
        if socket.send(&request).await.is_err() {
            errors.add("send", 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        sent += 1;
        let deadline = t0 + ANSWER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.recv(&mut buf)).await {
                Err(_) => {
                    errors.add("lost", 1);
                    break;
                }
                Ok(Err(_)) => {
                    // ICMP port unreachable from a path that is not (yet) there.
                    errors.add("unreachable", 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
                Ok(Ok(n)) => match answer_to(buf.get(..n).unwrap_or_default(), message_id, &token) {
                    Answer::Response(CONTENT_CODE) => {
                        let done = Instant::now();
                        if done >= window_start && done < end {
                            answered += 1;
                            rtt.push(u32::try_from(done.duration_since(t0).as_micros()).unwrap_or(u32::MAX));
                        }
                        break;
                    }
                    Answer::Response(_) => {
                        errors.add("bad_code", 1);
                        break;
                    }
                    Answer::Reset => {
                        errors.add("reset", 1);
                        break;
                    }
                    // A late answer to an earlier request: keep waiting for ours.
                    Answer::Other => continue,
                },
            }
        }
    }
    (answered, sent, rtt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_well_formed() {
        let get = get_request(0x1234, [1, 2, 3, 4]);
        assert_eq!(get, [0x44, 0x01, 0x12, 0x34, 1, 2, 3, 4, 0xB1, b'b']);
        assert_eq!(put_request(7), [0x40, 0x03, 0, 7, 0xB1, b'b', 0xFF, b'o', b'k']);
        assert_eq!(ping(9), [0x40, 0, 0, 9]);
    }

    #[test]
    fn answers_are_matched_by_id_and_token() {
        let token = [1, 2, 3, 4];
        let ack = [0x64, 0x45, 0x12, 0x34, 1, 2, 3, 4, 0xFF, b'o', b'k'];
        assert_eq!(answer_to(&ack, 0x1234, &token), Answer::Response(0x45));
        assert_eq!(answer_to(&ack, 0x1235, &token), Answer::Other, "another request's answer");
        assert_eq!(answer_to(&ack, 0x1234, &[1, 2, 3, 5]), Answer::Other, "another token");
        assert_eq!(answer_to(&[0x70, 0x00, 0x12, 0x34], 0x1234, &[]), Answer::Reset);
        assert_eq!(answer_to(&[0x60, 0x00, 0x12, 0x34], 0x1234, &[]), Answer::Response(0), "an empty ACK");
        assert_eq!(answer_to(&[0x64, 0x45], 0x1234, &token), Answer::Other, "too short");
    }
}
