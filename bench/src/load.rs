//! The load: MQTT clients over TLS, written for low cost per message (hand-made packets, batched writes, one clock
//! read per socket read).
//!
//! - [`conn_rate`]: workers that each loop TCP connect + TLS handshake + CONNECT/CONNACK + DISCONNECT, timing the
//!   CONNACK from the start of the TCP connect, and counting the handshakes that resumed a session (with a
//!   resuming client configuration).
//! - [`throughput`]: pairs of one publisher and one subscriber on a topic of their own; QoS 0; each payload starts
//!   with its send time and a sequence number, so the subscriber measures end-to-end latency and sees every loss.
//!   Saturated (each publisher keeps up to `window` messages in flight, refilling in one write) or paced (a fixed
//!   rate per publisher, one write per message).
//! - [`open_idle`] / [`close_idle`]: many connected, silent clients.
//!
//! Every client connects from one of several loopback source addresses (127.0.0.2 to .9), so that tens of
//! thousands of connections do not exhaust the ephemeral ports of one address. Every wait is bounded.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::mqtt;
use crate::procs::Probe;

pub type Stream = TlsStream<TcpStream>;

/// Bound of one connection set-up (TCP, TLS, CONNECT/CONNACK) and of other single steps.
const STEP: Duration = Duration::from_secs(10);

/// Where the clients connect, and how.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// Round-robin source addresses.
    sources: Vec<Ipv4Addr>,
    next_source: AtomicUsize,
    next_id: AtomicU64,
    /// Prefix of client ids and topics, unique per target and run.
    tag: String,
    /// Plain MQTT over TCP (no TLS): the connection-rate load of phase `plain`.
    pub plain: bool,
    /// MQTT inside WebSocket (path `/mqtt`, subprotocol `mqtt`) over TLS: the WSS idle row.
    pub wss: bool,
}

impl Target {
    pub fn new(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, tag: &str) -> Target {
        let sources = (2..=9).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        Target {
            addr,
            tls,
            sources,
            next_source: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            tag: tag.to_owned(),
            plain: false,
            wss: false,
        }
    }

    /// A target whose clients speak MQTT inside WebSocket over TLS.
    pub fn wss(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, tag: &str) -> Target {
        Target { wss: true, ..Target::new(addr, tls, tag) }
    }

    /// A target whose clients speak plain MQTT over TCP (`tls` is kept but unused).
    pub fn plain(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, tag: &str) -> Target {
        Target { plain: true, ..Target::new(addr, tls, tag) }
    }

    fn source(&self) -> Ipv4Addr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.sources.get(i % self.sources.len().max(1)).copied().unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// A client id never used before in this run (at most 23 characters, as MQTT 3.1 required).
    pub fn client_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("b{}-{n:x}", self.tag)
    }

    /// The negotiated protocol and cipher suite of one connection, for the report.
    pub async fn describe(&self) -> Result<String, String> {
        let s = self.open(600).await.map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let (_, conn) = s.get_ref();
        let out = format!(
            "{:?} {:?} {:?}",
            conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
            conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_default()
        )
        .replace('"', "");
        close(s).await;
        Ok(out)
    }

    /// TCP connect (from the next source address), TLS handshake, CONNECT, CONNACK accepted.
    pub async fn open(&self, keep_alive: u16) -> Result<Stream, &'static str> {
        self.open_as(&self.tls, keep_alive, STEP).await
    }

    /// [`Target::open`] with a client configuration of its own (a device's own session store), bounded by `bound`
    /// (a client of a reconnect storm may wait in the listen queue and behind thousands of handshakes).
    pub async fn open_as(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        keep_alive: u16,
        bound: Duration,
    ) -> Result<Stream, &'static str> {
        self.open_with_id(tls, &self.client_id(), keep_alive, bound).await
    }

    /// [`Target::open_as`] with a client id of the caller's (a device that reconnects keeps its id).
    pub async fn open_with_id(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        id: &str,
        keep_alive: u16,
        bound: Duration,
    ) -> Result<Stream, &'static str> {
        tokio::time::timeout(bound, async {
            let tcp = tcp_connect(self.source(), self.addr).await.map_err(|_| "tcp_connect")?;
            let connector = TlsConnector::from(Arc::clone(tls));
            let s = connector.connect(crate::tls::server_name(), tcp).await.map_err(|_| "tls_handshake")?;
            if self.wss {
                mqtt_connect_ws(s, id, keep_alive).await
            } else {
                mqtt_connect(s, id, keep_alive).await
            }
        })
        .await
        .unwrap_or(Err("connect_timeout"))
    }

    /// TCP connect (from the next source address), CONNECT, CONNACK accepted: no TLS.
    pub async fn open_plain(&self, keep_alive: u16) -> Result<TcpStream, &'static str> {
        let id = self.client_id();
        tokio::time::timeout(STEP, async {
            let tcp = tcp_connect(self.source(), self.addr).await.map_err(|_| "tcp_connect")?;
            mqtt_connect(tcp, &id, keep_alive).await
        })
        .await
        .unwrap_or(Err("connect_timeout"))
    }
}

