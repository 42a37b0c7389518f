//! The byte pump: client <-> server in both directions until both sides are done.
//!
//! Each direction reads into a buffer on the stack of the poll call and writes what it read straight on; only the part
//! a writer does not take at once (backpressure) is kept, in a heap buffer of that direction that is freed as soon as
//! it is written. An idle relay therefore holds no buffer at all (tokio's `copy_bidirectional` keeps one per direction
//! for the life of the connection: 32 KiB per client here), and a busy one at most one read ([`BUFFER_SIZE`]) per
//! direction; a direction with unwritten bytes reads nothing more, so a slow reader slows its own writer and never
//! grows memory. Half-close is honoured: EOF from one side flushes and shuts down the write half of the other, and the
//! other direction goes on. The last direction to end does not shut its writer down when the writer says closing it
//! sends the same ([`EndWithClose`]: a plain TCP socket, whose FIN goes with the close that follows at once), which
//! saves one system call per connection. Bytes are counted as they move (not at the end), so per-server byte counters
//! are live for connections that last for hours.
//!
//! With a [`ShutdownNotice`] (MQTT 5 clients, when the server shuts down), the broker-to-client direction is
//! followed packet by packet: once the notice fires, the pump stops reading from the broker at the next packet
//! boundary, so the client gets whole packets only, then the notice's DISCONNECT, then the end of the stream.
//!
//! Two deadlines may end a relay: the idle timeout (no byte either way) and, for MQTT clients, the keep-alive
//! deadline ([`keep_alive`]: no byte from the client for a factor of its keep-alive), both on one timer
//! ([`deadlines`]).

pub mod deadlines;
pub mod keep_alive;

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::mqtt::boundary::PacketTracker;
use crate::mqtt::disconnect::mqtt5_disconnect;
use keep_alive::{ConnackReader, KeepAlive, Window};

/// The largest read of one direction, and so the most it ever holds unwritten.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Reads a direction may do in one poll before it yields to the other tasks of its thread.
const READS_PER_POLL: usize = 32;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed { to_server: u64, to_client: u64 },
    /// No byte moved for the idle timeout.
    Idle,
    /// No byte from the client for the keep-alive deadline.
    KeepAlive,
    /// The server was taken down by health checks and its backend closes relays then (`on_down: close`).
    ServerDown,
    /// A read or write failed (a reset, mostly).
    Error(io::Error),
}

/// A side of a relay, asked how its write half may end once both directions are done.
pub trait EndWithClose {
    /// Called by the relay instead of the last shutdown, right before the relay ends and the streams are closed:
    /// true if that close ends the write half as a shutdown would (a plain TCP socket: the same FIN; the stream
    /// then counts its write half as shut down), false for a stream with bytes to send first (TLS close_notify, a
    /// WebSocket close frame, the shutdown notice), which is shut down as before.
    fn end_with_close(&mut self) -> bool {
        false
    }
}

impl<T: EndWithClose + ?Sized> EndWithClose for &mut T {
    fn end_with_close(&mut self) -> bool {
        (**self).end_with_close()
    }
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
        ShutdownNotice { token, packet: mqtt5_disconnect(reason) }
    }
}

