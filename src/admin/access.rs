//! Who may use which admin endpoint: the read-only ones (`/metrics`, `/healthz`, `/readyz`) are for anything that
//! reaches the socket (a cluster's Prometheus, a kubelet); the control ones (`/servers`, server states, `/reload`)
//! only on the control socket, or on connections made to a loopback address, and with the bearer token when
//! `admin.token_file` is set.

use std::net::SocketAddr;

use hyper::header::{HeaderMap, AUTHORIZATION};
use ring::digest::{digest, SHA256};

/// What one socket of the admin endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `admin.bind` when `admin.control_bind` is set: the read-only endpoints only.
    ReadOnly,
    /// `admin.control_bind`: every endpoint.
    All,
    /// `admin.bind` without `admin.control_bind`: every endpoint on connections made to a loopback address (what
    /// a socket bound to loopback would serve), the read-only ones on the others.
    AllOnLoopback,
}

impl Endpoints {
    /// Whether a connection that arrived at `local` (its destination address) may use the control endpoints.
    pub fn control_allowed(self, local: Option<SocketAddr>) -> bool {
        match self {
            Endpoints::ReadOnly => false,
            Endpoints::All => true,
            Endpoints::AllOnLoopback => local.is_some_and(|a| a.ip().to_canonical().is_loopback()),
        }
    }
}

/// Whether the path is a control endpoint's.
pub fn is_control(first_segment: &str) -> bool {
    matches!(first_segment, "servers" | "reload")
}

/// Whether the request carries `Authorization: Bearer <token>`. The comparison is of SHA-256 digests, so its time
/// tells neither where the first wrong byte is nor the token's length.
pub fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, presented) = value.split_at(space);
    let presented = presented.trim_ascii();
    let same = digest(&SHA256, presented)
        .as_ref()
        .iter()
        .zip(digest(&SHA256, token).as_ref())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0;
    scheme.eq_ignore_ascii_case(b"bearer") & same
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(bearer_matches(&headers("Bearer s3cret"), b"s3cret"));
        assert!(bearer_matches(&headers("bearer  s3cret "), b"s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cretx"), b"s3cret"));
        assert!(!bearer_matches(&headers("Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(&headers("s3cret"), b"s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), b"s3cret"));
    }

    #[test]
    fn a_shared_socket_serves_control_on_loopback_connections_only() {
        let at = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        assert!(Endpoints::AllOnLoopback.control_allowed(at("127.0.0.1:9100")));
        assert!(Endpoints::AllOnLoopback.control_allowed(at("[::1]:9100")));
        assert!(Endpoints::AllOnLoopback.control_allowed(at("[::ffff:127.0.0.1]:9100")));
        assert!(!Endpoints::AllOnLoopback.control_allowed(at("10.0.0.5:9100")));
        assert!(!Endpoints::AllOnLoopback.control_allowed(None));
        assert!(!Endpoints::ReadOnly.control_allowed(at("127.0.0.1:9100")));
        assert!(Endpoints::All.control_allowed(at("10.0.0.5:9100")));
    }
}
