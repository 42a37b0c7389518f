//! Health probes: one task per server, beside the connection path.
//!
//! Each probe runs every `interval` under `timeout`. The verdict follows HAProxy's counter model: a server new to the
//! pool (at start-up, or added by a reload) starts up with its health counter at `rise`, so the first failed probe
//! takes it down; once down it needs `rise` successes in a row to come back, and once up `fall` failures in a row to
//! go down. A reload carries a server's proven verdict over (its probe task restarts from it). Servers in `maint`
//! are not probed.
//! `coap-ping` ([`crate::udp::coap::ping`]: an Empty Confirmable message answered by a Reset) and `dtls-hello`
//! ([`crate::udp::dtls::hello_probe`]: a ClientHello answered by any DTLS record) probe over UDP; `http`
//! (`health/http.rs`: a GET on the broker's readiness endpoint, another port of its host) over TCP without a PROXY
//! header; the other checks over TCP to the server's address. Why the last probe failed is kept on the server until
//! it is up again (`/servers` shows it).

mod http;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balancer::backend::{AdminState, BackendServer};
use crate::config::{HealthCheckKind, HealthConfig, OnDown, ProxyProtocol};
use crate::mqtt::disconnect::DISCONNECT;
use crate::mqtt::probe::{probe_answer, probe_connect_packet, ProbeAnswer, CONNACK_LEN};
use crate::proxy_protocol;
use crate::transport::ws;
use crate::udp::coap::UdpProbeError;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("unexpected answer to CONNECT: {0:02x?}")]
    BadAnswer(Vec<u8>),
    #[error("CONNACK refused with return code {0:#04x}")]
    Refused(u8),
    #[error("WebSocket upgrade: {0}")]
    WebSocket(String),
    #[error("CoAP ping: {0}")]
    Coap(String),
    #[error("readiness endpoint: {0}")]
    Readiness(String),
    #[error("readiness endpoint answered HTTP {code} (ready is {expected})")]
    Status { code: u16, expected: String },
}

impl ProbeError {
    /// The probe could not run for want of a resource of this process or host (file descriptors, socket buffers,
    /// memory, ephemeral ports): it says nothing about the server, so it must not count against it.
    pub fn is_local(&self) -> bool {
        match self {
            ProbeError::Connect(e) | ProbeError::Io(e) => is_local_resource_error(e),
            _ => false,
        }
    }
}

fn is_local_resource_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || e.kind() == std::io::ErrorKind::OutOfMemory
        || matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

impl From<UdpProbeError> for ProbeError {
    fn from(e: UdpProbeError) -> ProbeError {
        match e {
            UdpProbeError::Connect(e) => ProbeError::Connect(e),
            UdpProbeError::Io(e) => ProbeError::Io(e),
            UdpProbeError::Answer(what) => ProbeError::Coap(what),
        }
    }
}

/// HAProxy-style rise/fall counter.
#[derive(Debug, Clone)]
pub struct Verdict {
    health: u32,
    rise: u32,
    fall: u32,
}

impl Verdict {
    pub fn new(rise: u32, fall: u32) -> Verdict {
        Verdict { health: rise, rise, fall }
    }

    /// Continues from a known state (after a reload): up as freshly up, down as freshly down.
    pub fn resume(rise: u32, fall: u32, up: bool) -> Verdict {
        let mut v = Verdict::new(rise, fall);
        v.health = if up { v.max() } else { 0 };
        v
    }

    fn max(&self) -> u32 {
        self.rise + self.fall - 1
    }

    pub fn is_up(&self) -> bool {
        self.health >= self.rise
    }

    /// Records one probe result; returns the state after it.
    pub fn record(&mut self, ok: bool) -> bool {
        let was_up = self.is_up();
        if ok {
            self.health = (self.health + 1).min(self.max());
            if !was_up && self.is_up() {
                self.health = self.max();
            }
        } else {
            self.health = self.health.saturating_sub(1);
            if was_up && !self.is_up() {
                self.health = 0;
            }
        }
        self.is_up()
    }
}

/// Starts one probe task per server of a backend. The tasks end when `stop` is cancelled.
pub fn spawn(
    backend: &str,
    health: &HealthConfig,
    on_down: OnDown,
    servers: &[Arc<BackendServer>],
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    if health.check == HealthCheckKind::None {
        return;
    }
    for server in servers {
        let server = Arc::clone(server);
        let health = health.clone();
        let backend = backend.to_owned();
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = probe_loop(&backend, &health, on_down, &server) => {}
            }
        });
    }
}

async fn probe_loop(backend: &str, health: &HealthConfig, on_down: OnDown, server: &BackendServer) {
    let mut verdict = initial_verdict(health, server);
    // Whether the last probe could not run here: one warning per such spell, not one per probe.
    let mut local_trouble = false;
    let mut ticks = tokio::time::interval(health.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if server.state() == AdminState::Maint {
            continue;
        }
        let start = Instant::now();
        let result = probe(health, server).await;
        server.metrics.probe_seconds.observe(start.elapsed().as_secs_f64());
        match &result {
            Err(e) if e.is_local() => {
                server.metrics.probe_local_errors.inc();
                if !local_trouble {
                    warn!(backend, server = %server.name, error = %e,
                        "health probe could not run (a local resource error, not the server's): its verdict stands");
                }
                local_trouble = true;
                continue;
            }
            _ => local_trouble = false,
        }
        if let Err(e) = &result {
            server.metrics.probe_failures.inc();
            if server.is_up() {
                warn!(backend, server = %server.name, error = %e, "health probe failed");
            }
            server.set_check_error(Some(e.to_string()));
        }
        let up = verdict.record(result.is_ok());
        server.set_probed();
        if up && result.is_ok() {
            server.set_check_error(None);
        }
        if server.set_up(up) {
            if up {
                info!(backend, server = %server.name, "server is UP");
            } else {
                let error = server.check_error().map(|e| e.to_string()).unwrap_or_default();
                warn!(backend, server = %server.name, error, "server is DOWN");
                if on_down == OnDown::Close {
                    info!(backend, server = %server.name, relays = server.active(), "on_down: close: closing its relays");
                    server.close_relays();
                }
            }
        }
    }
}

