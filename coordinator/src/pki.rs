//! The coordinator's certificate authority: created once in the data dir,
//! it signs the server certificate (re-issued at every start so it covers the
//! current listen and advertised names) and the agents' client certificates
//! from their CSRs. The CA's SHA-256 fingerprint is what enrollment tokens pin.
//!
//! Lifetimes (issue #9): the CA is valid for [`CA_LIFETIME`] (10 years; it
//! is what every token pins, so it is not rotated — a CA created before this
//! change keeps its old validity); the server certificate for
//! [`SERVER_CERT_LIFETIME`] (re-issued at every start and while running);
//! agent certificates for the lifetime `serve` is configured with (90 days by
//! default), renewed by the agents over their session.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use vantage_proto::token::sha256_hex;
use vantage_support::fs::{write_private, PrivateFileError};

/// The admin credential's file in the data dir (0600): the coordinator
/// accepts its hash, the CLI reads it.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The CA certificate's file in the data dir.
pub const CA_CERT: &str = "ca.crt";
/// Validity of a newly created CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Validity of the server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far back a server certificate's validity starts: agents check it
/// with their own clock, which may run behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// The CA key's file in the data dir (0600).
pub const CA_KEY: &str = "ca.key";

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A CA file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A CA file could not be written.
    #[error(transparent)]
    Write(#[from] PrivateFileError),
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// The CSR an agent sent is unusable.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
}

/// The loaded CA.
pub struct Pki {
    ca_pem: String,
    ca_fingerprint: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf certificate followed by the CA certificate.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

impl Pki {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Pki, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let (ca_pem, key_pem) = if cert_path.exists() {
            (read(&cert_path)?, read(&key_path)?)
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "vantage coordinator CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let now = SystemTime::now();
            params.not_before = (now - CLOCK_SKEW).into();
            params.not_after = (now + CA_LIFETIME).into();
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key)?;
            // Key first: a CA certificate without its key would be useless.
            write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
            (cert.pem(), key.serialize_pem())
        };
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        let der = vantage_support::tls::first_cert_der(&ca_pem).map_err(|e| PkiError::Io {
            path: cert_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Pki {
            ca_fingerprint: sha256_hex(&der),
            ca_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Lowercase hex SHA-256 of the CA certificate (what tokens pin).
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server_cert(&self, names: &[String]) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "vantage coordinator");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + SERVER_CERT_LIFETIME).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR, valid from now for `lifetime`. The subject is
    /// replaced by the agent id: the agent chooses its key, the coordinator
    /// chooses who it is. Only this coordinator checks the certificate, with
    /// its own clock, so its validity starts now.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(PkiError::BadCsr("larger than 16 KiB".into()));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names.clear();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        csr.params.not_before = now.into();
        csr.params.not_after = (now + lifetime).into();
        let cert = csr.signed_by(&self.issuer)?;
        let fingerprint = sha256_hex(cert.der());
        Ok((cert.pem(), fingerprint))
    }
}

/// The agent id (certificate common name) of a client certificate.
pub fn agent_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let again = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pki.ca_fingerprint(), again.ca_fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let server = pki
            .issue_server_cert(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(server.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);

        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (cert_pem, fingerprint) = pki
            .sign_agent_csr(&csr, "agent-123", Duration::from_secs(90 * 24 * 3600))
            .unwrap();
        let leaf = vantage_support::tls::first_cert_der(&cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let validity = parsed.validity();
        assert_eq!(
            validity.not_after.timestamp() - validity.not_before.timestamp(),
            90 * 24 * 3600
        );
        let der = vantage_support::tls::first_cert_der(&cert_pem).unwrap();
        assert_eq!(agent_id_of(&der).as_deref(), Some("agent-123"));
        assert_eq!(sha256_hex(&der), fingerprint);
        // The signed certificate works as an mTLS client identity.
        vantage_support::tls::mtls_client_config(pki.ca_pem(), &cert_pem, &key.serialize_pem())
            .unwrap();
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        assert!(matches!(
            pki.sign_agent_csr("hello", "a", SERVER_CERT_LIFETIME),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            pki.sign_agent_csr(&"A".repeat(20_000), "a", SERVER_CERT_LIFETIME),
            Err(PkiError::BadCsr(_))
        ));
    }
}
