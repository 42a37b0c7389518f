//! [`WsIo`]: a WebSocket connection as the plain byte stream the CONNECT reader and the relay work on, with no
//! buffer of its own.
//!
//! Reading: each read of the transport goes straight into the caller's buffer, and is rewritten there in place:
//! frame headers and control frames are taken out, the payload of binary and continuation frames is unmasked (the
//! mask offset carried from one read to the next) and moved up to join the payload before it. Messages are never
//! reassembled: MQTT packets need not align with frames [MQTT-6.0.0-2], so a payload byte is passed on as soon as it
//! arrives, whatever the length its frame or message declares. What a connection holds between reads is a partial
//! frame header (at most 14 bytes), a partial control frame (at most 125 bytes) and one control frame to send.
//!
//! Writing: each write becomes one binary frame of at most [`MAX_WRITE_FRAME`] bytes (the relay writes each of its
//! reads, so one frame per relay read), written in one transport write with its header (one TLS record, not two),
//! masked when we are the client. A frame the transport takes only in part is finished by the next writes.
//!
//! Control frames: a ping is answered with a pong carrying its payload; pings that come faster than their pongs
//! leave are answered for the latest only (RFC 6455 section 5.5.3), and a pong the transport has taken in part holds
//! reading back until it is out, so that a peer that pings and does not read is not read either. A close frame is
//! answered with one carrying its code; reads then end, and writes of new frames fail (`BrokenPipe`). Control frames
//! go out between data frames only.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tracing::debug;

use super::frame::{self, Header, MAX_CONTROL_PAYLOAD, MAX_HEADER};
use super::{key, Violation};

/// Largest binary frame we send: a write of more is split. The relay's buffer, so each relay read is one frame.
pub const MAX_WRITE_FRAME: usize = crate::relay::BUFFER_SIZE;

/// Transport reads one read call may make when they carry no payload (headers and control frames only), before it
/// yields to the other tasks of its thread.
const READS_PER_POLL: usize = 16;

/// Most bytes read and dropped while waiting for the peer's close frame or EOF after our close.
const LINGER_BYTES: usize = 64 * 1024;

/// Which end of the WebSocket we are: a server reads masked frames and writes unmasked ones, a client the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Where the reader is in the peer's frames.
enum Reading {
    /// In a frame header: its bytes so far.
    Header { bytes: [u8; MAX_HEADER], len: usize },
    /// In the payload of a binary or continuation frame: bytes left, the masking key and the position in the payload.
    Data { left: u64, mask: Option<[u8; 4]>, offset: usize },
    /// In the payload of a control frame, kept until it is whole (at most 125 bytes).
    Control { opcode: u8, mask: Option<[u8; 4]>, want: usize, payload: [u8; MAX_CONTROL_PAYLOAD], len: usize },
    /// The peer's close frame (or its EOF) came: reads return EOF.
    Closed,
    /// The peer broke the protocol: reads fail.
    Failed(Violation),
}

impl Reading {
    fn header() -> Reading {
        Reading::Header { bytes: [0; MAX_HEADER], len: 0 }
    }
}

/// A control frame to send, whole, and how much of it the transport took.
struct Control {
    bytes: [u8; MAX_HEADER + MAX_CONTROL_PAYLOAD],
    len: usize,
    sent: usize,
    is_close: bool,
}

/// A WebSocket as a byte stream: reads yield the payloads of binary frames as they arrive, writes are sent as binary
/// frames, shutdown sends a close frame (with the code of the peer's violation, if any) and then shuts the transport.
pub struct WsIo<S> {
    inner: S,
    role: Role,
    /// Bytes read with the upgrade, after its head: the peer's first frames. Freed once read.
    early: Vec<u8>,
    reading: Reading,
    /// A fragmented binary message is open: continuation frames are expected, a new binary frame is not.
    in_message: bool,
    /// Payload bytes the data frame being written still owes, its masking key and the position in its payload.
    write_left: usize,
    write_mask: Option<[u8; 4]>,
    write_offset: usize,
    /// The part of that frame's header the transport has not taken yet.
    head: [u8; MAX_HEADER],
    head_len: usize,
    head_sent: usize,
    /// The control frame to send next, between data frames.
    control: Option<Control>,
    close_sent: bool,
}

