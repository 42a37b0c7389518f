//! Admission behind trusted proxies and with a full rate table, against the real binary and a real mosquitto.
//!
//! - A listener's `trusted_proxies` carry many clients over one source address: `allowed_sources`,
//!   `max_connections_per_ip` and `max_connection_rate_per_ip` apply to the client each PROXY header names, not to the
//!   proxy (which used to be refused at its sixth connection with a per-IP limit of 5).
//! - The per-IP rate table full of live buckets still admits new addresses, each evicting one bucket (it used to
//!   refuse every new address and scan the whole table for each).

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `mqtt` listener on a free port whose connections from 127.0.0.1 start with a PROXY header, `extra` keys on
/// it, `limits` as given, one mosquitto behind. Returns (config file, listener, admin).
fn write_config(
    dir: &Path,
    broker: &Mosquitto,
    extra: &str,
    limits: &str,
) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: edge, bind: \"127.0.0.1:{port}\", protocol: mqtt, backend: brokers, \
         trusted_proxies: [\"127.0.0.1/32\"]{extra} }}\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n    servers:\n\
         \x20     - {{ name: {}, address: \"{}\" }}\n\
         limits: {{ {limits} }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
        broker.name,
        broker.addr(),
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], admin_port)))
}

/// A connection from 127.0.0.1 (the trusted proxy) whose v1 PROXY header names `client`, then a 3.1.1 CONNECT:
/// the open connection once mosquitto's CONNACK 0 came back, or what came instead (the bytes before the close).
async fn through_proxy(front: SocketAddr, client: &str, client_id: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(front).await.map_err(|e| format!("connect: {e}"))?;
    let mut bytes = format!("PROXY TCP4 {client} 192.0.2.200 40000 1883\r\n").into_bytes();
    bytes.extend_from_slice(&connect_packet_v311(client_id));
    s.write_all(&bytes).await.map_err(|e| format!("write: {e}"))?;
    let mut answer = [0u8; 4];
    match tokio::time::timeout(STEP_TIMEOUT, s.read_exact(&mut answer)).await {
        Ok(Ok(_)) if answer == [0x20, 0x02, 0x00, 0x00] => Ok(s),
        Ok(Ok(_)) => Err(format!("answer {answer:02x?}")),
        Ok(Err(e)) => Err(format!("closed: {e}")),
        Err(_) => panic!("{client_id}: neither an answer nor a close within {STEP_TIMEOUT:?}"),
    }
}

/// `mqttlb_connections_rejected_total` of the listener for `reason`.
async fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    metric(admin, &format!("mqttlb_connections_rejected_total{{listener=\"edge\",reason=\"{reason}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_and_allowed_sources_apply_to_the_client_a_trusted_proxy_names() {
    bounded(Duration::from_secs(40), "admission behind a trusted proxy", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        let allowed = ", allowed_sources: [\"203.0.113.0/24\", \"198.51.100.0/24\"]";
        let (config, front, admin) = write_config(dir.path(), &broker, allowed, "max_connections_per_ip: 5");
        let lb = LbProcess::start(&config, admin).await;
        let mut held = Vec::new();

        // Eight clients through one proxy address, with a per-IP limit of 5: each is its own address. The proxy
        // itself (127.0.0.1) is not in `allowed_sources` either: listing it in `trusted_proxies` lets it in.
        for i in 1..=8 {
            let client = format!("203.0.113.{i}");
            let s = through_proxy(front, &client, &format!("distinct-{i}")).await;
            held.push(s.unwrap_or_else(|e| panic!("client {client} through the proxy: {e}\n{}", lb.log())));
        }
        // Five from one client address are its limit; the sixth naming it is refused, without an answer (as a
        // direct client over its limit is at accept: no CONNACK before the client's version is known).
        for i in 1..=5 {
            held.push(through_proxy(front, "198.51.100.9", &format!("same-{i}")).await.expect("under the limit"));
        }
        let sixth = through_proxy(front, "198.51.100.9", "same-6").await;
        assert!(sixth.as_ref().is_err_and(|e| e.starts_with("closed")), "the sixth is refused: {:?}", sixth.err());
        assert_eq!(rejected(admin, "max_connections_per_ip").await, 1.0);

        // `allowed_sources` applies to the named client; a direct client that is not a trusted proxy is checked at
        // accept as before.
        let outside = through_proxy(front, "192.0.2.1", "outside").await;
        assert!(outside.is_err(), "a client outside allowed_sources behind the proxy");
        let mut direct = connect_from([127, 0, 0, 2], front).await;
        direct.write_all(&connect_packet_v311("direct")).await.expect("write");
        let mut got = Vec::new();
        let read = tokio::time::timeout(STEP_TIMEOUT, direct.read_to_end(&mut got)).await.expect("closed in time");
        assert!(read.is_err() || got.is_empty(), "refused at accept: {got:02x?}");
        assert_eq!(rejected(admin, "source_not_allowed").await, 2.0);

        // A client's count is released when one of its connections closes.
        let one = held.pop().expect("a connection of 198.51.100.9");
        drop(one);
        let again = eventually(Duration::from_secs(5), || async {
            through_proxy(front, "198.51.100.9", "same-again").await.ok()
        })
        .await;
        assert!(again.is_some(), "a freed place admits the client again");
        assert_eq!(broker.client_ids_seen().iter().filter(|c| c.starts_with("distinct-")).count(), 8);
        drop(held);
        lb.stop().await;
    })
    .await;
}

