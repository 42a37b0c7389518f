//! Every metric mqtt-lb exports, named once, in one registry (prefix `mqttlb_`).
//!
//! Labels are bounded: listener, backend and server names come from the configuration, `reason` and `kind` from
//! fixed sets in the code. A client id or an IP address is never a label. Per-server handles are created once when a
//! backend's pool is built ([`ServerMetrics`]), so the relay path touches only atomics.
//!
//! Every listener's traffic carries its `listener` label, so MQTTS and WSS clients are told apart. The WebSocket and
//! source reasons of `mqttlb_connections_rejected_total` are: `source_not_allowed` (outside the listener's
//! `allowed_sources`, closed at accept), `ws_bad_path`, `ws_bad_upgrade`, `ws_no_subprotocol`, `ws_origin`,
//! `ws_upgrade_too_large`, `ws_upgrade_timeout`, `ws_closed_before_upgrade` (the upgrade request), and
//! `ws_text_frame`, `ws_protocol` (frames before the CONNECT was complete). The last two are also counted, whenever
//! they happen, in `mqttlb_websocket_frame_errors_total`. The `coap` listeners' families (`mqttlb_udp_*`: datagrams
//! and bytes each way, flows, evictions, drops by reason) are defined in [`udp`].

pub mod certificate;
mod process;
pub mod udp;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::rate_limit::RateTableMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// A serving certificate of a listener, named by its `cert` file as the configuration spells it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub listener: String,
    pub certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub listener: String,
    pub reason: &'static str,
}

/// A listener and one of its routes (`mqttlb_route_matches_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

/// A listener and the limit that stopped it accepting (`max_connections`, `max_handshakes`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub listener: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub listener: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub backend: String,
    pub server: String,
}

/// `mqttlb_server_state`: one series per administrative state, 1 for the server's current one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStateLabels {
    pub backend: String,
    pub server: String,
    pub state: &'static str,
}