/// CONNECT on an open stream, then the CONNACK, which must accept.
async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: &str,
    keep_alive: u16,
) -> Result<S, &'static str> {
    s.write_all(&mqtt::connect(id, keep_alive)).await.map_err(|_| "write_connect")?;
    s.flush().await.map_err(|_| "write_connect")?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.map_err(|_| "no_connack")?;
    connack_verdict(ack).map(|()| s)
}

/// A 3.1.1 CONNACK's answer: accepted, or refused with "server unavailable" (3, what a proxy answers for a busy
/// server) or another code.
fn connack_verdict(ack: [u8; 4]) -> Result<(), &'static str> {
    if ack[0] >> 4 != mqtt::CONNACK || ack[1] != 2 {
        return Err("bad_connack");
    }
    match ack[3] {
        0 => Ok(()),
        3 => Err("connack_server_unavailable"),
        _ => Err("connack_refused"),
    }
}

/// The WebSocket upgrade (`/mqtt`, subprotocol `mqtt`), then CONNECT in one masked binary frame and the CONNACK in
/// the server's (unmasked) binary frame.
async fn mqtt_connect_ws<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: &str,
    keep_alive: u16,
) -> Result<S, &'static str> {
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    s.write_all(upgrade.as_bytes()).await.map_err(|_| "write_upgrade")?;
    s.flush().await.map_err(|_| "write_upgrade")?;
    // The server sends nothing after its answer until our CONNECT: read until the end of the headers.
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.map_err(|_| "no_upgrade")?;
        if n == 0 || head.len() > 4096 {
            return Err("no_upgrade");
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err("upgrade_refused");
    }
    let connect = mqtt::connect(id, keep_alive);
    let len = u8::try_from(connect.len()).ok().filter(|l| *l < 126).ok_or("connect_too_long")?;
    let mask = [0x5a, 0x17, 0xc3, 0x8e];
    let mut frame = vec![0x82, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(connect.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    s.write_all(&frame).await.map_err(|_| "write_connect")?;
    s.flush().await.map_err(|_| "write_connect")?;
    let mut reply = [0u8; 6];
    s.read_exact(&mut reply).await.map_err(|_| "no_connack")?;
    if reply[0] != 0x82 || reply[1] != 4 {
        return Err("bad_connack_frame");
    }
    connack_verdict([reply[2], reply[3], reply[4], reply[5]]).map(|()| s)
}

async fn tcp_connect(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    // Choose the source port at connect time (per destination), not at bind time: many more ports per address.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our own open socket with a pointer to a local int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(SocketAddr::new(src.into(), 0))?;
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// DISCONNECT, then wait (bounded) for the server side to close, then close our side. Errors after DISCONNECT are
/// not the server's fault: a broker that terminates TLS itself closes without a TLS close_notify.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Option<&'static str> {
    let r = tokio::time::timeout(STEP, async {
        if s.write_all(&mqtt::DISCONNECT).await.is_err() || s.flush().await.is_err() {
            return Some("write_disconnect");
        }
        let mut scratch = [0u8; 256];
        loop {
            match s.read(&mut scratch).await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(_) => return Some("read_after_disconnect"),
            }
        }
        let _ = s.shutdown().await;
        None
    })
    .await;
    r.unwrap_or(Some("close_timeout"))
}

