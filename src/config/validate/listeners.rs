//! `listeners`: names, addresses, the backend each relays to, TLS files, WebSocket keys and source networks.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::coap::coap_settings;
use super::formats::{check_origin, check_ws_path};
use super::routes::{routes, Offers};
use super::tls::tls;
use super::Checker;
use crate::config::listener_schema::FileListener;
use crate::config::runtime::{
    BackendConfig, BackendProtocol, ListenerConfig, ListenerProtocol, RouteConfig, DEFAULT_WS_PATH,
};
use crate::config::ConfigError;
use crate::net::Cidr;

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
        let (backend, routes) = destinations(c, &key, &l, backends)?;
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
                routes: routes.clone(),
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
                routes: routes.clone(),
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
                routes,
            },
        });
    }
    Ok((listeners, binds))
}

/// Where listener `key`'s clients go: its default backend (if any) and its routes; one of them is needed. A `tcp`
/// listener reads no CONNECT, so nothing may depend on one there.
fn destinations(
    c: &Checker<'_>,
    key: &str,
    l: &FileListener,
    backends: &[BackendConfig],
) -> Result<(Option<usize>, Vec<RouteConfig>), ConfigError> {
    let default = l.backend().map(|name| backend(c, &format!("{key}.backend"), l.protocol(), name, backends));
    let backend = default.transpose()?;
    let offers = Offers {
        protocol: l.protocol(),
        tls: l.tls().is_some(),
        client_ca: l.tls().is_some_and(|t| t.client_ca.is_some()),
    };
    let routes = routes(c, key, l.routes(), &offers, backends)?;
    if backend.is_none() && routes.is_empty() {
        return Err(c.err(
            format!("{key}.backend"),
            "needed, unless routes are given (then clients no route takes are refused)",
        ));
    }
    if let FileListener::Stream(k) = l {
        if k.protocol == ListenerProtocol::Tcp && k.tls.as_ref().is_some_and(|t| t.username_from_certificate.is_some())
        {
            return Err(c.err(
                format!("{key}.tls.username_from_certificate"),
                "a tcp listener reads no CONNECT: only mqtt and websocket listeners can set its user name",
            ));
        }
    }
    Ok((backend, routes))
}

/// The index of the backend `name` (at `key`: a listener's `backend` or a route's), which must carry what the
/// listener receives: datagrams for a coap listener, streams for the others, and raw bytes (not WebSocket) for a
/// tcp listener.
pub(super) fn backend(
    c: &Checker<'_>,
    key: &str,
    protocol: ListenerProtocol,
    name: &str,
    backends: &[BackendConfig],
) -> Result<usize, ConfigError> {
    let Some((index, backend)) = backends.iter().enumerate().find(|(_, b)| b.name == name) else {
        let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        return Err(c.err(key, format!("no backend named {name:?} (backends: {})", known.join(", "))));
    };
    let why = match (protocol, backend.protocol) {
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
        Some(why) => Err(c.err(key, why)),
        None => Ok(index),
    }
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
