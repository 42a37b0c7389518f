//! Strict validation of the first packet on a connection: an MQTT 3.1,
//! 3.1.1 or 5 CONNECT (MQTT 3.1.1 §3.1, MQTT 5 §3.1).
//!
//! [`parse_connect`] reads the packet in wire order and stops at the first
//! rule it breaks, reporting a [`RejectReason`]. Citations like
//! `[MQTT-3.1.2-3]` are MQTT 3.1.1 normative statements unless marked "v5";
//! the same rules hold in MQTT 5 under its own numbering.

use super::connack::{connack, Refusal};
use super::frame::{check_fixed_header, FrameError, ReadError, Reader};
pub use super::version::ProtocolVersion;
use super::version::{NAME_MQISDP, NAME_MQTT};

/// Packet type of CONNECT.
const CONNECT: u8 = 1;

/// Longest client identifier the MQTT 3.1 text allows, in characters: enforced only under
/// [`ConnectRules::strict_v31_client_id`], as brokers (mosquitto, HAProxy's MQTT parser) accept longer ones.
const V31_MAX_CLIENT_ID_CHARS: usize = 23;

/// Choices in how strictly a CONNECT is validated (`limits:` in the configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectRules {
    /// MQTT 3.1: refuse client identifiers over 23 characters, as the 3.1 text says. Off by default: brokers accept
    /// identifiers up to the 65535-byte string limit, as in 3.1.1 and 5.
    pub strict_v31_client_id: bool,
}

/// The Will Message a client registered (its payload is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: String,
    /// Will QoS (0..=2).
    pub qos: u8,
    /// Will Retain.
    pub retain: bool,
}

/// What the load balancer needs to know about an accepted CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version of the client.
    pub version: ProtocolVersion,
    /// Client Identifier (may be empty where the version allows it).
    pub client_id: String,
    /// Clean Session (3.1 / 3.1.1) or Clean Start (5).
    pub clean_start: bool,
    /// Keep Alive in seconds.
    pub keep_alive: u16,
    /// User Name, when the User Name Flag is set.
    pub username: Option<String>,
    /// Whether a Password is present (its value is never kept).
    pub has_password: bool,
    /// The Will, when the Will Flag is set.
    pub will: Option<Will>,
}

/// Why a first packet was refused. A small fixed set: `label()` is used as a Prometheus label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// First packet type is not CONNECT (1) [MQTT-3.1.0-1].
    NotConnect,
    /// CONNECT fixed-header flags not 0000 [MQTT-2.2.2-2].
    BadHeaderFlags,
    /// Remaining Length longer than 4 bytes or not minimal.
    MalformedLength,
    /// Not "MQTT"/"MQIsdp", or name/level pair mismatch [MQTT-3.1.2-1].
    BadProtocolName,
    /// Protocol Level not 3/4/5 [MQTT-3.1.2-2].
    UnsupportedVersion,
    /// Connect Flags bit 0 set [MQTT-3.1.2-3].
    ReservedFlag,
    /// Will QoS 3, or Will QoS/Retain set without the Will Flag
    /// [MQTT-3.1.2-11] [MQTT-3.1.2-12] [MQTT-3.1.2-13].
    BadWillFlags,
    /// 3.1 / 3.1.1: Password Flag without User Name Flag [MQTT-3.1.2-22].
    BadCredentialFlags,
    /// Ill-formed UTF-8 or U+0000 in a UTF-8 string [MQTT-1.5.3-1] [MQTT-1.5.3-2].
    BadUtf8,
    /// 3.1: empty (or over 23 characters under `strict_v31_client_id`); 3.1.1: empty with Clean Session 0
    /// [MQTT-3.1.3-8].
    BadClientId,
    /// v5 CONNECT properties defective (v5 §3.1.2.11).
    BadProperties,
    /// v5 Will Properties defective (v5 §3.1.3.2).
    BadWillProperties,
    /// v5: the Will Payload is not UTF-8 though its Payload Format Indicator says it is (v5 §3.1.3.2.3).
    BadWillPayload,
    /// Will Topic empty or containing wildcards [MQTT-4.7.1-1] [MQTT-4.7.3-1].
    BadWillTopic,
    /// A field runs past the end of the packet.
    Truncated,
    /// Bytes left over inside the packet after the last field.
    TrailingBytes,
}

impl RejectReason {
    /// Every reason, e.g. to pre-register metric label values.
    pub const ALL: [RejectReason; 16] = [
        RejectReason::NotConnect,
        RejectReason::BadHeaderFlags,
        RejectReason::MalformedLength,
        RejectReason::BadProtocolName,
        RejectReason::UnsupportedVersion,
        RejectReason::ReservedFlag,
        RejectReason::BadWillFlags,
        RejectReason::BadCredentialFlags,
        RejectReason::BadUtf8,
        RejectReason::BadClientId,
        RejectReason::BadProperties,
        RejectReason::BadWillProperties,
        RejectReason::BadWillPayload,
        RejectReason::BadWillTopic,
        RejectReason::Truncated,
        RejectReason::TrailingBytes,
    ];

    /// Stable snake_case name, used as a Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::NotConnect => "not_connect",
            RejectReason::BadHeaderFlags => "bad_header_flags",
            RejectReason::MalformedLength => "malformed_length",
            RejectReason::BadProtocolName => "bad_protocol_name",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::ReservedFlag => "reserved_flag",
            RejectReason::BadWillFlags => "bad_will_flags",
            RejectReason::BadCredentialFlags => "bad_credential_flags",
            RejectReason::BadUtf8 => "bad_utf8",
            RejectReason::BadClientId => "bad_client_id",
            RejectReason::BadProperties => "bad_properties",
            RejectReason::BadWillProperties => "bad_will_properties",
            RejectReason::BadWillPayload => "bad_will_payload",
            RejectReason::BadWillTopic => "bad_will_topic",
            RejectReason::Truncated => "truncated",
            RejectReason::TrailingBytes => "trailing_bytes",
        }
    }

    /// The CONNACK refusal for this reason once the version is known;
    /// None means "close without CONNACK".
    fn refusal(self) -> Option<Refusal> {
        match self {
            RejectReason::NotConnect | RejectReason::BadHeaderFlags | RejectReason::BadProtocolName => None,
            RejectReason::UnsupportedVersion => Some(Refusal::UnsupportedVersion),
            RejectReason::BadClientId => Some(Refusal::BadClientId),
            // MQTT 5 calls a set reserved flag and inconsistent will flags "Malformed Packet" [MQTT-3.1.2-3],
            // [MQTT-3.1.2-11..13].
            RejectReason::BadCredentialFlags | RejectReason::BadWillTopic => Some(Refusal::ProtocolError),
            RejectReason::BadWillPayload => Some(Refusal::PayloadFormatInvalid),
            RejectReason::ReservedFlag
            | RejectReason::BadWillFlags
            | RejectReason::MalformedLength
            | RejectReason::BadUtf8
            | RejectReason::BadProperties
            | RejectReason::BadWillProperties
            | RejectReason::Truncated
            | RejectReason::TrailingBytes => Some(Refusal::Malformed),
        }
    }
}

/// A refused first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {detail}")]
pub struct ConnectError {
    /// Which rule the packet broke.
    pub reason: RejectReason,
    /// protocol version, when the level byte was read and is 3/4/5
    pub version: Option<ProtocolVersion>,
    /// The field or rule concerned, for logs.
    pub detail: &'static str,
}

