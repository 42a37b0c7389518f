//! One client connection, from accept to close:
//! transport (TLS handshake under a deadline) -> read the first packet under `connect_timeout` and
//! `max_connect_size` -> validate the CONNECT -> choose a server (next candidate on a connect error) -> send the
//! buffered bytes unchanged -> relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::balancer::backend::{ActiveGuard, Server};
use crate::balancer::Balancer;
use crate::config::{Limits, ListenerProtocol};
use crate::listener::AdmissionTicket;
use crate::metrics::{ListenerMetrics, Metrics, ReasonLabels};
use crate::mqtt::connack::{connack, Refusal};
use crate::mqtt::frame::{check_fixed_header, FrameError};
use crate::mqtt::{parse_connect, ConnectError, ProtocolVersion, RejectReason};
use crate::proxy_protocol;
use crate::relay::{relay, RelayEnd};
use crate::transport::ClientStream;

/// What every connection of one listener shares.
pub struct SessionContext {
    pub name: String,
    pub protocol: ListenerProtocol,
    pub tls: Option<TlsAcceptor>,
    pub balancer: Arc<Balancer>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub listener_metrics: ListenerMetrics,
}

/// Why a client was not relayed (the `reason` label of `mqttlb_connections_rejected_total`).
#[derive(Debug)]
enum Refused {
    /// Counted already (TLS failures, invalid CONNECT); nothing more to send.
    Counted,
    /// A reason to count, and a CONNACK to send first when the version is known.
    Reason(&'static str, Option<(ProtocolVersion, Refusal)>),
}

pub struct Session {
    ctx: Arc<SessionContext>,
    peer: SocketAddr,
    _ticket: AdmissionTicket,
}

/// Keeps the listener's active-connections gauge up while a session lives.
struct ActiveListener<'a>(&'a ListenerMetrics);

impl Drop for ActiveListener<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

impl Session {
    pub fn new(ctx: Arc<SessionContext>, peer: SocketAddr, ticket: AdmissionTicket) -> Session {
        Session { ctx, peer, _ticket: ticket }
    }

    pub async fn run(self, tcp: TcpStream) {
        let ctx = Arc::clone(&self.ctx);
        ctx.listener_metrics.active.inc();
        let _active = ActiveListener(&ctx.listener_metrics);
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let Some(mut stream) = self.handshake(tcp).await else {
            return;
        };
        let result = match ctx.protocol {
            ListenerProtocol::Mqtt => self.mqtt(&mut stream, local).await,
            ListenerProtocol::Tcp => self.passthrough(&mut stream, local).await,
        };
        if let Err(Refused::Reason(reason, answer)) = result {
            debug!(listener = %ctx.name, peer = %self.peer, reason, "client refused");
            ctx.metrics.reject(&ctx.name, reason);
            if let Some(bytes) = answer.and_then(|(v, r)| connack(v, r)) {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    }

    /// The TLS handshake, under `limits.handshake_timeout`; failures counted by kind.
    async fn handshake(&self, tcp: TcpStream) -> Option<ClientStream> {
        let ctx = &self.ctx;
        let Some(acceptor) = &ctx.tls else {
            return Some(ClientStream::Plain(tcp));
        };
        let start = Instant::now();
        let kind = match tokio::time::timeout(ctx.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                ctx.listener_metrics.handshake_seconds.observe(start.elapsed().as_secs_f64());
                return Some(ClientStream::Tls(Box::new(tls)));
            }
            Err(_) => "timeout",
            Ok(Err(e)) => handshake_failure_kind(&e),
        };
        debug!(listener = %ctx.name, peer = %self.peer, kind, "TLS handshake failed");
        ctx.metrics
            .tls_handshake_failures
            .get_or_create(&crate::metrics::KindLabels { listener: ctx.name.clone(), kind })
            .inc();
        ctx.metrics.reject(&ctx.name, "tls_handshake");
        None
    }

    /// An MQTT client: read and validate the CONNECT, place it, relay.
    async fn mqtt(&self, stream: &mut ClientStream, local: Option<SocketAddr>) -> Result<(), Refused> {
        let ctx = &self.ctx;
        let start = Instant::now();
        let limits = &ctx.limits;
        let read = tokio::time::timeout(limits.connect_timeout, read_first_packet(stream, limits.max_connect_size));
        let parsed = match read.await {
            Err(_) => return Err(Refused::Reason("connect_timeout", None)),
            Ok(Err(FirstPacket::Refused(reason))) => return Err(Refused::Reason(reason, None)),
            Ok(Err(FirstPacket::Invalid(e))) => Err(e),
            Ok(Ok((buf, len))) => parse_connect(buf.get(..len).unwrap_or_default()).map(|c| (c, buf)),
        };
        let (connect, buf) = match parsed {
            Ok(x) => x,
            Err(e) => {
                let reason = e.reason.label();
                debug!(listener = %ctx.name, peer = %self.peer, reason, detail = e.detail, "invalid CONNECT");
                ctx.metrics.connect_invalid.get_or_create(&ReasonLabels { listener: ctx.name.clone(), reason }).inc();
                ctx.metrics.reject(&ctx.name, reason);
                if let Some(bytes) = e.connack() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
                }
                return Err(Refused::Counted);
            }
        };
        ctx.listener_metrics.connect_read_seconds.observe(start.elapsed().as_secs_f64());
        let key = (!connect.client_id.is_empty()).then_some(connect.client_id.as_bytes());
        let version = connect.version;
        let unavailable = |reason| Refused::Reason(reason, Some((version, Refusal::ServerUnavailable)));
        let candidates = ctx.balancer.candidates(key);
        if candidates.is_empty() {
            return Err(unavailable("no_server_available"));
        }
        let (server, guard) =
            self.connect_server(&candidates, local, &buf).await.ok_or_else(|| unavailable("server_connect_failed"))?;
        debug!(listener = %ctx.name, peer = %self.peer, client_id = %connect.client_id, server = %guard.server().name, "relaying");
        self.relay(stream, server, guard).await;
        Ok(())
    }

