//! One client connection, from accept to close:
//! transport (TLS handshake under a deadline; for `websocket` listeners the HTTP upgrade, under a deadline too) ->
//! read the first packet under `connect_timeout` and `max_connect_size` -> validate the CONNECT -> choose a server
//! (next candidate on a connect error) -> send the buffered bytes unchanged -> relay.
//!
//! A WebSocket client goes through the same CONNECT reader, validator and placement as an MQTTS client: only its
//! transport differs ([`ClientStream::Ws`]), so a client id lands on the same server over either listener when
//! both backends name their servers alike. The server side is TCP or, for `websocket` backends, a WebSocket
//! client connection ([`ServerStream`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::balancer::backend::{ActiveGuard, Server};
use crate::balancer::Balancer;
use crate::config::{BackendProtocol, Cidr, Limits, ListenerProtocol, RequireIdentity};
use crate::listener::AdmissionTicket;
use crate::metrics::{ListenerMetrics, Metrics, ReasonLabels};
use crate::mqtt::connack::{connack, Refusal};
use crate::mqtt::frame::{check_fixed_header, FrameError};
use crate::mqtt::{parse_connect, ConnectError, ProtocolVersion, RejectReason};
use crate::proxy_protocol;
use crate::relay::{relay, RelayEnd, ShutdownNotice};
use crate::transport::identity::PeerIdentity;
use crate::transport::tls;
use crate::transport::ws::{self, UpgradePolicy};
use crate::transport::{ClientStream, ServerStream};
use tokio_util::sync::CancellationToken;