impl ConnectError {
    /// The CONNACK to send before closing, where the protocol has a code for it; None => just close.
    ///
    /// See the table in the [module docs](crate::mqtt).
    pub fn connack(&self) -> Option<Vec<u8>> {
        match self.version {
            // An unknown level gets the 3.1.1 answer, as brokers do [MQTT-3.1.2-2].
            None if self.reason == RejectReason::UnsupportedVersion => {
                connack(ProtocolVersion::V311, Refusal::UnsupportedVersion)
            }
            None => None,
            Some(version) => connack(version, self.reason.refusal()?),
        }
    }
}

/// A rule violation found after the version is known; becomes a
/// [`ConnectError`] once the version is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    reason: RejectReason,
    detail: &'static str,
}

fn fault(reason: RejectReason, detail: &'static str) -> Fault {
    Fault { reason, detail }
}

impl Fault {
    fn with_version(self, version: Option<ProtocolVersion>) -> ConnectError {
        ConnectError { reason: self.reason, version, detail: self.detail }
    }
}

/// Attaches a field name to a low-level read failure.
trait FieldContext<T> {
    /// A read of a top-level field: running out of bytes means the packet is truncated.
    fn field(self, name: &'static str) -> Result<T, Fault>;
}

impl<T> FieldContext<T> for Result<T, ReadError> {
    fn field(self, name: &'static str) -> Result<T, Fault> {
        self.map_err(|e| match e {
            ReadError::Eof => fault(RejectReason::Truncated, name),
            ReadError::BadUtf8 => fault(RejectReason::BadUtf8, name),
            ReadError::BadVarint => fault(RejectReason::MalformedLength, name),
        })
    }
}

/// Validates exactly one complete CONNECT packet (fixed header included; `packet.len()` == header total_len), with
/// the default [`ConnectRules`].
pub fn parse_connect(packet: &[u8]) -> Result<Connect, ConnectError> {
    parse_connect_with(packet, ConnectRules::default())
}

/// [`parse_connect`] under `rules`.
pub fn parse_connect_with(packet: &[u8], rules: ConnectRules) -> Result<Connect, ConnectError> {
    let body = packet_body(packet).map_err(|f| f.with_version(None))?;
    let mut r = Reader::new(body);
    let version = protocol_version(&mut r)?;
    connect_body(&mut r, version, rules).map_err(|f| f.with_version(Some(version)))
}

/// The protocol version of a CONNECT of which only the first `bytes` have arrived (fixed header, Protocol Name,
/// Protocol Level), e.g. to answer one that is too large in its own version's terms; None when those bytes are
/// missing or name no supported version.
pub fn sniff_version(bytes: &[u8]) -> Option<ProtocolVersion> {
    let header = check_fixed_header(bytes).ok()?;
    if header.packet_type() != CONNECT {
        return None;
    }
    let mut r = Reader::new(bytes.get(header.header_len..)?);
    protocol_version(&mut r).ok()
}

/// Checks the fixed header and returns the bytes after it.
fn packet_body(packet: &[u8]) -> Result<&[u8], Fault> {
    let header = check_fixed_header(packet).map_err(|e| match e {
        FrameError::Incomplete(_) => fault(RejectReason::Truncated, "fixed header"),
        FrameError::MalformedRemainingLength => fault(RejectReason::MalformedLength, "remaining length"),
    })?;
    if header.packet_type() != CONNECT {
        return Err(fault(RejectReason::NotConnect, "first packet is not CONNECT"));
    }
    if header.flags() != 0 {
        return Err(fault(RejectReason::BadHeaderFlags, "CONNECT header flags must be 0"));
    }
    if packet.len() < header.total_len() {
        return Err(fault(RejectReason::Truncated, "packet shorter than remaining length"));
    }
    if packet.len() > header.total_len() {
        return Err(fault(RejectReason::TrailingBytes, "packet longer than remaining length"));
    }
    packet.get(header.header_len..).ok_or(fault(RejectReason::Truncated, "fixed header"))
}

/// Reads Protocol Name and Protocol Level and checks they belong together
/// [MQTT-3.1.2-1] [MQTT-3.1.2-2].
fn protocol_version(r: &mut Reader<'_>) -> Result<ProtocolVersion, ConnectError> {
    let name = r.binary().field("protocol name").map_err(|f| f.with_version(None))?;
    if name != NAME_MQTT && name != NAME_MQISDP {
        let f = fault(RejectReason::BadProtocolName, "protocol name is not MQTT or MQIsdp");
        return Err(f.with_version(None));
    }
    let level = r.u8().field("protocol level").map_err(|f| f.with_version(None))?;
    let Some(version) = ProtocolVersion::from_level(level) else {
        let f = fault(RejectReason::UnsupportedVersion, "protocol level is not 3, 4 or 5");
        return Err(f.with_version(None));
    };
    if name != version.protocol_name() {
        let f = fault(RejectReason::BadProtocolName, "protocol name does not match level");
        return Err(f.with_version(Some(version)));
    }
    Ok(version)
}

/// Everything after the Protocol Level, in wire order.
fn connect_body(r: &mut Reader<'_>, version: ProtocolVersion, rules: ConnectRules) -> Result<Connect, Fault> {
    let flags = ConnectFlags(r.u8().field("connect flags")?);
    flags.validate(version)?;
    let keep_alive = r.u16().field("keep alive")?;
    if version == ProtocolVersion::V5 {
        connect_properties(r)?;
    }
    let client_id = client_identifier(r, version, flags.clean_start(), rules)?;
    let will = if flags.will() { Some(will(r, version, flags)?) } else { None };
    let username = if flags.username() { Some(r.utf8_string().field("user name")?) } else { None };
    if flags.password() {
        r.binary().field("password")?;
    }
    if !r.is_empty() {
        return Err(fault(RejectReason::TrailingBytes, "bytes after the last field"));
    }
    Ok(Connect {
        version,
        client_id: client_id.to_owned(),
        clean_start: flags.clean_start(),
        keep_alive,
        username: username.map(str::to_owned),
        has_password: flags.password(),
        will,
    })
}

/// The Connect Flags byte (MQTT 3.1.1 §3.1.2.3).
#[derive(Debug, Clone, Copy)]
struct ConnectFlags(u8);

impl ConnectFlags {
    const RESERVED: u8 = 0x01;
    const CLEAN_START: u8 = 0x02;
    const WILL: u8 = 0x04;
    const WILL_QOS: u8 = 0x18;
    const WILL_QOS_SHIFT: u8 = 3;
    const WILL_RETAIN: u8 = 0x20;
    const PASSWORD: u8 = 0x40;
    const USERNAME: u8 = 0x80;

    fn is_set(self, mask: u8) -> bool {
        self.0 & mask != 0
    }

    fn clean_start(self) -> bool {
        self.is_set(Self::CLEAN_START)
    }

    fn will(self) -> bool {
        self.is_set(Self::WILL)
    }

    fn will_qos(self) -> u8 {
        (self.0 & Self::WILL_QOS) >> Self::WILL_QOS_SHIFT
    }

    fn will_retain(self) -> bool {
        self.is_set(Self::WILL_RETAIN)
    }

    fn password(self) -> bool {
        self.is_set(Self::PASSWORD)
    }

    fn username(self) -> bool {
        self.is_set(Self::USERNAME)
    }

    fn validate(self, version: ProtocolVersion) -> Result<(), Fault> {
        self.check_reserved()?;
        self.check_will()?;
        self.check_credentials(version)
    }

