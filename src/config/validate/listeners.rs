//! `listeners`: names, addresses, the backend each relays to, TLS files, WebSocket keys and source networks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::coap::coap_listener;
use super::formats::{check_origin, check_ws_path};
use super::Checker;
use crate::config::runtime::{
    BackendConfig, BackendProtocol, ListenerConfig, ListenerProtocol, RequireIdentity, TlsConfig, DEFAULT_WS_PATH,
};
use crate::config::schema::{FileListener, FileTls};
use crate::config::ConfigError;
use crate::net::Cidr;
use crate::transport::certificates::{self, TlsPart};

/// The listeners, and the TCP addresses they bind (the admin endpoint must not take one).
pub(super) fn listeners(
    c: &Checker<'_>,
    file: Vec<FileListener>,
    backends: &[BackendConfig],
) -> Result<(Vec<ListenerConfig>, HashSet<SocketAddr>), ConfigError> {
    if file.is_empty() {
        return Err(c.err("listeners", "at least one listener is needed"));
    }
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    let mut udp_binds = HashSet::new();
    let mut listeners = Vec::with_capacity(file.len());
    for (i, l) in file.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        c.name(format!("{key}.name"), &l.name, &mut names)?;
        let bind = c.socket_addr(format!("{key}.bind"), &l.bind)?;
        let same_transport = if l.protocol == ListenerProtocol::Coap { &mut udp_binds } else { &mut binds };
        if bind.port() != 0 && !same_transport.insert(bind) {
            return Err(c.err(format!("{key}.bind"), format!("{bind} is already used by another listener")));
        }
        listeners.push(listener(c, &key, l, bind, backends)?);
    }
    Ok((listeners, binds))
}

fn listener(
    c: &Checker<'_>,
    key: &str,
    l: FileListener,
    bind: SocketAddr,
    backends: &[BackendConfig],
) -> Result<ListenerConfig, ConfigError> {
    let backend = backends.iter().position(|b| b.name == l.backend).ok_or_else(|| {
        let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        c.err(format!("{key}.backend"), format!("no backend named {:?} (backends: {})", l.backend, known.join(", ")))
    })?;
    let backend_protocol = backends.get(backend).map(|b| b.protocol);
    let coap = coap_listener(c, key, &l, backend_protocol)?;
    let tls = match l.tls {
        None => None,
        Some(t) => Some(tls(c, key, t)?),
    };
    if l.protocol == ListenerProtocol::Tcp && backend_protocol == Some(BackendProtocol::Websocket) {
        return Err(c.err(
            format!("{key}.backend"),
            format!("a tcp listener relays raw bytes: backend {:?} must have protocol tcp or mqtt", l.backend),
        ));
    }
    let websocket = l.protocol == ListenerProtocol::Websocket;
    Ok(ListenerConfig {
        path: listener_path(c, key, l.path, websocket)?,
        allowed_origins: allowed_origins(c, key, l.allowed_origins, websocket)?,
        allowed_sources: networks(c, key, "allowed_sources", l.allowed_sources, "to allow every source")?,
        trusted_proxies: networks(c, key, "trusted_proxies", l.trusted_proxies, "to read no PROXY header")?,
        name: l.name,
        bind,
        protocol: l.protocol,
        tls,
        backend,
        coap,
    })
}

/// `listeners[].tls`: the files resolved against the configuration's folder, read and checked now.
fn tls(c: &Checker<'_>, key: &str, t: FileTls) -> Result<TlsConfig, ConfigError> {
    let cert = c.resolve(&t.cert);
    let key_path = c.resolve(&t.key);
    let client_ca = t.client_ca.as_deref().map(|p| c.resolve(p));
    if t.require_identity != RequireIdentity::None && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.require_identity"),
            "needs tls.client_ca: only a verified client certificate can vouch for an identity",
        ));
    }
    let server_config = certificates::server_config(&cert, &key_path, client_ca.as_deref()).map_err(|e| {
        let field = match e.part {
            TlsPart::Cert => "cert",
            TlsPart::Key => "key",
            TlsPart::ClientCa => "client_ca",
        };
        c.err(format!("{key}.tls.{field}"), e.message)
    })?;
    Ok(TlsConfig {
        cert,
        key: key_path,
        client_ca,
        require_identity: t.require_identity,
        server_config: Arc::new(server_config),
    })
}

/// `listeners[].path`: the one path a `websocket` listener upgrades.
fn listener_path(c: &Checker<'_>, key: &str, path: Option<String>, websocket: bool) -> Result<String, ConfigError> {
    match path {
        Some(_) if !websocket => {
            Err(c.err(format!("{key}.path"), "only a listener with protocol: websocket has a path"))
        }
        Some(p) => {
            check_ws_path(&p).map_err(|m| c.err(format!("{key}.path"), m))?;
            if p.contains('?') {
                return Err(c.err(format!("{key}.path"), format!("invalid path {p:?}: no query string here")));
            }
            Ok(p)
        }
        None => Ok(DEFAULT_WS_PATH.to_owned()),
    }
}

/// `listeners[].allowed_origins` of a `websocket` listener.
fn allowed_origins(
    c: &Checker<'_>,
    key: &str,
    list: Option<Vec<String>>,
    websocket: bool,
) -> Result<Vec<String>, ConfigError> {
    match list {
        None => Ok(Vec::new()),
        Some(_) if !websocket => {
            Err(c.err(format!("{key}.allowed_origins"), "only a listener with protocol: websocket checks origins"))
        }
        Some(list) if list.is_empty() => {
            Err(c.err(format!("{key}.allowed_origins"), "must not be empty (omit it to allow any origin)"))
        }
        Some(list) => {
            for (j, o) in list.iter().enumerate() {
                check_origin(o).map_err(|m| c.err(format!("{key}.allowed_origins[{j}]"), m))?;
            }
            Ok(list)
        }
    }
}

/// A list of networks (`allowed_sources`, `trusted_proxies`): omitted or not empty; `omit` says what omitting does.
fn networks(
    c: &Checker<'_>,
    key: &str,
    field: &str,
    list: Option<Vec<String>>,
    omit: &str,
) -> Result<Vec<Cidr>, ConfigError> {
    match list {
        None => Ok(Vec::new()),
        Some(list) if list.is_empty() => {
            Err(c.err(format!("{key}.{field}"), format!("must not be empty (omit it {omit})")))
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(j, text)| Cidr::parse(text).map_err(|m| c.err(format!("{key}.{field}[{j}]"), m)))
            .collect(),
    }
}
