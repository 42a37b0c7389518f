//! The validated configuration the server runs with: what each listener, backend and limit is, with defaults
//! applied, references resolved and files loaded. Built only by [`super::validate`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::net::Cidr;

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (relative paths inside it were resolved against its folder).
    pub source: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub backends: Vec<BackendConfig>,
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// `workers`: threads that carry connections; None: one per CPU core.
    pub workers: Option<usize>,
}

impl Config {
    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// What a listener speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerProtocol {
    /// MQTT (over TLS when `tls` is set): the CONNECT is validated and the client placed by client id.
    Mqtt,
    /// Raw TCP passthrough: no validation, placement by the backend's `balance` (client id: by source address).
    Tcp,
    /// MQTT over WebSocket (over TLS when `tls` is set): HTTP upgrade on `path` with subprotocol `mqtt` (or
    /// `mqttv3.1`), then the CONNECT inside binary frames is validated and placed exactly as for `mqtt`.
    Websocket,
    /// CoAP over UDP, and DTLS passed through (never decrypted), to a `coap` backend (the UDP path; `docs/coap.md`).
    Coap,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Websocket => "websocket",
            ListenerProtocol::Coap => "coap",
        }
    }
}

/// The WebSocket path used when a listener or backend sets none.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    pub tls: Option<TlsConfig>,
    /// Index into [`Config::backends`]: where clients go that no route takes; None (only with `routes`): they are
    /// refused.
    pub backend: Option<usize>,
    /// Tried in order for each client; the first that matches chooses its backend ([`crate::routes`]).
    pub routes: Vec<RouteConfig>,
    /// `websocket` listeners: the only path upgraded (other paths get 404); the query string is ignored.
    pub path: String,
    /// `websocket` listeners: when not empty, a request with an `Origin` header must name one of these (ASCII
    /// case-insensitive, like `https://example.org`); others get 403. Requests without `Origin` (non-browser
    /// clients) pass: a non-browser client can send any origin it likes anyway.
    pub allowed_origins: Vec<String>,
    /// When not empty, connections from other source addresses are closed at accept.
    pub allowed_sources: Vec<Cidr>,
    /// Connections from these networks must start with a PROXY protocol header (v1 or v2) naming the real
    /// client; connections from elsewhere are direct clients. Empty: no PROXY header is read.
    pub trusted_proxies: Vec<Cidr>,
    /// `coap` listeners: the flow table and its limits (None for the others).
    pub coap: Option<CoapListenerConfig>,
}

/// `listeners[].routes[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `name`, or the route's index in the list: the `route` label of `mqttlb_route_matches_total`.
    pub name: String,
    /// Index into [`Config::backends`].
    pub backend: usize,
    pub conditions: crate::routes::Conditions,
}

/// The UDP settings of a `coap` listener (read by the UDP path; `docs/coap.md` describes each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapListenerConfig {
    /// A flow (one device address) ends after this long without a datagram either way.
    pub flow_idle_timeout: Duration,
    /// Flows held at most; when full, the least recently used one makes room (each flow holds one socket).
    pub max_flows: usize,
    /// Flows from one IP address at most; 0 = unlimited.
    pub max_flows_per_ip: usize,
    /// Larger datagrams from devices are dropped.
    pub max_datagram_size: usize,
    /// Datagrams per second from one device address (token bucket); 0 = unlimited. On by default, so that one
    /// flooding device costs the others nothing but the front door's cheap drops.
    pub max_datagram_rate_per_flow: u32,
    /// Bursts allowed above that rate (bucket size).
    pub datagram_rate_burst: u32,
    /// The length of the DTLS Connection IDs the servers issue; None: CIDs are not read.
    pub dtls_cid_length: Option<u8>,
    /// How long a CID is remembered with its server after its last record.
    pub dtls_cid_timeout: Duration,
    /// CIDs remembered at most (least recently used forgotten first).
    pub max_dtls_cids: usize,
    /// The listener socket's receive buffer asked of the kernel (`SO_RCVBUF`); None: the system default.
    pub receive_buffer: Option<usize>,
}

