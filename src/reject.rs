//! Every way a client is refused, on one type: the `reason` label of `mqttlb_connections_rejected_total`, the side
//! at fault, and the CONNACK the client gets first where its protocol has a code for it. Counting a refusal
//! ([`Reject::count`]) and answering it ([`refuse`]) happen here only.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::metrics::{KindLabels, Metrics, ReasonLabels};
use crate::mqtt::connack::{connack, Refusal};
use crate::mqtt::first_packet::FirstPacketError;
use crate::mqtt::{ConnectError, ProtocolVersion, RejectReason};
use crate::proxy_protocol::ProxyError;
use crate::transport::ws::{self, UpgradeFailure, Violation};

/// Who is at fault for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (or the proxy in front of it) broke a rule or a limit.
    Client,
    /// No server could take the client.
    Server,
    /// mqtt-lb's own capacity.
    Internal,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
            Side::Internal => "internal",
        }
    }
}

/// Why a client was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not in the listener's `allowed_sources` (at accept, or after a trusted proxy's header).
    SourceNotAllowed,
    /// Over `max_connection_rate_per_ip` (at accept, or after a trusted proxy's header).
    RateLimited,
    /// Over `max_connections` (at accept).
    MaxConnections,
    /// Over `max_connections_per_ip` (at accept, or after a trusted proxy's header).
    MaxConnectionsPerIp,
    /// A trusted proxy's PROXY header was missing or malformed.
    ProxyProtocolInvalid,
    /// A trusted proxy's PROXY header did not arrive within `handshake_timeout`.
    ProxyProtocolTimeout,
    /// The TLS handshake failed or timed out; `kind` is the `mqttlb_tls_handshake_failures_total` label.
    TlsHandshake { kind: &'static str },
    /// The WebSocket upgrade was refused (the client got an HTTP answer) or failed.
    WsUpgrade(UpgradeFailure),
    /// A WebSocket client broke the frame rules before its CONNECT was complete.
    WsFrame(Violation),
    /// The client closed before its first packet was complete (or inside the PROXY header).
    ClosedBeforeConnect,
    /// The first packet did not arrive within `connect_timeout`.
    ConnectTimeout,
    /// The first packet is larger than `max_connect_size`, with the version when the bytes read so far name it (an
    /// MQTT 5 client is told 0x95 packet too large; 3.x has no code for it and is closed).
    ConnectTooLarge(Option<ProtocolVersion>),
    /// A read from the client failed before its CONNECT was complete.
    ClientError,
    /// The first packet is not a valid CONNECT.
    InvalidConnect(ConnectError),
    /// `tls.require_identity`: the client certificate does not vouch for the CONNECT's identity.
    IdentityMismatch(ProtocolVersion),
    /// No route of the listener takes the client and it has no default `backend`. The version is None on raw TCP
    /// listeners.
    NoRoute(Option<ProtocolVersion>),
    /// No server of the backend is up and ready. The version is None on raw TCP listeners.
    NoServerAvailable(Option<ProtocolVersion>),
    /// Every candidate server failed to connect.
    ServerConnectFailed(Option<ProtocolVersion>),
    /// The client's server stayed at its `max_connections` or `max_connection_rate` for as long as the client could
    /// wait (`queue_timeout`, or its connect deadline).
    ServerBusy(Option<ProtocolVersion>),
    /// The client's server is at a cap and `max_queue` clients are waiting for it already.
    ServerQueueFull(Option<ProtocolVersion>),
}