/// `mqttlb_server_queue_refusals_total`: `server_busy` or `server_queue_full`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerReasonLabels {
    pub backend: String,
    pub server: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: ReloadResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    error,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn queue_wait_histogram() -> Histogram {
    // 1 ms .. ~33 s: waits end at queue_timeout, which is at most limits.connect_timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The registry and every metric family.
pub struct Metrics {
    registry: Registry,
    pub connections_accepted: Family<ListenerLabels, Counter>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    pub connections_rejected: Family<ReasonLabels, Counter>,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub accept_pauses: Family<LimitLabels, Counter>,
    pub accept_paused: Family<LimitLabels, Gauge>,
    pub handshakes_in_flight: Family<ListenerLabels, Gauge>,
    pub connect_invalid: Family<ReasonLabels, Counter>,
    /// Clients each listener's route took (the first route that matched).
    pub route_matches: Family<RouteLabels, Counter>,
    pub tls_handshake_failures: Family<KindLabels, Counter>,
    pub websocket_frame_errors: Family<ReasonLabels, Counter>,
    pub tls_handshake_seconds: HistogramFamily<ListenerLabels>,
    pub connect_read_seconds: HistogramFamily<ListenerLabels>,
    pub server_up: Family<ServerLabels, Gauge>,
    pub server_state: Family<ServerStateLabels, Gauge>,
    pub server_connections_active: Family<ServerLabels, Gauge>,
    pub server_connections: Family<ServerLabels, Counter>,
    pub server_sent_bytes: Family<ServerLabels, Counter>,
    pub server_received_bytes: Family<ServerLabels, Counter>,
    pub server_connect_errors: Family<ServerLabels, Counter>,
    pub server_connect_seconds: HistogramFamily<ServerLabels>,
    pub server_dns_lookups: Family<ServerLabels, Counter>,
    pub probe_seconds: HistogramFamily<ServerLabels>,
    pub probe_failures: Family<ServerLabels, Counter>,
    pub server_queued: Family<ServerLabels, Gauge>,
    pub server_queue_wait_seconds: HistogramFamily<ServerLabels>,
    pub server_queue_refusals: Family<ServerReasonLabels, Counter>,
    pub probe_local_errors: Family<ServerLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub tls_certificate_expiry: Family<CertificateLabels, Gauge>,
    /// The families of `coap` listeners (`mqttlb_udp_*`).
    pub udp: udp::UdpFamilies,
    /// The per-IP connection rate table (`limits.max_connection_rate_per_ip`).
    pub rate_table: RateTableMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mqttlb");
        let m = Metrics {
            connections_accepted: Family::default(),
            connections_active: Family::default(),
            connections_rejected: Family::default(),
            connections_closed: Family::default(),
            accept_pauses: Family::default(),
            accept_paused: Family::default(),
            handshakes_in_flight: Family::default(),
            connect_invalid: Family::default(),
            route_matches: Family::default(),
            tls_handshake_failures: Family::default(),
            websocket_frame_errors: Family::default(),
            tls_handshake_seconds: Family::new_with_constructor(latency_histogram),
            connect_read_seconds: Family::new_with_constructor(latency_histogram),
            server_up: Family::default(),
            server_state: Family::default(),
            server_connections_active: Family::default(),
            server_connections: Family::default(),
            server_sent_bytes: Family::default(),
            server_received_bytes: Family::default(),
            server_connect_errors: Family::default(),
            server_dns_lookups: Family::default(),
            server_connect_seconds: Family::new_with_constructor(latency_histogram),
            probe_seconds: Family::new_with_constructor(latency_histogram),
            probe_failures: Family::default(),
            server_queued: Family::default(),
            server_queue_wait_seconds: Family::new_with_constructor(queue_wait_histogram),
            server_queue_refusals: Family::default(),
            probe_local_errors: Family::default(),
            config_reloads: Family::default(),
            tls_certificate_expiry: Family::default(),
            udp: udp::UdpFamilies::default(),
            rate_table: RateTableMetrics::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        m.register_clients(r);
        m.register_servers(r);
        m.register_configuration(r);
        m.udp.register(r);
        // Read from /proc at scrape time: a handful of small files, whatever the number of connections.
        r.register_collector(Box::new(process::ProcessCollector::new()));
        Metrics { registry, ..m }
    }

    /// The client side: connections by listener, their refusals and ends, handshakes, CONNECT validation, routes.
    fn register_clients(&self, r: &mut Registry) {
        r.register("build", "mqtt-lb version", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        r.register(
            "connections_accepted",
            "Client connections accepted, per listener",
            self.connections_accepted.clone(),
        );
        r.register("connections_active", "Client connections open now, per listener", self.connections_active.clone());
        r.register(
            "connections_rejected",
            "Client connections refused or closed before relaying, per listener and reason",
            self.connections_rejected.clone(),
        );
        r.register(
            "connections_closed",
            "Relayed client connections that ended, per listener and close reason",
            self.connections_closed.clone(),
        );
        r.register(
            "accept_pauses",
            "Times a listener stopped accepting because a limit was reached (max_connections, max_handshakes); \
             new clients wait in the kernel's accept queue meanwhile",
            self.accept_pauses.clone(),
        );
        r.register(
            "accept_paused",
            "1 while a listener does not accept because of the limit, else 0",
            self.accept_paused.clone(),
        );
        r.register(
            "handshakes_in_flight",
            "TLS handshakes and WebSocket upgrades in progress, per listener (limits.max_handshakes bounds the sum)",
            self.handshakes_in_flight.clone(),
        );
        r.register(
            "connect_validation_failures",
            "First packets that failed CONNECT validation, per listener and reason",
            self.connect_invalid.clone(),
        );
        r.register(
            "route_matches",
            "Clients sent to a backend by a listener's route (the first that matched), per listener and route",
            self.route_matches.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, per listener and kind (timeout, eof, protocol, certificate, io)",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "websocket_frame_errors",
            "WebSocket clients closed for breaking the frame rules (ws_text_frame, ws_protocol), \
             per listener and reason",
            self.websocket_frame_errors.clone(),
        );
        r.register_with_unit(
            "tls_handshake_duration",
            "Time from accept to a completed TLS handshake",
            Unit::Seconds,
            self.tls_handshake_seconds.clone(),
        );
        r.register_with_unit(
            "connect_read_duration",
            "Time to read the client's complete CONNECT once the transport is up",
            Unit::Seconds,
            self.connect_read_seconds.clone(),
        );
    }

    /// The server side: state, relays, bytes, connects, health probes, the per-server queue.
    fn register_servers(&self, r: &mut Registry) {
        r.register("server_up", "1 when the server passes its health checks, else 0", self.server_up.clone());
        r.register(
            "server_state",
            "Administrative state of the server: 1 for the current one of ready, drain, maint; 0 for the others",
            self.server_state.clone(),
        );
        r.register(
            "server_connections_active",
            "Relays open to the server now",
            self.server_connections_active.clone(),
        );
        r.register("server_connections", "Relays opened to the server", self.server_connections.clone());
        r.register_with_unit(
            "server_sent",
            "Bytes sent to the server (client to broker)",
            Unit::Bytes,
            self.server_sent_bytes.clone(),
        );
        r.register_with_unit(
            "server_received",
            "Bytes received from the server (broker to client)",
            Unit::Bytes,
            self.server_received_bytes.clone(),
        );
        r.register(
            "server_connect_errors",
            "Failed or timed-out connects to the server",
            self.server_connect_errors.clone(),
        );
        r.register(
            "server_dns_lookups",
            "DNS lookups of the server's host name (in the background, not per connection)",
            self.server_dns_lookups.clone(),
        );
        r.register_with_unit(
            "server_connect_duration",
            "Time to open a TCP connection to the server",
            Unit::Seconds,
            self.server_connect_seconds.clone(),
        );
        r.register_with_unit(
            "health_probe_duration",
            "Duration of health probes, successful or not",
            Unit::Seconds,
            self.probe_seconds.clone(),
        );
        r.register("health_probe_failures", "Failed health probes", self.probe_failures.clone());
        r.register(
            "server_queued_clients",
            "Clients waiting now for the server's max_connections or max_connection_rate",
            self.server_queued.clone(),
        );
        r.register_with_unit(
            "server_queue_wait",
            "Time clients of a capped server waited for it (0 when admitted at once), admitted or refused",
            Unit::Seconds,
            self.server_queue_wait_seconds.clone(),
        );
        r.register(
            "server_queue_refusals",
            "Clients of the server refused because it stayed at a cap: reason server_busy (waited until \
             queue_timeout or the connect deadline) or server_queue_full (max_queue clients waiting already)",
            self.server_queue_refusals.clone(),
        );
        r.register(
            "health_probe_local_errors",
            "Health probes that could not run for want of a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM, no \
             ephemeral port): not held against the server",
            self.probe_local_errors.clone(),
        );
    }

    /// Reloads, certificates and the per-IP rate table.
    fn register_configuration(&self, r: &mut Registry) {
        r.register("config_reloads", "Configuration reloads by result", self.config_reloads.clone());
        r.register_with_unit(
            "tls_certificate_expiry_timestamp",
            "End of validity (notAfter) of each serving certificate of a TLS listener (named by its cert file), as a Unix \
             time",
            Unit::Seconds,
            self.tls_certificate_expiry.clone(),
        );
        r.register(
            "connection_rate_table_entries",
            "Addresses the per-IP connection rate table holds now",
            self.rate_table.entries.clone(),
        );
        r.register(
            "connection_rate_table_evictions",
            "Per-IP rate buckets not yet refilled that were evicted to admit a new address (the table was full)",
            self.rate_table.evictions.clone(),
        );
    }

    /// The Prometheus text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a refused client: `reason` is from a fixed set.
    pub fn reject(&self, listener: &str, reason: &'static str) {
        self.connections_rejected.get_or_create(&ReasonLabels { listener: listener.to_owned(), reason }).inc();
    }

    /// The pause counter and gauge of `listener` for `limit`.
    pub fn accept_pause(&self, listener: &str, limit: &'static str) -> (Counter, Gauge) {
        let l = LimitLabels { listener: listener.to_owned(), limit };
        (self.accept_pauses.get_or_create(&l).clone(), self.accept_paused.get_or_create(&l).clone())
    }

    /// The handles of one server, fetched once.
    pub fn server(&self, backend: &str, server: &str) -> ServerMetrics {
        let l = ServerLabels { backend: backend.to_owned(), server: server.to_owned() };
        ServerMetrics {
            up: self.server_up.get_or_create(&l).clone(),
            state: ServerStateGauges {
                ready: self.server_state_gauge(&l, "ready"),
                drain: self.server_state_gauge(&l, "drain"),
                maint: self.server_state_gauge(&l, "maint"),
            },
            active: self.server_connections_active.get_or_create(&l).clone(),
            connections: self.server_connections.get_or_create(&l).clone(),
            sent_bytes: self.server_sent_bytes.get_or_create(&l).clone(),
            received_bytes: self.server_received_bytes.get_or_create(&l).clone(),
            connect_errors: self.server_connect_errors.get_or_create(&l).clone(),
            connect_seconds: self.server_connect_seconds.get_or_create(&l).clone(),
            dns_lookups: self.server_dns_lookups.get_or_create(&l).clone(),
            probe_seconds: self.probe_seconds.get_or_create(&l).clone(),
            probe_failures: self.probe_failures.get_or_create(&l).clone(),
            queued: self.server_queued.get_or_create(&l).clone(),
            queue_wait_seconds: self.server_queue_wait_seconds.get_or_create(&l).clone(),
            queue_timeouts: self.server_queue_refusal(&l, "server_busy"),
            queue_full: self.server_queue_refusal(&l, "server_queue_full"),
            probe_local_errors: self.probe_local_errors.get_or_create(&l).clone(),
        }
    }

    /// Drops the gauges of a server a reload removed, so it no longer shows as up (its counters stay until the
    /// process restarts, as counters should).
    pub fn forget_server(&self, backend: &str, server: &str) {
        let l = ServerLabels { backend: backend.to_owned(), server: server.to_owned() };
        self.server_up.remove(&l);
        self.server_connections_active.remove(&l);
        self.server_queued.remove(&l);
        for state in ["ready", "drain", "maint"] {
            self.server_state.remove(&ServerStateLabels {
                backend: l.backend.clone(),
                server: l.server.clone(),
                state,
            });
        }
    }

    /// Created with the server, so that each reason has a series (at 0) from the start.
    fn server_queue_refusal(&self, l: &ServerLabels, reason: &'static str) -> Counter {
        let labels = ServerReasonLabels { backend: l.backend.clone(), server: l.server.clone(), reason };
        self.server_queue_refusals.get_or_create(&labels).clone()
    }

    fn server_state_gauge(&self, l: &ServerLabels, state: &'static str) -> Gauge {
        let labels = ServerStateLabels { backend: l.backend.clone(), server: l.server.clone(), state };
        self.server_state.get_or_create(&labels).clone()
    }

    /// Sets `mqttlb_tls_certificate_expiry_timestamp_seconds` of a listener's certificate from its notAfter.
    pub fn set_certificate_expiry(&self, listener: &str, certificate: &str, not_after_unix: i64) {
        self.tls_certificate_expiry
            .get_or_create(&CertificateLabels { listener: listener.to_owned(), certificate: certificate.to_owned() })
            .set(not_after_unix);
    }

    /// The handles of one listener, fetched once.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let l = ListenerLabels { listener: listener.to_owned() };
        ListenerMetrics {
            accepted: self.connections_accepted.get_or_create(&l).clone(),
            active: self.connections_active.get_or_create(&l).clone(),
            handshake_seconds: self.tls_handshake_seconds.get_or_create(&l).clone(),
            connect_read_seconds: self.connect_read_seconds.get_or_create(&l).clone(),
            handshakes: self.handshakes_in_flight.get_or_create(&l).clone(),
            closed: self.connections_closed.clone(),
        }
    }
}

/// Per-server metric handles (cheap clones of shared atomics).
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    pub up: Gauge,
    pub state: ServerStateGauges,
    pub active: Gauge,
    pub connections: Counter,
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    pub connect_errors: Counter,
    pub connect_seconds: Histogram,
    pub dns_lookups: Counter,
    pub probe_seconds: Histogram,
    pub probe_failures: Counter,
    /// `mqttlb_server_queued_clients`.
    pub queued: Gauge,
    pub queue_wait_seconds: Histogram,
    /// `mqttlb_server_queue_refusals_total{reason="server_busy"}`.
    pub queue_timeouts: Counter,
    /// `mqttlb_server_queue_refusals_total{reason="server_queue_full"}`.
    pub queue_full: Counter,
    pub probe_local_errors: Counter,
}

/// The one-hot `mqttlb_server_state` series of one server.
#[derive(Clone, Debug)]
pub struct ServerStateGauges {
    ready: Gauge,
    drain: Gauge,
    maint: Gauge,
}

impl ServerStateGauges {
    /// Marks `state` (`ready`, `drain` or `maint`) as the current one.
    pub fn set(&self, state: &str) {
        self.ready.set(i64::from(state == "ready"));
        self.drain.set(i64::from(state == "drain"));
        self.maint.set(i64::from(state == "maint"));
    }
}

/// Per-listener metric handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub accepted: Counter,
    pub active: Gauge,
    pub handshake_seconds: Histogram,
    pub connect_read_seconds: Histogram,
    /// Handshakes (TLS, WebSocket upgrade) in progress.
    pub handshakes: Gauge,
    /// `mqttlb_connections_closed_total`, by listener and reason.
    pub closed: Family<ReasonLabels, Counter>,
}
