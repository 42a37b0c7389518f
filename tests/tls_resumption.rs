//! TLS resumption across instances (`tls.ticket_keys`): a rustls client that got a session ticket from one mqtt-lb
//! resumes on another instance sharing the key file, over TLS 1.3 and TLS 1.2, and does a full handshake on an
//! instance with other keys or none; a reload re-reads the key file, so a rotated-out key stops resuming while a key
//! still listed keeps resuming.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqtt_lb::server::{ReloadHandle, Server};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A new key line, made the way the documentation says.
fn new_key() -> String {
    let out = Command::new("sh").args(["-c", "openssl rand 80 | base64 -w0"]).output().expect("run openssl and base64");
    assert!(out.status.success(), "openssl rand: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("base64 is ASCII")
}

fn write_keys(path: &Path, keys: &[&str]) {
    std::fs::write(path, keys.iter().map(|k| format!("{k}\n")).collect::<String>()).expect("write the key file");
}

/// The proxy configuration of `yaml_for`, with `tls.ticket_keys` when given.
fn yaml_with_keys(pki: &TestPki, broker: &Mosquitto, keys: Option<&Path>) -> String {
    let yaml = yaml_for(pki, &[broker]).health("none", "1h", "1s", 1, 1).build();
    let Some(keys) = keys else { return yaml };
    let tls = format!("key: \"{}\" }}", pki.key.display());
    assert!(yaml.contains(&tls), "the test configuration's tls line changed");
    yaml.replacen(&tls, &format!("key: \"{}\", ticket_keys: \"{}\" }}", pki.key.display(), keys.display()), 1)
}

/// A client of one TLS version with its own session store (shared by every connection made with it).
fn client(pki: &TestPki, version: &'static rustls::SupportedProtocolVersion) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(&pki.ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    Arc::new(config)
}

/// Connects, gets the broker's CONNACK through the proxy (reading it also takes in the tickets sent after the
/// handshake) and closes; returns how the handshake went.
async fn handshake(addr: std::net::SocketAddr, tls: &Arc<rustls::ClientConfig>, id: &str) -> HandshakeKind {
    bounded(STEP_TIMEOUT, id, async {
        let mut s = tls_connect(addr, Arc::clone(tls)).await.unwrap_or_else(|e| panic!("{id}: TLS to {addr}: {e}"));
        let kind = s.get_ref().1.handshake_kind().expect("the handshake is complete");
        s.write_all(&connect_packet_v311(id)).await.expect("write CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.unwrap_or_else(|e| panic!("{id}: CONNACK: {e}"));
        assert_eq!(connack, [0x20, 2, 0, 0], "{id}: CONNACK accepted");
        let _ = s.shutdown().await;
        kind
    })
    .await
}

const VERSIONS: [(&str, &rustls::SupportedProtocolVersion); 2] =
    [("TLS 1.3", &rustls::version::TLS13), ("TLS 1.2", &rustls::version::TLS12)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_instance_resumes_on_another_with_the_same_keys_only() {
    bounded(Duration::from_secs(60), "resumption across instances", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let (shared, other) = (dir.path().join("shared.keys"), dir.path().join("other.keys"));
        write_keys(&shared, &[&new_key(), &new_key()]);
        write_keys(&other, &[&new_key()]);
        let a = TestProxy::start(&yaml_with_keys(&pki, &broker, Some(&shared))).await;
        let b = TestProxy::start(&yaml_with_keys(&pki, &broker, Some(&shared))).await;
        let c = TestProxy::start(&yaml_with_keys(&pki, &broker, Some(&other))).await;
        let plain_a = TestProxy::start(&yaml_with_keys(&pki, &broker, None)).await;
        let plain_b = TestProxy::start(&yaml_with_keys(&pki, &broker, None)).await;

        for (name, version) in VERSIONS {
            let tls = client(&pki, version);
            assert_eq!(handshake(a.mqtts, &tls, "r1").await, HandshakeKind::Full, "{name}: first contact with A");
            assert_eq!(handshake(b.mqtts, &tls, "r2").await, HandshakeKind::Resumed, "{name}: A's ticket on B");
            assert_eq!(handshake(a.mqtts, &tls, "r3").await, HandshakeKind::Resumed, "{name}: B's ticket on A");

            // Other keys: the ticket does not open, the client gets a full handshake and goes on.
            let tls = client(&pki, version);
            assert_eq!(handshake(a.mqtts, &tls, "o1").await, HandshakeKind::Full, "{name}");
            assert_eq!(handshake(c.mqtts, &tls, "o2").await, HandshakeKind::Full, "{name}: A's ticket on C");

            // No key file: as before the key, each instance resumes only its own sessions.
            let tls = client(&pki, version);
            assert_eq!(handshake(plain_a.mqtts, &tls, "p1").await, HandshakeKind::Full, "{name}");
            assert_eq!(handshake(plain_b.mqtts, &tls, "p2").await, HandshakeKind::Full, "{name}: without keys");
        }
        for p in [a, b, c, plain_a, plain_b] {
            p.stop().await;
        }
    })
    .await;
}

/// An mqtt-lb loaded from a configuration file, so that a reload reads it (and the key file) again.
async fn start_from_file(
    path: &Path,
    yaml: &str,
) -> (std::net::SocketAddr, ReloadHandle, tokio_util::sync::CancellationToken) {
    std::fs::write(path, yaml).expect("write the configuration file");
    let config = mqtt_lb::config::load(path).unwrap_or_else(|e| panic!("config refused: {e}"));
    let server = Server::bind(config).await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = *server.listener_addrs().get("mqtts").expect("the mqtts listener");
    let (reload, token) = (server.reload_handle(), server.shutdown_token());
    tokio::spawn(server.run());
    (addr, reload, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_keys_old_tickets_resume_while_their_key_is_listed() {
    bounded(Duration::from_secs(60), "key rotation", async {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let keys: PathBuf = dir.path().join("tickets.keys");
        let (k1, k2) = (new_key(), new_key());
        write_keys(&keys, &[&k1]);
        let (addr, reload, token) =
            start_from_file(&dir.path().join("lb.yaml"), &yaml_with_keys(&pki, &broker, Some(&keys))).await;

        for (name, version) in VERSIONS {
            // Two clients, each holding only tickets sealed with k1.
            let (early, late) = (client(&pki, version), client(&pki, version));
            assert_eq!(handshake(addr, &early, "e1").await, HandshakeKind::Full, "{name}");
            assert_eq!(handshake(addr, &late, "l1").await, HandshakeKind::Full, "{name}");

            // Rotation: k2 seals from now on, k1 still opens.
            write_keys(&keys, &[&k2, &k1]);
            reload.reload().await.expect("reload with k2 first");
            assert_eq!(handshake(addr, &early, "e2").await, HandshakeKind::Resumed, "{name}: k1 ticket, k1 listed");
            // A client that comes now gets tickets sealed with k2.
            let fresh = client(&pki, version);
            assert_eq!(handshake(addr, &fresh, "f1").await, HandshakeKind::Full, "{name}");

            // k1 removed: its tickets no longer resume; k2's still do.
            write_keys(&keys, &[&k2]);
            reload.reload().await.expect("reload without k1");
            assert_eq!(handshake(addr, &late, "l2").await, HandshakeKind::Full, "{name}: k1 ticket after removal");
            assert_eq!(handshake(addr, &fresh, "f2").await, HandshakeKind::Resumed, "{name}: k2 ticket");

            // A key file made unusable fails the reload; the running keys stay.
            std::fs::write(&keys, "not a key\n").expect("spoil the key file");
            let refused = reload.reload().await.expect_err("a bad key file is refused");
            assert!(refused.contains("ticket_keys") && refused.contains("line 1"), "{refused}");
            assert_eq!(handshake(addr, &fresh, "f3").await, HandshakeKind::Resumed, "{name}: keys kept");
            write_keys(&keys, &[&k1]);
            reload.reload().await.expect("back to k1 for the next version");
        }
        token.cancel();
    })
    .await;
}
