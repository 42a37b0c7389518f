//! Refusal CONNACK packets, written in the form the client's protocol
//! version understands (MQTT 3.1.1 §3.2, MQTT 5 §3.2).

use super::version::ProtocolVersion;

/// CONNACK packet type with its (reserved, zero) flags.
const CONNACK_FIRST_BYTE: u8 = 0x20;

/// Connect Acknowledge Flags: Session Present is 0 on every refusal
/// [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5).
const NO_SESSION_PRESENT: u8 = 0x00;

/// Why the load balancer refuses a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// The client identifier is not allowed.
    BadClientId,
    /// The packet could not be parsed (v5 only has a code for it).
    Malformed,
    /// The packet broke a protocol rule (v5 only has a code for it).
    ProtocolError,
    /// No broker can take the client.
    ServerUnavailable,
    /// Brokers exist but are overloaded.
    ServerBusy,
    /// The client may not connect.
    NotAuthorized,
    /// User name or password rejected.
    BadCredentials,
    /// The CONNECT is larger than the server takes (v5 only has a code for it).
    PacketTooLarge,
    /// A payload is not in the format it declares (v5 only has a code for it).
    PayloadFormatInvalid,
}

/// CONNACK bytes refusing a client of `version`; None where that version has no code for it.
/// 3.1 / 3.1.1: [0x20, 0x02, 0x00, code] with 0x01 unacceptable version, 0x02 identifier rejected,
///   0x03 server unavailable (also for Busy), 0x04 bad user name or password, 0x05 not authorized;
///   Malformed/ProtocolError/PacketTooLarge/PayloadFormatInvalid -> None.
/// 5: [0x20, 0x03, 0x00, reason, 0x00] with 0x81 malformed, 0x82 protocol error, 0x84 unsupported version,
///   0x85 client id not valid, 0x86 bad user name or password, 0x87 not authorized, 0x88 server unavailable, 0x89 server busy,
///   0x95 packet too large, 0x99 payload format invalid.
pub fn connack(version: ProtocolVersion, refusal: Refusal) -> Option<Vec<u8>> {
    match version {
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            let code = v3_return_code(refusal)?;
            Some(vec![CONNACK_FIRST_BYTE, 0x02, NO_SESSION_PRESENT, code])
        }
        ProtocolVersion::V5 => {
            let reason = v5_reason_code(refusal);
            // Remaining Length 3: flags, reason code, empty property block.
            Some(vec![CONNACK_FIRST_BYTE, 0x03, NO_SESSION_PRESENT, reason, 0x00])
        }
    }
}

/// Connect Return Code (MQTT 3.1.1 §3.2.2.3, same values in 3.1).
///
/// These versions have no code for a malformed packet: the server must just
/// close the connection (MQTT 3.1.1 §4.8).
fn v3_return_code(refusal: Refusal) -> Option<u8> {
    match refusal {
        Refusal::UnsupportedVersion => Some(0x01),
        Refusal::BadClientId => Some(0x02),
        Refusal::ServerUnavailable | Refusal::ServerBusy => Some(0x03),
        Refusal::BadCredentials => Some(0x04),
        Refusal::NotAuthorized => Some(0x05),
        Refusal::Malformed | Refusal::ProtocolError | Refusal::PacketTooLarge | Refusal::PayloadFormatInvalid => None,
    }
}

/// CONNACK Reason Code (MQTT 5 §3.2.2.2).
fn v5_reason_code(refusal: Refusal) -> u8 {
    match refusal {
        Refusal::Malformed => 0x81,
        Refusal::ProtocolError => 0x82,
        Refusal::UnsupportedVersion => 0x84,
        Refusal::BadClientId => 0x85,
        Refusal::BadCredentials => 0x86,
        Refusal::NotAuthorized => 0x87,
        Refusal::ServerUnavailable => 0x88,
        Refusal::ServerBusy => 0x89,
        Refusal::PacketTooLarge => 0x95,
        Refusal::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Refusal; 10] = [
        Refusal::UnsupportedVersion,
        Refusal::BadClientId,
        Refusal::Malformed,
        Refusal::ProtocolError,
        Refusal::ServerUnavailable,
        Refusal::ServerBusy,
        Refusal::NotAuthorized,
        Refusal::BadCredentials,
        Refusal::PacketTooLarge,
        Refusal::PayloadFormatInvalid,
    ];

    #[test]
    fn v3_codes() {
        let expected = [
            (Refusal::UnsupportedVersion, Some(0x01)),
            (Refusal::BadClientId, Some(0x02)),
            (Refusal::Malformed, None),
            (Refusal::ProtocolError, None),
            (Refusal::ServerUnavailable, Some(0x03)),
            (Refusal::ServerBusy, Some(0x03)),
            (Refusal::NotAuthorized, Some(0x05)),
            (Refusal::BadCredentials, Some(0x04)),
            (Refusal::PacketTooLarge, None),
            (Refusal::PayloadFormatInvalid, None),
        ];
        for version in [ProtocolVersion::V31, ProtocolVersion::V311] {
            for (refusal, code) in expected {
                let want = code.map(|c| vec![0x20, 0x02, 0x00, c]);
                assert_eq!(connack(version, refusal), want, "{version:?} {refusal:?}");
            }
        }
    }

    #[test]
    fn v5_codes() {
        let expected = [
            (Refusal::UnsupportedVersion, 0x84),
            (Refusal::BadClientId, 0x85),
            (Refusal::Malformed, 0x81),
            (Refusal::ProtocolError, 0x82),
            (Refusal::ServerUnavailable, 0x88),
            (Refusal::ServerBusy, 0x89),
            (Refusal::NotAuthorized, 0x87),
            (Refusal::BadCredentials, 0x86),
            (Refusal::PacketTooLarge, 0x95),
            (Refusal::PayloadFormatInvalid, 0x99),
        ];
        for (refusal, code) in expected {
            assert_eq!(connack(ProtocolVersion::V5, refusal), Some(vec![0x20, 0x03, 0x00, code, 0x00]), "{refusal:?}");
        }
    }

    #[test]
    fn every_refusal_is_a_well_formed_connack() {
        use crate::mqtt::frame::check_fixed_header;
        for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
            for refusal in ALL {
                let Some(bytes) = connack(version, refusal) else {
                    continue;
                };
                let header = check_fixed_header(&bytes).expect("valid fixed header");
                assert_eq!(header.packet_type(), 2);
                assert_eq!(header.flags(), 0);
                assert_eq!(header.total_len(), bytes.len());
                // Every refusal code is a failure: >= 0x01 (v3) / >= 0x80 (v5).
                let code = bytes.get(3).copied().unwrap_or(0);
                match version {
                    ProtocolVersion::V5 => assert!(code >= 0x80),
                    _ => assert!((0x01..=0x05).contains(&code)),
                }
            }
        }
    }
}