/// Error counts by kind.
#[derive(Default)]
pub struct Errors(Mutex<BTreeMap<&'static str, u64>>);

impl Errors {
    pub fn add(&self, kind: &'static str, n: u64) {
        if n > 0 {
            let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            *m.entry(kind).or_insert(0) += n;
        }
    }

    pub fn take(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Connection rate.

pub struct ConnRate {
    pub completed: u64,
    pub secs: f64,
    /// Time to CONNACK of each completed cycle, µs.
    pub connack_us: Vec<u32>,
    /// Completed cycles whose TLS handshake resumed a session.
    pub resumed: u64,
    pub errors: BTreeMap<&'static str, u64>,
}

/// `workers` loops of connect/CONNACK/DISCONNECT for `dur`; cycles finishing after the deadline are not counted.
pub async fn conn_rate(target: Arc<Target>, workers: usize, dur: Duration) -> ConnRate {
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let target = Arc::clone(&target);
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut resumed = 0u64;
            while Instant::now() < deadline {
                match cycle(&target).await {
                    Ok((connack, was_resumed, err)) => {
                        if let Some(e) = err {
                            errors.add(e, 1);
                        } else if Instant::now() <= deadline {
                            lat.push(u32::try_from(connack.as_micros()).unwrap_or(u32::MAX));
                            resumed += u64::from(was_resumed);
                        }
                    }
                    Err(e) => {
                        errors.add(e, 1);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, resumed)
        }));
    }
    let (mut connack_us, mut resumed) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((l, r)) => {
                connack_us.extend(l);
                resumed += r;
            }
            Err(_) => errors.add("worker_panicked", 1),
        }
    }
    ConnRate { completed: connack_us.len() as u64, secs: dur.as_secs_f64(), connack_us, resumed, errors: errors.take() }
}

