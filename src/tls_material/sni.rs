//! Choosing a listener's serving certificate by the name the client asks for (SNI, `tls.certificates`).
//!
//! Each certificate serves the DNS names of its leaf's subjectAltName extension: exact names, and `*.` wildcards
//! standing for exactly one label (`*.example.com` serves `a.example.com`, not `example.com` nor `a.b.example.com`),
//! compared without regard to case. The first certificate that serves the name is chosen; the first certificate of
//! all serves clients that send no SNI or a name no certificate serves (they then see a name mismatch, as with one
//! certificate). rustls's own `ResolvesServerCertUsingSni` looks names up exactly, so wildcards need this resolver.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A name a certificate serves, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    /// `*.suffix`: any one label, then `.suffix`.
    Wildcard(String),
}

impl NamePattern {
    /// The pattern of a SAN DNS name, or why it cannot be one: a `*` anywhere but as the whole first label of a
    /// name of at least two labels more.
    fn parse(name: &str) -> Result<NamePattern, String> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let bad = || format!("SAN DNS name {name:?} is not a name nor a `*.` wildcard of one label");
        if lower.is_empty() || lower.split('.').any(str::is_empty) {
            return Err(bad());
        }
        match lower.strip_prefix("*.") {
            Some(suffix) if !suffix.contains('*') && suffix.contains('.') => {
                Ok(NamePattern::Wildcard(suffix.to_owned()))
            }
            Some(_) => Err(bad()),
            None if lower.contains('*') => Err(bad()),
            None => Ok(NamePattern::Exact(lower)),
        }
    }

    /// Whether `name` (lower-cased, no trailing dot) is served.
    fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => exact == name,
            NamePattern::Wildcard(suffix) => {
                name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            }
        }
    }
}

/// The DNS names of a DER certificate's subjectAltName, as patterns; or why one cannot be used.
fn served_names(leaf: &[u8]) -> Result<Vec<NamePattern>, String> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    let mut names = Vec::new();
    for name in san.iter().flat_map(|s| &s.value.general_names) {
        if let GeneralName::DNSName(dns) = name {
            names.push(NamePattern::parse(dns)?);
        }
    }
    Ok(names)
}

/// The serving certificates of a listener, each with the names it serves.
#[derive(Debug)]
pub struct SniResolver {
    /// In configuration order; never empty.
    certificates: Vec<(Vec<NamePattern>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// The resolver of these certificates (the first is the default); or the position of a certificate that cannot
    /// be served and why.
    pub fn new(certificates: Vec<CertifiedKey>) -> Result<SniResolver, (usize, String)> {
        if certificates.is_empty() {
            return Err((0, "no certificate".to_owned()));
        }
        let mut served = Vec::with_capacity(certificates.len());
        for (i, certified) in certificates.into_iter().enumerate() {
            let leaf = certified.cert.first().map(|c| c.as_ref()).unwrap_or_default();
            let names = served_names(leaf).map_err(|m| (i, m))?;
            if i > 0 && names.is_empty() {
                // Only the first certificate serves clients by default: any other one needs a name.
                return Err((i, "the certificate has no SAN DNS name, so no client could be served it".to_owned()));
            }
            served.push((names, Arc::new(certified)));
        }
        Ok(SniResolver { certificates: served })
    }

    /// The certificate for a requested name (any case, optional trailing dot), or the default one.
    fn choose(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let wanted = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let by_name = wanted
            .and_then(|name| self.certificates.iter().find(|(patterns, _)| patterns.iter().any(|p| p.matches(&name))));
        by_name.or(self.certificates.first()).map(|(_, certified)| Arc::clone(certified))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_one_label_wildcards_match_without_case() {
        let exact = NamePattern::parse("MQTT.Example.com").unwrap();
        assert!(exact.matches("mqtt.example.com"));
        assert!(!exact.matches("a.mqtt.example.com"));
        let wild = NamePattern::parse("*.Tenants.example.com").unwrap();
        assert!(wild.matches("a.tenants.example.com"));
        assert!(!wild.matches("tenants.example.com"), "the wildcard needs a label");
        assert!(!wild.matches("a.b.tenants.example.com"), "one label only");
        assert!(!wild.matches(".tenants.example.com"));
    }

    #[test]
    fn malformed_wildcards_are_refused() {
        for bad in ["*", "*.com", "a*.example.com", "*.*.example.com", "a.*.example.com", "", "a..b", "*example.com"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(NamePattern::parse("example.com."), Ok(NamePattern::Exact("example.com".to_owned())));
    }

    fn certified(names: &[&str]) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names).unwrap().self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        CertifiedKey::from_der(vec![cert.der().clone()], der, &super::super::certificates::provider()).unwrap()
    }

    #[test]
    fn the_first_serving_certificate_is_chosen_else_the_first() {
        let resolver =
            SniResolver::new(vec![certified(&["default.test"]), certified(&["*.a.test"]), certified(&["x.a.test"])])
                .unwrap();
        let leaf = |name: Option<&str>| resolver.choose(name).unwrap().cert.first().unwrap().clone();
        let [default, wild, exact] = [0, 1, 2].map(|i| resolver.certificates[i].1.cert[0].clone());
        assert_eq!(leaf(Some("y.a.test")), wild);
        assert_eq!(leaf(Some("X.A.test.")), wild, "the earlier wildcard wins over the later exact name");
        assert_eq!(leaf(Some("default.test")), default);
        assert_eq!(leaf(Some("unknown.test")), default);
        assert_eq!(leaf(None), default);
        assert_ne!(exact, wild);
    }

    #[test]
    fn a_later_certificate_without_names_is_refused() {
        let err = SniResolver::new(vec![certified(&["a.test"]), certified(&[])]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(SniResolver::new(vec![certified(&[])]).is_ok(), "a sole certificate needs no name");
    }
}
