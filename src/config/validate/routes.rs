//! `listeners[].routes`: each route's backend, name and conditions, and no route hidden behind an earlier one.

use std::collections::HashSet;

use super::listeners::backend;
use super::Checker;
use crate::config::listener_schema::FileRoute;
use crate::config::runtime::{BackendConfig, ListenerProtocol, RouteConfig};
use crate::config::ConfigError;
use crate::routes::glob::Glob;
use crate::routes::host::HostPattern;
use crate::routes::Conditions;

/// What a listener offers its routes to match on.
pub(super) struct Offers {
    pub(super) protocol: ListenerProtocol,
    /// `tls` is set: clients may send a server name.
    pub(super) tls: bool,
    /// `tls.client_ca` is set: clients have a verified certificate.
    pub(super) client_ca: bool,
}

/// The listener's routes, checked (`key` is the listener's, `listeners[i]`).
pub(super) fn routes(
    c: &Checker<'_>,
    key: &str,
    file: Option<&[FileRoute]>,
    offers: &Offers,
    backends: &[BackendConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    let Some(file) = file else { return Ok(Vec::new()) };
    if file.is_empty() {
        return Err(c.err(format!("{key}.routes"), "must not be empty (omit it to send every client to backend)"));
    }
    let mut names = HashSet::new();
    let mut routes: Vec<RouteConfig> = Vec::with_capacity(file.len());
    for (j, r) in file.iter().enumerate() {
        let key = format!("{key}.routes[{j}]");
        let name = r.name.clone().unwrap_or_else(|| j.to_string());
        c.name(format!("{key}.name"), &name, &mut names)?;
        let backend = backend(c, &format!("{key}.backend"), offers.protocol, &r.backend, backends)?;
        let conditions = conditions(c, &key, r, offers)?;
        if let Some(earlier) = routes.iter().find(|e| e.conditions.cover(&conditions)) {
            return Err(
                c.err(key, format!("can never match: route {:?} before it takes every client it would", earlier.name))
            );
        }
        routes.push(RouteConfig { name, backend, conditions });
    }
    Ok(routes)
}

fn conditions(c: &Checker<'_>, key: &str, r: &FileRoute, offers: &Offers) -> Result<Conditions, ConfigError> {
    let glob = |field: &str, text: &Option<String>| {
        text.as_deref().map(|t| Glob::parse(t).map_err(|m| c.err(format!("{key}.{field}"), m))).transpose()
    };
    let conditions = Conditions {
        sni: r.sni.as_deref().map(|t| HostPattern::parse(t).map_err(|m| c.err(format!("{key}.sni"), m))).transpose()?,
        client_id: glob("client_id", &r.client_id)?,
        username: glob("username", &r.username)?,
        identity: glob("identity", &r.identity)?,
    };
    if conditions.is_empty() {
        return Err(c.err(key, "a route needs at least one of sni, client_id, username, identity (else use backend)"));
    }
    let refuse = |field: &str, why: &str| Err(c.err(format!("{key}.{field}"), why.to_owned()));
    if offers.protocol == ListenerProtocol::Tcp {
        if conditions.client_id.is_some() {
            return refuse("client_id", "a tcp listener does not read the CONNECT: only sni and identity routes");
        }
        if conditions.username.is_some() {
            return refuse("username", "a tcp listener does not read the CONNECT: only sni and identity routes");
        }
    }
    if conditions.sni.is_some() && !offers.tls {
        return refuse("sni", "needs the listener's tls: without TLS there is no server name");
    }
    if conditions.identity.is_some() && !offers.client_ca {
        return refuse("identity", "needs the listener's tls.client_ca: only a verified certificate has an identity");
    }
    Ok(conditions)
}
