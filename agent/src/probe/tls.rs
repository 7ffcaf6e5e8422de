//! TLS for probes. The handshake always completes far enough to capture the
//! peer's certificate chain (a permissive verifier that still checks the
//! handshake signatures); verification against the system roots (plus any
//! extra CA) is then done explicitly, so a bad certificate is both reported
//! with its details and, when verification is on, refused like curl does.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use vantage_proto::pb;
use vantage_proto::token::sha256_hex;

/// The TLS side of a probe engine: one client configuration for every probe
/// and one verifier for the recorded chains.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    config: Arc<ClientConfig>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

/// Loads the system roots (what curl uses) plus `extra_ca_pem`.
fn roots(extra_ca_pem: Option<&str>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = store.add(cert);
    }
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            let _ = store.add(cert);
        }
    }
    store
}

impl ProbeTls {
    /// Builds the configuration (ALPN h2 then http/1.1, like curl).
    pub fn new(extra_ca_pem: Option<&str>) -> Result<Self, rustls::Error> {
        let provider = vantage_support::tls::crypto_provider();
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(vantage_support::tls::AnyCertificate::new(
                provider.clone(),
            )))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let store = roots(extra_ca_pem);
        // With no roots at all every chain fails verification; say so per probe.
        let verifier = if store.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .ok()
        };
        Ok(ProbeTls {
            config: Arc::new(config),
            verifier,
        })
    }

    /// The client configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Verifies a recorded chain for `server_name`; the error says why not.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> Result<(), String> {
        let Some(verifier) = &self.verifier else {
            return Err("no trusted CA certificates available".into());
        };
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err("the server sent no certificate".into());
        };
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Describes the peer's leaf certificate for the evidence.
pub fn describe(chain: &[CertificateDer<'_>]) -> pb::TlsPeer {
    let Some(leaf) = chain.first() else {
        return pb::TlsPeer::default();
    };
    let mut peer = pb::TlsPeer {
        sha256: sha256_hex(leaf.as_ref()),
        ..Default::default()
    };
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
        peer.subject = cert.subject().to_string();
        peer.issuer = cert.issuer().to_string();
        peer.not_before_unix = cert.validity().not_before.timestamp();
        peer.not_after_unix = cert.validity().not_after.timestamp();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        peer.sans.push((*dns).to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            peer.sans.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    peer
}