impl Default for CoapListenerConfig {
    fn default() -> Self {
        CoapListenerConfig {
            flow_idle_timeout: Duration::from_secs(300),
            max_flows: 10_000,
            max_flows_per_ip: 0,
            max_datagram_size: 2048,
            max_datagram_rate_per_flow: 1000,
            datagram_rate_burst: 1000,
            dtls_cid_length: None,
            dtls_cid_timeout: Duration::from_secs(24 * 3600),
            max_dtls_cids: 100_000,
            receive_buffer: None,
        }
    }
}

/// TLS settings of a listener, with the certificate already loaded and checked.
#[derive(Clone)]
pub struct TlsConfig {
    /// The serving certificates, chosen by SNI; the first serves clients without SNI or with an unknown name.
    pub certificates: Vec<CertificateFiles>,
    pub client_ca: Option<PathBuf>,
    /// `tls.client_crl`: revocation lists applied to client certificates (with `client_ca`).
    pub client_crl: Vec<PathBuf>,
    /// With `client_ca`: which CONNECT field must be the client certificate's CN or one of its SANs.
    pub require_identity: RequireIdentity,
    /// With `client_ca`: the certificate name relayed to the broker as the CONNECT's User Name, whatever the client
    /// sent ([`crate::mqtt::rewrite`]).
    pub username_from_certificate: Option<CertificateName>,
    /// Session-ticket keys shared with other instances ([`crate::tls_material::ticket_keys`]); re-read on reload.
    pub ticket_keys: Option<PathBuf>,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub use crate::tls_material::certificates::CertificateFiles;

/// `tls.require_identity`: what a client certificate must vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RequireIdentity {
    /// The certificate only has to be valid.
    #[default]
    None,
    /// The MQTT client id must be the certificate's CN or a SAN (else CONNACK not authorized).
    ClientId,
    /// The MQTT user name must be the certificate's CN or a SAN (else CONNACK not authorized).
    Username,
}

/// `tls.username_from_certificate`: which name of the verified client certificate becomes the User Name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateName {
    /// The subject's first common name.
    Cn,
    /// The first subject alternative name (DNS name, e-mail address or URI, in the certificate's order).
    San,
}

/// `backends[].on_down`: what happens to the relays of a server that health checks take down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    /// Relays stay until the broker or the client closes them (a broker that is down usually has).
    #[default]
    Keep,
    /// Relays are closed at once, so clients reconnect (to another server) promptly.
    Close,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certificates", &self.certificates)
            .field("client_ca", &self.client_ca)
            .field("client_crl", &self.client_crl)
            .field("ticket_keys", &self.ticket_keys)
            .finish_non_exhaustive()
    }
}

/// How mqtt-lb speaks to the servers of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackendProtocol {
    /// Plain MQTT over TCP (the brokers' 1883).
    #[default]
    Mqtt,
    /// Raw TCP.
    Tcp,
    /// MQTT inside WebSocket binary frames (the brokers' 8083): an HTTP upgrade to the backend's `path` with
    /// subprotocol `mqtt`, then the client's MQTT bytes in binary frames.
    Websocket,
    /// CoAP servers over UDP (plain or DTLS, as the `coap` listener receives it).
    Coap,
}

impl BackendProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Mqtt => "mqtt",
            BackendProtocol::Tcp => "tcp",
            BackendProtocol::Websocket => "websocket",
            BackendProtocol::Coap => "coap",
        }
    }
}

/// How a backend picks a server for a new client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted rendezvous hash of the MQTT client id; clients without an id go to the least-loaded server.
    #[default]
    ClientId,
    RoundRobin,
    LeastConn,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::ClientId => "client-id",
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
        }
    }
}