/// What every connection of one listener shares.
pub struct SessionContext {
    pub name: String,
    pub protocol: ListenerProtocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `websocket` listeners: what the upgrade accepts.
    pub ws: Option<UpgradePolicy>,
    /// When not empty, the only client addresses accepted (checked by the accept loop).
    pub allowed_sources: Vec<Cidr>,
    pub balancer: Arc<Balancer>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub listener_metrics: ListenerMetrics,
    /// `log.client_id`: whether the `connection closed` line names the client id.
    pub log_client_id: bool,
    /// Connections from these networks start with a PROXY protocol header naming the real client.
    pub trusted_proxies: Vec<Cidr>,
    /// `tls.require_identity`: the CONNECT field a client certificate must vouch for.
    pub require_identity: RequireIdentity,
    /// The server's shutdown token and the MQTT 5 DISCONNECT reason to send when it fires (`shutdown.disconnect`).
    pub shutdown_notice: Option<(CancellationToken, u8)>,
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
    /// The client's address: the TCP peer, or what a trusted proxy's PROXY header says.
    peer: SocketAddr,
    _ticket: AdmissionTicket,
    /// When the connection was accepted.
    started: Instant,
    /// The verified client certificate's names (mTLS) and the TLS version, once the handshake is done.
    tls_info: Option<proxy_protocol::TlsInfo>,
    identity: Option<PeerIdentity>,
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
        Session { ctx, peer, _ticket: ticket, started: Instant::now(), tls_info: None, identity: None }
    }

    pub async fn run(mut self, mut tcp: TcpStream) {
        let ctx = Arc::clone(&self.ctx);
        ctx.listener_metrics.active.inc();
        let _active = ActiveListener(&ctx.listener_metrics);
        let _ = tcp.set_nodelay(true);
        let mut local = tcp.local_addr().ok();
        if source_allowed_nonempty(&ctx.trusted_proxies, self.peer.ip()) {
            match proxy_protocol::read_header(&mut tcp, ctx.limits.handshake_timeout).await {
                Ok(received) => {
                    if let Some(source) = received.source {
                        debug!(listener = %ctx.name, proxy = %self.peer, client = %source, "PROXY header");
                        self.peer = source;
                        local = received.destination.or(local);
                    }
                }
                Err(e) => {
                    debug!(listener = %ctx.name, peer = %self.peer, error = %e, "PROXY header refused");
                    ctx.metrics.reject(&ctx.name, e.label());
                    return;
                }
            }
        }
        let Some(stream) = self.handshake(tcp).await else {
            return;
        };
        let mut stream = match &ctx.ws {
            None => stream,
            // Boxed: inline, the upgrade's state (2.5 KB) would size every session's task, WebSocket or not.
            Some(policy) => match Box::pin(ws::accept(stream, policy)).await {
                Ok(ws) => ClientStream::Ws(Box::new(ws)),
                Err(reason) => {
                    debug!(listener = %ctx.name, peer = %self.peer, reason, "WebSocket upgrade refused");
                    ctx.metrics.reject(&ctx.name, reason);
                    return;
                }
            },
        };
        let result = match ctx.protocol {
            ListenerProtocol::Mqtt | ListenerProtocol::Websocket => self.mqtt(&mut stream, local).await,
            ListenerProtocol::Tcp => self.passthrough(&mut stream, local).await,
            // Never here: coap listeners are UDP sockets served by `crate::udp`.
            ListenerProtocol::Coap => Err(Refused::Counted),
        };
        if let Some(v) = stream.ws_violation() {
            let labels = ReasonLabels { listener: ctx.name.clone(), reason: v.label() };
            ctx.metrics.websocket_frame_errors.get_or_create(&labels).inc();
        }
        if let Err(Refused::Reason(reason, answer)) = result {
            debug!(listener = %ctx.name, peer = %self.peer, reason, "client refused");
            ctx.metrics.reject(&ctx.name, reason);
            if let Some(bytes) = answer.and_then(|(v, r)| connack(v, r)) {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        if let ClientStream::Ws(ws) = &mut stream {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.linger()).await;
        }
    }

    /// The TLS handshake, under `limits.handshake_timeout`; failures counted by kind.
    async fn handshake(&mut self, tcp: TcpStream) -> Option<ClientStream> {
        let ctx = &self.ctx;
        let Some(config) = &ctx.tls else {
            return Some(ClientStream::Plain(tcp));
        };
        let start = Instant::now();
        // Boxed: the handshake's state (rustls's connection in the making) would otherwise size the session's task
        // for the whole life of the connection.
        let accepting = Box::pin(tls::accept(tcp, Arc::clone(config)));
        let kind = match tokio::time::timeout(ctx.limits.handshake_timeout, accepting).await {
            Ok(Ok(tls)) => {
                ctx.listener_metrics.handshake_seconds.observe(start.elapsed().as_secs_f64());
                let connection = tls.connection();
                self.identity =
                    connection.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerIdentity::from_der(c));
                self.tls_info = Some(proxy_protocol::TlsInfo {
                    version: connection.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS").to_owned(),
                    common_name: self.identity.as_ref().and_then(|i| i.common_names.first().cloned()),
                });
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
        let version = connect.version;
        let claimed = match ctx.require_identity {
            RequireIdentity::None => None,
            RequireIdentity::ClientId => Some(connect.client_id.as_str()),
            RequireIdentity::Username => Some(connect.username.as_deref().unwrap_or_default()),
        };
        if let Some(claimed) = claimed {
            if !self.identity.as_ref().is_some_and(|id| id.vouches_for(claimed)) {
                debug!(listener = %ctx.name, peer = %self.peer, claimed, "the client certificate does not vouch for this identity");
                return Err(Refused::Reason("identity_mismatch", Some((version, Refusal::NotAuthorized))));
            }
        }
        let key = (!connect.client_id.is_empty()).then_some(connect.client_id.as_bytes());
        let unavailable = |reason| Refused::Reason(reason, Some((version, Refusal::ServerUnavailable)));
        let candidates = ctx.balancer.candidates(key);
        if candidates.is_empty() {
            return Err(unavailable("no_server_available"));
        }
        let (server, guard) =
            self.connect_server(&candidates, local, &buf).await.ok_or_else(|| unavailable("server_connect_failed"))?;
        debug!(listener = %ctx.name, peer = %self.peer, client_id = %connect.client_id, server = %guard.server().name, "relaying");
        let notice = match (&ctx.shutdown_notice, version) {
            (Some((token, reason)), ProtocolVersion::V5) => {
                Some(ShutdownNotice::mqtt5_disconnect(token.clone(), *reason))
            }
            _ => None,
        };
        // The CONNECT bytes went to the server: free them rather than keep them for the life of the relay.
        let sent_first = buf.len();
        drop(buf);
        self.relay(stream, server, guard, Some(&connect.client_id), sent_first, notice).await;
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
        self.relay(stream, server, guard, None, 0, None).await;
        Ok(())
    }

    /// Connects to the first candidate that answers, sends the PROXY header and `first_bytes` (for `websocket`
    /// backends: the PROXY header, the upgrade, then `first_bytes` in a binary frame).
    async fn connect_server(
        &self,
        candidates: &[Arc<Server>],
        local: Option<SocketAddr>,
        first_bytes: &[u8],
    ) -> Option<(ServerStream, ActiveGuard)> {
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
            let mut head = proxy_protocol::header_with_tls(
                backend.proxy_protocol,
                self.peer,
                local.unwrap_or(self.peer),
                self.tls_info.as_ref(),
            );
            let mut stream = if backend.protocol == BackendProtocol::Websocket {
                if let Err(e) = tcp.write_all(&head).await {
                    warn!(backend = %backend.name, server = %server.name, error = %e, "server closed before the PROXY header; trying the next server");
                    server.metrics.connect_errors.inc();
                    continue;
                }
                head.clear();
                // Boxed: inline, this state (2.5 KB) would size every session's task, WebSocket or not.
                let upgrade = Box::pin(ws::connect(tcp, &server.address, &backend.path));
                match tokio::time::timeout(backend.connect_timeout, upgrade).await {
                    Ok(Ok(ws)) => ServerStream::Ws(Box::new(ws)),
                    Ok(Err(e)) => {
                        warn!(backend = %backend.name, server = %server.name, error = %e, "WebSocket upgrade failed; trying the next server");
                        server.metrics.connect_errors.inc();
                        continue;
                    }
                    Err(_) => {
                        warn!(backend = %backend.name, server = %server.name, "WebSocket upgrade timed out; trying the next server");
                        server.metrics.connect_errors.inc();
                        continue;
                    }
                }
            } else {
                ServerStream::Tcp(tcp)
            };
            head.extend_from_slice(first_bytes);
            if !head.is_empty() {
                if let Err(e) = write_flushed(&mut stream, &head).await {
                    warn!(backend = %backend.name, server = %server.name, error = %e, "server closed before the first bytes; trying the next server");
                    server.metrics.connect_errors.inc();
                    continue;
                }
                server.metrics.sent_bytes.inc_by(first_bytes.len() as u64);
            }
            return Some((stream, guard));
        }
        None
    }

    /// Relays until the end, then logs the connection's one `connection closed` line (see [`ConnectionEnd`]).
    /// `sent_first` is the number of client bytes already sent to the server (the buffered CONNECT).
    async fn relay(
        &self,
        stream: &mut ClientStream,
        server: ServerStream,
        guard: ActiveGuard,
        client_id: Option<&str>,
        sent_first: usize,
        notice: Option<ShutdownNotice>,
    ) {
        let s = guard.server();
        // Relays ended by the shutdown notice (a DISCONNECT 0x8B to the client) are logged as `shutdown`.
        let notified = notice.as_ref().map(|n| n.token.clone());
        let mut client = ConnectionEnd {
            stream,
            to_server: sent_first as u64,
            to_client: 0,
            first_close: None,
            client_failed: None,
            last_read_disconnect: false,
            outcome: None,
            listener: &self.ctx.name,
            peer: self.peer,
            client_id: client_id.filter(|_| self.ctx.log_client_id),
            server: &s.name,
            started: self.started,
        };
        let relayed = relay(
            &mut client,
            server,
            s.metrics.sent_bytes.clone(),
            s.metrics.received_bytes.clone(),
            self.ctx.limits.idle_timeout,
            notice,
        );
        // `on_down: close` ends the relay when health checks take the server down.
        let end = tokio::select! {
            end = relayed => end,
            () = s.relays_closed() => RelayEnd::ServerDown,
        };
        let closed = |first: Option<&'static str>| {
            if client.last_read_disconnect {
                "client_disconnect"
            } else if notified.as_ref().is_some_and(CancellationToken::is_cancelled) {
                "shutdown"
            } else {
                first.unwrap_or("client_closed")
            }
        };
        client.outcome = Some(match end {
            RelayEnd::Closed { .. } => (closed(client.first_close), None),
            RelayEnd::Idle => ("idle_timeout", None),
            RelayEnd::ServerDown => ("server_down", None),
            // A TLS client that closes without close_notify (most MQTT clients do) just closed.
            RelayEnd::Error(_) if client.client_failed == Some(std::io::ErrorKind::UnexpectedEof) => {
                (closed(client.first_close), None)
            }
            RelayEnd::Error(e) => {
                (if client.client_failed.is_some() { "client_error" } else { "server_error" }, Some(e))
            }
        });
    }
}