    /// The reserved bit must be 0 [MQTT-3.1.2-3].
    fn check_reserved(self) -> Result<(), Fault> {
        if self.is_set(Self::RESERVED) {
            return Err(fault(RejectReason::ReservedFlag, "reserved connect flag is set"));
        }
        Ok(())
    }

    /// Without the Will Flag, Will QoS and Will Retain must be 0
    /// [MQTT-3.1.2-11] [MQTT-3.1.2-13]; Will QoS must not be 3 [MQTT-3.1.2-12].
    fn check_will(self) -> Result<(), Fault> {
        if !self.will() && self.will_qos() != 0 {
            return Err(fault(RejectReason::BadWillFlags, "will QoS set without will flag"));
        }
        if !self.will() && self.will_retain() {
            return Err(fault(RejectReason::BadWillFlags, "will retain set without will flag"));
        }
        if self.will_qos() > 2 {
            return Err(fault(RejectReason::BadWillFlags, "will QoS is 3"));
        }
        Ok(())
    }

    /// 3.1 / 3.1.1: a password needs a user name [MQTT-3.1.2-22];
    /// MQTT 5 dropped this rule (v5 §3.1.2.9).
    fn check_credentials(self, version: ProtocolVersion) -> Result<(), Fault> {
        if version != ProtocolVersion::V5 && self.password() && !self.username() {
            return Err(fault(RejectReason::BadCredentialFlags, "password flag without user name flag"));
        }
        Ok(())
    }
}

/// Reads the Client Identifier and applies the version's rules to it.
///
/// - 3.1: not empty; at most 23 characters (MQTT 3.1 §3.1, "Client Identifier") only under
///   `rules.strict_v31_client_id`, as brokers accept longer ones.
/// - 3.1.1: empty only with Clean Session 1 [MQTT-3.1.3-7] [MQTT-3.1.3-8].
/// - 5: empty always allowed; the server assigns one [MQTT-3.1.3-6] (v5).
fn client_identifier<'a>(
    r: &mut Reader<'a>,
    version: ProtocolVersion,
    clean_start: bool,
    rules: ConnectRules,
) -> Result<&'a str, Fault> {
    let id = r.utf8_string().field("client identifier")?;
    match version {
        ProtocolVersion::V31 if id.is_empty() => {
            Err(fault(RejectReason::BadClientId, "3.1 client identifier must not be empty"))
        }
        ProtocolVersion::V31 if rules.strict_v31_client_id && id.chars().count() > V31_MAX_CLIENT_ID_CHARS => {
            Err(fault(RejectReason::BadClientId, "3.1 client identifier over 23 characters (strict_v31_client_id)"))
        }
        ProtocolVersion::V311 if id.is_empty() && !clean_start => {
            Err(fault(RejectReason::BadClientId, "empty client identifier needs clean session"))
        }
        _ => Ok(id),
    }
}

/// Reads the Will part of the payload: v5 Will Properties, Will Topic, Will Payload
/// (MQTT 3.1.1 §3.1.3.2-3, v5 §3.1.3.2-4).
fn will(r: &mut Reader<'_>, version: ProtocolVersion, flags: ConnectFlags) -> Result<Will, Fault> {
    let payload_is_utf8 = match version {
        ProtocolVersion::V5 => will_properties(r)?,
        ProtocolVersion::V31 | ProtocolVersion::V311 => false,
    };
    let topic = r.utf8_string().field("will topic")?;
    check_will_topic(topic)?;
    let payload = r.binary().field("will payload")?;
    if payload_is_utf8 && std::str::from_utf8(payload).is_err() {
        return Err(fault(RejectReason::BadWillPayload, "will payload is not UTF-8 as declared"));
    }
    Ok(Will { topic: topic.to_owned(), qos: flags.will_qos(), retain: flags.will_retain() })
}

/// A Topic Name is at least one character [MQTT-4.7.3-1] and has no
/// wildcards [MQTT-4.7.1-1].
fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// The Will Topic must be a valid Topic Name (MQTT 3.1.1 §3.1.3.2).
fn check_will_topic(topic: &str) -> Result<(), Fault> {
    if !is_topic_name(topic) {
        return Err(fault(RejectReason::BadWillTopic, "will topic is empty or has wildcards"));
    }
    Ok(())
}

// Property identifiers (v5 §2.2.2.2).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// Which property block is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// CONNECT Properties (v5 §3.1.2.11).
    Connect,
    /// Will Properties (v5 §3.1.3.2).
    Will,
}

impl Scope {
    /// The reason reported for a defect in this block.
    fn reason(self) -> RejectReason {
        match self {
            Scope::Connect => RejectReason::BadProperties,
            Scope::Will => RejectReason::BadWillProperties,
        }
    }

    /// The wire type of property `id`, or None if it may not appear here.
    fn kind(self, id: u8) -> Option<Kind> {
        let kind = match (self, id) {
            (_, USER_PROPERTY) => Kind::StringPair,
            (Scope::Connect, SESSION_EXPIRY_INTERVAL | MAXIMUM_PACKET_SIZE) => Kind::FourByte,
            (Scope::Connect, RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM) => Kind::TwoByte,
            (Scope::Connect, REQUEST_RESPONSE_INFORMATION | REQUEST_PROBLEM_INFORMATION) => Kind::Byte,
            (Scope::Connect, AUTHENTICATION_METHOD) => Kind::Utf8,
            (Scope::Connect, AUTHENTICATION_DATA) => Kind::Binary,
            (Scope::Will, WILL_DELAY_INTERVAL | MESSAGE_EXPIRY_INTERVAL) => Kind::FourByte,
            (Scope::Will, PAYLOAD_FORMAT_INDICATOR) => Kind::Byte,
            (Scope::Will, CONTENT_TYPE | RESPONSE_TOPIC) => Kind::Utf8,
            (Scope::Will, CORRELATION_DATA) => Kind::Binary,
            _ => return None,
        };
        Some(kind)
    }

    /// Maps a read failure inside the block: running out of bytes means the
    /// block's declared length is inconsistent with its content.
    fn read_fault(self, e: ReadError) -> Fault {
        match e {
            ReadError::BadUtf8 => fault(RejectReason::BadUtf8, "property string"),
            ReadError::Eof | ReadError::BadVarint => fault(self.reason(), "property runs past the end of its block"),
        }
    }
}

/// Wire type of a property value (v5 §2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    TwoByte,
    FourByte,
    Utf8,
    Binary,
    StringPair,
}

/// A property value; only what some rule inspects is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Byte(u8),
    TwoByte(u16),
    FourByte(u32),
    Utf8(&'a str),
    /// Binary Data (never inspected).
    Binary,
    /// UTF-8 String Pair (validated, never inspected).
    StringPair,
}

impl Kind {
    fn read<'a>(self, r: &mut Reader<'a>) -> Result<Value<'a>, ReadError> {
        let value = match self {
            Kind::Byte => Value::Byte(r.u8()?),
            Kind::TwoByte => Value::TwoByte(r.u16()?),
            Kind::FourByte => Value::FourByte(r.u32()?),
            Kind::Utf8 => Value::Utf8(r.utf8_string()?),
            Kind::Binary => {
                r.binary()?;
                Value::Binary
            }
            Kind::StringPair => {
                r.utf8_string()?;
                r.utf8_string()?;
                Value::StringPair
            }
        };
        Ok(value)
    }
}

/// The set of property identifiers seen so far in a block.
#[derive(Debug, Default, Clone, Copy)]
struct Seen(u64);

