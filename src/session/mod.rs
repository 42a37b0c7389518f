//! One client connection, from accept to close, read in the order it happens:
//! PROXY header in (from trusted proxies) -> transport (TLS handshake under a deadline; for `websocket` listeners
//! the HTTP upgrade, under a deadline too) -> first packet (read under `connect_timeout` and `max_connect_size`,
//! validated) -> placement (the backend: the listener's first route that matches, else its `backend`
//! ([`crate::routes`]); then that backend's servers ranked for the client id, from one snapshot of the pool) ->
//! queue (the chosen server's `max_connections` and `max_connection_rate`: the client waits for them, within
//! `queue_timeout` and its connect deadline, or is refused busy; never sent elsewhere: [`crate::balancer::gate`]) ->
//! upstream (the first candidate that answers gets the buffered bytes: unchanged, or with the CONNECT's user name
//! from the client certificate under `tls.username_from_certificate`: [`crate::transport::upstream`]) ->
//! relay -> end ([`end`]: the close reason and the one log line).
//!
//! Each phase returns `Result<_, Reject>`; a refusal ([`crate::reject`]) is counted, logged and answered in one place.
//!
//! A WebSocket client goes through the same CONNECT reader, validator and placement as an MQTTS client: only its
//! transport differs ([`ClientStream::Ws`]), so a client id lands on the same server over either listener when
//! both backends name their servers alike. The server side is TCP or, for `websocket` backends, a WebSocket
//! client connection ([`ServerStream`]).

pub mod end;
pub mod route_table;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, Span};

use crate::admission::{Admission, AdmissionTicket};
use crate::balancer::backend::{ActiveGuard, BackendServer};
use crate::balancer::gate::Refused;
use crate::balancer::Pool;
use crate::config::{CertificateName, Cidr, Limits, ListenerProtocol, ProxyProtocol, RequireIdentity};
use crate::metrics::{ListenerMetrics, Metrics, ReasonLabels};
use crate::mqtt::first_packet::read_first_packet;
use crate::mqtt::{parse_connect_with, Connect, ConnectRules, ProtocolVersion};
use crate::proxy_protocol;
use crate::reject::{refuse, Reject};
use crate::relay::keep_alive::KeepAlive;
use crate::relay::{relay, RelayEnd, ShutdownNotice};
use crate::routes::Client;
use crate::slots::Slot;
use crate::transport::identity::PeerIdentity;
use crate::transport::tls;
use crate::transport::upstream::{self, ClientAddresses};
use crate::transport::ws::{self, UpgradePolicy};
use crate::transport::{ClientStream, ServerStream};
use end::{ClientSide, EndLine, FirstEof, ServerSide};
use route_table::Table;

/// What a client is placed by.
enum Placement<'a> {
    /// An MQTT client's id (None: empty), which may carry a server's `assigned_id_prefix`.
    ClientId(Option<&'a [u8]>),
    /// A `tcp` listener's client: its source address.
    Source(&'a [u8]),
}

/// What every connection of one listener shares.
pub struct SessionContext {
    pub name: String,
    pub protocol: ListenerProtocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `websocket` listeners: what the upgrade accepts.
    pub ws: Option<UpgradePolicy>,
    /// When not empty, the only client addresses accepted (checked by the accept loop, or after the PROXY header of
    /// a trusted proxy).
    pub allowed_sources: Vec<Cidr>,
    /// The listener's routes and default backend: where each client goes.
    pub backends: Table,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub listener_metrics: ListenerMetrics,
    /// `log.client_id`: whether the `connection closed` line (and the connection's span) names the client id.
    pub log_client_id: bool,
    /// Connections from these networks start with a PROXY protocol header naming the real client.
    pub trusted_proxies: Vec<Cidr>,
    /// `tls.require_identity`: the CONNECT field a client certificate must vouch for.
    pub require_identity: RequireIdentity,
    /// `tls.username_from_certificate`: the certificate name the CONNECT relayed to the broker carries as its User
    /// Name.
    pub username_from_certificate: Option<CertificateName>,
    /// The server's shutdown token and the MQTT 5 DISCONNECT reason to send when it fires (`shutdown.disconnect`).
    pub shutdown_notice: Option<(CancellationToken, u8)>,
}

impl SessionContext {
    /// Whether a connection from `ip` comes from one of the listener's `trusted_proxies` (and starts with a PROXY
    /// header).
    pub fn from_trusted_proxy(&self, ip: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && crate::config::source_allowed(&self.trusted_proxies, ip)
    }
}

/// The span every log line of one connection is written in: the listener and the TCP peer, then the client a
/// trusted proxy names and the client id once they are known.
pub fn connection_span(listener: &str, peer: SocketAddr) -> Span {
    tracing::debug_span!("connection", listener, %peer, client = field::Empty, client_id = field::Empty)
}

pub struct Session {
    ctx: Arc<SessionContext>,
    /// The client's address: the TCP peer, or what a trusted proxy's PROXY header says.
    peer: SocketAddr,
    /// The address the client connected to, as a trusted proxy's PROXY header says; None without one (the
    /// socket's own address is then asked for only when a server's PROXY header needs it).
    local: Option<SocketAddr>,
    /// When the connection was accepted.
    started: Instant,
    /// The verified client certificate's names (mTLS) and the TLS version, once the handshake is done.
    tls_info: Option<proxy_protocol::TlsInfo>,
    identity: Option<PeerIdentity>,
    /// The server name the client's TLS ClientHello asked for (SNI), for routes.
    server_name: Option<String>,
    /// The connection's place in the admission limits, held until the session ends.
    ticket: AdmissionTicket,
    /// The admission limits of the moment: a trusted proxy's client is admitted once its header is read.
    admission: Arc<ArcSwap<Admission>>,
}

/// Keeps the listener's active-connections gauge up while a session lives.
struct ActiveListener<'a>(&'a ListenerMetrics);