impl<S> WsIo<S> {
    /// A WebSocket over `inner`, upgraded already; `early` holds the bytes read after the upgrade's head.
    pub(super) fn new(inner: S, role: Role, early: Vec<u8>) -> WsIo<S> {
        WsIo {
            inner,
            role,
            early,
            reading: Reading::header(),
            in_message: false,
            write_left: 0,
            write_mask: None,
            write_offset: 0,
            head: [0; MAX_HEADER],
            head_len: 0,
            head_sent: 0,
            control: None,
            close_sent: false,
        }
    }

    /// The transport under the WebSocket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// What the peer did wrong, once it did.
    pub fn violation(&self) -> Option<Violation> {
        match self.reading {
            Reading::Failed(v) => Some(v),
            _ => None,
        }
    }

    fn fail(&mut self, v: Violation, detail: &str) {
        debug!(violation = v.label(), detail, "WebSocket peer broke the protocol");
        self.reading = Reading::Failed(v);
    }

    /// A close frame is queued or sent: no new data frame may follow.
    fn closing(&self) -> bool {
        self.close_sent || self.control.as_ref().is_some_and(|c| c.is_close)
    }

    /// Queues a control frame. A close replaces a pong not yet begun; a pong replaces one not yet begun (only the
    /// latest ping is answered); nothing replaces a close, nor a frame the transport has taken in part.
    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        let is_close = opcode == frame::OP_CLOSE;
        if self.close_sent || self.control.as_ref().is_some_and(|c| c.sent > 0 || (c.is_close && !is_close)) {
            return;
        }
        let mask = (self.role == Role::Client).then(key::mask);
        let mut bytes = [0u8; MAX_HEADER + MAX_CONTROL_PAYLOAD];
        let mut head = [0u8; MAX_HEADER];
        let payload = payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload);
        let at = frame::encode(&mut head, opcode, payload.len(), mask);
        let len = at + payload.len();
        if let Some(h) = bytes.get_mut(..at) {
            h.copy_from_slice(head.get(..at).unwrap_or_default());
        }
        if let Some(p) = bytes.get_mut(at..len) {
            p.copy_from_slice(payload);
            if let Some(m) = mask {
                frame::apply_mask(p, m, 0);
            }
        }
        self.control = Some(Control { bytes, len, sent: 0, is_close });
    }

    /// Checks a new frame's header and enters its payload.
    fn start_frame(&mut self, h: Header) {
        let masked = h.mask.is_some();
        match self.role {
            Role::Server if !masked => return self.fail(Violation::Protocol, "unmasked client frame"),
            Role::Client if masked => return self.fail(Violation::Protocol, "masked server frame"),
            _ => {}
        }
        match h.opcode {
            frame::OP_TEXT => return self.fail(Violation::TextFrame, "text frame"),
            frame::OP_BINARY if self.in_message => {
                return self.fail(Violation::Protocol, "binary frame inside a fragmented message")
            }
            frame::OP_CONTINUATION if !self.in_message => {
                return self.fail(Violation::Protocol, "continuation frame without a message")
            }
            frame::OP_BINARY | frame::OP_CONTINUATION => {
                self.in_message = !h.fin;
                self.reading = Reading::Data { left: h.len, mask: h.mask, offset: 0 };
            }
            frame::OP_CLOSE | frame::OP_PING | frame::OP_PONG => {
                // parse() refused control payloads over 125 bytes.
                let want = usize::try_from(h.len).unwrap_or(MAX_CONTROL_PAYLOAD).min(MAX_CONTROL_PAYLOAD);
                self.reading = Reading::Control {
                    opcode: h.opcode,
                    mask: h.mask,
                    want,
                    payload: [0; MAX_CONTROL_PAYLOAD],
                    len: 0,
                };
            }
            _ => return self.fail(Violation::Protocol, "reserved opcode"),
        }
        self.end_empty_payload();
    }

    /// A frame with nothing (more) to read is done.
    fn end_empty_payload(&mut self) {
        match &self.reading {
            Reading::Data { left: 0, .. } => self.reading = Reading::header(),
            Reading::Control { opcode, want, payload, len, .. } if len == want => {
                let (opcode, payload, len) = (*opcode, *payload, *len);
                self.end_control(opcode, payload.get(..len).unwrap_or_default());
            }
            _ => {}
        }
    }

    /// A whole control frame: a ping is answered, a pong ignored, a close checked, answered, and the end of reading.
    fn end_control(&mut self, opcode: u8, payload: &[u8]) {
        self.reading = Reading::header();
        match opcode {
            frame::OP_PING => self.queue_control(frame::OP_PONG, payload),
            frame::OP_CLOSE => {
                let code = payload.get(..2).and_then(|c| <[u8; 2]>::try_from(c).ok()).map(u16::from_be_bytes);
                let reason = payload.get(2..).unwrap_or_default();
                match code {
                    None if !payload.is_empty() => return self.fail(Violation::Protocol, "1-byte close payload"),
                    Some(c) if !frame::close_code_valid(c) => return self.fail(Violation::Protocol, "bad close code"),
                    Some(_) if std::str::from_utf8(reason).is_err() => {
                        return self.fail(Violation::Protocol, "close reason not UTF-8")
                    }
                    _ => {}
                }
                // The answer carries the peer's code (none if it gave none).
                self.queue_control(frame::OP_CLOSE, payload.get(..2).unwrap_or_default());
                self.reading = Reading::Closed;
            }
            _ => {}
        }
    }

    /// Takes the frames out of `data` (bytes just read), leaving in `data[..n]` the `n` payload bytes they carried,
    /// unmasked. Bytes after a close frame or a violation are dropped.
    fn deframe(&mut self, data: &mut [u8]) -> usize {
        let (mut r, mut w) = (0usize, 0usize);
        while r < data.len() {
            let rest = data.len() - r;
            match &mut self.reading {
                Reading::Header { bytes, len } => {
                    let take = (MAX_HEADER - *len).min(rest);
                    if let (Some(to), Some(from)) = (bytes.get_mut(*len..*len + take), data.get(r..r + take)) {
                        to.copy_from_slice(from);
                    }
                    match frame::parse(bytes.get(..*len + take).unwrap_or_default()) {
                        Ok(None) => {
                            *len += take;
                            r += take;
                        }
                        Ok(Some((h, size))) => {
                            r += size - *len;
                            self.start_frame(h);
                        }
                        Err(detail) => self.fail(Violation::Protocol, detail),
                    }
                }
                Reading::Data { left, mask, offset } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest);
                    data.copy_within(r..r + take, w);
                    if let (Some(m), Some(payload)) = (*mask, data.get_mut(w..w + take)) {
                        *offset = frame::apply_mask(payload, m, *offset);
                    }
                    *left -= take as u64;
                    r += take;
                    w += take;
                    self.end_empty_payload();
                }
                Reading::Control { mask, want, payload, len, .. } => {
                    let take = (*want - *len).min(rest);
                    if let (Some(to), Some(from)) = (payload.get_mut(*len..*len + take), data.get(r..r + take)) {
                        to.copy_from_slice(from);
                        if let Some(m) = *mask {
                            frame::apply_mask(to, m, *len);
                        }
                    }
                    *len += take;
                    r += take;
                    self.end_empty_payload();
                }
                Reading::Closed | Reading::Failed(_) => break,
            }
        }
        w
    }
}