impl Seen {
    fn bit(id: u8) -> u64 {
        1u64.checked_shl(u32::from(id)).unwrap_or(0)
    }

    fn contains(self, id: u8) -> bool {
        self.0 & Self::bit(id) != 0
    }

    /// Records `id`; a repeat is a defect for every property but User Property.
    fn insert(&mut self, id: u8, scope: Scope) -> Result<(), Fault> {
        if id != USER_PROPERTY && self.contains(id) {
            return Err(fault(scope.reason(), "property appears more than once"));
        }
        self.0 |= Self::bit(id);
        Ok(())
    }
}

/// Reads a Property Length and returns a reader over exactly that many bytes
/// (v5 §2.2.2.1).
fn property_block<'a>(r: &mut Reader<'a>, scope: Scope) -> Result<Reader<'a>, Fault> {
    let len = r.varint().map_err(|e| match e {
        ReadError::Eof => fault(RejectReason::Truncated, "property length"),
        ReadError::BadUtf8 | ReadError::BadVarint => fault(scope.reason(), "property length is malformed"),
    })?;
    let block = r.bytes(len).field("property block")?;
    Ok(Reader::new(block))
}

/// Reads one property identifier and value from a block.
///
/// The identifier is a Variable Byte Integer on the wire, but every defined
/// identifier is below 0x80, so a single byte; larger ones are unknown anyway.
fn property<'a>(block: &mut Reader<'a>, scope: Scope) -> Result<(u8, Value<'a>), Fault> {
    let id = block.u8().map_err(|e| scope.read_fault(e))?;
    let kind = scope.kind(id).ok_or(fault(scope.reason(), "property not allowed here"))?;
    let value = kind.read(block).map_err(|e| scope.read_fault(e))?;
    Ok((id, value))
}

/// Reads and checks the CONNECT Properties (v5 §3.1.2.11).
fn connect_properties(r: &mut Reader<'_>) -> Result<(), Fault> {
    let mut block = property_block(r, Scope::Connect)?;
    let mut seen = Seen::default();
    while !block.is_empty() {
        let (id, value) = property(&mut block, Scope::Connect)?;
        seen.insert(id, Scope::Connect)?;
        check_connect_property(id, value)?;
    }
    if seen.contains(AUTHENTICATION_DATA) && !seen.contains(AUTHENTICATION_METHOD) {
        return Err(fault(RejectReason::BadProperties, "authentication data without method"));
    }
    Ok(())
}

/// Value rules of CONNECT Properties (v5 §3.1.2.11.2 - §3.1.2.11.7).
fn check_connect_property(id: u8, value: Value<'_>) -> Result<(), Fault> {
    let bad = |detail| Err(fault(RejectReason::BadProperties, detail));
    match (id, value) {
        (RECEIVE_MAXIMUM, Value::TwoByte(0)) => bad("receive maximum is 0"),
        (MAXIMUM_PACKET_SIZE, Value::FourByte(0)) => bad("maximum packet size is 0"),
        (REQUEST_RESPONSE_INFORMATION, Value::Byte(2..)) => bad("request response information is not 0 or 1"),
        (REQUEST_PROBLEM_INFORMATION, Value::Byte(2..)) => bad("request problem information is not 0 or 1"),
        _ => Ok(()),
    }
}

/// Reads and checks the Will Properties (v5 §3.1.3.2); returns whether the
/// Payload Format Indicator declares the will payload UTF-8.
fn will_properties(r: &mut Reader<'_>) -> Result<bool, Fault> {
    let mut block = property_block(r, Scope::Will)?;
    let mut seen = Seen::default();
    let mut payload_is_utf8 = false;
    while !block.is_empty() {
        let (id, value) = property(&mut block, Scope::Will)?;
        seen.insert(id, Scope::Will)?;
        check_will_property(id, value)?;
        if (id, value) == (PAYLOAD_FORMAT_INDICATOR, Value::Byte(1)) {
            payload_is_utf8 = true;
        }
    }
    Ok(payload_is_utf8)
}

