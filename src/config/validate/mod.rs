//! What serde cannot check: names, references between listeners and backends, addresses, combinations of keys,
//! certificate files; and the runtime [`Config`] built from the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::listener_schema::FileListener;
use super::runtime::{AdminConfig, Config, Limits, LogConfig, ShutdownConfig, DEFAULT_MAX_WS_FRAME_SIZE};
use super::schema::{FileAdmin, FileConfig, FileLimits, Workers};
use super::ConfigError;

mod backends;
mod coap;
mod formats;
mod http_check;
mod listeners;

/// Builds errors for one file, and resolves paths against its folder.
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

/// Checks the file section by section and builds the runtime configuration.
pub(super) fn validate(file: FileConfig<FileListener>, origin: &Path) -> Result<Config, ConfigError> {
    let c = Checker { file: origin, base: origin.parent().map(Path::to_path_buf).unwrap_or_default() };
    let backends = backends::backends(&c, file.backends)?;
    let (listeners, binds) = listeners::listeners(&c, file.listeners, &backends)?;
    let admin = admin(&c, file.admin, &binds)?;
    let limits = limits(&c, &file.limits)?;
    let workers = workers(&c, file.workers)?;
    Ok(Config {
        source: origin.to_path_buf(),
        listeners,
        backends,
        admin,
        limits,
        shutdown: ShutdownConfig {
            grace: file.shutdown.grace.0,
            drain_timeout: file.shutdown.drain_timeout.0,
            disconnect: file.shutdown.disconnect,
        },
        log: LogConfig { client_id: file.log.client_id },
        workers,
    })
}

/// `admin`: its address must not be one a listener binds.
fn admin(
    c: &Checker<'_>,
    file: Option<FileAdmin>,
    binds: &HashSet<SocketAddr>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = file else {
        return Ok(None);
    };
    let bind = c.socket_addr("admin.bind".into(), &a.bind)?;
    if bind.port() != 0 && binds.contains(&bind) {
        return Err(c.err("admin.bind", format!("{bind} is already used by a listener")));
    }
    let state_file = a.state_file.map(|p| c.resolve(&p));
    if let Some(dir) = state_file.as_deref().and_then(Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            let shown = dir.display();
            return Err(c.err("admin.state_file", format!("directory {shown} does not exist")));
        }
    }
    Ok(Some(AdminConfig { bind, state_file }))
}

fn limits(c: &Checker<'_>, l: &FileLimits) -> Result<Limits, ConfigError> {
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
        strict_v31_client_id: l.strict_v31_client_id,
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
    Ok(limits)
}

fn workers(c: &Checker<'_>, workers: Workers) -> Result<Option<usize>, ConfigError> {
    match workers.0 {
        None => Ok(None),
        Some(n @ 1..=1024) => Ok(usize::try_from(n).ok()),
        Some(_) => Err(c.err("workers", "must be `auto` or a number of threads from 1 to 1024")),
    }
}
