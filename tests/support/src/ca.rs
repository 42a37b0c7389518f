//! A test certificate authority that issues what the TLS tests need by name: server certificates with chosen SANs
//! (SNI), client certificates with chosen serial numbers, CRLs revoking some of them (signed by rcgen), and OCSP
//! responses (by `openssl ocsp`, acting as the responder over an index file).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA written to `<name>.pem` (certificate) and `<name>.key` (PKCS#8 key) in its folder.
pub struct TestCa {
    pub issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

/// A certificate the CA issued, with its key, as files and as DER.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key")
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = p256();
        let key_pem = key.serialize_pem();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        let (pem, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&pem, issuer.pem()).expect("write the CA certificate");
        std::fs::write(&key, key_pem).expect("write the CA key");
        TestCa { issuer, pem, key, dir: dir.to_path_buf() }
    }

    /// A server certificate with this CN, these SANs (DNS names or IP addresses) and this serial, written to
    /// `<stem>.crt` and `<stem>.key`.
    pub fn server(&self, stem: &str, cn: &str, sans: &[&str], serial: u64) -> Issued {
        let (cert, key) = self.files(stem);
        self.server_to(&cert, &key, cn, sans, serial)
    }

    /// Like [`TestCa::server`], written to the files `cert` and `key` wherever they are (a reload test rewrites the
    /// files its configuration names).
    pub fn server_to(&self, cert: &Path, key: &Path, cn: &str, sans: &[&str], serial: u64) -> Issued {
        self.issue(cert, key, cn, sans, serial, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with this CN and serial, written to `<stem>.crt` and `<stem>.key`.
    pub fn client(&self, stem: &str, cn: &str, serial: u64) -> Issued {
        self.client_with_sans(stem, cn, &[], serial)
    }

    /// Like [`TestCa::client`], naming these DNS names in its SANs too (an identity a listener may require).
    pub fn client_with_sans(&self, stem: &str, cn: &str, sans: &[&str], serial: u64) -> Issued {
        let (cert, key) = self.files(stem);
        self.issue(&cert, &key, cn, sans, serial, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// `<stem>.crt` and `<stem>.key` in the CA's folder.
    fn files(&self, stem: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")))
    }

    fn issue(
        &self,
        cert: &Path,
        key: &Path,
        cn: &str,
        sans: &[&str],
        serial: u64,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Issued {
        let k = p256();
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(sans).expect("certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![usage];
        let c = params.signed_by(&k, &self.issuer).expect("sign the certificate");
        let issued = Issued {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            der: c.der().clone(),
            key_der: k.serialize_der(),
        };
        std::fs::write(&issued.cert, c.pem()).expect("write the certificate");
        std::fs::write(&issued.key, k.serialize_pem()).expect("write the key");
        issued
    }

    /// A CRL revoking these serial numbers, valid from `valid_from` (Unix time) for `days` days.
    pub fn crl(&self, revoked: &[u64], valid_from: u64, days: u64) -> rcgen::CertificateRevocationList {
        let this_update = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(valid_from);
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update: this_update + std::time::Duration::from_secs(days * 86_400),
            crl_number: rcgen::SerialNumber::from(valid_from),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).expect("sign the CRL")
    }

    /// [`TestCa::crl`] valid from a minute ago for a week.
    pub fn current_crl(&self, revoked: &[u64]) -> rcgen::CertificateRevocationList {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
        self.crl(revoked, now.as_secs() - 60, 7)
    }

    /// A DER OCSP response from `openssl ocsp` (the CA as its own responder, valid one day) saying `status` ('V'
    /// good, 'R' revoked) for `cert`, written to `out`. Errs when openssl cannot run.
    pub fn ocsp_response(&self, openssl: &Path, cert: &Path, status: char, out: &Path) -> Result<(), String> {
        let serial = run(Command::new(openssl).args(["x509", "-noout", "-serial", "-in"]).arg(cert))?;
        let serial = serial.trim().trim_start_matches("serial=").to_owned();
        let revoked_at = if status == 'R' { "240101000000Z" } else { "" };
        let index = out.with_extension("index");
        std::fs::write(&index, format!("{status}\t491231000000Z\t{revoked_at}\t{serial}\tunknown\t/CN=any\n"))
            .map_err(|e| format!("write {}: {e}", index.display()))?;
        let mut ocsp = Command::new(openssl);
        ocsp.args(["ocsp", "-ndays", "1", "-index"]).arg(&index);
        ocsp.arg("-rsigner").arg(&self.pem).arg("-rkey").arg(&self.key).arg("-CA").arg(&self.pem);
        ocsp.arg("-issuer").arg(&self.pem).arg("-cert").arg(cert).arg("-respout").arg(out);
        run(&mut ocsp).map(drop)
    }

    /// A rustls client trusting this CA (for the server), presenting `identity` (issued by any CA) if given.
    pub fn client_config(&self, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("add the CA to the root store");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
                )
                .expect("client certificate and key"),
        };
        Arc::new(config)
    }
}

/// Runs a command to its end; its stdout, or why it failed.
fn run(command: &mut Command) -> Result<String, String> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