/// Value rules of Will Properties (v5 §3.1.3.2.3, §3.1.3.2.6).
fn check_will_property(id: u8, value: Value<'_>) -> Result<(), Fault> {
    let bad = |detail| Err(fault(RejectReason::BadWillProperties, detail));
    match (id, value) {
        (PAYLOAD_FORMAT_INDICATOR, Value::Byte(2..)) => bad("payload format indicator is not 0 or 1"),
        (RESPONSE_TOPIC, Value::Utf8(topic)) if !is_topic_name(topic) => {
            bad("response topic is empty or has wildcards")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::encode_remaining_length;

    /// Length-prefixed string or binary data.
    fn lp(bytes: &[u8]) -> Vec<u8> {
        let len = u16::try_from(bytes.len()).expect("test data fits u16");
        [&len.to_be_bytes()[..], bytes].concat()
    }

    fn prop_byte(id: u8, value: u8) -> Vec<u8> {
        vec![id, value]
    }

    fn prop_u16(id: u8, value: u16) -> Vec<u8> {
        [&[id][..], &value.to_be_bytes()].concat()
    }

    fn prop_u32(id: u8, value: u32) -> Vec<u8> {
        [&[id][..], &value.to_be_bytes()].concat()
    }

    fn prop_data(id: u8, data: &[u8]) -> Vec<u8> {
        [vec![id], lp(data)].concat()
    }

    fn prop_pair(key: &[u8], value: &[u8]) -> Vec<u8> {
        [vec![USER_PROPERTY], lp(key), lp(value)].concat()
    }

    /// A property block: Property Length then the properties.
    fn block(properties: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_remaining_length(properties.len(), &mut out).expect("small block");
        out.extend_from_slice(properties);
        out
    }

    #[derive(Debug, Clone)]
    struct TestWill {
        /// v5 only: raw property block content (length is added).
        properties: Option<Vec<u8>>,
        topic: Vec<u8>,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    }

    impl TestWill {
        fn new(version: ProtocolVersion) -> Self {
            TestWill {
                properties: (version == ProtocolVersion::V5).then(Vec::new),
                topic: b"clients/c1/status".to_vec(),
                payload: b"offline".to_vec(),
                qos: 1,
                retain: true,
            }
        }
    }

    /// A CONNECT packet described field by field; encoded with derived
    /// flags and lengths, so a test can break exactly one thing.
    #[derive(Debug, Clone)]
    struct TestPacket {
        first_byte: u8,
        name: Vec<u8>,
        level: u8,
        clean: bool,
        /// OR-ed into the derived connect flags.
        extra_flags: u8,
        keep_alive: u16,
        /// v5 only: raw property block content (length is added).
        properties: Option<Vec<u8>>,
        client_id: Vec<u8>,
        will: Option<TestWill>,
        username: Option<Vec<u8>>,
        password: Option<Vec<u8>>,
        /// Appended after the last field (inside the remaining length).
        trailing: Vec<u8>,
    }

    impl TestPacket {
        fn new(version: ProtocolVersion) -> Self {
            TestPacket {
                first_byte: 0x10,
                name: version.protocol_name().to_vec(),
                level: version.level(),
                clean: true,
                extra_flags: 0,
                keep_alive: 60,
                properties: (version == ProtocolVersion::V5).then(Vec::new),
                client_id: b"client-1".to_vec(),
                will: None,
                username: None,
                password: None,
                trailing: Vec::new(),
            }
        }

        /// Will, user name and password all present.
        fn full(version: ProtocolVersion) -> Self {
            TestPacket {
                will: Some(TestWill::new(version)),
                username: Some(b"alice".to_vec()),
                password: Some(b"s3cret\x00\xFF".to_vec()),
                ..TestPacket::new(version)
            }
        }

        fn flags(&self) -> u8 {
            let mut flags = self.extra_flags;
            if self.clean {
                flags |= 0x02;
            }
            if let Some(will) = &self.will {
                flags |= 0x04 | (will.qos << 3);
                if will.retain {
                    flags |= 0x20;
                }
            }
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            flags
        }

        fn body(&self) -> Vec<u8> {
            let mut out = lp(&self.name);
            out.push(self.level);
            out.push(self.flags());
            out.extend_from_slice(&self.keep_alive.to_be_bytes());
            if let Some(properties) = &self.properties {
                out.extend(block(properties));
            }
            out.extend(lp(&self.client_id));
            if let Some(will) = &self.will {
                if let Some(properties) = &will.properties {
                    out.extend(block(properties));
                }
                out.extend(lp(&will.topic));
                out.extend(lp(&will.payload));
            }
            if let Some(username) = &self.username {
                out.extend(lp(username));
            }
            if let Some(password) = &self.password {
                out.extend(lp(password));
            }
            out.extend_from_slice(&self.trailing);
            out
        }

        fn encode(&self) -> Vec<u8> {
            frame(self.first_byte, &self.body())
        }
    }

    /// Fixed header (minimal length encoding) followed by `body`.
    fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first_byte];
        encode_remaining_length(body.len(), &mut out).expect("small body");
        out.extend_from_slice(body);
        out
    }

    fn accept(packet: &TestPacket) -> Connect {
        match parse_connect(&packet.encode()) {
            Ok(connect) => connect,
            Err(e) => panic!("rejected {packet:?}: {e}"),
        }
    }

    fn reject(packet: &TestPacket) -> ConnectError {
        reject_bytes(&packet.encode())
    }

    fn reject_bytes(bytes: &[u8]) -> ConnectError {
        match parse_connect(bytes) {
            Ok(connect) => panic!("accepted {bytes:02X?} as {connect:?}"),
            Err(e) => e,
        }
    }

    fn assert_reason(packet: &TestPacket, reason: RejectReason) {
        assert_eq!(reject(packet).reason, reason, "{packet:?}");
    }

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;
    const VERSIONS: [ProtocolVersion; 3] = [V31, V311, V5];

    // ---- valid packets ----

    #[test]
    fn accepts_minimal_connect_of_every_version() {
        for version in VERSIONS {
            let connect = accept(&TestPacket::new(version));
            assert_eq!(
                connect,
                Connect {
                    version,
                    client_id: "client-1".into(),
                    clean_start: true,
                    keep_alive: 60,
                    username: None,
                    has_password: false,
                    will: None,
                }
            );
        }
    }

    #[test]
    fn accepts_will_username_password_of_every_version() {
        for version in VERSIONS {
            let connect = accept(&TestPacket::full(version));
            assert_eq!(connect.version, version);
            assert_eq!(connect.username.as_deref(), Some("alice"));
            assert!(connect.has_password);
            assert_eq!(connect.will, Some(Will { topic: "clients/c1/status".into(), qos: 1, retain: true }));
        }
    }

    #[test]
    fn accepts_every_will_qos_and_retain() {
        for version in VERSIONS {
            for qos in 0..=2 {
                for retain in [false, true] {
                    let mut packet = TestPacket::new(version);
                    packet.will = Some(TestWill { qos, retain, ..TestWill::new(version) });
                    let will = accept(&packet).will.expect("will present");
                    assert_eq!((will.qos, will.retain), (qos, retain));
                }
            }
        }
    }

    #[test]
    fn accepts_username_without_password() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.username = Some(Vec::new());
            let connect = accept(&packet);
            assert_eq!(connect.username.as_deref(), Some(""));
            assert!(!connect.has_password);
        }
    }

    #[test]
    fn accepts_keep_alive_and_clean_flag_as_sent() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.keep_alive = 0xBEEF;
            packet.clean = false;
            let connect = accept(&packet);
            assert_eq!(connect.keep_alive, 0xBEEF);
            assert!(!connect.clean_start);
        }
    }

    #[test]
    fn accepts_unicode_client_id() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.client_id = "çlïent-😀".as_bytes().to_vec();
            assert_eq!(accept(&packet).client_id, "çlïent-😀");
        }
    }

    #[test]
    fn v31_accepts_23_multibyte_characters() {
        let mut packet = TestPacket::new(V31);
        packet.client_id = "é".repeat(23).into_bytes();
        assert_eq!(accept(&packet).client_id.chars().count(), 23);
    }

    #[test]
    fn v311_accepts_empty_client_id_with_clean_session() {
        let mut packet = TestPacket::new(V311);
        packet.client_id.clear();
        assert_eq!(accept(&packet).client_id, "");
    }

    #[test]
    fn v5_accepts_empty_client_id_without_clean_start() {
        let mut packet = TestPacket::new(V5);
        packet.client_id.clear();
        packet.clean = false;
        assert_eq!(accept(&packet).client_id, "");
    }

    #[test]
    fn v5_accepts_password_without_username() {
        let mut packet = TestPacket::new(V5);
        packet.password = Some(b"token".to_vec());
        let connect = accept(&packet);
        assert_eq!(connect.username, None);
        assert!(connect.has_password);
    }

    fn all_connect_properties() -> Vec<u8> {
        [
            prop_u32(SESSION_EXPIRY_INTERVAL, u32::MAX),
            prop_u16(RECEIVE_MAXIMUM, 1),
            prop_u32(MAXIMUM_PACKET_SIZE, 1),
            prop_u16(TOPIC_ALIAS_MAXIMUM, 0),
            prop_byte(REQUEST_RESPONSE_INFORMATION, 1),
            prop_byte(REQUEST_PROBLEM_INFORMATION, 0),
            prop_pair(b"k", b"v"),
            prop_pair(b"k", b"v"),
            prop_pair(b"", "ü".as_bytes()),
            prop_data(AUTHENTICATION_DATA, b"\x00\x01\x02"),
            prop_data(AUTHENTICATION_METHOD, b"SCRAM-SHA-1"),
        ]
        .concat()
    }

    fn all_will_properties() -> Vec<u8> {
        [
            prop_u32(WILL_DELAY_INTERVAL, 30),
            prop_byte(PAYLOAD_FORMAT_INDICATOR, 1),
            prop_u32(MESSAGE_EXPIRY_INTERVAL, 3600),
            prop_data(CONTENT_TYPE, b"text/plain"),
            prop_data(RESPONSE_TOPIC, b"replies/c1"),
            prop_data(CORRELATION_DATA, b"\xFF\xFE"),
            prop_pair(b"why", b"gone"),
            prop_pair(b"why", b"really gone"),
        ]
        .concat()
    }

    #[test]
    fn v5_accepts_every_property() {
        let mut packet = TestPacket::full(V5);
        packet.properties = Some(all_connect_properties());
        if let Some(will) = &mut packet.will {
            will.properties = Some(all_will_properties());
            will.payload = "ünïcode".as_bytes().to_vec();
        }
        let connect = accept(&packet);
        assert_eq!(connect.client_id, "client-1");
        assert!(connect.will.is_some());
    }

    #[test]
    fn v5_accepts_non_utf8_will_payload_with_format_0() {
        let mut packet = TestPacket::new(V5);
        packet.will = Some(TestWill {
            properties: Some(prop_byte(PAYLOAD_FORMAT_INDICATOR, 0)),
            payload: vec![0xFF, 0x00],
            ..TestWill::new(V5)
        });
        accept(&packet);
    }

    #[test]
    fn accepts_two_byte_remaining_length() {
        let mut packet = TestPacket::new(V311);
        packet.client_id = vec![b'x'; 300];
        let bytes = packet.encode();
        assert_eq!(check_fixed_header(&bytes).map(|h| h.header_len), Ok(3));
        assert_eq!(accept(&packet).client_id.len(), 300);
    }

    // ---- fixed header ----

    #[test]
    fn rejects_other_packet_types() {
        for packet_type in [0u8, 2, 3, 8, 12, 14, 15] {
            let mut packet = TestPacket::new(V311);
            packet.first_byte = packet_type << 4;
            let e = reject(&packet);
            assert_eq!((e.reason, e.version), (RejectReason::NotConnect, None));
        }
    }

    #[test]
    fn rejects_connect_header_flags() {
        for first_byte in [0x11, 0x12, 0x14, 0x18, 0x1F] {
            let mut packet = TestPacket::new(V311);
            packet.first_byte = first_byte;
            assert_reason(&packet, RejectReason::BadHeaderFlags);
        }
    }

    #[test]
    fn rejects_non_minimal_remaining_length() {
        let body = TestPacket::new(V311).body();
        let len = u8::try_from(body.len()).expect("short body");
        // Same value with a redundant zero continuation byte.
        let bytes = [&[0x10, len | 0x80, 0x00][..], &body].concat();
        assert_eq!(reject_bytes(&bytes).reason, RejectReason::MalformedLength);
    }

    #[test]
    fn rejects_five_byte_remaining_length() {
        let bytes = [0x10, 0x80, 0x80, 0x80, 0x80, 0x01];
        let e = reject_bytes(&bytes);
        assert_eq!((e.reason, e.version), (RejectReason::MalformedLength, None));
    }

    #[test]
    fn rejects_packet_shorter_than_remaining_length() {
        let bytes = TestPacket::new(V311).encode();
        let short = bytes.get(..bytes.len() - 1).expect("non-empty");
        assert_eq!(reject_bytes(short).reason, RejectReason::Truncated);
        assert_eq!(reject_bytes(&[]).reason, RejectReason::Truncated);
        assert_eq!(reject_bytes(&[0x10]).reason, RejectReason::Truncated);
    }

    #[test]
    fn rejects_packet_longer_than_remaining_length() {
        let mut bytes = TestPacket::new(V311).encode();
        bytes.push(0xE0); // start of the next packet: not allowed here
        assert_eq!(reject_bytes(&bytes).reason, RejectReason::TrailingBytes);
    }

    // ---- protocol name and level ----

    #[test]
    fn rejects_unknown_protocol_name() {
        for name in [&b"MQTX"[..], b"mqtt", b"MQTT\0", b"", b"\xFF\xFE"] {
            let mut packet = TestPacket::new(V311);
            packet.name = name.to_vec();
            let e = reject(&packet);
            assert_eq!((e.reason, e.version), (RejectReason::BadProtocolName, None), "{name:?}");
        }
    }

    #[test]
    fn rejects_mismatched_name_and_level() {
        let cases = [(NAME_MQISDP, 4, V311), (NAME_MQISDP, 5, V5), (NAME_MQTT, 3, V31)];
        for (name, level, version) in cases {
            let mut packet = TestPacket::new(version);
            packet.name = name.to_vec();
            packet.level = level;
            let e = reject(&packet);
            assert_eq!(e.reason, RejectReason::BadProtocolName);
            assert_eq!(e.version, Some(version));
            assert_eq!(e.connack(), None);
        }
    }

    #[test]
    fn rejects_unsupported_level() {
        for (name, level) in [(NAME_MQTT, 6), (NAME_MQTT, 0), (NAME_MQTT, 0x84), (NAME_MQISDP, 2)] {
            let mut packet = TestPacket::new(V311);
            packet.name = name.to_vec();
            packet.level = level;
            let e = reject(&packet);
            assert_eq!((e.reason, e.version), (RejectReason::UnsupportedVersion, None));
            assert_eq!(e.connack(), Some(vec![0x20, 0x02, 0x00, 0x01]));
        }
    }

    // ---- connect flags ----

    #[test]
    fn rejects_reserved_flag() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.extra_flags = 0x01;
            assert_reason(&packet, RejectReason::ReservedFlag);
        }
    }

    #[test]
    fn rejects_will_qos_3() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.will = Some(TestWill { qos: 3, ..TestWill::new(version) });
            assert_reason(&packet, RejectReason::BadWillFlags);
        }
    }

    #[test]
    fn rejects_will_qos_without_will_flag() {
        for version in VERSIONS {
            for qos_bits in [0x08, 0x10, 0x18] {
                let mut packet = TestPacket::new(version);
                packet.extra_flags = qos_bits;
                assert_reason(&packet, RejectReason::BadWillFlags);
            }
        }
    }

    #[test]
    fn rejects_will_retain_without_will_flag() {
        for version in VERSIONS {
            let mut packet = TestPacket::new(version);
            packet.extra_flags = 0x20;
            assert_reason(&packet, RejectReason::BadWillFlags);
        }
    }

    #[test]
    fn v3_rejects_password_without_username() {
        for version in [V31, V311] {
            let mut packet = TestPacket::new(version);
            packet.password = Some(b"pw".to_vec());
            assert_reason(&packet, RejectReason::BadCredentialFlags);
        }
    }

    // ---- UTF-8 strings ----

    /// Ill-formed UTF-8 or U+0000 (MQTT 3.1.1 §1.5.3).
    const BAD_UTF8: [&[u8]; 4] = [b"a\0b", b"\xC0\x80", b"\xED\xA0\x80", b"\xFF"];

    #[test]
    fn rejects_bad_utf8_client_id() {
        for version in VERSIONS {
            for bad in BAD_UTF8 {
                let mut packet = TestPacket::new(version);
                packet.client_id = bad.to_vec();
                assert_reason(&packet, RejectReason::BadUtf8);
            }
        }
    }

    #[test]
    fn rejects_bad_utf8_username() {
        for version in VERSIONS {
            for bad in BAD_UTF8 {
                let mut packet = TestPacket::full(version);
                packet.username = Some(bad.to_vec());
                assert_reason(&packet, RejectReason::BadUtf8);
            }
        }
    }

    #[test]
    fn rejects_bad_utf8_will_topic() {
        for version in VERSIONS {
            for bad in BAD_UTF8 {
                let mut packet = TestPacket::full(version);
                if let Some(will) = &mut packet.will {
                    will.topic = bad.to_vec();
                }
                assert_reason(&packet, RejectReason::BadUtf8);
            }
        }
    }

    #[test]
    fn v5_rejects_bad_utf8_in_property_strings() {
        for bad in BAD_UTF8 {
            let mut packet = TestPacket::new(V5);
            packet.properties = Some(prop_pair(b"key", bad));
            assert_reason(&packet, RejectReason::BadUtf8);

            let mut packet = TestPacket::new(V5);
            packet.properties = Some(prop_data(AUTHENTICATION_METHOD, bad));
            assert_reason(&packet, RejectReason::BadUtf8);

            let mut packet = TestPacket::new(V5);
            packet.will = Some(TestWill { properties: Some(prop_data(CONTENT_TYPE, bad)), ..TestWill::new(V5) });
            assert_reason(&packet, RejectReason::BadUtf8);
        }
    }

    #[test]
    fn password_and_will_payload_are_binary() {
        for version in VERSIONS {
            let mut packet = TestPacket::full(version);
            packet.password = Some(b"\0\xFF".to_vec());
            if let Some(will) = &mut packet.will {
                will.payload = b"\0\xFF".to_vec();
            }
            accept(&packet);
        }
    }

    // ---- client identifier ----

    #[test]
    fn v31_rejects_empty_client_id() {
        let mut packet = TestPacket::new(V31);
        packet.client_id.clear();
        let e = reject(&packet);
        assert_eq!(e.reason, RejectReason::BadClientId);
        assert_eq!(e.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
    }

    #[test]
    fn v31_accepts_long_client_ids_unless_strict() {
        let strict = ConnectRules { strict_v31_client_id: true };
        for len in [24, 100, 65_535] {
            let mut packet = TestPacket::new(V31);
            packet.client_id = vec![b'a'; len];
            assert_eq!(accept(&packet).client_id.len(), len, "as brokers do by default");
            let e = parse_connect_with(&packet.encode(), strict).expect_err("strict: over 23 characters");
            assert_eq!(e.reason, RejectReason::BadClientId);
            assert_eq!(e.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
        }
        let mut packet = TestPacket::new(V31);
        packet.client_id = "é".repeat(23).into_bytes();
        assert!(parse_connect_with(&packet.encode(), strict).is_ok(), "23 characters (46 bytes) pass when strict");
        // The strict limit is 3.1's only.
        for version in [V311, V5] {
            let mut packet = TestPacket::new(version);
            packet.client_id = vec![b'a'; 24];
            assert!(parse_connect_with(&packet.encode(), strict).is_ok(), "{version:?}");
        }
    }

    #[test]
    fn sniff_version_reads_the_first_bytes_of_a_connect() {
        for version in VERSIONS {
            let bytes = TestPacket::full(version).encode();
            // Fixed header (2) + name (2 + 4 or 6) + level (1).
            let needed = 2 + 2 + version.protocol_name().len() + 1;
            assert_eq!(sniff_version(&bytes), Some(version));
            assert_eq!(sniff_version(&bytes[..needed]), Some(version), "{version:?}");
            assert_eq!(sniff_version(&bytes[..needed - 1]), None, "{version:?}: level missing");
        }
        // A header declaring far more than was sent still names its version.
        let mut big = vec![0x10, 0xFF, 0xFF, 0x03, 0x00, 0x04];
        big.extend_from_slice(b"MQTT\x05");
        assert_eq!(sniff_version(&big), Some(V5));
        big[9] = 6;
        assert_eq!(sniff_version(&big), None, "unknown level");
        assert_eq!(sniff_version(&[0x30, 0x02, 0x00, 0x00]), None, "not a CONNECT");
        assert_eq!(sniff_version(&frame(0x10, &[0x00, 0x04, b'M', b'Q', b'T', b'T', 3])), None, "name/level mismatch");
    }

    #[test]
    fn v311_rejects_empty_client_id_without_clean_session() {
        let mut packet = TestPacket::new(V311);
        packet.client_id.clear();
        packet.clean = false;
        let e = reject(&packet);
        assert_eq!(e.reason, RejectReason::BadClientId);
        assert_eq!(e.connack(), Some(vec![0x20, 0x02, 0x00, 0x02]));
    }

    // ---- will topic ----

    #[test]
    fn rejects_bad_will_topic() {
        for version in VERSIONS {
            for topic in [&b""[..], b"a/+/b", b"a/#", b"#", b"+"] {
                let mut packet = TestPacket::full(version);
                if let Some(will) = &mut packet.will {
                    will.topic = topic.to_vec();
                }
                assert_reason(&packet, RejectReason::BadWillTopic);
            }
        }
    }

    // ---- v5 CONNECT properties ----

    fn v5_with_properties(properties: Vec<u8>) -> TestPacket {
        TestPacket { properties: Some(properties), ..TestPacket::new(V5) }
    }

    #[test]
    fn v5_rejects_bad_connect_properties() {
        let cases: [(&str, Vec<u8>); 14] = [
            ("unknown id", prop_byte(0x7F, 0)),
            ("will-only id", prop_byte(PAYLOAD_FORMAT_INDICATOR, 0)),
            ("multi-byte id", vec![0x80, 0x01, 0x00]),
            ("receive maximum 0", prop_u16(RECEIVE_MAXIMUM, 0)),
            ("maximum packet size 0", prop_u32(MAXIMUM_PACKET_SIZE, 0)),
            ("request response information 2", prop_byte(REQUEST_RESPONSE_INFORMATION, 2)),
            ("request problem information 255", prop_byte(REQUEST_PROBLEM_INFORMATION, 255)),
            ("auth data without method", prop_data(AUTHENTICATION_DATA, b"x")),
            (
                "duplicate session expiry",
                [prop_u32(SESSION_EXPIRY_INTERVAL, 1), prop_u32(SESSION_EXPIRY_INTERVAL, 1)].concat(),
            ),
            (
                "duplicate auth method",
                [prop_data(AUTHENTICATION_METHOD, b"a"), prop_data(AUTHENTICATION_METHOD, b"a")].concat(),
            ),
            ("duplicate receive maximum", [prop_u16(RECEIVE_MAXIMUM, 5), prop_u16(RECEIVE_MAXIMUM, 5)].concat()),
            ("value cut by block end", vec![SESSION_EXPIRY_INTERVAL, 0, 0]),
            ("string cut by block end", vec![AUTHENTICATION_METHOD, 0, 5, b'a']),
            ("pair missing value", [vec![USER_PROPERTY], lp(b"key")].concat()),
        ];
        for (what, properties) in cases {
            let e = reject(&v5_with_properties(properties));
            assert_eq!(e.reason, RejectReason::BadProperties, "{what}");
            assert_eq!(e.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]), "{what}");
        }
    }

    #[test]
    fn v5_rejects_non_minimal_property_length() {
        let mut body = TestPacket::new(V311).body();
        // Turn it into v5 by hand: level 5, then a 2-byte encoding of 0 after keep alive.
        if let Some(level) = body.get_mut(6) {
            *level = 5;
        }
        let (head, tail) = body.split_at(10);
        let bytes = frame(0x10, &[head, &[0x80, 0x00], tail].concat());
        assert_eq!(reject_bytes(&bytes).reason, RejectReason::BadProperties);
    }

    #[test]
    fn v5_rejects_property_length_past_packet_end() {
        // Declares 100 bytes of properties; the packet ends well before.
        let mut packet = TestPacket::new(V5);
        packet.properties = None;
        packet.client_id.clear();
        packet.trailing = vec![100];
        assert_reason(&packet, RejectReason::Truncated);
    }

    // ---- v5 will properties ----

    fn v5_with_will_properties(properties: Vec<u8>) -> TestPacket {
        TestPacket { will: Some(TestWill { properties: Some(properties), ..TestWill::new(V5) }), ..TestPacket::new(V5) }
    }

    #[test]
    fn v5_rejects_bad_will_properties() {
        let cases: [(&str, Vec<u8>); 9] = [
            ("connect-only id", prop_u32(SESSION_EXPIRY_INTERVAL, 1)),
            ("unknown id", prop_byte(0x00, 0)),
            ("payload format 2", prop_byte(PAYLOAD_FORMAT_INDICATOR, 2)),
            ("response topic wildcard", prop_data(RESPONSE_TOPIC, b"replies/#")),
            ("response topic empty", prop_data(RESPONSE_TOPIC, b"")),
            ("duplicate will delay", [prop_u32(WILL_DELAY_INTERVAL, 1), prop_u32(WILL_DELAY_INTERVAL, 2)].concat()),
            ("duplicate content type", [prop_data(CONTENT_TYPE, b"a"), prop_data(CONTENT_TYPE, b"b")].concat()),
            ("value cut by block end", vec![MESSAGE_EXPIRY_INTERVAL, 0]),
            ("binary cut by block end", vec![CORRELATION_DATA, 0]),
        ];
        for (what, properties) in cases {
            let e = reject(&v5_with_will_properties(properties));
            assert_eq!(e.reason, RejectReason::BadWillProperties, "{what}");
            assert_eq!(e.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]), "{what}");
        }
    }

    #[test]
    fn v5_rejects_non_utf8_will_payload_with_format_1() {
        let mut packet = v5_with_will_properties(prop_byte(PAYLOAD_FORMAT_INDICATOR, 1));
        if let Some(will) = &mut packet.will {
            will.payload = vec![0xC3, 0x28];
        }
        let e = reject(&packet);
        assert_eq!(e.reason, RejectReason::BadWillPayload);
        assert_eq!(e.connack(), Some(vec![0x20, 0x03, 0x00, 0x99, 0x00]), "payload format invalid");
    }

    // ---- truncation and leftovers ----

    #[test]
    fn every_cut_body_is_truncated() {
        for version in VERSIONS {
            let mut packet = TestPacket::full(version);
            if version == V5 {
                packet.properties = Some(all_connect_properties());
                if let Some(will) = &mut packet.will {
                    will.properties = Some(all_will_properties());
                }
            }
            let body = packet.body();
            for cut in 0..body.len() {
                let prefix = body.get(..cut).expect("cut within body");
                let e = reject_bytes(&frame(0x10, prefix));
                assert_eq!(e.reason, RejectReason::Truncated, "{version:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn every_prefix_of_a_packet_is_truncated() {
        for version in VERSIONS {
            let bytes = TestPacket::full(version).encode();
            for cut in 0..bytes.len() {
                let prefix = bytes.get(..cut).expect("cut within packet");
                assert_eq!(reject_bytes(prefix).reason, RejectReason::Truncated);
            }
        }
    }

    #[test]
    fn rejects_bytes_after_last_field() {
        for version in VERSIONS {
            for base in [TestPacket::new(version), TestPacket::full(version)] {
                let mut packet = base;
                packet.trailing = vec![0x00];
                assert_reason(&packet, RejectReason::TrailingBytes);
            }
        }
    }

    #[test]
    fn rejects_field_whose_flag_is_missing() {
        // A user name on the wire without the User Name Flag is a leftover.
        let mut packet = TestPacket::new(V311);
        packet.trailing = lp(b"alice");
        assert_reason(&packet, RejectReason::TrailingBytes);
    }

    // ---- error reporting ----

    #[test]
    fn labels_are_unique_snake_case() {
        let mut labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        let snake = |l: &str| l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        assert!(labels.iter().all(|l| snake(l)), "{labels:?}");
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        assert_eq!(RejectReason::NotConnect.label(), "not_connect");
        assert_eq!(RejectReason::BadHeaderFlags.label(), "bad_header_flags");
    }

    #[test]
    fn version_is_reported_once_known() {
        let mut packet = TestPacket::new(V5);
        packet.extra_flags = 0x01;
        assert_eq!(reject(&packet).version, Some(V5));
        packet.first_byte = 0x20;
        assert_eq!(reject(&packet).version, None);
    }

    #[test]
    fn connack_table() {
        use RejectReason as R;
        let v3 = |code| Some(vec![0x20, 0x02, 0x00, code]);
        let v5 = |code| Some(vec![0x20, 0x03, 0x00, code, 0x00]);
        let error = |reason, version| ConnectError { reason, version, detail: "" };
        for reason in RejectReason::ALL {
            let expected_unknown = match reason {
                R::UnsupportedVersion => v3(0x01),
                _ => None,
            };
            assert_eq!(error(reason, None).connack(), expected_unknown, "{reason:?}");

            let expected_v5 = match reason {
                R::NotConnect | R::BadHeaderFlags | R::BadProtocolName => None,
                R::UnsupportedVersion => v5(0x84),
                R::BadClientId => v5(0x85),
                R::BadWillTopic | R::BadCredentialFlags => v5(0x82),
                R::BadWillPayload => v5(0x99),
                R::ReservedFlag | R::BadWillFlags => v5(0x81),
                _ => v5(0x81),
            };
            assert_eq!(error(reason, Some(V5)).connack(), expected_v5, "{reason:?}");

            let expected_v3 = match reason {
                R::UnsupportedVersion => v3(0x01),
                R::BadClientId => v3(0x02),
                _ => None,
            };
            for version in [V31, V311] {
                assert_eq!(error(reason, Some(version)).connack(), expected_v3, "{reason:?}");
            }
        }
    }

    #[test]
    fn error_display_names_reason_and_detail() {
        let mut packet = TestPacket::new(V311);
        packet.extra_flags = 0x01;
        assert_eq!(reject(&packet).to_string(), "ReservedFlag: reserved connect flag is set");
    }

    #[test]
    fn version_helpers() {
        for version in VERSIONS {
            assert_eq!(ProtocolVersion::from_level(version.level()), Some(version));
        }
        assert_eq!(ProtocolVersion::from_level(6), None);
        assert_eq!(VERSIONS.map(ProtocolVersion::as_str), ["3.1", "3.1.1", "5"]);
    }

    // ---- robustness ----

    /// xorshift64: a deterministic pseudo-random source for mutation tests.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn mutated_packets_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15;
        let mut seeds = Vec::new();
        for version in VERSIONS {
            seeds.push(TestPacket::full(version));
        }
        seeds.push(TestPacket { properties: Some(all_connect_properties()), ..TestPacket::full(V5) });
        let seeds: Vec<Vec<u8>> = seeds.iter().map(TestPacket::encode).collect();
        let mut accepted = 0;
        for round in 0..200_000 {
            let Some(seed) = seeds.get(round % seeds.len()) else {
                continue;
            };
            let mut bytes = seed.clone();
            let edits = 1 + next(&mut state) % 4;
            for _ in 0..edits {
                let len = u64::try_from(bytes.len()).unwrap_or(1).max(1);
                let at = usize::try_from(next(&mut state) % len).unwrap_or(0);
                let byte = next(&mut state).to_le_bytes()[0];
                match next(&mut state) % 3 {
                    0 => {
                        if let Some(slot) = bytes.get_mut(at) {
                            *slot = byte;
                        }
                    }
                    1 => bytes.insert(at.min(bytes.len()), byte),
                    _ => {
                        if at < bytes.len() {
                            bytes.remove(at);
                        }
                    }
                }
            }
            if parse_connect(&bytes).is_ok() {
                accepted += 1;
            }
        }
        // Most random edits must be caught; some (e.g. in a string's content) are fine.
        assert!(accepted < 200_000 / 2, "accepted {accepted}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x0123_4567_89AB_CDEF;
        for _ in 0..50_000 {
            let len = usize::try_from(next(&mut state) % 64).unwrap_or(0);
            let mut bytes: Vec<u8> = (0..len).map(|_| next(&mut state).to_le_bytes()[0]).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 0x10;
            }
            let _ = parse_connect(&bytes);
            let _ = check_fixed_header(&bytes);
        }
    }
}
