//! A TCP forwarder in front of a broker that notes when each connection was accepted: the broker's own view of its
//! new-connection rate, so that a test measures what a broker sees rather than what mqtt-lb says it sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// When each connection was accepted, in order.
pub type AcceptTimes = Arc<Mutex<Vec<Instant>>>;

/// Starts a forwarder to `broker`; returns its address and the accept times it records. With `marker`, only
/// connections whose first bytes (the CONNECT) hold it are recorded, so health probes pass uncounted; without, every
/// connection is.
pub async fn counting_forwarder(broker: SocketAddr, marker: Option<&'static str>) -> (SocketAddr, AcceptTimes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
    let addr = listener.local_addr().expect("forwarder address");
    let accepts = AcceptTimes::default();
    let seen = Arc::clone(&accepts);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let at = Instant::now();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut first = [0u8; 256];
                let head = match marker {
                    None => {
                        seen.lock().expect("accept times").push(at);
                        &first[..0]
                    }
                    Some(marker) => {
                        let n = match inbound.read(&mut first).await {
                            Ok(n) if n > 0 => n,
                            _ => return,
                        };
                        let head = first.get(..n).unwrap_or_default();
                        if head.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                            seen.lock().expect("accept times").push(at);
                        }
                        head
                    }
                };
                if let Ok(mut outbound) = TcpStream::connect(broker).await {
                    if outbound.write_all(head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

/// How close together a per-second cap may bring its connections as the broker sees them: a second, less what
/// scheduling on a loaded machine can take from the gap between two evenly spaced connections (a connect delayed
/// after its token brings it nearer the next one). Without a cap a burst arrives within milliseconds, far inside.
pub const CAP_WINDOW: Duration = Duration::from_millis(900);

/// The most accepts within [`CAP_WINDOW`] of one starting the window, among those at or after `from`.
pub fn busiest_window(times: &[Instant], from: Instant) -> usize {
    let times: Vec<Instant> = times.iter().copied().filter(|t| *t >= from).collect();
    times.iter().map(|t| times.iter().filter(|u| **u >= *t && **u < *t + CAP_WINDOW).count()).max().unwrap_or(0)
}