impl Reject {
    /// One refusal of each kind, every label included (CONNECT reasons, WebSocket failures and violations).
    pub fn all() -> Vec<Reject> {
        let mut all = vec![
            Reject::SourceNotAllowed,
            Reject::RateLimited,
            Reject::MaxConnections,
            Reject::MaxConnectionsPerIp,
            Reject::ProxyProtocolInvalid,
            Reject::ProxyProtocolTimeout,
            Reject::TlsHandshake { kind: "io" },
            Reject::ClosedBeforeConnect,
            Reject::ConnectTimeout,
            Reject::ConnectTooLarge(None),
            Reject::ClientError,
            Reject::IdentityMismatch(ProtocolVersion::V5),
            Reject::NoRoute(None),
            Reject::NoServerAvailable(None),
            Reject::ServerConnectFailed(None),
            Reject::ServerBusy(None),
            Reject::ServerQueueFull(None),
        ];
        all.extend(UpgradeFailure::ALL.map(Reject::WsUpgrade));
        all.extend(Violation::ALL.map(Reject::WsFrame));
        all.extend(
            RejectReason::ALL.map(|reason| Reject::InvalidConnect(ConnectError { reason, version: None, detail: "" })),
        );
        all
    }

    /// Every `reason` label of `mqttlb_connections_rejected_total`.
    pub fn labels() -> BTreeSet<&'static str> {
        Reject::all().into_iter().map(Reject::label).collect()
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::SourceNotAllowed => "source_not_allowed",
            Reject::RateLimited => "rate_limited",
            Reject::MaxConnections => "max_connections",
            Reject::MaxConnectionsPerIp => "max_connections_per_ip",
            Reject::ProxyProtocolInvalid => "proxy_protocol_invalid",
            Reject::ProxyProtocolTimeout => "proxy_protocol_timeout",
            Reject::TlsHandshake { .. } => "tls_handshake",
            Reject::WsUpgrade(failure) => failure.label(),
            Reject::WsFrame(violation) => violation.label(),
            Reject::ClosedBeforeConnect => "closed_before_connect",
            Reject::ConnectTimeout => "connect_timeout",
            Reject::ConnectTooLarge(_) => "connect_too_large",
            Reject::ClientError => "client_error",
            Reject::InvalidConnect(e) => e.reason.label(),
            Reject::IdentityMismatch(_) => "identity_mismatch",
            Reject::NoRoute(_) => "no_route",
            Reject::NoServerAvailable(_) => "no_server_available",
            Reject::ServerConnectFailed(_) => "server_connect_failed",
            Reject::ServerBusy(_) => "server_busy",
            Reject::ServerQueueFull(_) => "server_queue_full",
        }
    }

    /// The side at fault.
    pub fn side(self) -> Side {
        match self {
            Reject::MaxConnections => Side::Internal,
            Reject::NoServerAvailable(_)
            | Reject::ServerConnectFailed(_)
            | Reject::ServerBusy(_)
            | Reject::ServerQueueFull(_) => Side::Server,
            _ => Side::Client,
        }
    }

    /// The CONNACK to send before closing, where the client's version has a code for it.
    pub fn connack(self) -> Option<Vec<u8>> {
        match self {
            Reject::InvalidConnect(e) => e.connack(),
            Reject::IdentityMismatch(version) | Reject::NoRoute(Some(version)) => {
                connack(version, Refusal::NotAuthorized)
            }
            Reject::ConnectTooLarge(Some(version)) => connack(version, Refusal::PacketTooLarge),
            Reject::NoServerAvailable(Some(version)) | Reject::ServerConnectFailed(Some(version)) => {
                connack(version, Refusal::ServerUnavailable)
            }
            Reject::ServerBusy(Some(version)) | Reject::ServerQueueFull(Some(version)) => {
                connack(version, Refusal::ServerBusy)
            }
            _ => None,
        }
    }

    /// More about the refusal, for the debug line.
    fn detail(self) -> Option<&'static str> {
        match self {
            Reject::InvalidConnect(e) => Some(e.detail),
            Reject::TlsHandshake { kind } => Some(kind),
            _ => None,
        }
    }

    /// Counts the refusal: the rejected counter, and the counter of its step where it has one (invalid CONNECTs,
    /// TLS handshake failures by kind).
    pub fn count(self, metrics: &Metrics, listener: &str) {
        match self {
            Reject::InvalidConnect(e) => {
                let labels = ReasonLabels { listener: listener.to_owned(), reason: e.reason.label() };
                metrics.connect_invalid.get_or_create(&labels).inc();
            }
            Reject::TlsHandshake { kind } => {
                let labels = KindLabels { listener: listener.to_owned(), kind };
                metrics.tls_handshake_failures.get_or_create(&labels).inc();
            }
            _ => {}
        }
        metrics.reject(listener, self.label());
    }
}

