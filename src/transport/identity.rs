//! The identity in a verified client certificate (mTLS): subject common names and subject alternative names, for
//! `tls.require_identity` and for the PROXY protocol v2 TLVs sent to brokers.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Names a client certificate vouches for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's distinguished name as text (RFC 4514 style), e.g. `CN=sensor-1,O=Example`.
    pub subject: String,
    /// Every CN attribute of the subject.
    pub common_names: Vec<String>,
    /// DNS names, e-mail addresses and URIs of the subjectAltName extension.
    pub alt_names: Vec<String>,
}

impl PeerIdentity {
    /// The names a route's `identity` condition is matched against.
    pub fn names(&self) -> crate::routes::CertificateNames<'_> {
        crate::routes::CertificateNames { common_names: &self.common_names, alt_names: &self.alt_names }
    }

    /// Reads the names of a DER certificate; None if it cannot be parsed (rustls verified it already, so that
    /// would be a certificate using features this parser lacks).
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let common_names = subject.iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        alt_names.push((*s).to_owned())
                    }
                    _ => {}
                }
            }
        }
        Some(PeerIdentity { subject: subject.to_string(), common_names, alt_names })
    }

    /// Whether `value` (a client id or user name) is the certificate's CN or one of its SANs (exact match).
    pub fn vouches_for(&self, value: &str) -> bool {
        !value.is_empty() && self.common_names.iter().chain(&self.alt_names).any(|n| n == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_name_and_alt_names() {
        let mut params = rcgen::CertificateParams::new(vec!["sensor-1.example.org".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "sensor-1");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.common_names, ["sensor-1"]);
        assert_eq!(id.alt_names, ["sensor-1.example.org"]);
        assert!(id.subject.contains("CN=sensor-1"), "{}", id.subject);
        assert!(id.vouches_for("sensor-1"));
        assert!(id.vouches_for("sensor-1.example.org"));
        assert!(!id.vouches_for("sensor-2"));
        assert!(!id.vouches_for(""));
        assert_eq!(PeerIdentity::from_der(b"not a certificate"), None);
    }
}
