//! CoAP over UDP (RFC 7252 §3): the message format checks of the front door, the LwM2M endpoint name of a
//! Register request, and the CoAP ping used as a health probe.
//!
//! A datagram is checked against the message format only: version, token length (RFC 8974 extended lengths
//! included), option headers (no reserved nibble 15, no option running past the end), payload marker followed by a
//! payload, and an Empty message (code 0.00) being exactly 4 bytes. Codes and option numbers are not judged: a
//! server may know options the front door does not.

use std::net::SocketAddr;

use tokio::net::{ToSocketAddrs, UdpSocket};

/// Message types (the `T` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Confirmable = 0,
    NonConfirmable = 1,
    Acknowledgement = 2,
    Reset = 3,
}

impl MessageType {
    fn from_bits(bits: u8) -> MessageType {
        match bits & 0x03 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        }
    }
}

/// Why a datagram is not a well-formed CoAP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the 4-byte header")]
    TooShort,
    #[error("version {0} (only 1 exists; RFC 7252 says to ignore others silently)")]
    Version(u8),
    #[error("reserved token length {0}")]
    TokenLength(u8),
    #[error("the token runs past the end")]
    TruncatedToken,
    #[error("an option header uses the reserved value 15")]
    ReservedOptionNibble,
    #[error("an option runs past the end")]
    TruncatedOption,
    #[error("option number overflow")]
    OptionNumber,
    #[error("payload marker without a payload")]
    EmptyPayload,
    #[error("an Empty message (code 0.00) carries a token, options or a payload")]
    EmptyWithContent,
}

/// The parts of a well-formed CoAP message the front door looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: MessageType,
    /// `class << 5 | detail`: 0.00 Empty, 0.01 GET, 0.02 POST, 2.05 Content, ...
    pub code: u8,
    pub message_id: u16,
    pub token: &'a [u8],
    /// The options (validated), then the payload marker and payload if any.
    rest: &'a [u8],
}

/// CoAP method codes used here.
pub const CODE_EMPTY: u8 = 0x00;
pub const CODE_POST: u8 = 0x02;
/// Option numbers used here.
pub const OPTION_URI_PATH: u16 = 11;
pub const OPTION_URI_QUERY: u16 = 15;

/// Whether the first byte of a datagram says CoAP version 1 (`01xx xxxx`).
pub fn is_version_1(first: u8) -> bool {
    first >> 6 == 1
}

/// Checks the message format of `datagram` (see the module docs).
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, Malformed> {
    let (header, after_header) = datagram.split_first_chunk::<4>().ok_or(Malformed::TooShort)?;
    let [first, code, id_hi, id_lo] = *header;
    let version = first >> 6;
    if version != 1 {
        return Err(Malformed::Version(version));
    }
    let kind = MessageType::from_bits(first >> 4);
    let message_id = u16::from_be_bytes([id_hi, id_lo]);
    if code == CODE_EMPTY {
        // RFC 7252 §3: an Empty message is the 4-byte header alone, with token length 0.
        return if first & 0x0F == 0 && after_header.is_empty() {
            Ok(Message { kind, code, message_id, token: &[], rest: &[] })
        } else {
            Err(Malformed::EmptyWithContent)
        };
    }
    // Token length, with the extended lengths of RFC 8974 (13: one more byte, 14: two more bytes; 9-12, 15 reserved).
    let (token_len, after_tkl) = match first & 0x0F {
        n @ 0..=8 => (usize::from(n), after_header),
        13 => {
            let (&b, rest) = after_header.split_first().ok_or(Malformed::TruncatedToken)?;
            (usize::from(b) + 13, rest)
        }
        14 => {
            let (b, rest) = after_header.split_first_chunk::<2>().ok_or(Malformed::TruncatedToken)?;
            (usize::from(u16::from_be_bytes(*b)) + 269, rest)
        }
        n => return Err(Malformed::TokenLength(n)),
    };
    let (token, rest) = after_tkl.split_at_checked(token_len).ok_or(Malformed::TruncatedToken)?;
    let message = Message { kind, code, message_id, token, rest };
    for option in message.options() {
        option?;
    }
    Ok(message)
}

