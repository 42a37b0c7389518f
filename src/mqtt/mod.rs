//! MQTT first-packet handling for the load balancer.
//!
//! The balancer reads exactly one packet from a new client, the CONNECT, to
//! learn the protocol version and client identifier before it picks a broker.
//! That packet is validated strictly, because a broker behind the balancer
//! should never see anything a conforming broker would have refused:
//!
//! - [`frame`]: the fixed header and Variable Byte Integer, plus the
//!   crate-internal zero-copy `Reader` over MQTT data types.
//! - [`connect`]: [`parse_connect`], a strict validator for MQTT 3.1
//!   ("MQIsdp", level 3), 3.1.1 ("MQTT", level 4) and 5 ("MQTT", level 5).
//! - [`connack`](mod@connack): the refusal CONNACK for each version
//!   ([`connack::connack`]).
//! - [`first_packet`]: reading the first packet off the client's stream,
//!   whole and under a size cap.
//! - [`version`]: the protocol versions, shared by the validator and the
//!   CONNACK writer.
//!
//! The other MQTT bytes mqtt-lb builds or recognises live here too:
//! [`disconnect`] (the client's DISCONNECT, the shutdown notice),
//! [`boundary`] (packet boundaries the relay stops at), [`probe`] (the
//! `mqtt` health check's CONNECT and the CONNACK it expects) and
//! [`server_keep_alive`] (the keep-alive an MQTT 5 broker imposes in its
//! CONNACK, which the relay's keep-alive deadline follows) and [`rewrite`]
//! (the CONNECT re-encoded with the client certificate's name as its User
//! Name, `tls.username_from_certificate`).
//!
//! The parsers never panic, never allocate more than the input size, and
//! borrow from the input until the few strings kept in [`Connect`] are copied.
//!
//! # Reading the first packet
//!
//! 1. Call [`check_fixed_header`] on the bytes received so far. It only looks
//!    at the header: [`FrameError::Incomplete`] means "read more",
//!    [`FrameError::MalformedRemainingLength`] means "close".
//! 2. Once `total_len()` bytes are buffered (and the length is acceptable),
//!    pass exactly those bytes to [`parse_connect`].
//! 3. On error, send [`ConnectError::connack`] if it is `Some`, then close.
//!
//! # Which CONNACK a refused CONNECT gets
//!
//! | Reason | version unknown | 3.1 / 3.1.1 | 5 |
//! |---|---|---|---|
//! | `NotConnect`, `BadHeaderFlags`, `BadProtocolName` | close | close | close |
//! | `UnsupportedVersion` | `0x01` (3.1.1 form) | `0x01` | `0x84` |
//! | `BadClientId` | - | `0x02` identifier rejected | `0x85` |
//! | `BadWillTopic`, `BadCredentialFlags` | close | close | `0x82` protocol error |
//! | `ReservedFlag`, `BadWillFlags` (MQTT 5 calls these malformed [MQTT-3.1.2-3], [MQTT-3.1.2-11..13]) | close | close | `0x81` malformed |
//! | `Truncated`, `TrailingBytes`, `BadUtf8`, `MalformedLength`, `BadProperties`, `BadWillProperties` | close | close | `0x81` malformed |
//! | `BadWillPayload` (format indicator 1, payload not UTF-8) | - | - | `0x99` payload format invalid |
//! | larger than `max_connect_size` (found by the session from the fixed header, [`sniff_version`]) | close | close | `0x95` packet too large |
//!
//! "Version unknown" covers everything found before a valid Protocol Level
//! was read (fixed header, protocol name, an unknown level). MQTT 3.1 and
//! 3.1.1 have no code for a malformed packet, so the server just closes
//! (MQTT 3.1.1 §4.8). An unknown level is answered in 3.1.1 form, as
//! brokers do [MQTT-3.1.2-2]. `BadCredentialFlags` only occurs for 3.1 /
//! 3.1.1; `UnsupportedVersion` only with an unknown level; a name/level
//! mismatch (`BadProtocolName`) carries the level's version but is closed.

pub mod boundary;
pub mod connack;
pub mod connect;
pub mod disconnect;
pub mod first_packet;
pub mod frame;
pub mod probe;
pub mod rewrite;
pub mod server_keep_alive;
pub mod version;

// The `connack` function is not re-exported: `mqtt::connack` names the module.
pub use connack::Refusal;
pub use connect::{
    parse_connect, parse_connect_with, sniff_version, Connect, ConnectError, ConnectRules, RejectReason, Will,
};
pub use frame::{
    check_fixed_header, decode_varint, encode_remaining_length, FixedHeader, FrameError, MAX_REMAINING_LENGTH,
};
pub use version::ProtocolVersion;