/// One connection cycle: open, then close; the time to CONNACK, whether TLS resumed, and the error of the close.
async fn cycle(target: &Target) -> Result<(Duration, bool, Option<&'static str>), &'static str> {
    let t0 = Instant::now();
    if target.plain {
        let s = target.open_plain(60).await?;
        let connack = t0.elapsed();
        return Ok((connack, false, close(s).await));
    }
    let s = target.open(60).await?;
    let connack = t0.elapsed();
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((connack, resumed, close(s).await))
}

// ---------------------------------------------------------------------------------------------------------------
// Throughput and latency.

pub struct TputParams {
    pub pairs: usize,
    pub payload: usize,
    /// Saturated: messages in flight per publisher. Paced: ignored.
    pub window: u64,
    /// Paced: messages per second per publisher; `None`: saturated.
    pub pace: Option<u32>,
    pub warmup: Duration,
    pub measure: Duration,
}

pub struct Tput {
    /// Messages received inside the measurement window (by receive time).
    pub delivered: u64,
    pub secs: f64,
    /// End-to-end latency of those messages, µs.
    pub latency_us: Vec<u32>,
    pub sent: u64,
    pub received: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// CPU use (and system calls) during the measurement window.
    pub cpu: serde_json::Value,
}

struct Pair {
    received: AtomicU64,
    progress: Notify,
    /// Set by the publisher when it stops: how many it sent.
    final_sent: AtomicU64,
    publisher_done: AtomicBool,
}

/// Runs `params.pairs` publisher/subscriber pairs through `target` for warm-up + measurement; `probe` runs over the
/// measurement window only.
pub async fn throughput(
    target: Arc<Target>,
    params: &TputParams,
    epoch: Instant,
    probe: &Probe,
) -> Result<Tput, String> {
    let errors = Arc::new(Errors::default());
    let run = target.next_id.fetch_add(1, Ordering::Relaxed);
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for i in 0..params.pairs {
        let topic = format!("bench/{}/{run}/{i}", target.tag);
        let mut s = target.open(60).await.map_err(|e| format!("subscriber {i}: {e}"))?;
        s.write_all(&mqtt::subscribe(1, &topic)).await.map_err(|e| format!("subscribe: {e}"))?;
        s.flush().await.map_err(|e| format!("subscribe: {e}"))?;
        let mut suback = [0u8; 5];
        tokio::time::timeout(STEP, s.read_exact(&mut suback))
            .await
            .map_err(|_| "no SUBACK".to_owned())?
            .map_err(|e| format!("SUBACK: {e}"))?;
        if suback[0] >> 4 != mqtt::SUBACK || suback[4] != 0 {
            return Err(format!("subscription refused: {suback:?}"));
        }
        subs.push((s, topic.clone()));
        pubs.push((target.open(60).await.map_err(|e| format!("publisher {i}: {e}"))?, topic));
    }
    let start = Instant::now();
    let ns = |t: Instant| u64::try_from(t.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
    let window_start = ns(start + params.warmup);
    let window_end = ns(start + params.warmup + params.measure);
    let pub_end = start + params.warmup + params.measure;
    let pairs: Vec<Arc<Pair>> = (0..params.pairs)
        .map(|_| {
            Arc::new(Pair {
                received: AtomicU64::new(0),
                progress: Notify::new(),
                final_sent: AtomicU64::new(u64::MAX),
                publisher_done: AtomicBool::new(false),
            })
        })
        .collect();

    let mut sub_tasks = Vec::new();
    for ((s, _), pair) in subs.into_iter().zip(&pairs) {
        let pair = Arc::clone(pair);
        let errors = Arc::clone(&errors);
        sub_tasks.push(tokio::spawn(subscriber(s, pair, errors, epoch, window_start, window_end)));
    }
    let mut pub_tasks = Vec::new();
    for ((s, topic), pair) in pubs.into_iter().zip(&pairs) {
        let pair = Arc::clone(pair);
        let errors = Arc::clone(&errors);
        let (payload, window, pace) = (params.payload, params.window, params.pace);
        pub_tasks.push(tokio::spawn(async move {
            let sent = match pace {
                None => publish_saturated(s, &topic, payload, window, &pair, &errors, epoch, pub_end).await,
                Some(rate) => publish_paced(s, &topic, payload, rate, &pair, &errors, epoch, pub_end).await,
            };
            pair.final_sent.store(sent, Ordering::Release);
            pair.publisher_done.store(true, Ordering::Release);
            sent
        }));
    }
    tokio::time::sleep_until((start + params.warmup).into()).await;
    let run = probe.start();
    tokio::time::sleep_until(pub_end.into()).await;
    let cpu = run.finish();
    let mut sent = 0;
    for t in pub_tasks {
        sent += t.await.unwrap_or_else(|_| {
            errors.add("publisher_panicked", 1);
            0
        });
    }
    let (mut delivered, mut received, mut latency_us) = (0, 0, Vec::new());
    for t in sub_tasks {
        match t.await {
            Ok((d, r, l)) => {
                delivered += d;
                received += r;
                latency_us.extend(l);
            }
            Err(_) => errors.add("subscriber_panicked", 1),
        }
    }
    Ok(Tput { delivered, secs: params.measure.as_secs_f64(), latency_us, sent, received, errors: errors.take(), cpu })
}

/// Reads PUBLISH packets until the publisher's final count arrived (or 5 s after it stopped): returns (received in
/// the window, received in all, latencies in the window).
async fn subscriber(
    mut s: Stream,
    pair: Arc<Pair>,
    errors: Arc<Errors>,
    epoch: Instant,
    window_start: u64,
    window_end: u64,
) -> (u64, u64, Vec<u32>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0usize;
    let (mut in_window, mut total, mut expected) = (0u64, 0u64, 0u64);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut done_at: Option<Instant> = None;
    loop {
        if pair.publisher_done.load(Ordering::Acquire) {
            if total >= pair.final_sent.load(Ordering::Acquire) {
                break;
            }
            let since = *done_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                errors.add("lost", pair.final_sent.load(Ordering::Acquire).saturating_sub(total));
                break;
            }
        }
        let Some(space) = buf.get_mut(filled..) else { break };
        let n = match tokio::time::timeout(Duration::from_millis(200), s.read(space)).await {
            Err(_) => continue,
            Ok(Ok(0)) => {
                errors.add("subscriber_eof", 1);
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(_)) => {
                errors.add("subscriber_read", 1);
                break;
            }
        };
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let counted = now >= window_start && now < window_end;
        filled += n;
        let mut pos = 0;
        loop {
            let rest = buf.get(pos..filled).unwrap_or_default();
            match mqtt::frame(rest) {
                Ok(Some(f)) => {
                    if f.kind() == mqtt::PUBLISH {
                        match rest.get(f.header_len..f.total_len).and_then(mqtt::publish_stamp) {
                            Some((sent, seq)) => {
                                if seq != expected {
                                    errors.add("out_of_order", 1);
                                }
                                expected = seq + 1;
                                total += 1;
                                if counted {
                                    in_window += 1;
                                    lat.push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
                                }
                            }
                            None => errors.add("bad_payload", 1),
                        }
                    }
                    pos += f.total_len;
                }
                Ok(None) => break,
                Err(_) => {
                    errors.add("bad_frame", 1);
                    return (in_window, total, lat);
                }
            }
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        pair.received.store(total, Ordering::Release);
        pair.progress.notify_one();
    }
    if let Some(e) = close(s).await {
        errors.add(e, 1);
    }
    (in_window, total, lat)
}

#[allow(clippy::too_many_arguments)]
async fn publish_saturated(
    mut s: Stream,
    topic: &str,
    payload: usize,
    window: u64,
    pair: &Pair,
    errors: &Errors,
    epoch: Instant,
    end: Instant,
) -> u64 {
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(64 * (payload + topic.len() + 8));
    while Instant::now() < end {
        let in_flight = seq.saturating_sub(pair.received.load(Ordering::Acquire));
        if in_flight >= window {
            let wait = Duration::from_secs(5).min(end.saturating_duration_since(Instant::now()));
            if tokio::time::timeout(wait, pair.progress.notified()).await.is_err() && Instant::now() < end {
                errors.add("stalled", 1);
                break;
            }
            continue;
        }
        let credit = (window - in_flight).min(64);
        out.clear();
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for _ in 0..credit {
            mqtt::put_publish(&mut out, topic, payload, now, seq);
            seq += 1;
        }
        if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
            errors.add("publisher_write", 1);
            break;
        }
    }
    let sent = seq;
    // The subscriber must see everything before we disconnect (a DISCONNECT does not wait for delivery anyway).
    if let Some(e) = close(s).await {
        errors.add(e, 1);
    }
    sent
}

#[allow(clippy::too_many_arguments)]
async fn publish_paced(
    mut s: Stream,
    topic: &str,
    payload: usize,
    rate: u32,
    pair: &Pair,
    errors: &Errors,
    epoch: Instant,
    end: Instant,
) -> u64 {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut out = Vec::with_capacity(payload + topic.len() + 8);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        if seq.saturating_sub(pair.received.load(Ordering::Acquire)) > 100_000 {
            errors.add("paced_backlog", 1);
            break;
        }
        out.clear();
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        mqtt::put_publish(&mut out, topic, payload, now, seq);
        seq += 1;
        if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
            errors.add("publisher_write", 1);
            break;
        }
    }
    if let Some(e) = close(s).await {
        errors.add(e, 1);
    }
    seq
}

