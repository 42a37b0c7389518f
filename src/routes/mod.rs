//! Routes: which backend a listener's client goes to, decided per connection before placement. A listener's
//! `routes` are tried in order and the first whose every condition holds wins; none matching, the listener's
//! `backend` takes the client, or, without one, the client is refused (CONNACK not authorized). Inside the chosen
//! backend the client is placed as always (rendezvous on its client id), so instances still agree.
//!
//! A condition on something the client did not present never holds: `username: "*"` needs a user name, `sni` a
//! server name in the TLS ClientHello, `identity` a verified client certificate. `client_id` is always there (maybe
//! empty, which only a pattern like `*` matches).

pub mod glob;
pub mod host;

use glob::Glob;
use host::HostPattern;

/// What a route asks of a client; `None`: no condition on that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub sni: Option<HostPattern>,
    pub client_id: Option<Glob>,
    pub username: Option<Glob>,
    /// Any of the verified client certificate's CNs or SANs.
    pub identity: Option<Glob>,
}

/// What is known of a client when its route is chosen. `client_id` and `username` are None on `tcp` listeners,
/// which do not read the CONNECT (`check` allows only `sni` and `identity` routes there).
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    pub sni: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub username: Option<&'a str>,
    pub identity: Option<CertificateNames<'a>>,
}

/// The names of a client's verified certificate: what an `identity` condition is matched against.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertificateNames<'a> {
    pub common_names: &'a [String],
    pub alt_names: &'a [String],
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }

    /// Whether every condition holds for `client`.
    pub fn hold(&self, client: &Client<'_>) -> bool {
        let glob =
            |g: &Option<Glob>, value: Option<&str>| g.as_ref().is_none_or(|g| value.is_some_and(|v| g.matches(v)));
        self.sni.as_ref().is_none_or(|p| client.sni.is_some_and(|s| p.matches(s)))
            && glob(&self.client_id, client.client_id)
            && glob(&self.username, client.username)
            && self.identity.as_ref().is_none_or(|g| {
                client.identity.is_some_and(|id| id.common_names.iter().chain(id.alt_names).any(|n| g.matches(n)))
            })
    }

    /// Whether every client these conditions accept, `self` accepts too: then a route with `other` after one with
    /// `self` can never match. Sound, not complete (see [`Glob::covers`]).
    pub fn cover(&self, other: &Conditions) -> bool {
        fn each<T>(a: &Option<T>, b: &Option<T>, covers: impl Fn(&T, &T) -> bool) -> bool {
            match (a, b) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => covers(a, b),
            }
        }
        // Every client has a client id: `client_id: "*"` is no condition at all.
        let client_id = |c: &Conditions| c.client_id.clone().filter(|g| !g.matches_all());
        each(&self.sni, &other.sni, HostPattern::covers)
            && each(&client_id(self), &client_id(other), Glob::covers)
            && each(&self.username, &other.username, Glob::covers)
            && each(&self.identity, &other.identity, Glob::covers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(sni: Option<&str>, client_id: Option<&str>, username: Option<&str>) -> Conditions {
        Conditions {
            sni: sni.map(|s| HostPattern::parse(s).unwrap()),
            client_id: client_id.map(|s| Glob::parse(s).unwrap()),
            username: username.map(|s| Glob::parse(s).unwrap()),
            identity: None,
        }
    }

    #[test]
    fn every_condition_must_hold_and_absent_values_match_nothing() {
        let c = conditions(Some("*.example.org"), Some("gb-*"), Some("*"));
        let client =
            Client { sni: Some("a.example.org"), client_id: Some("gb-1"), username: Some("u"), identity: None };
        assert!(c.hold(&client));
        assert!(!c.hold(&Client { username: None, ..client }), "username: * needs a user name");
        assert!(!c.hold(&Client { sni: None, ..client }));
        assert!(!c.hold(&Client { client_id: Some("fr-1"), ..client }));
        let by_identity = Conditions { identity: Some(Glob::parse("sensor-*").unwrap()), ..Conditions::default() };
        let alt_names = ["sensor-7".to_owned()];
        let id = CertificateNames { common_names: &[], alt_names: &alt_names };
        assert!(by_identity.hold(&Client { identity: Some(id), ..client }));
        assert!(!by_identity.hold(&client), "no certificate");
    }

    #[test]
    fn cover() {
        let any = Conditions::default();
        let all_ids = conditions(None, Some("*"), None);
        let gb = conditions(None, Some("gb-*"), None);
        let gb_user = conditions(None, Some("gb-*"), Some("u*"));
        assert!(any.cover(&gb) && all_ids.cover(&gb) && all_ids.cover(&any));
        assert!(gb.cover(&gb) && gb.cover(&gb_user));
        assert!(!gb_user.cover(&gb));
        assert!(!conditions(None, None, Some("*")).cover(&any), "username: * needs a user name");
        assert!(!conditions(Some("a.example.org"), None, None).cover(&gb));
    }
}
