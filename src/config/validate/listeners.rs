//! `listeners`: names, addresses, the backend each relays to, TLS files, WebSocket keys and source networks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::coap::coap_settings;
use super::formats::{check_origin, check_ws_path};
use super::Checker;
use crate::config::listener_schema::FileListener;
use crate::config::runtime::{
    BackendConfig, BackendProtocol, ListenerConfig, ListenerProtocol, RequireIdentity, TlsConfig, DEFAULT_WS_PATH,
};
use crate::config::schema::FileTls;
use crate::config::ConfigError;
use crate::net::Cidr;
use crate::transport::certificates::{self, TlsPart};
use crate::transport::ticket_keys;

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
        c.name(format!("{key}.name"), l.name(), &mut names)?;
        let bind = c.socket_addr(format!("{key}.bind"), l.bind())?;
        let same_transport = if l.protocol() == ListenerProtocol::Coap { &mut udp_binds } else { &mut binds };
        if bind.port() != 0 && !same_transport.insert(bind) {
            return Err(c.err(format!("{key}.bind"), format!("{bind} is already used by another listener")));
        }
        let backend = backend(c, &key, &l, backends)?;
        if let FileListener::Stream(k) = &l {
            if k.protocol == ListenerProtocol::Tcp
                && k.tls.as_ref().is_some_and(|t| t.username_from_certificate.is_some())
            {
                return Err(c.err(
                    format!("{key}.tls.username_from_certificate"),
                    "a tcp listener reads no CONNECT: only mqtt and websocket listeners can set its user name",
                ));
            }
        }
        listeners.push(match l {
            FileListener::Stream(k) => ListenerConfig {
                tls: tls(c, &key, k.tls)?,
                path: DEFAULT_WS_PATH.to_owned(),
                allowed_origins: Vec::new(),
                allowed_sources: networks(c, &key, "allowed_sources", k.allowed_sources, "to allow every source")?,
                trusted_proxies: networks(c, &key, "trusted_proxies", k.trusted_proxies, "to read no PROXY header")?,
                name: k.name,
                bind,
                protocol: k.protocol,
                backend,
                coap: None,
            },
            FileListener::Websocket(k) => ListenerConfig {
                tls: tls(c, &key, k.tls)?,
                path: listener_path(c, &key, k.path)?,
                allowed_origins: allowed_origins(c, &key, k.allowed_origins)?,
                allowed_sources: networks(c, &key, "allowed_sources", k.allowed_sources, "to allow every source")?,
                trusted_proxies: networks(c, &key, "trusted_proxies", k.trusted_proxies, "to read no PROXY header")?,
                name: k.name,
                bind,
                protocol: k.protocol,
                backend,
                coap: None,
            },
            FileListener::Coap(k) => ListenerConfig {
                tls: None,
                path: DEFAULT_WS_PATH.to_owned(),
                allowed_origins: Vec::new(),
                allowed_sources: networks(
                    c,
                    &key,
                    "allowed_sources",
                    k.allowed_sources.clone(),
                    "to allow every source",
                )?,
                trusted_proxies: Vec::new(),
                coap: Some(coap_settings(c, &key, &k)?),
                name: k.name,
                bind,
                protocol: k.protocol,
                backend,
            },
        });
    }
    Ok((listeners, binds))
}

/// The index of the listener's backend, which must carry what the listener receives: datagrams for a coap
/// listener, streams for the others, and raw bytes (not WebSocket) for a tcp listener.
fn backend(c: &Checker<'_>, key: &str, l: &FileListener, backends: &[BackendConfig]) -> Result<usize, ConfigError> {
    let name = l.backend();
    let Some((index, backend)) = backends.iter().enumerate().find(|(_, b)| b.name == name) else {
        let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        return Err(
            c.err(format!("{key}.backend"), format!("no backend named {name:?} (backends: {})", known.join(", ")))
        );
    };
    let why = match (l.protocol(), backend.protocol) {
        (ListenerProtocol::Coap, BackendProtocol::Coap) => None,
        (ListenerProtocol::Coap, _) => {
            Some(format!("a coap listener relays datagrams: backend {name:?} must have protocol: coap"))
        }
        (_, BackendProtocol::Coap) => {
            Some(format!("backend {name:?} has protocol: coap: only a coap listener can use it"))
        }
        (ListenerProtocol::Tcp, BackendProtocol::Websocket) => {
            Some(format!("a tcp listener relays raw bytes: backend {name:?} must have protocol tcp or mqtt"))
        }
        _ => None,
    };
    match why {
        Some(why) => Err(c.err(format!("{key}.backend"), why)),
        None => Ok(index),
    }
}

/// `listeners[].tls`: the files resolved against the configuration's folder, read and checked now.
fn tls(c: &Checker<'_>, key: &str, t: Option<FileTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(t) = t else {
        return Ok(None);
    };
    let cert = c.resolve(&t.cert);
    let key_path = c.resolve(&t.key);
    let client_ca = t.client_ca.as_deref().map(|p| c.resolve(p));
    if t.require_identity != RequireIdentity::None && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.require_identity"),
            "needs tls.client_ca: only a verified client certificate can vouch for an identity",
        ));
    }
    if t.username_from_certificate.is_some() && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.username_from_certificate"),
            "needs tls.client_ca: the user name is taken from a verified client certificate",
        ));
    }
    let mut server_config = certificates::server_config(&cert, &key_path, client_ca.as_deref()).map_err(|e| {
        let field = match e.part {
            TlsPart::Cert => "cert",
            TlsPart::Key => "key",
            TlsPart::ClientCa => "client_ca",
        };
        c.err(format!("{key}.tls.{field}"), e.message)
    })?;
    let ticket_keys = t.ticket_keys.as_deref().map(|p| c.resolve(p));
    if let Some(path) = &ticket_keys {
        server_config.ticketer = ticket_keys::load(path).map_err(|m| c.err(format!("{key}.tls.ticket_keys"), m))?;
    }
    let not_after = crate::metrics::certificate::leaf_not_after(&cert);
    Ok(Some(TlsConfig {
        cert,
        key: key_path,
        client_ca,
        require_identity: t.require_identity,
        username_from_certificate: t.username_from_certificate,
        ticket_keys,
        server_config: Arc::new(server_config),
        not_after,
    }))
}

/// `listeners[].path`: the one path a `websocket` listener upgrades.
fn listener_path(c: &Checker<'_>, key: &str, path: Option<String>) -> Result<String, ConfigError> {
    match path {
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
fn allowed_origins(c: &Checker<'_>, key: &str, list: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    match list {
        None => Ok(Vec::new()),
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
