//! Routes (issue 18 item 2), end to end: three mosquitto brokers, each its own backend, holding a retained
//! `lb/whoami` with its name, so the broker a client reached is seen by the client itself. Each route dimension
//! (sni, client_id, username, identity with a client certificate), first-match order, the default backend, the
//! refusal of a client no route takes (CONNACK 0x05 in 3.1.1, 0x87 in 5, counted `no_route`), the per-route
//! counter, `/servers`, and a reload that changes the routes for new clients while a client placed before stays.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use mqtt_lb::server::{ReloadHandle, Server};

// ---------------------------------------------------------------------------------------------------------------
// TLS: a CA, a server certificate for the names routes choose by, client certificates for identities.

struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    cert: String,
    key: String,
}

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key")
}

impl Pki {
    /// Writes `ca.pem`, `server.crt` and `server.key` (SANs localhost, *.example.org, mqtt.example.com) to `dir`.
    fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, "routes test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, p256()).expect("self-sign the CA");
        let names = ["localhost", "*.example.org", "mqtt.example.com"].map(str::to_owned).to_vec();
        let mut params = rcgen::CertificateParams::new(names).expect("server parameters");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = p256();
        let server = params.signed_by(&key, &ca).expect("sign the server certificate");
        let path = |f: &str| dir.join(f).display().to_string();
        let pki = Pki { ca_pem: path("ca.pem"), cert: path("server.crt"), key: path("server.key"), ca };
        std::fs::write(&pki.ca_pem, pki.ca.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert, server.pem()).expect("write server.crt");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write server.key");
        pki
    }

    /// A client trusting the CA, presenting a certificate with this CN and DNS SANs when `cn` is given.
    fn client(&self, cn: Option<(&str, &[&str])>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA as a root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let Some((cn, sans)) = cn else { return Arc::new(builder.with_no_client_auth()) };
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("client parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = p256();
        let cert = params.signed_by(&key, &self.ca).expect("sign the client certificate");
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(builder.with_client_auth_cert(chain, key).expect("client certificate"))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw MQTT: the exact CONNACK of a refusal, and which broker answers a client dialling a chosen server name.

/// One MQTT packet (fixed header and body), or what was read before the stream ended.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, String> {
    let mut packet = vec![0u8; 2];
    s.read_exact(&mut packet).await.map_err(|e| format!("read: {e}"))?;
    let (mut len, mut shift) = (usize::from(packet[1] & 0x7f), 7);
    while packet.last().is_some_and(|b| b & 0x80 != 0) {
        let b = s.read_u8().await.map_err(|e| format!("read length: {e}"))?;
        packet.push(b);
        len += usize::from(b & 0x7f) << shift;
        shift += 7;
    }
    let start = packet.len();
    packet.resize(start + len, 0);
    s.read_exact(&mut packet[start..]).await.map_err(|e| format!("read body: {e}"))?;
    Ok(packet)
}

/// Sends `connect`; when the CONNACK accepts, subscribes to `lb/whoami` and returns the broker's name; else
/// Err(CONNACK bytes, empty when the connection closed without one).
async fn whoami<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, connect: &[u8]) -> Result<String, Vec<u8>> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        s.write_all(connect).await.map_err(|_| Vec::new())?;
        let connack = read_packet(&mut s).await.map_err(|_| Vec::new())?;
        let accepted = connack.first() == Some(&0x20) && connack.get(3) == Some(&0x00);
        if !accepted {
            return Err(connack);
        }
        let v5 = connect.get(8) == Some(&5);
        let mut subscribe = vec![0x82, 0, 0x00, 0x01];
        if v5 {
            subscribe.push(0x00);
        }
        subscribe.extend_from_slice(&[0x00, WHOAMI_TOPIC.len() as u8]);
        subscribe.extend_from_slice(WHOAMI_TOPIC.as_bytes());
        subscribe.push(0x00);
        subscribe[1] = (subscribe.len() - 2) as u8;
        s.write_all(&subscribe).await.map_err(|_| connack.clone())?;
        loop {
            let p = read_packet(&mut s).await.unwrap_or_else(|e| panic!("waiting for lb/whoami: {e}"));
            if p[0] & 0xf0 == 0x30 {
                // PUBLISH QoS 0: topic, (v5: properties), payload.
                let topic_end = 4 + usize::from(u16::from_be_bytes([p[2], p[3]]));
                let payload = if v5 { topic_end + 1 + usize::from(p[topic_end]) } else { topic_end };
                let _ = s.write_all(&[0xe0, 0x00]).await;
                return Ok(String::from_utf8_lossy(&p[payload..]).into_owned());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {STEP_TIMEOUT:?}"))
}

/// [`whoami`] over TLS, the ClientHello naming `sni`.
async fn whoami_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    sni: &str,
    connect: &[u8],
) -> Result<String, Vec<u8>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("a server name");
    let s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
    whoami(s, connect).await
}

