//! The benchmark's PKI (rcgen, ECDSA P-256) and the generator's rustls client configuration (ring provider).
//!
//! One server certificate serves all three paths: mosquitto's TLS listener (`server.crt` + `server.key`), HAProxy
//! (`haproxy.pem`: certificate and key in one file) and mqtt-lb (`server.crt` + `server.key`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::NamedGroup;
use rustls::{DigitallySignedStruct, SignatureScheme};

pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key, for HAProxy's `ssl crt`.
    pub combined: PathBuf,
    /// mqtt-lb's `tls.ticket_keys`: one key of 80 random bytes, base64.
    pub ticket_keys: PathBuf,
    ca_der: CertificateDer<'static>,
    cert_der: CertificateDer<'static>,
}

/// The server certificate's key: what each full handshake signs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ServerKey {
    EcdsaP256,
    Rsa2048,
}

impl ServerKey {
    pub fn name(self) -> &'static str {
        match self {
            ServerKey::EcdsaP256 => "ECDSA P-256",
            ServerKey::Rsa2048 => "RSA 2048",
        }
    }

    fn generate(self, dir: &Path) -> Result<rcgen::KeyPair, String> {
        match self {
            ServerKey::EcdsaP256 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("server key: {e}"))
            }
            // ring (rcgen's provider) cannot generate RSA keys: OpenSSL's command line does, rcgen signs with it.
            ServerKey::Rsa2048 => {
                let path = dir.join("rsa.key");
                let made = std::process::Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                    .arg(&path)
                    .output()
                    .map_err(|e| format!("openssl genpkey: {e}"))?;
                if !made.status.success() {
                    return Err(format!("openssl genpkey: {}", String::from_utf8_lossy(&made.stderr)));
                }
                let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("RSA key: {e}"))
            }
        }
    }
}

impl Pki {
    /// A CA and a server certificate for `localhost` / 127.0.0.1, both ECDSA P-256, written into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki, String> {
        Pki::generate_with(dir, ServerKey::EcdsaP256)
    }

    /// [`Pki::generate`] with a server key of the given kind (the CA stays ECDSA P-256).
    pub fn generate_with(dir: &Path, kind: ServerKey) -> Result<Pki, String> {
        let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| err("CA key", &e))?;
        let key = kind.generate(dir)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", &e))?;
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "mqtt-lb bench CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| err("self-sign CA", &e))?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| err("server certificate", &e))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).map_err(|e| err("sign server certificate", &e))?;
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            combined: dir.join("haproxy.pem"),
            ticket_keys: dir.join("tickets.keys"),
            ca_der: ca.der().clone(),
            cert_der: cert.der().clone(),
        };
        let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()));
        write(&pki.ca, ca.pem())?;
        write(&pki.cert, cert.pem())?;
        write(&pki.key, key.serialize_pem())?;
        write(&pki.combined, format!("{}{}", cert.pem(), key.serialize_pem()))?;
        let made = std::process::Command::new("sh")
            .args(["-c", "head -c 80 /dev/urandom | base64 -w0"])
            .output()
            .map_err(|e| format!("make a ticket key with base64: {e}"))?;
        write(&pki.ticket_keys, String::from_utf8_lossy(&made.stdout).into_owned() + "\n")?;
        Ok(pki)
    }

    /// The generator's client configuration. Without `resume`, no session resumption: every connection is a full
    /// handshake, as for a fleet of devices connecting for the first time. With `resume`, the clients of this
    /// configuration share one [`FleetSessions`] store, so that every connection after the first resumes, as
    /// devices reconnecting after a failover do; use one such configuration per server. With `full_verify`, the chain and the handshake signature are verified
    /// (webpki against the CA); otherwise the certificate is compared byte for byte with ours and the signature
    /// check is skipped, which saves the generator two ECDSA verifications per handshake on a machine whose cores
    /// the servers need. The servers' work is the same either way.
    pub fn client_config(&self, full_verify: bool, resume: bool) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let mut config = if full_verify {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).map_err(|e| format!("CA: {e}"))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let schemes = provider.signature_verification_algorithms.supported_schemes();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { cert: self.cert_der.clone(), schemes }))
                .with_no_client_auth()
        };
        config.resumption =
            if resume { Resumption::store(Arc::new(FleetSessions::default())) } else { Resumption::disabled() };
        Ok(Arc::new(config))
    }
}

/// A device's own client configuration: `base` with a session store of its own (rustls's, a few tickets), so that it
/// resumes with a ticket of its own last connection, as each client of the failover storm does.
pub fn with_own_sessions(base: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = base.clone();
    config.resumption = Resumption::in_memory_sessions(4);
    Arc::new(config)
}

/// The sessions of a fleet of clients of one server: every TLS 1.3 ticket received (up to 10,000), each used once.
/// rustls's own store keeps 8 tickets per server name, which 50 concurrent clients of one name exhaust, so that most
/// of them would do a full handshake; devices each keep their own ticket.
#[derive(Debug, Default)]
struct FleetSessions {
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
    tls12: Mutex<Option<Tls12ClientSessionValue>>,
    kx_hint: Mutex<Option<NamedGroup>>,
}

/// Tickets kept at most: far more than the workers use at once.
const FLEET_TICKETS: usize = 10_000;

impl ClientSessionStore for FleetSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        if let Ok(mut g) = self.kx_hint.lock() {
            *g = Some(group);
        }
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.kx_hint.lock().ok().and_then(|g| *g)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Ok(mut s) = self.tls12.lock() {
            *s = Some(value);
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.tls12.lock().ok().and_then(|s| s.clone())
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        if let Ok(mut s) = self.tls12.lock() {
            *s = None;
        }
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Ok(mut t) = self.tickets.lock() {
            if t.len() == FLEET_TICKETS {
                t.pop_front();
            }
            t.push_back(value);
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest first: the oldest may have expired.
        self.tickets.lock().ok().and_then(|mut t| t.pop_back())
    }
}

/// The address the clients connect to, which the certificate names.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
}

/// Accepts exactly one certificate (ours) and skips the handshake signature check. For the loopback benchmark only.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the benchmark's certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