    /// A raw TCP client: place it (by source address for `client-id` balance) and relay.
    async fn passthrough(&self, stream: &mut ClientStream, local: Option<SocketAddr>) -> Result<(), Refused> {
        let ip = self.peer.ip().to_string();
        let candidates = self.ctx.balancer.candidates(Some(ip.as_bytes()));
        if candidates.is_empty() {
            return Err(Refused::Reason("no_server_available", None));
        }
        let (server, guard) =
            self.connect_server(&candidates, local, &[]).await.ok_or(Refused::Reason("server_connect_failed", None))?;
        self.relay(stream, server, guard).await;
        Ok(())
    }

    /// Connects to the first candidate that answers, sends the PROXY header and `first_bytes`.
    async fn connect_server(
        &self,
        candidates: &[Arc<Server>],
        local: Option<SocketAddr>,
        first_bytes: &[u8],
    ) -> Option<(TcpStream, ActiveGuard)> {
        let pool = self.ctx.balancer.pool();
        let backend = &pool.config;
        for server in candidates {
            let start = Instant::now();
            let connected =
                tokio::time::timeout(backend.connect_timeout, TcpStream::connect(server.address.as_str())).await;
            let mut tcp = match connected {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(backend = %backend.name, server = %server.name, error = %e, "connect failed; trying the next server");
                    server.metrics.connect_errors.inc();
                    continue;
                }
                Err(_) => {
                    warn!(backend = %backend.name, server = %server.name, "connect timed out; trying the next server");
                    server.metrics.connect_errors.inc();
                    continue;
                }
            };
            server.metrics.connect_seconds.observe(start.elapsed().as_secs_f64());
            let _ = tcp.set_nodelay(true);
            let guard = server.track();
            let mut head = proxy_protocol::header(backend.proxy_protocol, self.peer, local.unwrap_or(self.peer));
            head.extend_from_slice(first_bytes);
            if !head.is_empty() {
                if let Err(e) = tcp.write_all(&head).await {
                    warn!(backend = %backend.name, server = %server.name, error = %e, "server closed before the first bytes; trying the next server");
                    server.metrics.connect_errors.inc();
                    continue;
                }
                server.metrics.sent_bytes.inc_by(first_bytes.len() as u64);
            }
            return Some((tcp, guard));
        }
        None
    }

    async fn relay(&self, stream: &mut ClientStream, server: TcpStream, guard: ActiveGuard) {
        let s = guard.server();
        let end = relay(
            stream,
            server,
            s.metrics.sent_bytes.clone(),
            s.metrics.received_bytes.clone(),
            self.ctx.limits.idle_timeout,
        )
        .await;
        match end {
            RelayEnd::Closed { to_server, to_client } => {
                debug!(listener = %self.ctx.name, peer = %self.peer, server = %s.name, to_server, to_client, "relay closed")
            }
            RelayEnd::Idle => {
                info!(listener = %self.ctx.name, peer = %self.peer, server = %s.name, "relay idle; closed")
            }
            RelayEnd::Error(e) => {
                debug!(listener = %self.ctx.name, peer = %self.peer, server = %s.name, error = %e, "relay ended")
            }
        }
    }
}

/// Classifies a failed handshake for `mqttlb_tls_handshake_failures_total{kind}`.
fn handshake_failure_kind(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "eof";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => "client_certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Why the first packet could not be read.
enum FirstPacket {
    /// A validation failure seen before the packet was complete.
    Invalid(ConnectError),
    /// Not a protocol defect: timeouts, size, closes (the `reason` label).
    Refused(&'static str),
}

fn invalid(reason: RejectReason, detail: &'static str) -> FirstPacket {
    FirstPacket::Invalid(ConnectError { reason, version: None, detail })
}

/// Reads until the first packet is complete. Returns the bytes read (the packet and anything the client sent after
/// it) and the packet's length. Refuses early: a first byte that is not CONNECT, a declared size over `max`. The
/// buffer never holds more than `max` plus one read chunk.
async fn read_first_packet<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> Result<(Vec<u8>, usize), FirstPacket> {
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(&first) = buf.first() {
            if first >> 4 != 1 {
                return Err(invalid(RejectReason::NotConnect, "the first packet is not CONNECT"));
            }
        }
        match check_fixed_header(&buf) {
            Ok(h) if h.total_len() > max => return Err(FirstPacket::Refused("connect_too_large")),
            Ok(h) if buf.len() >= h.total_len() => return Ok((buf, h.total_len())),
            Ok(_) | Err(FrameError::Incomplete(_)) => {}
            Err(FrameError::MalformedRemainingLength) => {
                return Err(invalid(RejectReason::MalformedLength, "remaining length"))
            }
        }
        if buf.len() > max {
            return Err(FirstPacket::Refused("connect_too_large"));
        }
        let n = s.read(&mut chunk).await.map_err(|_| FirstPacket::Refused("client_error"))?;
        if n == 0 {
            return Err(FirstPacket::Refused("closed_before_connect"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}