/// The client side of a relay: counts the bytes each way, notes which side closed first, and writes the
/// connection's one `connection closed` line (info) when dropped, so a relay cut at the drain deadline is logged
/// too, with reason `shutdown`. Close reasons: `client_disconnect` (the client's last bytes were an MQTT
/// DISCONNECT: a clean end, whichever side then closed first), `client_closed`, `server_closed` (that side sent EOF
/// first, without a DISCONNECT: a client gone, or a broker closing a session taken over), `idle_timeout`,
/// `server_down` (health checks took the server down, `on_down: close`), `client_error`, `server_error` (a read or
/// write failed on that side), `shutdown`.
struct ConnectionEnd<'a, S> {
    stream: &'a mut S,
    /// Bytes from the client (to the server), the buffered CONNECT included.
    to_server: u64,
    /// Bytes to the client.
    to_client: u64,
    first_close: Option<&'static str>,
    /// The kind of the first error on the client side.
    client_failed: Option<std::io::ErrorKind>,
    /// Whether the last read from the client was exactly one DISCONNECT packet.
    last_read_disconnect: bool,
    /// The close reason and error once the relay returned; None if it was cut short.
    outcome: Option<(&'static str, Option<std::io::Error>)>,
    listener: &'a str,
    peer: SocketAddr,
    /// None for raw TCP listeners and when `log.client_id` is false.
    client_id: Option<&'a str>,
    server: &'a str,
    started: Instant,
}

