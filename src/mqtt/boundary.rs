//! Packet boundaries in a stream of MQTT packets, followed byte by byte without buffering (the relay stops a
//! direction at a boundary so that a client never gets half a packet).

/// Follows MQTT packet boundaries in a byte stream (fixed header: one byte, then a Remaining Length of at most 4
/// bytes, then that many bytes).
#[derive(Debug, Default, Clone)]
pub struct PacketTracker {
    /// Inside a fixed header: its first byte was seen, its length is not complete.
    in_header: bool,
    length: usize,
    length_bytes: u32,
    /// Body bytes of the current packet still to come.
    remaining: usize,
}

impl PacketTracker {
    pub fn feed(&mut self, mut data: &[u8]) {
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

    pub fn at_boundary(&self) -> bool {
        !self.in_header && self.remaining == 0
    }

    /// The most that can be read without crossing the next boundary.
    pub fn to_boundary(&self) -> usize {
        if self.in_header {
            1
        } else {
            self.remaining
        }
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
