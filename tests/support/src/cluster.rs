//! The usual set-up of an end-to-end test: brokers `b0`, `b1`, ... and a PKI in one temp dir, and the proxy
//! configuration in front of them; or, for the binary, one broker and its configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::broker::Mosquitto;
use crate::pki::TestPki;
use crate::proxy_yaml::{tls_front_yaml, yaml_for, ProxyYaml};
use crate::time::free_port;

/// Brokers and a PKI in a temp dir. Fields drop in order: brokers are killed before their directory goes.
pub struct Cluster {
    pub brokers: Vec<Mosquitto>,
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` brokers named `b0`, `b1`, ... (plain MQTT listeners) and a PKI, in a fresh temp dir.
    pub async fn start(n: usize) -> Cluster {
        Self::start_brokers(n, false).await
    }

    /// Like [`Cluster::start`], each broker with a WebSocket listener too ([`Mosquitto::start_with_websockets`]).
    pub async fn start_with_websockets(n: usize) -> Cluster {
        Self::start_brokers(n, true).await
    }

    async fn start_brokers(n: usize, websockets: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let mut brokers = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("b{i}");
            brokers.push(if websockets {
                Mosquitto::start_with_websockets(dir.path(), &name).await
            } else {
                Mosquitto::start(dir.path(), &name).await
            });
        }
        Cluster { brokers, pki, dir }
    }

    /// The harness's proxy configuration ([`yaml_for`]) for every broker, behind this PKI's certificate.
    pub fn yaml(&self) -> ProxyYaml {
        let refs: Vec<&Mosquitto> = self.brokers.iter().collect();
        yaml_for(&self.pki, &refs)
    }

    /// A client TLS configuration trusting this PKI's CA.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.pki.client_config()
    }

    /// Every broker's count of TCP connections so far ([`Mosquitto::connections_seen`]).
    pub fn connections_seen(&self) -> Vec<usize> {
        self.brokers.iter().map(Mosquitto::connections_seen).collect()
    }
}

/// One broker `b1` and a PKI in a temp dir, and the binary's configuration file there ([`tls_front_yaml`] on free
/// ports, written to `lb.yaml`), for a test that starts the binary on it. Fields drop in order: the broker is killed
/// before its directory goes.
pub struct OneBroker {
    /// The TLS listener's address.
    pub front: SocketAddr,
    pub admin: SocketAddr,
    /// The configuration file, and the text written to it.
    pub config: PathBuf,
    pub yaml: String,
    pub broker: Mosquitto,
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
}

impl OneBroker {
    pub async fn start() -> OneBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::new(dir.path());
        let broker = Mosquitto::start(dir.path(), "b1").await;
        let (port, admin_port) = (free_port(), free_port());
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let config = dir.path().join("lb.yaml");
        let yaml = tls_front_yaml(&pki, &broker.addr(), port, admin_port, "");
        std::fs::write(&config, &yaml).expect("write the configuration file");
        OneBroker { front, admin, config, yaml, broker, pki, dir }
    }
}