/// PROXY protocol header sent to the servers before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheckKind {
    /// A TCP connect.
    Tcp,
    /// A TCP connect, an MQTT 3.1.1 CONNECT answered by a successful CONNACK, then DISCONNECT.
    #[default]
    Mqtt,
    /// No probing: servers are always considered up.
    None,
    /// For `websocket` backends: a TCP connect, the WebSocket upgrade on the backend's `path` (subprotocol
    /// `mqtt`), then the `mqtt` check's CONNECT/CONNACK/DISCONNECT inside binary frames.
    Websocket,
    /// For `coap` backends: a CoAP ping over UDP (an Empty Confirmable message) answered by a Reset.
    CoapPing,
    /// For `coap` backends on a DTLS port: a DTLS ClientHello answered by a HelloVerifyRequest, a ServerHello or an
    /// alert (a CoAP ping cannot pass DTLS).
    DtlsHello,
    /// A GET on the broker's own readiness endpoint (another port of the server's host) answered by an expected
    /// status; the settings are [`HealthConfig::http`].
    Http,
}

impl HealthCheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckKind::Tcp => "tcp",
            HealthCheckKind::Mqtt => "mqtt",
            HealthCheckKind::None => "none",
            HealthCheckKind::Websocket => "websocket",
            HealthCheckKind::CoapPing => "coap-ping",
            HealthCheckKind::DtlsHello => "dtls-hello",
            HealthCheckKind::Http => "http",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Credentials for the MQTT probe, for brokers that refuse anonymous clients.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The WebSocket path the `websocket` check upgrades on (the backend's `path`).
    pub path: String,
    /// The backend's `proxy_protocol`: a server that expects a PROXY header refuses a probe without one.
    pub proxy_protocol: ProxyProtocol,
    /// `check: http`: the readiness endpoint; `None` for every other check.
    pub http: Option<super::HttpCheck>,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub protocol: BackendProtocol,
    pub balance: Balance,
    pub proxy_protocol: ProxyProtocol,
    /// `websocket` backends: the path of the servers' WebSocket endpoint.
    pub path: String,
    /// Deadline for the TCP connect to a server (and, for `websocket` backends, for the upgrade after it).
    pub connect_timeout: Duration,
    pub on_down: OnDown,
    pub health: HealthConfig,
    pub servers: Vec<ServerConfig>,
    /// How long a client may wait for its server's `max_connections` or `max_connection_rate` (also bounded by the
    /// client's connect deadline, `limits.connect_timeout`) before it is refused "server busy".
    pub queue_timeout: Duration,
    /// Clients that may wait for one server at once; more are refused "server busy" at once.
    pub max_queue: usize,
}

/// `backends[].queue_timeout` when not set (or `limits.connect_timeout`, if that is shorter).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// `backends[].max_queue` when not set.
pub const DEFAULT_MAX_QUEUE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The server's identity: placement hashes this name, so every instance with the same names agrees.
    pub name: String,
    /// `host:port`; a host name is resolved in the background, not per connect (see [`crate::balancer::address`]).
    pub address: String,
    pub weight: u32,
    /// `coap` backends: the node id this server writes into the first byte of every DTLS Connection ID it issues
    /// (Californium's `DTLS_CONNECTION_ID_NODE_ID`), so that a record's CID names its server on every instance.
    /// Unique within the backend.
    pub dtls_cid_node_id: Option<u8>,
    /// Relays open to this server at most; None: no cap. A client beyond it waits ([`BackendConfig::queue_timeout`]).
    pub max_connections: Option<usize>,
    /// New relays to this server per second at most, evenly spaced; None: no cap.
    pub max_connection_rate: Option<u32>,
    /// The prefix of the client ids this broker assigns (mosquitto's `auto_id_prefix`): a client id starting with
    /// it is placed on this server ([`crate::balancer::assigned_id`]). No two servers' prefixes overlap.
    pub assigned_id_prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `admin.bind`: the read-only endpoints (`/metrics`, `/healthz`, `/readyz`). Without `control_bind`, the
    /// control endpoints are served here too, on connections made to a loopback address.
    pub bind: SocketAddr,
    /// `admin.control_bind`: every endpoint, the control ones (`/servers`, server states, `/reload`) included.
    pub control_bind: Option<SocketAddr>,
    /// `admin.token_file`, read: the bearer token the control endpoints require.
    pub token: Option<AdminToken>,
    /// Open connections on each admin socket; further ones wait in the kernel's queue.
    pub max_connections: usize,
    /// Deadline for a request's head and body; a connection carries one request.
    pub request_timeout: Duration,
    /// `admin.state_file`: where server states set through the admin API are kept across restarts.
    pub state_file: Option<PathBuf>,
}

