//! TCP keepalive (`limits.tcp_keepalive`) on a client or server socket: the kernel probes a silent peer and drops
//! the connection when the probes go unanswered, so a peer gone without a FIN (power cut, NAT entry expired) does
//! not hold its relay for ever, whatever the protocol above (MQTT keep-alive 0, `tcp` listeners).

use socket2::{SockRef, TcpKeepalive as Probes};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::TcpKeepalive;

/// Turns keepalive on for `stream` with `settings` (None: left as the system has it, off by default). A failure
/// (an unusual socket) is logged at debug and the connection goes on without it.
pub fn apply(stream: &TcpStream, settings: Option<&TcpKeepalive>) {
    let Some(k) = settings else { return };
    let probes = Probes::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&probes) {
        debug!(error = %e, "TCP keepalive not set");
    }
}
