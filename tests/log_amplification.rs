//! A client must not write as much log as it sends (issue 17 item 5): strings from clients reach the log of the
//! real binary, at its default level, clipped, and failed handshakes not at all (they are counted in metrics).

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use binary::LbProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS 1.3 ClientHello naming `host` (of any length) in its SNI, split into records of at most 16 KiB.
fn client_hello(host: &[u8]) -> Vec<u8> {
    let mut sni = vec![0x00];
    sni.extend_from_slice(&u16::try_from(host.len()).expect("host").to_be_bytes());
    sni.extend_from_slice(host);
    let mut sni_list = u16::try_from(sni.len()).expect("sni").to_be_bytes().to_vec();
    sni_list.extend_from_slice(&sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&u16::try_from(sni_list.len()).expect("ext").to_be_bytes());
    extensions.extend_from_slice(&sni_list);
    // supported_versions: TLS 1.3.
    extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&u16::try_from(extensions.len()).expect("extensions").to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&u32::try_from(body.len()).expect("body").to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut records = Vec::new();
    for fragment in handshake.chunks(16_384) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&u16::try_from(fragment.len()).expect("fragment").to_be_bytes());
        records.extend_from_slice(fragment);
    }
    records
}

/// Sends `bytes` and reads until the server closes (2 s at most).
async fn send_and_wait_close(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let _ = s.write_all(bytes).await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_client_strings_do_not_reach_the_log_unbounded() {
    bounded(Duration::from_secs(120), "log amplification", async {
        let setup = OneBroker::start().await;
        let (front, admin, pki) = (setup.front, setup.admin, &setup.pki);
        let mut lb = LbProcess::start(&setup.config, admin).await;
        let before = lb.log().len();

        // 200 ClientHellos with a 60,000-character server name: refused and counted, not logged at info.
        let host = vec![b'a'; 60_000];
        let hello = client_hello(&host);
        for _ in 0..200 {
            send_and_wait_close(front, &hello).await;
        }
        let (_, exposition) = http_get(admin, "/metrics").await;
        let failures: f64 = exposition
            .lines()
            .filter(|l| l.starts_with("mqttlb_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let sni_log = lb.log().len() - before;
        eprintln!("200 ClientHellos with a 60,000-character SNI: {sni_log} bytes of log, {failures} failures counted");
        assert!(sni_log < 64 << 10, "{sni_log} bytes of log");
        assert!(failures >= 200.0, "every refused handshake is counted: {failures}");

        // 100 clients with a 60,000-character client id, each relayed then gone: their lines carry it clipped.
        let id = "c".repeat(60_000);
        let connect = connect_packet_v311(&id);
        let before = lb.log().len();
        for _ in 0..100 {
            let mut s = tls_connect(front, pki.client_config()).await.expect("TLS connect");
            s.write_all(&connect).await.expect("send CONNECT");
            let mut connack = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut connack))
                .await
                .expect("CONNACK in time")
                .expect("CONNACK");
            assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted by the broker");
        }
        let closed = eventually(Duration::from_secs(10), || {
            let log = lb.log();
            async move { (log.matches("connection closed").count() >= 100).then_some(log) }
        })
        .await
        .expect("100 connection lines");
        let id_log = closed.len() - before;
        eprintln!("100 clients with a 60,000-character client id: {id_log} bytes of log");
        assert!(id_log < 100 * 1024, "{id_log} bytes of log for 100 connections");
        assert!(closed.contains("more bytes]"), "the clipped id is marked");

        lb.signal("TERM");
        lb.wait_exit(Duration::from_secs(10)).await.expect("SIGTERM stops the process");
    })
    .await;
}
