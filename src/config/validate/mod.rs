//! What serde cannot check: names, references between listeners and backends, addresses, combinations of keys,
//! certificate files; and the runtime [`Config`] built from the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::listener_schema::FileListener;
use super::runtime::{
    Config, KeepAliveFactor, Limits, LogConfig, ShutdownConfig, TcpKeepalive, DEFAULT_MAX_WS_FRAME_SIZE,
    DEFAULT_PASSTHROUGH_IDLE_TIMEOUT, HANDSHAKES_PER_CORE,
};
use super::schema::{FileConfig, FileLimits, FileTcpKeepalive, Workers};
use super::ConfigError;

/// `limits.connection_rate_table_size` at most: up to about 2 GB of buckets.
const MAX_RATE_TABLE_SIZE: usize = 10_000_000;

mod admin;
mod backends;
pub(super) mod bounds;
mod coap;
mod formats;
mod http_check;
mod listeners;
mod routes;
mod tls;

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

    /// A duration in the range of its key ([`bounds::BOUNDS`], by the key's last part).
    fn duration(&self, key: String, d: Duration) -> Result<Duration, ConfigError> {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.in_bounds(key, ms, || bounds::show_duration(d)).map(|_| d)
    }

    /// A size in the range of its key ([`bounds::BOUNDS`], by the key's last part).
    fn size(&self, key: String, n: usize) -> Result<usize, ConfigError> {
        let bytes = u64::try_from(n).unwrap_or(u64::MAX);
        self.in_bounds(key, bytes, || bounds::show_bytes(bytes)).map(|_| n)
    }

    /// A number in the range of its key ([`bounds::BOUNDS`], by the key's last part).
    fn count<T: TryInto<u64> + Copy + std::fmt::Display>(&self, key: String, n: T) -> Result<T, ConfigError> {
        self.in_bounds(key, n.try_into().unwrap_or(u64::MAX), || n.to_string()).map(|_| n)
    }

    fn in_bounds(&self, key: String, value: u64, shown: impl FnOnce() -> String) -> Result<(), ConfigError> {
        let field = key.rsplit('.').next().unwrap_or_default();
        match bounds::of(field) {
            Some(b) if !b.contains(value) => Err(self.err(key, b.refusal(shown()))),
            Some(_) => Ok(()),
            None => Err(self.err(key, "no range is known for this key (a bug: please report it)")),
        }
    }
}

/// Checks the file section by section and builds the runtime configuration.
pub(super) fn validate(file: FileConfig<FileListener>, origin: &Path) -> Result<Config, ConfigError> {
    let c = Checker { file: origin, base: origin.parent().map(Path::to_path_buf).unwrap_or_default() };
    let limits = limits(&c, &file.limits)?;
    let backends = backends::backends(&c, file.backends, limits.connect_timeout)?;
    let (listeners, binds) = listeners::listeners(&c, file.listeners, &backends)?;
    let admin = admin::admin(&c, file.admin, &binds)?;
    let workers = workers(&c, file.workers)?;
    Ok(Config {
        source: origin.to_path_buf(),
        listeners,
        backends,
        admin,
        limits,
        shutdown: ShutdownConfig {
            grace: c.duration("shutdown.grace".into(), file.shutdown.grace.0)?,
            drain_timeout: c.duration("shutdown.drain_timeout".into(), file.shutdown.drain_timeout.0)?,
            disconnect: file.shutdown.disconnect,
        },
        log: LogConfig { client_id: file.log.client_id },
        workers,
    })
}

