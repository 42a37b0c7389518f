//! What serde cannot check: names, references between listeners and backends, addresses, combinations of keys,
//! certificate files; and the runtime [`Config`] built from the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::runtime::*;
use super::schema::*;
use super::ConfigError;
use crate::net::Cidr;
use crate::transport::certificates as tls;

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

pub(super) fn validate(file: FileConfig, origin: &Path) -> Result<Config, ConfigError> {
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
