//! The Server Keep Alive of an MQTT 5 CONNACK (MQTT 5 section 3.2.2.3.14): a broker may tell the client to use
//! another keep-alive than the one its CONNECT asked for, and the client must then use that one. The relay reads it
//! from the broker's first packet to time its keep-alive deadline on the keep-alive actually in force.

use super::frame::Reader;

/// CONNACK property identifiers (MQTT 5 section 3.2.2.3), grouped by the type of their value.
const SERVER_KEEP_ALIVE: u8 = 0x13;
const BYTE_PROPERTIES: [u8; 5] = [0x24, 0x25, 0x28, 0x29, 0x2A];
const TWO_BYTE_PROPERTIES: [u8; 3] = [SERVER_KEEP_ALIVE, 0x21, 0x22];
const FOUR_BYTE_PROPERTIES: [u8; 2] = [0x11, 0x27];
/// UTF-8 strings and binary data: both a two-byte length, then the bytes.
const LENGTH_PREFIXED_PROPERTIES: [u8; 6] = [0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F];
const USER_PROPERTY: u8 = 0x26;

/// What a complete MQTT 5 CONNACK says about keep-alive: `Some(Some(s))` when it carries Server Keep Alive `s`,
/// `Some(None)` when it is a CONNACK without one, None when `packet` is not a well-formed CONNACK (then nothing is
/// assumed).
pub fn server_keep_alive(packet: &[u8]) -> Option<Option<u16>> {
    let mut r = Reader::new(packet);
    if r.u8().ok()? != 0x20 {
        return None;
    }
    let length = r.varint().ok()?;
    let mut body = Reader::new(r.bytes(length).ok()?);
    let _flags = body.u8().ok()?;
    let _reason = body.u8().ok()?;
    if body.is_empty() {
        return Some(None); // no property block (allowed when the remaining length is 2)
    }
    let block = body.varint().ok()?;
    let mut properties = Reader::new(body.bytes(block).ok()?);
    let mut found = None;
    while !properties.is_empty() {
        let id = properties.u8().ok()?;
        if id == SERVER_KEEP_ALIVE {
            found = Some(properties.u16().ok()?);
        } else if BYTE_PROPERTIES.contains(&id) {
            properties.u8().ok()?;
        } else if TWO_BYTE_PROPERTIES.contains(&id) {
            properties.u16().ok()?;
        } else if FOUR_BYTE_PROPERTIES.contains(&id) {
            properties.u32().ok()?;
        } else if LENGTH_PREFIXED_PROPERTIES.contains(&id) {
            properties.binary().ok()?;
        } else if id == USER_PROPERTY {
            properties.binary().ok()?;
            properties.binary().ok()?;
        } else {
            return None;
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connack(properties: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x00, properties.len() as u8];
        body.extend_from_slice(properties);
        let mut p = vec![0x20, body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn finds_server_keep_alive_among_other_properties() {
        // Receive Maximum 10, a user property, Server Keep Alive 2, Assigned Client Identifier "ab".
        let props = [0x21, 0, 10, 0x26, 0, 1, b'k', 0, 1, b'v', 0x13, 0, 2, 0x12, 0, 2, b'a', b'b'];
        assert_eq!(server_keep_alive(&connack(&props)), Some(Some(2)));
        assert_eq!(server_keep_alive(&connack(&[0x21, 0, 10])), Some(None), "a CONNACK without it");
        assert_eq!(server_keep_alive(&connack(&[])), Some(None));
        assert_eq!(server_keep_alive(&[0x20, 0x02, 0x00, 0x00]), Some(None), "no property block");
    }

    #[test]
    fn anything_else_says_nothing() {
        assert_eq!(server_keep_alive(&[0x30, 0x02, 0x00, 0x00]), None, "not a CONNACK");
        assert_eq!(server_keep_alive(&connack(&[0x13, 0])), None, "truncated property");
        assert_eq!(server_keep_alive(&connack(&[0x7F, 0])), None, "unknown property");
        assert_eq!(server_keep_alive(&[0x20, 0x05, 0x00]), None, "shorter than its length");
    }
}