/// Where a probe task starts: a server never probed is up unproven (the first failure takes it down); one already
/// judged (before a reload restarted its task) continues from its verdict.
fn initial_verdict(health: &HealthConfig, server: &BackendServer) -> Verdict {
    if server.probed() {
        Verdict::resume(health.rise, health.fall, server.is_up())
    } else {
        Verdict::new(health.rise, health.fall)
    }
}

/// One probe of `server` per the backend's health settings, at its resolved address ([`BackendServer::socket_addrs`]).
pub async fn probe(health: &HealthConfig, server: &BackendServer) -> Result<(), ProbeError> {
    let run = async {
        let targets = server.socket_addrs().await.map_err(ProbeError::Connect)?;
        let target = &targets[..];
        match (health.check, &health.http) {
            (HealthCheckKind::CoapPing, _) => return Ok(crate::udp::coap::ping(target).await?),
            (HealthCheckKind::DtlsHello, _) => return Ok(crate::udp::dtls::hello_probe(target).await?),
            (HealthCheckKind::Http, Some(check)) => return http::probe(check, &server.address, target).await,
            (HealthCheckKind::Http, None) => return Err(ProbeError::Readiness("no settings".to_owned())),
            _ => {}
        }
        let mut tcp = TcpStream::connect(target).await.map_err(ProbeError::Connect)?;
        if health.proxy_protocol != ProxyProtocol::None {
            // The probe's own addresses, as HAProxy's `check-send-proxy` does.
            if let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) {
                let head = proxy_protocol::header(health.proxy_protocol, local, peer);
                tcp.write_all(&head).await.map_err(ProbeError::Io)?;
            }
        }
        match health.check {
            HealthCheckKind::Tcp | HealthCheckKind::None => Ok(()),
            HealthCheckKind::CoapPing | HealthCheckKind::DtlsHello => Ok(()), // probed over UDP above
            HealthCheckKind::Http => Ok(()),                                  // probed above
            HealthCheckKind::Mqtt => mqtt_probe(&mut tcp, health).await,
            HealthCheckKind::Websocket => {
                let mut ws = ws::connect(tcp, &server.address, &health.path)
                    .await
                    .map_err(|e| ProbeError::WebSocket(e.to_string()))?;
                mqtt_probe(&mut ws, health).await
            }
        }
    };
    tokio::time::timeout(health.timeout, run).await.map_err(|_| ProbeError::Timeout(health.timeout))?
}

/// CONNECT (3.1.1, clean session, a unique client id) -> CONNACK 0 -> DISCONNECT, over TCP or WebSocket.
async fn mqtt_probe<S: AsyncRead + AsyncWrite + Unpin>(tcp: &mut S, health: &HealthConfig) -> Result<(), ProbeError> {
    let packet = probe_connect(health);
    tcp.write_all(&packet).await.map_err(ProbeError::Io)?;
    tcp.flush().await.map_err(ProbeError::Io)?;
    let mut answer = [0u8; CONNACK_LEN];
    tcp.read_exact(&mut answer).await.map_err(ProbeError::Io)?;
    match probe_answer(answer) {
        ProbeAnswer::Accepted => {}
        ProbeAnswer::Refused(code) => return Err(ProbeError::Refused(code)),
        ProbeAnswer::NotConnack => return Err(ProbeError::BadAnswer(answer.to_vec())),
    }
    tcp.write_all(&DISCONNECT).await.map_err(ProbeError::Io)?;
    tcp.flush().await.map_err(ProbeError::Io)?;
    let _ = tcp.shutdown().await;
    Ok(())
}

/// The probe's CONNECT packet. The client id is unique per probe so that two mqtt-lb instances never take over
/// each other's probe sessions.
pub fn probe_connect(health: &HealthConfig) -> Vec<u8> {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let client_id = format!("mqtt-lb-probe-{:x}", nonce ^ u128::from(std::process::id()) << 64);
    probe_connect_packet(&client_id, health.username.as_deref(), health.password.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_rise_and_fall() {
        let mut v = Verdict::new(2, 3);
        assert!(v.is_up());
        assert!(!v.record(false), "the first failure at start takes the server down");
        assert!(!v.record(true));
        assert!(v.record(true), "rise=2 successes bring it back");
        assert!(v.record(false));
        assert!(v.record(false));
        assert!(!v.record(false), "fall=3 failures take it down");
        assert!(!v.record(true));
        assert!(!v.record(false));
        assert!(!v.record(true));
        assert!(v.record(true));
    }

    #[test]
    fn probe_connect_is_valid() {
        let h = HealthConfig {
            check: HealthCheckKind::Mqtt,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            username: Some("u".into()),
            password: Some("p".into()),
            path: "/mqtt".into(),
            proxy_protocol: ProxyProtocol::None,
            http: None,
        };
        let c = crate::mqtt::parse_connect(&probe_connect(&h)).unwrap();
        assert!(c.client_id.starts_with("mqtt-lb-probe-"));
        assert_eq!(c.username.as_deref(), Some("u"));
        assert!(c.has_password);
    }
}
