//! The WebSocket frame format (RFC 6455 section 5): a frame header read or written, and payload masking. Pure
//! functions over bytes; [`super::stream`] drives them over a connection.

/// Opcodes (RFC 6455 section 5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte masking key.
pub const MAX_HEADER: usize = 14;

/// The largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

/// Parses the header at the start of `b`: `Ok(None)` while incomplete, else the header and its length in bytes. An
/// error names the broken rule (every one a protocol error): reserved bits set (no extension is ever negotiated), a
/// 64-bit length with its most significant bit set, a fragmented or oversized control frame.
pub fn parse(b: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err("reserved bits set");
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => match b.get(2..4).and_then(|x| <[u8; 2]>::try_from(x).ok()) {
            Some(x) => (u64::from(u16::from_be_bytes(x)), 4),
            None => return Ok(None),
        },
        127 => match b.get(2..10).and_then(|x| <[u8; 8]>::try_from(x).ok()) {
            Some(x) if x[0] & 0x80 != 0 => return Err("64-bit length with the most significant bit set"),
            Some(x) => (u64::from_be_bytes(x), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    // Control frames (opcodes 0x8-0xF) are refused as soon as their length is known.
    if b0 & 0x08 != 0 && b0 & 0x80 == 0 {
        return Err("fragmented control frame");
    }
    if b0 & 0x08 != 0 && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err("control frame payload over 125 bytes");
    }
    let mask = if b1 & 0x80 != 0 {
        match b.get(at..at + 4).and_then(|x| <[u8; 4]>::try_from(x).ok()) {
            Some(m) => {
                at += 4;
                Some(m)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some((Header { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, mask, len }, at)))
}

/// Writes the header of a final frame (`opcode`, `len` bytes of payload, masked with `mask` if any) into `out`;
/// returns its length.
pub fn encode(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize, mask: Option<[u8; 4]>) -> usize {
    out[0] = 0x80 | (opcode & 0x0f);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = match len {
        0..=125 => {
            out[1] = mask_bit | len as u8;
            2
        }
        126..=0xffff => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let (Some(m), Some(key)) = (mask, out.get_mut(at..at + 4)) {
        key.copy_from_slice(&m);
        at += 4;
    }
    at
}

/// XORs `data` with `mask`, `offset` being the position of `data[0]` in the frame's payload (so a payload may be
/// unmasked in pieces as it arrives). Returns the offset after `data`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) -> usize {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        if let Ok(w) = <[u8; 4]>::try_from(&*c) {
            c.copy_from_slice(&(u32::from_ne_bytes(w) ^ word).to_ne_bytes());
        }
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
    offset.wrapping_add(data.len())
}

/// Whether `code` may be sent in a close frame (RFC 6455 section 7.4): the defined codes other than those reserved
/// for reporting (1004-1006, 1015), and the registered and private ranges.
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_for_every_length_form() {
        for (len, size) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10), (16 << 20, 10)] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = [0u8; MAX_HEADER];
                let n = encode(&mut out, OP_BINARY, len, mask);
                assert_eq!(n, size + if mask.is_some() { 4 } else { 0 });
                let (h, at) = parse(&out[..n]).unwrap().unwrap();
                assert_eq!((h, at), (Header { fin: true, opcode: OP_BINARY, mask, len: len as u64 }, n));
                // Every prefix is incomplete, never an error.
                for cut in 0..n {
                    assert_eq!(parse(&out[..cut]), Ok(None), "{len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn broken_headers_are_refused() {
        assert!(parse(&[0x82 | 0x40, 0x80]).is_err(), "RSV1");
        assert!(parse(&[0x82 | 0x10, 0x80]).is_err(), "RSV3");
        assert!(parse(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err(), "64-bit length, MSB set");
        assert!(parse(&[0x09, 0x80]).is_err(), "fragmented ping");
        assert!(parse(&[0x89, 0x80 | 126, 0, 126]).is_err(), "126-byte ping");
        assert!(parse(&[0x89, 0x80 | 125]).unwrap().is_none(), "125-byte ping: header incomplete, not refused");
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let plain: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = plain.clone();
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole[..5], [0x37, 0xfb, 0x23, 0x3e, 0x33][..]);
        for step in [1usize, 3, 5, 7, 64] {
            let mut pieces = plain.clone();
            let mut offset = 0;
            for c in pieces.chunks_mut(step) {
                offset = apply_mask(c, mask, offset);
            }
            assert_eq!(pieces, whole, "step {step}");
            apply_mask(&mut pieces, mask, 0);
            assert_eq!(pieces, plain, "masking twice restores");
        }
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1002, 1003, 1007, 1011, 3000, 4999] {
            assert!(close_code_valid(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1012, 1015, 2000, 5000] {
            assert!(!close_code_valid(bad), "{bad}");
        }
    }
}
