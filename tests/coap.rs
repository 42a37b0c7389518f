//! CoAP and LwM2M devices over UDP and DTLS (issue 7), end to end with real parts: libcoap's `coap-server` (plain
//! CoAP on its port P, DTLS with a pre-shared key on P+1) and `coap-client` (Debian's `libcoap3-bin`), on loopback,
//! through an in-process mqtt-lb with `protocol: coap` listeners.
//!
//! How a test learns which server answered: each server holds a resource `/whoami` whose content is its name, PUT
//! into it directly before the test (`coap-server -d` creates resources on PUT/POST); a Register (POST
//! `/rd?ep=...`) through the front door leaves its payload in `/rd` of the server that got it, read back directly.
//!
//! libcoap 4.3.1 has no DTLS Connection ID (RFC 9146) with OpenSSL or GnuTLS, so the CID tests alone use fakes
//! ([`Fakes`]): plain UDP sockets standing in for servers, receiving DTLS 1.2 record headers built by the test,
//! with CIDs as the servers would issue them (random bytes; for the node-id test, Californium's multi-node layout:
//! the server's node id, then random bytes). A real server cannot show which server received a record it cannot
//! decrypt; the fakes record exactly that.
//!
//! Processes are started and killed (by PID) by the tests; waits are bounded and event-driven (a metric reaching a
//! value, a datagram arriving). Without libcoap, the tests print "skipped" (they fail under
//! `MQTT_LB_REQUIRE_TOOLS=1`, as `scripts/test.sh` sets).

#[path = "common/binary.rs"]
mod binary;
mod common;
mod tools;

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use binary::LbProcess;
use common::{bounded, eventually, free_port, metric, TestProxy};
use mqtt_lb::balancer::{Balancer, Pool};
use mqtt_lb::config::Config;
use mqtt_lb::metrics::Metrics;
use mqtt_lb::udp::PlacementKey;

const PSK: &str = "mqtt-lb-test-psk";
const PSK_IDENTITY: &str = "device-1";
/// Bound of one client exchange (coap-client gives up after `-B 3`).
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------------
// libcoap.

struct Libcoap {
    server: PathBuf,
    client: PathBuf,
}

/// The OpenSSL builds of libcoap's examples (DTLS with PSK), or None (skipped) when not installed.
fn libcoap() -> Option<Libcoap> {
    let hint = "run scripts/install-deps.sh (Debian package libcoap3-bin)";
    let server =
        tools::find_tool("coap-server-openssl", "MQTT_LB_COAP_SERVER", &["/usr/bin/coap-server-openssl"], hint)?;
    let client =
        tools::find_tool("coap-client-openssl", "MQTT_LB_COAP_CLIENT", &["/usr/bin/coap-client-openssl"], hint)?;
    Some(Libcoap { server, client })
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    let s = StdUdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    s.local_addr().expect("its address").port()
}

/// A port P such that P and P+1 were free for UDP and TCP a moment ago (coap-server takes all four).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = free_udp_port();
        if port == u16::MAX {
            continue;
        }
        let free = StdUdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
            && StdTcpListener::bind(("127.0.0.1", port)).is_ok()
            && StdTcpListener::bind(("127.0.0.1", port + 1)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free pair of ports");
}

/// A libcoap `coap-server` on 127.0.0.1: plain CoAP on `port`, DTLS (PSK) on `port + 1`.
struct CoapServer {
    name: String,
    port: u16,
    child: Option<Child>,
}

impl CoapServer {
    /// Starts the server, waits until it answers a CoAP ping, and sets its `/whoami` to `name`.
    async fn start(lc: &Libcoap, dir: &Path, name: &str) -> CoapServer {
        let mut last = String::new();
        for attempt in 0..5 {
            let port = free_port_pair();
            let log = dir.join(format!("{name}-{attempt}.log"));
            let child = Command::new(&lc.server)
                .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "50", "-k", PSK])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("server log file"))
                .spawn()
                .expect("start coap-server");
            let mut server = CoapServer { name: name.to_owned(), port, child: Some(child) };
            let addr = server.addr();
            let pinged = eventually(Duration::from_secs(3), || {
                let addr = addr.clone();
                async move {
                    let ping = mqtt_lb::udp::coap::ping(&addr);
                    tokio::time::timeout(Duration::from_millis(200), ping).await.ok()?.ok()
                }
            })
            .await;
            if pinged.is_some() {
                let answer = request(lc, &["-m", "put", "-e", name], &format!("coap://{addr}/whoami"), None).await;
                assert_eq!(answer, "", "PUT /whoami on {name}");
                assert_eq!(server.get_direct(lc, "whoami").await, name, "{name} holds its name");
                return server;
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            server.stop();
        }
        panic!("coap-server {name} did not start: {last}");
    }

    /// `127.0.0.1:P`: plain CoAP.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:P+1`: DTLS.
    fn dtls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port + 1)
    }

    /// GET `/path` straight from the server (not through the front door).
    async fn get_direct(&self, lc: &Libcoap, path: &str) -> String {
        request(lc, &[], &format!("coap://{}/{path}", self.addr()), None).await
    }

    /// Kills the server (SIGKILL to its PID, like a crash) and reaps it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `coap-client` (from 127.0.0.1, from `local_port` if given) and returns what it printed on stdout: the
