//! The end of validity (notAfter) of a serving certificate, for `mqttlb_tls_certificate_expiry_timestamp_seconds`.
//!
//! Read with `x509-parser`, the X.509 reader the client-identity code already uses (one reader in the crate). The
//! certificate was already accepted by rustls when the listener's TLS configuration was built; any certificate this
//! reader cannot parse is reported, never guessed.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The notAfter of the first (leaf) certificate of a PEM file, as a Unix time.
pub fn leaf_not_after(path: &Path) -> Result<i64, String> {
    let pem = crate::tls_material::certificates::read_pem(path)?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: not a valid PEM certificate: {e}", path.display()))?;
    not_after(&leaf).ok_or_else(|| format!("{}: no readable notAfter in the first certificate", path.display()))
}

/// The notAfter of a DER certificate, as a Unix time; None when the bytes are not one whole certificate.
pub fn not_after(der: &[u8]) -> Option<i64> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert.validity().not_after.timestamp()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until the date plus `seconds`, and that time as a Unix time (from rcgen).
    fn cert_valid_until(year: i32, month: u8, day: u8, seconds: u64) -> (rcgen::Certificate, i64) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day) + std::time::Duration::from_secs(seconds);
        let unix = params.not_after.unix_timestamp();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (params.self_signed(&key).unwrap(), unix)
    }

    #[test]
    fn reads_not_after_of_real_certificates() {
        // UTCTime (before 2050) and GeneralizedTime (2050 on), at midnight and at a time of day.
        let (cert, unix) = cert_valid_until(2031, 5, 17, 0);
        assert_eq!(unix, 1_936_742_400);
        assert_eq!(not_after(cert.der()), Some(1_936_742_400));
        for (y, m, d, s) in [(2051, 2, 28, 13 * 3600 + 7 * 60 + 9), (2028, 2, 29, 59), (2049, 12, 31, 86_399)] {
            let (cert, unix) = cert_valid_until(y, m, d, s);
            assert_eq!(not_after(cert.der()), Some(unix), "{y}-{m}-{d} + {s}s");
        }
    }

    #[test]
    fn reads_the_leaf_of_a_pem_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.pem");
        let (leaf, unix) = cert_valid_until(2030, 1, 2, 0);
        let (other, _) = cert_valid_until(2040, 1, 2, 0);
        std::fs::write(&path, format!("{}{}", leaf.pem(), other.pem())).unwrap();
        assert_eq!(leaf_not_after(&path), Ok(unix));
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(leaf_not_after(&path).unwrap_err().contains("no certificate"));
        assert!(leaf_not_after(&dir.path().join("missing.pem")).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let der = cert_valid_until(2031, 5, 17, 0).0.der().to_vec();
        // Every truncation fails cleanly (the outer length no longer fits).
        for n in 0..der.len() {
            assert_eq!(not_after(der.get(..n).unwrap()), None, "truncated to {n} bytes");
        }
        assert_eq!(not_after(&[0x30, 0x80, 0x00, 0x00]), None, "indefinite length");
        assert_eq!(not_after(&[0x30, 0x85, 1, 1, 1, 1, 1]), None, "length of five bytes");
        assert_eq!(not_after(b"\x02\x01\x00"), None, "not a SEQUENCE");
    }
}
