//! MQTT over WebSocket (RFC 6455; MQTT 3.1.1 and 5, section 6): the upgrade of a client connection
//! ([`accept`]), the upgrade of a connection to a WebSocket backend ([`connect`]), and [`WsIo`], which turns a
//! WebSocket into the plain byte stream the rest of the path (CONNECT reader, relay) works on.
//!
//! # The client's upgrade
//!
//! The HTTP/1.1 request is read by us (httparse), under a deadline (`limits.handshake_timeout`, counted from the
//! end of the TLS handshake) and a size cap ([`MAX_UPGRADE_REQUEST`]), so that every bad request gets a specific
//! answer and a `reason`:
//!
//! | request | answer | reason |
//! |---|---|---|
//! | path other than the listener's `path` (query ignored) | 404 | `ws_bad_path` |
//! | not `GET`, not HTTP/1.1, unparsable, no `Upgrade: websocket`, no `Connection: Upgrade`, no or bad `Sec-WebSocket-Key`, no `Sec-WebSocket-Version` | 400 | `ws_bad_upgrade` |
//! | `Sec-WebSocket-Version` other than 13 | 426 with `Sec-WebSocket-Version: 13` (RFC 6455 4.2.2) | `ws_bad_upgrade` |
//! | `Origin` present and not in `allowed_origins` (when set) | 403 | `ws_origin` |
//! | no `mqtt` nor `mqttv3.1` in `Sec-WebSocket-Protocol` | 400 | `ws_no_subprotocol` |
//! | more than [`MAX_UPGRADE_REQUEST`] bytes or 64 header lines | 431 | `ws_upgrade_too_large` |
//! | not complete within the deadline | 408 | `ws_upgrade_timeout` |
//! | closed before the end of the request | - | `ws_closed_before_upgrade` |
//!
//! A client that offers no acceptable subprotocol is refused (as EMQX does): a browser would fail the connection
//! anyway when the answer lacks the subprotocol it asked for. The first acceptable subprotocol in the client's order
//! is chosen and echoed as the client spelled it. Extensions (permessage-deflate) are not negotiated.
//!
//! # Frames
//!
//! Ours, streamed ([`stream`], over the format of [`frame`]): the payload of binary and continuation frames is
//! passed on as it arrives, unmasked on the way, and never gathered into messages, so a connection holds no more
//! than the caller's read buffer whatever the frames or messages declare. MQTT packets need not align with frames
//! [MQTT-6.0.0-2]: one packet may span frames and one frame may hold several packets. Client frames must be masked
//! and server frames not, reserved bits must be clear, control frames whole and at most 125 bytes, a continuation
//! must continue a message, a 64-bit length must not set its top bit; a ping gets a pong, a close gets a close. A
//! text frame is an error [MQTT-6.0.0-1]. A peer that breaks these rules is closed with close code 1003 (text) or
//! 1002 (other protocol errors), and the violation is reported ([`WsIo::violation`]). There is no size limit on
//! frames or messages: `limits.max_ws_frame_size` is accepted for compatibility and limits nothing (the MQTT packet
//! size is the brokers' to limit, and the first packet's is `limits.max_connect_size`).
//!
//! # A WebSocket backend
//!
//! [`connect`] ([`client`]) upgrades a connection to a server (for `websocket` backends and health checks) and
//! speaks the client side of the same codec.

mod client;
mod frame;
mod key;
mod stream;

pub use client::{connect, UpgradeError};
pub use stream::{WsIo, MAX_WRITE_FRAME};

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Largest upgrade request (request line and headers) read from a client.
pub const MAX_UPGRADE_REQUEST: usize = 8 * 1024;

/// Most header lines in an upgrade request.
const MAX_HEADERS: usize = 64;

/// How long an error answer may take to write before the connection is just closed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The subprotocols of MQTT over WebSocket: `mqtt` (3.1.1 and 5), `mqttv3.1` (3.1 clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// What a client did wrong inside an established WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("text frame: MQTT over WebSocket is carried in binary frames only")]
    TextFrame,
    #[error("WebSocket protocol error")]
    Protocol,
}

impl Violation {
    /// Every violation, for label enumeration.
    pub const ALL: [Violation; 2] = [Violation::TextFrame, Violation::Protocol];

    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Violation::TextFrame => "ws_text_frame",
            Violation::Protocol => "ws_protocol",
        }
    }

    /// The code of the close frame that ends the connection (RFC 6455 section 7.4.1).
    fn close_code(self) -> u16 {
        match self {
            Violation::TextFrame => 1003,
            Violation::Protocol => 1002,
        }
    }
}

