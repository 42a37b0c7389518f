//! Several certificates on one listener (`tls.certificates`), chosen by the client's SNI, and OCSP staples
//! (`ocsp_response`), seen by real clients of the real binary: `openssl s_client` (the certificate received, with and
//! without SNI, and `-status` for the staple) and a rustls MQTT client reaching mosquitto. `check` refuses bad
//! OCSP responses, malformed wildcard SANs and both certificate forms at once, naming the file and the key.

#[path = "common/binary.rs"]
mod binary;
mod common;
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use binary::{check_config, LbProcess};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn openssl() -> Option<PathBuf> {
    tools::find_tool("openssl", "OPENSSL", &["/usr/bin/openssl"], "install openssl")
}

fn entry(cert: &Issued, ocsp: Option<&Path>) -> String {
    let ocsp = ocsp.map(|p| format!(", ocsp_response: \"{}\"", p.display())).unwrap_or_default();
    format!("{{ cert: \"{}\", key: \"{}\"{ocsp} }}", cert.cert.display(), cert.key.display())
}

/// What `openssl s_client` prints for one handshake with `args` (stdin closed, so it ends after the handshake).
async fn s_client(openssl: &Path, addr: SocketAddr, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(openssl);
    command.arg("s_client").arg("-connect").arg(addr.to_string()).args(args);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), command.output()).await;
    let out = out.expect("s_client ends within 10 s").expect("run openssl s_client");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_each_certificate_the_first_by_default_and_staples_ocsp() {
    let Some(openssl) = openssl() else { return };
    bounded(Duration::from_secs(60), "SNI and OCSP", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = TestCa::new(d, "sni-ca");
        let default = ca.server("default", "cn-default-cert", &["localhost", "127.0.0.1"], 11);
        let exact = ca.server("exact", "cn-exact-cert", &["mqtt.example.test"], 12);
        let wildcard = ca.server("wildcard", "cn-wildcard-cert", &["*.tenants.example.test"], 13);
        let staple = d.join("wildcard.ocsp");
        ca.ocsp_response(&openssl, &wildcard.cert, 'V', &staple).expect("OCSP response from openssl ocsp");
        let broker = Mosquitto::start(d, "b1").await;
        let (listen, admin) =
            (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
        let tls = format!(
            "{{ certificates: [{}, {}, {}] }}",
            entry(&default, None),
            entry(&exact, None),
            entry(&wildcard, Some(&staple))
        );
        let path = d.join("lb.yaml");
        std::fs::write(&path, tls_listener_yaml(listen, admin, &tls, &broker.addr())).expect("write the config");
        let lb = LbProcess::start(&path, admin).await;

        // (SNI sent, the certificate expected)
        let cases = [
            (Some("mqtt.example.test"), "cn-exact-cert"),
            (Some("A.Tenants.Example.TEST"), "cn-wildcard-cert"),
            (Some("b.tenants.example.test"), "cn-wildcard-cert"),
            (Some("a.b.tenants.example.test"), "cn-default-cert"),
            (Some("tenants.example.test"), "cn-default-cert"),
            (Some("unknown.example.test"), "cn-default-cert"),
            (None, "cn-default-cert"),
        ];
        for (sni, expected) in cases {
            let args = match sni {
                Some(name) => vec!["-servername", name],
                None => vec!["-noservername"],
            };
            let out = s_client(&openssl, listen, &args).await;
            let received = ["cn-default-cert", "cn-exact-cert", "cn-wildcard-cert"]
                .into_iter()
                .filter(|cn| out.contains(&format!("subject=CN = {cn}")))
                .collect::<Vec<_>>();
            assert_eq!(received, [expected], "SNI {sni:?}:\n{out}");
        }

        // The staple goes to clients that ask, with the certificate it is for only.
        let out = s_client(&openssl, listen, &["-status", "-servername", "x.tenants.example.test"]).await;
        assert!(out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good"), "{out}");
        let out = s_client(&openssl, listen, &["-status", "-servername", "mqtt.example.test"]).await;
        assert!(out.contains("OCSP response: no response sent"), "{out}");

        // A real MQTT client verifying the name it dialled reaches the broker through the wildcard certificate.
        let tcp = tokio::net::TcpStream::connect(listen).await.expect("connect");
        let name = ServerName::try_from("sensors.tenants.example.test").expect("name").to_owned();
        let mut s = tokio_rustls::TlsConnector::from(ca.client_config(None)).connect(name, tcp).await.expect("TLS");
        let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        assert_eq!(leaf.as_ref(), Some(&wildcard.der), "the wildcard certificate was served");
        s.write_all(&connect_packet_v311("sni-client")).await.expect("CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "the broker accepted the client");
        drop(s);

        // Each certificate has its expiry, named by its file; the listener label is unchanged.
        let (_, text) = http_get(admin, "/metrics").await;
        for issued in [&default, &exact, &wildcard] {
            let series = format!(
                "mqttlb_tls_certificate_expiry_timestamp_seconds{{listener=\"mqtts\",certificate=\"{}\"}}",
                issued.cert.display()
            );
            let not_after = metric_in(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert!(not_after > 1.0e9, "{series} = {not_after}");
        }
        lb.stop().await;
    })
    .await;
}

#[test]
fn check_refuses_bad_staples_wildcards_and_both_certificate_forms_naming_file_and_key() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = TestCa::new(d, "check-ca");
    let other_ca = TestCa::new(d, "other-ca");
    let first = ca.server("first", "first", &["localhost"], 21);
    let second = ca.server("second", "second", &["b.example.test"], 22);
    // The same serial as `second`, from another CA: its OCSP response names another issuer.
    let twin = other_ca.server("twin", "twin", &["b.example.test"], 22);
    let bad_wildcard = ca.server("badwild", "badwild", &["*.*.example.test"], 23);
    let ocsp = |name: &str, cert: &Issued, ca: &TestCa, status: char| {
        let out = d.join(name);
        ca.ocsp_response(&openssl, &cert.cert, status, &out).expect("openssl ocsp");
        out
    };
    let good = ocsp("good.ocsp", &second, &ca, 'V');
    let for_first = ocsp("first.ocsp", &first, &ca, 'V');
    let revoked = ocsp("revoked.ocsp", &second, &ca, 'R');
    let other_issuer = ocsp("twin.ocsp", &twin, &other_ca, 'V');
    let garbage = d.join("garbage.ocsp");
    std::fs::write(&garbage, b"not DER at all").expect("write");
    let missing = d.join("missing.ocsp");

    let path = d.join("lb.yaml");
    let addr = SocketAddr::from(([127, 0, 0, 1], 18883));
    let admin = SocketAddr::from(([127, 0, 0, 1], 19100));
    let two =
        |staple: &Path| format!("{{ certificates: [{}, {}] }}", entry(&first, None), entry(&second, Some(staple)));
    std::fs::write(&path, tls_listener_yaml(addr, admin, &two(&good), "127.0.0.1:1883")).expect("write");
    let (ok, text) = check_config(&path);
    assert!(ok, "a good staple is accepted: {text}");

    let staple_key = "listeners[0].tls.certificates[1].ocsp_response";
    let cases: [(&str, &Path, &str); 5] = [
        ("unreadable", &missing, "cannot read"),
        ("not parseable", &garbage, "not a DER OCSP response"),
        ("for another certificate", &for_first, "another certificate"),
        ("for another issuer", &other_issuer, "another issuer"),
        ("revoked", &revoked, "revoked"),
    ];
    for (what, staple, words) in cases {
        std::fs::write(&path, tls_listener_yaml(addr, admin, &two(staple), "127.0.0.1:1883")).expect("write");
        let (ok, text) = check_config(&path);
        assert!(!ok, "{what}: accepted");
        assert!(text.contains(staple_key), "{what}: names the key: {text}");
        assert!(text.contains(&staple.display().to_string()), "{what}: names the file: {text}");
        assert!(text.contains(words), "{what}: says {words:?}: {text}");
    }

    // An expired response: the real one, checked as it will be once its nextUpdate (a day ahead) is past.
    let response = std::fs::read(&good).expect("read the response");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let later = i64::try_from(now).expect("time") + 2 * 86_400;
    assert_eq!(mqtt_lb::tls_material::ocsp::check(&response, &second.der, later - 2 * 86_400), Ok(()));
    let err = mqtt_lb::tls_material::ocsp::check(&response, &second.der, later).unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // A SAN wildcard that is not one leading label.
    let tls = format!("{{ certificates: [{}, {}] }}", entry(&first, None), entry(&bad_wildcard, None));
    std::fs::write(&path, tls_listener_yaml(addr, admin, &tls, "127.0.0.1:1883")).expect("write");
    let (ok, text) = check_config(&path);
    assert!(!ok && text.contains("listeners[0].tls.certificates[1].cert"), "{text}");
    assert!(text.contains("*.*.example.test") && text.contains(&bad_wildcard.cert.display().to_string()), "{text}");

    // Both forms at once.
    let tls = format!(
        "{{ cert: \"{}\", key: \"{}\", certificates: [{}] }}",
        first.cert.display(),
        first.key.display(),
        entry(&second, None)
    );
    std::fs::write(&path, tls_listener_yaml(addr, admin, &tls, "127.0.0.1:1883")).expect("write");
    let (ok, text) = check_config(&path);
    assert!(!ok && text.contains("listeners[0].tls.certificates") && text.contains("not both"), "{text}");
}