impl<S: AsyncWrite + Unpin> WsIo<S> {
    /// Writes what the transport has not taken of the current data frame's header.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.head_sent < self.head_len {
            let rest = self.head.get(self.head_sent..self.head_len).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.head_sent += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the queued control frame, if any, when no data frame is under way; flushes it once whole.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_left > 0 || self.head_sent < self.head_len {
            return Poll::Ready(Ok(()));
        }
        let Some(c) = &mut self.control else {
            return Poll::Ready(Ok(()));
        };
        while c.sent < c.len {
            let rest = c.bytes.get(c.sent..c.len).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            c.sent += n;
        }
        self.close_sent |= c.is_close;
        self.control = None;
        // A control frame answers the peer: it should not wait for the next data to be flushed.
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Ok(()))
    }

    /// Whether reading must wait for the queued control frame to leave: the transport has taken part of it.
    fn control_blocks_reading(&self) -> bool {
        self.control.as_ref().is_some_and(|c| c.sent > 0)
    }
}

fn violation_error(v: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, v)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// After our close frame: reads (and drops) what the peer still sends until its close frame or EOF, so that our
    /// close reaches it rather than being lost to a reset when the transport is closed with unread bytes. After a
    /// violation the frames can no longer be followed, so bytes are drained raw until EOF. Reads at most
    /// [`LINGER_BYTES`]; bound it with a timeout too.
    pub async fn linger(&mut self) {
        let mut sink = [0u8; 2048];
        let mut left = LINGER_BYTES;
        while left > 0 {
            let read = match self.reading {
                Reading::Closed => return,
                Reading::Failed(_) => self.inner.read(&mut sink).await,
                _ => self.read(&mut sink).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..READS_PER_POLL {
            match this.reading {
                Reading::Closed => {
                    // The answer to the peer's close, if the transport takes it now; else at the next write or
                    // at shutdown.
                    let _ = this.poll_control(cx);
                    return Poll::Ready(Ok(()));
                }
                Reading::Failed(v) => return Poll::Ready(Err(violation_error(v))),
                _ => {}
            }
            if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                return Poll::Ready(Err(e));
            }
            if this.control_blocks_reading() {
                return Poll::Pending;
            }
            let start = buf.filled().len();
            if this.early.is_empty() {
                let space = buf.initialize_unfilled();
                let mut transport = ReadBuf::new(space);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut transport))?;
                let n = transport.filled().len();
                if n == 0 {
                    // EOF without a close frame (or inside a frame): an end, as for a TCP peer.
                    this.reading = Reading::Closed;
                    return Poll::Ready(Ok(()));
                }
                buf.advance(n);
            } else {
                let n = this.early.len().min(buf.remaining());
                buf.put_slice(this.early.get(..n).unwrap_or_default());
                this.early.drain(..n);
                if this.early.is_empty() {
                    this.early = Vec::new();
                }
            }
            let payload = this.deframe(buf.filled_mut().get_mut(start..).unwrap_or_default());
            buf.set_filled(start + payload);
            if payload > 0 {
                // A pong (or close) queued by this read leaves now if it can; a failure or a close comes with the
                // next read.
                let _ = this.poll_control(cx);
                return Poll::Ready(Ok(()));
            }
        }
        // Only headers and control frames so far: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_head(cx))?;
        ready!(this.poll_control(cx))?;
        if this.write_left == 0 && this.closing() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            // The frame's header (when it starts here) and as much payload as the frame owes, in one write.
            let mut out = [0u8; MAX_HEADER + MAX_WRITE_FRAME];
            let mut head_len = 0;
            let starting = this.write_left == 0;
            if starting {
                this.write_left = buf.len().min(MAX_WRITE_FRAME);
                this.write_mask = (this.role == Role::Client).then(key::mask);
                this.write_offset = 0;
                head_len = frame::encode(&mut this.head, frame::OP_BINARY, this.write_left, this.write_mask);
                if let (Some(to), Some(from)) = (out.get_mut(..head_len), this.head.get(..head_len)) {
                    to.copy_from_slice(from);
                }
            }
            let take = buf.len().min(this.write_left);
            let end = head_len + take;
            if let (Some(to), Some(from)) = (out.get_mut(head_len..end), buf.get(..take)) {
                to.copy_from_slice(from);
                if let Some(m) = this.write_mask {
                    frame::apply_mask(to, m, this.write_offset);
                }
            }
            let n = match Pin::new(&mut this.inner).poll_write(cx, out.get(..end).unwrap_or_default()) {
                Poll::Pending => {
                    if starting {
                        // Nothing of the frame left: it has not begun.
                        this.write_left = 0;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < head_len {
                // The rest of the header goes first next time; the payload then follows from the caller's buffer.
                this.head_len = head_len;
                this.head_sent = n;
                ready!(this.poll_head(cx))?;
                continue;
            }
            let payload = n - head_len;
            this.write_left -= payload;
            this.write_offset = this.write_offset.wrapping_add(payload);
            if payload > 0 {
                return Poll::Ready(Ok(payload));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_head(cx))?;
        ready!(this.poll_control(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Our close frame, unless one is out or queued; not inside a data frame, which could not be finished.
        if !this.closing() && this.write_left == 0 && this.head_sent == this.head_len {
            let code = this.violation().map_or(1000, Violation::close_code);
            this.queue_control(frame::OP_CLOSE, &code.to_be_bytes());
        }
        // Best effort: a transport that fails here is closed all the same.
        let sent = match ready!(this.poll_head(cx)) {
            Ok(()) => ready!(this.poll_control(cx)),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            debug!(error = %e, "WebSocket close frame not sent");
        }
        let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A frame as the peer of `role` writes it: masked when that peer is a client.
    fn frame_from_peer(role: Role, first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = (role == Role::Server).then_some(MASK);
        let mut head = [0u8; MAX_HEADER];
        let n = frame::encode(&mut head, first & 0x0f, payload.len(), mask);
        head[0] = first;
        let mut out = head[..n].to_vec();
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            frame::apply_mask(&mut body, m, 0);
        }
        out.extend(body);
        out
    }

    fn pair(role: Role) -> (WsIo<DuplexStream>, DuplexStream) {
        let (ours, peer) = duplex(1 << 20);
        (WsIo::new(ours, role, Vec::new()), peer)
    }

    /// Reads until EOF or an error: the payload bytes, and the error's violation if any.
    async fn read_all(ws: &mut WsIo<DuplexStream>) -> (Vec<u8>, Option<Violation>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            match ws.read(&mut buf).await {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, super::super::violation(&e)),
            }
        }
    }

    /// Everything the peer receives until we close: shuts `ws` down first.
    async fn sent_to_peer(mut ws: WsIo<DuplexStream>, mut peer: DuplexStream) -> Vec<u8> {
        ws.shutdown().await.unwrap();
        drop(ws);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn each_broken_rule_is_a_violation_with_its_close_code() {
        let bin = |role, p: &[u8]| frame_from_peer(role, 0x82, p);
        let cases: Vec<(Role, Vec<u8>, Violation, &str)> = vec![
            (Role::Server, frame_from_peer(Role::Client, 0x82, b"x"), Violation::Protocol, "unmasked client frame"),
            (Role::Client, frame_from_peer(Role::Server, 0x82, b"x"), Violation::Protocol, "masked server frame"),
            (Role::Server, frame_from_peer(Role::Server, 0x81, b"x"), Violation::TextFrame, "text"),
            (Role::Server, frame_from_peer(Role::Server, 0xC2, b"x"), Violation::Protocol, "RSV1"),
            (Role::Server, frame_from_peer(Role::Server, 0x80, b"x"), Violation::Protocol, "continuation first"),
            (Role::Server, frame_from_peer(Role::Server, 0x09, b"x"), Violation::Protocol, "fragmented ping"),
            (Role::Server, frame_from_peer(Role::Server, 0x89, &[0; 126]), Violation::Protocol, "long ping"),
            (Role::Server, frame_from_peer(Role::Server, 0x83, b"x"), Violation::Protocol, "reserved opcode"),
            (Role::Server, frame_from_peer(Role::Server, 0x88, &[0x03]), Violation::Protocol, "1-byte close"),
            (Role::Server, frame_from_peer(Role::Server, 0x88, &[0x03, 0xed]), Violation::Protocol, "close 1005"),
            (
                Role::Server,
                [frame_from_peer(Role::Server, 0x02, b"a"), bin(Role::Server, b"b")].concat(),
                Violation::Protocol,
                "binary inside a message",
            ),
            (
                Role::Server,
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                Violation::Protocol,
                "64-bit length with its top bit",
            ),
        ];
        for (role, bytes, want, what) in cases {
            let (mut ws, mut peer) = pair(role);
            peer.write_all(&bytes).await.unwrap();
            let (_, got) = read_all(&mut ws).await;
            assert_eq!(got, Some(want), "{what}");
            assert_eq!(ws.violation(), Some(want), "{what}");
            let out = sent_to_peer(ws, peer).await;
            let code = want.close_code().to_be_bytes();
            // Our close frame, masked by a client: its code after the 2-byte header (and the mask).
            let close = match role {
                Role::Server => out.get(..4).map(|c| c.to_vec()),
                Role::Client => out.get(..8).map(|c| {
                    let mut p = c[6..8].to_vec();
                    frame::apply_mask(&mut p, [c[2], c[3], c[4], c[5]], 0);
                    [&c[..2], &p[..]].concat()
                }),
            };
            assert_eq!(
                close,
                Some(vec![0x88, 0x82 & if role == Role::Client { 0xff } else { 0x7f }, code[0], code[1]]),
                "{what}: {out:02x?}"
            );
        }
    }

    #[tokio::test]
    async fn payload_streams_before_its_frame_ends_and_pings_are_answered_once() {
        let (mut ws, mut peer) = pair(Role::Server);
        // A frame declaring 1 MiB of which 3 bytes come: they are readable at once.
        let mut head = [0u8; MAX_HEADER];
        let n = frame::encode(&mut head, frame::OP_BINARY, 1 << 20, Some(MASK));
        head[0] &= 0x7f; // not final either
        peer.write_all(&head[..n]).await.unwrap();
        let mut body = b"abc".to_vec();
        frame::apply_mask(&mut body, MASK, 0);
        peer.write_all(&body).await.unwrap();
        let mut buf = [0u8; 64];
        let got = ws.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], b"abc");
        // The rest of the frame, in pieces: the mask offset carries over.
        let mut rest = vec![b'z'; (1 << 20) - 3];
        frame::apply_mask(&mut rest, MASK, 3);
        peer.write_all(&rest).await.unwrap();
        let mut total = 0;
        while total < rest.len() {
            let n = ws.read(&mut buf).await.unwrap();
            assert!(buf[..n].iter().all(|b| *b == b'z'));
            total += n;
        }
        // 50 pings in one write: at most one pong per transport read (each answering the latest ping read),
        // never one queued per ping.
        let mut pings = Vec::new();
        for i in 0..50u8 {
            pings.extend(frame_from_peer(Role::Server, 0x89, &[i]));
        }
        pings.extend(frame_from_peer(Role::Server, 0x80, b"end"));
        peer.write_all(&pings).await.unwrap();
        let mut tail = Vec::new();
        while !tail.ends_with(b"end") {
            let n = ws.read(&mut buf).await.unwrap();
            tail.extend_from_slice(&buf[..n]);
        }
        assert_eq!(tail, b"end");
        // A close: answered with its code, then EOF; no data frame after it.
        peer.write_all(&frame_from_peer(Role::Server, 0x88, &[0x03, 0xe8])).await.unwrap();
        assert_eq!(ws.read(&mut buf).await.unwrap(), 0);
        assert!(ws.write(b"late").await.is_err(), "no data after the close");
        let out = sent_to_peer(ws, peer).await;
        let (pongs, close) = out.split_at(out.len() - 4);
        assert_eq!(close, [0x88, 0x02, 0x03, 0xe8], "{out:02x?}");
        assert!(pongs.chunks(3).all(|p| p[..2] == [0x8a, 0x01]), "{out:02x?}");
        assert!(pongs.len() / 3 < 10, "one pong per read, not per ping: {out:02x?}");
        assert_eq!(pongs.last(), Some(&49), "the latest ping is answered: {out:02x?}");
    }

    #[tokio::test]
    async fn writes_are_binary_frames_masked_by_a_client() {
        for role in [Role::Server, Role::Client] {
            let (mut ws, peer) = pair(role);
            let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            ws.write_all(&data).await.unwrap();
            ws.flush().await.unwrap();
            let out = sent_to_peer(ws, peer).await;
            // Frames as the other end reads them.
            let mut at = 0;
            let mut payload = Vec::new();
            let mut frames = 0;
            while let Ok(Some((h, n))) = frame::parse(&out[at..]) {
                assert_eq!(h.mask.is_some(), role == Role::Client, "{role:?}");
                let mut p = out[at + n..at + n + h.len as usize].to_vec();
                if let Some(m) = h.mask {
                    frame::apply_mask(&mut p, m, 0);
                }
                at += n + h.len as usize;
                if h.opcode == frame::OP_CLOSE {
                    assert_eq!(p, [0x03, 0xe8]);
                    break;
                }
                assert_eq!((h.opcode, h.fin), (frame::OP_BINARY, true));
                assert!(p.len() <= MAX_WRITE_FRAME);
                payload.extend(p);
                frames += 1;
            }
            assert_eq!(payload, data, "{role:?}");
            assert_eq!(frames, data.len().div_ceil(MAX_WRITE_FRAME), "{role:?}");
        }
    }
}
