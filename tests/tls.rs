//! TLS termination: TLS 1.2 and TLS 1.3 clients both get through to a real broker; failed handshakes are counted
//! by kind; a client that opens TCP and never says hello is closed at `limits.handshake_timeout`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_with(pki: &TestPki, version: &'static rustls::SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(&pki.ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_clients_reach_the_broker() {
    bounded(Duration::from_secs(30), "TLS versions", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let proxy = TestProxy::start(&yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).build()).await;
        for (name, version) in [("TLS 1.2", &rustls::version::TLS12), ("TLS 1.3", &rustls::version::TLS13)] {
            let tls = client_with(&pki, version);
            let mut s = tls_connect(proxy.mqtts, tls.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.get_ref().1.protocol_version(), Some(version.version), "{name} negotiated");
            s.write_all(&connect_packet_v5(&format!("tls-{}", version.version.as_str().unwrap_or("x"))))
                .await
                .expect("write");
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await.unwrap_or_else(|e| panic!("{name}: CONNACK from the broker: {e}"));
            assert_eq!(head[0], 0x20, "{name}: CONNACK");
            assert_eq!(head[3], 0x00, "{name}: accepted");
            assert_eq!(which_broker(proxy.mqtts, Some(tls), "tls-client", Version::V4).await, "b1", "{name}");
        }
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_kind() {
    bounded(Duration::from_secs(30), "handshake failures", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let other_dir = tempfile::tempdir().expect("temp dir");
        let other = TestPki::new(other_dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let yaml =
            yaml_for(&pki, &[&broker]).health("none", "1h", "1s", 1, 1).limits("handshake_timeout: 500ms").build();
        let proxy = TestProxy::start(&yaml).await;
        let seen_before = broker.connections_seen();
        let series = |kind: &str| format!("mqttlb_tls_handshake_failures_total{{listener=\"mqtts\",kind=\"{kind}\"}}");

        // A client that does not trust the certificate aborts the handshake with an alert.
        assert!(tls_connect(proxy.mqtts, other.client_config()).await.is_err(), "untrusted certificate refused");
        // Plain MQTT on the TLS port is not a ClientHello.
        let answer = {
            let mut s = tokio::net::TcpStream::connect(proxy.mqtts).await.expect("connect");
            s.write_all(&connect_packet_v311("plain")).await.expect("write");
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("closed");
            buf
        };
        assert!(!answer.starts_with(&[0x20]), "no CONNACK to a plain client on a TLS port");
        // A client that connects and says nothing is closed at the handshake deadline.
        let start = tokio::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(proxy.mqtts).await.expect("connect");
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "closed without data");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(3), "closed after {waited:?}");

        let counts = eventually(Duration::from_secs(3), || async {
            let (_, text) = http_get(proxy.admin, "/metrics").await;
            let alert = metric_in(&text, &series("alert_received")).unwrap_or(0.0);
            let protocol = metric_in(&text, &series("protocol")).unwrap_or(0.0);
            let timeout = metric_in(&text, &series("timeout")).unwrap_or(0.0);
            (alert >= 1.0 && protocol >= 1.0 && timeout >= 1.0).then_some((alert, protocol, timeout))
        })
        .await;
        assert!(counts.is_some(), "each failure counted by kind");
        let rejected =
            metric(proxy.admin, "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"tls_handshake\"}").await;
        assert_eq!(rejected, 3.0);
        assert_eq!(broker.connections_seen(), seen_before, "nothing reached the broker");
        proxy.stop().await;
    })
    .await;
}
