//! A broker killed under load, through the real binary and three real mosquitto brokers: its clients all reconnect at
//! once, and each surviving broker sees them arrive at no more than its `servers[].max_connection_rate`, counted AT
//! THE BROKER (a counting forwarder in front of each survivor, not mqtt-lb's metrics); every client is connected
//! again, none of them on the dead broker.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// New connections per second each broker may see.
const RATE: usize = 5;
/// Clients per broker: the killed broker's 20 reconnect at once, about 10 to each survivor, twice its rate.
const PER_BROKER: usize = 20;
/// What the test's client ids start with: how a forwarder tells a client from a health probe.
const MARKER: &str = "storm";

/// One plain MQTT 3.1.1 connection whose CONNACK accepts.
async fn connect(lb: SocketAddr, id: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(lb).await.ok()?;
    s.write_all(&connect_packet_v311(id)).await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut ack)).await.ok()?.ok()?;
    (ack == [0x20, 0x02, 0x00, 0x00]).then_some(s)
}

/// A device: connects, holds the connection until the server side ends it, reconnects at once; retries 100 ms after
/// a refusal. `connected` counts the devices connected now.
async fn device(lb: SocketAddr, id: String, connected: Arc<AtomicUsize>) {
    loop {
        let Some(mut s) = connect(lb, &id).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connected.fetch_add(1, Ordering::SeqCst);
        let mut scratch = [0u8; 64];
        while matches!(s.read(&mut scratch).await, Ok(n) if n > 0) {}
        connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A plain `mqtt` listener in front of b1, b2 and b3, each with `caps`; TCP health checks every 100 ms, so the killed
/// broker leaves placement at once. Returns the config path, the listener and the admin address.
fn write_config(
    dir: &Path,
    b1: &str,
    b2: SocketAddr,
    b3: SocketAddr,
    caps: &str,
) -> (std::path::PathBuf, SocketAddr, SocketAddr) {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listeners:\n  - {{ name: mqtt, bind: \"127.0.0.1:{port}\", protocol: mqtt, backend: brokers }}\n\
         backends:\n  - name: brokers\n    queue_timeout: 9s\n\
         \x20   health: {{ check: tcp, interval: 100ms, timeout: 1s, rise: 1, fall: 1 }}\n    servers:\n\
         \x20     - {{ name: b1, address: \"{b1}\"{caps} }}\n\
         \x20     - {{ name: b2, address: \"{b2}\"{caps} }}\n\
         \x20     - {{ name: b3, address: \"{b3}\"{caps} }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n\
         limits: {{ connect_timeout: 10s }}\n"
    );
    let path = dir.join("mqtt-lb.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], admin_port)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_brokers_clients_reach_each_survivor_at_no_more_than_its_max_connection_rate() {
    bounded(Duration::from_secs(60), "broker killed under max_connection_rate", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut b1 = Mosquitto::start(dir.path(), "b1").await;
        let b2 = Mosquitto::start(dir.path(), "b2").await;
        let b3 = Mosquitto::start(dir.path(), "b3").await;
        let (f2, seen2) = counting_forwarder(b2.socket_addr(), Some(MARKER)).await;
        let (f3, seen3) = counting_forwarder(b3.socket_addr(), Some(MARKER)).await;
        let caps = format!(", max_connection_rate: {RATE}");
        let (config, lb_addr, admin) = write_config(dir.path(), &b1.addr(), f2, f3, &caps);
        let placement = Placement::new(&mqtt_lb::config::load(&config).expect("the test config loads"));
        let ids: Vec<(String, &str)> = ["b1", "b2", "b3"]
            .into_iter()
            .flat_map(|server| {
                let placement = &placement;
                (0..PER_BROKER).map(move |i| (id_on(placement, &format!("{MARKER}{server}x{i}"), server), server))
            })
            .collect();
        let _lb = LbProcess::start(&config, admin).await;

        let connected = Arc::new(AtomicUsize::new(0));
        let devices: Vec<_> =
            ids.iter().map(|(id, _)| tokio::spawn(device(lb_addr, id.clone(), Arc::clone(&connected)))).collect();
        let all = ids.len();
        let everyone = || {
            let connected = Arc::clone(&connected);
            async move { (connected.load(Ordering::SeqCst) == all).then_some(()) }
        };
        // 20 per broker at 5 a second: about 4 s.
        assert!(eventually(Duration::from_secs(20), everyone).await.is_some(), "all {all} clients connect first");

        let killed = Instant::now();
        b1.stop();
        assert!(
            eventually(Duration::from_secs(20), || {
                let connected = Arc::clone(&connected);
                async move { (connected.load(Ordering::SeqCst) < all).then_some(()) }
            })
            .await
            .is_some(),
            "the killed broker's clients are cut"
        );
        assert!(eventually(Duration::from_secs(25), everyone).await.is_some(), "every client is connected again");

        let (after2, after3) = {
            let (s2, s3) = (seen2.lock().expect("accepts").clone(), seen3.lock().expect("accepts").clone());
            (s2.iter().filter(|t| **t >= killed).count(), s3.iter().filter(|t| **t >= killed).count())
        };
        assert_eq!(after2 + after3, PER_BROKER, "the killed broker's clients, and only they, went to the survivors");
        for (name, seen) in [("b2", &seen2), ("b3", &seen3)] {
            let times = seen.lock().expect("accepts").clone();
            let busiest = busiest_window(&times, killed);
            assert!(
                busiest <= RATE,
                "{name} saw {busiest} new clients within {CAP_WINDOW:?} after the kill (cap {RATE} a second)"
            );
            let whole = busiest_window(&times, times.first().copied().unwrap_or(killed));
            assert!(whole <= RATE, "{name} saw {whole} new clients within {CAP_WINDOW:?} (cap {RATE} a second)");
        }
        for d in devices {
            d.abort();
        }
    })
    .await;
}
