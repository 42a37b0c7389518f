//! `backends`: names, servers, the health check each protocol allows, WebSocket paths, per-server caps and the
//! queue for them.

use std::collections::HashSet;
use std::time::Duration;

use super::formats::{check_server_address, check_ws_path};
use super::Checker;
use crate::config::runtime::{
    BackendConfig, BackendProtocol, HealthCheckKind, HealthConfig, ProxyProtocol, ServerConfig, DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT, DEFAULT_WS_PATH,
};
use crate::config::schema::{FileBackend, FileHealth, FileServer};
use crate::config::ConfigError;

/// `connect_timeout` is `limits.connect_timeout`: the client's deadline, which bounds a queue's wait.
pub(super) fn backends(
    c: &Checker<'_>,
    file: Vec<FileBackend>,
    connect_timeout: Duration,
) -> Result<Vec<BackendConfig>, ConfigError> {
    if file.is_empty() {
        return Err(c.err("backends", "at least one backend is needed"));
    }
    let mut names = HashSet::new();
    let mut backends = Vec::with_capacity(file.len());
    for (i, b) in file.into_iter().enumerate() {
        let key = format!("backends[{i}]");
        c.name(format!("{key}.name"), &b.name, &mut names)?;
        backends.push(backend(c, &key, b, connect_timeout)?);
    }
    Ok(backends)
}

fn backend(
    c: &Checker<'_>,
    key: &str,
    b: FileBackend,
    client_deadline: Duration,
) -> Result<BackendConfig, ConfigError> {
    if b.servers.is_empty() {
        return Err(c.err(format!("{key}.servers"), "at least one server is needed"));
    }
    let connect_timeout = c.duration(format!("{key}.connect_timeout"), b.connect_timeout.0)?;
    let h = b.health;
    let (interval, timeout) = probe_timing(c, key, &h)?;
    let path = backend_path(c, key, b.protocol, b.path)?;
    let check = health_check(h.check, b.protocol).map_err(|m| c.err(format!("{key}.health.check"), m))?;
    let http = super::http_check::http_check(c, key, check, &h)?;
    if b.protocol == BackendProtocol::Coap && b.proxy_protocol != ProxyProtocol::None {
        return Err(c.err(format!("{key}.proxy_protocol"), "a coap backend receives datagrams: no PROXY header"));
    }
    let queue_timeout = queue_timeout(c, key, b.queue_timeout.map(|d| d.0), client_deadline)?;
    Ok(BackendConfig {
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
            http,
        },
        servers: servers(c, key, b.servers, b.protocol)?,
        queue_timeout,
        max_queue: b.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
    })
}

/// `backends[].queue_timeout`: no longer than `limits.connect_timeout`, the client's deadline, which ends the wait
/// anyway (a longer one would only mislead). When not set, 5 s or that deadline if it is shorter. Zero: never wait.
fn queue_timeout(
    c: &Checker<'_>,
    key: &str,
    set: Option<Duration>,
    client_deadline: Duration,
) -> Result<Duration, ConfigError> {
    match set {
        None => Ok(DEFAULT_QUEUE_TIMEOUT.min(client_deadline)),
        Some(d) if d > client_deadline => Err(c.err(
            format!("{key}.queue_timeout"),
            format!(
                "{d:?} is longer than limits.connect_timeout ({client_deadline:?}), the client's connect deadline,                  which ends a wait first"
            ),
        )),
        Some(d) => Ok(d),
    }
}