/// Relays until both directions are closed, an error, `idle` without traffic (zero: never), or, with
/// `keep_alive`, the client silent past its keep-alive deadline.
pub async fn relay<C, S>(
    client: C,
    server: S,
    sent: Counter,
    received: Counter,
    idle: Duration,
    keep_alive: Option<KeepAlive>,
    notice: Option<ShutdownNotice>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + EndWithClose + Unpin,
    S: AsyncRead + AsyncWrite + EndWithClose + Unpin,
{
    let start = Instant::now();
    // What the two sides and the deadlines share, borrowed by each (all in this one task: no allocation).
    // Milliseconds from `start` to the last byte read from each side.
    let (client_read, server_read) = (AtomicU64::new(0), AtomicU64::new(0));
    let window = Window::new(keep_alive.and_then(|k| k.factor.window(k.requested)));
    let connack = keep_alive.filter(|k| k.follow_connack).map(|k| ConnackReader::new(k.factor, &window));
    let may_change = connack.is_some();
    let fired = AtomicBool::new(false);
    let (gate, packet) = match notice {
        None => (None, Vec::new()),
        Some(n) => (
            Some(Gate {
                tracker: PacketTracker::default(),
                cancelled: Box::pin(n.token.cancelled_owned()),
                stopping: false,
                fired: &fired,
            }),
            n.packet,
        ),
    };
    let client = Notifying { inner: client, fired: &fired, packet, written: 0 };
    let activity = &client_read;
    let mut client = Counted { inner: client, counter: sent, activity, start, gate: None, connack: None };
    let activity = &server_read;
    let mut server = Counted { inner: server, counter: received, activity, start, gate, connack };
    let activity = deadlines::Activity { start, client: &client_read, server: &server_read };
    let watched = !idle.is_zero() || keep_alive.is_some();
    let keep_alive = keep_alive.map(|_| deadlines::KeepAliveWindow { window: &window, may_change });
    tokio::select! {
        biased;
        r = copy_bidirectional(&mut client, &mut server) => finish(r),
        end = deadlines::watch(activity, idle, keep_alive), if watched => end,
    }
}

fn finish(r: io::Result<(u64, u64)>) -> RelayEnd {
    match r {
        Ok((to_server, to_client)) => RelayEnd::Closed { to_server, to_client },
        Err(e) => RelayEnd::Error(e),
    }
}

/// Once one direction has ended (its EOF passed on), how long the other may go without moving a byte before the
/// relay ends anyway (HAProxy's `timeout client-fin` / `server-fin`). Without it, a client that never closes (a
/// device gone without a FIN: half-open) would hold its relay and both sockets for ever after its broker closed the
/// session for keep alive; the grace lets the last bytes (a DISCONNECT, a refusal) reach it and a well-behaved peer
/// close first. A half-closed direction that keeps moving bytes goes on.
pub const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(5);

/// Copies both ways until both directions reached EOF (each then flushes and shuts down its writer, the last one
/// unless the writer ends with its close), one fails, or one has ended and the other moved nothing for
/// [`HALF_CLOSED_TIMEOUT`]. Returns the bytes written to `b` and to `a`.
async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + EndWithClose + Unpin,
    B: AsyncRead + AsyncWrite + EndWithClose + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    // Once half-closed: the bytes moved when the timer was last set, and the timer (pinned here, in the task,
    // rather than boxed).
    let mut half_closed: Option<u64> = None;
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    std::future::poll_fn(|cx| {
        let last = b_to_a.done;
        let ab = a_to_b.poll_copy(cx, &mut *a, &mut *b, last)?;
        let last = a_to_b.done;
        let ba = b_to_a.poll_copy(cx, &mut *b, &mut *a, last)?;
        match (ab, ba) {
            (Poll::Ready(ab), Poll::Ready(ba)) => Poll::Ready(Ok((ab, ba))),
            (Poll::Pending, Poll::Pending) => Poll::Pending,
            _ => {
                let moved = a_to_b.moved + b_to_a.moved;
                if half_closed != Some(moved) {
                    half_closed = Some(moved);
                    timer.set(Some(tokio::time::sleep(HALF_CLOSED_TIMEOUT)));
                }
                let Some(sleep) = timer.as_mut().as_pin_mut() else { return Poll::Pending };
                ready!(sleep.poll(cx));
                Poll::Ready(Ok((a_to_b.moved, b_to_a.moved)))
            }
        }
    })
    .await
}

/// One direction of the relay.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet taken by the writer; empty (and unallocated) unless the writer pushed back.
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// The reader reached EOF.
    eof: bool,
    /// The writer was shut down: this direction is done.
    done: bool,
    /// The writer took bytes since its last flush.
    need_flush: bool,
    /// Bytes written.
    moved: u64,
}

