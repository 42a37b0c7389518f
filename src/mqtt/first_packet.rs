//! Reading a client's first packet off the wire: whole, under a size cap, refused as early as its first bytes allow.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::connect::{sniff_version, ConnectError, RejectReason};
use super::frame::{check_fixed_header, FrameError};
use super::version::ProtocolVersion;

/// Why the first packet could not be read.
#[derive(Debug)]
pub enum FirstPacketError {
    /// A validation failure seen before the packet was complete.
    Invalid(ConnectError),
    /// The declared or buffered size is over the cap, with the version when the bytes read so far name it.
    TooLarge(Option<ProtocolVersion>),
    /// The client closed before the packet was complete.
    Closed,
    /// A read failed.
    Io(std::io::Error),
}

fn invalid(reason: RejectReason, detail: &'static str) -> FirstPacketError {
    FirstPacketError::Invalid(ConnectError { reason, version: None, detail })
}

/// The most [`read_first_packet`] reads at once.
const READ_CHUNK: usize = 2048;

/// Reads until the first packet is complete. Returns the bytes read (the packet and anything the client sent after
/// it) and the packet's length. Refuses early: a first byte that is not CONNECT, a declared size over `max`. The
/// buffer never holds more than `max` plus one read chunk.
pub async fn read_first_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<(Vec<u8>, usize), FirstPacketError> {
    // One chunk from the start: the first read grows the buffer to a chunk anyway, and a smaller start would
    // cost every connection a reallocation.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        if let Some(&first) = buf.first() {
            if first >> 4 != 1 {
                return Err(invalid(RejectReason::NotConnect, "the first packet is not CONNECT"));
            }
        }
        match check_fixed_header(&buf) {
            Ok(h) if h.total_len() > max => return Err(FirstPacketError::TooLarge(sniff_version(&buf))),
            Ok(h) if buf.len() >= h.total_len() => return Ok((buf, h.total_len())),
            Ok(_) | Err(FrameError::Incomplete(_)) => {}
            Err(FrameError::MalformedRemainingLength) => {
                return Err(invalid(RejectReason::MalformedLength, "remaining length"))
            }
        }
        if buf.len() > max {
            return Err(FirstPacketError::TooLarge(sniff_version(&buf)));
        }
        // Straight into `buf`: a chunk array held across this await would be part of every session's task (whose
        // size is that of its largest state) for the whole life of the connection.
        let filled = buf.len();
        buf.resize(filled + READ_CHUNK, 0);
        let n = s.read(buf.get_mut(filled..).unwrap_or_default()).await.map_err(FirstPacketError::Io)?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(FirstPacketError::Closed);
        }
    }
}