// ---------------------------------------------------------------------------------------------------------------
// Idle connections.

/// Opens `n` connected, silent MQTT clients (keep-alive 300 s, longer than the measurement), `concurrency` at a time.
pub async fn open_idle(
    target: Arc<Target>,
    n: usize,
    concurrency: usize,
) -> (Vec<Stream>, BTreeMap<&'static str, u64>) {
    let errors = Arc::new(Errors::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, errors, next) = (Arc::clone(&target), Arc::clone(&errors), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match target.open(300).await {
                    Ok(s) => held.push(s),
                    Err(e) => errors.add(e, 1),
                }
            }
            held
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(h) => all.extend(h),
            Err(_) => errors.add("worker_panicked", 1),
        }
    }
    (all, errors.take())
}

/// Disconnects every client, `concurrency` at a time.
pub async fn close_idle(streams: Vec<Stream>, concurrency: usize) -> BTreeMap<&'static str, u64> {
    let errors = Arc::new(Errors::default());
    let queue = Arc::new(Mutex::new(streams));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, errors) = (Arc::clone(&queue), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(s) = next else { break };
                if let Some(e) = close(s).await {
                    errors.add(e, 1);
                }
            }
        }));
    }
    for t in tasks {
        if t.await.is_err() {
            errors.add("worker_panicked", 1);
        }
    }
    errors.take()
}
