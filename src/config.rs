//! Configuration: the YAML file (`config.yaml`) and the validated runtime [`Config`].
//!
//! Loading happens in two steps. First the file is deserialized into the `File*` types, which mirror the YAML one to
//! one and refuse unknown keys (`deny_unknown_fields`); durations (`2s`, `500ms`, `30m`, `1h`) and sizes (`64KiB`,
//! `1MiB`, `65536`) are parsed there. Then `validate` checks what serde cannot (duplicate names, references between
//! listeners and backends, addresses, certificate files) and builds the runtime [`Config`]. Every error is a
//! [`ConfigError`] that names the file, the key path (for example `backends[0].servers[2].address`) and what is wrong.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::transport::tls;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key path inside the file, such as `backends[0].servers[2].address`; empty for the whole document.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

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
    /// CoAP over UDP, and DTLS passed through (never decrypted), to a `coap` backend: see [`crate::udp`].
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

/// The UDP settings of a `coap` listener (see [`crate::udp`]).
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

/// An IP network in CIDR notation (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`); a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` or a bare address. Host bits must be zero (`10.0.0.1/8` is refused: it is
    /// most likely a typo for a single host or for `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!(
                "invalid network {text:?}: expected an address and a prefix length, like \"10.0.0.0/8\" or \"::1/128\""
            )
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("invalid network {text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        let masked = cidr.masked(network);
        if masked != network {
            return Err(format!("invalid network {text:?}: host bits are set (the network is {masked}/{prefix})"));
        }
        Ok(cidr)
    }

    /// `ip` with the bits past this network's prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix.min(128))).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as a dual-stack socket
    /// reports IPv4 clients) is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether `ip` may connect to a listener with these `allowed_sources` (empty: everyone).
pub fn source_allowed(allowed: &[Cidr], ip: IpAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|c| c.contains(ip))
}

/// TLS settings of a listener, with the certificate already loaded and checked.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: which CONNECT field must be the client certificate's CN or one of its SANs.
    pub require_identity: RequireIdentity,
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
    /// `host:port`; a host name is resolved at each connect.
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
    /// Accepted for compatibility and limits nothing: WebSocket frames are streamed as they arrive, never
    /// gathered into messages, so no frame or message size needs a cap (see `transport::ws`).
    pub max_ws_frame_size: usize,
    /// New connections per second from one IP address (token bucket); 0 = unlimited.
    pub max_connection_rate_per_ip: u32,
    /// Bursts allowed above that rate (bucket size); defaults to the rate.
    pub connection_rate_burst: u32,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
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

// ---------------------------------------------------------------------------------------------------------------
// The file format.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listeners: Vec<FileListener>,
    backends: Vec<FileBackend>,
    #[serde(default)]
    admin: Option<FileAdmin>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    shutdown: FileShutdown,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    workers: Workers,
}

/// `workers`: `auto` (one per CPU core) or a number of threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Workers(Option<u64>);

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto` or a number of threads")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers(Some(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
                u64::try_from(v).map(|v| Workers(Some(v))).map_err(|_| E::custom("must be `auto` or at least 1"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers(None)),
                    _ => Err(E::custom(format!("`{v}`: expected `auto` or a number of threads"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: String,
    bind: String,
    protocol: ListenerProtocol,
    #[serde(default)]
    tls: Option<FileTls>,
    backend: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    trusted_proxies: Option<Vec<String>>,
    // `coap` listeners only (see `CoapListenerConfig`).
    #[serde(default)]
    flow_idle_timeout: Option<DurationValue>,
    #[serde(default)]
    max_flows: Option<usize>,
    #[serde(default)]
    max_flows_per_ip: Option<usize>,
    #[serde(default)]
    max_datagram_size: Option<SizeValue>,
    #[serde(default)]
    max_datagram_rate_per_flow: Option<u32>,
    #[serde(default)]
    datagram_rate_burst: Option<u32>,
    #[serde(default)]
    dtls_cid_length: Option<u8>,
    #[serde(default)]
    dtls_cid_timeout: Option<DurationValue>,
    #[serde(default)]
    max_dtls_cids: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_identity: RequireIdentity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    name: String,
    #[serde(default)]
    protocol: BackendProtocol,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    proxy_protocol: ProxyProtocol,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "default_backend_connect_timeout")]
    connect_timeout: DurationValue,
    #[serde(default)]
    on_down: OnDown,
    #[serde(default)]
    health: FileHealth,
    servers: Vec<FileServer>,
}

fn default_backend_connect_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(5))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    /// Default by the backend's protocol: mqtt -> mqtt, websocket -> websocket, tcp -> tcp.
    #[serde(default)]
    check: Option<HealthCheckKind>,
    #[serde(default = "default_interval")]
    interval: DurationValue,
    #[serde(default = "default_probe_timeout")]
    timeout: DurationValue,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Default for FileHealth {
    fn default() -> Self {
        FileHealth {
            check: None,
            interval: default_interval(),
            timeout: default_probe_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            username: None,
            password: None,
        }
    }
}

fn default_interval() -> DurationValue {
    DurationValue(Duration::from_secs(2))
}
fn default_probe_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(1))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    name: String,
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    /// Wider than the byte it is, so that a value out of range gets a message saying the range.
    #[serde(default)]
    dtls_cid_node_id: Option<i64>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    bind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    connect_timeout: DurationValue,
    handshake_timeout: DurationValue,
    max_connect_size: SizeValue,
    max_connections: usize,
    max_connections_per_ip: usize,
    idle_timeout: DurationValue,
    max_ws_frame_size: Option<SizeValue>,
    max_connection_rate_per_ip: u32,
    connection_rate_burst: Option<u32>,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            connect_timeout: DurationValue(Duration::from_secs(10)),
            handshake_timeout: DurationValue(Duration::from_secs(10)),
            max_connect_size: SizeValue(64 * 1024),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            idle_timeout: DurationValue(Duration::ZERO),
            max_ws_frame_size: None,
            max_connection_rate_per_ip: 0,
            connection_rate_burst: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileShutdown {
    drain_timeout: DurationValue,
    disconnect: ShutdownDisconnect,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown {
            drain_timeout: DurationValue(Duration::from_secs(30)),
            disconnect: ShutdownDisconnect::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    client_id: bool,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog { client_id: true }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Durations and sizes.

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h` (`0` alone is allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        parse_duration(&text).map(DurationValue).map_err(de::Error::custom)
    }
}

