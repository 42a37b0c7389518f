//! The file format: `config.yaml` one to one. Every section refuses keys it does not know
//! (`deny_unknown_fields`); values are parsed to their types here, and everything serde cannot check is left to
//! [`super::validate`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::http_check::{FileExpectStatus, FileHttpTls};
use super::runtime::{
    BackendProtocol, Balance, CertificateName, HealthCheckKind, ListenerProtocol, OnDown, ProxyProtocol,
    RequireIdentity, ShutdownDisconnect, DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_ADMIN_REQUEST_TIMEOUT,
    DEFAULT_RATE_TABLE_SIZE, DEFAULT_SHUTDOWN_GRACE,
};
use super::units::{DurationValue, SizeValue};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig<L> {
    /// Read twice: first for each listener's `protocol` only ([`ListenerProtocolOnly`]), then each with the keys of
    /// its protocol ([`super::listener_schema`]).
    pub(super) listeners: Vec<L>,
    pub(super) backends: Vec<FileBackend>,
    #[serde(default)]
    pub(super) admin: Option<FileAdmin>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) shutdown: FileShutdown,
    #[serde(default)]
    pub(super) log: FileLog,
    #[serde(default)]
    pub(super) workers: Workers,
}

impl<L> FileConfig<L> {
    /// The same document with the listeners read again, each with the keys of its protocol.
    pub(super) fn with_listeners<M>(self, listeners: Vec<M>) -> FileConfig<M> {
        FileConfig {
            listeners,
            backends: self.backends,
            admin: self.admin,
            limits: self.limits,
            shutdown: self.shutdown,
            log: self.log,
            workers: self.workers,
        }
    }
}

/// A listener in the first reading: its protocol, which decides the keys it may have; the other keys are read
/// (and unknown ones refused) in the second.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a listener: a mapping with name, bind, protocol and backend")]
pub(super) struct ListenerProtocolOnly {
    pub(super) protocol: ListenerProtocol,
}

/// `workers`: `auto` (one per CPU core) or a number of threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Workers(pub(super) Option<u64>);

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
pub(super) struct FileTls {
    /// One certificate: `cert` and `key` (with its optional `ocsp_response`), or several in `certificates`.
    #[serde(default)]
    pub(super) cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) key: Option<PathBuf>,
    #[serde(default)]
    pub(super) ocsp_response: Option<PathBuf>,
    #[serde(default)]
    pub(super) certificates: Option<Vec<FileCertificate>>,
    #[serde(default)]
    pub(super) client_crl: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub(super) client_ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) require_identity: RequireIdentity,
    #[serde(default)]
    pub(super) username_from_certificate: Option<CertificateName>,
    #[serde(default)]
    pub(super) ticket_keys: Option<PathBuf>,
}

/// One of `tls.certificates`: a certificate chosen by the name the client asks for (SNI).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCertificate {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) ocsp_response: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBackend {
    pub(super) name: String,
    #[serde(default)]
    pub(super) protocol: BackendProtocol,
    #[serde(default)]
    pub(super) balance: Balance,
    #[serde(default)]
    pub(super) proxy_protocol: ProxyProtocol,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default = "default_backend_connect_timeout")]
    pub(super) connect_timeout: DurationValue,
    #[serde(default)]
    pub(super) on_down: OnDown,
    #[serde(default)]
    pub(super) health: FileHealth,
    pub(super) servers: Vec<FileServer>,
    #[serde(default)]
    pub(super) queue_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) max_queue: Option<usize>,
}