impl Direction {
    /// `last`: the other direction is done, so this one's end ends the relay.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        last: bool,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + EndWithClose + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(self.moved));
        }
        for _ in 0..READS_PER_POLL {
            // What the writer pushed back last time goes first; nothing is read until it is gone.
            while let Some(rest) = self.pending.get(self.written..).filter(|r| !r.is_empty()) {
                let n = ready!(write(cx, writer, rest))?;
                self.written += n;
                self.wrote(n);
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.need_flush = false;
                // When `last`, the writer's own reads reached EOF (the other direction is done): its close finds
                // nothing unread, so it sends a FIN, not a reset.
                if !(last && writer.end_with_close()) {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(self.moved));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); BUFFER_SIZE];
            let mut buf = ReadBuf::uninit(&mut stack);
            if Pin::new(&mut *reader).poll_read(cx, &mut buf)?.is_pending() {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            let mut taken = 0;
            while let Some(rest) = data.get(taken..).filter(|r| !r.is_empty()) {
                match write(cx, writer, rest) {
                    Poll::Ready(n) => {
                        let n = n?;
                        taken += n;
                        self.wrote(n);
                    }
                    Poll::Pending => {
                        // Keep the rest; the writer wakes this task when it can take more.
                        self.pending = rest.to_vec();
                        return Poll::Pending;
                    }
                }
            }
        }
        // Busy in this direction: let the other tasks of this thread run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn wrote(&mut self, n: usize) {
        self.moved += n as u64;
        self.need_flush = true;
    }
}

/// One write; a writer that takes nothing is an error (as in `tokio::io::copy`).
fn write<W: AsyncWrite + Unpin>(cx: &mut Context<'_>, writer: &mut W, bytes: &[u8]) -> Poll<io::Result<usize>> {
    let n = ready!(Pin::new(writer).poll_write(cx, bytes))?;
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(n))
}

/// A stream that counts the bytes read from it and notes the time of the last read; with a gate, its reads end
/// (EOF) at the first packet boundary after the notice fired; with a CONNACK reader, its first packet is read for
/// the broker's Server Keep Alive.
struct Counted<'a, T> {
    inner: T,
    counter: Counter,
    activity: &'a AtomicU64,
    start: Instant,
    gate: Option<Gate<'a>>,
    connack: Option<ConnackReader<'a>>,
}

struct Gate<'a> {
    tracker: PacketTracker,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: bool,
    fired: &'a AtomicBool,
}

/// The client side: on shutdown after the gate fired, writes the notice packet first.
struct Notifying<'a, T> {
    inner: T,
    fired: &'a AtomicBool,
    packet: Vec<u8>,
    written: usize,
}

impl<T: AsyncRead + Unpin> AsyncRead for Notifying<'_, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Notifying<'_, T> {
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

impl<T: EndWithClose> EndWithClose for Notifying<'_, T> {
    fn end_with_close(&mut self) -> bool {
        // A notice still to write needs the shutdown, which writes it first.
        let notice_due = self.fired.load(Ordering::Relaxed) && self.written < self.packet.len();
        !notice_due && self.inner.end_with_close()
    }
}