/// A size written as a number of bytes, optionally with a unit `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeValue(pub usize);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(d)?.0;
        parse_size(&text).map(SizeValue).map_err(de::Error::custom)
    }
}

/// Accepts a YAML string or an unsigned integer, as text.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string such as \"2s\" or \"64KiB\", or a whole number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Splits `12ms` into (12, "ms").
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at_checked(digits)?;
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses `500ms`, `2s`, `30m`, `1h` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected a whole number with a unit ms, s, m or h, like \"2s\"");
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" if n == 0 => 0,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(ms_per_unit).ok_or_else(|| format!("duration {text:?} is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses `65536`, `64KiB`, `1MiB`, `1GiB`, `64KB`, `1MB`, `512B`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || {
        format!("invalid size {text:?}: expected a whole number of bytes, optionally with a unit B, KiB, MiB, GiB, KB, MB or GB")
    };
    let (n, unit) = split_number(text).ok_or_else(bad)?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("size {text:?} is too large"))
}

// ---------------------------------------------------------------------------------------------------------------
// Loading and validation.

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `origin` names the file in errors and anchors relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let mut failed_at = String::new();
    let options = serde_saphyr::options! { with_snippet: false };
    let file: Result<FileConfig, _> = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            failed_at = e.path().to_string();
            e.into_inner()
        })
    });
    let file = file.map_err(|e| ConfigError {
        file: origin.to_path_buf(),
        key: if failed_at == "." { String::new() } else { failed_at.clone() },
        message: e.to_string(),
    })?;
    validate(file, origin)
}

struct Checker<'a> {
    file: &'a Path,
    base: PathBuf,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), key: key.into(), message: message.into() }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn name(&self, key: String, name: &str, seen: &mut HashSet<String>) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(self.err(key, format!("invalid name {name:?}: use letters, digits, '-', '_' and '.'")));
        }
        if !seen.insert(name.to_owned()) {
            return Err(self.err(key, format!("duplicate name {name:?}")));
        }
        Ok(())
    }

    fn socket_addr(&self, key: String, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(key, format!("invalid address {text:?}: expected IP:port, like \"0.0.0.0:8883\" or \"[::]:8883\""))
        })
    }

    fn positive(&self, key: String, d: Duration) -> Result<Duration, ConfigError> {
        if d.is_zero() {
            Err(self.err(key, "must be greater than zero"))
        } else {
            Ok(d)
        }
    }
}

