//! The protocol versions a client may speak, named once for the validator and the CONNACK writer.

/// Protocol Name of MQTT 3.1.1 and 5.
pub(super) const NAME_MQTT: &[u8] = b"MQTT";

/// Protocol Name of MQTT 3.1.
pub(super) const NAME_MQISDP: &[u8] = b"MQIsdp";

/// The MQTT protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
    /// MQTT 5, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The Protocol Level byte of this version.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Human-readable version ("3.1", "3.1.1", "5"), e.g. for labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "3.1",
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5",
        }
    }

    /// The version with Protocol Level `level`, if supported.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            3 => Some(ProtocolVersion::V31),
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }

    /// The Protocol Name that must accompany this level [MQTT-3.1.2-1].
    pub(super) fn protocol_name(self) -> &'static [u8] {
        match self {
            ProtocolVersion::V31 => NAME_MQISDP,
            ProtocolVersion::V311 | ProtocolVersion::V5 => NAME_MQTT,
        }
    }
}
