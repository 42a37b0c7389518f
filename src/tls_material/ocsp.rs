//! OCSP stapling (`tls.ocsp_response`): the DER OCSP response a serving certificate hands to clients that ask for
//! one (status_request), read when the configuration is loaded or reloaded.
//!
//! The response is read just far enough (RFC 6960, with the DER reader x509-parser brings) to refuse a file that
//! would be useless or wrong to staple: it must be a successful basic response holding a single response for this
//! certificate (its serial number, and its issuer's name hash when the cert id is hashed with SHA-1 or SHA-256) whose
//! status is good and whose nextUpdate, if any, is still ahead. The responder's signature is the client's to check:
//! a client that verifies staples refuses a forged one, as it would refuse it from any server.

use std::path::Path;

use x509_parser::asn1_rs::{Any, Class};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use crate::named_file::{self, FileKind};

/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), the contents of its OBJECT IDENTIFIER.
const OCSP_BASIC: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 0x30, 1, 1];
/// id-sha1 (1.3.14.3.2.26).
const SHA1: &[u8] = &[0x2b, 0x0e, 3, 2, 0x1a];
/// id-sha256 (2.16.840.1.101.3.4.2.1).
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 1];

/// The bytes of an OCSP response file, once checked to be a current, good response for `leaf` (a DER certificate).
pub fn load(path: &Path, leaf: &[u8]) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let bytes = named_file::read(path, FileKind::OcspResponse).map_err(|e| format!("cannot read {shown}: {e}"))?;
    check(&bytes, leaf, ASN1Time::now().timestamp()).map_err(|m| format!("{shown}: {m}"))?;
    Ok(bytes)
}

/// One DER element of `input` and what follows it.
fn element(input: &[u8]) -> Result<(Any<'_>, &[u8]), String> {
    match Any::from_der(input) {
        Ok((rest, any)) => Ok((any, rest)),
        Err(e) => Err(format!("not a DER OCSP response: {e}")),
    }
}

/// The elements inside a constructed element, in order.
fn children<'a>(parent: &Any<'a>) -> Result<Vec<Any<'a>>, String> {
    let mut rest = parent.data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (child, next) = element(rest)?;
        out.push(child);
        rest = next;
    }
    Ok(out)
}

fn is_context(any: &Any<'_>, tag: u32) -> bool {
    any.class() == Class::ContextSpecific && any.tag().0 == tag
}

const MALFORMED: &str = "not a well-formed OCSP response";

/// Checks a DER OCSP response against the certificate it is to be stapled to (DER), at Unix time `now`.
pub fn check(response: &[u8], leaf: &[u8], now: i64) -> Result<(), String> {
    let (outer, rest) = element(response)?;
    if !rest.is_empty() {
        return Err("trailing bytes after the OCSP response".to_owned());
    }
    let outer = children(&outer)?;
    let status = outer.first().ok_or(MALFORMED)?;
    if status.data != [0] {
        return Err(format!("the responder did not answer (responseStatus {:?}, not successful)", status.data));
    }
    let bytes = outer.get(1).filter(|b| is_context(b, 0)).ok_or(MALFORMED)?;
    let bytes = children(bytes)?;
    let bytes = children(bytes.first().ok_or(MALFORMED)?)?;
    let (kind, basic) = (bytes.first().ok_or(MALFORMED)?, bytes.get(1).ok_or(MALFORMED)?);
    if kind.data != OCSP_BASIC {
        return Err("not a basic OCSP response (id-pkix-ocsp-basic)".to_owned());
    }
    let (basic, _) = element(basic.data)?;
    let basic = children(&basic)?;
    let tbs = children(basic.first().ok_or(MALFORMED)?)?;
    // responseData: [0] version (optional), responderID, producedAt, responses, [1] extensions (optional).
    let skip = usize::from(tbs.first().is_some_and(|v| is_context(v, 0)));
    let responses = tbs.get(skip + 2).ok_or(MALFORMED)?;

    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let serial = cert.raw_serial();
    let issuer_name = cert.issuer().as_raw();
    for single in children(responses)? {
        let single = children(&single)?;
        let cert_id = children(single.first().ok_or(MALFORMED)?)?;
        let [alg, name_hash, _key_hash, id_serial] = cert_id.as_slice() else {
            return Err(MALFORMED.to_owned());
        };
        if id_serial.data != serial {
            continue;
        }
        let alg = children(alg)?;
        let hash_alg = alg.first().map(|a| a.data).unwrap_or_default();
        if let Some(expected) = name_hash_of(hash_alg, issuer_name) {
            if name_hash.data != expected.as_slice() {
                return Err(format!(
                    "the response is for serial {} of another issuer than {}",
                    cert.raw_serial_as_string(),
                    cert.issuer()
                ));
            }
        }
        let status = single.get(1).ok_or(MALFORMED)?;
        if !is_context(status, 0) {
            let said = if is_context(status, 1) { "revoked" } else { "unknown" };
            return Err(format!("the response says the certificate is {said}, not good"));
        }
        if let Some(next) = single.get(3).filter(|n| is_context(n, 0)) {
            let (_, next) = ASN1Time::from_der(next.data).map_err(|e| format!("unreadable nextUpdate: {e}"))?;
            if next.timestamp() <= now {
                return Err(format!("the response expired: its nextUpdate ({next}) is past; fetch a fresh one"));
            }
        }
        return Ok(());
    }
    Err(format!(
        "the response is for another certificate: none of its answers is for serial {} of the certificate",
        cert.raw_serial_as_string()
    ))
}

/// The hash of the issuer's name with the cert id's algorithm, when it is one this checks.
fn name_hash_of(alg: &[u8], issuer_name: &[u8]) -> Option<Vec<u8>> {
    let alg = if alg == SHA1 {
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY
    } else if alg == SHA256 {
        &ring::digest::SHA256
    } else {
        return None;
    };
    Some(ring::digest::digest(alg, issuer_name).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_response_is_refused_without_panic() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        for bad in
            [&b""[..], b"\x30", b"\x30\x03\x0a\x01\x00", b"\x30\x03\x0a\x01\x01", b"\x30\x05\x0a\x01\x00\xa0\x00"]
        {
            assert!(check(bad, cert.der(), 0).is_err(), "{bad:?}");
        }
        let err = check(b"\x30\x03\x0a\x01\x06", cert.der(), 0).unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
    }
}
