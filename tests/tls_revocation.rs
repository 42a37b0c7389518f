//! Client certificate revocation (`tls.client_crl`) in the real binary: a revoked client certificate fails the
//! handshake and is counted as `kind="revoked"`, a valid one reaches mosquitto, and after a new CRL is written and
//! SIGHUP reloads it, the newly revoked certificate is refused. `check` refuses CRL files that are unreadable, not
//! CRLs, expired or from another issuer, and `client_crl` without `client_ca`, naming the file and the key.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use binary::{check_config, LbProcess};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_block(server: &Issued, client_ca: &Path, crls: &[&Path]) -> String {
    let crls = crls.iter().map(|p| format!("\"{}\"", p.display())).collect::<Vec<_>>().join(", ");
    format!(
        "{{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", client_crl: [{crls}] }}",
        server.cert.display(),
        server.key.display(),
        client_ca.display()
    )
}

/// Connects with `client`'s certificate and sends a CONNECT: whether mosquitto's CONNACK came back. (With TLS 1.3
/// the client finishes its side before the server has checked its certificate, so a refusal shows on the read.)
async fn connects(listen: SocketAddr, ca: &TestCa, client: &Issued, id: &str) -> bool {
    let tls = ca.client_config(Some(client));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(listen).await?;
        let name = ServerName::try_from("localhost").expect("name").to_owned();
        let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        s.write_all(&connect_packet_v311(id)).await?;
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await?;
        Ok::<_, std::io::Error>(connack == [0x20, 2, 0, 0])
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.expect("an answer within 5 s").unwrap_or(false)
}

async fn revoked_count(admin: SocketAddr) -> f64 {
    metric(admin, "mqttlb_tls_handshake_failures_total{listener=\"mqtts\",kind=\"revoked\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_refused_and_counted_and_a_reloaded_crl_revokes_another() {
    bounded(Duration::from_secs(60), "CRL", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = TestCa::new(d, "clients-ca");
        let server = ca.server("server", "localhost", &["localhost"], 1);
        let (alice, bob, carol) =
            (ca.client("alice", "alice", 101), ca.client("bob", "bob", 102), ca.client("carol", "carol", 103));
        // First a PEM CRL revoking alice; later a DER one revoking bob too.
        // A second client CA in the bundle, without a CRL: its clients' status is unknown, and they are refused.
        let uncovered_ca = TestCa::new(d, "uncovered-ca");
        let dave = uncovered_ca.client("dave", "dave", 104);
        let bundle = d.join("bundle.pem");
        let pems = [&ca.pem, &uncovered_ca.pem].map(|p| std::fs::read_to_string(p).expect("read a CA"));
        std::fs::write(&bundle, pems.concat()).expect("write the CA bundle");
        let crl = d.join("clients.crl");
        std::fs::write(&crl, ca.current_crl(&[101]).pem().expect("PEM CRL")).expect("write the CRL");
        let broker = Mosquitto::start(d, "b1").await;
        let (listen, admin) =
            (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
        let path = d.join("lb.yaml");
        std::fs::write(&path, tls_listener_yaml(listen, admin, &tls_block(&server, &bundle, &[&crl]), &broker.addr()))
            .expect("write the config");
        let lb = LbProcess::start(&path, admin).await;

        assert!(!connects(listen, &ca, &alice, "alice").await, "revoked alice refused");
        assert!(connects(listen, &ca, &bob, "bob").await, "bob accepted");
        let counted =
            eventually(Duration::from_secs(3), || async { (revoked_count(admin).await == 1.0).then_some(()) });
        assert!(counted.await.is_some(), "alice's handshake counted as revoked");
        assert!(!connects(listen, &ca, &dave, "dave").await, "dave refused");
        let unknown = "mqttlb_tls_handshake_failures_total{listener=\"mqtts\",kind=\"revocation_unknown\"}";
        let counted =
            eventually(Duration::from_secs(3), || async { (metric(admin, unknown).await == 1.0).then_some(()) });
        assert!(counted.await.is_some(), "dave's handshake, whose CA has no CRL, counted as revocation_unknown");
        let seen = broker.connections_seen();

        std::fs::write(&crl, ca.current_crl(&[101, 102]).der().as_ref()).expect("write the new CRL");
        lb.signal("HUP");
        let reloaded = eventually(Duration::from_secs(5), || async {
            (metric(admin, "mqttlb_config_reloads_total{result=\"success\"}").await == 1.0).then_some(())
        });
        assert!(reloaded.await.is_some(), "the reload succeeded; log:\n{}", lb.log());

        assert!(!connects(listen, &ca, &bob, "bob").await, "bob refused after the reload");
        assert!(!connects(listen, &ca, &alice, "alice").await, "alice still refused");
        assert!(connects(listen, &ca, &carol, "carol").await, "carol accepted");
        let counted =
            eventually(Duration::from_secs(3), || async { (revoked_count(admin).await == 3.0).then_some(()) });
        assert!(counted.await.is_some(), "three revoked handshakes counted");
        assert_eq!(broker.connections_seen(), seen + 1, "only carol reached the broker after the reload");
        lb.stop().await;
    })
    .await;
}

#[test]
fn check_refuses_unusable_crl_files_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = TestCa::new(d, "clients-ca");
    let other = TestCa::new(d, "other-ca");
    let server = ca.server("server", "localhost", &["localhost"], 1);
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let good = write("good.crl", ca.current_crl(&[7]).der());
    let expired = write("expired.crl", ca.crl(&[7], 1_600_000_000, 30).der());
    let foreign = write("foreign.crl", other.current_crl(&[7]).der());
    let garbage = write("garbage.crl", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    let empty = write("empty.crl", b"no CRL here\n");
    let missing = d.join("missing.crl");

    let path = d.join("lb.yaml");
    let (addr, admin) = (SocketAddr::from(([127, 0, 0, 1], 18883)), SocketAddr::from(([127, 0, 0, 1], 19100)));
    let with =
        |tls: String| std::fs::write(&path, tls_listener_yaml(addr, admin, &tls, "127.0.0.1:1883")).expect("write");
    with(tls_block(&server, &ca.pem, &[&good]));
    let (ok, text) = check_config(&path);
    assert!(ok, "a current CRL of the client CA is accepted: {text}");

    let cases: [(&str, &Path, &str); 5] = [
        ("unreadable", &missing, "cannot read"),
        ("not a CRL", &garbage, "not a valid CRL"),
        ("no CRL", &empty, "no CRL"),
        ("expired", &expired, "expired"),
        ("another issuer", &foreign, "not the subject of a tls.client_ca certificate"),
    ];
    for (what, crl, words) in cases {
        // Second in the list, so that the key names its position.
        with(tls_block(&server, &ca.pem, &[&good, crl]));
        let (ok, text) = check_config(&path);
        assert!(!ok, "{what}: accepted");
        assert!(text.contains("listeners[0].tls.client_crl[1]"), "{what}: names the key: {text}");
        assert!(text.contains(&crl.display().to_string()), "{what}: names the file: {text}");
        assert!(text.contains(words), "{what}: says {words:?}: {text}");
    }

    let without_ca = format!(
        "{{ cert: \"{}\", key: \"{}\", client_crl: [\"{}\"] }}",
        server.cert.display(),
        server.key.display(),
        good.display()
    );
    with(without_ca);
    let (ok, text) = check_config(&path);
    assert!(!ok && text.contains("listeners[0].tls.client_crl") && text.contains("needs tls.client_ca"), "{text}");
}