/// The [`Violation`] an I/O error returned by a [`WsIo`] stands for, if it is one.
pub fn violation(e: &io::Error) -> Option<Violation> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Violation>()).copied()
}

/// What a WebSocket listener accepts.
#[derive(Debug, Clone)]
pub struct UpgradePolicy {
    /// The only path upgraded.
    pub path: String,
    /// When not empty, an `Origin` header must be one of these (ASCII case-insensitive).
    pub allowed_origins: Vec<String>,
    /// Deadline for the whole request.
    pub timeout: Duration,
}

/// Why a client's upgrade failed: the `reason` label of the rejected counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeFailure {
    BadPath,
    BadUpgrade,
    Origin,
    NoSubprotocol,
    TooLarge,
    Timeout,
    ClosedBeforeUpgrade,
    /// A read or write failed during the upgrade.
    Io,
}

impl UpgradeFailure {
    /// Every failure, for label enumeration.
    pub const ALL: [UpgradeFailure; 8] = [
        UpgradeFailure::BadPath,
        UpgradeFailure::BadUpgrade,
        UpgradeFailure::Origin,
        UpgradeFailure::NoSubprotocol,
        UpgradeFailure::TooLarge,
        UpgradeFailure::Timeout,
        UpgradeFailure::ClosedBeforeUpgrade,
        UpgradeFailure::Io,
    ];

    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            UpgradeFailure::BadPath => "ws_bad_path",
            UpgradeFailure::BadUpgrade => "ws_bad_upgrade",
            UpgradeFailure::Origin => "ws_origin",
            UpgradeFailure::NoSubprotocol => "ws_no_subprotocol",
            UpgradeFailure::TooLarge => "ws_upgrade_too_large",
            UpgradeFailure::Timeout => "ws_upgrade_timeout",
            UpgradeFailure::ClosedBeforeUpgrade => "ws_closed_before_upgrade",
            UpgradeFailure::Io => "client_error",
        }
    }
}

/// An upgrade request refused: the HTTP status to answer with and the metrics reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRefusal {
    pub status: u16,
    pub reason: UpgradeFailure,
    /// One line for the body of the answer.
    pub detail: &'static str,
}

const fn refuse(status: u16, reason: UpgradeFailure, detail: &'static str) -> UpgradeRefusal {
    UpgradeRefusal { status, reason, detail }
}

const TOO_LARGE: UpgradeRefusal = refuse(431, UpgradeFailure::TooLarge, "the upgrade request is too large");
const TIMEOUT: UpgradeRefusal = refuse(408, UpgradeFailure::Timeout, "the upgrade request took too long");

impl UpgradeRefusal {
    /// The HTTP answer (the connection is closed after it).
    pub fn response(&self) -> String {
        let phrase = match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            408 => "Request Timeout",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let extra = if self.status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
        format!(
            "HTTP/1.1 {} {phrase}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{}\n",
            self.status,
            self.detail.len() + 1,
            self.detail
        )
    }
}

/// A request that may be upgraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// The chosen subprotocol, as the client wrote it.
    pub protocol: String,
}

impl Accepted {
    pub fn response(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            self.accept_key, self.protocol
        )
    }
}

/// The values of header `name` (several lines of it are all returned).
fn header_values<'h>(headers: &'h [httparse::Header<'_>], name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{fffd}").trim())
}