/// A connection from the loopback source address `src`.
async fn connect_from(src: [u8; 4], dst: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((src, 0))).expect("bind a loopback address");
    socket.connect(dst).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_table_full_of_live_buckets_admits_new_addresses_one_eviction_each() {
    bounded(Duration::from_secs(60), "full rate table", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Mosquitto::start(dir.path(), "b0").await;
        // 1 new connection per second per address, bursts of 30: an address that spent n tokens is remembered
        // (its bucket is live) for n seconds. The table holds 4 addresses.
        let limits = "max_connection_rate_per_ip: 1, connection_rate_burst: 30, connection_rate_table_size: 4";
        let (config, front, admin) = write_config(dir.path(), &broker, "", limits);
        let lb = LbProcess::start(&config, admin).await;
        let entries = "mqttlb_connection_rate_table_entries";
        let evictions = "mqttlb_connection_rate_table_evictions_total";

        // Four addresses spend their whole burst: the table is full of buckets live for 30 s.
        for a in 1..=4 {
            for n in 0..30 {
                let s = through_proxy(front, &format!("10.0.0.{a}"), &format!("fill-{a}-{n}")).await;
                s.unwrap_or_else(|e| panic!("10.0.0.{a} connection {n}: {e}\n{}", lb.log()));
            }
        }
        // The rate applies to the address the header names: one more from the first is over it.
        assert!(through_proxy(front, "10.0.0.1", "fill-over").await.is_err(), "over the rate");
        assert_eq!(rejected(admin, "rate_limited").await, 1.0);
        assert_eq!(metric(admin, entries).await, 4.0);
        assert_eq!(metric(admin, evictions).await, 0.0);

        // Six new addresses, 15 connections each: every one is admitted (a full table refused them all), each new
        // address evicts exactly one bucket (the fullest: the newcomer before it, live for 15 s), and the table stays
        // at 4. One eviction per new address, whatever the table size: no scan.
        for a in 1..=6 {
            for n in 0..15 {
                let s = through_proxy(front, &format!("10.0.1.{a}"), &format!("new-{a}-{n}")).await;
                s.unwrap_or_else(|e| panic!("new address 10.0.1.{a} connection {n}: {e}\n{}", lb.log()));
            }
        }
        assert_eq!(metric(admin, evictions).await, 6.0, "one eviction per new address");
        assert_eq!(metric(admin, entries).await, 4.0, "the table does not grow");
        assert_eq!(rejected(admin, "rate_limited").await, 1.0, "no new address was refused");
        lb.stop().await;
    })
    .await;
}
