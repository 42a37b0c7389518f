//! A listener's TLS files: the PEM certificate chains with their private keys and OCSP staples, and the optional
//! client CA with its revocation lists, read and turned into the rustls server configuration
//! [`crate::transport::tls::TlsStream`] serves with. Read when the configuration is
//! loaded (so `check` and a reload refuse a bad file) and never on a connection's path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::sni::SniResolver;
use super::{ocsp, revocation};
use crate::named_file::{self, FileKind};

/// The files of one serving certificate.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A DER OCSP response stapled to handshakes of clients that ask for one.
    pub ocsp_response: Option<PathBuf>,
    /// What names the certificate in `mqttlb_tls_certificate_expiry_timestamp_seconds{certificate}`: its `cert`
    /// path as the configuration spells it.
    pub label: String,
    /// The leaf certificate's notAfter (Unix time), read with the files so that applying a reload reads none; or
    /// why it is unknown.
    pub not_after: Result<i64, String>,
}

/// Which of the TLS settings an error is about; the index is the position in `tls.certificates` (0 for the
/// `tls.cert`/`tls.key` form) or in `tls.client_crl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPart {
    Cert(usize),
    Key(usize),
    OcspResponse(usize),
    ClientCa,
    ClientCrl(usize),
}

/// A certificate, key, CA, CRL or OCSP file that cannot be used, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TlsLoadError {
    pub part: TlsPart,
    pub message: String,
}

fn fail(part: TlsPart, message: String) -> TlsLoadError {
    TlsLoadError { part, message }
}

/// The crypto provider every TLS object of the process uses: ring, or aws-lc-rs with the `aws-lc-rs` feature.
#[cfg(not(feature = "aws-lc-rs"))]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The crypto provider every TLS object of the process uses: aws-lc-rs (the `aws-lc-rs` feature).
#[cfg(feature = "aws-lc-rs")]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The bytes of a PEM file (a regular file of at most [`FileKind::Pem`]'s size).
pub fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    named_file::read(path, FileKind::Pem).map_err(|e| {
        let hint = if e.is_missing() { format!("; {MISSING_CERTIFICATE_HINT}") } else { String::new() };
        format!("cannot read {}: {e}{hint}", path.display())
    })
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a valid PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate (\"BEGIN CERTIFICATE\") found", path.display()));
    }
    Ok(certs)
}

/// What to do when a listener's certificate or key is missing, as on a fresh clone with the shipped config.yaml.
pub const MISSING_CERTIFICATE_HINT: &str = "run scripts/make-test-cert.sh for a test certificate (see certs/README.md)";

/// Builds the rustls server configuration of a listener from its files: the serving certificates (chosen by SNI,
/// [`super::sni`]) with their OCSP staples, and the client CA with its revocation lists.
pub fn server_config(
    certificates: &[CertificateFiles],
    client_ca: Option<&Path>,
    client_crl: &[PathBuf],
) -> Result<rustls::ServerConfig, TlsLoadError> {
    let mut served = Vec::with_capacity(certificates.len());
    for (i, files) in certificates.iter().enumerate() {
        served.push(certified_key(i, files)?);
    }
    let resolver = SniResolver::new(served).map_err(|(i, m)| {
        let file = certificates.get(i).map(|c| c.cert.display().to_string()).unwrap_or_default();
        fail(TlsPart::Cert(i), format!("{file}: {m}"))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(TlsPart::Cert(0), format!("TLS set-up failed: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_certs = load_certs(ca).map_err(|m| fail(TlsPart::ClientCa, m))?;
            let mut crls = Vec::with_capacity(client_crl.len());
            for (i, path) in client_crl.iter().enumerate() {
                crls.extend(revocation::load(path, &ca_certs).map_err(|m| fail(TlsPart::ClientCrl(i), m))?);
            }
            let mut roots = RootCertStore::empty();
            for c in ca_certs {
                roots
                    .add(c)
                    .map_err(|e| fail(TlsPart::ClientCa, format!("{}: unusable CA certificate: {e}", ca.display())))?;
            }
            let verifier = revocation::policy(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls),
            )
            .build()
            .map_err(|e| fail(TlsPart::ClientCa, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // MQTT clients do not resume with tickets often enough to pay for them; a small session cache suffices.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(config)
}

/// One serving certificate: its chain, its key (checked to fit the leaf) and its OCSP staple.
fn certified_key(i: usize, files: &CertificateFiles) -> Result<CertifiedKey, TlsLoadError> {
    let (cert, key) = (&files.cert, &files.key);
    let chain = load_certs(cert).map_err(|m| fail(TlsPart::Cert(i), m))?;
    let key_pem = read_pem(key).map_err(|m| fail(TlsPart::Key(i), m))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail(TlsPart::Key(i), format!("{}: no usable private key: {e}", key.display())))?;
    let mut certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        fail(TlsPart::Key(i), format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display()))
    })?;
    if let Some(path) = &files.ocsp_response {
        let leaf = certified.cert.first().map(|c| c.as_ref()).unwrap_or_default();
        certified.ocsp = Some(ocsp::load(path, leaf).map_err(|m| fail(TlsPart::OcspResponse(i), m))?);
    }
    Ok(certified)
}
