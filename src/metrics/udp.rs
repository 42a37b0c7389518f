//! The metrics of `protocol: coap` listeners (read by the UDP path, which depends on this module, not the
//! reverse), registered by [`super::Metrics::new`].
//!
//! Labels are bounded: `listener` from the configuration; `direction`, `reason` and `key` from the fixed sets
//! below. A device address, endpoint name or CID is never a label. Per-server traffic of UDP flows is also counted
//! in the server families (`mqttlb_server_sent_bytes_total`, `mqttlb_server_received_bytes_total`,
//! `mqttlb_server_connections_active` = open flows, `mqttlb_server_connections_total` = flows opened).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{ListenerLabels, ReasonLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub listener: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    pub listener: String,
    pub key: &'static str,
}

/// `direction` values.
pub const TO_SERVER: &str = "to_server";
pub const TO_CLIENT: &str = "to_client";

/// `reason` values of `mqttlb_udp_dropped_datagrams_total`.
pub mod drop_reason {
    /// Larger than the listener's `max_datagram_size`.
    pub const TOO_LARGE: &str = "too_large";
    /// Not a well-formed CoAP message (RFC 7252 §3), including unknown versions.
    pub const MALFORMED_COAP: &str = "malformed_coap";
    /// Starts like DTLS but the record header is broken.
    pub const MALFORMED_DTLS: &str = "malformed_dtls";
    /// Over the flow's `max_datagram_rate_per_flow`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Outside the listener's `allowed_sources`.
    pub const SOURCE_NOT_ALLOWED: &str = "source_not_allowed";
    /// A new flow from an address that has `max_flows_per_ip` already.
    pub const MAX_FLOWS_PER_IP: &str = "max_flows_per_ip";
    /// No server up and ready (or none whose address resolves), or the flow's socket could not be opened.
    pub const NO_SERVER: &str = "no_server";
    /// The server's host said its port is closed (ICMP port unreachable, seen by the next send).
    pub const UNREACHABLE: &str = "unreachable";
    /// Another send error (a full socket buffer, for one).
    pub const SEND_FAILED: &str = "send_failed";
    pub const ALL: [&str; 9] = [
        TOO_LARGE,
        MALFORMED_COAP,
        MALFORMED_DTLS,
        RATE_LIMITED,
        SOURCE_NOT_ALLOWED,
        MAX_FLOWS_PER_IP,
        NO_SERVER,
        UNREACHABLE,
        SEND_FAILED,
    ];
}

/// `reason` values of `mqttlb_udp_flow_evictions_total`: why a flow ended.
pub mod eviction_reason {
    /// No datagram either way for `flow_idle_timeout`.
    pub const IDLE: &str = "idle";
    /// The table was at `max_flows`: the least recently used flow made room.
    pub const FULL: &str = "full";
    /// Its server was down when the device sent again: the device was placed anew.
    pub const SERVER_DOWN: &str = "server_down";
    /// A Register (`ep=`) of the device belongs on another server than the flow's: the flow moved there.
    pub const REPLACED: &str = "replaced";
    /// A reload removed its server (or changed its address).
    pub const RELOAD: &str = "reload";
    pub const ALL: [&str; 5] = [IDLE, FULL, SERVER_DOWN, REPLACED, RELOAD];
}

/// `key` values of `mqttlb_udp_flows_opened_total`: the placement key of a new flow.
pub mod placement_kind {
    /// A DTLS Connection ID whose first byte is the `dtls_cid_node_id` of a usable server: that server (the same
    /// on every instance, no state).
    pub const DTLS_CID_NODE_ID: &str = "dtls_cid_node_id";
    /// A DTLS Connection ID seen before on a flow: the server that flow had.
    pub const DTLS_CID_LEARNED: &str = "dtls_cid_learned";
    /// A DTLS Connection ID never seen here: rendezvous hash of the CID.
    pub const DTLS_CID: &str = "dtls_cid";
    /// The LwM2M endpoint name of a Register: rendezvous hash of the name.
    pub const ENDPOINT: &str = "endpoint";
    /// The device's address and port: rendezvous hash of the address.
    pub const SOURCE: &str = "source";
    pub const ALL: [&str; 5] = [DTLS_CID_NODE_ID, DTLS_CID_LEARNED, DTLS_CID, ENDPOINT, SOURCE];
}

/// The UDP metric families.
#[derive(Default)]
pub struct UdpFamilies {
    pub datagrams: Family<DirectionLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub flows_active: Family<ListenerLabels, Gauge>,
    pub flows_opened: Family<PlacementLabels, Counter>,
    pub flow_evictions: Family<ReasonLabels, Counter>,
    pub dtls_cids: Family<ListenerLabels, Gauge>,
    pub receive_queue_drops: Family<ListenerLabels, Counter>,
    pub receive_buffer: Family<ListenerLabels, Gauge>,
}

