//! Opening a client's connection to a server: TCP connect under the backend's `connect_timeout`, the PROXY header
//! out, for `websocket` backends the WebSocket client upgrade, then the client's first bytes. Candidates are tried
//! best first; a server that fails any step counts a connect error and the next one is tried. The first candidate
//! comes with the slot its gate gave (the client waited for it); a later one is tried only if its gate admits the
//! client at once ([`crate::balancer::gate`]): a server at its cap is skipped, never waited for.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::connect::{connect, ConnectError, Connected};
use super::ws;
use super::ServerStream;
use crate::balancer::backend::{ActiveGuard, BackendServer};
use crate::balancer::gate::Slot;
use crate::config::{BackendConfig, BackendProtocol, TcpKeepalive};
use crate::proxy_protocol::{self, TlsInfo};

/// The client as the PROXY header describes it to the server.
pub struct ClientAddresses<'a> {
    /// The client's address (the TCP peer, or what a trusted proxy said).
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    pub tls: Option<&'a TlsInfo>,
}

/// Why one server could not be opened.
enum Failure {
    Connect(std::io::Error),
    ConnectTimeout,
    ProxyHeader(std::io::Error),
    Upgrade(ws::UpgradeError),
    UpgradeTimeout,
    FirstBytes(std::io::Error),
}

impl Failure {
    /// What went wrong, and the error if there is one, for the log line.
    fn describe(&self) -> (&'static str, Option<String>) {
        match self {
            Failure::Connect(e) => ("connect failed", Some(e.to_string())),
            Failure::ConnectTimeout => ("connect timed out", None),
            Failure::ProxyHeader(e) => ("server closed before the PROXY header", Some(e.to_string())),
            Failure::Upgrade(e) => ("WebSocket upgrade failed", Some(e.to_string())),
            Failure::UpgradeTimeout => ("WebSocket upgrade timed out", None),
            Failure::FirstBytes(e) => ("server closed before the first bytes", Some(e.to_string())),
        }
    }
}

/// Opens the first of `candidates` that answers and sends it the PROXY header and `first_bytes` (for `websocket`
/// backends: the PROXY header, the upgrade, then `first_bytes` in a binary frame), with `keepalive` on its socket.
/// `chosen` is the first candidate's slot. None when every one failed.
pub async fn open(
    backend: &BackendConfig,
    candidates: &[Arc<BackendServer>],
    client: &ClientAddresses<'_>,
    first_bytes: &[u8],
    chosen: Slot,
    keepalive: Option<&TcpKeepalive>,
) -> Option<(ServerStream, ActiveGuard)> {
    let mut chosen = Some(chosen);
    for server in candidates {
        let Some(slot) = chosen.take().or_else(|| server.gate.try_admit()) else {
            debug!(backend = %backend.name, server = %server.name, "at its cap: not tried in place of another");
            continue;
        };
        match open_one(backend, server, client, first_bytes, slot, keepalive).await {
            Ok(opened) => return Some(opened),
            Err(failure) => {
                let (what, error) = failure.describe();
                warn!(backend = %backend.name, server = %server.name, error = error.as_deref(), "{what}; trying the next server");
                server.metrics.connect_errors.inc();
            }
        }
    }
    None
}

async fn open_one(
    backend: &BackendConfig,
    server: &Arc<BackendServer>,
    client: &ClientAddresses<'_>,
    first_bytes: &[u8],
    slot: Slot,
    keepalive: Option<&TcpKeepalive>,
) -> Result<(ServerStream, ActiveGuard), Failure> {
    let start = Instant::now();
    let mut head = proxy_protocol::header_with_tls(
        backend.proxy_protocol,
        client.peer,
        client.local.unwrap_or(client.peer),
        client.tls,
    );
    let websocket = backend.protocol == BackendProtocol::Websocket;
    // What the connect may send at once: the PROXY header, then (TCP backends) the first bytes. Without a header
    // (the usual case) the first bytes go as they are, not copied behind an empty one.
    let early: &[u8] = match (websocket, head.is_empty()) {
        (true, _) => &head,
        (false, true) => first_bytes,
        (false, false) => {
            head.extend_from_slice(first_bytes);
            &head
        }
    };
    // The address resolved off the path (a lookup here only before a host name's first answer).
    let connect =
        async { connect_any(&server.socket_addrs().await.map_err(Failure::Connect)?, keepalive, early).await };
    let connected = tokio::time::timeout(backend.connect_timeout, connect).await;
    let Connected { stream: mut tcp, sent } = connected.map_err(|_| Failure::ConnectTimeout)??;
    server.metrics.connect_seconds.observe(start.elapsed().as_secs_f64());
    let guard = server.track_slot(slot);
    let rest = early.get(sent..).unwrap_or_default();
    let stream = if websocket {
        tcp.write_all(rest).await.map_err(Failure::ProxyHeader)?;
        // Boxed: inline, this state would size every session's task, WebSocket or not.
        let upgrade = Box::pin(ws::connect(tcp, &server.address, &backend.path));
        let upgraded = tokio::time::timeout(backend.connect_timeout, upgrade).await;
        let mut ws =
            ServerStream::Ws(Box::new(upgraded.map_err(|_| Failure::UpgradeTimeout)?.map_err(Failure::Upgrade)?));
        if !first_bytes.is_empty() {
            write_flushed(&mut ws, first_bytes).await.map_err(Failure::FirstBytes)?;
        }
        ws
    } else {
        if !rest.is_empty() {
            tcp.write_all(rest).await.map_err(Failure::FirstBytes)?;
        }
        ServerStream::Tcp(tcp)
    };
    server.metrics.sent_bytes.inc_by(first_bytes.len() as u64);
    Ok((stream, guard))
}

/// Connects to the first of `addrs` that accepts, in turn, sending it what it takes of `early` at once
/// ([`connect`]).
async fn connect_any(
    addrs: &[SocketAddr],
    keepalive: Option<&TcpKeepalive>,
    early: &[u8],
) -> Result<Connected, Failure> {
    let mut last = None;
    for addr in addrs {
        match connect(*addr, keepalive, early).await {
            Ok(connected) => return Ok(connected),
            Err(ConnectError::Connect(e)) => last = Some(e),
            Err(ConnectError::FirstBytes(e)) => return Err(Failure::FirstBytes(e)),
        }
    }
    let none = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "could not resolve to any address");
    Err(Failure::Connect(last.unwrap_or_else(none)))
}

async fn write_flushed(stream: &mut ServerStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
