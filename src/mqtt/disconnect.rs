//! DISCONNECT packets: recognising the client's own (a clean end), and building the ones mqtt-lb sends.

/// Whether `bytes` are exactly one MQTT DISCONNECT packet (type 14, remaining length under 128).
pub fn is_disconnect(bytes: &[u8]) -> bool {
    matches!(bytes, [0xE0, len, ..] if *len < 0x80 && usize::from(*len) + 2 == bytes.len())
}

/// A DISCONNECT with no reason (MQTT 3.1 / 3.1.1, or MQTT 5 "normal disconnection" in its short form).
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// An MQTT 5 DISCONNECT with `reason` (0x8B server shutting down, 0x9C use another server) and no properties.
pub fn mqtt5_disconnect(reason: u8) -> Vec<u8> {
    vec![0xE0, 0x02, reason, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_one_whole_disconnect_only() {
        assert!(is_disconnect(&DISCONNECT));
        assert!(is_disconnect(&mqtt5_disconnect(0x8B)));
        assert!(!is_disconnect(&[0xE0]));
        assert!(!is_disconnect(&[0xE0, 0x00, 0xC0, 0x00]), "a DISCONNECT followed by more bytes");
        assert!(!is_disconnect(&[0xC0, 0x00]), "PINGREQ");
    }
}
