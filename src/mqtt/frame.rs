//! MQTT wire framing: the fixed header, Variable Byte Integers, and a
//! crate-internal zero-copy cursor (`Reader`) over the MQTT data
//! representations (MQTT 3.1.1 §1.5 / §2.2, MQTT 5 §1.5 / §2.1).
//!
//! Nothing here panics or allocates on input data: every read goes through
//! checked slicing and reports an error (`ReadError`, [`FrameError`]) instead.

/// Largest value a Variable Byte Integer can carry (four 7-bit groups).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A Variable Byte Integer uses at most this many bytes (MQTT 3.1.1 §2.2.3).
const MAX_VARINT_BYTES: usize = 4;

/// Low seven bits of a Variable Byte Integer byte carry data.
const VARINT_VALUE_MASK: u8 = 0x7F;

/// High bit of a Variable Byte Integer byte: "more bytes follow".
const VARINT_CONTINUATION: u8 = 0x80;

/// The fixed header of the packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// The decoded Remaining Length: bytes after the fixed header.
    pub remaining_length: usize,
    /// Bytes taken by the fixed header itself (2..=5).
    pub header_len: usize,
}

impl FixedHeader {
    /// MQTT Control Packet type (1 = CONNECT, 2 = CONNACK, ...).
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// Flags specific to the packet type (low nibble of the first byte).
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0F
    }

    /// Length of the whole packet: fixed header plus Remaining Length.
    pub fn total_len(&self) -> usize {
        self.header_len.saturating_add(self.remaining_length)
    }
}

/// Why a fixed header (or another Variable Byte Integer) could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More bytes are needed; the value is a lower bound on how many more (>= 1).
    #[error("incomplete: {0} more bytes needed")]
    Incomplete(usize),
    /// Remaining Length longer than 4 bytes or not minimally encoded.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
}

/// Parses the fixed header (1 byte + 1..=4 byte Remaining Length) at the start of `buf`.
///
/// Only the header is examined: the result may describe a packet whose body
/// has not fully arrived yet. Callers wait until `buf.len() >= total_len()`
/// (and can refuse an oversized `remaining_length` before buffering it).
pub fn check_fixed_header(buf: &[u8]) -> Result<FixedHeader, FrameError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        // The shortest fixed header is two bytes: type byte + one length byte.
        return Err(FrameError::Incomplete(2));
    };
    let (remaining_length, length_bytes) = decode_varint(rest)?;
    Ok(FixedHeader { first_byte, remaining_length, header_len: 1 + length_bytes })
}

/// Encodes a Variable Byte Integer (MQTT Remaining Length); None if > 268_435_455.
///
/// Always produces the minimal encoding, as required by [MQTT-1.5.5-1] (v5).
pub fn encode_remaining_length(len: usize, out: &mut Vec<u8>) -> Option<()> {
    if len > MAX_REMAINING_LENGTH {
        return None;
    }
    let mut rest = len;
    loop {
        let mut byte = u8::try_from(rest % 128).ok()?;
        rest /= 128;
        if rest > 0 {
            byte |= VARINT_CONTINUATION;
        }
        out.push(byte);
        if rest == 0 {
            return Some(());
        }
    }
}

/// Decodes a Variable Byte Integer at the start of buf: Ok((value, bytes_used)); same errors as above.
///
/// Rejects encodings longer than four bytes (MQTT 3.1.1 §2.2.3) and
/// non-minimal encodings, i.e. a final byte of zero after a continuation
/// byte [MQTT-1.5.5-1].
pub fn decode_varint(buf: &[u8]) -> Result<(usize, usize), FrameError> {
    let mut value: u32 = 0;
    for (index, &byte) in buf.iter().take(MAX_VARINT_BYTES).enumerate() {
        let shift = 7 * u32::try_from(index).map_err(|_| FrameError::MalformedRemainingLength)?;
        value |= u32::from(byte & VARINT_VALUE_MASK) << shift;
        if byte & VARINT_CONTINUATION == 0 {
            if index > 0 && byte == 0 {
                return Err(FrameError::MalformedRemainingLength);
            }
            let value = usize::try_from(value).map_err(|_| FrameError::MalformedRemainingLength)?;
            return Ok((value, index + 1));
        }
    }
    if buf.len() >= MAX_VARINT_BYTES {
        // Four bytes seen and the last one still says "more follow".
        Err(FrameError::MalformedRemainingLength)
    } else {
        Err(FrameError::Incomplete(1))
    }
}

