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
    /// Index into [`Config::backends`].
    pub backend: usize,
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
    /// Datagrams per second from one device address (token bucket); 0 = unlimited.
    pub max_datagram_rate_per_flow: u32,
    /// Bursts allowed above that rate (bucket size).
    pub datagram_rate_burst: u32,
    /// The length of the DTLS Connection IDs the servers issue; None: CIDs are not read.
    pub dtls_cid_length: Option<u8>,
    /// How long a CID is remembered with its server after its last record.
    pub dtls_cid_timeout: Duration,
    /// CIDs remembered at most (least recently used forgotten first).
    pub max_dtls_cids: usize,
}

impl Default for CoapListenerConfig {
    fn default() -> Self {
        CoapListenerConfig {
            flow_idle_timeout: Duration::from_secs(300),
            max_flows: 10_000,
            max_flows_per_ip: 0,
            max_datagram_size: 2048,
            max_datagram_rate_per_flow: 0,
            datagram_rate_burst: 0,
            dtls_cid_length: None,
            dtls_cid_timeout: Duration::from_secs(24 * 3600),
            max_dtls_cids: 100_000,
        }
    }
}

/// TLS settings of a listener, with the certificate already loaded and checked.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: which CONNECT field must be the client certificate's CN or one of its SANs.
    pub require_identity: RequireIdentity,
    /// Session-ticket keys shared with other instances ([`crate::transport::ticket_keys`]); re-read on reload.
    pub ticket_keys: Option<PathBuf>,
    pub server_config: Arc<rustls::ServerConfig>,
}

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
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
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
}

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
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// `admin.state_file`: where server states set through the admin API are kept across restarts.
    pub state_file: Option<PathBuf>,
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
    /// Close a relay after this long without bytes in either direction; zero = never.
    pub idle_timeout: Duration,
    /// Largest WebSocket frame, and message (all fragments of one), accepted from a client or a WebSocket
    /// backend; larger ones close the connection (close code 1009). Each WebSocket connection may buffer one.
    pub max_ws_frame_size: usize,
    /// New connections per second from one IP address (token bucket); 0 = unlimited.
    pub max_connection_rate_per_ip: u32,
    /// Bursts allowed above that rate (bucket size); defaults to the rate.
    pub connection_rate_burst: u32,
    /// MQTT 3.1 client identifiers over 23 characters are refused (0x02), as the 3.1 text says; off by default, as
    /// in brokers.
    pub strict_v31_client_id: bool,
}

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

/// `limits.max_ws_frame_size` when not set (or `max_connect_size`, if that is larger).
pub const DEFAULT_MAX_WS_FRAME_SIZE: usize = 1 << 20;
