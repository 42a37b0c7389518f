//! `listeners[].tls`: the serving certificates (`cert`/`key`, or `certificates`), their OCSP staples, the client CA
//! and its revocation lists, and the ticket keys; every file resolved against the configuration's folder, read and
//! checked now, so that `check` and a reload name the key of a bad file.

use std::path::PathBuf;
use std::sync::Arc;

use super::Checker;
use crate::config::runtime::{CertificateFiles, RequireIdentity, TlsConfig};
use crate::config::schema::FileTls;
use crate::config::ConfigError;
use crate::tls_material::certificates::{self, TlsPart};
use crate::tls_material::ticket_keys;

/// The TLS settings of listener `key`, if it has any.
pub(super) fn tls(c: &Checker<'_>, key: &str, t: Option<FileTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(t) = t else {
        return Ok(None);
    };
    let (certs, single) = certificates(c, key, &t)?;
    let client_ca = t.client_ca.as_deref().map(|p| c.resolve(p));
    if t.require_identity != RequireIdentity::None && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.require_identity"),
            "needs tls.client_ca: only a verified client certificate can vouch for an identity",
        ));
    }
    if t.username_from_certificate.is_some() && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.username_from_certificate"),
            "needs tls.client_ca: the user name is taken from a verified client certificate",
        ));
    }
    let client_crl: Vec<PathBuf> = t.client_crl.iter().flatten().map(|p| c.resolve(p)).collect();
    if t.client_crl.is_some() && client_ca.is_none() {
        return Err(c.err(
            format!("{key}.tls.client_crl"),
            "needs tls.client_ca: revocation lists apply to verified client certificates",
        ));
    }
    let mut server_config = certificates::server_config(&certs, client_ca.as_deref(), &client_crl).map_err(|e| {
        let field = |i: usize, name: &str| {
            if single {
                format!("{key}.tls.{name}")
            } else {
                format!("{key}.tls.certificates[{i}].{name}")
            }
        };
        let field = match e.part {
            TlsPart::Cert(i) => field(i, "cert"),
            TlsPart::Key(i) => field(i, "key"),
            TlsPart::OcspResponse(i) => field(i, "ocsp_response"),
            TlsPart::ClientCa => format!("{key}.tls.client_ca"),
            TlsPart::ClientCrl(i) => format!("{key}.tls.client_crl[{i}]"),
        };
        c.err(field, e.message)
    })?;
    let ticket_keys = t.ticket_keys.as_deref().map(|p| c.resolve(p));
    if let Some(path) = &ticket_keys {
        server_config.ticketer = ticket_keys::load(path).map_err(|m| c.err(format!("{key}.tls.ticket_keys"), m))?;
    }
    Ok(Some(TlsConfig {
        certificates: certs,
        client_ca,
        client_crl,
        require_identity: t.require_identity,
        username_from_certificate: t.username_from_certificate,
        ticket_keys,
        server_config: Arc::new(server_config),
    }))
}

/// The serving certificates' files, and whether they come from the one-certificate form (`cert`/`key`).
fn certificates(c: &Checker<'_>, key: &str, t: &FileTls) -> Result<(Vec<CertificateFiles>, bool), ConfigError> {
    let files = |cert: &PathBuf, key_file: &PathBuf, ocsp: Option<&PathBuf>| {
        let cert_path = c.resolve(cert);
        CertificateFiles {
            not_after: crate::metrics::certificate::leaf_not_after(&cert_path),
            label: cert.display().to_string(),
            cert: cert_path,
            key: c.resolve(key_file),
            ocsp_response: ocsp.map(|p| c.resolve(p)),
        }
    };
    match (&t.cert, &t.key, &t.certificates) {
        (Some(cert), Some(key_file), None) => Ok((vec![files(cert, key_file, t.ocsp_response.as_ref())], true)),
        (None, None, Some(list)) => {
            if t.ocsp_response.is_some() {
                return Err(c.err(
                    format!("{key}.tls.ocsp_response"),
                    "goes with tls.cert/tls.key; with tls.certificates, give each its own ocsp_response",
                ));
            }
            if list.is_empty() {
                return Err(c.err(format!("{key}.tls.certificates"), "at least one certificate is needed"));
            }
            Ok((list.iter().map(|f| files(&f.cert, &f.key, f.ocsp_response.as_ref())).collect(), false))
        }
        (_, _, Some(_)) => Err(
            c.err(format!("{key}.tls.certificates"), "give either tls.certificates or tls.cert and tls.key, not both")
        ),
        (None, _, None) => {
            Err(c.err(format!("{key}.tls.cert"), "missing: give tls.cert and tls.key, or tls.certificates"))
        }
        (Some(_), None, None) => Err(c.err(format!("{key}.tls.key"), "missing: tls.cert needs its tls.key")),
    }
}
