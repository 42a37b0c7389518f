//! The range of every number and duration of the file that has no check of its own elsewhere. Each is a value that
//! reaches a timer, a counter or an allocation: a value serde accepts (any `usize`, any duration that fits in
//! milliseconds) could otherwise panic or wedge a running process (a deadline past what `Instant` can hold, a
//! counter near `usize::MAX`). So what `check` accepts, `run` runs and a reload applies. The ranges are generous:
//! they refuse what no deployment means, not what an unusual one might.

use std::fmt;
use std::time::Duration;

/// What a bound measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A whole number (connections, probes, tokens per second).
    Count,
    /// A duration, bounds in milliseconds.
    Millis,
    /// A size, bounds in bytes.
    Bytes,
}

/// The allowed range of the keys named `field` (the last part of their key path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub field: &'static str,
    pub min: u64,
    pub max: u64,
    pub measure: Measure,
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

const fn count(field: &'static str, min: u64, max: u64) -> Bound {
    Bound { field, min, max, measure: Measure::Count }
}

const fn bytes(field: &'static str, min: u64, max: u64) -> Bound {
    Bound { field, min, max, measure: Measure::Bytes }
}

const fn millis(field: &'static str, min: u64, max: u64) -> Bound {
    Bound { field, min, max, measure: Measure::Millis }
}

/// Every bounded key, by field name. Keys with the same name have the same meaning (a timeout, a rate) wherever
/// they stand, so they share a range.
pub const BOUNDS: &[Bound] = &[
    // `limits` (and `backends[].connect_timeout`): how long one phase of one connection may take.
    millis("connect_timeout", 1, HOUR_MS),
    millis("handshake_timeout", 1, HOUR_MS),
    // `admin.request_timeout`: a request's head and body.
    millis("request_timeout", 1, HOUR_MS),
    // 0: no idle timeout.
    millis("idle_timeout", 0, 7 * DAY_MS),
    count("max_connections", 0, 10_000_000),
    count("max_handshakes", 0, 10_000_000),
    // The smallest CONNECT (3.1.1, empty client id) is 14 bytes; the largest a broker accepts is 256 MiB.
    bytes("max_connect_size", 16, 256 << 20),
    bytes("max_ws_frame_size", 1 << 10, 256 << 20),
    count("max_connections_per_ip", 0, 10_000_000),
    count("max_connection_rate_per_ip", 0, 1_000_000),
    count("connection_rate_burst", 1, 1_000_000),
    // `backends[].health`.
    millis("interval", 1, HOUR_MS),
    millis("timeout", 1, HOUR_MS),
    count("rise", 1, 1_000),
    count("fall", 1, 1_000),
    // `backends[].servers[]`.
    count("weight", 1, 1_000),
    // `shutdown`.
    millis("grace", 0, HOUR_MS),
    millis("drain_timeout", 0, 7 * DAY_MS),
    // `coap` listeners.
    millis("flow_idle_timeout", 1, 7 * DAY_MS),
    // Each flow holds a socket (a file descriptor).
    count("max_flows", 1, 1_000_000),
    // The largest UDP payload over IPv4.
    bytes("max_datagram_size", 64, 65_507),
    count("dtls_cid_length", 1, 255),
    count("max_dtls_cids", 1, 10_000_000),
    millis("dtls_cid_timeout", 1, 7 * DAY_MS),
    count("max_flows_per_ip", 0, 1_000_000),
    count("max_datagram_rate_per_flow", 0, 1_000_000),
    count("datagram_rate_burst", 1, 1_000_000),
];

/// The bound of keys named `field`.
pub fn of(field: &str) -> Option<&'static Bound> {
    BOUNDS.iter().find(|b| b.field == field)
}

impl Bound {
    /// Whether `value` (a count, or milliseconds) is in range.
    pub fn contains(&self, value: u64) -> bool {
        (self.min..=self.max).contains(&value)
    }

    /// The error message for a value out of range.
    pub fn refusal(&self, shown: impl fmt::Display) -> String {
        format!("{shown} is out of range: allowed {self}")
    }
}

impl fmt::Display for Bound {
    /// `0 to 10000000`, `1ms to 1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.measure {
            Measure::Count => write!(f, "{} to {}", self.min, self.max),
            Measure::Millis => write!(f, "{} to {}", show_millis(self.min), show_millis(self.max)),
            Measure::Bytes => write!(f, "{} to {}", show_bytes(self.min), show_bytes(self.max)),
        }
    }
}

/// A duration in the file's own notation, in the largest unit that divides it (`0`, `250ms`, `2s`, `7d` as `168h`).
pub fn show_duration(d: Duration) -> String {
    show_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A size in the file's notation: `16B`, `1KiB`, `256MiB`.
pub fn show_bytes(n: u64) -> String {
    match n {
        _ if n > 0 && n.is_multiple_of(1 << 20) => format!("{}MiB", n >> 20),
        _ if n > 0 && n.is_multiple_of(1 << 10) => format!("{}KiB", n >> 10),
        _ => format!("{n}B"),
    }
}

fn show_millis(ms: u64) -> String {
    match ms {
        0 => "0".to_owned(),
        _ if ms.is_multiple_of(HOUR_MS) => format!("{}h", ms / HOUR_MS),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_the_file_writes_them() {
        assert_eq!(of("connect_timeout").map(ToString::to_string).as_deref(), Some("1ms to 1h"));
        assert_eq!(of("idle_timeout").map(ToString::to_string).as_deref(), Some("0 to 168h"));
        assert_eq!(of("max_connections").map(ToString::to_string).as_deref(), Some("0 to 10000000"));
        assert_eq!(show_duration(Duration::from_millis(90_000)), "90s");
        assert_eq!(of("max_connect_size").map(ToString::to_string).as_deref(), Some("16B to 256MiB"));
    }

    #[test]
    fn every_field_has_one_bound() {
        for b in BOUNDS {
            assert_eq!(BOUNDS.iter().filter(|o| o.field == b.field).count(), 1, "{}", b.field);
            assert!(b.min <= b.max, "{}", b.field);
        }
    }
}
