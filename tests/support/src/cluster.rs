//! The usual set-up of an end-to-end test: brokers `b0`, `b1`, ... and a PKI in one temp dir, and the proxy
//! configuration in front of them.

use std::sync::Arc;

use crate::broker::Mosquitto;
use crate::pki::TestPki;
use crate::proxy_yaml::{yaml_for, ProxyYaml};

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
