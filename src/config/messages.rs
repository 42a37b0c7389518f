//! What a reading error says to the operator: an unknown key with the closest valid one and the keys valid at that
//! place, a key of another listener protocol with the protocols that have it, a duplicate key with its line. Other
//! errors keep the YAML library's text (it names what was expected).

use serde_saphyr::Error;

use super::listener_schema::keys_of;
use super::runtime::ListenerProtocol;
use super::validate::bounds;

/// The message of a reading error at the key path `key`; `protocols` are the listeners' (empty if not known yet).
pub(super) fn describe(error: &Error, key: &str, protocols: &[ListenerProtocol]) -> String {
    match error {
        Error::SerdeUnknownField { field, expected, .. } => match listener_protocol(key, field, protocols) {
            Some(protocol) => listener_key(field, protocol, expected),
            None => unknown_key(field, expected),
        },
        Error::DuplicateMappingKey { key: Some(duplicate), location } => {
            format!("duplicate key `{duplicate}` (again at line {}): each key may appear once", location.line())
        }
        Error::DuplicateMappingKey { key: None, location } => {
            format!("duplicate key at line {}: each key may appear once", location.line())
        }
        other => match bounds::of(key.rsplit('.').next().unwrap_or_default()) {
            // A number serde could not take (negative, too large for its type): say what is allowed.
            Some(bound) => format!("{other} (allowed {bound})"),
            None => other.to_string(),
        },
    }
}

/// Where the error is: `path` as the reader tracked it, except that a duplicate key, which it cannot name, is named.
pub(super) fn key_path(error: &Error, path: &str) -> String {
    let path = if path == "." { "" } else { path };
    match (error, path.strip_suffix('?')) {
        (Error::DuplicateMappingKey { key: Some(duplicate), .. }, Some(parent)) => format!("{parent}{duplicate}"),
        _ => path.to_owned(),
    }
}

/// The protocol of the listener whose own key `field` is, when `key` is `listeners[i].field`.
fn listener_protocol(key: &str, field: &str, protocols: &[ListenerProtocol]) -> Option<ListenerProtocol> {
    let index = key.strip_prefix("listeners[")?.strip_suffix(field)?.strip_suffix("].")?;
    protocols.get(index.parse::<usize>().ok()?).copied()
}

/// A key a listener of `protocol` does not have: which protocols have it, or else an unknown key.
fn listener_key(field: &str, protocol: ListenerProtocol, expected: &[&str]) -> String {
    let owners: Vec<&str> =
        [ListenerProtocol::Mqtt, ListenerProtocol::Tcp, ListenerProtocol::Websocket, ListenerProtocol::Coap]
            .into_iter()
            .filter(|p| keys_of(*p).contains(&field))
            .map(ListenerProtocol::as_str)
            .collect();
    let why = match (protocol, field) {
        _ if owners.is_empty() => return unknown_key(field, expected),
        (ListenerProtocol::Coap, "tls") => {
            "a coap listener passes DTLS through to the servers (which hold the keys): no tls here".to_owned()
        }
        (ListenerProtocol::Coap, "trusted_proxies") => "PROXY headers are read on TCP listeners only".to_owned(),
        _ => format!("only a listener with protocol: {} has this key", owners.join(" or ")),
    };
    format!("{why} (the keys of a listener with protocol: {}: {})", protocol.as_str(), expected.join(", "))
}

/// A key unknown at its place: the closest valid key if one is close, and the valid keys.
fn unknown_key(field: &str, expected: &[&str]) -> String {
    let closest = expected
        .iter()
        .map(|valid| (strsim::damerau_levenshtein(field, valid), *valid))
        .min()
        .filter(|(distance, _)| *distance <= 2 || *distance * 3 <= field.len());
    match closest {
        Some((_, valid)) => {
            format!("unknown field `{field}`: did you mean `{valid}`? (the keys here: {})", expected.join(", "))
        }
        None => format!("unknown field `{field}` (the keys here: {})", expected.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_key_is_suggested_only_when_close() {
        let keys = ["connect_timeout", "handshake_timeout", "max_connect_size"];
        let m = unknown_key("connect_timout", &keys);
        assert!(m.starts_with("unknown field `connect_timout`: did you mean `connect_timeout`?"), "{m}");
        assert!(m.ends_with("(the keys here: connect_timeout, handshake_timeout, max_connect_size)"), "{m}");
        assert!(!unknown_key("colour", &keys).contains("did you mean"));
    }

    #[test]
    fn only_a_listeners_own_keys_are_its() {
        let protocols = [ListenerProtocol::Mqtt, ListenerProtocol::Coap];
        assert_eq!(listener_protocol("listeners[1].tls", "tls", &protocols), Some(ListenerProtocol::Coap));
        assert_eq!(listener_protocol("listeners[0].tls.colour", "colour", &protocols), None);
        assert_eq!(listener_protocol("listeners[2].tls", "tls", &protocols), None);
        assert_eq!(listener_protocol("backends[0].tls", "tls", &protocols), None);
    }
}