impl<'a> Message<'a> {
    /// The options in order, as (number, value); an error ends the iteration.
    pub fn options(&self) -> Options<'a> {
        Options { rest: self.rest, number: 0, done: false }
    }

    /// The LwM2M endpoint name of a Register (POST `/rd?ep=...`) or Bootstrap-Request (POST `/bs?ep=...`), also a
    /// CoRE Resource Directory registration (RFC 9176, POST `/rd?ep=...`). None for any other message.
    pub fn register_endpoint(&self) -> Option<&'a [u8]> {
        if self.code != CODE_POST || !matches!(self.kind, MessageType::Confirmable | MessageType::NonConfirmable) {
            return None;
        }
        let mut path_segments = 0;
        let mut path_ok = false;
        let mut endpoint = None;
        for option in self.options() {
            let (number, value) = option.ok()?;
            match number {
                OPTION_URI_PATH => {
                    path_segments += 1;
                    path_ok = path_segments == 1 && (value == b"rd" || value == b"bs");
                }
                OPTION_URI_QUERY => {
                    if let Some(ep) = value.strip_prefix(b"ep=") {
                        endpoint = Some(ep);
                    }
                }
                _ => {}
            }
        }
        let ep = endpoint.filter(|ep| !ep.is_empty())?;
        (path_ok && path_segments == 1).then_some(ep)
    }
}

/// Iterator over the options of a message.
pub struct Options<'a> {
    rest: &'a [u8],
    number: u32,
    done: bool,
}

