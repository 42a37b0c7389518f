//! A listener's TLS files: the PEM certificate chain, its private key and the optional client CA, read and turned
//! into the rustls server configuration [`crate::transport::tls::TlsStream`] serves with. Read when the configuration is
//! loaded (so `check` and a reload refuse a bad file) and never on a connection's path.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::named_file::{self, FileKind};

/// Which of the TLS settings an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPart {
    Cert,
    Key,
    ClientCa,
}

/// A certificate, key or CA file that cannot be used, and why.
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

/// Builds the rustls server configuration of a listener from its files.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsLoadError> {
    let chain = load_certs(cert).map_err(|m| fail(TlsPart::Cert, m))?;
    let key_pem = read_pem(key).map_err(|m| fail(TlsPart::Key, m))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail(TlsPart::Key, format!("{}: no usable private key: {e}", key.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(TlsPart::Cert, format!("TLS set-up failed: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca).map_err(|m| fail(TlsPart::ClientCa, m))? {
                roots
                    .add(c)
                    .map_err(|e| fail(TlsPart::ClientCa, format!("{}: unusable CA certificate: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| fail(TlsPart::ClientCa, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        fail(TlsPart::Key, format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display()))
    })?;
    // MQTT clients do not resume with tickets often enough to pay for them; a small session cache suffices.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(config)
}
