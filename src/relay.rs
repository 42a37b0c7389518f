//! The byte pump: client <-> server in both directions until both sides are done.
//!
//! Built on tokio's `copy_bidirectional_with_sizes`, which honours half-close (EOF from one side shuts down the write
//! half of the other and the other direction goes on) and applies backpressure: each direction has one bounded
//! buffer, and a slow reader stops its writer from being read. Bytes are counted as they move (not at the end), so
//! per-server byte counters are live for connections that last for hours.
//!
//! With a [`ShutdownNotice`] (MQTT 5 clients, when the server shuts down), the broker-to-client direction is
//! followed packet by packet: once the notice fires, the pump stops reading from the broker at the next packet
//! boundary, so the client gets whole packets only, then the notice's DISCONNECT, then the end of the stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Bytes buffered per direction.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed { to_server: u64, to_client: u64 },
    /// No byte moved for the idle timeout.
    Idle,
    /// The server was taken down by health checks and its backend closes relays then (`on_down: close`).
    ServerDown,
    /// A read or write failed (a reset, mostly).
    Error(io::Error),
}

/// A packet to send the client, between two broker packets, when `token` is cancelled; then the relay ends.
#[derive(Debug, Clone)]
pub struct ShutdownNotice {
    pub token: CancellationToken,
    pub packet: Vec<u8>,
}

impl ShutdownNotice {
    /// An MQTT 5 DISCONNECT with `reason` (0x8B server shutting down, 0x9C use another server).
    pub fn mqtt5_disconnect(token: CancellationToken, reason: u8) -> ShutdownNotice {
        ShutdownNotice { token, packet: vec![0xE0, 0x02, reason, 0x00] }
    }
}

/// Relays until both directions are closed, an error, or `idle` without traffic (zero: never).
pub async fn relay<C, S>(
    client: C,
    server: S,
    sent: Counter,
    received: Counter,
    idle: Duration,
    notice: Option<ShutdownNotice>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let fired = Arc::new(AtomicBool::new(false));
    let (gate, packet) = match notice {
        None => (None, Vec::new()),
        Some(n) => (
            Some(Gate {
                tracker: PacketTracker::default(),
                cancelled: Box::pin(n.token.cancelled_owned()),
                stopping: false,
                fired: Arc::clone(&fired),
            }),
            n.packet,
        ),
    };
    let client = Notifying { inner: client, fired, packet, written: 0 };
    let mut client = Counted { inner: client, counter: sent, activity: Arc::clone(&activity), start, gate: None };
    let mut server = Counted { inner: server, counter: received, activity: Arc::clone(&activity), start, gate };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER_SIZE, BUFFER_SIZE);
    if idle.is_zero() {
        return finish(copy.await);
    }
    tokio::select! {
        r = copy => finish(r),
        () = idle_watch(&activity, start, idle) => RelayEnd::Idle,
    }
}

fn finish(r: io::Result<(u64, u64)>) -> RelayEnd {
    match r {
        Ok((to_server, to_client)) => RelayEnd::Closed { to_server, to_client },
        Err(e) => RelayEnd::Error(e),
    }
}

/// Resolves once no byte has moved for `idle`.
async fn idle_watch(activity: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that counts the bytes read from it and notes the time of the last read; with a gate, its reads end
/// (EOF) at the first packet boundary after the notice fired.
struct Counted<T> {
    inner: T,
    counter: Counter,
    activity: Arc<AtomicU64>,
    start: Instant,
    gate: Option<Gate>,
}

/// Follows MQTT packet boundaries in a byte stream (fixed header: one byte, then a Remaining Length of at most 4
/// bytes, then that many bytes).
#[derive(Debug, Default, Clone)]
struct PacketTracker {
    /// Inside a fixed header: its first byte was seen, its length is not complete.
    in_header: bool,
    length: usize,
    length_bytes: u32,
    /// Body bytes of the current packet still to come.
    remaining: usize,
}

impl PacketTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while let Some((&byte, rest)) = data.split_first() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            data = rest;
            if !self.in_header {
                (self.in_header, self.length, self.length_bytes) = (true, 0, 0);
                continue;
            }
            self.length |= usize::from(byte & 0x7F) << (7 * self.length_bytes);
            self.length_bytes += 1;
            if byte & 0x80 == 0 || self.length_bytes == 4 {
                self.in_header = false;
                self.remaining = self.length;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        !self.in_header && self.remaining == 0
    }

    /// The most that can be read without crossing the next boundary.
    fn to_boundary(&self) -> usize {
        if self.in_header {
            1
        } else {
            self.remaining
        }
    }
}

struct Gate {
    tracker: PacketTracker,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: bool,
    fired: Arc<AtomicBool>,
}

/// The client side: on shutdown after the gate fired, writes the notice packet first.
struct Notifying<T> {
    inner: T,
    fired: Arc<AtomicBool>,
    packet: Vec<u8>,
    written: usize,
}

impl<T: AsyncRead + Unpin> AsyncRead for Notifying<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Notifying<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fired.load(Ordering::Relaxed) {
            while let Some(rest) = this.packet.get(this.written..).filter(|r| !r.is_empty()) {
                match Pin::new(&mut this.inner).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => this.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut this.inner).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.gate {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(gate) => {
                if !gate.stopping && gate.cancelled.as_mut().poll(cx).is_ready() {
                    gate.stopping = true;
                }
                if gate.stopping && gate.tracker.at_boundary() {
                    gate.fired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Ok(())); // EOF: the notice follows, then the end
                }
                if gate.stopping {
                    // Read no further than the end of the current packet.
                    let mut local = [0u8; 4096];
                    let limit = gate.tracker.to_boundary().min(buf.remaining()).min(local.len());
                    let mut part = ReadBuf::new(local.get_mut(..limit).unwrap_or_default());
                    let r = Pin::new(&mut this.inner).poll_read(cx, &mut part);
                    buf.put_slice(part.filled());
                    r
                } else {
                    Pin::new(&mut this.inner).poll_read(cx, buf)
                }
            }
        };
        let n = buf.filled().len().saturating_sub(before);
        if let Some(gate) = &mut this.gate {
            gate.tracker.feed(buf.filled().get(before..).unwrap_or_default());
        }
        if n > 0 {
            this.counter.inc_by(n as u64);
            let ms = u64::try_from(this.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.activity.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_finds_packet_boundaries_in_any_split() {
        // PUBLISH (2-byte length), PINGRESP, a 200-byte packet with a 2-byte remaining length.
        let mut stream = vec![0x30, 0x05, 0, 1, b't', b'x', b'y', 0xD0, 0x00, 0x30, 0xC8, 0x01];
        stream.extend_from_slice(&[7u8; 200]);
        let boundaries = [0usize, 7, 9, stream.len()];
        for split in 1..stream.len() {
            let mut t = PacketTracker::default();
            let mut seen = vec![0];
            let mut at = 0;
            for chunk in stream.chunks(split) {
                // Feed byte by byte inside the chunk to observe every boundary.
                for b in chunk {
                    t.feed(std::slice::from_ref(b));
                    at += 1;
                    if t.at_boundary() {
                        seen.push(at);
                    }
                }
            }
            assert_eq!(seen, boundaries, "split {split}");
        }
        let mut t = PacketTracker::default();
        t.feed(&stream[..3]);
        assert_eq!(t.to_boundary(), 4, "4 body bytes left");
        let mut t = PacketTracker::default();
        t.feed(&stream[..10]);
        assert_eq!(t.to_boundary(), 1, "inside a fixed header");
    }
}