/// response payload, or notifications one per line (`-w`).
async fn request(lc: &Libcoap, args: &[&str], uri: &str, local_port: Option<u16>) -> String {
    let mut cmd = tokio::process::Command::new(&lc.client);
    cmd.args(["-B", "3", "-a", "127.0.0.1"]);
    if let Some(port) = local_port {
        cmd.args(["-p", &port.to_string()]);
    }
    cmd.args(args).arg(uri).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = bounded(STEP, &format!("coap-client {args:?} {uri}"), cmd.output()).await.expect("run coap-client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// GET through the front door.
async fn get(lc: &Libcoap, lb: SocketAddr, path: &str, local_port: Option<u16>) -> String {
    request(lc, &[], &format!("coap://{lb}/{path}"), local_port).await
}

/// An LwM2M-style Register through the front door: POST `/rd?ep=<ep>` with `payload`.
async fn register(lc: &Libcoap, lb: SocketAddr, ep: &str, payload: &str, local_port: Option<u16>) {
    request(lc, &["-m", "post", "-e", payload], &format!("coap://{lb}/rd?ep={ep}&lt=300"), local_port).await;
}

/// The servers whose `/rd` holds `payload` (read directly from each running server).
async fn holders(lc: &Libcoap, servers: &[&CoapServer], payload: &str) -> Vec<String> {
    let mut found = Vec::new();
    for s in servers.iter().filter(|s| s.child.is_some()) {
        if s.get_direct(lc, "rd").await == payload {
            found.push(s.name.clone());
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------------------------
// The proxy.

/// A proxy config: `listeners` and `backends` YAML items (indented as list items), an admin endpoint.
fn proxy_yaml(listeners: &str, backends: &str) -> String {
    format!("listeners:\n{listeners}backends:\n{backends}admin: {{ bind: \"127.0.0.1:0\" }}\n")
}

/// A `coap` backend named `name` over `servers` (name, address).
fn backend_yaml(name: &str, health: &str, servers: &[(&str, String)]) -> String {
    let mut y = format!("  - name: {name}\n    protocol: coap\n    health: {health}\n    servers:\n");
    for (n, a) in servers {
        y.push_str(&format!("      - {{ name: {n}, address: \"{a}\" }}\n"));
    }
    y
}

/// Health settings that notice a dead server within half a second.
const FAST_PING: &str = "{ check: coap-ping, interval: 100ms, timeout: 300ms, rise: 1, fall: 1 }";

/// Servers `s1` to `s<n>` in `dir`.
async fn start_servers(lc: &Libcoap, dir: &Path, n: usize) -> Vec<CoapServer> {
    let mut servers = Vec::with_capacity(n);
    for i in 1..=n {
        servers.push(CoapServer::start(lc, dir, &format!("s{i}")).await);
    }
    servers
}

/// The proxy in process: `listeners` (YAML list items) in front of the CoAP backend `backend` over `servers`, checked
/// with [`FAST_PING`].
async fn proxy_over<'a>(
    listeners: &str,
    backend: &str,
    servers: impl IntoIterator<Item = &'a CoapServer>,
) -> TestProxy {
    let servers: Vec<(&str, String)> = servers.into_iter().map(|s| (s.name.as_str(), s.addr())).collect();
    TestProxy::start(&proxy_yaml(listeners, &backend_yaml(backend, FAST_PING, &servers))).await
}

/// Where the library places `key` on `backend` of `config`, with the servers in `down` marked down.
fn place(config: &Config, backend: &str, key: PlacementKey<'_>, down: &[&str]) -> String {
    let b = config.backend(backend).expect("backend in the config").clone();
    let balancer = Balancer::new(Pool::new(b, &Metrics::new()));
    for s in &balancer.pool().servers {
        if down.contains(&s.name.as_str()) {
            s.set_up(false);
        }
    }
    let candidates = balancer.candidates(Some(&key.bytes()));
    candidates.first().map(|s| s.name.clone()).expect("a usable server")
}

fn source(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A `mqttlb_udp_*` series of listener `l` (`name{extra labels}` without the listener label).
async fn udp_metric(proxy: &TestProxy, l: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let series = match label {
        Some((k, v)) => format!("{name}{{listener=\"{l}\",{k}=\"{v}\"}}"),
        None => format!("{name}{{listener=\"{l}\"}}"),
    };
    metric(proxy.admin, &series).await
}

async fn dropped(proxy: &TestProxy, l: &str, reason: &str) -> f64 {
    udp_metric(proxy, l, "mqttlb_udp_dropped_datagrams_total", Some(("reason", reason))).await
}

async fn opened(proxy: &TestProxy, l: &str, key: &str) -> f64 {
    udp_metric(proxy, l, "mqttlb_udp_flows_opened_total", Some(("key", key))).await
}

async fn evicted(proxy: &TestProxy, l: &str, reason: &str) -> f64 {
    udp_metric(proxy, l, "mqttlb_udp_flow_evictions_total", Some(("reason", reason))).await
}

/// Waits until every flow of listener `l` has expired.
async fn wait_no_flows(proxy: &TestProxy, l: &str) {
    eventually(Duration::from_secs(5), || async {
        (udp_metric(proxy, l, "mqttlb_udp_flows_active", None).await == 0.0).then_some(())
    })
    .await
    .expect("the flows expire");
}

/// Waits until `series` reads `want`.
async fn wait_metric(proxy: &TestProxy, series: &str, want: f64) {
    let got =
        eventually(Duration::from_secs(5), || async { (metric(proxy.admin, series).await == want).then_some(()) })
            .await;
    assert!(got.is_some(), "{series} did not reach {want} (now {})", metric(proxy.admin, series).await);
}

/// `count` free local ports, chosen so that their placement by source address covers every server of `backend`
/// at least `each` times.
fn ports_covering(config: &Config, backend: &str, servers: &[&str], each: usize) -> Vec<(u16, String)> {
    let mut chosen: Vec<(u16, String)> = Vec::new();
    for _ in 0..2000 {
        let port = free_udp_port();
        if chosen.iter().any(|(p, _)| *p == port) {
            continue;
        }
        let at = place(config, backend, PlacementKey::Source(source(port)), &[]);
        if chosen.iter().filter(|(_, s)| *s == at).count() < each {
            chosen.push((port, at));
        }
        if servers.iter().all(|s| chosen.iter().filter(|(_, at)| at == s).count() >= each) {
            return chosen;
        }
    }
    panic!("could not find ports covering {servers:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

/// A GET through the front door is answered by the server the device's address hashes to, and the answer comes
/// from the front door's address (coap-client's socket is connected to it: anything else would be discarded).
#[tokio::test]
async fn get_through_the_front_door_returns_the_answering_servers_identity() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let servers = start_servers(&lc, dir.path(), 3).await;
    let listeners = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n";
    let proxy = proxy_over(listeners, "coap_servers", &servers).await;
    let lb = proxy.addrs["coap"];

    let devices = ports_covering(&proxy.config, "coap_servers", &["s1", "s2", "s3"], 1);
    for (port, expected) in &devices {
        let answer = get(&lc, lb, "whoami", Some(*port)).await;
        assert_eq!(&answer, expected, "device 127.0.0.1:{port} answered by its server (by source address)");
    }
    let n = devices.len() as f64;
    assert_eq!(opened(&proxy, "coap", "source").await, n);
    let to_client = udp_metric(&proxy, "coap", "mqttlb_udp_relayed_datagrams_total", Some(("direction", "to_client")));
    assert!(to_client.await >= n, "every answer went back through the front door");
    // Per-server counters see the flows too.
    for s in &servers {
        let series = format!("mqttlb_server_sent_bytes_total{{backend=\"coap_servers\",server=\"{}\"}}", s.name);
        assert!(metric(proxy.admin, &series).await > 0.0, "{series}");
    }
    proxy.stop().await;
}

/// The same LwM2M endpoint keeps its server across flow expiry and across a changed source port, because a
/// Register is placed by its `ep=`; a device's earlier flow moves when its Register belongs elsewhere. A request
/// that is not a Register, from a new port, is placed by its address: that part is not recoverable (documented).
#[tokio::test]
async fn lwm2m_endpoint_keeps_its_server_across_expiry_and_port_changes() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let servers = start_servers(&lc, dir.path(), 3).await;
    let listeners = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: lwm2m\n    \
                     flow_idle_timeout: 400ms\n";
    let proxy = proxy_over(listeners, "lwm2m", &servers).await;
    let lb = proxy.addrs["coap"];
    let all: Vec<&CoapServer> = servers.iter().collect();

    let ep = "urn:dev:ops:0042-sensor";
    let home = place(&proxy.config, "lwm2m", PlacementKey::Endpoint(ep.as_bytes()), &[]);
    // Ports whose own placement differs from the endpoint's: landing on `home` from them shows the `ep=` key.
    let other_ports: Vec<u16> = (0..500)
        .map(|_| free_udp_port())
        .filter(|p| place(&proxy.config, "lwm2m", PlacementKey::Source(source(*p)), &[]) != home)
        .take(3)
        .collect();
    let [p1, p2, p3] = other_ports[..] else { panic!("ports: {other_ports:?}") };

    register(&lc, lb, ep, "reg-1", Some(p1)).await;
    assert_eq!(holders(&lc, &all, "reg-1").await, vec![home.clone()], "the Register went to the endpoint's server");

    // The flow expires; the same device (same port) registers again.
    wait_no_flows(&proxy, "coap").await;
    assert!(evicted(&proxy, "coap", "idle").await >= 1.0);
    register(&lc, lb, ep, "reg-2", Some(p1)).await;
    assert_eq!(holders(&lc, &all, "reg-2").await, vec![home.clone()], "same server after the flow expired");

    // NAT rebinding: the device comes back from another port.
    register(&lc, lb, ep, "reg-3", Some(p2)).await;
    assert_eq!(holders(&lc, &all, "reg-3").await, vec![home.clone()], "same server from a new source port");
    assert_eq!(opened(&proxy, "coap", "endpoint").await, 3.0);

    // A device whose flow was placed by its address (a GET first) moves to its endpoint's server when it registers.
    let by_address = place(&proxy.config, "lwm2m", PlacementKey::Source(source(p3)), &[]);
    wait_no_flows(&proxy, "coap").await;
    let client = UdpSocket::bind(source(p3)).await.expect("bind the device's port");
    client.connect(lb).await.expect("connect");
    client.send(&coap_get(0x0101, "whoami")).await.expect("send GET");
    let answer = recv_within(&client, Duration::from_secs(3)).await.expect("an answer to the GET");
    assert!(answer.ends_with(by_address.as_bytes()), "{answer:02x?} from {by_address}");
    client.send(&coap_register(0x0102, ep, "reg-4")).await.expect("send Register");
    recv_within(&client, Duration::from_secs(3)).await.expect("an answer to the Register");
    assert_eq!(holders(&lc, &all, "reg-4").await, vec![home.clone()]);
    assert_eq!(evicted(&proxy, "coap", "replaced").await, 1.0, "the flow moved to the endpoint's server");

    // Not recoverable: a request without `ep=` from a new port goes where that address hashes.
    let answer = get(&lc, lb, "whoami", Some(p2)).await;
    assert_eq!(answer, place(&proxy.config, "lwm2m", PlacementKey::Source(source(p2)), &[]));
    proxy.stop().await;
}

/// A DTLS (PSK) exchange between libcoap's client and servers works through the front door, which passes the
/// records through untouched (it holds no key).
#[tokio::test]
async fn dtls_psk_exchange_passes_through() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let servers = [CoapServer::start(&lc, dir.path(), "s1").await, CoapServer::start(&lc, dir.path(), "s2").await];
    let listeners = "  - name: coaps\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coaps_servers\n    \
                     dtls_cid_length: 8\n";
    // A CoAP ping cannot pass DTLS: the DTLS check sends a ClientHello, which the server answers.
    let health = "{ check: dtls-hello, interval: 100ms, timeout: 300ms, rise: 1, fall: 1 }";
    let backend = backend_yaml("coaps_servers", health, &servers.each_ref().map(|s| (s.name.as_str(), s.dtls_addr())));
    let proxy = TestProxy::start(&proxy_yaml(listeners, &backend)).await;
    let lb = proxy.addrs["coaps"];

    let devices = ports_covering(&proxy.config, "coaps_servers", &["s1", "s2"], 1);
    for (port, expected) in &devices {
        let args = ["-u", PSK_IDENTITY, "-k", PSK];
        let answer = request(&lc, &args, &format!("coaps://{lb}/whoami"), Some(*port)).await;
        assert_eq!(&answer, expected, "DTLS exchange from port {port}");
    }
    // A wrong key fails at the server: the front door cannot tell, it only relays.
    let wrong = request(&lc, &["-u", PSK_IDENTITY, "-k", "not-the-key"], &format!("coaps://{lb}/whoami"), None).await;
    assert!(!wrong.contains("s1") && !wrong.contains("s2"), "no answer without the key: {wrong:?}");
    let handshake = udp_metric(&proxy, "coaps", "mqttlb_udp_relayed_datagrams_total", Some(("direction", "to_server")));
    assert!(handshake.await >= 4.0 * devices.len() as f64, "a DTLS handshake and a request per device");
    assert_eq!(dropped(&proxy, "coaps", "malformed_dtls").await, 0.0);

    // The DTLS health check against the real servers: passing while they run, failing once one is killed.
    let probes = |server: &str, what: &str| {
        let name = if what == "count" { "mqttlb_health_probe_duration_seconds_count" } else { what };
        format!("{name}{{backend=\"coaps_servers\",server=\"{server}\"}}")
    };
    let probed = eventually(Duration::from_secs(5), || async {
        (metric(proxy.admin, &probes("s1", "count")).await >= 3.0).then_some(())
    });
    probed.await.expect("probes ran");
    assert_eq!(metric(proxy.admin, &probes("s1", "mqttlb_health_probe_failures_total")).await, 0.0);
    let mut servers = servers;
    servers[1].stop();
    proxy.wait_server_up("s2", false, Duration::from_secs(5)).await;
    assert_eq!(proxy.server_up("s1").await, 1.0);
    proxy.stop().await;
}

/// RFC 9146: records carrying a Connection ID from a new source port (NAT rebinding) and after the flow expired
/// reach the server the CID was seen going to, though the hash of the CID points elsewhere; an unknown CID goes by
/// its hash, from any port. Fakes stand in for servers here (see the module docs).
#[tokio::test]
async fn dtls_connection_id_reaches_the_same_server_from_a_new_port() {
    common::init_tracing();
    let mut fakes = Fakes::start(&["f1", "f2", "f3"]).await;
    let listeners = "  - name: coaps\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: fakes\n    \
                     flow_idle_timeout: 300ms\n    dtls_cid_length: 4\n";
    let servers = fakes.servers();
    let proxy = TestProxy::start(&proxy_yaml(listeners, &backend_yaml("fakes", "{ check: none }", &servers))).await;
    let lb = proxy.addrs["coaps"];
    let mut arrivals = fakes.take_arrivals();
    let fake = |name: &str| fakes.socket(name);

    // A handshake starts from port 1: no CID yet, placed by address.
    let c1 = device_socket(lb).await;
    let hello = dtls_record(22, 0, &[], &[0x01; 40]);
    c1.send(&hello).await.expect("send ClientHello");
    let (a, seen_from, got) = next_arrival(&mut arrivals).await;
    assert_eq!(got, hello, "relayed unchanged");
    let by_address = place(&proxy.config, "fakes", PlacementKey::Source(c1.local_addr().expect("addr")), &[]);
    assert_eq!(a, by_address);
    // The server's flight comes back to the device from the front door's address.
    let server_hello = dtls_record(22, 0, &[], &[0x02; 60]);
    fake(a).send_to(&server_hello, seen_from).await.expect("fake answers");
    let (reply, reply_from) = recv_from_within(&c1, Duration::from_secs(3)).await.expect("the server's answer");
    assert_eq!((reply, reply_from), (server_hello, lb));

    // The session has a CID, chosen here so that its hash ranks another server first.
    let cid: [u8; 4] = (0u32..)
        .map(u32::to_be_bytes)
        .find(|c| place(&proxy.config, "fakes", PlacementKey::DtlsCid(c), &[]) != a)
        .expect("a CID hashing elsewhere");
    let record1 = dtls_record(25, 1, &cid, b"encrypted-1");
    c1.send(&record1).await.expect("send a CID record");
    assert_eq!(next_arrival(&mut arrivals).await.0, a, "the flow keeps its server");

    // NAT rebinding: the same CID from another port.
    let c2 = device_socket(lb).await;
    let record2 = dtls_record(25, 1, &cid, b"encrypted-2");
    c2.send(&record2).await.expect("send from a new port");
    let (at, from2, got) = next_arrival(&mut arrivals).await;
    assert_eq!((at, got), (a, record2), "the CID's server, not the CID's hash");
    assert_ne!(from2, seen_from, "a new flow (the server sees a new address; RFC 9146 servers accept it by CID)");
    fake(a).send_to(b"answer-2", from2).await.expect("fake answers the rebound device");
    let (reply, _) = recv_from_within(&c2, Duration::from_secs(3)).await.expect("answer through the new flow");
    assert_eq!(reply, b"answer-2");
    assert_eq!(opened(&proxy, "coaps", "dtls_cid_learned").await, 1.0);

    // After every flow expired, the CID is still known.
    wait_no_flows(&proxy, "coaps").await;
    let c3 = device_socket(lb).await;
    c3.send(&dtls_record(25, 1, &cid, b"encrypted-3")).await.expect("send after expiry");
    assert_eq!(next_arrival(&mut arrivals).await.0, a, "the CID outlives its flows");
    assert_eq!(opened(&proxy, "coaps", "dtls_cid_learned").await, 2.0);

    // A CID this instance never saw goes by its hash (what every instance would do); then it is known.
    let unknown = [0xEE, 0xEE, 0xEE, 0x01];
    let by_hash = place(&proxy.config, "fakes", PlacementKey::DtlsCid(&unknown), &[]);
    // Both sockets are held to the end, so the second cannot be given the first one's port (and flow).
    let devices = [device_socket(lb).await, device_socket(lb).await];
    for c in &devices {
        c.send(&dtls_record(25, 1, &unknown, b"x")).await.expect("send an unknown CID");
        assert_eq!(next_arrival(&mut arrivals).await.0, by_hash);
    }
    assert_eq!(opened(&proxy, "coaps", "dtls_cid").await, 1.0);
    assert_eq!(opened(&proxy, "coaps", "dtls_cid_learned").await, 3.0);
    assert_eq!(opened(&proxy, "coaps", "dtls_cid_node_id").await, 0.0, "no server has a node id here");
    proxy.stop().await;
}

/// Californium's multi-node Connection IDs (RFC 9146 CIDs whose first byte is the issuing server's node id,
/// `DTLS_CONNECTION_ID_NODE_ID`; here `dtls_cid_node_id`) reach their server through any mqtt-lb instance, with
/// no state: two instances with the same configuration, one of which never saw the device, send the same CID from
/// new ports to the server that issued it, though the CID's hash ranks another server first; after the flows
/// expired too. A first byte that is no server's node id goes by the hash; when the node's server is down, so
/// does its CID. Fakes stand in for servers (see the module docs).
#[tokio::test]
async fn dtls_cid_node_id_reaches_the_issuing_server_through_every_instance() {
    common::init_tracing();
    let mut fakes = Fakes::start(&["n1", "n2", "n3"]).await;
    let node_ids = [("n1", Some(1u8)), ("n2", Some(2)), ("n3", None)];
    let listeners = "  - name: coaps\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: nodes\n    \
                     flow_idle_timeout: 300ms\n    dtls_cid_length: 6\n";
    let mut backend = "  - name: nodes\n    protocol: coap\n    \
                       health: { check: tcp, interval: 100ms, timeout: 300ms, rise: 1, fall: 1 }\n    servers:\n"
        .to_owned();
    for ((name, address), (_, node)) in fakes.servers().iter().zip(node_ids) {
        let node = node.map(|n| format!(", dtls_cid_node_id: {n}")).unwrap_or_default();
        backend.push_str(&format!("      - {{ name: {name}, address: \"{address}\"{node} }}\n"));
    }
    let yaml = proxy_yaml(listeners, &backend);
    let (one, two) = (TestProxy::start(&yaml).await, TestProxy::start(&yaml).await);
    let (lb1, lb2) = (one.addrs["coaps"], two.addrs["coaps"]);
    let mut arrivals = fakes.take_arrivals();
    let by_hash = |cid: &[u8], down: &[&str]| place(&one.config, "nodes", PlacementKey::DtlsCid(cid), down);

    // The handshake from a device whose address places it on n2, through the first instance.
    let mut c1 = device_socket(lb1).await;
    for _ in 0..200 {
        if place(&one.config, "nodes", PlacementKey::Source(c1.local_addr().expect("addr")), &[]) == "n2" {
            break;
        }
        c1 = device_socket(lb1).await;
    }
    c1.send(&dtls_record(22, 0, &[], &[0x01; 40])).await.expect("send ClientHello");
    let (at, _, _) = next_arrival(&mut arrivals).await;
    assert_eq!(at, "n2", "the handshake goes by the device's address");
    // n2 issues a CID as Californium does with node id 2: the node id, then random bytes. These random bytes make
    // the CID's hash rank another server first, so only the node id can find n2.
    let cid: [u8; 6] = (0u32..)
        .map(|i| {
            let [a, b, c, d] = i.wrapping_mul(0x9E37_79B9).to_be_bytes();
            [2, a, b, c, d, 0x5A]
        })
        .find(|c| by_hash(c, &[]) != "n2")
        .expect("a CID hashing elsewhere");
    c1.send(&dtls_record(25, 1, &cid, b"on-the-flow")).await.expect("send a CID record");
    assert_eq!(next_arrival(&mut arrivals).await.0, "n2");

    // NAT rebinding, and the device now reaches the other instance, which never saw it.
    let c2 = device_socket(lb2).await;
    let record = dtls_record(25, 1, &cid, b"rebound-at-two");
    c2.send(&record).await.expect("send through the second instance");
    let (at, from, got) = next_arrival(&mut arrivals).await;
    assert_eq!((at, got), ("n2", record), "the node id's server, not the CID's hash ({})", by_hash(&cid, &[]));
    fakes.socket("n2").send_to(b"answer", from).await.expect("n2 answers");
    let (reply, reply_from) = recv_from_within(&c2, Duration::from_secs(3)).await.expect("the answer via two");
    assert_eq!((reply.as_slice(), reply_from), (&b"answer"[..], lb2));
    // And from yet another port through the first instance.
    let c3 = device_socket(lb1).await;
    c3.send(&dtls_record(25, 1, &cid, b"rebound-at-one")).await.expect("send from a third port");
    assert_eq!(next_arrival(&mut arrivals).await.0, "n2");
    for proxy in [&one, &two] {
        assert_eq!(opened(proxy, "coaps", "dtls_cid_node_id").await, 1.0);
        assert_eq!(opened(proxy, "coaps", "dtls_cid_learned").await, 0.0);
        assert_eq!(opened(proxy, "coaps", "dtls_cid").await, 0.0);
        let remembered = udp_metric(proxy, "coaps", "mqttlb_udp_dtls_cids", None).await;
        assert_eq!(remembered, 0.0, "nothing to remember: the CID says where it goes");
    }

    // After the flows expired: still n2, on both.
    wait_no_flows(&one, "coaps").await;
    wait_no_flows(&two, "coaps").await;
    for lb in [lb1, lb2] {
        let c = device_socket(lb).await;
        c.send(&dtls_record(25, 1, &cid, b"after-expiry")).await.expect("send after expiry");
        assert_eq!(next_arrival(&mut arrivals).await.0, "n2", "after expiry via {lb}");
    }

    // A first byte that is no server's node id (n3 has none): the CID's hash, on both instances alike.
    let other: [u8; 6] = [0x7F, 1, 2, 3, 4, 5];
    for lb in [lb1, lb2] {
        let c = device_socket(lb).await;
        c.send(&dtls_record(25, 1, &other, b"no-node")).await.expect("send a CID without a node id");
        assert_eq!(next_arrival(&mut arrivals).await.0, by_hash(&other, &[]), "via {lb}");
    }
    assert_eq!(opened(&two, "coaps", "dtls_cid").await, 1.0);

    // n2 goes down (its health port closes): its sessions are gone with it, so its CIDs go by their hash over the
    // servers left, as any CID would.
    fakes.close_health_port("n2");
    one.wait_server_up("n2", false, Duration::from_secs(5)).await;
    two.wait_server_up("n2", false, Duration::from_secs(5)).await;
    let fallback = by_hash(&cid, &["n2"]);
    assert_ne!(fallback, "n2");
    for lb in [lb1, lb2] {
        let c = device_socket(lb).await;
        c.send(&dtls_record(25, 1, &cid, b"server-down")).await.expect("send while n2 is down");
        assert_eq!(next_arrival(&mut arrivals).await.0, fallback, "via {lb}");
    }
    assert_eq!(opened(&one, "coaps", "dtls_cid_node_id").await, 2.0, "1 before expiry, 1 after");
    one.stop().await;
    two.stop().await;
}

/// Killing a server moves its devices, and only them, to the next server of their ranking; the others keep their
/// flows and servers.
#[tokio::test]
async fn killing_a_server_moves_only_its_devices() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut servers = start_servers(&lc, dir.path(), 3).await;
    let listeners = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n    \
                     flow_idle_timeout: 60s\n";
    let proxy = proxy_over(listeners, "coap_servers", &servers).await;
    let lb = proxy.addrs["coap"];

    let devices = ports_covering(&proxy.config, "coap_servers", &["s1", "s2", "s3"], 2);
    for (port, expected) in &devices {
        assert_eq!(&get(&lc, lb, "whoami", Some(*port)).await, expected);
    }
    let victim = "s2";
    servers[1].stop();
    proxy.wait_server_up(victim, false, Duration::from_secs(5)).await;

    let mut moved = 0;
    for (port, before) in &devices {
        let now = get(&lc, lb, "whoami", Some(*port)).await;
        if before == victim {
            moved += 1;
            let next = place(&proxy.config, "coap_servers", PlacementKey::Source(source(*port)), &[victim]);
            assert_eq!(now, next, "device {port} of {victim} moved to its next server");
        } else {
            assert_eq!(&now, before, "device {port} of {before} stayed");
        }
    }
    assert!(moved >= 2);
    assert_eq!(evicted(&proxy, "coap", "server_down").await, f64::from(moved));
    assert_eq!(opened(&proxy, "coap", "source").await, (devices.len() + moved as usize) as f64, "no other flow moved");
    proxy.stop().await;
}

/// Oversized datagrams, malformed CoAP and DTLS headers, and a flood from one device are dropped and counted; a
/// malformed Confirmable message is rejected with a Reset; another device is served all along.
#[tokio::test]
async fn bad_input_and_floods_are_dropped_and_counted_while_others_work() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = CoapServer::start(&lc, dir.path(), "s1").await;
    let listeners = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n    \
                     max_datagram_size: 512\n    max_datagram_rate_per_flow: 50\n";
    let proxy = proxy_over(listeners, "coap_servers", [&server]).await;
    let lb = proxy.addrs["coap"];
    let series = |reason: &str| format!("mqttlb_udp_dropped_datagrams_total{{listener=\"coap\",reason=\"{reason}\"}}");

    let raw = device_socket(lb).await;
    let mut big = coap_get(0x0001, "whoami");
    big.extend_from_slice(&[0xFF; 1]);
    big.resize(600, b'x');
    raw.send(&big).await.expect("send an oversized datagram");
    wait_metric(&proxy, &series("too_large"), 1.0).await;

    // Version 2 is ignored silently (RFC 7252); a Confirmable with a reserved token length gets a Reset.
    raw.send(&[0x80, 0x01, 0x12, 0x34]).await.expect("send version 2");
    raw.send(&[0x49, 0x01, 0x12, 0x35, 1, 2, 3, 4, 5, 6, 7, 8, 9]).await.expect("send TKL 9");
    let answer = recv_within(&raw, Duration::from_secs(3)).await.expect("a Reset");
    assert_eq!(answer, [0x70, 0x00, 0x12, 0x35], "Reset with the message id, and nothing for version 2 before it");
    wait_metric(&proxy, &series("malformed_coap"), 2.0).await;
    raw.send(&[23, 0x03, 0x03, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]).await.expect("send a TLS (not DTLS) header");
    wait_metric(&proxy, &series("malformed_dtls"), 1.0).await;
    assert_eq!(metric(proxy.admin, "mqttlb_udp_flows_active{listener=\"coap\"}").await, 0.0, "no flow for garbage");

    // A flood from one device (valid NON GETs, ~10 per ms), while another device does a GET.
    let to_server = "mqttlb_udp_relayed_datagrams_total{listener=\"coap\",direction=\"to_server\"}";
    let before = metric(proxy.admin, to_server).await;
    let flooder = device_socket(lb).await;
    const FLOOD: u16 = 3000;
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        for i in 0..FLOOD {
            let mut m = coap_get(i, "whoami");
            m[0] = 0x51; // NON
            let _ = flooder.send(&m).await;
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let answer = get(&lc, lb, "whoami", None).await;
    assert_eq!(answer, "s1", "another device is served during the flood");
    flood.await.expect("flood task");
    let elapsed = started.elapsed().as_secs_f64();
    let limited = eventually(Duration::from_secs(5), || async {
        let n = metric(proxy.admin, &series("rate_limited")).await;
        let relayed = metric(proxy.admin, to_server).await - before;
        // Everything the front door received from the flooder is either relayed or counted.
        (n + relayed >= f64::from(FLOOD)).then_some((n, relayed))
    })
    .await;
    // Datagrams the kernel dropped before the front door read them are neither; allow for none here.
    let (limited, relayed) = limited.expect("every flood datagram relayed or counted");
    assert!(relayed <= 50.0 + 50.0 * elapsed + 3.0, "{relayed} relayed in {elapsed:.2}s: burst 50, then 50/s");
    assert!(limited >= f64::from(FLOOD) - relayed, "{limited} rate-limited");
    let answer = get(&lc, lb, "whoami", None).await;
    assert_eq!(answer, "s1", "and after it");
    proxy.stop().await;
}

/// Every DTLS record of a datagram is checked, on a listener with `dtls_cid_length` and on one without: a single
/// byte that starts like a DTLS 1.3 header, a CID record on a listener whose servers issue none, a CID record whose
/// length does not match, a record longer than its datagram, bytes after the last record. Each is dropped and
/// counted, opens no flow and reaches no server; a well-formed datagram of two records after them does.
#[tokio::test]
async fn malformed_dtls_records_are_dropped_counted_and_open_no_flow() {
    let mut fakes = Fakes::start(&["f1"]).await;
    let listeners = "  - { name: plain, bind: \"127.0.0.1:0\", protocol: coap, backend: dtls }\n  \
                     - { name: cid, bind: \"127.0.0.1:0\", protocol: coap, backend: dtls, dtls_cid_length: 4 }\n";
    let proxy =
        TestProxy::start(&proxy_yaml(listeners, &backend_yaml("dtls", "{ check: none }", &fakes.servers()))).await;
    let mut arrivals = fakes.take_arrivals();
    let cid = [0xC1, 0xD2, 0xE3, 0xF4];
    let hello = dtls_record(22, 0, &[], &[0x01; 40]);
    let mut overlong = dtls_record(22, 0, &[], &[0x01; 40]);
    overlong.truncate(30);
    let mut bad_cid_length = dtls_record(25, 1, &cid, b"encrypted");
    bad_cid_length[16] = 0xFF; // the length field after a 4-byte CID
    let common_cases: Vec<Vec<u8>> = vec![
        vec![0x30],
        vec![0x3F],
        vec![25],
        overlong,
        [hello.clone(), vec![0x00]].concat(),
        [hello.clone(), dtls_record(20, 0, &[], &[1])[..5].to_vec()].concat(),
    ];
    let cases = [
        (
            "plain",
            [common_cases.clone(), vec![dtls_record(25, 1, &cid, b"encrypted"), vec![0x3D, 1, 2, 3, 4, 5, 6, 7]]]
                .concat(),
        ),
        ("cid", [common_cases, vec![bad_cid_length, dtls_record(25, 1, &cid, b"")]].concat()),
    ];
    for (l, bad) in &cases {
        let device = device_socket(proxy.addrs[*l]).await;
        for datagram in bad {
            device.send(datagram).await.expect("send a malformed record");
        }
        wait_metric(
            &proxy,
            &format!("mqttlb_udp_dropped_datagrams_total{{listener=\"{l}\",reason=\"malformed_dtls\"}}"),
            bad.len() as f64,
        )
        .await;
        // Then a handshake record and a change_cipher_spec in one datagram: relayed, the first thing f1 sees.
        let good = [hello.clone(), dtls_record(20, 0, &[], &[1])].concat();
        device.send(&good).await.expect("send two records");
        let (_, _, got) = next_arrival(&mut arrivals).await;
        assert_eq!(got, good, "{l}: the well-formed datagram, and nothing before it");
        assert_eq!(opened(&proxy, l, "source").await, 1.0, "{l}: one flow, for the well-formed datagram");
    }
    proxy.stop().await;
}

/// The built binary with one coap listener `coap` (`extra` keys added to it) in front of `server`, an admin
/// endpoint, and no shutdown grace; returns it with the listener's and the admin's addresses.
async fn coap_binary(dir: &Path, server: &CoapServer, extra: &str) -> (LbProcess, SocketAddr, SocketAddr) {
    let (port, admin_port) = (free_udp_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: coap, bind: \"127.0.0.1:{port}\", protocol: coap, backend: coap_servers{extra} }}\n\
         backends:\n{}admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s }}\n",
        backend_yaml("coap_servers", FAST_PING, &[("s1", server.addr())])
    );
    let config = dir.join("mqtt-lb.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let admin = source(admin_port);
    (LbProcess::start(&config, admin).await, source(port), admin)
}

/// One GET of `/whoami` by coap-client, given one second and no retransmission: whether `s1` answered.
async fn answered_once(lc: &Libcoap, lb: SocketAddr) -> bool {
    let mut cmd = tokio::process::Command::new(&lc.client);
    cmd.args(["-B", "1", "-a", "127.0.0.1", &format!("coap://{lb}/whoami")]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let out = bounded(STEP, "coap-client", cmd.output()).await.expect("run coap-client");
    String::from_utf8_lossy(&out.stdout).trim() == "s1"
}

/// A device flooding the front door (about 30,000 valid Confirmable GETs a second, far past what a device sends) costs
/// another device nothing: with the default per-device rate limit, the front door drops the flood cheaply instead
/// of relaying it, and at least 90% of 200 single-try requests of the other device are answered while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_does_not_stop_another_devices_requests() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = CoapServer::start(&lc, dir.path(), "s1").await;
    let (lb, front, admin) = coap_binary(dir.path(), &server, "").await;
    assert_eq!(get(&lc, front, "whoami", None).await, "s1", "served before the flood");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the flooder");
            socket.connect(front).expect("connect the flooder");
            let (mut sent, started) = (0u64, Instant::now());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                for _ in 0..200 {
                    // Confirmable: each one relayed costs the server an answer, and the front door its relay back.
                    let _ = socket.send(&coap_get(sent as u16, "whoami"));
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, started.elapsed())
        })
    };
    let (mut answered, mut failed) = (0, 0);
    // Stops early once more than 20 failed: the outcome is known, and the test stays bounded.
    while answered + failed < 200 && failed <= 20 {
        if answered_once(&lc, front).await {
            answered += 1;
        } else {
            failed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, elapsed) = flood.join().expect("the flooder");
    let rate = sent as f64 / elapsed.as_secs_f64();
    let limited = dropped_at(admin, "coap", "rate_limited").await;
    let kernel = metric(admin, "mqttlb_udp_receive_queue_dropped_datagrams_total{listener=\"coap\"}").await;
    let relayed = metric(admin, "mqttlb_udp_relayed_datagrams_total{listener=\"coap\",direction=\"to_server\"}").await;
    eprintln!(
        "flood {sent} datagrams at {rate:.0}/s; {answered} answered, {failed} not; {relayed} relayed, \
         {limited} rate-limited, {kernel} dropped by the kernel"
    );
    assert!(rate > 10_000.0, "a flood: {rate:.0} datagrams/s");
    assert!(answered >= 180, "{answered} of {} answered during the flood", answered + failed);
    // The server saw at most the default limit of the flood (burst 1000, then 1000/s), beside the other device's.
    let bound = 1000.0 + 1000.0 * elapsed.as_secs_f64() + f64::from(answered + failed + 1);
    assert!(relayed <= bound, "{relayed} relayed to the server, more than {bound:.0}");
    drop(lb);
}

async fn dropped_at(admin: SocketAddr, l: &str, reason: &str) -> f64 {
    metric(admin, &format!("mqttlb_udp_dropped_datagrams_total{{listener=\"{l}\",reason=\"{reason}\"}}")).await
}

/// Datagrams the kernel drops because the listener's receive queue is full are counted: a small `receive_buffer`
/// (shown as the kernel accounts it) and a burst; every datagram of the burst is then either relayed or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_receive_queue_drops_are_counted() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = CoapServer::start(&lc, dir.path(), "s1").await;
    let (lb, front, admin) =
        coap_binary(dir.path(), &server, ", receive_buffer: 4KiB, max_datagram_rate_per_flow: 0").await;
    let buffer = metric(admin, "mqttlb_udp_receive_buffer_bytes{listener=\"coap\"}").await;
    assert!((4096.0..=16384.0).contains(&buffer), "receive buffer as the kernel accounts it: {buffer}");
    const BURST: u16 = 3000;
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    socket.connect(front).expect("connect the sender");
    for i in 0..BURST {
        let mut m = coap_get(i, "whoami");
        m[0] = 0x51; // NON
        socket.send(&m).expect("send");
    }
    // A request after the burst: answered, and it carries the kernel's drop count to the front door.
    assert_eq!(get(&lc, front, "whoami", None).await, "s1");
    let to_server = "mqttlb_udp_relayed_datagrams_total{listener=\"coap\",direction=\"to_server\"}";
    let kernel = "mqttlb_udp_receive_queue_dropped_datagrams_total{listener=\"coap\"}";
    let settled = eventually(Duration::from_secs(5), || async {
        let (relayed, dropped) = (metric(admin, to_server).await, metric(admin, kernel).await);
        (relayed + dropped >= f64::from(BURST) + 1.0).then_some((relayed, dropped))
    })
    .await;
    let (relayed, dropped) = match settled {
        Some(v) => v,
        None => panic!(
            "relayed {} + kernel drops {} < {BURST}",
            metric(admin, to_server).await,
            metric(admin, kernel).await
        ),
    };
    assert!(dropped > 0.0 && dropped < f64::from(BURST), "{dropped} dropped by the kernel");
    assert_eq!(relayed + dropped, f64::from(BURST) + 1.0, "the burst and the GET after it");
    drop(lb);
}

/// The flow table is bounded: `max_flows` evicts the least recently used flow, `max_flows_per_ip` refuses new
/// flows from an address that has its share; both counted.
#[tokio::test]
async fn flow_table_limits_are_enforced_and_counted() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = CoapServer::start(&lc, dir.path(), "s1").await;
    let listeners = "  - name: small\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n    \
                     max_flows: 2\n  - name: per_ip\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    \
                     backend: coap_servers\n    max_flows_per_ip: 2\n";
    let proxy = proxy_over(listeners, "coap_servers", [&server]).await;

    let small = proxy.addrs["small"];
    let devices = [device_socket(small).await, device_socket(small).await, device_socket(small).await];
    for (i, d) in devices.iter().enumerate() {
        d.send(&coap_get(i as u16, "whoami")).await.expect("send");
        let answer = recv_within(d, Duration::from_secs(3)).await.expect("an answer");
        assert!(answer.ends_with(b"s1"));
    }
    assert_eq!(udp_metric(&proxy, "small", "mqttlb_udp_flows_active", None).await, 2.0);
    assert_eq!(evicted(&proxy, "small", "full").await, 1.0, "the least recently used flow made room");

    let per_ip = proxy.addrs["per_ip"];
    let devices = [device_socket(per_ip).await, device_socket(per_ip).await, device_socket(per_ip).await];
    for d in &devices[..2] {
        d.send(&coap_get(7, "whoami")).await.expect("send");
        recv_within(d, Duration::from_secs(3)).await.expect("an answer");
    }
    devices[2].send(&coap_get(8, "whoami")).await.expect("send");
    let series = "mqttlb_udp_dropped_datagrams_total{listener=\"per_ip\",reason=\"max_flows_per_ip\"}";
    wait_metric(&proxy, series, 1.0).await;
    assert_eq!(get(&lc, per_ip, "whoami", None).await, "", "a fourth device from 127.0.0.1 gets no flow either");
    proxy.stop().await;
}

