//! The configuration text of a proxy in front of test brokers, built field by field.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::broker::Mosquitto;
use crate::pki::TestPki;

/// The configuration text of a proxy in front of test brokers: listener `mqtts` (TLS, 127.0.0.1:0) -> backend
/// `brokers` (server names = broker names), admin on 127.0.0.1:0. Health: mqtt probe every 200 ms, timeout 500 ms,
/// rise 2, fall 2.
#[derive(Debug, Clone)]
pub struct ProxyYaml {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// (name, address, weight)
    pub servers: Vec<(String, String, u32)>,
    pub balance: String,
    pub check: String,
    pub interval: String,
    pub timeout: String,
    pub rise: u32,
    pub fall: u32,
    pub drain_timeout: String,
    /// Extra `limits:` entries, as YAML flow mapping content (e.g. `max_connections: 5`).
    pub limits: Option<String>,
}

/// A [`ProxyYaml`] for `brokers` behind the TLS certificate of `pki`.
pub fn yaml_for(pki: &TestPki, brokers: &[&Mosquitto]) -> ProxyYaml {
    ProxyYaml {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        servers: brokers.iter().map(|b| (b.name.clone(), b.addr(), 1)).collect(),
        balance: "client-id".into(),
        check: "mqtt".into(),
        interval: "200ms".into(),
        timeout: "500ms".into(),
        rise: 2,
        fall: 2,
        drain_timeout: "5s".into(),
        limits: None,
    }
}

impl ProxyYaml {
    /// Weights of the servers, in order.
    pub fn weights(mut self, weights: &[u32]) -> Self {
        assert_eq!(weights.len(), self.servers.len(), "one weight per server");
        for (s, w) in self.servers.iter_mut().zip(weights) {
            s.2 = *w;
        }
        self
    }

    /// One more server (weight 1) after the brokers, such as a fake that misbehaves on purpose.
    pub fn server(mut self, name: &str, address: impl std::fmt::Display) -> Self {
        self.servers.push((name.to_owned(), address.to_string(), 1));
        self
    }

    pub fn balance(mut self, balance: &str) -> Self {
        self.balance = balance.into();
        self
    }

    pub fn health(mut self, check: &str, interval: &str, timeout: &str, rise: u32, fall: u32) -> Self {
        (self.check, self.interval, self.timeout, self.rise, self.fall) =
            (check.into(), interval.into(), timeout.into(), rise, fall);
        self
    }

    pub fn drain_timeout(mut self, drain: &str) -> Self {
        self.drain_timeout = drain.into();
        self
    }

    pub fn limits(mut self, limits: &str) -> Self {
        self.limits = Some(limits.into());
        self
    }

    pub fn build(&self) -> String {
        let mut y = format!(
            "listeners:\n  - name: mqtts\n    bind: \"127.0.0.1:0\"\n    protocol: mqtt\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n    backend: brokers\n\
             backends:\n  - name: brokers\n    balance: {}\n    connect_timeout: 2s\n    health: {{ check: {}, interval: {}, timeout: {}, rise: {}, fall: {} }}\n    servers:\n",
            self.cert.display(),
            self.key.display(),
            self.balance,
            self.check,
            self.interval,
            self.timeout,
            self.rise,
            self.fall
        );
        for (name, address, weight) in &self.servers {
            y.push_str(&format!("      - {{ name: {name}, address: \"{address}\", weight: {weight} }}\n"));
        }
        y.push_str("admin: { bind: \"127.0.0.1:0\" }\n");
        y.push_str(&format!("shutdown: {{ drain_timeout: {} }}\n", self.drain_timeout));
        if let Some(l) = &self.limits {
            y.push_str(&format!("limits: {{ {l} }}\n"));
        }
        y
    }
}

/// A configuration for the binary: one `mqtt` listener `mqtts` on `listen` with this `tls:` block (a YAML flow
/// mapping), relaying to one server `b1` at `broker` (no health checks), the admin endpoint on `admin`, and a
/// shutdown that neither waits nor drains for long.
pub fn tls_listener_yaml(listen: SocketAddr, admin: SocketAddr, tls: &str, broker: &str) -> String {
    format!(
        "listeners:\n  - {{ name: mqtts, bind: \"{listen}\", protocol: mqtt, backend: brokers,\n      tls: {tls} }}\n\
         backends:\n  - {{ name: brokers, health: {{ check: none }}, servers: [{{ name: b1, address: \"{broker}\" }}] }}\n\
         admin: {{ bind: \"{admin}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n"
    )
}

/// A configuration for the binary: one `mqtt` listener `mqtts` on 127.0.0.1:`port` behind `pki`'s certificate,
/// relaying to one server `b1` at `server` (MQTT health checks every 200 ms), the admin endpoint on
/// 127.0.0.1:`admin_port`, a shutdown that neither waits nor drains for long, then `extra` as is.
pub fn tls_front_yaml(pki: &TestPki, server: &str, port: u16, admin_port: u16, extra: &str) -> String {
    format!(
        "listeners:\n  - name: mqtts\n    bind: \"127.0.0.1:{port}\"\n    protocol: mqtt\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n    backend: brokers\n\
         backends:\n  - name: brokers\n    health: {{ check: mqtt, interval: 200ms, timeout: 500ms }}\n    servers:\n      - {{ name: b1, address: \"{server}\" }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\nshutdown: {{ grace: 0s, drain_timeout: 1s }}\n{extra}",
        pki.cert.display(),
        pki.key.display(),
    )
}