async fn rejected(admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    metric(admin, &format!("mqttlb_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}")).await
}

async fn route_matches(admin: SocketAddr, listener: &str, route: &str) -> f64 {
    metric(admin, &format!("mqttlb_route_matches_total{{listener=\"{listener}\",route=\"{route}\"}}")).await
}

// ---------------------------------------------------------------------------------------------------------------
// The proxy, from a configuration file (reloads read it again).

/// Three backends `t0`, `t1`, `t2` of one broker each, and `listeners` (YAML list items).
fn config(brokers: &[Mosquitto], listeners: &str) -> String {
    let mut y = format!("listeners:\n{listeners}backends:\n");
    for (i, b) in brokers.iter().enumerate() {
        y.push_str(&format!(
            "  - name: t{i}\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms, rise: 1 }}\n    \
             servers: [{{ name: {}, address: \"{}\" }}]\n",
            b.name,
            b.addr()
        ));
    }
    y + "admin: { bind: \"127.0.0.1:0\" }\nshutdown: { grace: 0s, drain_timeout: 1s }\n"
}

async fn start(path: &Path, yaml: &str) -> (TestProxy, ReloadHandle) {
    init_tracing();
    std::fs::write(path, yaml).expect("write the configuration");
    let config = mqtt_lb::config::load(path).unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"));
    let server = Server::bind(config.clone()).await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addrs = server.listener_addrs();
    let mqtts = *addrs.values().next().expect("a listener");
    let admin = server.admin_addr().expect("admin");
    let (token, reload) = (server.shutdown_token(), server.reload_handle());
    let handle = Some(tokio::spawn(server.run()));
    (TestProxy { mqtts, addrs, admin, token, handle, config }, reload)
}