impl Drop for ActiveListener<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// How long closing the client's stream may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl Session {
    pub fn new(
        ctx: Arc<SessionContext>,
        peer: SocketAddr,
        ticket: AdmissionTicket,
        admission: Arc<ArcSwap<Admission>>,
    ) -> Session {
        Session {
            ctx,
            peer,
            local: None,
            started: Instant::now(),
            tls_info: None,
            identity: None,
            server_name: None,
            ticket,
            admission,
        }
    }

    /// The whole path; run inside [`connection_span`]. `handshake`: the place under `limits.max_handshakes` taken
    /// for this connection's TLS handshake or WebSocket upgrade, given back once the transport is up.
    pub async fn run(mut self, mut tcp: TcpStream, handshake: Option<Slot>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.listener_metrics.active.inc();
        let _active = ActiveListener(&ctx.listener_metrics);
        let transport = match self.proxy_header(&mut tcp).await {
            Ok(()) => self.transport(tcp).await,
            Err(reject) => Err(reject),
        };
        drop(handshake);
        let mut stream = match transport {
            Ok(stream) => stream,
            Err(reject) => return refuse::<TcpStream>(&ctx.metrics, &ctx.name, reject, None).await,
        };
        let result = match ctx.protocol {
            ListenerProtocol::Mqtt | ListenerProtocol::Websocket => self.mqtt(&mut stream).await,
            ListenerProtocol::Tcp => self.passthrough(&mut stream).await,
            // Never here: coap listeners are UDP sockets served by `crate::udp`.
            ListenerProtocol::Coap => Ok(false),
        };
        if let Some(v) = stream.ws_violation() {
            let labels = ReasonLabels { listener: ctx.name.clone(), reason: v.label() };
            ctx.metrics.websocket_frame_errors.get_or_create(&labels).inc();
        }
        let write_shut = match result {
            Ok(shut) => shut,
            Err(reject) => {
                refuse(&ctx.metrics, &ctx.name, reject, Some(&mut stream)).await;
                false
            }
        };
        // A second shutdown of a TCP or TLS stream the relay already shut down (or of a TCP stream whose FIN the
        // relay left to the close below) sends nothing: skip its system call and timer. A WebSocket stream is
        // closed here in any case (its close frame, then the linger).
        if !write_shut || matches!(stream, ClientStream::Ws(_)) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
        }
        if let ClientStream::Ws(ws) = &mut stream {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.linger()).await;
        }
    }

    /// From a trusted proxy: its PROXY header, under `limits.handshake_timeout`, names the real client, which is
    /// then admitted as a direct client is at accept: `allowed_sources`, then the per-IP limits. A refusal here
    /// closes the connection without an answer, as at accept (no CONNACK: the client's version is not known yet).
    /// A header without a client address (v2 `LOCAL`, v1 `UNKNOWN`: the proxy's own health checks) counts under the
    /// proxy's address, which `trusted_proxies` already allows.
    async fn proxy_header(&mut self, tcp: &mut TcpStream) -> Result<(), Reject> {
        let ctx = &self.ctx;
        if !ctx.from_trusted_proxy(self.peer.ip()) {
            return Ok(());
        }
        let received = proxy_protocol::read_header(tcp, ctx.limits.handshake_timeout).await.map_err(|e| {
            debug!(error = %e, "PROXY header refused");
            Reject::from(&e)
        })?;
        if let Some(source) = received.source {
            Span::current().record("client", field::display(source));
            debug!("PROXY header");
            self.peer = source;
            self.local = received.destination;
            if !crate::config::source_allowed(&ctx.allowed_sources, source.ip()) {
                return Err(Reject::SourceNotAllowed);
            }
        }
        self.admission.load().admit_client(&mut self.ticket, self.peer.ip())
    }

    /// TLS (under `limits.handshake_timeout`) and, on `websocket` listeners, the upgrade.
    async fn transport(&mut self, tcp: TcpStream) -> Result<ClientStream, Reject> {
        let stream = self.handshake(tcp).await?;
        match &self.ctx.ws {
            None => Ok(stream),
            // Boxed: inline, the upgrade's state (2.5 KB) would size every session's task, WebSocket or not.
            Some(policy) => match Box::pin(ws::accept(stream, policy)).await {
                Ok(ws) => Ok(ClientStream::Ws(Box::new(ws))),
                Err(failure) => Err(Reject::WsUpgrade(failure)),
            },
        }
    }

    /// The TLS handshake, under `limits.handshake_timeout`.
    async fn handshake(&mut self, tcp: TcpStream) -> Result<ClientStream, Reject> {
        let ctx = &self.ctx;
        let Some(config) = &ctx.tls else {
            return Ok(ClientStream::Plain(tcp));
        };
        let start = Instant::now();
        // Boxed: the handshake's state (rustls's connection in the making) would otherwise size the session's task
        // for the whole life of the connection.
        let accepting = Box::pin(tls::accept(tcp, Arc::clone(config)));
        let mut tls = match tokio::time::timeout(ctx.limits.handshake_timeout, accepting).await {
            Ok(Ok(tls)) => tls,
            Err(_) => return Err(Reject::TlsHandshake { kind: "timeout" }),
            Ok(Err(e)) => return Err(Reject::TlsHandshake { kind: tls::handshake_failure_kind(&e) }),
        };
        ctx.listener_metrics.handshake_seconds.observe(start.elapsed().as_secs_f64());
        self.server_name = tls.take_server_name();
        let connection = tls.connection();
        self.identity = connection.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerIdentity::from_der(c));
        self.tls_info = Some(proxy_protocol::TlsInfo {
            version: connection.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS").to_owned(),
            common_name: self.identity.as_ref().and_then(|i| i.common_names.first().cloned()),
        });
        Ok(ClientStream::Tls(Box::new(tls)))
    }

    /// An MQTT client: first packet, identity, placement, upstream, relay. Ok says whether the relay shut the
    /// client's write half down.
    async fn mqtt(&self, stream: &mut ClientStream) -> Result<bool, Reject> {
        // The client's connect deadline: its CONNECT must arrive by then, and a wait for its server ends there too.
        let deadline = Instant::now() + self.ctx.limits.connect_timeout;
        let (connect, buf, len) = self.first_packet(stream).await?;
        let version = Some(connect.version);
        self.check_identity(&connect)?;
        let buf = self.certificate_username(&connect, buf, len)?;
        if self.ctx.log_client_id {
            Span::current().record("client_id", crate::logging::clip(&connect.client_id).as_ref());
        }
        let client = Client {
            sni: self.server_name.as_deref(),
            client_id: Some(&connect.client_id),
            username: connect.username.as_deref(),
            identity: self.identity.as_ref().map(PeerIdentity::names),
        };
        let key = (!connect.client_id.is_empty()).then_some(connect.client_id.as_bytes());
        let (pool, candidates) = self.placement(&client, Placement::ClientId(key), version)?;
        let (server, guard) = self.upstream(stream, &pool, &candidates, &buf, deadline, version).await?;
        debug!(server = %guard.server().name, "relaying");
        let notice = match (&self.ctx.shutdown_notice, connect.version) {
            (Some((token, reason)), ProtocolVersion::V5) => {
                Some(ShutdownNotice::mqtt5_disconnect(token.clone(), *reason))
            }
            _ => None,
        };
        // The CONNECT bytes went to the server: free them rather than keep them for the life of the relay.
        let sent_first = buf.len();
        drop(buf);
        Ok(self.relay(stream, server, guard, Some(&connect), sent_first, notice).await)
    }

    /// A raw TCP client: place it (by source address for `client-id` balance) and relay. Ok as for [`Self::mqtt`].
    async fn passthrough(&self, stream: &mut ClientStream) -> Result<bool, Reject> {
        let ip = self.peer.ip().to_string();
        let client = Client {
            sni: self.server_name.as_deref(),
            identity: self.identity.as_ref().map(PeerIdentity::names),
            ..Client::default()
        };
        let (pool, candidates) = self.placement(&client, Placement::Source(ip.as_bytes()), None)?;
        let deadline = Instant::now() + pool.config.queue_timeout;
        let (server, guard) = self.upstream(stream, &pool, &candidates, &[], deadline, None).await?;
        Ok(self.relay(stream, server, guard, None, 0, None).await)
    }

    /// The first packet, read under `connect_timeout` and `max_connect_size`, and validated as a CONNECT. Returns
    /// it with the bytes read (the packet and anything the client sent after it) and the packet's length.
    async fn first_packet(&self, stream: &mut ClientStream) -> Result<(Connect, Vec<u8>, usize), Reject> {
        let ctx = &self.ctx;
        let start = Instant::now();
        let limits = &ctx.limits;
        let read = tokio::time::timeout(limits.connect_timeout, read_first_packet(stream, limits.max_connect_size));
        let (buf, len) = read.await.map_err(|_| Reject::ConnectTimeout)??;
        let rules = ConnectRules { strict_v31_client_id: limits.strict_v31_client_id };
        let connect = parse_connect_with(buf.get(..len).unwrap_or_default(), rules).map_err(Reject::InvalidConnect)?;
        ctx.listener_metrics.connect_read_seconds.observe(start.elapsed().as_secs_f64());
        Ok((connect, buf, len))
    }

    /// `tls.require_identity`: the client certificate must vouch for the CONNECT's client id or user name.
    fn check_identity(&self, connect: &Connect) -> Result<(), Reject> {
        let claimed = match self.ctx.require_identity {
            RequireIdentity::None => return Ok(()),
            RequireIdentity::ClientId => connect.client_id.as_str(),
            RequireIdentity::Username => connect.username.as_deref().unwrap_or_default(),
        };
        if self.identity.as_ref().is_some_and(|id| id.vouches_for(claimed)) {
            return Ok(());
        }
        debug!(claimed = %crate::logging::clip(claimed), "the client certificate does not vouch for this identity");
        Err(Reject::IdentityMismatch(connect.version))
    }

    /// `tls.username_from_certificate`: the bytes to send the server, with the CONNECT (the first `len` of `buf`)
    /// re-encoded to carry the certificate's name as its User Name; `buf` unchanged without the option. A
    /// certificate without that name (or with one MQTT cannot carry) is refused as not authorized.
    fn certificate_username(&self, connect: &Connect, buf: Vec<u8>, len: usize) -> Result<Vec<u8>, Reject> {
        let Some(which) = self.ctx.username_from_certificate else {
            return Ok(buf);
        };
        let name = self.identity.as_ref().and_then(|id| match which {
            CertificateName::Cn => id.common_names.first(),
            CertificateName::San => id.alt_names.first(),
        });
        let refused = || Reject::IdentityMismatch(connect.version);
        let Some(name) = name else {
            debug!(?which, "the client certificate has no name to use as the user name");
            return Err(refused());
        };
        let (packet, after) = buf.split_at_checked(len).ok_or_else(refused)?;
        let mut out = crate::mqtt::rewrite::with_username(packet, name).map_err(|e| {
            debug!(error = %e, "the CONNECT could not carry the certificate's name as its user name");
            refused()
        })?;
        out.extend_from_slice(after);
        Ok(out)
    }

    /// The client's backend (its route, else the listener's default), then one snapshot of that backend's pool
    /// and its usable servers for `key`, best first.
    fn placement(
        &self,
        client: &Client<'_>,
        key: Placement<'_>,
        version: Option<ProtocolVersion>,
    ) -> Result<(Arc<Pool>, Vec<Arc<BackendServer>>), Reject> {
        let Some(balancer) = self.ctx.backends.choose(client) else {
            debug!(sni = ?client.sni, "no route takes the client and the listener has no default backend");
            return Err(Reject::NoRoute(version));
        };
        let pool = balancer.pool();
        let candidates = match key {
            Placement::ClientId(id) => pool.candidates_for_client(id),
            Placement::Source(ip) => pool.candidates(Some(ip)),
        };
        if candidates.is_empty() {
            return Err(Reject::NoServerAvailable(version));
        }
        Ok((pool, candidates))
    }

    /// Waits for the chosen server's caps ([`Self::queue`]), then opens the first candidate that answers and sends
    /// it `first_bytes`.
    async fn upstream(
        &self,
        stream: &ClientStream,
        pool: &Pool,
        candidates: &[Arc<BackendServer>],
        first_bytes: &[u8],
        deadline: Instant,
        version: Option<ProtocolVersion>,
    ) -> Result<(ServerStream, ActiveGuard), Reject> {
        let chosen = candidates.first().ok_or(Reject::NoServerAvailable(version))?;
        let slot = self.queue(pool, chosen, deadline, version).await?;
        // The address the client reached goes only into a PROXY header: asked of the socket only for one.
        let local = match (self.local, pool.config.proxy_protocol) {
            (None, ProxyProtocol::V1 | ProxyProtocol::V2) => stream.local_addr().ok(),
            (local, _) => local,
        };
        let client = ClientAddresses { peer: self.peer, local, tls: self.tls_info.as_ref() };
        let keepalive = self.ctx.limits.tcp_keepalive.as_ref();
        let opened = upstream::open(&pool.config, candidates, &client, first_bytes, slot, keepalive).await;
        opened.ok_or(Reject::ServerConnectFailed(version))
    }

    /// A slot on the chosen server, waiting in its queue until `queue_timeout` or the client's `deadline`, whichever
    /// comes first. The client is not sent to another server instead: its placement would no longer be by its id.
    async fn queue(
        &self,
        pool: &Pool,
        chosen: &BackendServer,
        deadline: Instant,
        version: Option<ProtocolVersion>,
    ) -> Result<Slot, Reject> {
        let deadline = deadline.min(Instant::now() + pool.config.queue_timeout);
        chosen.gate.admit(pool.config.max_queue, deadline).await.map_err(|refused| {
            debug!(server = %chosen.name, ?refused, "the client's server stayed at its cap");
            match refused {
                Refused::QueueFull => Reject::ServerQueueFull(version),
                Refused::Timeout => Reject::ServerBusy(version),
            }
        })
    }

    /// Relays until the end, then logs the connection's one `connection closed` line (see [`end`]).
    /// `connect`: the client's CONNECT (None on `tcp` listeners), for its client id and keep-alive. `sent_first` is
    /// the number of client bytes already sent to the server (the buffered CONNECT). Returns whether the relay shut
    /// the client's write half down.
    async fn relay(
        &self,
        stream: &mut ClientStream,
        server: ServerStream,
        guard: ActiveGuard,
        connect: Option<&Connect>,
        sent_first: usize,
        notice: Option<ShutdownNotice>,
    ) -> bool {
        let s = guard.server();
        // Relays ended by the shutdown notice (a DISCONNECT 0x8B to the client) are logged as `shutdown`.
        let notified = notice.as_ref().map(|n| n.token.clone());
        let first_eof = FirstEof::default();
        let line = EndLine {
            listener: &self.ctx.name,
            peer: self.peer,
            client_id: connect.map(|c| c.client_id.as_str()).filter(|_| self.ctx.log_client_id),
            server: &s.name,
            started: self.started,
            closed: &self.ctx.listener_metrics.closed,
        };
        let limits = &self.ctx.limits;
        // MQTT clients: the keep-alive deadline; `tcp` listeners cannot see one and have their own idle timeout.
        let (idle, keep_alive) = match connect {
            Some(c) => {
                let follow_connack = c.version == ProtocolVersion::V5;
                let keep_alive =
                    KeepAlive { factor: limits.keep_alive_factor, requested: c.keep_alive, follow_connack };
                (limits.idle_timeout, Some(keep_alive).filter(|k| k.factor.0 > 0))
            }
            None => (limits.passthrough_idle_timeout, None),
        };
        let mut client = ClientSide::new(stream, &first_eof, sent_first, line);
        let relayed = relay(
            &mut client,
            ServerSide::new(server, &first_eof),
            s.metrics.sent_bytes.clone(),
            s.metrics.received_bytes.clone(),
            idle,
            keep_alive,
            notice,
        );
        // `on_down: close` ends the relay when health checks take the server down.
        let end = tokio::select! {
            biased;
            end = relayed => end,
            () = s.relays_closed() => RelayEnd::ServerDown,
        };
        client.finish(end, notified.as_ref().is_some_and(CancellationToken::is_cancelled));
        client.write_shut()
    }
}