/// `admin.max_connections` when not set: admin traffic is a scrape, a probe or an operator at a time.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// `admin.request_timeout` when not set.
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A secret that must not reach a log through `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminConfig {
    /// Where the control endpoints answer: `control_bind`, else `bind` on loopback connections only.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_bind.unwrap_or(self.bind)
    }

    /// What `check` and `run` say loudly when the control endpoints (server states, reload) are bound beyond
    /// loopback without a token: anyone who reaches that address can drain every server.
    pub fn exposure_warning(&self) -> Option<String> {
        let control = self.control_bind.filter(|a| !a.ip().to_canonical().is_loopback())?;
        self.token.is_none().then(|| {
            format!(
                "admin.control_bind {control} is reachable beyond this host and admin.token_file is not set: anyone \
                 who reaches it can drain or stop every server and reload the configuration; set admin.token_file \
                 or bind it to 127.0.0.1"
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deadline for the whole first packet (CONNECT) after the transport is up.
    pub connect_timeout: Duration,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Largest CONNECT accepted, fixed header included.
    pub max_connect_size: usize,
    /// Open client connections over all listeners; 0 = unlimited.
    pub max_connections: usize,
    /// Open client connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// `mqtt` and `websocket` listeners: close a relay after this long without bytes in either direction; zero =
    /// never.
    pub idle_timeout: Duration,
    /// The same for `tcp` (passthrough) listeners, which cannot see MQTT keep-alive: `limits.idle_timeout` when it
    /// is set, else [`DEFAULT_PASSTHROUGH_IDLE_TIMEOUT`].
    pub passthrough_idle_timeout: Duration,
    /// TLS handshakes and WebSocket upgrades in progress at once, every listener together; 0 = unlimited.
    pub max_handshakes: usize,
    /// Close a relay whose client sent nothing for this factor times its MQTT keep-alive.
    pub keep_alive_factor: KeepAliveFactor,
    /// TCP keepalive on client and server sockets; None = off.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Largest WebSocket frame, and message (all fragments of one), accepted from a client or a WebSocket
    /// backend; larger ones close the connection (close code 1009). Each WebSocket connection may buffer one.
    pub max_ws_frame_size: usize,
    /// New connections per second from one IP address (token bucket); 0 = unlimited.
    pub max_connection_rate_per_ip: u32,
    /// Bursts allowed above that rate (bucket size); defaults to the rate.
    pub connection_rate_burst: u32,
    /// Addresses the rate table remembers at most; a new address evicts the fullest bucket of a full table.
    pub connection_rate_table_size: usize,
    /// MQTT 3.1 client identifiers over 23 characters are refused (0x02), as the 3.1 text says; off by default, as
    /// in brokers.
    pub strict_v31_client_id: bool,
}

/// `limits.connection_rate_table_size` by default: up to about 20 MB of buckets (a hash entry and an ordered-set
/// entry per address, about 200 bytes).
pub const DEFAULT_RATE_TABLE_SIZE: usize = 100_000;

/// `shutdown.grace` by default. The shipped keepalived check (interval 2 s, fall 2) sees two failures 2-4 s after
/// the signal and the backup takes the IP at once; a cloud L4 balancer probing every 2 s with threshold 2 sees it as
/// soon. 5 s covers both with a margin, and adds only 5 s to a stop where nothing watches readiness.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long the listeners go on accepting after SIGTERM/SIGINT while `/readyz` already fails.
    pub grace: Duration,
    /// How long open relays may go on after SIGTERM/SIGINT before they are closed.
    pub drain_timeout: Duration,
    /// What MQTT 5 clients are told when the shutdown starts.
    pub disconnect: ShutdownDisconnect,
}

/// `shutdown.disconnect`: the DISCONNECT an MQTT 5 client gets (between two broker packets) when mqtt-lb starts to
/// shut down, so that it reconnects (through another instance) at once instead of at the drain deadline. MQTT
/// 3.1/3.1.1 have no server DISCONNECT: those clients are closed at the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownDisconnect {
    /// Reason 0x8B.
    #[default]
    ServerShuttingDown,
    /// Reason 0x9C.
    UseAnotherServer,
    /// No DISCONNECT: MQTT 5 clients stay until the drain deadline like the others.
    None,
}

impl ShutdownDisconnect {
    /// The MQTT 5 reason code, if a DISCONNECT is sent.
    pub fn reason_code(self) -> Option<u8> {
        match self {
            ShutdownDisconnect::ServerShuttingDown => Some(0x8B),
            ShutdownDisconnect::UseAnotherServer => Some(0x9C),
            ShutdownDisconnect::None => None,
        }
    }
}

/// What the log line written at the end of each relayed connection carries (`log:` in the file).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Whether that line names the MQTT client id (default true). Turn it off where client ids are personal data;
    /// the client address, server, bytes, duration and close reason are always there.
    pub client_id: bool,
}

/// `limits.idle_timeout` of `tcp` listeners when the key is not set. A passthrough relay cannot see MQTT
/// keep-alive, and a connection held for ever by a client gone without a FIN holds two file descriptors for ever.
/// One hour is longer than 1.5 times the keep-alive MQTT clients commonly use (60 s to 20 minutes; AWS IoT allows
/// at most 20 minutes, Azure IoT Hub 29), so a live MQTT client behind a passthrough listener is never cut, while
/// a dead one is gone within the hour even where TCP keepalive cannot reach it.
pub const DEFAULT_PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `limits.max_handshakes` per CPU core when the key is not set. A client's full TLS handshake and CONNECT cost
/// mqtt-lb about 240 us of CPU on the reference machine (the failover storm of docs/deployment.md: 2 cores, no
/// resumption), so one core completes about 4,000 a second. A handshake holds its place for at least a client round trip: with 128 places
/// per core and a 50 ms round trip (a fleet on mobile networks is slower), handshakes can take at most about
/// 2,500/s per core, some 60% of it, and relays keep the rest even when a whole fleet reconnects at once; the
/// clients beyond wait in the listen backlog. Fleets on fast networks that want storms over sooner raise it.
pub const HANDSHAKES_PER_CORE: usize = 128;

/// `limits.keep_alive_factor`, in thousandths (so that [`Limits`] stays comparable): a relay whose client sent
/// nothing for this factor times the keep-alive in force is closed, as brokers do (MQTT 3.1.1 section 3.1.2.10,
/// MQTT 5 section 3.1.2.11: one and a half times). 0 = off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveFactor(pub u32);

impl KeepAliveFactor {
    /// How long a client with keep-alive `seconds` may stay silent; None when either is 0 (no deadline).
    pub fn window(self, seconds: u16) -> Option<Duration> {
        if self.0 == 0 || seconds == 0 {
            return None;
        }
        Some(Duration::from_millis(u64::from(seconds) * u64::from(self.0)))
    }
}

/// `limits.tcp_keepalive`: SO_KEEPALIVE probes on client and server sockets, so that a peer gone without a FIN is
/// found by the kernel even when no MQTT keep-alive runs (keep-alive 0, `tcp` listeners) and NAT entries on the
/// way stay alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Silence before the first probe (TCP_KEEPIDLE).
    pub idle: Duration,
    /// Between probes (TCP_KEEPINTVL).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub count: u32,
}

/// `limits.max_ws_frame_size` when not set (or `max_connect_size`, if that is larger).
pub const DEFAULT_MAX_WS_FRAME_SIZE: usize = 1 << 20;