/// Server-initiated datagrams (observe notifications, each a new message from the server) reach the device
/// through the front door while its flow lives, and keep it alive.
#[tokio::test]
async fn observe_notifications_reach_the_device_through_the_flow() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = CoapServer::start(&lc, dir.path(), "s1").await;
    let listeners = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n    \
                     flow_idle_timeout: 2s\n";
    let proxy = proxy_over(listeners, "coap_servers", [&server]).await;
    let lb = proxy.addrs["coap"];
    // Observe /time for 3 s: the server sends the time every second.
    let out = request(&lc, &["-s", "3", "-w"], &format!("coap://{lb}/time"), None).await;
    let notifications = out.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(notifications >= 3, "the response and at least two notifications: {out:?}");
    assert_eq!(opened(&proxy, "coap", "source").await, 1.0, "one flow all along");
    proxy.stop().await;
}

/// A reload keeps a coap listener's socket and flows: flows to a server the reload removed end (their devices are
/// placed anew), the others keep their server; a coap listener added by the reload answers at once.
#[tokio::test]
async fn reload_keeps_the_socket_and_the_flows_of_remaining_servers() {
    let Some(lc) = libcoap() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let servers = [CoapServer::start(&lc, dir.path(), "s1").await, CoapServer::start(&lc, dir.path(), "s2").await];
    let listener = "  - name: coap\n    bind: \"127.0.0.1:0\"\n    protocol: coap\n    backend: coap_servers\n";
    let both = backend_yaml("coap_servers", FAST_PING, &servers.each_ref().map(|s| (s.name.as_str(), s.addr())));
    let path = dir.path().join("lb.yaml");
    std::fs::write(&path, proxy_yaml(listener, &both)).expect("write the config");
    let config = mqtt_lb::config::load(&path).expect("config");
    let server = mqtt_lb::server::Server::bind(config.clone()).await.expect("bind");
    let lb = server.listener_addr("coap").expect("the coap listener's address");
    let admin = server.admin_addr().expect("admin");
    let reload = server.reload_handle();
    let token = server.shutdown_token();
    let running = tokio::spawn(server.run());

    let devices = ports_covering(&config, "coap_servers", &["s1", "s2"], 1);
    for (port, expected) in &devices {
        assert_eq!(&get(&lc, lb, "whoami", Some(*port)).await, expected);
    }
    // s2 leaves the pool; a second coap listener appears.
    let added_port = free_udp_port();
    let added = format!(
        "  - name: coap2\n    bind: \"127.0.0.1:{added_port}\"\n    protocol: coap\n    backend: coap_servers\n"
    );
    let only_s1 = backend_yaml("coap_servers", FAST_PING, &[("s1", servers[0].addr())]);
    std::fs::write(&path, proxy_yaml(&format!("{listener}{added}"), &only_s1)).expect("write the new config");
    let summary = bounded(STEP, "reload", reload.reload()).await.expect("reload accepted");
    assert!(summary.contains("1 added"), "{summary}");

    for (port, _) in &devices {
        assert_eq!(get(&lc, lb, "whoami", Some(*port)).await, "s1", "same socket; every device on s1 now");
    }
    let series = |name: &str| format!("{name}{{listener=\"coap\",reason=\"reload\"}}");
    assert_eq!(metric(admin, &series("mqttlb_udp_flow_evictions_total")).await, 1.0, "only s2's flow ended");
    let opened = "mqttlb_udp_flows_opened_total{listener=\"coap\",key=\"source\"}";
    assert_eq!(metric(admin, opened).await, 3.0, "s1's device kept its flow; s2's got a new one");
    let added_addr = SocketAddr::from(([127, 0, 0, 1], added_port));
    assert_eq!(get(&lc, added_addr, "whoami", None).await, "s1", "the listener added by the reload");
    token.cancel();
    bounded(STEP, "shutdown", running).await.expect("server task").expect("clean shutdown");
}