impl From<&ProxyError> for Reject {
    fn from(e: &ProxyError) -> Reject {
        match e {
            ProxyError::Missing | ProxyError::BadV1(_) | ProxyError::BadV2(_) => Reject::ProxyProtocolInvalid,
            ProxyError::Closed => Reject::ClosedBeforeConnect,
            ProxyError::Timeout => Reject::ProxyProtocolTimeout,
        }
    }
}

impl From<FirstPacketError> for Reject {
    fn from(e: FirstPacketError) -> Reject {
        match e {
            FirstPacketError::Invalid(e) => Reject::InvalidConnect(e),
            FirstPacketError::TooLarge(version) => Reject::ConnectTooLarge(version),
            FirstPacketError::Closed => Reject::ClosedBeforeConnect,
            FirstPacketError::Io(e) => ws::violation(&e).map_or(Reject::ClientError, Reject::WsFrame),
        }
    }
}

/// How long the refusal CONNACK may take to write.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts `reject`, logs it (debug) and, where there is one and a stream to write it to, sends its CONNACK.
pub async fn refuse<S: AsyncWrite + Unpin>(metrics: &Metrics, listener: &str, reject: Reject, stream: Option<&mut S>) {
    debug!(reason = reject.label(), side = reject.side().label(), detail = reject.detail(), "client refused");
    reject.count(metrics, listener);
    if let (Some(stream), Some(bytes)) = (stream, reject.connack()) {
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.write_all(&bytes)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_ones_the_metrics_always_had() {
        let labels = Reject::labels();
        for label in
            ["source_not_allowed", "tls_handshake", "ws_bad_path", "ws_text_frame", "not_connect", "client_error"]
        {
            assert!(labels.contains(label), "{label}");
        }
        assert_eq!(labels.len(), 17 + 8 + 2 + 16 - 1, "client_error is both an upgrade and a read failure");
    }

    #[test]
    fn refusals_after_the_connect_answer_in_the_clients_version() {
        let v5 = ProtocolVersion::V5;
        assert_eq!(Reject::IdentityMismatch(v5).connack(), Some(vec![0x20, 0x03, 0x00, 0x87, 0x00]));
        assert_eq!(
            Reject::NoServerAvailable(Some(ProtocolVersion::V311)).connack(),
            Some(vec![0x20, 0x02, 0x00, 0x03])
        );
        assert_eq!(Reject::ServerConnectFailed(None).connack(), None, "raw TCP: no CONNACK");
        assert_eq!(Reject::ConnectTimeout.connack(), None);
        assert_eq!(Reject::NoServerAvailable(None).side(), Side::Server);
    }

    #[test]
    fn no_route_is_not_authorized() {
        assert_eq!(Reject::NoRoute(Some(ProtocolVersion::V5)).connack(), Some(vec![0x20, 0x03, 0x00, 0x87, 0x00]));
        assert_eq!(Reject::NoRoute(Some(ProtocolVersion::V311)).connack(), Some(vec![0x20, 0x02, 0x00, 0x05]));
        assert_eq!(Reject::NoRoute(None).connack(), None, "raw TCP: no CONNACK");
        assert_eq!(Reject::NoRoute(None).side(), Side::Client);
    }

    #[test]
    fn a_busy_server_is_0x89_in_5_and_0x03_in_3_1_1() {
        assert_eq!(Reject::ServerBusy(Some(ProtocolVersion::V5)).connack(), Some(vec![0x20, 0x03, 0x00, 0x89, 0x00]));
        assert_eq!(Reject::ServerQueueFull(Some(ProtocolVersion::V311)).connack(), Some(vec![0x20, 0x02, 0x00, 0x03]));
        assert_eq!(Reject::ServerBusy(None).connack(), None, "raw TCP: no CONNACK");
        assert_eq!(Reject::ServerQueueFull(None).side(), Side::Server);
    }
}
