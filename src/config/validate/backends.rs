//! `backends`: names, servers, the health check each protocol allows, WebSocket paths.

use std::collections::HashSet;
use std::time::Duration;

use super::formats::{check_server_address, check_ws_path};
use super::Checker;
use crate::config::runtime::{
    BackendConfig, BackendProtocol, HealthCheckKind, HealthConfig, ProxyProtocol, ServerConfig, DEFAULT_WS_PATH,
};
use crate::config::schema::{FileBackend, FileHealth, FileServer};
use crate::config::ConfigError;

pub(super) fn backends(c: &Checker<'_>, file: Vec<FileBackend>) -> Result<Vec<BackendConfig>, ConfigError> {
    if file.is_empty() {
        return Err(c.err("backends", "at least one backend is needed"));
    }
    let mut names = HashSet::new();
    let mut backends = Vec::with_capacity(file.len());
    for (i, b) in file.into_iter().enumerate() {
        let key = format!("backends[{i}]");
        c.name(format!("{key}.name"), &b.name, &mut names)?;
        backends.push(backend(c, &key, b)?);
    }
    Ok(backends)
}

fn backend(c: &Checker<'_>, key: &str, b: FileBackend) -> Result<BackendConfig, ConfigError> {
    if b.servers.is_empty() {
        return Err(c.err(format!("{key}.servers"), "at least one server is needed"));
    }
    let connect_timeout = c.positive(format!("{key}.connect_timeout"), b.connect_timeout.0)?;
    let h = b.health;
    let (interval, timeout) = probe_timing(c, key, &h)?;
    let path = backend_path(c, key, b.protocol, b.path)?;
    let check = health_check(h.check, b.protocol).map_err(|m| c.err(format!("{key}.health.check"), m))?;
    let http = super::http_check::http_check(c, key, check, &h)?;
    if b.protocol == BackendProtocol::Coap && b.proxy_protocol != ProxyProtocol::None {
        return Err(c.err(format!("{key}.proxy_protocol"), "a coap backend receives datagrams: no PROXY header"));
    }
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
    })
}

/// `backends[].health`: the probe interval and timeout, and the counts and credentials beside them.
fn probe_timing(c: &Checker<'_>, key: &str, h: &FileHealth) -> Result<(Duration, Duration), ConfigError> {
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
        if s.weight == 0 || s.weight > 1000 {
            return Err(c.err(format!("{skey}.weight"), format!("weight {} is out of range 1 to 1000", s.weight)));
        }
        let dtls_cid_node_id = node_id(s.dtls_cid_node_id, protocol, &servers)
            .map_err(|m| c.err(format!("{skey}.dtls_cid_node_id"), m))?;
        servers.push(ServerConfig { name: s.name, address: s.address, weight: s.weight, dtls_cid_node_id });
    }
    Ok(servers)
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
