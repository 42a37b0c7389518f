//! The soak test's load: mqtt-lb (the release binary, as its own process) in front of three real brokers (Debian's
//! mosquitto), under mixed real load for a given time, with its resources sampled over time.
//!
//! Load (MQTT over TLS and over WebSocket over TLS, CoAP over UDP; rumqttc clients, or raw sockets where a client
//! must misbehave):
//! - steady clients (default 100, v3.1.1 and 5, one in four over WSS): connected for the whole run, one
//!   publish/receive round trip each second on their own topic, each round trip timed;
//! - CoAP devices (default 10, when libcoap's `coap-server` is installed): one confirmable GET a second each through
//!   the `coap` listener (flows idle out after 5 s) to three `coap-server`s, each exchange timed;
//! - churn (default 8 workers): connect, subscribe, publish, receive, disconnect, again and again;
//! - bad clients (2 workers) cycling through: garbage instead of TLS, TLS then nothing, a slow loris (one byte, then
//!   silence until `connect_timeout`), a CONNECT with a bad protocol name, level 6, a set reserved flag, an empty id
//!   without clean session, a 1 MiB CONNECT, a PUBLISH first; each must get exactly its documented answer;
//! - silent clients (1 worker): CONNACK with a keep alive of 1 s, then nothing sent (no PINGREQ, no FIN); the broker
//!   ends the session for its keep alive and the proxy must pass the close on within 20 s;
//! - floods: a connection flood (bursts of 100 TCP connections to the MQTTS and WSS listeners, half of them sending
//!   garbage, all of which the proxy must close within 15 s), bad WebSocket upgrades (each must get an HTTP 4xx), and
//!   a CoAP flood from one source (valid non-confirmable GETs and one-byte DTLS-looking datagrams, 5,000 a second)
//!   beside the devices.
//!
//! Every `--interval` seconds a CSV row: the proxy's RSS, open fds and threads (from /proc/PID), its open client
//! connections, relays, accepted and rejected connections (from /metrics), and the load's counters. mqtt-lb runs
//! one tokio task per open connection (the session, which does the relay), so open connections are its task count
//! beside a fixed few (accept loops, health probes, admin). At the end, after the load stops: a summary; the exit
//! code is non-zero on any unexpected error, a leak of fds or connections, memory that kept growing, or CoAP
//! devices answered less than 99% of the time. The summary gives the round-trip p50/p99 of each kind of legitimate
//! client and every refusal and drop counter of the proxy.
//!
//! Run it with `scripts/soak.sh [minutes]`, or
//! `cargo run --release --example soak -- --proxy target/release/mqtt-lb --minutes 30 --out soak-results`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_lb_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Args {
    minutes: f64,
    proxy: PathBuf,
    out: PathBuf,
    interval: Duration,
    steady: usize,
    churners: usize,
    devices: usize,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        proxy: PathBuf::from("target/release/mqtt-lb"),
        out: PathBuf::from("soak-results"),
        interval: Duration::from_secs(10),
        steady: 100,
        churners: 8,
        devices: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || value.parse::<f64>().unwrap_or_else(|_| panic!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--minutes" => a.minutes = number(),
            "--proxy" => a.proxy = PathBuf::from(&value),
            "--out" => a.out = PathBuf::from(&value),
            "--interval" => a.interval = Duration::from_secs_f64(number()),
            "--steady" => a.steady = number() as usize,
            "--churners" => a.churners = number() as usize,
            "--devices" => a.devices = number() as usize,
            other => panic!(
                "unknown option {other} (--minutes, --proxy, --out, --interval, --steady, --churners, --devices)"
            ),
        }
    }
    a
}

/// What the load did.
#[derive(Default)]
struct Load {
    round_trips: AtomicU64,
    churned: AtomicU64,
    bad_as_expected: AtomicU64,
    silent_closed: AtomicU64,
    flood_closed: AtomicU64,
    coap_answered: AtomicU64,
    coap_lost: AtomicU64,
    coap_flooded: AtomicU64,
    unexpected: AtomicU64,
    /// Round-trip times of legitimate clients in microseconds, by [`Kind`].
    latencies: [Mutex<Vec<u32>>; 3],
    /// The first unexpected errors, for the summary.
    first_errors: Mutex<Vec<String>>,
}

