//! Shared harness of mqtt-lb's end-to-end tests and examples: real mosquitto brokers, real TLS (rcgen PKI, rustls
//! with ring), real MQTT clients (rumqttc v3.1.1 and v5) and an in-process mqtt-lb started through the library API.
//!
//! A crate of its own (a dev-dependency of mqtt-lb, never published) rather than a module included into every test
//! binary: it compiles once instead of once per binary, and dead code here is reported as such, since a library's
//! public items are its interface while each test binary uses only a part of them.
//!
//! Tests reach it through `tests/common/mod.rs` (`mod common; use common::*;`), examples directly.
//!
//! Conventions:
//! - Everything listens on 127.0.0.1; ports are chosen per broker ([`free_port`]) or bound as `127.0.0.1:0`.
//! - Brokers say who they are: each one holds a retained message on [`WHOAMI_TOPIC`] whose payload is its name,
//!   which is also the server's name in the proxy configuration ([`yaml_for`]), so [`which_broker`] tells where a
//!   client id landed without looking inside the proxy.
//! - Processes started here are killed by PID (their `Child`) on `stop()` and on drop.
//! - Waits are bounded; [`eventually`] polls a condition until a deadline.
//!
//! # Layout
//! By what each part starts or talks to:
//! - [`time`]: bounded waits, polling, free ports, opt-in logs.
//! - [`broker`]: mosquitto processes.
//! - [`pki`]: TLS material.
//! - [`ca`]: a CA issuing certificates with chosen names and serials, CRLs and OCSP responses.
//! - [`client`]: rumqttc clients and "which broker" through the proxy.
//! - [`raw_mqtt`]: hand-made MQTT bytes over TLS.
//! - [`proxy_yaml`]: the proxy's configuration text.
//! - [`proxy`]: the in-process proxy and the placement it should make.
//! - [`admin`]: the admin endpoint's HTTP and metrics.
//! - [`cluster`]: brokers and a PKI together, the usual set-up (or one broker and the binary's config file).
//! - [`forwarder`]: a counting TCP forwarder, a broker's view of its new-connection rate.

pub mod admin;
pub mod broker;
pub mod ca;
pub mod client;
pub mod cluster;
pub mod forwarder;
pub mod pki;
pub mod proxy;
pub mod proxy_yaml;
pub mod raw_mqtt;
pub mod time;

pub use admin::{http_get, metric, metric_in, try_http_get};
pub use broker::{Mosquitto, WHOAMI_TOPIC};
pub use ca::{Issued, TestCa};
pub use client::{
    connect_v4, connect_v5, try_which_broker, which_broker, which_brokers, Conn, MqttClient, Version, Via,
};
pub use cluster::{Cluster, OneBroker};
pub use forwarder::{busiest_window, counting_forwarder, AcceptTimes, CAP_WINDOW};
pub use pki::TestPki;
pub use proxy::{id_on, Placement, TestProxy};
pub use proxy_yaml::{tls_front_yaml, tls_listener_yaml, yaml_for, ProxyYaml};
pub use raw_mqtt::{connect_packet, connect_packet_v311, connect_packet_v5, tls_connect, tls_exchange};
pub use time::{bounded, eventually, free_port, init_tracing, wait_accepting, STEP_TIMEOUT};
