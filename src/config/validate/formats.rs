//! The shapes of single values: a server's `host:port`, a WebSocket path, a browser origin.

use std::net::SocketAddr;

/// Checks `host:port` (host name, IPv4 or `[IPv6]`) without resolving it.
pub(super) fn check_server_address(text: &str) -> Result<(), String> {
    let bad =
        |why: &str| format!("invalid address {text:?}: {why}; expected host:port, like \"wbroker01.example.org:1883\"");
    if let Ok(address) = text.parse::<SocketAddr>() {
        return match address.port() {
            0 => Err(bad("the port must be 1 to 65535")),
            _ => Ok(()),
        };
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the port must be 1 to 65535")),
        Ok(_) => {}
    }
    if host.is_empty() || host.len() > 253 {
        return Err(bad("the host is empty or too long"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(bad("the host is not a valid host name or IP address"));
    }
    Ok(())
}

/// A WebSocket path: `/` then visible ASCII, no fragment, at most 1024 bytes.
pub(super) fn check_ws_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() > 1024 {
        return Err(format!(
            "invalid path {path:?}: it must start with '/' (like \"/mqtt\") and be at most 1024 bytes"
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(format!("invalid path {path:?}: use visible ASCII without spaces or '#'"));
    }
    Ok(())
}

/// An origin as browsers send it: `scheme://host[:port]`, no path.
pub(super) fn check_origin(origin: &str) -> Result<(), String> {
    let bad = || format!("invalid origin {origin:?}: expected scheme://host[:port], like \"https://example.org\"");
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() || rest.contains('/') || !origin.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(())
}
