//! Client certificate revocation (`tls.client_crl`): the CRL files, read and checked when the configuration is
//! loaded or reloaded, and the policy the handshake applies with them.
//!
//! What is checked when a file is read: it is a regular file under the size cap, holds PEM ("BEGIN X509 CRL") or
//! DER CRLs that parse, each issued by the subject of one of the `client_ca` certificates (the name is compared; the
//! signature is verified by rustls at the handshake), and none is past its nextUpdate. An expired CRL is refused
//! rather than warned about: revocation that silently stops being current is what the file exists to prevent, and a
//! refused reload keeps the running lists in place.
//!
//! The policy at the handshake ([`policy`]): only the client's own (end-entity) certificate is looked up, and a
//! certificate whose issuer has no CRL here is refused, like a revoked one (fail closed: listing CRLs means revocation
//! is required). A CRL that passes its nextUpdate while running stays in force until a reload replaces it; refusing
//! every client at that instant would turn a late CRL publication into an outage.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::ClientCertVerifierBuilder;
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};

use crate::named_file::{self, FileKind};

/// The CRLs of a file (PEM or DER) once checked against the client CA certificates.
pub fn load(
    path: &Path,
    ca_certs: &[CertificateDer<'_>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let shown = path.display();
    let bytes = named_file::read(path, FileKind::Crl).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let crls = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown}: not a PEM or DER CRL file: {e}"))?
    };
    if crls.is_empty() {
        return Err(format!("{shown}: no CRL (DER, or PEM \"BEGIN X509 CRL\") found"));
    }
    let now = x509_parser::time::ASN1Time::now().timestamp();
    for crl in &crls {
        check(crl, ca_certs, now).map_err(|m| format!("{shown}: {m}"))?;
    }
    Ok(crls)
}

/// Checks one CRL: it parses, its issuer is a client CA's subject, its nextUpdate (if any) is after `now`.
fn check(crl: &[u8], ca_certs: &[CertificateDer<'_>], now: i64) -> Result<(), String> {
    let parsed = match CertificateRevocationList::from_der(crl) {
        Ok(([], parsed)) => parsed,
        Ok(_) => return Err("trailing bytes after the CRL".to_owned()),
        Err(e) => return Err(format!("not a valid CRL: {e}")),
    };
    let issuer = parsed.issuer();
    let from_a_client_ca = ca_certs
        .iter()
        .any(|ca| X509Certificate::from_der(ca).is_ok_and(|(_, ca)| ca.subject().as_raw() == issuer.as_raw()));
    if !from_a_client_ca {
        return Err(format!("the CRL is issued by {issuer}, which is not the subject of a tls.client_ca certificate"));
    }
    if let Some(next) = parsed.next_update() {
        if next.timestamp() <= now {
            return Err(format!("the CRL expired: its nextUpdate ({next}) is past; publish a fresh one"));
        }
    }
    Ok(())
}

/// The revocation policy of the client certificate verifier (see the module documentation).
pub fn policy(builder: ClientCertVerifierBuilder) -> ClientCertVerifierBuilder {
    builder.only_check_end_entity_revocation()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    fn crl(issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, next_update_days: i64) -> Vec<u8> {
        let now = rcgen::date_time_ymd(2026, 1, 1);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time_days(next_update_days),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(issuer).unwrap().der().to_vec()
    }

    fn time_days(days: i64) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(days).unwrap() * 86_400)
    }

    #[test]
    fn the_issuer_and_the_next_update_are_checked() {
        let (ours, theirs) = (ca("client CA"), ca("another CA"));
        let cas = [ours.der().clone()];
        let jan_2026 = rcgen::date_time_ymd(2026, 1, 1).unix_timestamp();
        assert_eq!(check(&crl(&ours, 30), &cas, jan_2026), Ok(()));
        let err = check(&crl(&theirs, 30), &cas, jan_2026).unwrap_err();
        assert!(err.contains("another CA") && err.contains("tls.client_ca"), "{err}");
        let err = check(&crl(&ours, 30), &cas, jan_2026 + 31 * 86_400).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        assert!(check(b"\x30\x03\x02\x01\x00", &cas, jan_2026).unwrap_err().contains("not a valid CRL"));
    }
}