/// A kind of legitimate client, for its round-trip times.
#[derive(Clone, Copy)]
enum Kind {
    Mqtts = 0,
    Wss = 1,
    Coap = 2,
}

const KIND_NAMES: [&str; 3] = ["MQTTS", "WSS", "CoAP"];

impl Load {
    fn took(&self, kind: Kind, since: Instant) {
        let micros = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.latencies[kind as usize].lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(micros);
    }

    /// (count, p50, p99) of `kind`'s round trips, in milliseconds.
    fn percentiles(&self, kind: Kind) -> (usize, f64, f64) {
        let mut all = self.latencies[kind as usize].lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        all.sort_unstable();
        let at = |q: f64| {
            let i = ((all.len() as f64 - 1.0) * q).round() as usize;
            all.get(i).map_or(0.0, |&us| f64::from(us) / 1000.0)
        };
        (all.len(), at(0.5), at(0.99))
    }

    fn error(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.first_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first 20 errors that differ in more than their numbers.
        let shape = |e: &str| e.replace(|c: char| c.is_ascii_digit(), "");
        if errors.len() < 20 && !errors.iter().any(|e| shape(e) == shape(&what)) {
            eprintln!("unexpected: {what}");
            errors.push(what);
        }
    }
}

/// The proxy process.
struct Proxy {
    child: Child,
    admin: SocketAddr,
}

impl Proxy {
    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    fn status_value(&self, key: &str) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count() as u64)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of the CSV.
#[derive(Clone, Copy, Debug)]
struct Sample {
    seconds: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    connections: f64,
    relays: f64,
    accepted: f64,
    rejected: f64,
    round_trips: u64,
    churned: u64,
    bad: u64,
    silent: u64,
    unexpected: u64,
}

const CSV_HEADER: &str = "seconds,rss_kib,fds,threads,connections_active,relays_active,accepted_total,rejected_total,\
                          round_trips,churned,bad_as_expected,silent_closed,unexpected_errors";

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{:.0},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.seconds,
            self.rss_kib,
            self.fds,
            self.threads,
            self.connections,
            self.relays,
            self.accepted,
            self.rejected,
            self.round_trips,
            self.churned,
            self.bad,
            self.silent,
            self.unexpected
        )
    }
}