/// `servers[].max_connections` and `servers[].max_connection_rate`: at least 1 (leave a key out for no cap), and
/// not on `coap` backends, whose flows are not relays.
fn caps(s: &FileServer, protocol: BackendProtocol) -> Result<(), (&'static str, String)> {
    for (name, value) in [
        ("max_connections", s.max_connections.map(|v| v as u64)),
        ("max_connection_rate", s.max_connection_rate.map(u64::from)),
    ] {
        match value {
            Some(0) => return Err((name, "must be at least 1 (leave the key out for no cap)".to_owned())),
            Some(_) if protocol == BackendProtocol::Coap => {
                return Err((name, "a coap backend's servers take datagram flows, which are not capped".to_owned()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `backends[].health`: the probe interval and timeout, and the counts and credentials beside them.
fn probe_timing(c: &Checker<'_>, key: &str, h: &FileHealth) -> Result<(Duration, Duration), ConfigError> {
    let interval = c.duration(format!("{key}.health.interval"), h.interval.0)?;
    let timeout = c.duration(format!("{key}.health.timeout"), h.timeout.0)?;
    c.count(format!("{key}.health.rise"), h.rise)?;
    c.count(format!("{key}.health.fall"), h.fall)?;
    if h.password.is_some() && h.username.is_none() {
        return Err(c.err(format!("{key}.health.password"), "a password needs a username"));
    }
    Ok((interval, timeout))
}

/// `backends[].path`: the upgrade path of a `websocket` backend (also what its health check requests).
fn backend_path(
    c: &Checker<'_>,
    key: &str,
    protocol: BackendProtocol,
    path: Option<String>,
) -> Result<String, ConfigError> {
    match (protocol, path) {
        (BackendProtocol::Websocket, path) => {
            let path = path.unwrap_or_else(|| DEFAULT_WS_PATH.to_owned());
            check_ws_path(&path).map_err(|m| c.err(format!("{key}.path"), m))?;
            Ok(path)
        }
        (_, Some(_)) => Err(c.err(format!("{key}.path"), "only a backend with protocol: websocket has a path")),
        (_, None) => Ok(DEFAULT_WS_PATH.to_owned()),
    }
}

/// The probe a backend of this protocol gets: the one set, if the protocol allows it, else the protocol's own.
fn health_check(set: Option<HealthCheckKind>, protocol: BackendProtocol) -> Result<HealthCheckKind, String> {
    match (set, protocol) {
        (None, BackendProtocol::Mqtt) => Ok(HealthCheckKind::Mqtt),
        (None, BackendProtocol::Websocket) => Ok(HealthCheckKind::Websocket),
        (None, BackendProtocol::Tcp) => Ok(HealthCheckKind::Tcp),
        (None, BackendProtocol::Coap) => Ok(HealthCheckKind::CoapPing),
        (Some(check @ (HealthCheckKind::CoapPing | HealthCheckKind::DtlsHello)), p) if p != BackendProtocol::Coap => {
            Err(format!("check: {} needs a backend with protocol: coap (this one is {})", check.as_str(), p.as_str()))
        }
        (Some(HealthCheckKind::Mqtt | HealthCheckKind::Websocket), BackendProtocol::Coap) => {
            Err("a coap backend is checked by coap-ping, dtls-hello, tcp or none".to_owned())
        }
        (Some(HealthCheckKind::Websocket), p) if p != BackendProtocol::Websocket => {
            Err(format!("check: websocket needs a backend with protocol: websocket (this one is {})", p.as_str()))
        }
        (Some(HealthCheckKind::Mqtt), BackendProtocol::Websocket) => {
            Err("a websocket backend speaks MQTT inside WebSocket: use check: websocket (or tcp, none)".to_owned())
        }
        (Some(check), _) => Ok(check),
    }
}

fn servers(
    c: &Checker<'_>,
    key: &str,
    file: Vec<FileServer>,
    protocol: BackendProtocol,
) -> Result<Vec<ServerConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut servers: Vec<ServerConfig> = Vec::with_capacity(file.len());
    for (j, s) in file.into_iter().enumerate() {
        let skey = format!("{key}.servers[{j}]");
        c.name(format!("{skey}.name"), &s.name, &mut names)?;
        check_server_address(&s.address).map_err(|m| c.err(format!("{skey}.address"), m))?;
        c.count(format!("{skey}.weight"), s.weight)?;
        let dtls_cid_node_id = node_id(s.dtls_cid_node_id, protocol, &servers)
            .map_err(|m| c.err(format!("{skey}.dtls_cid_node_id"), m))?;
        caps(&s, protocol).map_err(|(name, m)| c.err(format!("{skey}.{name}"), m))?;
        let assigned_id_prefix = assigned_id_prefix(s.assigned_id_prefix, protocol, &servers)
            .map_err(|m| c.err(format!("{skey}.assigned_id_prefix"), m))?;
        servers.push(ServerConfig {
            name: s.name,
            address: s.address,
            weight: s.weight,
            dtls_cid_node_id,
            max_connections: s.max_connections,
            max_connection_rate: s.max_connection_rate,
            assigned_id_prefix,
        });
    }
    Ok(servers)
}

/// The longest `servers[].assigned_id_prefix`, in bytes: mosquitto's ids are the prefix and 36 characters, and a
/// client id is at most 65535 bytes.
const MAX_ASSIGNED_ID_PREFIX: usize = 1024;

/// `servers[].assigned_id_prefix`: not empty, no NUL, on MQTT backends only, and overlapping no other server's
/// (neither may start with the other, or an id could belong to both).
fn assigned_id_prefix(
    set: Option<String>,
    protocol: BackendProtocol,
    others: &[ServerConfig],
) -> Result<Option<String>, String> {
    let Some(prefix) = set else {
        return Ok(None);
    };
    if prefix.is_empty() || prefix.len() > MAX_ASSIGNED_ID_PREFIX || prefix.contains('\0') {
        return Err(format!("must be 1 to {MAX_ASSIGNED_ID_PREFIX} bytes without NUL"));
    }
    if protocol == BackendProtocol::Coap {
        return Err("coap backends have no client ids: only servers of MQTT backends have this key".to_owned());
    }
    let overlapping = others.iter().find(|o| {
        o.assigned_id_prefix.as_deref().is_some_and(|p| p.starts_with(prefix.as_str()) || prefix.starts_with(p))
    });
    if let Some(other) = overlapping {
        return Err(format!(
            "{prefix:?} overlaps server {:?}'s prefix {:?}: an id must name one server",
            other.name,
            other.assigned_id_prefix.as_deref().unwrap_or_default()
        ));
    }
    Ok(Some(prefix))
}

/// `servers[].dtls_cid_node_id`: a byte, on `coap` backends only, unique within the backend.
fn node_id(set: Option<i64>, protocol: BackendProtocol, others: &[ServerConfig]) -> Result<Option<u8>, String> {
    let Some(set) = set else {
        return Ok(None);
    };
    let node = u8::try_from(set).map_err(|_| "must be 0 to 255: the first byte of the Connection IDs it issues")?;
    if protocol != BackendProtocol::Coap {
        return Err("only a server of a backend with protocol: coap has this key".to_owned());
    }
    if let Some(other) = others.iter().find(|o| o.dtls_cid_node_id == Some(node)) {
        return Err(format!(
            "node id {node} is also server {:?}'s: each server of a backend needs its own",
            other.name
        ));
    }
    Ok(Some(node))
}