// ---------------------------------------------------------------------------------------------------------------
// Raw datagrams.

type Arrival = (&'static str, SocketAddr, Vec<u8>);

/// UDP sockets on 127.0.0.1 standing in for DTLS servers (see the module docs), each with a TCP listener on the
/// same port number for `check: tcp`. Every datagram they receive goes to one channel, in arrival order.
struct Fakes {
    fakes: Vec<(&'static str, Arc<UdpSocket>)>,
    /// The tasks: one receiving each fake's datagrams, one accepting on each fake's TCP port.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    arrivals: Option<mpsc::UnboundedReceiver<Arrival>>,
}

impl Fakes {
    async fn start(names: &[&'static str]) -> Fakes {
        let (tx, arrivals) = mpsc::unbounded_channel::<Arrival>();
        let mut fakes = Fakes { fakes: Vec::new(), tasks: Vec::new(), arrivals: Some(arrivals) };
        for &name in names {
            // A TCP port whose UDP twin is free too.
            let (tcp, socket) = 'bind: {
                for _ in 0..100 {
                    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a TCP port");
                    let addr = tcp.local_addr().expect("its address");
                    if let Ok(socket) = UdpSocket::bind(addr).await {
                        break 'bind (tcp, Arc::new(socket));
                    }
                }
                panic!("no port free for both TCP and UDP");
            };
            let (rx_socket, tx) = (Arc::clone(&socket), tx.clone());
            let udp = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = rx_socket.recv_from(&mut buf).await {
                    let _ = tx.send((name, from, buf[..n].to_vec()));
                }
            });
            let health = tokio::spawn(async move {
                while let Ok((connection, _)) = tcp.accept().await {
                    drop(connection);
                }
            });
            fakes.tasks.extend([(name, udp), (name, health)]);
            fakes.fakes.push((name, socket));
        }
        fakes
    }

    /// (name, address) of each fake, for a backend.
    fn servers(&self) -> Vec<(&'static str, String)> {
        self.fakes.iter().map(|(n, s)| (*n, s.local_addr().expect("fake address").to_string())).collect()
    }

    fn socket(&self, name: &str) -> Arc<UdpSocket> {
        Arc::clone(&self.fakes.iter().find(|(n, _)| *n == name).expect("a fake").1)
    }

    /// The channel of arrivals (once).
    fn take_arrivals(&mut self) -> mpsc::UnboundedReceiver<Arrival> {
        self.arrivals.take().expect("arrivals taken once")
    }

    /// Closes the TCP listener of `name` (the health checks then fail); its UDP socket stays.
    fn close_health_port(&mut self, name: &str) {
        // The accept task is the second task of each fake; aborting it drops the listener.
        let task = self.tasks.iter().filter(|(n, _)| *n == name).nth(1).expect("the fake's accept task");
        task.1.abort();
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// The next datagram a fake server received: (fake, from, bytes).
async fn next_arrival(arrivals: &mut mpsc::UnboundedReceiver<Arrival>) -> Arrival {
    bounded(Duration::from_secs(3), "a datagram at a fake server", arrivals.recv()).await.expect("a fake server")
}

/// A UDP socket on 127.0.0.1 connected to the front door.
async fn device_socket(lb: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind a device socket");
    s.connect(lb).await.expect("connect to the front door");
    s
}

async fn recv_within(s: &UdpSocket, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(limit, s.recv(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn recv_from_within(s: &UdpSocket, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(limit, s.recv_from(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some((buf, from))
}

/// A CoAP option: delta and length below 13, or with one extension byte.
fn put_option(out: &mut Vec<u8>, delta: u16, value: &[u8]) {
    let nibble = |n: usize| if n < 13 { (n as u8, None) } else { (13u8, Some((n - 13) as u8)) };
    let (d, d_ext) = nibble(usize::from(delta));
    let (l, l_ext) = nibble(value.len());
    out.push(d << 4 | l);
    out.extend(d_ext);
    out.extend(l_ext);
    out.extend_from_slice(value);
}

/// A Confirmable GET `/path` with a one-byte token.
fn coap_get(message_id: u16, path: &str) -> Vec<u8> {
    let mut m = vec![0x41, 0x01];
    m.extend_from_slice(&message_id.to_be_bytes());
    m.push(0x5A);
    put_option(&mut m, 11, path.as_bytes());
    m
}

/// A Confirmable Register: POST `/rd?ep=<ep>` with a payload.
fn coap_register(message_id: u16, ep: &str, payload: &str) -> Vec<u8> {
    let mut m = vec![0x41, 0x02];
    m.extend_from_slice(&message_id.to_be_bytes());
    m.push(0x5B);
    put_option(&mut m, 11, b"rd");
    put_option(&mut m, 4, format!("ep={ep}").as_bytes());
    m.push(0xFF);
    m.extend_from_slice(payload.as_bytes());
    m
}

/// A DTLS 1.2 record header and payload; a `cid` makes it a `tls12_cid` record (RFC 9146 §4).
fn dtls_record(content_type: u8, epoch: u16, cid: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 0xFE, 0xFD];
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
    r.extend_from_slice(cid);
    r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

/// A server given by host name (`localhost:PORT`): its address is looked up in the background, never per datagram
/// or flow; once it has an answer, devices reach the server and its replies come back. Fakes stand in for servers.
#[tokio::test]
async fn a_server_given_by_host_name_is_resolved_off_the_datagram_path() {
    common::init_tracing();
    let mut fakes = Fakes::start(&["f1"]).await;
    let port = fakes.socket("f1").local_addr().expect("fake address").port();
    let listeners = "  - { name: coap, bind: \"127.0.0.1:0\", protocol: coap, backend: named }\n";
    let servers = [("f1", format!("localhost:{port}"))];
    let proxy = TestProxy::start(&proxy_yaml(listeners, &backend_yaml("named", "{ check: none }", &servers))).await;
    let lookups = "mqttlb_server_dns_lookups_total{backend=\"named\",server=\"f1\"}";
    wait_metric(&proxy, lookups, 1.0).await;
    let mut arrivals = fakes.take_arrivals();
    // Twenty devices, each a new flow to the named server, each answered through the front door. Each keeps its
    // socket to the end, so no device is given a port an earlier one had (whose flow it would take over).
    let mut devices = Vec::new();
    for i in 0..20u16 {
        let device = device_socket(proxy.addrs["coap"]).await;
        let get = [0x40, 0x01, (i >> 8) as u8, i as u8];
        device.send(&get).await.expect("send a GET");
        let (name, from, got) = next_arrival(&mut arrivals).await;
        assert_eq!((name, got.as_slice()), ("f1", &get[..]));
        fakes.socket("f1").send_to(b"answer", from).await.expect("fake answers");
        let reply = recv_within(&device, Duration::from_secs(3)).await.expect("the answer through the front door");
        assert_eq!(reply, b"answer");
        devices.push(device);
    }
    assert_eq!(opened(&proxy, "coap", "source").await, 20.0);
    assert_eq!(metric(proxy.admin, lookups).await, 1.0, "one lookup in all, none per flow");
    proxy.stop().await;
}