fn default_backend_connect_timeout() -> DurationValue {
    DurationValue(Duration::from_secs(5))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealth {
    /// Default by the backend's protocol: mqtt -> mqtt, websocket -> websocket, tcp -> tcp.
    #[serde(default)]
    pub(super) check: Option<HealthCheckKind>,
    #[serde(default = "default_interval")]
    pub(super) interval: DurationValue,
    #[serde(default = "default_probe_timeout")]
    pub(super) timeout: DurationValue,
    #[serde(default = "default_rise")]
    pub(super) rise: u32,
    #[serde(default = "default_fall")]
    pub(super) fall: u32,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password: Option<String>,
    /// `check: http` only (see [`super::http_check`]); the port is wider than it is, so that 0 or 70000 gets a
    /// message saying the range.
    #[serde(default)]
    pub(super) port: Option<i64>,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) expect_status: Option<FileExpectStatus>,
    #[serde(default)]
    pub(super) tls: Option<FileHttpTls>,
    #[serde(default)]
    pub(super) host: Option<String>,
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
            port: None,
            path: None,
            expect_status: None,
            tls: None,
            host: None,
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
pub(super) struct FileServer {
    pub(super) name: String,
    pub(super) address: String,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    /// Wider than the byte it is, so that a value out of range gets a message saying the range.
    #[serde(default)]
    pub(super) dtls_cid_node_id: Option<i64>,
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_connection_rate: Option<u32>,
    #[serde(default)]
    pub(super) assigned_id_prefix: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAdmin {
    pub(super) bind: String,
    #[serde(default)]
    pub(super) control_bind: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default = "default_admin_max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "default_admin_request_timeout")]
    pub(super) request_timeout: DurationValue,
    #[serde(default)]
    pub(super) state_file: Option<PathBuf>,
}

fn default_admin_max_connections() -> usize {
    DEFAULT_ADMIN_MAX_CONNECTIONS
}

fn default_admin_request_timeout() -> DurationValue {
    DurationValue(DEFAULT_ADMIN_REQUEST_TIMEOUT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLimits {
    pub(super) connect_timeout: DurationValue,
    pub(super) handshake_timeout: DurationValue,
    pub(super) max_connect_size: SizeValue,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) idle_timeout: Option<DurationValue>,
    pub(super) max_handshakes: Option<usize>,
    pub(super) keep_alive_factor: f64,
    pub(super) tcp_keepalive: FileTcpKeepalive,
    pub(super) max_ws_frame_size: Option<SizeValue>,
    pub(super) max_connection_rate_per_ip: u32,
    pub(super) connection_rate_burst: Option<u32>,
    pub(super) connection_rate_table_size: usize,
    pub(super) strict_v31_client_id: bool,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            connect_timeout: DurationValue(Duration::from_secs(10)),
            handshake_timeout: DurationValue(Duration::from_secs(10)),
            max_connect_size: SizeValue(64 * 1024),
            max_connections: 100_000,
            max_connections_per_ip: 0,
            idle_timeout: None,
            max_handshakes: None,
            keep_alive_factor: 1.5,
            tcp_keepalive: FileTcpKeepalive::default(),
            max_ws_frame_size: None,
            max_connection_rate_per_ip: 0,
            connection_rate_burst: None,
            connection_rate_table_size: DEFAULT_RATE_TABLE_SIZE,
            strict_v31_client_id: false,
        }
    }
}

/// `limits.tcp_keepalive`; `idle: 0` turns it off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileTcpKeepalive {
    pub(super) idle: DurationValue,
    pub(super) interval: DurationValue,
    pub(super) count: u32,
}

impl Default for FileTcpKeepalive {
    /// The first probe after 2 minutes of silence (under the 350 s idle timeout of AWS load balancers and the
    /// 5 minutes of common NAT tables), then every 30 s; 4 unanswered probes drop the connection: a dead peer is
    /// found within 4 minutes of its last byte, for about one small packet per idle connection per 2 minutes.
    fn default() -> Self {
        FileTcpKeepalive {
            idle: DurationValue(Duration::from_secs(120)),
            interval: DurationValue(Duration::from_secs(30)),
            count: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileShutdown {
    pub(super) grace: DurationValue,
    pub(super) drain_timeout: DurationValue,
    pub(super) disconnect: ShutdownDisconnect,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown {
            grace: DurationValue(DEFAULT_SHUTDOWN_GRACE),
            drain_timeout: DurationValue(Duration::from_secs(30)),
            disconnect: ShutdownDisconnect::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileLog {
    pub(super) client_id: bool,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog { client_id: true }
    }
}
