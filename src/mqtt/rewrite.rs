//! Re-encoding a validated CONNECT with another User Name (`tls.username_from_certificate`): the one case where the
//! bytes a broker receives differ from what the client sent.
//!
//! Every field but the User Name is copied byte for byte, in wire order: Protocol Name and Level, Keep Alive, the
//! MQTT 5 properties, Client Identifier, the Will (its MQTT 5 properties, topic, payload) and the Password. The
//! Connect Flags keep every bit but the User Name Flag, which is set; the Remaining Length is encoded anew (it may
//! take more or fewer bytes than before). A client that sent no user name gets one; a password sent without one
//! (allowed by MQTT 5 only, v5 §3.1.2.9) is kept, and the result is valid in every version since it now has both.

use super::frame::{check_fixed_header, encode_remaining_length, ReadError, Reader};
use super::version::ProtocolVersion;

/// Connect Flags: User Name Flag.
const USERNAME_FLAG: u8 = 0x80;
/// Connect Flags: Password Flag.
const PASSWORD_FLAG: u8 = 0x40;
/// Connect Flags: Will Flag.
const WILL_FLAG: u8 = 0x04;
/// The first byte of a CONNECT (type 1, flags 0).
const CONNECT_FIRST_BYTE: u8 = 0x10;

/// Why a CONNECT could not be re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The packet is not a CONNECT the validator accepted (a caller's mistake: only validated packets come here).
    #[error("the packet is not a well-formed CONNECT")]
    Malformed,
    /// The user name cannot be an MQTT UTF-8 string: over 65535 bytes or containing U+0000 [MQTT-1.5.3-2].
    #[error("the user name cannot be encoded as an MQTT string")]
    BadUsername,
    /// The new packet would exceed the largest Remaining Length.
    #[error("the rewritten CONNECT would be too large")]
    TooLarge,
}

impl From<ReadError> for RewriteError {
    fn from(_: ReadError) -> Self {
        RewriteError::Malformed
    }
}

/// `packet` (exactly one CONNECT that [`super::parse_connect`] accepted) with `username` as its User Name.
pub fn with_username(packet: &[u8], username: &str) -> Result<Vec<u8>, RewriteError> {
    let name_len = u16::try_from(username.len()).map_err(|_| RewriteError::BadUsername)?;
    if username.contains('\0') {
        return Err(RewriteError::BadUsername);
    }
    let parts = Parts::split(packet)?;
    let mut body = Vec::with_capacity(packet.len() + username.len());
    body.extend_from_slice(parts.head);
    body.push(parts.flags | USERNAME_FLAG);
    body.extend_from_slice(parts.before_username);
    body.extend_from_slice(&name_len.to_be_bytes());
    body.extend_from_slice(username.as_bytes());
    body.extend_from_slice(parts.password);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(CONNECT_FIRST_BYTE);
    encode_remaining_length(body.len(), &mut out).ok_or(RewriteError::TooLarge)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// A CONNECT's body cut around the Connect Flags and the User Name, each part a slice of the input.
struct Parts<'a> {
    /// Protocol Name and Protocol Level.
    head: &'a [u8],
    flags: u8,
    /// Keep Alive, MQTT 5 properties, Client Identifier and the Will: everything between the flags and the User Name.
    before_username: &'a [u8],
    /// The Password with its length, or nothing.
    password: &'a [u8],
}