impl UdpFamilies {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "udp_relayed_datagrams",
            "Datagrams relayed by a coap listener, per direction (to_server, to_client)",
            self.datagrams.clone(),
        );
        r.register_with_unit(
            "udp_relayed",
            "Bytes of the datagrams relayed by a coap listener, per direction (to_server, to_client)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "udp_dropped_datagrams",
            "Datagrams a coap listener dropped, per reason (too_large, malformed_coap, malformed_dtls, \
             rate_limited, source_not_allowed, max_flows_per_ip, no_server, unreachable, send_failed)",
            self.dropped.clone(),
        );
        r.register("udp_flows_active", "Device flows open now on a coap listener", self.flows_active.clone());
        r.register(
            "udp_flows_opened",
            "Device flows opened, per placement key (dtls_cid_node_id, dtls_cid_learned, dtls_cid, endpoint, source)",
            self.flows_opened.clone(),
        );
        r.register(
            "udp_flow_evictions",
            "Device flows ended, per reason (idle, full, server_down, replaced, reload)",
            self.flow_evictions.clone(),
        );
        r.register(
            "udp_dtls_cids",
            "DTLS Connection IDs remembered with their server on a coap listener",
            self.dtls_cids.clone(),
        );
        r.register(
            "udp_receive_queue_dropped_datagrams",
            "Datagrams the kernel dropped because a coap listener's socket receive queue was full (SO_RXQ_OVFL)",
            self.receive_queue_drops.clone(),
        );
        r.register_with_unit(
            "udp_receive_buffer",
            "A coap listener's socket receive buffer as the kernel accounts it (SO_RCVBUF: twice the size granted)",
            Unit::Bytes,
            self.receive_buffer.clone(),
        );
    }

    /// The handles of one listener, every label value created up front (so the datagram path only touches
    /// atomics, and every series shows from the start).
    pub fn listener(&self, listener: &str) -> UdpListenerMetrics {
        let direction = |family: &Family<DirectionLabels, Counter>, direction: &'static str| {
            family.get_or_create(&DirectionLabels { listener: listener.to_owned(), direction }).clone()
        };
        let reason = |family: &Family<ReasonLabels, Counter>, reason: &'static str| {
            family.get_or_create(&ReasonLabels { listener: listener.to_owned(), reason }).clone()
        };
        let l = ListenerLabels { listener: listener.to_owned() };
        UdpListenerMetrics {
            datagrams_to_server: direction(&self.datagrams, TO_SERVER),
            datagrams_to_client: direction(&self.datagrams, TO_CLIENT),
            bytes_to_server: direction(&self.bytes, TO_SERVER),
            bytes_to_client: direction(&self.bytes, TO_CLIENT),
            dropped: drop_reason::ALL.map(|r| (r, reason(&self.dropped, r))),
            evictions: eviction_reason::ALL.map(|r| (r, reason(&self.flow_evictions, r))),
            opened: placement_kind::ALL.map(|key| {
                (key, self.flows_opened.get_or_create(&PlacementLabels { listener: listener.to_owned(), key }).clone())
            }),
            flows_active: self.flows_active.get_or_create(&l).clone(),
            dtls_cids: self.dtls_cids.get_or_create(&l).clone(),
            receive_queue_drops: self.receive_queue_drops.get_or_create(&l).clone(),
            receive_buffer: self.receive_buffer.get_or_create(&l).clone(),
        }
    }
}

/// Per-listener handles.
#[derive(Clone, Debug)]
pub struct UdpListenerMetrics {
    pub datagrams_to_server: Counter,
    pub datagrams_to_client: Counter,
    pub bytes_to_server: Counter,
    pub bytes_to_client: Counter,
    dropped: [(&'static str, Counter); 9],
    evictions: [(&'static str, Counter); 5],
    opened: [(&'static str, Counter); 5],
    pub flows_active: Gauge,
    pub dtls_cids: Gauge,
    pub receive_queue_drops: Counter,
    pub receive_buffer: Gauge,
}

fn find<'a>(list: &'a [(&'static str, Counter)], name: &str) -> Option<&'a Counter> {
    list.iter().find(|(n, _)| *n == name).map(|(_, c)| c)
}

impl UdpListenerMetrics {
    /// Counts a dropped datagram (`reason` from [`drop_reason`]).
    pub fn drop(&self, reason: &str) {
        if let Some(c) = find(&self.dropped, reason) {
            c.inc();
        }
    }

    /// Counts an ended flow (`reason` from [`eviction_reason`]).
    pub fn evict(&self, reason: &str) {
        if let Some(c) = find(&self.evictions, reason) {
            c.inc();
        }
    }

    /// Counts a new flow (`key` from [`placement_kind`]).
    pub fn opened(&self, key: &str) {
        if let Some(c) = find(&self.opened, key) {
            c.inc();
        }
    }
}