/// Why a [`Reader`] could not produce a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The value runs past the end of the buffer.
    Eof,
    /// A UTF-8 Encoded String is ill-formed or contains U+0000
    /// [MQTT-1.5.3-1] [MQTT-1.5.3-2].
    BadUtf8,
    /// A Variable Byte Integer is longer than four bytes or not minimal.
    BadVarint,
}

/// A forward-only cursor over borrowed packet bytes.
///
/// Each method consumes exactly the bytes of one MQTT data representation
/// and returns a value borrowing from the input (zero-copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// True once every byte has been consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(ReadError::Eof)?;
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        <[u8; N]>::try_from(self.bytes(N)?).map_err(|_| ReadError::Eof)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, ReadError> {
        let [byte] = self.array()?;
        Ok(byte)
    }

    /// Two Byte Integer, big-endian (MQTT 5 §1.5.2).
    pub(crate) fn u16(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Four Byte Integer, big-endian (MQTT 5 §1.5.3).
    pub(crate) fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Variable Byte Integer (MQTT 5 §1.5.5).
    pub(crate) fn varint(&mut self) -> Result<usize, ReadError> {
        let (value, used) = decode_varint(self.buf).map_err(|e| match e {
            FrameError::Incomplete(_) => ReadError::Eof,
            FrameError::MalformedRemainingLength => ReadError::BadVarint,
        })?;
        self.bytes(used)?;
        Ok(value)
    }

    /// Binary Data: a Two Byte Integer length, then that many bytes (MQTT 5 §1.5.6).
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], ReadError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// UTF-8 Encoded String: like [`Reader::binary`], but the bytes must be
    /// well-formed UTF-8 [MQTT-1.5.3-1] without U+0000 [MQTT-1.5.3-2].
    pub(crate) fn utf8_string(&mut self) -> Result<&'a str, ReadError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(raw).map_err(|_| ReadError::BadUtf8)?;
        if text.contains('\0') {
            return Err(ReadError::BadUtf8);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        assert_eq!(encode_remaining_length(len, &mut out), Some(()));
        out
    }

    #[test]
    fn varint_boundaries_round_trip_with_minimal_length() {
        let cases = [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_REMAINING_LENGTH, 4),
        ];
        for (value, width) in cases {
            let bytes = encode(value);
            assert_eq!(bytes.len(), width, "width of {value}");
            assert_eq!(decode_varint(&bytes), Ok((value, width)), "value {value}");
        }
    }

    #[test]
    fn varint_spec_examples() {
        assert_eq!(encode(64), [0x40]);
        assert_eq!(encode(321), [0xC1, 0x02]);
        assert_eq!(encode(MAX_REMAINING_LENGTH), [0xFF, 0xFF, 0xFF, 0x7F]);
    }

    #[test]
    fn encode_refuses_values_above_maximum() {
        let mut out = vec![0xAA];
        assert_eq!(encode_remaining_length(MAX_REMAINING_LENGTH + 1, &mut out), None);
        assert_eq!(encode_remaining_length(usize::MAX, &mut out), None);
        assert_eq!(out, [0xAA], "nothing written on refusal");
    }

    #[test]
    fn decode_ignores_bytes_after_the_integer() {
        assert_eq!(decode_varint(&[0x05, 0xFF, 0xFF]), Ok((5, 1)));
        assert_eq!(decode_varint(&[0x80, 0x01, 0x00]), Ok((128, 2)));
    }

    #[test]
    fn decode_rejects_five_byte_encoding() {
        assert_eq!(decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), Err(FrameError::MalformedRemainingLength));
        // Already malformed once four continuation bytes are seen.
        assert_eq!(decode_varint(&[0x80, 0x80, 0x80, 0x80]), Err(FrameError::MalformedRemainingLength));
    }

    #[test]
    fn decode_rejects_non_minimal_encoding() {
        for bytes in [&[0x80, 0x00][..], &[0x81, 0x00], &[0xFF, 0x80, 0x00], &[0x80, 0x80, 0x80, 0x00]] {
            assert_eq!(decode_varint(bytes), Err(FrameError::MalformedRemainingLength), "{bytes:02X?}");
        }
    }

    #[test]
    fn decode_reports_incomplete() {
        assert_eq!(decode_varint(&[]), Err(FrameError::Incomplete(1)));
        assert_eq!(decode_varint(&[0x80]), Err(FrameError::Incomplete(1)));
        assert_eq!(decode_varint(&[0xFF, 0xFF, 0xFF]), Err(FrameError::Incomplete(1)));
    }

    #[test]
    fn fixed_header_fields() {
        let header = check_fixed_header(&[0x10, 0xC1, 0x02, 0x00]).expect("valid header");
        assert_eq!(header, FixedHeader { first_byte: 0x10, remaining_length: 321, header_len: 3 });
        assert_eq!(header.packet_type(), 1);
        assert_eq!(header.flags(), 0);
        assert_eq!(header.total_len(), 324);

        let publish = check_fixed_header(&[0x3B, 0x00]).expect("valid header");
        assert_eq!(publish.packet_type(), 3);
        assert_eq!(publish.flags(), 0x0B);
        assert_eq!(publish.total_len(), 2);
    }

    #[test]
    fn fixed_header_incomplete() {
        assert_eq!(check_fixed_header(&[]), Err(FrameError::Incomplete(2)));
        assert_eq!(check_fixed_header(&[0x10]), Err(FrameError::Incomplete(1)));
        assert_eq!(check_fixed_header(&[0x10, 0x80, 0x80]), Err(FrameError::Incomplete(1)));
    }

    #[test]
    fn fixed_header_malformed_length() {
        assert_eq!(
            check_fixed_header(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(FrameError::MalformedRemainingLength)
        );
        assert_eq!(check_fixed_header(&[0x10, 0x85, 0x00]), Err(FrameError::MalformedRemainingLength));
    }

    #[test]
    fn reader_integers_are_big_endian() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xC1, 0x02]);
        assert_eq!(r.u8(), Ok(0x01));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.varint(), Ok(321));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(ReadError::Eof));
    }

    #[test]
    fn reader_does_not_read_past_end() {
        assert_eq!(Reader::new(&[0x01]).u16(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0x01, 0x02, 0x03]).u32(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0x00, 0x03, b'a', b'b']).binary(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0x00]).binary(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[0x80, 0x00]).varint(), Err(ReadError::BadVarint));
        assert_eq!(Reader::new(&[1, 2]).bytes(3), Err(ReadError::Eof));
    }

    #[test]
    fn reader_binary_and_strings() {
        let mut r = Reader::new(&[0x00, 0x02, 0xFF, 0x00, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x00]);
        assert_eq!(r.binary(), Ok(&[0xFF, 0x00][..]));
        assert_eq!(r.utf8_string(), Ok("a/b"));
        assert_eq!(r.utf8_string(), Ok(""));
        assert!(r.is_empty());
    }

    #[test]
    fn reader_rejects_bad_utf8_strings() {
        let cases: [&[u8]; 5] = [
            &[0x00, 0x01, 0x00],             // U+0000
            &[0x00, 0x02, 0xC0, 0x80],       // overlong U+0000
            &[0x00, 0x03, 0xED, 0xA0, 0x80], // UTF-16 surrogate
            &[0x00, 0x01, 0xFF],             // never valid
            &[0x00, 0x02, 0xE2, 0x82],       // truncated sequence
        ];
        for bytes in cases {
            assert_eq!(Reader::new(bytes).utf8_string(), Err(ReadError::BadUtf8), "{bytes:02X?}");
        }
    }

    #[test]
    fn short_binary_leaves_its_body_unread() {
        let mut r = Reader::new(&[0x00, 0x05, b'x']);
        assert_eq!(r.binary(), Err(ReadError::Eof));
        // The length prefix was consumed, the short body was not.
        assert_eq!(r.bytes(1), Ok(&b"x"[..]));
    }
}
