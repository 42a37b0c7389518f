//! The end of a relayed connection: what each side did, noted where it happened (the client's and the server's
//! streams are wrapped for the relay), the close reason derived from those notes, and the connection's one
//! `connection closed` line (info), written when the client side is dropped, so that a relay cut at the drain
//! deadline is logged too, with reason `shutdown`.
//!
//! Close reasons: `client_disconnect` (the client's last bytes were an MQTT DISCONNECT: a clean end, whichever side
//! then closed first), `client_closed`, `server_closed` (that side sent EOF first, without a DISCONNECT: a client
//! gone, or a broker closing a session taken over), `idle_timeout`, `keep_alive_timeout` (the client sent nothing
//! for `limits.keep_alive_factor` times its keep-alive), `server_down` (health checks took the server down,
//! `on_down: close`), `client_error`, `server_error` (a read or write failed on that side), `shutdown`. Each end is
//! also counted in `mqttlb_connections_closed_total` by reason.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::info;

use crate::metrics::ReasonLabels;
use crate::mqtt::disconnect::is_disconnect;
use crate::relay::{EndWithClose, RelayEnd};

/// Why a relayed connection ended: the `reason` of the `connection closed` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientDisconnect,
    ClientClosed,
    ServerClosed,
    IdleTimeout,
    KeepAliveTimeout,
    ServerDown,
    ClientError,
    ServerError,
    Shutdown,
}

impl CloseReason {
    /// Every reason, for the docs check.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::ClientDisconnect,
        CloseReason::ClientClosed,
        CloseReason::ServerClosed,
        CloseReason::IdleTimeout,
        CloseReason::KeepAliveTimeout,
        CloseReason::ServerDown,
        CloseReason::ClientError,
        CloseReason::ServerError,
        CloseReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::ServerDown => "server_down",
            CloseReason::ClientError => "client_error",
            CloseReason::ServerError => "server_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Which side sent EOF first, noted by whichever read saw it first.
#[derive(Debug, Default)]
pub struct FirstEof(AtomicU8);

const NO_EOF: u8 = 0;
const CLIENT_EOF: u8 = 1;
const SERVER_EOF: u8 = 2;

impl FirstEof {
    fn note(&self, side: u8) {
        let _ = self.0.compare_exchange(NO_EOF, side, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn reason(&self) -> Option<CloseReason> {
        match self.0.load(Ordering::Relaxed) {
            CLIENT_EOF => Some(CloseReason::ClientClosed),
            SERVER_EOF => Some(CloseReason::ServerClosed),
            _ => None,
        }
    }
}

/// What the `connection closed` line names besides the close reason.
pub struct EndLine<'a> {
    pub listener: &'a str,
    pub peer: SocketAddr,
    /// None for raw TCP listeners and when `log.client_id` is false.
    pub client_id: Option<&'a str>,
    pub server: &'a str,
    pub started: Instant,
    /// `mqttlb_connections_closed_total`, counted with the line.
    pub closed: &'a Family<ReasonLabels, Counter>,
}

/// The client side of a relay: counts the bytes each way, notes the client's EOF, its first error and whether its
/// last bytes were a DISCONNECT, and writes the `connection closed` line when dropped.
pub struct ClientSide<'a, S> {
    stream: &'a mut S,
    first_eof: &'a FirstEof,
    /// Bytes from the client (to the server), the buffered CONNECT included.
    to_server: u64,
    /// Bytes to the client.
    to_client: u64,
    /// The kind of the first error on the client side.
    failed: Option<std::io::ErrorKind>,
    /// Whether the last read from the client was exactly one DISCONNECT packet.
    last_read_disconnect: bool,
    /// The close reason and error once the relay returned; None if it was cut short.
    outcome: Option<(CloseReason, Option<std::io::Error>)>,
    /// The relay shut the client's write half down (a FIN, after the server's EOF), or left that FIN to the close
    /// of a plain TCP stream at the end: nothing left to shut down.
    write_shut: bool,
    line: EndLine<'a>,
}

impl<'a, S> ClientSide<'a, S> {
    /// `sent_first`: client bytes already sent to the server (the buffered CONNECT).
    pub fn new(stream: &'a mut S, first_eof: &'a FirstEof, sent_first: usize, line: EndLine<'a>) -> Self {
        ClientSide {
            stream,
            first_eof,
            to_server: sent_first as u64,
            to_client: 0,
            failed: None,
            last_read_disconnect: false,
            outcome: None,
            write_shut: false,
            line,
        }
    }