impl<S> ConnectionEnd<'_, S> {
    fn note<T>(&mut self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.client_failed.get_or_insert(e.kind());
        }
        r
    }
}

impl<S> Drop for ConnectionEnd<'_, S> {
    fn drop(&mut self) {
        let (reason, error) = match self.outcome.take() {
            Some((reason, error)) => (reason, error),
            None => ("shutdown", None),
        };
        info!(
            listener = self.listener,
            peer = %self.peer,
            client_id = self.client_id,
            server = self.server,
            bytes_to_server = self.to_server,
            bytes_to_client = self.to_client,
            duration_seconds = self.started.elapsed().as_secs_f64(),
            reason,
            error = error.as_ref().map(tracing::field::display),
            "connection closed"
        );
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnectionEnd<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let r = Pin::new(&mut *this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let read = buf.filled().get(before..).unwrap_or_default();
            this.to_server += read.len() as u64;
            if !read.is_empty() {
                this.last_read_disconnect = is_disconnect(read);
            } else if asked {
                this.first_close.get_or_insert("client_closed");
            }
        }
        this.note(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnectionEnd<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.to_client += n as u64;
        }
        this.note(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.to_client += n as u64;
        }
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_flush(cx);
        this.note(r)
    }

    /// Called once the server has sent EOF: the relay passes it on to the client.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.first_close.get_or_insert("server_closed");
        let r = Pin::new(&mut *this.stream).poll_shutdown(cx);
        this.note(r)
    }
}

/// Whether `bytes` are exactly one MQTT DISCONNECT packet (type 14, remaining length under 128).
fn is_disconnect(bytes: &[u8]) -> bool {
    matches!(bytes, [0xE0, len, ..] if *len < 0x80 && usize::from(*len) + 2 == bytes.len())
}

async fn write_flushed(stream: &mut ServerStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
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
        // Straight into `buf`: a chunk array held across this await would be part of every session's task (whose
        // size is that of its largest state) for the whole life of the connection.
        let filled = buf.len();
        buf.resize(filled + READ_CHUNK, 0);
        let n = s
            .read(buf.get_mut(filled..).unwrap_or_default())
            .await
            .map_err(|e| FirstPacket::Refused(ws::violation(&e).map_or("client_error", ws::Violation::label)))?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(FirstPacket::Refused("closed_before_connect"));
        }
    }
}

/// The most [`read_first_packet`] reads at once.
const READ_CHUNK: usize = 2048;

/// Whether `ip` is in a non-empty list of networks.
fn source_allowed_nonempty(networks: &[Cidr], ip: std::net::IpAddr) -> bool {
    !networks.is_empty() && crate::config::source_allowed(networks, ip)
}