impl<'a> Parts<'a> {
    fn split(packet: &'a [u8]) -> Result<Parts<'a>, RewriteError> {
        let header = check_fixed_header(packet).map_err(|_| RewriteError::Malformed)?;
        if header.first_byte != CONNECT_FIRST_BYTE || packet.len() != header.total_len() {
            return Err(RewriteError::Malformed);
        }
        let body = packet.get(header.header_len..).ok_or(RewriteError::Malformed)?;
        let mut r = Reader::new(body);
        r.binary()?;
        let level = r.u8()?;
        let version = ProtocolVersion::from_level(level).ok_or(RewriteError::Malformed)?;
        let head_len = body.len() - r.remaining();
        let flags = r.u8()?;
        let after_flags = r.remaining();
        r.u16()?;
        if version == ProtocolVersion::V5 {
            skip_properties(&mut r)?;
        }
        r.binary()?;
        if flags & WILL_FLAG != 0 {
            if version == ProtocolVersion::V5 {
                skip_properties(&mut r)?;
            }
            r.binary()?;
            r.binary()?;
        }
        let before_username_len = after_flags - r.remaining();
        if flags & USERNAME_FLAG != 0 {
            r.binary()?;
        }
        let password_start = body.len() - r.remaining();
        if flags & PASSWORD_FLAG != 0 {
            r.binary()?;
        }
        if !r.is_empty() {
            return Err(RewriteError::Malformed);
        }
        let slice = |from: usize, len: usize| body.get(from..from + len).ok_or(RewriteError::Malformed);
        Ok(Parts {
            head: slice(0, head_len)?,
            flags,
            before_username: slice(head_len + 1, before_username_len)?,
            password: body.get(password_start..).ok_or(RewriteError::Malformed)?,
        })
    }
}

/// Skips an MQTT 5 property block: its Variable Byte Integer length and that many bytes.
fn skip_properties(r: &mut Reader<'_>) -> Result<(), ReadError> {
    let len = r.varint()?;
    r.bytes(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{parse_connect, Connect};
    use proptest::prelude::*;

    /// Will: raw MQTT 5 will property bytes, topic, payload, QoS, retain.
    type TestWill = (Vec<u8>, String, Vec<u8>, u8, bool);

    /// A CONNECT built field by field, for the round trips.
    #[derive(Debug, Clone)]
    struct Spec {
        version: ProtocolVersion,
        clean_start: bool,
        keep_alive: u16,
        /// Raw MQTT 5 CONNECT property bytes (without their length).
        properties: Vec<u8>,
        client_id: String,
        will: Option<TestWill>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    }

    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(bytes);
    }

    fn properties(out: &mut Vec<u8>, props: &[u8]) {
        encode_remaining_length(props.len(), out).unwrap();
        out.extend_from_slice(props);
    }

    impl Spec {
        fn encode(&self) -> Vec<u8> {
            let v5 = self.version == ProtocolVersion::V5;
            let mut body = Vec::new();
            string(&mut body, self.version.protocol_name());
            body.push(self.version.level());
            let mut flags = 0u8;
            if self.clean_start {
                flags |= 0x02;
            }
            if let Some((_, _, _, qos, retain)) = &self.will {
                flags |= WILL_FLAG | (qos << 3) | if *retain { 0x20 } else { 0 };
            }
            if self.username.is_some() {
                flags |= USERNAME_FLAG;
            }
            if self.password.is_some() {
                flags |= PASSWORD_FLAG;
            }
            body.push(flags);
            body.extend_from_slice(&self.keep_alive.to_be_bytes());
            if v5 {
                properties(&mut body, &self.properties);
            }
            string(&mut body, self.client_id.as_bytes());
            if let Some((props, topic, payload, _, _)) = &self.will {
                if v5 {
                    properties(&mut body, props);
                }
                string(&mut body, topic.as_bytes());
                string(&mut body, payload);
            }
            if let Some(u) = &self.username {
                string(&mut body, u.as_bytes());
            }
            if let Some(p) = &self.password {
                string(&mut body, p);
            }
            let mut out = vec![CONNECT_FIRST_BYTE];
            encode_remaining_length(body.len(), &mut out).unwrap();
            out.extend_from_slice(&body);
            out
        }
    }

    /// The password bytes of a CONNECT (the validator only says whether there is one).
    fn password_of(packet: &[u8]) -> Vec<u8> {
        let parts = Parts::split(packet).unwrap();
        if parts.flags & PASSWORD_FLAG == 0 {
            return Vec::new();
        }
        parts.password.get(2..).unwrap().to_vec()
    }

    /// Properties: Session Expiry Interval 3600, a User Property, Receive Maximum 10.
    const CONNECT_PROPS: &[u8] = &[0x11, 0, 0, 0x0E, 0x10, 0x26, 0, 1, b'k', 0, 1, b'v', 0x21, 0, 10];
    /// Will Delay Interval 5, Payload Format Indicator 1.
    const WILL_PROPS: &[u8] = &[0x18, 0, 0, 0, 5, 0x01, 1];

    /// Every combination of version, will, user name, password, properties, over a few string sizes (one of them
    /// long enough to move the Remaining Length across its one-to-two-byte boundary).
    fn specs() -> Vec<Spec> {
        let mut all = Vec::new();
        for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
            for mask in 0u8..16 {
                for id_len in [1usize, 60, 200] {
                    let (will, user, pass, props) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0, mask & 8 != 0);
                    let v5 = version == ProtocolVersion::V5;
                    // 3.1 and 3.1.1 refuse a password without a user name; 3.1 and 3.1.1 have no properties.
                    if (pass && !user && !v5) || (props && !v5) {
                        continue;
                    }
                    all.push(Spec {
                        version,
                        clean_start: id_len % 2 == 0,
                        keep_alive: 30 + u16::from(mask),
                        properties: if props { CONNECT_PROPS.to_vec() } else { Vec::new() },
                        client_id: "c".repeat(id_len),
                        will: will.then(|| {
                            let props = if props { WILL_PROPS.to_vec() } else { Vec::new() };
                            (props, "last/will".to_owned(), b"gone".to_vec(), 1, true)
                        }),
                        username: user.then(|| "sent-by-client".to_owned()),
                        password: pass.then(|| vec![0, 1, 2, 0xFF]),
                    });
                }
            }
        }
        all
    }

    #[test]
    fn round_trip_changes_only_the_user_name() {
        let specs = specs();
        assert_eq!(specs.len(), 84);
        for spec in specs {
            let packet = spec.encode();
            let before = parse_connect(&packet).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            for name in ["", "sensor-1", &"n".repeat(130), "ünïcødé"] {
                let rewritten = with_username(&packet, name).unwrap();
                let after = parse_connect(&rewritten).unwrap_or_else(|e| panic!("{spec:?} as {name:?}: {e}"));
                assert_eq!(after, Connect { username: Some(name.to_owned()), ..before.clone() }, "{spec:?}");
                assert_eq!(password_of(&rewritten), password_of(&packet), "{spec:?}");
                // Every byte but the flags' user name bit and the user name is the original's: rebuilding the
                // spec with the new name gives the same bytes.
                let expected = Spec { username: Some(name.to_owned()), ..spec.clone() }.encode();
                assert_eq!(rewritten, expected, "{spec:?} as {name:?}");
            }
        }
    }

    fn version() -> impl Strategy<Value = ProtocolVersion> {
        prop_oneof![Just(ProtocolVersion::V31), Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// parse(rewrite(x)) has the new user name and every other field of x, for arbitrary strings and bytes.
        #[test]
        fn arbitrary_connects_keep_every_other_field(
            version in version(),
            clean_start: bool,
            keep_alive: u16,
            client_id in "[a-z0-9/-]{1,40}",
            will in proptest::option::of(("[a-z/]{1,20}", proptest::collection::vec(any::<u8>(), 0..300), 0u8..3, any::<bool>())),
            username in proptest::option::of("[^\\x00]{0,40}"),
            password in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            new_name in "[^\\x00]{0,200}",
        ) {
            let v5 = version == ProtocolVersion::V5;
            // 3.1 / 3.1.1 refuse a password without a user name.
            let username = if password.is_some() && !v5 { Some(username.unwrap_or_default()) } else { username };
            let properties = if v5 { CONNECT_PROPS.to_vec() } else { Vec::new() };
            let will = will.map(|(topic, payload, qos, retain)| (Vec::new(), topic, payload, qos, retain));
            let spec = Spec { version, clean_start, keep_alive, properties, client_id, will, username, password };
            let packet = spec.encode();
            let before = parse_connect(&packet).unwrap();
            let rewritten = with_username(&packet, &new_name).unwrap();
            let after = parse_connect(&rewritten).unwrap();
            prop_assert_eq!(after, Connect { username: Some(new_name.clone()), ..before });
            prop_assert_eq!(password_of(&rewritten), password_of(&packet));
        }
    }

    #[test]
    fn password_without_user_name_in_mqtt5_gets_both_flags() {
        let spec = Spec {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            properties: Vec::new(),
            client_id: "d".into(),
            will: None,
            username: None,
            password: Some(b"secret".to_vec()),
        };
        let rewritten = with_username(&spec.encode(), "cn-name").unwrap();
        let c = parse_connect(&rewritten).unwrap();
        assert_eq!(c.username.as_deref(), Some("cn-name"));
        assert!(c.has_password);
        assert_eq!(password_of(&rewritten), b"secret");
    }

    #[test]
    fn known_bytes_for_mqtt311() {
        // 3.1.1, clean session, keep alive 60, client id "a", no user name.
        let packet = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'];
        let out = with_username(&packet, "u").unwrap();
        assert_eq!(out, [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60, 0, 1, b'a', 0, 1, b'u']);
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let packet = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'];
        assert_eq!(with_username(&packet, &"x".repeat(65_536)), Err(RewriteError::BadUsername));
        assert_eq!(with_username(&packet, "a\0b"), Err(RewriteError::BadUsername));
        assert_eq!(with_username(&packet[..10], "u"), Err(RewriteError::Malformed));
        assert_eq!(with_username(&[0x20, 2, 0, 0], "u"), Err(RewriteError::Malformed));
    }
}