    /// Whether the relay already shut the client's write half down.
    pub fn write_shut(&self) -> bool {
        self.write_shut
    }

    /// Records how the relay ended; `shutdown_notified`: the shutdown notice (an MQTT 5 DISCONNECT) was due.
    pub fn finish(&mut self, end: RelayEnd, shutdown_notified: bool) {
        let closed = || {
            if self.last_read_disconnect {
                CloseReason::ClientDisconnect
            } else if shutdown_notified {
                CloseReason::Shutdown
            } else {
                self.first_eof.reason().unwrap_or(CloseReason::ClientClosed)
            }
        };
        let outcome = match end {
            RelayEnd::Closed { .. } => (closed(), None),
            RelayEnd::Idle => (CloseReason::IdleTimeout, None),
            RelayEnd::KeepAlive => (CloseReason::KeepAliveTimeout, None),
            RelayEnd::ServerDown => (CloseReason::ServerDown, None),
            // A TLS client that closes without close_notify (most MQTT clients do) just closed.
            RelayEnd::Error(_) if self.failed == Some(std::io::ErrorKind::UnexpectedEof) => (closed(), None),
            RelayEnd::Error(e) => {
                (if self.failed.is_some() { CloseReason::ClientError } else { CloseReason::ServerError }, Some(e))
            }
        };
        self.outcome = Some(outcome);
    }

    fn note<T>(&mut self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.failed.get_or_insert(e.kind());
        }
        r
    }
}

impl<S> Drop for ClientSide<'_, S> {
    fn drop(&mut self) {
        let (reason, error) = self.outcome.take().unwrap_or((CloseReason::Shutdown, None));
        let line = &self.line;
        let client_id = line.client_id.map(crate::logging::clip);
        // An I/O error's text may quote what the peer sent (a TLS alert, a WebSocket close reason).
        let error = error.map(|e| crate::logging::clip(&e.to_string()).into_owned());
        let labels = ReasonLabels { listener: line.listener.to_owned(), reason: reason.label() };
        line.closed.get_or_create(&labels).inc();
        // The line names the connection itself, as documented; as a root event, text logs do not repeat the
        // connection's span before it (JSON logs still show the current span beside it).
        info!(
            parent: None,
            listener = line.listener,
            peer = %line.peer,
            client_id = client_id.as_deref(),
            server = line.server,
            bytes_to_server = self.to_server,
            bytes_to_client = self.to_client,
            duration_seconds = line.started.elapsed().as_secs_f64(),
            reason = reason.label(),
            error = error.as_deref().map(tracing::field::display),
            "connection closed"
        );
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientSide<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let r = Pin::new(&mut *this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let read = buf.filled().get(before..).unwrap_or_default();
            this.to_server += read.len() as u64;
            if !read.is_empty() {
                this.last_read_disconnect = is_disconnect(read);
            } else if asked {
                this.first_eof.note(CLIENT_EOF);
            }
        }
        this.note(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientSide<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.to_client += n as u64;
        }
        this.note(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.to_client += n as u64;
        }
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.stream).poll_shutdown(cx);
        this.write_shut |= matches!(r, Poll::Ready(Ok(())));
        this.note(r)
    }
}

impl<S: EndWithClose> EndWithClose for ClientSide<'_, S> {
    fn end_with_close(&mut self) -> bool {
        let ended = self.stream.end_with_close();
        self.write_shut |= ended;
        ended
    }
}

/// The server side of a relay: notes the server's EOF when its read returns it.
pub struct ServerSide<'a, S> {
    stream: S,
    first_eof: &'a FirstEof,
}

impl<'a, S> ServerSide<'a, S> {
    pub fn new(stream: S, first_eof: &'a FirstEof) -> Self {
        ServerSide { stream, first_eof }
    }
}

impl<S: EndWithClose> EndWithClose for ServerSide<'_, S> {
    fn end_with_close(&mut self) -> bool {
        self.stream.end_with_close()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ServerSide<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if asked && buf.filled().len() == before {
                this.first_eof.note(SERVER_EOF);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ServerSide<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