/// The comma-separated tokens of header `name`, over all its lines.
fn header_tokens<'h>(headers: &'h [httparse::Header<'_>], name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    header_values(headers, name).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// A `Sec-WebSocket-Key`: base64 of 16 bytes (24 characters ending in `==`).
fn key_is_valid(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b.iter().take(22).all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Checks an upgrade request (the bytes of its head) against `policy`.
pub fn check_request(head: &[u8], policy: &UpgradePolicy) -> Result<Accepted, UpgradeRefusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(refuse(400, UpgradeFailure::BadUpgrade, "incomplete HTTP request"))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) => return Err(refuse(400, UpgradeFailure::BadUpgrade, "not an HTTP/1.1 request")),
    }
    if request.method != Some("GET") {
        return Err(refuse(400, UpgradeFailure::BadUpgrade, "a WebSocket upgrade is a GET"));
    }
    if request.version != Some(1) {
        return Err(refuse(400, UpgradeFailure::BadUpgrade, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let target = request.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != policy.path {
        return Err(refuse(404, UpgradeFailure::BadPath, "no WebSocket endpoint here"));
    }
    let headers = request.headers;
    if !header_tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err(refuse(400, UpgradeFailure::BadUpgrade, "\"Upgrade: websocket\" is missing"));
    }
    if !header_tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(refuse(400, UpgradeFailure::BadUpgrade, "\"Connection: Upgrade\" is missing"));
    }
    let mut versions = header_values(headers, "sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some("13"), None) => {}
        (None, _) => return Err(refuse(400, UpgradeFailure::BadUpgrade, "Sec-WebSocket-Version is missing")),
        _ => return Err(refuse(426, UpgradeFailure::BadUpgrade, "only WebSocket version 13 is supported")),
    }
    let mut keys = header_values(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if key_is_valid(k) => k,
        _ => return Err(refuse(400, UpgradeFailure::BadUpgrade, "Sec-WebSocket-Key is missing or invalid")),
    };
    if !policy.allowed_origins.is_empty() {
        if let Some(origin) = header_values(headers, "origin").next() {
            if !policy.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(refuse(403, UpgradeFailure::Origin, "origin not allowed"));
            }
        }
    }
    let protocol = header_tokens(headers, "sec-websocket-protocol")
        .find(|t| SUBPROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(t)))
        .ok_or(refuse(400, UpgradeFailure::NoSubprotocol, "Sec-WebSocket-Protocol must offer mqtt (or mqttv3.1)"))?;
    Ok(Accepted { accept_key: key::accept_key(key.as_bytes()), protocol: protocol.to_owned() })
}

pub(crate) enum HeadError {
    TooLarge,
    Closed,
    Io,
}

/// Reads until the end of an HTTP head (a request's, or an answer's: the upgrade client and the readiness check
/// read theirs with it). Returns everything read and the head's length (bytes after it are the peer's first frames).
/// Never holds more than [`MAX_UPGRADE_REQUEST`] plus one read.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let end = buf.get(from..).and_then(|t| t.windows(4).position(|w| w == b"\r\n\r\n")).map(|i| from + i + 4);
        match end {
            Some(end) if end <= MAX_UPGRADE_REQUEST => return Ok((buf, end)),
            Some(_) => return Err(HeadError::TooLarge),
            None if buf.len() >= MAX_UPGRADE_REQUEST => return Err(HeadError::TooLarge),
            None => {}
        }
    }
}

/// Sends an error answer and closes, each step bounded by [`ANSWER_TIMEOUT`]. The client's unread bytes are
/// drained (at most [`LINGER_BYTES`]) until it closes too, so that our close does not turn into a reset that
/// could destroy the answer before the client reads it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, refusal: &UpgradeRefusal) {
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        s.write_all(refusal.response().as_bytes()).await?;
        s.flush().await
    })
    .await;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, s.shutdown()).await;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut sink = [0u8; 2048];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Most bytes read and dropped while waiting for a refused client to close.
const LINGER_BYTES: usize = 64 * 1024;