fn limits(c: &Checker<'_>, l: &FileLimits) -> Result<Limits, ConfigError> {
    let idle_timeout = l.idle_timeout.map(|d| c.duration("limits.idle_timeout".into(), d.0)).transpose()?;
    let limits = Limits {
        connect_timeout: c.duration("limits.connect_timeout".into(), l.connect_timeout.0)?,
        handshake_timeout: c.duration("limits.handshake_timeout".into(), l.handshake_timeout.0)?,
        max_connect_size: l.max_connect_size.0,
        max_connections: c.count("limits.max_connections".into(), l.max_connections)?,
        max_connections_per_ip: c.count("limits.max_connections_per_ip".into(), l.max_connections_per_ip)?,
        idle_timeout: idle_timeout.unwrap_or(Duration::ZERO),
        passthrough_idle_timeout: idle_timeout.unwrap_or(DEFAULT_PASSTHROUGH_IDLE_TIMEOUT),
        max_handshakes: c
            .count("limits.max_handshakes".into(), l.max_handshakes.unwrap_or_else(default_max_handshakes))?,
        keep_alive_factor: keep_alive_factor(c, l.keep_alive_factor)?,
        tcp_keepalive: tcp_keepalive(c, &l.tcp_keepalive)?,
        max_ws_frame_size: l.max_ws_frame_size.map_or(DEFAULT_MAX_WS_FRAME_SIZE.max(l.max_connect_size.0), |v| v.0),
        max_connection_rate_per_ip: c
            .count("limits.max_connection_rate_per_ip".into(), l.max_connection_rate_per_ip)?,
        connection_rate_burst: l.connection_rate_burst.unwrap_or(l.max_connection_rate_per_ip),
        connection_rate_table_size: l.connection_rate_table_size,
        strict_v31_client_id: l.strict_v31_client_id,
    };
    if l.connection_rate_burst.is_some() && limits.max_connection_rate_per_ip == 0 {
        return Err(c.err("limits.connection_rate_burst", "needs limits.max_connection_rate_per_ip"));
    }
    if limits.max_connection_rate_per_ip > 0 {
        c.count("limits.connection_rate_burst".into(), limits.connection_rate_burst)?;
    }
    if !(1..=MAX_RATE_TABLE_SIZE).contains(&limits.connection_rate_table_size) {
        return Err(c.err("limits.connection_rate_table_size", "must be between 1 and 10000000"));
    }
    c.size("limits.max_connect_size".into(), limits.max_connect_size)?;
    c.size("limits.max_ws_frame_size".into(), limits.max_ws_frame_size)?;
    if limits.max_ws_frame_size < limits.max_connect_size {
        return Err(c.err(
            "limits.max_ws_frame_size",
            "must be at least limits.max_connect_size (a CONNECT may come in one frame)",
        ));
    }
    Ok(limits)
}

/// `limits.max_handshakes` when not set: [`HANDSHAKES_PER_CORE`] per CPU core.
fn default_max_handshakes() -> usize {
    HANDSHAKES_PER_CORE * std::thread::available_parallelism().map_or(1, usize::from)
}

/// `limits.keep_alive_factor`: 0 (off), or between 1 and 10 (under 1 would close clients that keep to their own
/// keep-alive; over 10 hardly differs from off).
fn keep_alive_factor(c: &Checker<'_>, factor: f64) -> Result<KeepAliveFactor, ConfigError> {
    if factor == 0.0 {
        return Ok(KeepAliveFactor(0));
    }
    if !(1.0..=10.0).contains(&factor) {
        return Err(c.err("limits.keep_alive_factor", "must be 0 (off) or between 1 and 10"));
    }
    // In range, so the product is a small positive whole number of thousandths.
    Ok(KeepAliveFactor((factor * 1000.0).round() as u32))
}

/// `limits.tcp_keepalive`: off with `idle: 0`; otherwise within what Linux accepts (TCP_KEEPIDLE and
/// TCP_KEEPINTVL at most 32767 s, TCP_KEEPCNT at most 127).
fn tcp_keepalive(c: &Checker<'_>, k: &FileTcpKeepalive) -> Result<Option<TcpKeepalive>, ConfigError> {
    if k.idle.0.is_zero() {
        return Ok(None);
    }
    let seconds = 1..=32_767;
    if !seconds.contains(&k.idle.0.as_secs()) {
        return Err(c.err("limits.tcp_keepalive.idle", "must be 0 (off) or between 1s and 32767s"));
    }
    if !seconds.contains(&k.interval.0.as_secs()) {
        return Err(c.err("limits.tcp_keepalive.interval", "must be between 1s and 32767s"));
    }
    if !(1..=127).contains(&k.count) {
        return Err(c.err("limits.tcp_keepalive.count", "must be between 1 and 127"));
    }
    Ok(Some(TcpKeepalive { idle: k.idle.0, interval: k.interval.0, count: k.count }))
}

fn workers(c: &Checker<'_>, workers: Workers) -> Result<Option<usize>, ConfigError> {
    match workers.0 {
        None => Ok(None),
        Some(n @ 1..=1024) => Ok(usize::try_from(n).ok()),
        Some(_) => Err(c.err("workers", "must be `auto` or a number of threads from 1 to 1024")),
    }
}
