//! A health probe that cannot run because mqtt-lb itself is out of file descriptors says nothing about the server:
//! against the real binary with a 64-file limit, filled by idle client connections, the server stays up and the
//! probes are counted in `mqttlb_health_probe_local_errors_total`.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use binary::LbProcess;
use common::*;
use tokio::net::TcpStream;

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_failing_with_emfile_do_not_take_the_server_down() {
    bounded(Duration::from_secs(60), "test", async {
        let cluster = Cluster::start(1).await;
        let (listener, admin) = (free_addr(), free_addr());
        // fall: 1, so that a single failed probe would take the server down.
        let yaml = format!(
            "listeners: [{{ name: mqtt, bind: \"{listener}\", protocol: mqtt, backend: brokers }}]\n\
             backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 100ms, timeout: 1s, rise: 1, fall: 1 }}\n\
             \x20   servers: [{{ name: b0, address: \"{}\" }}]\n\
             admin: {{ bind: \"{admin}\" }}\nlimits: {{ connect_timeout: 30s }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
            cluster.brokers[0].addr()
        );
        let config = cluster.dir.path().join("mqtt-lb.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let lb = LbProcess::start_with_open_files(&config, admin, Some(64)).await;
        let up = "mqttlb_server_up{backend=\"brokers\",server=\"b0\"}";
        assert_eq!(metric(admin, up).await, 1.0);

        // Idle connections (no CONNECT) until mqtt-lb can accept no more: it holds every file it may open.
        let mut idle = Vec::new();
        for _ in 0..100 {
            idle.push(TcpStream::connect(listener).await.expect("connect (the kernel queues what mqtt-lb cannot take)"));
        }
        let out_of_files = eventually(Duration::from_secs(10), || async {
            lb.log().contains("Too many open files").then_some(())
        });
        assert!(out_of_files.await.is_some(), "mqtt-lb never ran out of files; log:\n{}", lb.log());
        // Probes run every 100 ms: wait for a verdict either way.
        let verdict = eventually(Duration::from_secs(10), || async {
            let log = lb.log();
            (log.contains("server is DOWN") || log.contains("health probe could not run")).then_some(())
        });
        assert!(verdict.await.is_some(), "no probe ran out of files; log:\n{}", lb.log());
        let log = lb.log();
        assert!(!log.contains("server is DOWN"), "a local EMFILE took the server down; log:\n{log}");

        drop(idle);
        let local_errors = "mqttlb_health_probe_local_errors_total{backend=\"brokers\",server=\"b0\"}";
        let counted = eventually(STEP_TIMEOUT, || async {
            let text = try_http_get(admin, "/metrics").await.ok()?.1;
            Some((metric_in(&text, up)?, metric_in(&text, local_errors)?))
        });
        let (up_now, local) = counted.await.expect("/metrics answers once the files are free");
        eprintln!("after the shortage: server up {up_now}, {local} probes counted as local errors");
        assert_eq!(up_now, 1.0, "the server stayed up");
        assert!(local >= 1.0, "the probes that could not run are counted: {local}");
    })
    .await;
}
