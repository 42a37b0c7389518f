//! The few MQTT 3.1.1 packets the load generator needs, written and read by hand so that the generator spends its
//! CPU on the network and TLS, not on a client library.

/// DISCONNECT: type 14, no body.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Bytes at the start of every benchmark payload: the send time (ns since the run's epoch) and a sequence number.
pub const STAMP_LEN: usize = 16;

/// Packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const SUBACK: u8 = 9;

fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, MQTT 3.1.1, clean session, no will, no credentials.
pub fn connect(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let body_len = 10 + 2 + client_id.len();
    let mut out = Vec::with_capacity(body_len + 5);
    out.push(0x10);
    put_remaining_length(&mut out, body_len);
    put_str(&mut out, "MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut out, client_id);
    out
}

/// SUBSCRIBE to one filter at QoS 0.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let body_len = 2 + 2 + filter.len() + 1;
    let mut out = Vec::with_capacity(body_len + 5);
    out.push(0x82);
    put_remaining_length(&mut out, body_len);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut out, filter);
    out.push(0);
    out
}

/// Appends a QoS 0 PUBLISH whose payload is `payload_len` bytes: the stamp (`sent_ns`, `seq`), then zeros.
pub fn put_publish(out: &mut Vec<u8>, topic: &str, payload_len: usize, sent_ns: u64, seq: u64) {
    let payload_len = payload_len.max(STAMP_LEN);
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload_len);
    put_str(out, topic);
    out.extend_from_slice(&sent_ns.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(out.len() + payload_len - STAMP_LEN, 0);
}

/// A complete packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The first byte (type and flags).
    pub first: u8,
    /// Where the body starts.
    pub header_len: usize,
    /// Header and body.
    pub total_len: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// The packet at the start of `buf`: `Ok(None)` while incomplete.
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, &'static str> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let header_len = 2 + i;
            let total_len = header_len + len;
            return Ok((buf.len() >= total_len).then_some(Frame { first, header_len, total_len }));
        }
    }
    Err("remaining length longer than 4 bytes")
}

/// The stamp of a QoS 0 PUBLISH body (topic, then payload): (sent_ns, seq).
pub fn publish_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let payload = body.get(2 + topic_len..)?;
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((sent, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip() {
        let mut out = Vec::new();
        put_publish(&mut out, "bench/1", 1024, 123_456, 7);
        let f = frame(&out).unwrap().unwrap();
        assert_eq!(f.kind(), PUBLISH);
        assert_eq!(f.total_len, out.len());
        assert_eq!(f.total_len - f.header_len, 2 + 7 + 1024);
        assert_eq!(publish_stamp(&out[f.header_len..f.total_len]), Some((123_456, 7)));
        assert_eq!(frame(&out[..out.len() - 1]).unwrap(), None);
    }

    #[test]
    fn connect_is_well_formed() {
        let c = connect("bench-1", 60);
        let f = frame(&c).unwrap().unwrap();
        assert_eq!(f.total_len, c.len());
        assert_eq!(&c[2..8], b"\x00\x04MQTT");
        assert_eq!(c[8], 4);
    }

    #[test]
    fn remaining_length_encoding() {
        for n in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut out = vec![0x30];
            put_remaining_length(&mut out, n);
            let mut buf = out.clone();
            buf.resize(out.len() + n, 0);
            assert_eq!(frame(&buf).unwrap().unwrap().total_len, buf.len(), "{n}");
        }
    }
}