/// Waits until the server of each backend `t<i>` is up.
async fn all_up(proxy: &TestProxy, brokers: &[Mosquitto]) {
    for (i, b) in brokers.iter().enumerate() {
        let series = format!("mqttlb_server_up{{backend=\"t{i}\",server=\"{}\"}}", b.name);
        eventually(Duration::from_secs(5), || async { (metric(proxy.admin, &series).await == 1.0).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{series} is not 1 within 5s"));
    }
}

async fn brokers(dir: &Path) -> Vec<Mosquitto> {
    let mut brokers = Vec::new();
    for i in 0..3 {
        brokers.push(Mosquitto::start(dir, &format!("b{i}")).await);
    }
    brokers
}

// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_dimension_first_match_and_the_default_backend() {
    bounded(Duration::from_secs(60), "routes", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let brokers = brokers(dir.path()).await;
        let pki = Pki::new(dir.path());
        let tls = format!("tls: {{ cert: \"{}\", key: \"{}\" }}", pki.cert, pki.key);
        let mtls = format!("tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\" }}", pki.cert, pki.key, pki.ca_pem);
        let listeners = format!(
            "  - name: front\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    {tls}\n    backend: t0\n    routes:\n\
             \x20     - {{ name: vip, client_id: \"vip-*\", backend: t2 }}\n\
             \x20     - {{ name: tenant-a, sni: \"*.example.org\", backend: t1 }}\n\
             \x20     - {{ name: gb, client_id: \"gb-??\", backend: t2 }}\n\
             \x20     - {{ name: ops, username: \"ops-*\", backend: t1 }}\n\
             \x20 - name: wss\n    bind: \"127.0.0.1:0\"\n    protocol: websocket\n    {tls}\n    backend: t0\n    routes:\n\
             \x20     - {{ client_id: \"gb-*\", backend: t2 }}\n\
             \x20 - name: passthrough\n    bind: \"127.0.0.1:0\"\n    protocol: tcp\n    {tls}\n    backend: t0\n    routes:\n\
             \x20     - {{ sni: \"mqtt.example.com\", backend: t2 }}\n\
             \x20 - name: certs\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    {mtls}\n    routes:\n\
             \x20     - {{ name: sensors, identity: \"sensor-*.example.net\", backend: t1 }}\n\
             \x20     - {{ name: admins, identity: \"admin-?\", backend: t2 }}\n",
        );
        let (proxy, _reload) = start(&dir.path().join("config.yaml"), &config(&brokers, &listeners)).await;
        all_up(&proxy, &brokers).await;
        let (front, wss, certs) = (proxy.addrs["front"], proxy.addrs["wss"], proxy.addrs["certs"]);
        let plain = pki.client(None);

        // client_id, with rumqttc (server name localhost: no sni route): gb-?? takes two characters only.
        assert_eq!(which_broker(front, Some(plain.clone()), "gb-42", Version::V4).await, "b2");
        assert_eq!(which_broker(front, Some(plain.clone()), "gb-421", Version::V5).await, "b0", "the default");
        assert_eq!(which_broker(front, Some(plain.clone()), "fr-1", Version::V4).await, "b0", "the default");
        // sni: a name under *.example.org goes to t1, another name the certificate has does not.
        let v4 = |id: &str, user: Option<&str>| connect_packet(4, id, user);
        assert_eq!(whoami_tls(front, plain.clone(), "a.example.org", &v4("x1", None)).await, Ok("b1".into()));
        assert_eq!(whoami_tls(front, plain.clone(), "mqtt.example.com", &v4("x1", None)).await, Ok("b0".into()));
        // First match: vip-* comes before the sni route, gb-?? after it.
        assert_eq!(whoami_tls(front, plain.clone(), "a.example.org", &v4("vip-1", None)).await, Ok("b2".into()));
        assert_eq!(whoami_tls(front, plain.clone(), "a.example.org", &v4("gb-42", None)).await, Ok("b1".into()));
        // username: only a client that sends a matching one.
        assert_eq!(whoami_tls(front, plain.clone(), "localhost", &v4("x2", Some("ops-jo"))).await, Ok("b1".into()));
        assert_eq!(whoami_tls(front, plain.clone(), "localhost", &v4("x2", Some("dev-jo"))).await, Ok("b0".into()));
        assert_eq!(whoami_tls(front, plain.clone(), "localhost", &v4("x2", None)).await, Ok("b0".into()));
        // WebSocket listeners route like mqtt ones.
        let via = Via::Wss(plain.clone());
        let mut c = MqttClient::connect_via(wss, via, "gb-7", Version::V4).await.expect("wss client");
        c.subscribe(WHOAMI_TOPIC).await.expect("subscribe");
        assert_eq!(c.next_publish(WHOAMI_TOPIC, STEP_TIMEOUT).await.expect("whoami"), b"b2");
        c.disconnect().await;

        // A tcp listener routes on sni only: the relayed bytes are the CONNECT, unread.
        let passthrough = proxy.addrs["passthrough"];
        let sni = whoami_tls(passthrough, plain.clone(), "mqtt.example.com", &v4("vip-2", None)).await;
        assert_eq!(sni, Ok("b2".into()));
        assert_eq!(whoami_tls(passthrough, plain.clone(), "localhost", &v4("vip-2", None)).await, Ok("b0".into()));

        // identity: the certificate's SAN or CN, whatever the client id; no route, no default: refused.
        let sensor = pki.client(Some(("sensor-1", &["sensor-1.example.net"])));
        let admin = pki.client(Some(("admin-1", &[])));
        let stranger = pki.client(Some(("guest", &["guest.example.net"])));
        assert_eq!(which_broker(certs, Some(sensor), "any-id", Version::V4).await, "b1");
        assert_eq!(which_broker(certs, Some(admin), "any-id", Version::V5).await, "b2");
        for (level, want) in [(4u8, vec![0x20, 0x02, 0x00, 0x05]), (5, vec![0x20, 0x03, 0x00, 0x87, 0x00])] {
            let answer = whoami_tls(certs, stranger.clone(), "localhost", &connect_packet(level, "guest", None)).await;
            assert_eq!(answer, Err(want), "MQTT level {level}: not authorized");
        }
        assert_eq!(rejected(proxy.admin, "certs", "no_route").await, 2.0);
        assert!(!brokers.iter().any(|b| b.client_ids_seen().iter().any(|id| id == "guest")), "no broker saw it");

        // Counted per route (which_broker clients and raw ones alike); the default is no route.
        for (listener, route, n) in [
            ("front", "vip", 1.0),
            ("front", "tenant-a", 2.0),
            ("front", "gb", 1.0),
            ("front", "ops", 1.0),
            ("wss", "0", 1.0),
            ("passthrough", "0", 1.0),
            ("certs", "sensors", 1.0),
            ("certs", "admins", 1.0),
        ] {
            assert_eq!(route_matches(proxy.admin, listener, route).await, n, "{listener}/{route}");
        }
        // /servers shows each listener's default and routes in order.
        let (status, body) = http_get(proxy.admin, "/servers").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let certs_view = v["listeners"].as_array().expect("listeners").iter().find(|l| l["name"] == "certs");
        let certs_view = certs_view.expect("the certs listener");
        assert_eq!(certs_view["backend"], serde_json::Value::Null);
        assert_eq!(certs_view["routes"][1]["identity"], "admin-?");
        assert_eq!(certs_view["routes"][1]["backend"], "t2");
        proxy.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_for_new_clients_while_earlier_ones_stay() {
    bounded(Duration::from_secs(60), "routes reload", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let brokers = brokers(dir.path()).await;
        let path = dir.path().join("config.yaml");
        let listener = |route: &str| {
            format!("  - name: plain\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    routes:\n      - {route}\n")
        };
        let before = config(&brokers, &listener("{ name: a, client_id: \"tenant-a/*\", backend: t1 }"));
        let (proxy, reload) = start(&path, &before).await;
        all_up(&proxy, &brokers).await;
        let addr = proxy.addrs["plain"];
        let tcp = || async { TcpStream::connect(addr).await.expect("connect") };

        assert_eq!(whoami(tcp().await, &connect_packet(4, "tenant-a/1", None)).await, Ok("b1".into()));
        // No default backend: the others are refused, 0x05 in 3.1.1 and 0x87 in 5.
        assert_eq!(whoami(tcp().await, &connect_packet(4, "tenant-b/1", None)).await, Err(vec![0x20, 2, 0, 0x05]));
        assert_eq!(
            whoami(tcp().await, &connect_packet(5, "tenant-b/1", None)).await,
            Err(vec![0x20, 3, 0, 0x87, 0])
        );
        assert_eq!(rejected(proxy.admin, "plain", "no_route").await, 2.0);

        // A client placed before the reload keeps its broker.
        let mut kept = MqttClient::connect(addr, None, "tenant-a/kept", Version::V4).await.expect("connect");
        let after = config(
            &brokers,
            &listener("{ name: a, client_id: \"tenant-a/*\", backend: t2 }\n      - { client_id: \"tenant-b/*\", backend: t0 }"),
        );
        std::fs::write(&path, after).expect("write the new configuration");
        reload.reload().await.expect("the reload applies");
        assert_eq!(whoami(tcp().await, &connect_packet(4, "tenant-a/1", None)).await, Ok("b2".into()));
        assert_eq!(whoami(tcp().await, &connect_packet(5, "tenant-b/1", None)).await, Ok("b0".into()));
        kept.round_trip("routes/kept", b"still here").await.expect("the earlier client goes on");
        kept.disconnect().await;
        assert!(brokers[1].client_ids_seen().iter().any(|id| id == "tenant-a/kept"), "it was on b1");
        assert_eq!(route_matches(proxy.admin, "plain", "a").await, 3.0, "the route's count goes on by name");
        assert_eq!(route_matches(proxy.admin, "plain", "1").await, 1.0);
        // A route the file no longer has leaves the metrics.
        std::fs::write(&path, &before).expect("write the first configuration again");
        reload.reload().await.expect("the reload applies");
        let (_, exposition) = http_get(proxy.admin, "/metrics").await;
        assert!(exposition.contains("route=\"a\"") && !exposition.contains("route=\"1\""), "{exposition}");
        proxy.stop().await;
    })
    .await;
}
