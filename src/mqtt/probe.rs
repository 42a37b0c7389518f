//! The bytes of the `mqtt` health check: its CONNECT (MQTT 3.1.1, clean session) and the reading of the answer.

use super::frame::encode_remaining_length;

/// Length of the CONNACK an MQTT 3.1.1 broker answers with.
pub const CONNACK_LEN: usize = 4;

/// What a broker answered to the probe's CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// CONNACK with return code 0.
    Accepted,
    /// CONNACK with this non-zero return code.
    Refused(u8),
    /// Not a CONNACK.
    NotConnack,
}

/// Reads the broker's first [`CONNACK_LEN`] bytes.
pub fn probe_answer(answer: [u8; CONNACK_LEN]) -> ProbeAnswer {
    match answer {
        [0x20, 0x02, _, 0x00] => ProbeAnswer::Accepted,
        [0x20, 0x02, _, code] => ProbeAnswer::Refused(code),
        _ => ProbeAnswer::NotConnack,
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.get(..usize::from(len)).unwrap_or_default());
}

/// A CONNECT (3.1.1, clean session, keep alive 10 s) with `client_id` and the optional credentials.
pub fn probe_connect_packet(client_id: &str, username: Option<&str>, password: Option<&str>) -> Vec<u8> {
    let mut flags = 0x02u8; // clean session
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, b"MQTT");
    body.push(4);
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&10u16.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some(u) = username {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = password {
        put_str(&mut body, p.as_bytes());
    }
    let mut packet = vec![0x10];
    let _ = encode_remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(&body);
    packet
}