/// Reads the extended form of an option delta or length nibble.
fn extended(nibble: u8, rest: &[u8]) -> Result<(u32, &[u8]), Malformed> {
    match nibble {
        0..=12 => Ok((u32::from(nibble), rest)),
        13 => {
            let (&b, rest) = rest.split_first().ok_or(Malformed::TruncatedOption)?;
            Ok((u32::from(b) + 13, rest))
        }
        14 => {
            let (b, rest) = rest.split_first_chunk::<2>().ok_or(Malformed::TruncatedOption)?;
            Ok((u32::from(u16::from_be_bytes(*b)) + 269, rest))
        }
        _ => Err(Malformed::ReservedOptionNibble),
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (&head, rest) = self.rest.split_first()?;
        if head == 0xFF {
            self.done = true;
            return if rest.is_empty() { Some(Err(Malformed::EmptyPayload)) } else { None };
        }
        let step = || -> Result<(u16, &'a [u8], &'a [u8]), Malformed> {
            let (delta, rest) = extended(head >> 4, rest)?;
            let (length, rest) = extended(head & 0x0F, rest)?;
            let number = self.number.checked_add(delta).filter(|n| *n <= u32::from(u16::MAX));
            let number = number.and_then(|n| u16::try_from(n).ok()).ok_or(Malformed::OptionNumber)?;
            let length = usize::try_from(length).map_err(|_| Malformed::TruncatedOption)?;
            let (value, rest) = rest.split_at_checked(length).ok_or(Malformed::TruncatedOption)?;
            Ok((number, value, rest))
        };
        match step() {
            Ok((number, value, rest)) => {
                self.number = u32::from(number);
                self.rest = rest;
                Some(Ok((number, value)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A CoAP ping: an Empty Confirmable message (RFC 7252 §4.3).
pub fn ping_message(message_id: u16) -> [u8; 4] {
    let [hi, lo] = message_id.to_be_bytes();
    [0x40, CODE_EMPTY, hi, lo]
}

/// The Reset that rejects a Confirmable message with this message id.
pub fn reset_message(message_id: u16) -> [u8; 4] {
    let [hi, lo] = message_id.to_be_bytes();
    [0x70, CODE_EMPTY, hi, lo]
}

/// The message id of a Confirmable datagram whose header is readable (version 1), whatever the rest: the
/// message id a Reset for a malformed message must carry (RFC 7252 §4.2).
pub fn confirmable_message_id(datagram: &[u8]) -> Option<u16> {
    let &[first, _, hi, lo] = datagram.first_chunk::<4>()?;
    (is_version_1(first) && MessageType::from_bits(first >> 4) == MessageType::Confirmable)
        .then(|| u16::from_be_bytes([hi, lo]))
}

/// A message id for a probe: different from one probe to the next, whatever the clock.
fn probe_message_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // Truncation keeps the low bits of the clock, mixed with a counter.
    (nanos as u16) ^ NEXT.fetch_add(0x9E37, Ordering::Relaxed)
}

/// Why a UDP probe (CoAP ping, DTLS hello) failed; the health checks turn it into their own error.
#[derive(Debug, thiserror::Error)]
pub enum UdpProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// An answer of the wrong kind.
    #[error("{0}")]
    Answer(String),
}

/// A UDP socket of a probe, connected to `address`: a socket address (the health checks pass the server's
/// resolved one, so no DNS here), or a `host:port` text, looked up now.
pub(crate) async fn probe_socket(address: impl ToSocketAddrs) -> Result<UdpSocket, UdpProbeError> {
    let target = tokio::net::lookup_host(address)
        .await
        .map_err(UdpProbeError::Connect)?
        .next()
        .ok_or_else(|| UdpProbeError::Connect(std::io::Error::other("the name has no address")))?;
    let local: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await.map_err(UdpProbeError::Connect)?;
    socket.connect(target).await.map_err(UdpProbeError::Connect)?;
    Ok(socket)
}

/// One CoAP ping of `address` (a socket address, or `host:port`): a Confirmable Empty message, answered by a Reset with the same
/// message id. Other datagrams are ignored; the caller bounds the wait. An ICMP port unreachable shows as an
/// I/O error (connection refused).
pub async fn ping(address: impl ToSocketAddrs) -> Result<(), UdpProbeError> {
    let socket = probe_socket(address).await?;
    let id = probe_message_id();
    socket.send(&ping_message(id)).await.map_err(UdpProbeError::Io)?;
    let mut buf = [0u8; 64];
    loop {
        let n = socket.recv(&mut buf).await.map_err(UdpProbeError::Io)?;
        let answer = buf.get(..n).unwrap_or_default();
        match parse(answer) {
            Ok(m) if m.message_id == id && m.kind == MessageType::Reset => return Ok(()),
            Ok(m) if m.message_id == id => {
                return Err(UdpProbeError::Answer(format!("answered the ping with {:?}, not a Reset", m.kind)))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET /time, CON, message id 0x1234, token [0xAB].
    const GET_TIME: &[u8] = &[0x41, 0x01, 0x12, 0x34, 0xAB, 0xB4, b't', b'i', b'm', b'e'];

    #[test]
    fn parses_a_get() {
        let m = parse(GET_TIME).unwrap();
        assert_eq!(m.kind, MessageType::Confirmable);
        assert_eq!(m.code, 0x01);
        assert_eq!(m.message_id, 0x1234);
        assert_eq!(m.token, &[0xAB]);
        let opts: Vec<_> = m.options().map(Result::unwrap).collect();
        assert_eq!(opts, vec![(OPTION_URI_PATH, &b"time"[..])]);
        assert_eq!(m.register_endpoint(), None);
    }

    /// POST with Uri-Path segments and Uri-Query items, then a payload.
    fn post(paths: &[&str], queries: &[&str], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x42, CODE_POST, 0x00, 0x07, 0x01, 0x02];
        let mut last = 0u16;
        let mut put = |number: u16, value: &[u8]| {
            let delta = number - last;
            last = number;
            assert!(delta < 269 && value.len() < 269);
            let nibble = |n: usize| if n < 13 { (n as u8, None) } else { (13, Some((n - 13) as u8)) };
            let (d, d_ext) = nibble(usize::from(delta));
            let (l, l_ext) = nibble(value.len());
            out.push(d << 4 | l);
            out.extend(d_ext);
            out.extend(l_ext);
            out.extend_from_slice(value);
        };
        for p in paths {
            put(OPTION_URI_PATH, p.as_bytes());
        }
        for q in queries {
            put(OPTION_URI_QUERY, q.as_bytes());
        }
        if !payload.is_empty() {
            out.push(0xFF);
            out.extend_from_slice(payload);
        }
        out
    }

    #[test]
    fn register_endpoint_of_lwm2m_register_and_bootstrap() {
        let reg = post(&["rd"], &["lwm2m=1.1", "ep=urn:imei:490154203237518", "lt=300", "b=U"], b"</1/0>");
        assert_eq!(parse(&reg).unwrap().register_endpoint(), Some(&b"urn:imei:490154203237518"[..]));
        let bs = post(&["bs"], &["ep=dev-1"], b"");
        assert_eq!(parse(&bs).unwrap().register_endpoint(), Some(&b"dev-1"[..]));
        // An Update (POST /rd/<location>) carries no ep=, a POST elsewhere is not a Register.
        for other in [
            post(&["rd", "5a3f"], &["lt=300"], b""),
            post(&["rd", "5a3f"], &["ep=dev-1"], b""),
            post(&["rdx"], &["ep=dev-1"], b""),
            post(&[], &["ep=dev-1"], b""),
            post(&["rd"], &["ep="], b""),
            post(&["rd"], &["lt=300"], b""),
        ] {
            assert_eq!(parse(&other).unwrap().register_endpoint(), None, "{other:02x?}");
        }
        // A GET with the same options is not a Register.
        let mut get = post(&["rd"], &["ep=dev-1"], b"");
        get[1] = 0x01;
        assert_eq!(parse(&get).unwrap().register_endpoint(), None);
    }

    #[test]
    fn format_errors() {
        let cases: &[(&[u8], Malformed)] = &[
            (&[0x40, 0x01, 0x00], Malformed::TooShort),
            (&[0x81, 0x01, 0x00, 0x01, 0xAA], Malformed::Version(2)),
            (&[0x09, 0x01, 0x00, 0x01], Malformed::Version(0)),
            (&[0x49, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9], Malformed::TokenLength(9)),
            (&[0x4F, 0x01, 0x00, 0x01], Malformed::TokenLength(15)),
            (&[0x44, 0x01, 0x00, 0x01, 0xAA], Malformed::TruncatedToken),
            (&[0x4D, 0x01, 0x00, 0x01], Malformed::TruncatedToken),
            (&[0x40, 0x01, 0x00, 0x01, 0xF1, 0x00], Malformed::ReservedOptionNibble),
            (&[0x40, 0x01, 0x00, 0x01, 0x1F], Malformed::ReservedOptionNibble),
            (&[0x40, 0x01, 0x00, 0x01, 0xB4, b't', b'i'], Malformed::TruncatedOption),
            (&[0x40, 0x01, 0x00, 0x01, 0xD0], Malformed::TruncatedOption),
            (&[0x40, 0x01, 0x00, 0x01, 0xFF], Malformed::EmptyPayload),
            (&[0x40, 0x00, 0x00, 0x01, 0xFF, 0x01], Malformed::EmptyWithContent),
            (&[0x41, 0x00, 0x00, 0x01, 0xAA], Malformed::EmptyWithContent),
            // 65535 + 269 is past the largest option number.
            (&[0x40, 0x01, 0x00, 0x01, 0xE0, 0xFF, 0xFF, 0xE0, 0xFF, 0xFF], Malformed::OptionNumber),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(bytes).err(), Some(*want), "{bytes:02x?}");
        }
    }

    #[test]
    fn extended_tokens_and_options() {
        // RFC 8974: TKL 13 then one byte: token length 13 + 2 = 15.
        let mut m = vec![0x4D, 0x01, 0x00, 0x01, 0x02];
        m.extend_from_slice(&[0x11; 15]);
        // Option 11 with a 20-byte value (length nibble 13, then 7).
        m.push(0xBD);
        m.push(7);
        m.extend_from_slice(&[b'x'; 20]);
        m.extend_from_slice(&[0xFF, b'!']);
        let parsed = parse(&m).unwrap();
        assert_eq!(parsed.token.len(), 15);
        let opts: Vec<_> = parsed.options().map(Result::unwrap).collect();
        assert_eq!(opts, vec![(OPTION_URI_PATH, &[b'x'; 20][..])]);
    }

    #[test]
    fn ping_and_reset() {
        let ping = ping_message(0xBEEF);
        let m = parse(&ping).unwrap();
        assert_eq!((m.kind, m.code, m.message_id), (MessageType::Confirmable, CODE_EMPTY, 0xBEEF));
        let rst = reset_message(0xBEEF);
        let rst = parse(&rst).unwrap();
        assert_eq!((rst.kind, rst.message_id), (MessageType::Reset, 0xBEEF));
        assert_eq!(confirmable_message_id(&[0x40, 0x01, 0xBE, 0xEF, 0xF1]), Some(0xBEEF));
        assert_eq!(confirmable_message_id(&[0x50, 0x01, 0xBE, 0xEF]), None, "NON");
        assert_eq!(confirmable_message_id(&[0x80, 0x01, 0xBE, 0xEF]), None, "version 2");
        assert_ne!(probe_message_id(), probe_message_id());
    }

    #[tokio::test]
    async fn ping_a_udp_responder() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let responder = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let id = parse(&buf[..n]).unwrap().message_id;
            // A stray datagram first, then the Reset.
            server.send_to(&reset_message(id.wrapping_add(1)), from).await.unwrap();
            server.send_to(&reset_message(id), from).await.unwrap();
        });
        tokio::time::timeout(std::time::Duration::from_secs(2), ping(&addr.to_string())).await.unwrap().unwrap();
        responder.await.unwrap();
    }
}
