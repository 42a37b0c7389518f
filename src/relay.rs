//! The byte pump: client <-> server in both directions until both sides are done.
//!
//! Built on tokio's `copy_bidirectional_with_sizes`, which honours half-close (EOF from one side shuts down the write
//! half of the other and the other direction goes on) and applies backpressure: each direction has one bounded
//! buffer, and a slow reader stops its writer from being read. Bytes are counted as they move (not at the end), so
//! per-server byte counters are live for connections that last for hours.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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

/// Relays until both directions are closed, an error, or `idle` without traffic (zero: never).
pub async fn relay<C, S>(client: C, server: S, sent: Counter, received: Counter, idle: Duration) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Counted { inner: client, counter: sent, activity: Arc::clone(&activity), start };
    let mut server = Counted { inner: server, counter: received, activity: Arc::clone(&activity), start };
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

/// A stream that counts the bytes read from it and notes the time of the last read.
struct Counted<T> {
    inner: T,
    counter: Counter,
    activity: Arc<AtomicU64>,
    start: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
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