/// The sum of every series of metric `name` (all label sets) in an exposition.
fn sum_of(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn sample(proxy: &Proxy, load: &Load, start: Instant) -> Sample {
    let exposition = try_http_get(proxy.admin, "/metrics").await.map(|(_, body)| body).unwrap_or_default();
    Sample {
        seconds: start.elapsed().as_secs_f64(),
        rss_kib: proxy.status_value("VmRSS:"),
        fds: proxy.fds(),
        threads: proxy.status_value("Threads:"),
        connections: sum_of(&exposition, "mqttlb_connections_active"),
        relays: sum_of(&exposition, "mqttlb_server_connections_active"),
        accepted: sum_of(&exposition, "mqttlb_connections_accepted_total"),
        rejected: sum_of(&exposition, "mqttlb_connections_rejected_total"),
        round_trips: load.round_trips.load(Ordering::Relaxed),
        churned: load.churned.load(Ordering::Relaxed),
        bad: load.bad_as_expected.load(Ordering::Relaxed),
        silent: load.silent_closed.load(Ordering::Relaxed),
        unexpected: load.unexpected.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Load.

type Tls = Arc<rustls::ClientConfig>;

/// A client connected for the whole run, one round trip a second; reconnects after an error (which counts).
/// Every fourth one goes over WebSocket (`wss`), the others over MQTTS.
async fn steady(i: usize, mqtts: SocketAddr, wss: SocketAddr, tls: Tls, load: Arc<Load>, stop: CancellationToken) {
    let version = if i.is_multiple_of(2) { Version::V4 } else { Version::V5 };
    let (addr, via, kind) =
        if i % 4 == 3 { (wss, Via::Wss(tls), Kind::Wss) } else { (mqtts, Via::Tls(tls), Kind::Mqtts) };
    let (id, topic) = (format!("soak-steady-{i}"), format!("soak/steady/{i}"));
    while !stop.is_cancelled() {
        let mut c = match MqttClient::connect_via(addr, via.clone(), &id, version).await {
            Ok(c) => c,
            Err(e) => {
                load.error(format!("steady {i}: connect: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = c.subscribe(&topic).await {
            load.error(format!("steady {i}: subscribe: {e}"));
            continue;
        }
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    c.disconnect().await;
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(900 + (i as u64 * 37) % 200)) => {}
            }
            n += 1;
            let payload = format!("{id} {n}");
            let sent = Instant::now();
            let done = async {
                c.publish(&topic, payload.as_bytes(), false).await?;
                let got = c.next_publish(&topic, STEP_TIMEOUT).await?;
                if got != payload.as_bytes() {
                    return Err(format!("got {:?}", String::from_utf8_lossy(&got)));
                }
                Ok::<(), String>(())
            };
            match done.await {
                Ok(()) => {
                    load.took(kind, sent);
                    load.round_trips.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    load.error(format!("steady {i}: round trip {n}: {e}"));
                    break;
                }
            }
        }
    }
}

/// Connect, subscribe, publish, receive, disconnect; again.
async fn churn(w: usize, addr: SocketAddr, tls: Tls, load: Arc<Load>, stop: CancellationToken) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let version = if n.is_multiple_of(2) { Version::V4 } else { Version::V5 };
        let id = format!("soak-churn-{w}-{n}");
        let result = async {
            let mut c = MqttClient::connect(addr, Some(tls.clone()), &id, version).await?;
            c.round_trip(&format!("soak/churn/{w}"), id.as_bytes()).await?;
            c.disconnect().await;
            Ok::<(), String>(())
        };
        match result.await {
            Ok(()) => {
                load.churned.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => load.error(format!("churn {id}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CONNECT (3.1.1 or 5) with byte `at` replaced by `value`.
fn altered(packet: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    let mut p = packet;
    if let Some(b) = p.get_mut(at) {
        *b = value;
    }
    p
}

/// One misbehaving client of kind `k`; Err says how the proxy's answer differed from the documented one.
async fn bad_client(k: usize, n: u64, addr: SocketAddr, tls: Tls) -> Result<(), String> {
    // Fixed header (2 bytes), protocol name length (2) and "MQTT" (4): the level is at 8, the flags at 9.
    let answer = |bytes: Vec<u8>| {
        let tls = tls.clone();
        async move { tls_exchange(addr, tls, &bytes, STEP_TIMEOUT).await }
    };
    let expect = |got: Result<Vec<u8>, String>, want: &[u8], what: &str| match got {
        Ok(g) if g == want => Ok(()),
        other => Err(format!("{what}: got {other:02x?}, want {want:02x?}")),
    };
    match k {
        0 => {
            let mut s = TcpStream::connect(addr).await.map_err(|e| format!("garbage: connect: {e}"))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.map_err(|e| format!("garbage: {e}"))?;
            let mut rest = Vec::new();
            tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest))
                .await
                .map_err(|_| "garbage instead of TLS: not closed".to_owned())
                .map(|_| ())
        }
        1 => tls_connect(addr, tls).await.map(drop).map_err(|e| format!("TLS then nothing: {e}")),
        2 => {
            // One byte of a CONNECT, then silence: closed at connect_timeout (2 s).
            let mut s = tls_connect(addr, tls).await.map_err(|e| format!("slow loris: {e}"))?;
            s.write_all(&[0x10]).await.map_err(|e| format!("slow loris: {e}"))?;
            s.flush().await.map_err(|e| format!("slow loris: {e}"))?;
            let t = Instant::now();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest))
                .await
                .map_err(|_| "slow loris: not closed within 6 s".to_owned())?;
            if t.elapsed() < Duration::from_millis(1500) {
                return Err(format!("slow loris: closed after {:?}, before connect_timeout", t.elapsed()));
            }
            Ok(())
        }
        3 => expect(
            answer(altered(connect_packet_v311(&format!("bad-name-{n}")), 7, b'X')).await,
            &[],
            "bad protocol name",
        ),
        4 => expect(
            answer(altered(connect_packet_v311(&format!("level6-{n}")), 8, 6)).await,
            &[0x20, 0x02, 0x00, 0x01],
            "level 6",
        ),
        5 => expect(
            answer(altered(connect_packet_v5(&format!("reserved-{n}")), 9, 0x03)).await,
            &[0x20, 0x03, 0x00, 0x81, 0x00],
            "reserved flag",
        ),
        6 => expect(
            answer(altered(connect_packet_v311(""), 9, 0x00)).await,
            &[0x20, 0x02, 0x00, 0x02],
            "empty id, no clean session",
        ),
        7 => {
            // Declares 1 MiB (over max_connect_size 64 KiB): closed after the fixed header, without a CONNACK.
            let mut big = vec![0x10, 0x80, 0x80, 0x40];
            big.extend_from_slice(&[0u8; 1024]);
            match answer(big).await {
                // Closed with the rest of the packet unread: a reset is a close too.
                Ok(g) if g.is_empty() => Ok(()),
                Err(e) if e.contains("reset") => Ok(()),
                other => Err(format!("1 MiB CONNECT: got {other:02x?}, want a close")),
            }
        }
        _ => expect(answer(vec![0x30, 0x03, 0x00, 0x01, b'x']).await, &[], "PUBLISH first"),
    }
}

const BAD_KINDS: usize = 9;

async fn bad(w: usize, addr: SocketAddr, tls: Tls, load: Arc<Load>, stop: CancellationToken) {
    let mut n = w as u64;
    while !stop.is_cancelled() {
        n += 1;
        let k = usize::try_from(n % BAD_KINDS as u64).unwrap_or(0);
        match bad_client(k, n, addr, tls.clone()).await {
            Ok(()) => {
                load.bad_as_expected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => load.error(format!("bad client {n}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// CONNACK, then silence (keep alive 1 s, no PINGREQ): the broker ends the session (about 5 s with mosquitto) and
/// the proxy must pass the close on within 20 s.
async fn silent(addr: SocketAddr, tls: Tls, load: Arc<Load>, stop: CancellationToken) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let result = async {
            let mut s = tls_connect(addr, tls.clone()).await.map_err(|e| format!("connect: {e}"))?;
            let mut connect = connect_packet_v311(&format!("soak-silent-{n}"));
            // Keep alive (bytes 10-11 of this packet) from 60 s to 1 s.
            if let Some(k) = connect.get_mut(11) {
                *k = 1;
            }
            s.write_all(&connect).await.map_err(|e| format!("CONNECT: {e}"))?;
            s.flush().await.map_err(|e| format!("CONNECT: {e}"))?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await.map_err(|e| format!("CONNACK: {e}"))?;
            if ack != [0x20, 0x02, 0x00, 0x00] {
                return Err(format!("CONNACK {ack:02x?}"));
            }
            // Silent from here; a read only watches for the close, and never sends anything.
            let mut rest = Vec::new();
            match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await {
                Err(_) => Err("still open after 20 s".to_owned()),
                Ok(_) if !rest.is_empty() => Err(format!("unexpected bytes {rest:02x?}")),
                Ok(_) => Ok(()),
            }
        };
        match result.await {
            Ok(()) => {
                load.silent_closed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => load.error(format!("silent client {n}: {e}")),
        }
    }
}

/// Bursts of 100 TCP connections to `targets` in turn, every other one sending garbage, the rest nothing: the proxy
/// must close every one of them within 15 s (its TLS handshake deadline is 10 s), whatever the other clients do.
async fn flood(targets: [SocketAddr; 2], load: Arc<Load>, stop: CancellationToken) {
    let mut n = 0usize;
    while !stop.is_cancelled() {
        n += 1;
        let target = targets[n % 2];
        let mut burst = tokio::task::JoinSet::new();
        for k in 0..100usize {
            burst.spawn(async move {
                let mut s = TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
                if k % 2 == 0 {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00]).await;
                }
                let mut rest = Vec::new();
                tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest))
                    .await
                    .map_err(|_| format!("{target}: still open after 15 s"))
                    .map(drop)
            });
        }
        while let Some(done) = burst.join_next().await {
            match done {
                Ok(Ok(())) => {
                    load.flood_closed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => load.error(format!("flood burst {n}: {e}")),
                Err(e) => load.error(format!("flood burst {n}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// WebSocket upgrades that are not acceptable (no `Upgrade` header, a wrong path, a bad version, a missing key):
/// each must get an HTTP 4xx answer (or a 426) and a close.
async fn bad_ws(addr: SocketAddr, tls: Tls, load: Arc<Load>, stop: CancellationToken) {
    const REQUESTS: [&str; 4] = [
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /nowhere HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 7\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    ];
    let mut n = 0usize;
    while !stop.is_cancelled() {
        n += 1;
        let request = REQUESTS[n % REQUESTS.len()];
        let answer = tls_exchange(addr, tls.clone(), request.as_bytes(), STEP_TIMEOUT).await;
        match answer {
            Ok(a) if a.starts_with(b"HTTP/1.1 4") => {
                load.bad_as_expected.fetch_add(1, Ordering::Relaxed);
            }
            other => load.error(format!(
                "bad WebSocket upgrade {}: got {:?}",
                n % REQUESTS.len(),
                other.map(|a| String::from_utf8_lossy(&a).lines().next().unwrap_or_default().to_owned())
            )),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A CoAP message: confirmable (or not) GET of `/` with a two-byte token.
fn coap_get(confirmable: bool, message_id: u16) -> [u8; 6] {
    let [hi, lo] = message_id.to_be_bytes();
    [if confirmable { 0x42 } else { 0x52 }, 0x01, hi, lo, lo, hi]
}

/// A device: one confirmable GET a second from its own socket, retransmitted once after 2 s as CoAP does; an
/// answer (ACK 2.05 with the message id) within 4 s counts as answered and its time is kept, else as lost.
async fn coap_device(i: usize, lb: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let socket = match tokio::net::UdpSocket::bind("127.0.0.1:0").await {
        Ok(s) if s.connect(lb).await.is_ok() => s,
        _ => return load.error(format!("coap device {i}: no socket")),
    };
    let mut message_id = u16::try_from(i * 1000 % 60_000).unwrap_or(0);
    while !stop.is_cancelled() {
        message_id = message_id.wrapping_add(1);
        let request = coap_get(true, message_id);
        let sent = Instant::now();
        let mut answered = false;
        'attempts: for _ in 0..2 {
            if socket.send(&request).await.is_err() {
                break;
            }
            let mut buf = [0u8; 1500];
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(len)) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
                let answer = buf.get(..len).unwrap_or_default();
                if answer.len() >= 4 && answer[0] & 0x30 == 0x20 && answer[1] == 0x45 && answer[2..4] == request[2..4] {
                    answered = true;
                    break 'attempts;
                }
            }
        }
        if answered {
            load.took(Kind::Coap, sent);
            load.coap_answered.fetch_add(1, Ordering::Relaxed);
        } else {
            load.coap_lost.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(900 + (i as u64 * 53) % 200)) => {}
        }
    }
}

/// One source flooding the CoAP listener: 5,000 datagrams a second, mostly valid non-confirmable GETs, every tenth
/// a single byte that looks like the start of a DTLS record.
async fn coap_flood(lb: SocketAddr, load: Arc<Load>, stop: CancellationToken) {
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return load.error("coap flood: no socket".to_owned());
    };
    let mut n = 0u16;
    while !stop.is_cancelled() {
        for _ in 0..50 {
            n = n.wrapping_add(1);
            let sent = if n.is_multiple_of(10) {
                socket.send_to(&[0x30], lb).await
            } else {
                socket.send_to(&coap_get(false, n), lb).await
            };
            if sent.is_ok() {
                load.coap_flooded.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A libcoap `coap-server` on 127.0.0.1:`port`, killed (this PID) on drop.
struct CoapServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `coap-server`s answering a CoAP ping, or None (and why) when libcoap is not installed.
async fn coap_servers() -> Result<Vec<CoapServer>, String> {
    let program = ["/usr/bin/coap-server-openssl", "/usr/bin/coap-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("libcoap's coap-server is not installed (scripts/install-deps.sh installs it)")?;
    let mut servers = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new(program)
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {program}: {e}"))?;
        let server = CoapServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let answered = eventually(Duration::from_secs(5), || async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
            socket.send_to(&[0x40, 0x00, 0x12, 0x34], server.addr).await.ok()?;
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await.ok()?.ok().map(drop)
        })
        .await;
        if answered.is_none() {
            return Err(format!("coap-server on {} does not answer a ping", server.addr));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// Every series of the proxy's refusal and drop counters (names with `rejected`, `refused`, `dropped`, `closed` or
/// `limited`) that is not zero, as `series value` lines.
fn refusal_counters(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            name.ends_with("_total")
                && ["rejected", "refused", "dropped", "closed", "limited", "evicted", "overflow"]
                    .iter()
                    .any(|w| name.contains(w))
        })
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Summary.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Least-squares slope of RSS over time, in KiB per minute.
fn slope_kib_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) =
        (samples.iter().map(|s| s.seconds).sum::<f64>() / n, samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|s| (s.seconds - mx) * (s.rss_kib as f64 - my)).sum();
    let var: f64 = samples.iter().map(|s| (s.seconds - mx).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 60.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let a = args();
    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    std::fs::create_dir_all(&a.out).expect("create the output folder");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let csv_path = a.out.join(format!("soak-{stamp}.csv"));
    let summary_path = a.out.join(format!("soak-{stamp}.md"));

    let dir = tempfile::tempdir().expect("temporary folder");
    let mut brokers = Vec::new();
    for name in ["b0", "b1", "b2"] {
        brokers.push(Mosquitto::start(dir.path(), name).await);
    }
    let pki = TestPki::new(dir.path());
    let tls = pki.client_config();
    let coap = coap_servers().await;
    if let Err(why) = &coap {
        println!("soak: no CoAP load: {why}");
    }
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (listener, wss, coap_lb, admin) =
        (loopback(free_port()), loopback(free_port()), loopback(free_port()), loopback(free_port()));
    let tls_yaml = format!("{{ cert: \"{}\", key: \"{}\" }}", pki.cert.display(), pki.key.display());
    let mut yaml = format!(
        "listeners:\n  - name: mqtts\n    bind: \"{listener}\"\n    protocol: mqtt\n    tls: {tls_yaml}\n    backend: brokers\n\
         \x20 - name: wss\n    bind: \"{wss}\"\n    protocol: websocket\n    tls: {tls_yaml}\n    backend: brokers\n"
    );
    if coap.is_ok() {
        let _ = write!(yaml, "  - name: coap\n    bind: \"{coap_lb}\"\n    protocol: coap\n    backend: coap_servers\n    flow_idle_timeout: 5s\n");
    }
    yaml.push_str(
        "backends:\n  - name: brokers\n    balance: client-id\n    health: { check: mqtt, interval: 2s, timeout: 1s, rise: 2, fall: 3 }\n    servers:\n",
    );
    for b in &brokers {
        let _ = writeln!(yaml, "      - {{ name: {}, address: \"{}\" }}", b.name, b.addr());
    }
    if let Ok(servers) = &coap {
        yaml.push_str("  - name: coap_servers\n    protocol: coap\n    health: { check: coap-ping, interval: 2s, timeout: 1s }\n    servers:\n");
        for (i, server) in servers.iter().enumerate() {
            let _ = writeln!(yaml, "      - {{ name: c{i}, address: \"{}\" }}", server.addr);
        }
    }
    let _ = write!(
        yaml,
        "admin: {{ bind: \"{admin}\" }}\nlimits: {{ connect_timeout: 2s, max_connect_size: 64KiB }}\nshutdown: {{ grace: 0s }}\n"
    );
    let config = dir.path().join("soak.yaml");
    std::fs::write(&config, &yaml).expect("write the proxy configuration");
    let log = std::fs::File::create(a.out.join(format!("soak-{stamp}-proxy.log"))).expect("create the proxy log");
    let child = Command::new(&a.proxy)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", a.proxy.display()));
    let mut proxy = Proxy { child, admin };
    assert!(wait_accepting(listener, Duration::from_secs(10)).await, "the proxy does not listen");
    assert!(wait_accepting(admin, Duration::from_secs(10)).await, "the proxy's admin does not listen");
    println!(
        "soak: mqtt-lb (pid {}) in front of 3 mosquitto brokers{} for {:.1} min: {} steady clients (a quarter over \
         WSS), {} churn workers, {} CoAP devices, 2 bad-client workers, 1 bad-upgrade worker, 1 silent-client worker, \
         a connection flood{}; sampling every {:?} into {}",
        proxy.child.id(),
        if coap.is_ok() { " and 3 coap-servers" } else { "" },
        a.minutes,
        a.steady,
        a.churners,
        if coap.is_ok() { a.devices } else { 0 },
        if coap.is_ok() { " and a CoAP flood" } else { "" },
        a.interval,
        csv_path.display()
    );

    let load = Arc::new(Load::default());
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_before = sample(&proxy, &load, start).await;

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.steady {
        tasks.spawn(steady(i, listener, wss, tls.clone(), Arc::clone(&load), stop.clone()));
    }
    if coap.is_ok() {
        for i in 0..a.devices {
            tasks.spawn(coap_device(i, coap_lb, Arc::clone(&load), stop.clone()));
        }
        tasks.spawn(coap_flood(coap_lb, Arc::clone(&load), stop.clone()));
    }
    tasks.spawn(flood([listener, wss], Arc::clone(&load), stop.clone()));
    tasks.spawn(bad_ws(wss, tls.clone(), Arc::clone(&load), stop.clone()));
    for w in 0..a.churners {
        tasks.spawn(churn(w, listener, tls.clone(), Arc::clone(&load), stop.clone()));
    }
    for w in 0..2 {
        tasks.spawn(bad(w, listener, tls.clone(), Arc::clone(&load), stop.clone()));
    }
    tasks.spawn(silent(listener, tls.clone(), Arc::clone(&load), stop.clone()));

    let mut csv = format!("{CSV_HEADER}\n{}\n", idle_before.csv());
    let mut samples = Vec::new();
    let deadline = start + run_for;
    while Instant::now() < deadline {
        tokio::time::sleep(a.interval.min(deadline.saturating_duration_since(Instant::now()))).await;
        if !proxy.alive() {
            load.error("the proxy process exited".to_owned());
            break;
        }
        let s = sample(&proxy, &load, start).await;
        println!(
            "{:>6.0}s rss {:>7.1} MiB  fds {:>5}  threads {:>3}  connections {:>5}  relays {:>5}  round trips {:>8}  churned {:>7}  bad {:>6}  silent {:>4}  unexpected {}",
            s.seconds, mib(s.rss_kib), s.fds, s.threads, s.connections, s.relays, s.round_trips, s.churned, s.bad, s.silent, s.unexpected
        );
        csv.push_str(&s.csv());
        csv.push('\n');
        let _ = std::fs::write(&csv_path, &csv);
        samples.push(s);
    }

    stop.cancel();
    let drained =
        tokio::time::timeout(Duration::from_secs(40), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        load.error("the load did not stop within 40 s".to_owned());
    }
    // Every connection closed by its client must be gone from the proxy, and every CoAP flow (their servers'
    // sockets count as relays) after its idle timeout of 5 s.
    let closed = eventually(Duration::from_secs(20), || async {
        let s = sample(&proxy, &load, start).await;
        (s.connections == 0.0 && s.relays == 0.0).then_some(())
    })
    .await;
    // The idle fd count: the lowest of a few samples (a health probe may be in flight).
    let mut idle_after = sample(&proxy, &load, start).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = sample(&proxy, &load, start).await;
        if s.fds < idle_after.fds {
            idle_after = s;
        }
    }
    csv.push_str(&idle_after.csv());
    csv.push('\n');
    let _ = std::fs::write(&csv_path, &csv);

    // Memory: the highest RSS of the first and of the last quarter of the run (after a warm-up), and the slope of
    // the second half.
    let quarter = (samples.len() / 4).max(1);
    let early = samples.iter().take(quarter).map(|s| s.rss_kib).max().unwrap_or(0);
    let late = samples.iter().rev().take(quarter).map(|s| s.rss_kib).max().unwrap_or(0);
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let slope = slope_kib_per_min(&samples[samples.len() / 2..]);
    let grew = late.saturating_sub(early);
    let last = samples.last().copied().unwrap_or(idle_after);
    let errors = load.first_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();

    let mut verdicts = Vec::new();
    let mut check = |ok: bool, text: String| verdicts.push((ok, text));
    check(
        load.unexpected.load(Ordering::Relaxed) == 0,
        format!("unexpected errors: {}", load.unexpected.load(Ordering::Relaxed)),
    );
    check(
        samples.len() < 8 || grew < 8 * 1024,
        format!("memory flat: peak RSS of the first quarter {:.1} MiB, of the last quarter {:.1} MiB (+{:.1} MiB; slope of the second half {slope:+.0} KiB/min)", mib(early), mib(late), mib(grew)),
    );
    check(
        idle_after.fds <= idle_before.fds + 2,
        format!("no fd leak: {} open fds idle before the load, {} after it", idle_before.fds, idle_after.fds),
    );
    check(
        closed.is_some(),
        format!(
            "no connection leak: {} connections, {} relays open after the load",
            idle_after.connections, idle_after.relays
        ),
    );
    check(proxy.alive(), "the proxy process is alive".to_owned());
    let (answered, lost) = (load.coap_answered.load(Ordering::Relaxed), load.coap_lost.load(Ordering::Relaxed));
    if coap.is_ok() {
        let share = answered as f64 / (answered + lost).max(1) as f64;
        check(
            share >= 0.99,
            format!(
                "CoAP devices answered during the flood: {answered} of {} ({:.2}%)",
                answered + lost,
                share * 100.0
            ),
        );
    }
    let exposition = try_http_get(proxy.admin, "/metrics").await.map(|(_, body)| body).unwrap_or_default();
    let refusals = refusal_counters(&exposition);

    let mut summary = format!(
        "# mqtt-lb soak, {:.1} minutes\n\nLoad: {} steady clients (one round trip per second each, a quarter over WSS), {} churn workers, {} CoAP devices, 2 bad-client workers, 1 bad-upgrade worker, 1 silent-client worker, a connection flood and a CoAP flood, 3 mosquitto brokers and 3 coap-servers.\n\n\
         | | value |\n|---|---|\n| round trips (steady clients) | {} |\n| connect/round trip/disconnect cycles (churn) | {} |\n| bad clients answered as documented | {} |\n| silent clients closed after the keep alive | {} |\n\
         | connections accepted by the proxy | {} |\n| connections refused by the proxy | {} |\n| RSS idle before / peak / idle after | {:.1} / {:.1} / {:.1} MiB |\n\
         | open fds idle before / under load (last sample) / idle after | {} / {} / {} |\n| threads | {} |\n| connections under load (last sample) | {} |\n\n",
        a.minutes,
        a.steady,
        a.churners,
        if coap.is_ok() { a.devices } else { 0 },
        last.round_trips,
        last.churned,
        last.bad,
        last.silent,
        idle_after.accepted,
        idle_after.rejected,
        mib(idle_before.rss_kib),
        mib(peak),
        mib(idle_after.rss_kib),
        idle_before.fds,
        last.fds,
        idle_after.fds,
        last.threads,
        last.connections,
    );
    summary.push_str("| legitimate round trips | count | p50 | p99 |\n|---|---|---|---|\n");
    for kind in [Kind::Mqtts, Kind::Wss, Kind::Coap] {
        let (count, p50, p99) = load.percentiles(kind);
        let _ = writeln!(summary, "| {} | {count} | {p50:.1} ms | {p99:.1} ms |", KIND_NAMES[kind as usize]);
    }
    let _ = writeln!(
        summary,
        "\nFloods: {} flood connections closed by the proxy, {} CoAP flood datagrams sent.\n",
        load.flood_closed.load(Ordering::Relaxed),
        load.coap_flooded.load(Ordering::Relaxed)
    );
    let rss: Vec<String> = samples.iter().map(|s| format!("{:.0}s {:.1}", s.seconds, mib(s.rss_kib))).collect();
    let _ = writeln!(summary, "RSS over time (MiB): {}\n", rss.join(", "));
    summary.push_str("Refusal and drop counters at the end (non-zero series):\n\n```\n");
    for line in &refusals {
        let _ = writeln!(summary, "{line}");
    }
    summary.push_str("```\n\n");
    let mut passed = true;
    for (ok, text) in &verdicts {
        passed &= ok;
        let _ = writeln!(summary, "- {} {text}", if *ok { "PASS" } else { "FAIL" });
    }
    for e in &errors {
        let _ = writeln!(summary, "  - {e}");
    }
    let _ = writeln!(summary, "\nSamples: {}", csv_path.display());
    let _ = std::fs::write(&summary_path, &summary);
    println!("\n{summary}");
    println!("summary written to {}", summary_path.display());
    drop(brokers);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