/// Upgrades a client connection per `policy`. On refusal the client has been answered and closed; the error says
/// why (the metrics reason).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    policy: &UpgradePolicy,
) -> Result<WsIo<S>, UpgradeFailure> {
    let deadline = Instant::now() + policy.timeout;
    let (mut buf, end) = match tokio::time::timeout_at(deadline, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Closed)) => return Err(UpgradeFailure::ClosedBeforeUpgrade),
        Ok(Err(HeadError::Io)) => return Err(UpgradeFailure::Io),
        Ok(Err(HeadError::TooLarge)) => {
            answer(&mut stream, &TOO_LARGE).await;
            return Err(TOO_LARGE.reason);
        }
        Err(_) => {
            answer(&mut stream, &TIMEOUT).await;
            return Err(TIMEOUT.reason);
        }
    };
    let accepted = match check_request(buf.get(..end).unwrap_or_default(), policy) {
        Ok(a) => a,
        Err(refusal) => {
            answer(&mut stream, &refusal).await;
            return Err(refusal.reason);
        }
    };
    let sent = tokio::time::timeout_at(deadline, async {
        stream.write_all(accepted.response().as_bytes()).await?;
        stream.flush().await
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(UpgradeFailure::Io),
        Err(_) => return Err(TIMEOUT.reason),
    }
    let early_frames = buf.split_off(end);
    Ok(WsIo::new(stream, stream::Role::Server, early_frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UpgradePolicy {
        UpgradePolicy {
            path: "/mqtt".into(),
            allowed_origins: vec!["https://maps.example.org".into()],
            timeout: Duration::from_secs(1),
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut r = lines.join("\r\n");
        r.push_str("\r\n\r\n");
        r.into_bytes()
    }

    fn good(extra: &[&str]) -> Vec<u8> {
        let mut lines = vec![
            "GET /mqtt HTTP/1.1",
            "Host: lb.example.org",
            "Upgrade: websocket",
            "Connection: keep-alive, Upgrade",
            "Sec-WebSocket-Version: 13",
        ];
        let key = format!("Sec-WebSocket-Key: {KEY}");
        lines.push(&key);
        lines.extend_from_slice(extra);
        request(&lines)
    }

    #[test]
    fn accepts_mqtt_and_derives_the_key() {
        let a = check_request(&good(&["Sec-WebSocket-Protocol: mqtt"]), &policy()).unwrap();
        // The example of RFC 6455 section 1.3.
        assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, "mqtt");
        assert!(a.response().contains("Sec-WebSocket-Protocol: mqtt\r\n"));
    }

    #[test]
    fn subprotocol_choice_follows_the_client() {
        let p = policy();
        let a = check_request(&good(&["Sec-WebSocket-Protocol: chat, mqttv3.1", "Sec-WebSocket-Protocol: mqtt"]), &p);
        assert_eq!(a.unwrap().protocol, "mqttv3.1");
        let a = check_request(&good(&["Sec-WebSocket-Protocol: MQTT"]), &p).unwrap();
        assert_eq!(a.protocol, "MQTT", "echoed as written");
        let r = check_request(&good(&["Sec-WebSocket-Protocol: chat"]), &p).unwrap_err();
        assert_eq!((r.status, r.reason.label()), (400, "ws_no_subprotocol"));
        let r = check_request(&good(&[]), &p).unwrap_err();
        assert_eq!((r.status, r.reason.label()), (400, "ws_no_subprotocol"));
    }

    #[test]
    fn refusals() {
        let p = policy();
        let proto = "Sec-WebSocket-Protocol: mqtt";
        let cases: &[(Vec<u8>, u16, &str)] = &[
            (String::from_utf8(good(&[proto])).unwrap().replace("/mqtt", "/other").into_bytes(), 404, "ws_bad_path"),
            (String::from_utf8(good(&[proto])).unwrap().replace("GET", "POST").into_bytes(), 400, "ws_bad_upgrade"),
            (
                String::from_utf8(good(&[proto])).unwrap().replace("HTTP/1.1", "HTTP/1.0").into_bytes(),
                400,
                "ws_bad_upgrade",
            ),
            (
                String::from_utf8(good(&[proto])).unwrap().replace("Upgrade: websocket\r\n", "").into_bytes(),
                400,
                "ws_bad_upgrade",
            ),
            (
                String::from_utf8(good(&[proto])).unwrap().replace("keep-alive, Upgrade", "keep-alive").into_bytes(),
                400,
                "ws_bad_upgrade",
            ),
            (String::from_utf8(good(&[proto])).unwrap().replace(KEY, "short==").into_bytes(), 400, "ws_bad_upgrade"),
            (
                String::from_utf8(good(&[proto])).unwrap().replace("Version: 13", "Version: 8").into_bytes(),
                426,
                "ws_bad_upgrade",
            ),
            (good(&[proto, "Origin: https://evil.example.com"]), 403, "ws_origin"),
            (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400, "ws_bad_upgrade"),
        ];
        for (req, status, reason) in cases {
            let r = check_request(req, &p).unwrap_err();
            assert_eq!((r.status, r.reason.label()), (*status, *reason), "{}", String::from_utf8_lossy(req));
            assert!(r.response().starts_with(&format!("HTTP/1.1 {status} ")));
        }
        // A query string is not part of the path; an allowed origin passes in any case; no origin passes.
        let ok = String::from_utf8(good(&[proto, "Origin: HTTPS://Maps.Example.org"]))
            .unwrap()
            .replace("/mqtt", "/mqtt?x=1");
        assert!(check_request(ok.as_bytes(), &p).is_ok());
        assert!(check_request(&good(&[proto]), &p).is_ok());
    }

    #[tokio::test]
    async fn oversized_and_slow_requests_are_answered() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { accept(server, &policy()).await.err().map(UpgradeFailure::label) });
        let mut big = b"GET /mqtt HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_UPGRADE_REQUEST));
        client.write_all(&big).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert_eq!(task.await.unwrap(), Some("ws_upgrade_too_large"));

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut p = policy();
        p.timeout = Duration::from_millis(50);
        let task = tokio::spawn(async move { accept(server, &p).await.err().map(UpgradeFailure::label) });
        client.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert_eq!(task.await.unwrap(), Some("ws_upgrade_timeout"));
    }
}
