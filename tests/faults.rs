//! Fault injection with real brokers: what a broker or a client does wrong must never crash mqtt-lb, leak its
//! sockets or tasks, or hurt other clients.
//!
//! Real parts throughout (mosquitto, rumqttc, TLS, the proxy through its library API or its binary). Three fakes
//! stand in for broker failures a real mosquitto cannot produce on purpose, each said so where it is defined:
//! a listener that accepts and never answers, one whose accept queue is full (connects hang), and a broker that
//! resets the connection right after its CONNACK. Clients that misbehave (stop reading, go silent without FIN)
//! are raw TCP sockets driven by the test, because rumqttc always reads and always pings.
//!
//! The tests run one at a time (a process-wide lock): they count the file descriptors and tokio tasks of this
//! process and the memory of a proxy process, which tests running beside them would disturb.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use mqtt_lb::mqtt::{check_fixed_header, encode_remaining_length};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------------------------------
// Harness of this file.

/// One test at a time in this process (see the module docs). An async lock: it is held across the test's awaits, and
/// a failed test does not poison it.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Open file descriptors of this process (the in-process proxy's sockets, the clients', the harness's).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Tasks alive in this test's runtime (the proxy's accept loops, sessions, relays, probes, and the test's own).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// The lowest of a few samples of `f`: a baseline that does not count a health probe caught in flight.
async fn low_water(f: fn() -> usize) -> usize {
    let mut low = usize::MAX;
    for _ in 0..8 {
        low = low.min(f());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    low
}

/// Waits until `f() <= limit`; panics with `what` and the last value otherwise.
async fn settles_to(f: fn() -> usize, limit: usize, timeout: Duration, what: &str) {
    if eventually(timeout, || async move { (f() <= limit).then_some(()) }).await.is_none() {
        panic!("{what}: {} after {timeout:?}, baseline {limit}", f());
    }
}

/// `series` of the proxy's /metrics reaches `want` within `timeout`.
async fn metric_becomes(admin: SocketAddr, series: &str, want: f64, timeout: Duration) {
    if eventually(timeout, || async move { (metric(admin, series).await == want).then_some(()) }).await.is_none() {
        panic!("{series} is {} after {timeout:?}, want {want}", metric(admin, series).await);
    }
}

/// The configuration text of `yaml` with a plain (non-TLS) listener.
fn plain(yaml: &str) -> String {
    yaml.lines().filter(|l| !l.trim_start().starts_with("tls:")).map(|l| format!("{l}\n")).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Raw MQTT, for clients that misbehave on purpose and for exact bytes.

/// A 3.1.1 CONNECT with clean session and this keep alive.
fn connect_v311(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04\x02".to_vec();
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// SUBSCRIBE (packet id 1) to one filter at QoS 0.
fn subscribe(filter: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    put_str(&mut body, filter.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

/// PUBLISH at QoS 0.
fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + topic.len() + 2);
    put_str(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short string").to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    encode_remaining_length(body.len(), &mut p).expect("packet size");
    p.extend_from_slice(body);
    p
}

/// Reads one whole packet: (first byte, body). Err on EOF or error.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = Vec::with_capacity(5);
    loop {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        head.push(byte[0]);
        match check_fixed_header(&head) {
            Ok(h) => {
                let mut body = vec![0u8; h.remaining_length];
                s.read_exact(&mut body).await?;
                return Ok((h.first_byte, body));
            }
            Err(mqtt_lb::mqtt::FrameError::Incomplete(_)) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

/// Sends CONNECT, expects a successful CONNACK.
async fn mqtt_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, client_id: &str, keep_alive: u16) {
    s.write_all(&connect_v311(client_id, keep_alive)).await.expect("send CONNECT");
    s.flush().await.expect("flush CONNECT");
    let ack = tokio::time::timeout(STEP_TIMEOUT, read_packet(s)).await.expect("CONNACK in time").expect("CONNACK");
    assert_eq!(ack, (0x20, vec![0x00, 0x00]), "{client_id}: CONNACK accepted");
}

/// Connects over plain TCP, CONNECT, CONNACK.
async fn raw_client(addr: SocketAddr, client_id: &str, keep_alive: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    mqtt_handshake(&mut s, client_id, keep_alive).await;
    s
}

/// Subscribes to `filter` and waits for the SUBACK.
async fn raw_subscribe<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, filter: &str) {
    s.write_all(&subscribe(filter)).await.expect("send SUBSCRIBE");
    s.flush().await.expect("flush SUBSCRIBE");
    let (first, body) =
        tokio::time::timeout(STEP_TIMEOUT, read_packet(s)).await.expect("SUBACK in time").expect("SUBACK");
    assert_eq!((first, body), (0x90, vec![0x00, 0x01, 0x00]), "SUBACK granting QoS 0");
}

// ---------------------------------------------------------------------------------------------------------------
// 1. A broker killed mid-stream.

/// Broker b0 is killed (SIGKILL) while it streams messages to ten clients and b1 streams to ten others. b0's
/// clients see their connections end promptly; b1's keep receiving, untouched. Before that, a burst of 200 short
/// connections (and bad ones: garbage, a TLS handshake abandoned, a close before CONNECT). After everyone has
/// left, the proxy's file descriptors and tasks are back to where they started: nothing leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_closes_only_its_clients_and_nothing_leaks() {
    let _serial = serial().await;
    bounded(Duration::from_secs(60), "test", async {
        let mut cluster = Cluster::start(2).await;
        let proxy = TestProxy::start(&cluster.yaml().build()).await;
        let tls = cluster.pki.client_config();
        let placement = Placement::new(&proxy.config);
        // One connection through the proxy first, so that lazily created state (TLS session cache, metrics
        // families, the runtime's worker state) is part of the baseline.
        which_broker(proxy.mqtts, Some(tls.clone()), "warm-up", Version::V4).await;
        let fds_before = low_water(open_fds).await;
        let tasks_before = alive_tasks();

        // A burst of short-lived connections, good and bad, 20 at a time.
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..200usize {
            let (tls, addr) = (tls.clone(), proxy.mqtts);
            burst.spawn(async move {
                match i % 10 {
                    // Garbage instead of a TLS ClientHello.
                    7 => {
                        let mut s = TcpStream::connect(addr).await.expect("connect");
                        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                        let mut sink = Vec::new();
                        let _ = tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut sink)).await;
                    }
                    // TLS up, then closed before any CONNECT.
                    8 => drop(tls_connect(addr, tls).await.expect("TLS")),
                    // Not a CONNECT: refused.
                    9 => {
                        let answer = tls_exchange(addr, tls, &[0x30, 0x00], STEP_TIMEOUT).await;
                        assert_eq!(answer, Ok(Vec::new()), "a PUBLISH first is closed without an answer");
                    }
                    _ => {
                        let mut s = tls_connect(addr, tls).await.expect("TLS");
                        mqtt_handshake(&mut s, &format!("burst-{i}"), 30).await;
                        s.write_all(&[0xE0, 0x00]).await.expect("DISCONNECT");
                        let mut rest = Vec::new();
                        let _ = tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest)).await;
                    }
                }
            });
            if burst.len() >= 20 {
                burst.join_next().await.expect("a burst task").expect("burst connection");
            }
        }
        while let Some(r) = burst.join_next().await {
            r.expect("burst connection");
        }

        // Ten streaming clients per broker.
        let stop = Arc::new(AtomicBool::new(false));
        let mut publishers = Vec::new();
        for b in &cluster.brokers {
            let mut p = raw_client(b.socket_addr(), &format!("pub-{}", b.name), 0).await;
            let (topic, stop) = (format!("stream/{}", b.name), Arc::clone(&stop));
            publishers.push(tokio::spawn(async move {
                let message = publish(&topic, &[0x5A; 512]);
                while !stop.load(Ordering::Relaxed) {
                    if p.write_all(&message).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        let mut streams = Vec::new();
        for (server, prefix) in [("b0", "on-b0"), ("b1", "on-b1")] {
            for i in 0..10 {
                let id = id_on(&placement, &format!("{prefix}-{i}"), server);
                let mut s = tls_connect(proxy.mqtts, tls.clone()).await.expect("TLS");
                mqtt_handshake(&mut s, &id, 30).await;
                raw_subscribe(&mut s, &format!("stream/{server}")).await;
                let received = Arc::new(AtomicUsize::new(0));
                let counter = Arc::clone(&received);
                let reader = tokio::spawn(async move {
                    while let Ok((first, _)) = read_packet(&mut s).await {
                        if first >> 4 == 3 {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Instant::now()
                });
                streams.push((server, received, reader));
            }
        }
        let all_streaming = || async {
            streams.iter().all(|(_, n, _)| n.load(Ordering::Relaxed) >= 20).then_some(())
        };
        eventually(STEP_TIMEOUT, all_streaming).await.expect("every client receives its stream");

        let (fds_busy, tasks_busy) = (open_fds(), alive_tasks());
        let killed = Instant::now();
        cluster.brokers[0].stop();
        let mut survivors = Vec::new();
        for (server, received, reader) in streams {
            if server == "b0" {
                let ended = tokio::time::timeout(Duration::from_secs(3), reader)
                    .await
                    .expect("a client of the killed broker is closed within 3 s")
                    .expect("reader task");
                let took = ended.duration_since(killed);
                assert!(took < Duration::from_secs(2), "a client of b0 took {took:?} to see its end");
            } else {
                survivors.push((received.load(Ordering::Relaxed), received, reader));
            }
        }
        // b1's clients go on receiving: each gets 20 more messages, none sees an end.
        let more = || async { survivors.iter().all(|(at_kill, n, _)| n.load(Ordering::Relaxed) >= at_kill + 20).then_some(()) };
        eventually(STEP_TIMEOUT, more).await.expect("b1's clients keep receiving after b0 died");
        assert!(survivors.iter().all(|(_, _, r)| !r.is_finished()), "a client of b1 lost its connection");

        // Everyone leaves; nothing may stay behind.
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.await.expect("publisher");
        }
        for (_, _, r) in &survivors {
            r.abort();
        }
        for (_, _, r) in survivors {
            let _ = r.await;
        }
        metric_becomes(proxy.admin, "mqttlb_connections_active{listener=\"mqtts\"}", 0.0, STEP_TIMEOUT).await;
        eprintln!("baseline: {fds_before} fds, {tasks_before} tasks; with 20 streams open and 200 connections done: {fds_busy} fds, {tasks_busy} tasks");
        settles_to(open_fds, fds_before, STEP_TIMEOUT, "open file descriptors").await;
        settles_to(alive_tasks, tasks_before, STEP_TIMEOUT, "alive tasks").await;
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Black holes.

/// A fake broker that accepts TCP connections and never sends a byte (nor closes): what a hung broker process or a
/// stuck VM looks like from outside. A real mosquitto cannot be told to do this. Connections are held until drop.
struct SilentBroker {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBroker {
    async fn start() -> SilentBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the silent broker");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        SilentBroker { addr, task }
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address whose TCP connects hang: a listener with an accept queue of one, filled by a connection of ours and
/// never accepted, so the kernel drops further SYNs (what a host behind a firewall that drops packets looks like).
/// A real broker cannot do this on purpose.
struct SynBlackHole {
    addr: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl SynBlackHole {
    async fn start() -> SynBlackHole {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let listener = socket.listen(0).expect("listen with an accept queue of one");
        let addr = listener.local_addr().expect("its address");
        let filler = TcpStream::connect(addr).await.expect("the connection that fills the queue");
        let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(probe.is_err(), "a connect to the full accept queue completed: the black hole does not work here");
        SynBlackHole { addr, _listener: listener, _filler: filler }
    }
}

/// A server that accepts and never answers: the MQTT health probe times out (500 ms) and takes it down, and then its
/// clients land on the other broker. Then a server whose connects hang, with health checks off: the backend's
/// `connect_timeout` fires for each client, which goes on to the next server, or (when it was the only one) gets a
/// CONNACK "server unavailable": 0x03 in 3.1.1, 0x88 in 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_brokers_time_out_and_clients_go_elsewhere_or_get_server_unavailable() {
    let _serial = serial().await;
    bounded(Duration::from_secs(60), "test", async {
        let cluster = Cluster::start(1).await;
        let tls = cluster.pki.client_config();

        // Accepts, never answers; MQTT health probes every 200 ms, timeout 500 ms, fall 2.
        let silent = SilentBroker::start().await;
        let started = Instant::now();
        let proxy = TestProxy::start(&cluster.yaml().server("silent", silent.addr).build()).await;
        let placement = Placement::new(&proxy.config);
        let id = id_on(&placement, "to-silent", "silent");
        proxy.wait_server_up("silent", false, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "down after {took:?}: before the probe's 500 ms timeout");
        let failures = "mqttlb_health_probe_failures_total{backend=\"brokers\",server=\"silent\"}";
        assert!(metric(proxy.admin, failures).await >= 1.0, "the probe failure is counted");
        assert_eq!(metric(proxy.admin, "mqttlb_server_up{backend=\"brokers\",server=\"b0\"}").await, 1.0);
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id, Version::V4).await, "b0");
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id, Version::V5).await, "b0");
        proxy.stop().await;

        // Connects hang; no health checks, so only the connect timeout can save the client.
        let hole = SynBlackHole::start().await;
        let with_b0 = cluster
            .yaml()
            .server("hole", hole.addr)
            .health("none", "1s", "1s", 1, 1)
            .build()
            .replace("connect_timeout: 2s", "connect_timeout: 500ms");
        let proxy = TestProxy::start(&with_b0).await;
        let placement = Placement::new(&proxy.config);
        let id = id_on(&placement, "to-hole", "hole");
        let t = Instant::now();
        assert_eq!(which_broker(proxy.mqtts, Some(tls.clone()), &id, Version::V4).await, "b0");
        assert!(t.elapsed() >= Duration::from_millis(450), "went to b0 after {:?}: no connect timeout?", t.elapsed());
        let errors = "mqttlb_server_connect_errors_total{backend=\"brokers\",server=\"hole\"}";
        assert_eq!(metric(proxy.admin, errors).await, 1.0);
        proxy.stop().await;

        let alone = ProxyYaml { servers: vec![("hole".into(), hole.addr.to_string(), 1)], ..cluster.yaml() }
            .health("none", "1s", "1s", 1, 1)
            .build()
            .replace("connect_timeout: 2s", "connect_timeout: 500ms");
        let proxy = TestProxy::start(&alone).await;
        for (connect, want) in [
            (connect_packet_v311("lonely-4"), vec![0x20, 0x02, 0x00, 0x03]),
            (connect_packet_v5("lonely-5"), vec![0x20, 0x03, 0x00, 0x88, 0x00]),
        ] {
            let t = Instant::now();
            let answer = tls_exchange(proxy.mqtts, tls.clone(), &connect, STEP_TIMEOUT).await.expect("an answer");
            assert_eq!(answer, want, "server unavailable");
            let took = t.elapsed();
            assert!((450..2_000).contains(&took.as_millis()), "refused after {took:?}, want about the 500 ms timeout");
        }
        let refused = "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"server_connect_failed\"}";
        assert_eq!(metric(proxy.admin, refused).await, 2.0);
        assert_eq!(metric(proxy.admin, errors).await, 2.0);
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3. A broker that resets right after its CONNACK.

/// A fake broker that accepts the CONNECT with a CONNACK, reads the client's next packet, and answers it with a TCP
/// reset (`SO_LINGER` 0, then close): a broker crashing or a middlebox killing the flow mid-session. A real
/// mosquitto closes cleanly instead.
async fn resetting_broker() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the resetting broker");
    let addr = listener.local_addr().expect("its address");
    let resets = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&resets);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                if read_packet(&mut s).await.is_err() || s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.is_err() {
                    return;
                }
                if read_packet(&mut s).await.is_ok() {
                    s.set_zero_linger().expect("SO_LINGER 0");
                    count.fetch_add(1, Ordering::Relaxed);
                    drop(s);
                }
            });
        }
    });
    (addr, resets, task)
}

/// The client of the resetting broker gets its CONNACK, then sees its connection end at its first request; the proxy
/// counts the relay and releases it; a client of a real broker through the same proxy is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_resetting_after_connack_ends_only_its_client() {
    let _serial = serial().await;
    bounded(Duration::from_secs(45), "test", async {
        let cluster = Cluster::start(1).await;
        let tls = cluster.pki.client_config();
        let (rst_addr, resets, rst_task) = resetting_broker().await;
        // Health checks off: a probe of the fake would be refused by it and take it down before the test.
        let yaml = cluster.yaml().server("rst", rst_addr).health("none", "1s", "1s", 1, 1).build();
        let proxy = TestProxy::start(&yaml).await;
        let placement = Placement::new(&proxy.config);
        let (id_ok, id_rst) = (id_on(&placement, "steady", "b0"), id_on(&placement, "doomed", "rst"));

        let mut steady =
            MqttClient::connect(proxy.mqtts, Some(tls.clone()), &id_ok, Version::V5).await.expect("steady");
        steady.round_trip("faults/steady", b"before").await.expect("a round trip before");

        let mut doomed = MqttClient::connect(proxy.mqtts, Some(tls.clone()), &id_rst, Version::V4)
            .await
            .expect("CONNACK from the fake");
        let t = Instant::now();
        assert!(doomed.subscribe("faults/doomed").await.is_err(), "no SUBACK from a reset broker");
        let why = doomed.wait_closed(Duration::from_secs(3)).await.expect("the client's connection ends");
        eprintln!("the client of the resetting broker ended after {:?}: {why}", t.elapsed());
        assert_eq!(resets.load(Ordering::Relaxed), 1, "the fake reset exactly one connection");

        let relays = "mqttlb_server_connections_total{backend=\"brokers\",server=\"rst\"}";
        assert_eq!(metric(proxy.admin, relays).await, 1.0, "the relay to the fake is counted");
        let active = "mqttlb_server_connections_active{backend=\"brokers\",server=\"rst\"}";
        metric_becomes(proxy.admin, active, 0.0, STEP_TIMEOUT).await;
        metric_becomes(proxy.admin, "mqttlb_connections_active{listener=\"mqtts\"}", 1.0, STEP_TIMEOUT).await;

        steady.round_trip("faults/steady", b"after").await.expect("a round trip after");
        assert!(steady.closed().is_none());
        steady.disconnect().await;
        rst_task.abort();
        proxy.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. A client that stops reading while its broker floods it.

/// A subscriber stops reading while a publisher pushes 256 MiB at it through its broker. The proxy reads from the
/// broker only what it can write to the client (backpressure), so its memory stays flat (grows by less than
/// 20 MiB), and a second client of the same broker keeps round trips under a second meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_no_memory_and_no_latency_to_others() {
    let _serial = serial().await;
    bounded(Duration::from_secs(90), "test", async {
        let cluster = Cluster::start(1).await;
        let broker = &cluster.brokers[0];
        let (listener, admin) = (free_addr(), free_addr());
        let yaml = format!(
            "listeners: [{{ name: mqtt, bind: \"{listener}\", protocol: mqtt, backend: brokers }}]\n\
             backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 1s, timeout: 1s, rise: 1, fall: 3 }}\n\
             \x20   servers: [{{ name: b0, address: \"{}\" }}]\nadmin: {{ bind: \"{admin}\" }}\n",
            broker.addr()
        );
        let config = cluster.dir.path().join("proxy.yaml");
        std::fs::write(&config, &yaml).expect("write the proxy config");
        // Its own process, so that its memory can be read alone.
        let proxy = LbProcess::start_quiet(&config, listener, admin).await;

        let mut slow = raw_client(listener, "slow-reader", 0).await;
        raw_subscribe(&mut slow, "flood").await;
        let mut other = MqttClient::connect(listener, None, "other", Version::V4).await.expect("other client");
        other.round_trip("other/rt", b"warm").await.expect("a first round trip");
        let rss_before = proxy.rss();
        assert!(rss_before > 0, "read the proxy's VmRSS");

        const TOTAL: usize = 256 << 20;
        let pushed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pushed);
        let mut publisher = raw_client(broker.socket_addr(), "flooder", 0).await;
        let flood = tokio::spawn(async move {
            let message = publish("flood", &vec![0xAB; 64 * 1024]);
            // Paced over about two seconds (64 bursts of 4 MiB), so the other client's round trips run during it.
            while counter.load(Ordering::Relaxed) < TOTAL {
                for _ in 0..64 {
                    publisher.write_all(&message).await.expect("the broker takes the flood");
                    counter.fetch_add(message.len(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            publisher
        });

        let (mut rss_peak, mut worst) = (rss_before, Duration::ZERO);
        let mut round_trips = 0;
        while !flood.is_finished() || round_trips < 5 {
            let t = Instant::now();
            other.publish("other/rt", b"ping", false).await.expect("publish during the flood");
            other.next_publish("other/rt", STEP_TIMEOUT).await.expect("round trip during the flood");
            worst = worst.max(t.elapsed());
            round_trips += 1;
            rss_peak = rss_peak.max(proxy.rss());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _publisher = flood.await.expect("flood task");
        rss_peak = rss_peak.max(proxy.rss());
        let to_clients = metric(admin, "mqttlb_server_received_bytes_total{backend=\"brokers\",server=\"b0\"}").await;
        let grew = rss_peak.saturating_sub(rss_before);
        eprintln!(
            "pushed {} MiB; proxy read {:.1} MiB from the broker; RSS {} -> {} KiB (+{} KiB); {round_trips} round trips, worst {worst:?}",
            pushed.load(Ordering::Relaxed) >> 20,
            to_clients / 1048576.0,
            rss_before / 1024,
            rss_peak / 1024,
            grew / 1024
        );
        assert!(pushed.load(Ordering::Relaxed) >= TOTAL);
        assert!(round_trips >= 10, "only {round_trips} round trips during the flood");
        assert!(grew < 20 << 20, "the proxy grew by {} KiB", grew / 1024);
        assert!(to_clients < f64::from(64 << 20), "the proxy read {to_clients} bytes for a client that reads nothing");
        assert!(worst < Duration::from_secs(1), "a round trip of the other client took {worst:?}");

        // The slow client still holds a live connection: it can read what was relayed to it.
        let (first, _) = tokio::time::timeout(STEP_TIMEOUT, read_packet(&mut slow)).await.expect("data").expect("a packet");
        assert_eq!(first >> 4, 3, "a PUBLISH waits for the slow client");
        drop(slow);
        other.disconnect().await;
        metric_becomes(admin, "mqttlb_connections_active{listener=\"mqtt\"}", 0.0, STEP_TIMEOUT).await;
    })
    .await;
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Five thousand clients at once.

/// 5,000 clients connect at the same moment (raw TCP and a 3.1.1 CONNECT each, on a plain listener: TLS handshakes
/// would measure the test machine's CPU, not the proxy) and all get a successful CONNACK from their broker; they
/// are all relayed at once, then all released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_clients_connecting_at_once_all_get_their_connack() {
    const CLIENTS: usize = 5_000;
    let _serial = serial().await;
    // Three sockets per client in this process (client, proxy's client side, proxy's server side).
    let (soft, hard) = fd_limits();
    assert!(hard >= 3 * CLIENTS as u64 + 1_000, "the hard limit of open files ({hard}) is too low for this test");
    if soft < 3 * CLIENTS as u64 + 1_000 {
        raise_fd_limit(hard);
    }
    bounded(Duration::from_secs(60), "test", async {
        let cluster = Cluster::start(2).await;
        let yaml = plain(&cluster.yaml().build()).replace("connect_timeout: 2s", "connect_timeout: 10s");
        let proxy = TestProxy::start(&yaml).await;
        let addr = proxy.mqtts;
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let start = Arc::clone(&start);
            clients.spawn(async move {
                start.wait().await;
                let mut s = TcpStream::connect(addr).await.map_err(|e| format!("client {i}: connect: {e}"))?;
                s.write_all(&connect_v311(&format!("herd-{i}"), 60)).await.map_err(|e| format!("client {i}: {e}"))?;
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack).await.map_err(|e| format!("client {i}: no CONNACK: {e}"))?;
                if ack != [0x20, 0x02, 0x00, 0x00] {
                    return Err(format!("client {i}: CONNACK {ack:02x?}"));
                }
                Ok(s)
            });
        }
        let t = Instant::now();
        start.wait().await;
        let mut open = Vec::with_capacity(CLIENTS);
        let mut failures = Vec::new();
        while let Some(r) = clients.join_next().await {
            match r.expect("client task") {
                Ok(s) => open.push(s),
                Err(e) => failures.push(e),
            }
        }
        let took = t.elapsed();
        eprintln!("{} of {CLIENTS} clients got their CONNACK in {took:?}", open.len());
        assert!(
            failures.is_empty(),
            "{} clients failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert_eq!(metric(proxy.admin, "mqttlb_connections_active{listener=\"mqtts\"}").await, CLIENTS as f64);
        let on = |b: &str| format!("mqttlb_server_connections_active{{backend=\"brokers\",server=\"{b}\"}}");
        let (b0, b1) = (metric(proxy.admin, &on("b0")).await, metric(proxy.admin, &on("b1")).await);
        assert_eq!(b0 + b1, CLIENTS as f64, "every client is relayed");
        assert!(b0 > 2_000.0 && b1 > 2_000.0, "spread over both brokers: {b0} / {b1}");
        drop(open);
        metric_becomes(proxy.admin, "mqttlb_connections_active{listener=\"mqtts\"}", 0.0, Duration::from_secs(20))
            .await;
        proxy.stop().await;
    })
    .await;
}

fn fd_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Raises this process's soft limit of open files to `to` (at most the hard limit), with prlimit(1) on our PID.
fn raise_fd_limit(to: u64) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={to}:{to}"))
        .status();
    assert!(matches!(status, Ok(s) if s.success()), "raise the open files limit to {to} with prlimit: {status:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 6. A half-open client.

/// A client connects with a keep alive of 1 s and then goes silent without closing (a device that lost its network:
/// no FIN ever comes). Keep alive is the broker's job: mosquitto closes the session after 1.5 x keep alive (it checks
/// every few seconds: about 5 s here). The proxy passes the close on (FIN to the client) and, since the client never
/// closes its side, frees the relay `HALF_CLOSED_TIMEOUT` (5 s) later instead of holding it for ever: the bug this
/// test found (the relay waited for the client's end of stream). mqtt-lb's own keep-alive deadline, which would
/// close the relay at 1.5 s (tests/accept_limits.rs), is turned off here to follow the broker's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_client_is_closed_after_the_brokers_keepalive_and_its_relay_freed() {
    let _serial = serial().await;
    bounded(Duration::from_secs(45), "test", async {
        let cluster = Cluster::start(1).await;
        let tls = cluster.pki.client_config();
        let proxy = TestProxy::start(&cluster.yaml().limits("keep_alive_factor: 0").build()).await;
        let mut silent = tls_connect(proxy.mqtts, tls).await.expect("TLS");
        mqtt_handshake(&mut silent, "half-open", 1).await;
        let t = Instant::now();
        let active = "mqttlb_connections_active{listener=\"mqtts\"}";
        assert_eq!(metric(proxy.admin, active).await, 1.0);

        // From here the client neither reads nor writes. The broker gives up after 1.5 s; the proxy must follow.
        metric_becomes(proxy.admin, active, 0.0, Duration::from_secs(20)).await;
        let took = t.elapsed();
        eprintln!("the relay of the silent client was freed after {took:?}");
        let earliest = Duration::from_millis(1_400) + mqtt_lb::relay::HALF_CLOSED_TIMEOUT;
        assert!(took >= earliest, "freed after {took:?}, before the keep alive and the half-closed grace ran out");
        let server_active = "mqttlb_server_connections_active{backend=\"brokers\",server=\"b0\"}";
        assert_eq!(metric(proxy.admin, server_active).await, 0.0);
        assert!(
            cluster.brokers[0].log().contains("half-open has exceeded timeout"),
            "mosquitto closed it for its keep alive: {}",
            cluster.brokers[0].log()
        );
        // The client's side is closed: it reads the end of the stream (TLS close or EOF), nothing else.
        let mut rest = Vec::new();
        let end = tokio::time::timeout(STEP_TIMEOUT, silent.read_to_end(&mut rest)).await.expect("closed");
        assert!(rest.is_empty(), "no data for the silent client: {rest:02x?}");
        assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof), "{end:?}");
        proxy.stop().await;
    })
    .await;
}