impl<T: EndWithClose> EndWithClose for Counted<'_, T> {
    fn end_with_close(&mut self) -> bool {
        self.inner.end_with_close()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
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
        if let Some(connack) = &mut this.connack {
            connack.feed(buf.filled().get(before..).unwrap_or_default());
        }
        if n > 0 {
            this.counter.inc_by(n as u64);
            let ms = u64::try_from(this.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.activity.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // In-memory pipes have no close that sends anything: the relay shuts them down, as it does TLS streams.
    impl EndWithClose for tokio::io::DuplexStream {}

    fn counters() -> (Counter, Counter) {
        (Counter::default(), Counter::default())
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let (sent, received) = counters();
        let relay = tokio::spawn(relay(client, server, sent.clone(), received.clone(), Duration::ZERO, None, None));
        let up = vec![1u8; 100_000];
        let down = vec![2u8; 70_000];
        // The client sends everything and closes its side; the server still answers after that EOF.
        let client_side = tokio::spawn(async move {
            client_peer.write_all(&up).await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100_000, "the server gets every byte, then EOF");
        server_peer.write_all(&down).await.unwrap();
        server_peer.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), vec![2u8; 70_000], "the other direction went on after half-close");
        match relay.await.unwrap() {
            RelayEnd::Closed { to_server, to_client } => assert_eq!((to_server, to_client), (100_000, 70_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!((sent.get(), received.get()), (100_000, 70_000));
    }

    /// A pipe that may end with its close, as a plain TCP socket does, and counts its shutdowns.
    struct Closable {
        pipe: tokio::io::DuplexStream,
        ends_with_close: bool,
        shutdowns: usize,
    }

    impl EndWithClose for Closable {
        fn end_with_close(&mut self) -> bool {
            self.ends_with_close
        }
    }

    impl AsyncRead for Closable {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().pipe).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Closable {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().pipe).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().pipe).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.shutdowns += 1;
            Pin::new(&mut this.pipe).poll_shutdown(cx)
        }
    }

    /// The server closes first, then the client: the client's write half is shut down (the half-close), the
    /// server's is left to the close when it says that ends it, and shut down otherwise. Returns the shutdowns of
    /// (client, server).
    async fn shutdowns_when_both_close(both_end_with_close: bool) -> (usize, usize) {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let ends_with_close = both_end_with_close;
        let mut client = Closable { pipe: client, ends_with_close, shutdowns: 0 };
        let mut server = Closable { pipe: server, ends_with_close, shutdowns: 0 };
        let (sent, received) = counters();
        let peers = async {
            server_peer.write_all(b"bye").await.unwrap();
            server_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye", "the half-close reaches the client after the server's bytes");
            client_peer.shutdown().await.unwrap();
        };
        let relayed = relay(&mut client, &mut server, sent, received, Duration::ZERO, None, None);
        let (end, ()) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(relayed, peers) })
            .await
            .expect("the relay ends once both sides closed");
        assert!(matches!(end, RelayEnd::Closed { to_server: 0, to_client: 3 }), "{end:?}");
        (client.shutdowns, server.shutdowns)
    }

    #[tokio::test]
    async fn the_last_writer_ends_with_its_close_when_that_sends_the_same() {
        assert_eq!(shutdowns_when_both_close(true).await, (1, 0), "no shutdown right before the close");
        assert_eq!(shutdowns_when_both_close(false).await, (1, 1), "streams with bytes to send are shut down");
    }

    #[test]
    fn a_due_notice_keeps_the_shutdown_that_writes_it() {
        let (pipe, _peer) = tokio::io::duplex(64);
        let fired = AtomicBool::new(false);
        let inner = Closable { pipe, ends_with_close: true, shutdowns: 0 };
        let mut client = Notifying { inner, fired: &fired, packet: vec![0xE0, 0x00], written: 0 };
        assert!(client.end_with_close(), "no notice due: the close ends it");
        fired.store(true, Ordering::Relaxed);
        assert!(!client.end_with_close(), "the notice is written by the shutdown");
        client.written = 2;
        assert!(client.end_with_close(), "notice written: the close ends it");
    }

    #[tokio::test]
    async fn a_reader_that_does_not_read_stops_its_writer() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (server, _server_peer) = tokio::io::duplex(1024);
        let (sent, received) = counters();
        let _relay = tokio::spawn(relay(client, server, sent.clone(), received, Duration::ZERO, None, None));
        // The server never reads: at most its pipe, the relay's one pending read and the client's pipe fit.
        let big = vec![0u8; 1 << 20];
        let write = tokio::time::timeout(Duration::from_millis(300), client_peer.write_all(&big)).await;
        assert!(write.is_err(), "the client's writes must block");
        let read_from_client = usize::try_from(sent.get()).unwrap();
        assert!(read_from_client <= 1024 + BUFFER_SIZE, "read {read_from_client} bytes ahead of the server");
    }
}
