//! The CONNECT as the broker sees it when mqtt-lb changes it: `tls.username_from_certificate` (the verified client
//! certificate's name as the User Name, enforced by a real mosquitto's ACL).

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The topic the broker's ACL grants to the user `sensor-1` only.
const SECRET: &str = "secret/t";

/// The ACL: anonymous clients may keep the harness's `lb/whoami`; `sensor-1` may use `secret/#`; anyone else
/// nothing.
fn acl(dir: &Path) -> String {
    let path = dir.join("acl");
    std::fs::write(&path, "topic readwrite lb/whoami\n\nuser sensor-1\ntopic readwrite secret/#\n").expect("write acl");
    format!("acl_file {}\n", path.display())
}

/// A 3.1.1 client over `tls` (plain TCP without) sending user name `user` and a password: subscribes to
/// [`SECRET`], publishes there and waits for its message back. Err("denied") when `broker` logs that it denied the
/// publish (its ACL answer: mosquitto grants the subscription and acknowledges the publish either way).
async fn use_secret_topic(
    broker: &Mosquitto,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    user: &str,
) -> Result<(), String> {
    use rumqttc::{Event, Packet, QoS};
    let host = if tls.is_some() { "localhost" } else { "127.0.0.1" };
    let id = format!("c-{user}-{}", addr.port());
    let mut options = rumqttc::MqttOptions::new(&id, host, addr.port());
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    options.set_credentials(user, "a password");
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let denied = format!("Denied PUBLISH from {id} ");
    let mut log_check = tokio::time::interval(Duration::from_millis(50));
    let run = async {
        loop {
            let event = tokio::select! {
                event = events.poll() => event.map_err(|e| format!("connection: {e}"))?,
                _ = log_check.tick() => {
                    if broker.log().contains(&denied) {
                        return Err("denied".to_owned());
                    }
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.subscribe(SECRET, QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(SECRET, QoS::AtLeastOnce, false, b"hello".to_vec())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == SECRET => return Ok(()),
                _ => {}
            }
        }
    };
    let outcome = tokio::time::timeout(STEP_TIMEOUT, run).await.unwrap_or_else(|_| Err("timed out".to_owned()));
    let _ = client.try_disconnect();
    outcome
}

/// Sends `connect` and a DISCONNECT over `tls` and returns what the server answers until it closes.
async fn connect_and_leave(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, connect: &[u8]) -> Vec<u8> {
    let mut bytes = connect.to_vec();
    bytes.extend_from_slice(&[0xE0, 0x00]);
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut s = tls_connect(addr, tls).await.expect("TLS");
        s.write_all(&bytes).await.expect("write");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        answer
    })
    .await
    .expect("the exchange ends")
}

/// A CONNECT with a password: level 3 (MQIsdp) or 4 with user name `user`, or 5 with a password and no user name.
fn connect_with_password(level: u8, client_id: &str, user: Option<&str>) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut body = vec![0, u8::try_from(name.len()).unwrap_or(0)];
    body.extend_from_slice(name);
    body.push(level);
    body.push(0x02 | 0x40 | if user.is_some() { 0x80 } else { 0 });
    body.extend_from_slice(&[0, 60]);
    if level == 5 {
        body.push(0);
    }
    for field in [Some(client_id.as_bytes()), user.map(str::as_bytes), Some(b"pw".as_slice())].into_iter().flatten() {
        body.extend_from_slice(&u16::try_from(field.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("a short CONNECT")];
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_sees_the_certificate_name_as_the_user_name_and_its_acl_applies() {
    bounded(Duration::from_secs(40), "username from certificate", async {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let pki = TestPki::new(d);
        let broker = Mosquitto::start_with_config(d, "b0", &acl(d)).await;
        let tls = |extra: &str| {
            format!(
                "tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\"{extra} }}",
                pki.cert.display(),
                pki.key.display(),
                pki.ca.display()
            )
        };
        let yaml = format!(
            "listeners:\n\
             \x20 - {{ name: by_cn, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: brokers }}\n\
             \x20 - {{ name: by_san, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: brokers }}\n\
             \x20 - {{ name: as_sent, bind: \"127.0.0.1:0\", protocol: mqtt, {}, backend: brokers }}\n\
             backends:\n\
             \x20 - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n\
             \x20   servers: [ {{ name: b0, address: \"{}\" }} ]\n\
             admin: {{ bind: \"127.0.0.1:0\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n",
            tls(", username_from_certificate: cn"),
            tls(", username_from_certificate: san"),
            tls(""),
            broker.addr()
        );
        let proxy = TestProxy::start(&yaml).await;
        proxy.wait_server_up("b0", true, Duration::from_secs(5)).await;
        let (by_cn, by_san, as_sent) = (proxy.addrs["by_cn"], proxy.addrs["by_san"], proxy.addrs["as_sent"]);
        let sensor = pki.client_config_with_cert("sensor-1", &["sensor-1.example.org"]);
        let by_name = pki.client_config_with_cert("device-7", &["sensor-1"]);

        // Through mqtt-lb with the option, the client sending "mallory" uses the topic granted to its CN (or SAN).
        let b = &broker;
        use_secret_topic(b, by_cn, Some(sensor.clone()), "mallory").await.expect("the CN's topic through mqtt-lb");
        use_secret_topic(b, by_san, Some(by_name.clone()), "mallory").await.expect("the SAN's topic through mqtt-lb");
        // Without the option, or directly, "mallory" is denied by the ACL; so is a certificate whose CN it is not,
        // whatever user name the client sends.
        let denied = Err("denied".to_owned());
        assert_eq!(use_secret_topic(b, as_sent, Some(sensor.clone()), "mallory").await, denied, "without the option");
        assert_eq!(use_secret_topic(b, broker.socket_addr(), None, "mallory").await, denied, "directly");
        assert_eq!(use_secret_topic(b, by_cn, Some(by_name.clone()), "sensor-1").await, denied, "CN device-7");

        // MQTT 3.1 and 3.1.1 with a user name and password, 5 with a password only: each accepted, the broker
        // logs the certificate's name as the user (mosquitto's "u'...'"), and the DISCONNECT sent right after the
        // CONNECT (in the same write) reaches it too (a clean close: no will, no "closing" error line).
        for (level, id, user) in [(3u8, "raw-31", Some("mallory")), (4, "raw-311", Some("mallory")), (5, "raw-5", None)]
        {
            let answer = connect_and_leave(by_cn, sensor.clone(), &connect_with_password(level, id, user)).await;
            assert!(answer.len() >= 4 && answer[0] == 0x20 && answer[3] == 0, "{id}: CONNACK accepted: {answer:02x?}");
            eventually(Duration::from_secs(2), || async {
                let log = broker.log();
                let seen = log.lines().any(|l| l.contains(&format!("as {id} ")) && l.contains("u'sensor-1'"));
                let left = log.lines().any(|l| l.contains(&format!("Received DISCONNECT from {id}")));
                (seen && left).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{id}: broker log: {}", broker.log()));
        }
        proxy.stop().await;
    })
    .await;
}