/// Checks `host:port` (host name, IPv4 or `[IPv6]`) without resolving it.
fn check_server_address(text: &str) -> Result<(), String> {
    let bad =
        |why: &str| format!("invalid address {text:?}: {why}; expected host:port, like \"wbroker01.example.org:1883\"");
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the port must be 1 to 65535")),
        Ok(_) => {}
    }
    if host.is_empty() || host.len() > 253 {
        return Err(bad("the host is empty or too long"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(bad("the host is not a valid host name or IP address"));
    }
    Ok(())
}

/// `limits.max_ws_frame_size` when not set (or `max_connect_size`, if that is larger).
pub const DEFAULT_MAX_WS_FRAME_SIZE: usize = 1 << 20;

/// A WebSocket path: `/` then visible ASCII, no fragment, at most 1024 bytes.
fn check_ws_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > 1024 {
        return Err(format!(
            "invalid path {path:?}: it must start with '/' (like \"/mqtt\") and be at most 1024 bytes"
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(format!("invalid path {path:?}: use visible ASCII without spaces or '#'"));
    }
    Ok(())
}

/// An origin as browsers send it: `scheme://host[:port]`, no path.
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = || format!("invalid origin {origin:?}: expected scheme://host[:port], like \"https://example.org\"");
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() || rest.contains('/') || !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(())
}

/// The keys of a `coap` listener; an error for any of them on another listener, or for a key a coap listener
/// cannot have.
fn coap_listener(
    c: &Checker<'_>,
    key: &str,
    l: &FileListener,
    backend: Option<BackendProtocol>,
) -> Result<Option<CoapListenerConfig>, ConfigError> {
    if l.protocol != ListenerProtocol::Coap {
        let set = [
            ("flow_idle_timeout", l.flow_idle_timeout.is_some()),
            ("max_flows", l.max_flows.is_some()),
            ("max_flows_per_ip", l.max_flows_per_ip.is_some()),
            ("max_datagram_size", l.max_datagram_size.is_some()),
            ("max_datagram_rate_per_flow", l.max_datagram_rate_per_flow.is_some()),
            ("datagram_rate_burst", l.datagram_rate_burst.is_some()),
            ("dtls_cid_length", l.dtls_cid_length.is_some()),
            ("dtls_cid_timeout", l.dtls_cid_timeout.is_some()),
            ("max_dtls_cids", l.max_dtls_cids.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set) {
            return Err(c.err(format!("{key}.{field}"), "only a listener with protocol: coap has this key"));
        }
        if backend == Some(BackendProtocol::Coap) {
            return Err(c.err(
                format!("{key}.backend"),
                format!("backend {:?} has protocol: coap: only a coap listener can use it", l.backend),
            ));
        }
        return Ok(None);
    }
    if backend != Some(BackendProtocol::Coap) {
        return Err(c.err(
            format!("{key}.backend"),
            format!("a coap listener relays datagrams: backend {:?} must have protocol: coap", l.backend),
        ));
    }
    if l.tls.is_some() {
        return Err(c.err(
            format!("{key}.tls"),
            "a coap listener passes DTLS through to the servers (which hold the keys): no tls here",
        ));
    }
    if l.trusted_proxies.is_some() {
        return Err(c.err(format!("{key}.trusted_proxies"), "PROXY headers are read on TCP listeners only"));
    }
    let defaults = CoapListenerConfig::default();
    let flow_idle_timeout = match l.flow_idle_timeout {
        Some(d) => c.positive(format!("{key}.flow_idle_timeout"), d.0)?,
        None => defaults.flow_idle_timeout,
    };
    let max_flows = l.max_flows.unwrap_or(defaults.max_flows);
    if !(1..=1_000_000).contains(&max_flows) {
        return Err(c.err(format!("{key}.max_flows"), "must be 1 to 1000000 (each flow holds a socket)"));
    }
    let max_datagram_size = l.max_datagram_size.map_or(defaults.max_datagram_size, |s| s.0);
    if !(64..=65_507).contains(&max_datagram_size) {
        return Err(c.err(format!("{key}.max_datagram_size"), "must be between 64B and 65507B"));
    }
    let rate = l.max_datagram_rate_per_flow.unwrap_or(0);
    if l.datagram_rate_burst.is_some() && rate == 0 {
        return Err(c.err(format!("{key}.datagram_rate_burst"), "needs max_datagram_rate_per_flow"));
    }
    let burst = l.datagram_rate_burst.unwrap_or(rate);
    if rate > 0 && burst == 0 {
        return Err(c.err(format!("{key}.datagram_rate_burst"), "must be at least 1"));
    }
    if l.dtls_cid_length == Some(0) {
        return Err(c.err(format!("{key}.dtls_cid_length"), "must be 1 to 255 (omit it when CIDs are not used)"));
    }
    if l.dtls_cid_length.is_none() {
        for (field, is_set) in
            [("dtls_cid_timeout", l.dtls_cid_timeout.is_some()), ("max_dtls_cids", l.max_dtls_cids.is_some())]
        {
            if is_set {
                return Err(c.err(format!("{key}.{field}"), "needs dtls_cid_length"));
            }
        }
    }
    let dtls_cid_timeout = match l.dtls_cid_timeout {
        Some(d) => c.positive(format!("{key}.dtls_cid_timeout"), d.0)?,
        None => defaults.dtls_cid_timeout,
    };
    let max_dtls_cids = l.max_dtls_cids.unwrap_or(defaults.max_dtls_cids);
    if !(1..=10_000_000).contains(&max_dtls_cids) {
        return Err(c.err(format!("{key}.max_dtls_cids"), "must be 1 to 10000000"));
    }
    Ok(Some(CoapListenerConfig {
        flow_idle_timeout,
        max_flows,
        max_flows_per_ip: l.max_flows_per_ip.unwrap_or(0),
        max_datagram_size,
        max_datagram_rate_per_flow: rate,
        datagram_rate_burst: burst,
        dtls_cid_length: l.dtls_cid_length,
        dtls_cid_timeout,
        max_dtls_cids,
    }))
}

fn validate(file: FileConfig, origin: &Path) -> Result<Config, ConfigError> {
    let c = Checker { file: origin, base: origin.parent().map(Path::to_path_buf).unwrap_or_default() };

    if file.backends.is_empty() {
        return Err(c.err("backends", "at least one backend is needed"));
    }
    let mut backend_names = HashSet::new();
    let mut backends = Vec::with_capacity(file.backends.len());
    for (i, b) in file.backends.into_iter().enumerate() {
        let key = format!("backends[{i}]");
        c.name(format!("{key}.name"), &b.name, &mut backend_names)?;
        if b.servers.is_empty() {
            return Err(c.err(format!("{key}.servers"), "at least one server is needed"));
        }
        let connect_timeout = c.positive(format!("{key}.connect_timeout"), b.connect_timeout.0)?;
        let h = b.health;
        let interval = c.positive(format!("{key}.health.interval"), h.interval.0)?;
        let timeout = c.positive(format!("{key}.health.timeout"), h.timeout.0)?;
        if h.rise == 0 {
            return Err(c.err(format!("{key}.health.rise"), "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(c.err(format!("{key}.health.fall"), "must be at least 1"));
        }
        if h.password.is_some() && h.username.is_none() {
            return Err(c.err(format!("{key}.health.password"), "a password needs a username"));
        }
        let path = match (b.protocol, b.path) {
            (BackendProtocol::Websocket, path) => {
                let path = path.unwrap_or_else(|| DEFAULT_WS_PATH.to_owned());
                check_ws_path(&path).map_err(|m| c.err(format!("{key}.path"), m))?;
                path
            }
            (_, Some(_)) => {
                return Err(c.err(format!("{key}.path"), "only a backend with protocol: websocket has a path"))
            }
            (_, None) => DEFAULT_WS_PATH.to_owned(),
        };
        let check = match (h.check, b.protocol) {
            (None, BackendProtocol::Mqtt) => HealthCheckKind::Mqtt,
            (None, BackendProtocol::Websocket) => HealthCheckKind::Websocket,
            (None, BackendProtocol::Tcp) => HealthCheckKind::Tcp,
            (None, BackendProtocol::Coap) => HealthCheckKind::CoapPing,
            (Some(check @ (HealthCheckKind::CoapPing | HealthCheckKind::DtlsHello)), p)
                if p != BackendProtocol::Coap =>
            {
                return Err(c.err(
                    format!("{key}.health.check"),
                    format!(
                        "check: {} needs a backend with protocol: coap (this one is {})",
                        check.as_str(),
                        p.as_str()
                    ),
                ))
            }
            (Some(HealthCheckKind::Mqtt | HealthCheckKind::Websocket), BackendProtocol::Coap) => {
                return Err(c.err(
                    format!("{key}.health.check"),
                    "a coap backend is checked by coap-ping, dtls-hello, tcp or none",
                ))
            }
            (Some(HealthCheckKind::Websocket), p) if p != BackendProtocol::Websocket => {
                return Err(c.err(
                    format!("{key}.health.check"),
                    format!("check: websocket needs a backend with protocol: websocket (this one is {})", p.as_str()),
                ))
            }
            (Some(HealthCheckKind::Mqtt), BackendProtocol::Websocket) => {
                return Err(c.err(
                    format!("{key}.health.check"),
                    "a websocket backend speaks MQTT inside WebSocket: use check: websocket (or tcp, none)",
                ))
            }
            (Some(check), _) => check,
        };
        if b.protocol == BackendProtocol::Coap && b.proxy_protocol != ProxyProtocol::None {
            return Err(c.err(format!("{key}.proxy_protocol"), "a coap backend receives datagrams: no PROXY header"));
        }
        let mut server_names = HashSet::new();
        let mut servers: Vec<ServerConfig> = Vec::with_capacity(b.servers.len());
        for (j, s) in b.servers.into_iter().enumerate() {
            let skey = format!("{key}.servers[{j}]");
            c.name(format!("{skey}.name"), &s.name, &mut server_names)?;
            check_server_address(&s.address).map_err(|m| c.err(format!("{skey}.address"), m))?;
            if s.weight == 0 || s.weight > 1000 {
                return Err(c.err(format!("{skey}.weight"), format!("weight {} is out of range 1 to 1000", s.weight)));
            }
            let node_key = || format!("{skey}.dtls_cid_node_id");
            let node_id = match s.dtls_cid_node_id.map(u8::try_from) {
                None => None,
                Some(Ok(node)) => Some(node),
                Some(Err(_)) => {
                    return Err(c.err(node_key(), "must be 0 to 255: the first byte of the Connection IDs it issues"))
                }
            };
            if let Some(node) = node_id {
                if b.protocol != BackendProtocol::Coap {
                    return Err(c.err(node_key(), "only a server of a backend with protocol: coap has this key"));
                }
                if let Some(other) = servers.iter().find(|o| o.dtls_cid_node_id == Some(node)) {
                    return Err(c.err(
                        node_key(),
                        format!(
                            "node id {node} is also server {:?}'s: each server of a backend needs its own",
                            other.name
                        ),
                    ));
                }
            }
            servers.push(ServerConfig {
                name: s.name,
                address: s.address,
                weight: s.weight,
                dtls_cid_node_id: node_id,
            });
        }
        backends.push(BackendConfig {
            name: b.name,
            protocol: b.protocol,
            balance: b.balance,
            proxy_protocol: b.proxy_protocol,
            path: path.clone(),
            connect_timeout,
            on_down: b.on_down,
            health: HealthConfig {
                check,
                interval,
                timeout,
                rise: h.rise,
                fall: h.fall,
                username: h.username,
                password: h.password,
                path,
                proxy_protocol: b.proxy_protocol,
            },
            servers,
        });
    }

    if file.listeners.is_empty() {
        return Err(c.err("listeners", "at least one listener is needed"));
    }
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    let mut udp_binds = HashSet::new();
    let mut listeners = Vec::with_capacity(file.listeners.len());
    for (i, l) in file.listeners.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        c.name(format!("{key}.name"), &l.name, &mut listener_names)?;
        let bind = c.socket_addr(format!("{key}.bind"), &l.bind)?;
        let same_transport = if l.protocol == ListenerProtocol::Coap { &mut udp_binds } else { &mut binds };
        if bind.port() != 0 && !same_transport.insert(bind) {
            return Err(c.err(format!("{key}.bind"), format!("{bind} is already used by another listener")));
        }
        let backend = backends.iter().position(|b| b.name == l.backend).ok_or_else(|| {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            c.err(
                format!("{key}.backend"),
                format!("no backend named {:?} (backends: {})", l.backend, known.join(", ")),
            )
        })?;
        let coap = coap_listener(&c, &key, &l, backends.get(backend).map(|b| b.protocol))?;
        let tls = match l.tls {
            None => None,
            Some(t) => {
                let cert = c.resolve(&t.cert);
                let key_path = c.resolve(&t.key);
                let client_ca = t.client_ca.as_deref().map(|p| c.resolve(p));
                if t.require_identity != RequireIdentity::None && client_ca.is_none() {
                    return Err(c.err(
                        format!("{key}.tls.require_identity"),
                        "needs tls.client_ca: only a verified client certificate can vouch for an identity",
                    ));
                }
                let server_config = tls::server_config(&cert, &key_path, client_ca.as_deref()).map_err(|e| {
                    let field = match e.part {
                        tls::TlsPart::Cert => "cert",
                        tls::TlsPart::Key => "key",
                        tls::TlsPart::ClientCa => "client_ca",
                    };
                    c.err(format!("{key}.tls.{field}"), e.message)
                })?;
                Some(TlsConfig {
                    cert,
                    key: key_path,
                    client_ca,
                    require_identity: t.require_identity,
                    server_config: Arc::new(server_config),
                })
            }
        };
        let backend_protocol = backends.get(backend).map_or(BackendProtocol::Mqtt, |b| b.protocol);
        if l.protocol == ListenerProtocol::Tcp && backend_protocol == BackendProtocol::Websocket {
            return Err(c.err(
                format!("{key}.backend"),
                format!("a tcp listener relays raw bytes: backend {:?} must have protocol tcp or mqtt", l.backend),
            ));
        }
        let websocket = l.protocol == ListenerProtocol::Websocket;
        let path = match l.path {
            Some(_) if !websocket => {
                return Err(c.err(format!("{key}.path"), "only a listener with protocol: websocket has a path"))
            }
            Some(p) => {
                check_ws_path(&p).map_err(|m| c.err(format!("{key}.path"), m))?;
                if p.contains('?') {
                    return Err(c.err(format!("{key}.path"), format!("invalid path {p:?}: no query string here")));
                }
                p
            }
            None => DEFAULT_WS_PATH.to_owned(),
        };
        let allowed_origins = match l.allowed_origins {
            None => Vec::new(),
            Some(_) if !websocket => {
                return Err(
                    c.err(format!("{key}.allowed_origins"), "only a listener with protocol: websocket checks origins")
                )
            }
            Some(list) if list.is_empty() => {
                return Err(c.err(format!("{key}.allowed_origins"), "must not be empty (omit it to allow any origin)"))
            }
            Some(list) => {
                for (j, o) in list.iter().enumerate() {
                    check_origin(o).map_err(|m| c.err(format!("{key}.allowed_origins[{j}]"), m))?;
                }
                list
            }
        };
        let allowed_sources = match l.allowed_sources {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(c.err(format!("{key}.allowed_sources"), "must not be empty (omit it to allow every source)"))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, text)| Cidr::parse(text).map_err(|m| c.err(format!("{key}.allowed_sources[{j}]"), m)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let trusted_proxies = match l.trusted_proxies {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(
                    c.err(format!("{key}.trusted_proxies"), "must not be empty (omit it to read no PROXY header)")
                )
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, text)| Cidr::parse(text).map_err(|m| c.err(format!("{key}.trusted_proxies[{j}]"), m)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        listeners.push(ListenerConfig {
            trusted_proxies,
            name: l.name,
            bind,
            protocol: l.protocol,
            tls,
            backend,
            path,
            allowed_origins,
            allowed_sources,
            coap,
        });
    }

    let admin = match file.admin {
        None => None,
        Some(a) => {
            let bind = c.socket_addr("admin.bind".into(), &a.bind)?;
            if bind.port() != 0 && binds.contains(&bind) {
                return Err(c.err("admin.bind", format!("{bind} is already used by a listener")));
            }
            Some(AdminConfig { bind })
        }
    };

    let l = file.limits;
    let limits = Limits {
        connect_timeout: c.positive("limits.connect_timeout".into(), l.connect_timeout.0)?,
        handshake_timeout: c.positive("limits.handshake_timeout".into(), l.handshake_timeout.0)?,
        max_connect_size: l.max_connect_size.0,
        max_connections: l.max_connections,
        max_connections_per_ip: l.max_connections_per_ip,
        idle_timeout: l.idle_timeout.0,
        max_ws_frame_size: l.max_ws_frame_size.map_or(DEFAULT_MAX_WS_FRAME_SIZE.max(l.max_connect_size.0), |v| v.0),
        max_connection_rate_per_ip: l.max_connection_rate_per_ip,
        connection_rate_burst: l.connection_rate_burst.unwrap_or(l.max_connection_rate_per_ip),
    };
    if l.connection_rate_burst.is_some() && limits.max_connection_rate_per_ip == 0 {
        return Err(c.err("limits.connection_rate_burst", "needs limits.max_connection_rate_per_ip"));
    }
    if limits.max_connection_rate_per_ip > 0 && limits.connection_rate_burst == 0 {
        return Err(c.err("limits.connection_rate_burst", "must be at least 1"));
    }
    // The smallest CONNECT (3.1.1, empty client id) is 14 bytes; the largest a broker accepts is 256 MiB.
    if !(16..=256 << 20).contains(&limits.max_connect_size) {
        return Err(c.err("limits.max_connect_size", "must be between 16B and 256MiB"));
    }
    if !(1 << 10..=256 << 20).contains(&limits.max_ws_frame_size) {
        return Err(c.err("limits.max_ws_frame_size", "must be between 1KiB and 256MiB"));
    }
    if limits.max_ws_frame_size < limits.max_connect_size {
        return Err(c.err(
            "limits.max_ws_frame_size",
            "must be at least limits.max_connect_size (a CONNECT may come in one frame)",
        ));
    }

    let workers = match file.workers.0 {
        None => None,
        Some(n @ 1..=1024) => usize::try_from(n).ok(),
        Some(_) => return Err(c.err("workers", "must be `auto` or a number of threads from 1 to 1024")),
    };

    Ok(Config {
        source: origin.to_path_buf(),
        listeners,
        backends,
        admin,
        limits,
        shutdown: ShutdownConfig { drain_timeout: file.shutdown.drain_timeout.0, disconnect: file.shutdown.disconnect },
        log: LogConfig { client_id: file.log.client_id },
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:0"
    protocol: mqtt
    backend: brokers
backends:
  - name: brokers
    health: { check: tcp, interval: 500ms }
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
      - { name: b2, address: "broker-2.example.org:1883", weight: 2 }
admin: { bind: "127.0.0.1:0" }
limits: { connect_timeout: 5s, max_connect_size: 1KiB }
"#;

    #[test]
    fn workers_is_auto_or_a_thread_count() {
        assert_eq!(parse(GOOD, Path::new("test.yaml")).unwrap().workers, None);
        let c = parse(&format!("{GOOD}workers: auto\n"), Path::new("test.yaml")).unwrap();
        assert_eq!(c.workers, None);
        let c = parse(&format!("{GOOD}workers: 3\n"), Path::new("test.yaml")).unwrap();
        assert_eq!(c.workers, Some(3));
        for bad in ["0", "5000", "-1", "many"] {
            let e = err_of(&format!("{GOOD}workers: {bad}\n")).to_string();
            assert!(e.starts_with("test.yaml: workers: "), "{bad}: {e}");
            assert!(e.contains("auto"), "{bad}: {e}");
        }
    }

    fn err_of(text: &str) -> ConfigError {
        match parse(text, Path::new("test.yaml")) {
            Ok(_) => panic!("config was accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = parse(GOOD, Path::new("test.yaml")).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.backends[0].servers[1].weight, 2);
        assert_eq!(c.backends[0].health.interval, Duration::from_millis(500));
        assert_eq!(c.backends[0].health.rise, 2);
        assert_eq!(c.limits.max_connect_size, 1024);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
        assert!(c.log.client_id, "client ids are logged unless turned off");
    }

    #[test]
    fn log_section() {
        let c = parse(&format!("{GOOD}log: {{ client_id: false }}\n"), Path::new("test.yaml")).unwrap();
        assert!(!c.log.client_id);
        let c = parse(&format!("{GOOD}log: {{ client_id: true }}\n"), Path::new("test.yaml")).unwrap();
        assert!(c.log.client_id);
        let e = err_of(&format!("{GOOD}log: {{ client_ids: false }}\n"));
        assert_eq!(e.key, "log.client_ids", "{e}");
        let e = err_of(&format!("{GOOD}log: {{ client_id: maybe }}\n"));
        assert_eq!(e.key, "log.client_id", "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("1PB").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("address: \"127.0.0.1:1883\" }", "address: \"127.0.0.1\" }", "backends[0].servers[0].address"),
            ("address: \"broker-2.example.org:1883\"", "address: \"bad host!:1883\"", "backends[0].servers[1].address"),
            ("backend: brokers", "backend: nowhere", "listeners[0].backend"),
            ("name: b2", "name: b1", "backends[0].servers[1].name"),
            ("interval: 500ms", "interval: 5 seconds", "backends[0].health.interval"),
            ("max_connect_size: 1KiB", "max_connect_size: 1 lot", "limits.max_connect_size"),
            ("protocol: mqtt\n", "protocol: smtp\n", "listeners[0].protocol"),
            ("bind: \"127.0.0.1:0\"\n    protocol", "bind: \"localhost\"\n    protocol", "listeners[0].bind"),
            ("weight: 2", "weight: 0", "backends[0].servers[1].weight"),
            ("interval: 500ms", "interval: 500ms, colour: red", "backends[0].health.colour"),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = err_of(&GOOD.replacen(from, to, 1));
            assert_eq!(e.key, *key, "{to}: {e}");
            assert!(e.to_string().starts_with("test.yaml: "), "{e}");
        }
    }

    #[test]
    fn unknown_and_missing_keys() {
        let e = err_of(&GOOD.replace("admin:", "admni:"));
        assert!(e.message.contains("admni"), "{e}");
        let e = err_of(&GOOD.replace("    backend: brokers\n", "\n"));
        assert_eq!(e.key, "listeners[0]");
        assert!(e.message.contains("backend"), "{e}");
    }

    #[test]
    fn unreadable_certificate_names_the_key() {
        let text = GOOD.replace(
            "protocol: mqtt\n",
            "protocol: mqtt\n    tls: { cert: /nonexistent.crt, key: /nonexistent.key }\n",
        );
        let e = err_of(&text);
        assert_eq!(e.key, "listeners[0].tls.cert");
        assert!(e.message.contains("/nonexistent.crt"), "{e}");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = err_of("listeners: [\n");
        assert!(e.to_string().starts_with("test.yaml"), "{e}");
    }

    /// GOOD plus a WSS listener to a WebSocket backend and a tcp passthrough.
    const WS: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:0"
    protocol: mqtt
    backend: brokers
  - name: wss
    bind: "127.0.0.1:0"
    protocol: websocket
    path: /mqtt
    allowed_origins: ["https://maps.example.org"]
    backend: brokers_ws
  - name: dashboard
    bind: "127.0.0.1:0"
    protocol: tcp
    allowed_sources: ["10.0.0.0/8", "127.0.0.1/32", "::1"]
    backend: dashboards
backends:
  - name: brokers
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
  - name: brokers_ws
    protocol: websocket
    path: /mqtt
    servers:
      - { name: b1, address: "127.0.0.1:8083" }
  - name: dashboards
    protocol: tcp
    servers:
      - { name: b1, address: "127.0.0.1:18083" }
limits: { max_connect_size: 1KiB }
"#;

    #[test]
    fn websocket_and_tcp_keys_load_with_defaults() {
        let c = parse(WS, Path::new("test.yaml")).unwrap();
        let wss = &c.listeners[1];
        assert_eq!(wss.protocol, ListenerProtocol::Websocket);
        assert_eq!(wss.path, "/mqtt");
        assert_eq!(wss.allowed_origins, vec!["https://maps.example.org".to_owned()]);
        assert_eq!(c.listeners[2].allowed_sources.len(), 3);
        assert_eq!(c.listeners[0].path, DEFAULT_WS_PATH);
        assert!(c.listeners[0].allowed_sources.is_empty());
        // The health check follows the backend's protocol unless set.
        assert_eq!(c.backends[0].health.check, HealthCheckKind::Mqtt);
        assert_eq!(c.backends[1].health.check, HealthCheckKind::Websocket);
        assert_eq!(c.backends[1].health.path, "/mqtt");
        assert_eq!(c.backends[2].health.check, HealthCheckKind::Tcp);
        assert_eq!(c.limits.max_ws_frame_size, DEFAULT_MAX_WS_FRAME_SIZE);
        let big = parse(&WS.replace("1KiB", "2MiB"), Path::new("test.yaml")).unwrap();
        assert_eq!(big.limits.max_ws_frame_size, 2 << 20, "never below max_connect_size");
    }

    #[test]
    fn websocket_and_tcp_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("\"::1\"]", "\"::1\", \"10.0.0.1/8\"]", "listeners[2].allowed_sources[3]"),
            ("\"127.0.0.1/32\"", "\"127.0.0.1/33\"", "listeners[2].allowed_sources[1]"),
            ("[\"10.0.0.0/8\"", "[\"ten/8\"", "listeners[2].allowed_sources[0]"),
            (
                "allowed_sources: [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1\"]",
                "allowed_sources: []",
                "listeners[2].allowed_sources",
            ),
            ("path: /mqtt\n    allowed", "path: mqtt\n    allowed", "listeners[1].path"),
            ("path: /mqtt\n    allowed", "path: /mqtt?x=1\n    allowed", "listeners[1].path"),
            ("\"https://maps.example.org\"", "\"maps.example.org\"", "listeners[1].allowed_origins[0]"),
            (
                "protocol: tcp\n    allowed_sources",
                "protocol: tcp\n    path: /x\n    allowed_sources",
                "listeners[2].path",
            ),
            ("backend: dashboards", "backend: brokers_ws", "listeners[2].backend"),
            (
                "path: /mqtt\n    servers",
                "path: /mqtt\n    health: { check: mqtt }\n    servers",
                "backends[1].health.check",
            ),
            (
                "protocol: tcp\n    servers",
                "protocol: tcp\n    health: { check: websocket }\n    servers",
                "backends[2].health.check",
            ),
            ("protocol: tcp\n    servers", "protocol: tcp\n    path: /x\n    servers", "backends[2].path"),
            (
                "protocol: websocket\n    path: /mqtt\n    servers",
                "protocol: websocket\n    path: \"/a b\"\n    servers",
                "backends[1].path",
            ),
            ("max_connect_size: 1KiB", "max_connect_size: 2KiB, max_ws_frame_size: 1KiB", "limits.max_ws_frame_size"),
            ("max_connect_size: 1KiB", "max_ws_frame_size: 1 lot", "limits.max_ws_frame_size"),
            ("protocol: websocket\n    path", "protocol: websockets\n    path", "listeners[1].protocol"),
        ];
        for (from, to, key) in cases {
            assert!(WS.contains(from), "{from}");
            let e = err_of(&WS.replacen(from, to, 1));
            assert_eq!(e.key, *key, "{to}: {e}");
            assert!(e.to_string().starts_with("test.yaml: "), "{e}");
        }
        let e = err_of(&WS.replacen("\"::1\"]", "\"10.0.0.1/8\"]", 1));
        assert!(e.message.contains("10.0.0.0/8"), "the message suggests the network: {e}");
    }

    #[test]
    fn cidr_membership() {
        let net = |t: &str| Cidr::parse(t).unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")), "a bare address is one host");
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.7")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")), "families do not mix");
        assert!(net("::1/128").contains(ip("::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")), "IPv4-mapped addresses count as IPv4");
        for bad in ["10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/33", "::/129", "10.0.0.1/8", "fe80::1/10", "host/8", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert!(source_allowed(&[], ip("192.0.2.1")));
        assert!(!source_allowed(&[net("10.0.0.0/8")], ip("192.0.2.1")));
    }

    /// An MQTT listener, plain CoAP and DTLS passthrough listeners on the same CoAP servers.
    const COAP: &str = r#"
listeners:
  - name: mqtt
    bind: "127.0.0.1:5683"
    protocol: mqtt
    backend: brokers
  - name: coap
    bind: "127.0.0.1:5683"
    protocol: coap
    backend: coap_servers
    flow_idle_timeout: 2m
    max_flows: 500
    max_flows_per_ip: 20
    max_datagram_size: 1500
    max_datagram_rate_per_flow: 100
  - name: coaps
    bind: "127.0.0.1:5684"
    protocol: coap
    backend: coaps_servers
    dtls_cid_length: 8
    allowed_sources: ["10.0.0.0/8"]
backends:
  - name: brokers
    servers:
      - { name: b1, address: "127.0.0.1:1883" }
  - name: coap_servers
    protocol: coap
    servers:
      - { name: c1, address: "127.0.0.1:15683" }
  - name: coaps_servers
    protocol: coap
    health: { check: dtls-hello }
    servers:
      - { name: c1, address: "127.0.0.1:15684", dtls_cid_node_id: 1 }
      - { name: c2, address: "127.0.0.1:25684", dtls_cid_node_id: 2 }
      - { name: c3, address: "127.0.0.1:35684" }
"#;

    #[test]
    fn coap_keys_load_with_defaults() {
        let c = parse(COAP, Path::new("test.yaml")).unwrap();
        assert_eq!(c.listeners[0].coap, None);
        let coap = c.listeners[1].coap.clone().unwrap();
        assert_eq!(c.listeners[1].protocol, ListenerProtocol::Coap);
        assert_eq!(coap.flow_idle_timeout, Duration::from_secs(120));
        assert_eq!((coap.max_flows, coap.max_flows_per_ip, coap.max_datagram_size), (500, 20, 1500));
        assert_eq!((coap.max_datagram_rate_per_flow, coap.datagram_rate_burst), (100, 100), "burst defaults to rate");
        assert_eq!(coap.dtls_cid_length, None);
        let coaps = c.listeners[2].coap.clone().unwrap();
        let defaults = CoapListenerConfig::default();
        assert_eq!(coaps.dtls_cid_length, Some(8));
        assert_eq!(coaps.dtls_cid_timeout, defaults.dtls_cid_timeout);
        assert_eq!((coaps.max_flows, coaps.flow_idle_timeout), (defaults.max_flows, defaults.flow_idle_timeout));
        assert_eq!(c.listeners[2].allowed_sources.len(), 1);
        assert_eq!(c.backends[1].protocol, BackendProtocol::Coap);
        assert_eq!(c.backends[1].health.check, HealthCheckKind::CoapPing, "coap backends ping by default");
        assert_eq!(c.backends[2].health.check, HealthCheckKind::DtlsHello);
        let node_ids: Vec<_> = c.backends[2].servers.iter().map(|s| s.dtls_cid_node_id).collect();
        assert_eq!(node_ids, [Some(1), Some(2), None]);
        assert_eq!(c.backends[1].servers[0].dtls_cid_node_id, None);
        // UDP 5683 and TCP 5683 are different sockets; two coap listeners on one address are not.
        let e = err_of(&COAP.replacen("\"127.0.0.1:5684\"", "\"127.0.0.1:5683\"", 1));
        assert_eq!(e.key, "listeners[2].bind", "{e}");
    }

    #[test]
    fn coap_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("protocol: mqtt\n    backend", "protocol: mqtt\n    max_flows: 5\n    backend", "listeners[0].max_flows"),
            (
                "protocol: mqtt\n    backend: brokers",
                "protocol: mqtt\n    backend: coap_servers",
                "listeners[0].backend",
            ),
            ("backend: coap_servers", "backend: brokers", "listeners[1].backend"),
            ("flow_idle_timeout: 2m", "flow_idle_timeout: 0", "listeners[1].flow_idle_timeout"),
            ("flow_idle_timeout: 2m", "flow_idle_timeout: soon", "listeners[1].flow_idle_timeout"),
            ("max_flows: 500", "max_flows: 0", "listeners[1].max_flows"),
            ("max_datagram_size: 1500", "max_datagram_size: 70000", "listeners[1].max_datagram_size"),
            ("max_datagram_size: 1500", "max_datagram_size: 16", "listeners[1].max_datagram_size"),
            ("max_datagram_rate_per_flow: 100", "datagram_rate_burst: 5", "listeners[1].datagram_rate_burst"),
            ("max_flows: 500", "max_flows: 500\n    dtls_cid_timeout: 1h", "listeners[1].dtls_cid_timeout"),
            ("max_flows: 500", "max_flows: 500\n    max_dtls_cids: 9", "listeners[1].max_dtls_cids"),
            ("dtls_cid_length: 8", "dtls_cid_length: 0", "listeners[2].dtls_cid_length"),
            ("dtls_cid_length: 8", "dtls_cid_length: 256", "listeners[2].dtls_cid_length"),
            ("dtls_cid_length: 8", "dtls_cid_length: 8\n    tls: { cert: a.crt, key: a.key }", "listeners[2].tls"),
            (
                "dtls_cid_length: 8",
                "dtls_cid_length: 8\n    trusted_proxies: [\"10.0.0.0/8\"]",
                "listeners[2].trusted_proxies",
            ),
            ("health: { check: dtls-hello }", "health: { check: mqtt }", "backends[2].health.check"),
            (
                "health: { check: dtls-hello }",
                "health: { check: tcp }\n    proxy_protocol: v2",
                "backends[2].proxy_protocol",
            ),
            (
                "servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
                "health: { check: coap-ping }\n    servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
                "backends[0].health.check",
            ),
            (
                "servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
                "health: { check: dtls-hello }\n    servers:\n      - { name: b1, address: \"127.0.0.1:1883\" }",
                "backends[0].health.check",
            ),
            (
                "protocol: coap\n    backend: coap_servers",
                "protocol: udp\n    backend: coap_servers",
                "listeners[1].protocol",
            ),
            ("dtls_cid_node_id: 2", "dtls_cid_node_id: 1", "backends[2].servers[1].dtls_cid_node_id"),
            ("dtls_cid_node_id: 2", "dtls_cid_node_id: 256", "backends[2].servers[1].dtls_cid_node_id"),
            ("dtls_cid_node_id: 2", "dtls_cid_node_id: -1", "backends[2].servers[1].dtls_cid_node_id"),
            (
                "\"127.0.0.1:1883\" }",
                "\"127.0.0.1:1883\", dtls_cid_node_id: 1 }",
                "backends[0].servers[0].dtls_cid_node_id",
            ),
        ];
        for (from, to, key) in cases {
            assert!(COAP.contains(from), "{from}");
            let e = err_of(&COAP.replacen(from, to, 1));
            assert_eq!(e.key, *key, "{to}: {e}");
            assert!(e.to_string().starts_with("test.yaml: "), "{e}");
        }
        let e = err_of(&COAP.replacen("dtls_cid_node_id: 2", "dtls_cid_node_id: 1", 1));
        assert_eq!(
            e.to_string(),
            "test.yaml: backends[2].servers[1].dtls_cid_node_id: node id 1 is also server \"c1\"'s: each server of a \
             backend needs its own"
        );
        let e = err_of(&COAP.replacen("dtls_cid_node_id: 2", "dtls_cid_node_id: 300", 1));
        assert!(
            e.to_string()
                .ends_with("dtls_cid_node_id: must be 0 to 255: the first byte of the Connection IDs it issues"),
            "{e}"
        );
    }
}
