//! TLS for every link to a coordinator: the crypto provider, PEM helpers, the
//! client configurations (pinned-CA enrollment, mTLS session, CLI admin) and
//! a tonic connector that does the TCP connect and TLS handshake itself.
//!
//! tonic's own TLS client cannot pin a CA by fingerprint, so every channel to
//! the coordinator goes through [`TlsConnector`]: one code path for the
//! agent's enrollment, the agent's session and the operator CLI.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpSocket;
use tonic::transport::{Channel, Endpoint};
use vantage_proto::token::sha256_hex;

use crate::addr::split_host_port;

/// Errors building TLS configurations or channels.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM document could not be parsed.
    #[error("cannot read {what}: {source}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// The parse error.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    /// The coordinator address is not `host:port`.
    #[error("bad coordinator address {0:?}: expected host:port")]
    BadAddress(String),
    /// No CA certificate was found in the system's store.
    #[error("the system has no CA certificates (install ca-certificates, or name a CA file)")]
    NoSystemRoots,
    /// The tonic endpoint could not be built.
    #[error("bad endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
}

/// The process-wide rustls crypto provider (ring), installed explicitly so
/// that no code path depends on which providers happen to be compiled in.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = rustls::crypto::ring::default_provider();
            // Another caller (or a test) may have installed it first: that is fine.
            let _ = provider.clone().install_default();
            Arc::new(provider)
        })
        .clone()
}

fn parse_certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem {
        what: "private key",
        source,
    })
}

/// The DER bytes of the first certificate in a PEM document.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    parse_certs("certificate", pem)?
        .into_iter()
        .next()
        .map(|c| c.as_ref().to_vec())
        .ok_or(TlsError::Pem {
            what: "certificate",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs("CA certificate", ca_pem)? {
        store.add(cert)?;
    }
    Ok(Arc::new(store))
}

fn with_h2(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client configuration for a server that is not a coordinator (no
/// ALPN, no client certificate) trusting `ca_pem`'s certificates, or the
/// system's CA store when `ca_pem` is `None`: the coordinator's link to
/// PostgreSQL.
pub fn server_client_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_pem {
        Some(pem) => roots(pem)?,
        None => {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
            Arc::new(store)
        }
    };
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that trusts only `ca_pem` and presents no client
/// certificate (operator CLI).
pub fn ca_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(with_h2(config))
}

/// A client configuration that trusts only `ca_pem` and authenticates with the
/// agent's certificate and key (the mTLS session).
pub fn mtls_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            parse_certs("agent certificate", cert_pem)?,
            parse_key(key_pem)?,
        )?;
    Ok(with_h2(config))
}

/// Accepts any certificate chain but still verifies the handshake
/// signatures: for callers that judge the chain themselves afterwards (the
/// probe engine records and verifies it separately; the lab's edge mimics a
/// CDN's non-strict origin TLS). The pinned-CA verifier reuses its signature
/// checks.
#[derive(Debug)]
pub struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl AnyCertificate {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AnyCertificate { provider }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies the coordinator against the CA whose SHA-256 fingerprint the
/// enrollment token carries: the CA must be in the presented chain and must
/// have signed the server certificate. Nothing else is trusted.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    signatures: AnyCertificate,
    mismatch: AtomicBool,
    seen_ca: OnceLock<String>,
}

impl PinnedCaVerifier {
    /// A verifier pinned to `fingerprint` (lowercase hex SHA-256 of the CA's DER).
    pub fn new(fingerprint: &str) -> Self {
        PinnedCaVerifier {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: crypto_provider(),
            signatures: AnyCertificate::new(crypto_provider()),
            mismatch: AtomicBool::new(false),
            seen_ca: OnceLock::new(),
        }
    }

    /// True if a handshake failed because no certificate in the chain matched
    /// the pinned fingerprint (the caller turns this into a clear error).
    pub fn mismatch_seen(&self) -> bool {
        self.mismatch.load(Ordering::SeqCst)
    }

    /// The CA certificate (DER) that matched the pin, once a handshake succeeded.
    pub fn pinned_ca_pem(&self) -> Option<String> {
        self.seen_ca.get().cloned()
    }
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| sha256_hex(cert.as_ref()) == self.fingerprint)
        else {
            self.mismatch.store(true, Ordering::SeqCst);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        let _ = self.seen_ca.set(der_to_pem(ca.as_ref()));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A client configuration for enrollment: trusts only the pinned CA.
pub fn pinned_client_config(
    verifier: Arc<PinnedCaVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(with_h2(config))
}

/// A tonic connector that connects TCP (optionally from a given source
/// address) and performs the TLS handshake with a given rustls configuration.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    host: String,
    port: u16,
    bind_ip: Option<IpAddr>,
}

impl TlsConnector {
    /// A connector for `addr` (`host:port`) with `config`.
    pub fn new(
        addr: &str,
        config: Arc<ClientConfig>,
        bind_ip: Option<IpAddr>,
    ) -> Result<Self, TlsError> {
        let (host, port) = split_host_port(addr).map_err(|e| TlsError::BadAddress(e.0))?;
        ServerName::try_from(host.clone()).map_err(|_| TlsError::BadAddress(addr.to_string()))?;
        Ok(TlsConnector {
            config,
            host,
            port,
            bind_ip,
        })
    }

    /// Builds a lazily connecting tonic channel through this connector.
    pub fn channel(self, connect_timeout: Duration) -> Result<Channel, TlsError> {
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        Ok(endpoint.connect_with_connector_lazy(self))
    }

    async fn connect(
        self,
    ) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await?;
        let mut last_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = self.bind_ip {
                if ip.is_ipv4() != addr.is_ipv4() {
                    continue;
                }
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            match socket.connect(addr).await {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    let name = ServerName::try_from(self.host.clone())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                        .connect(name, tcp)
                        .await?;
                    return Ok(TokioIo::new(tls));
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() {
        let pem = der_to_pem(b"not really der but bytes");
        let certs = parse_certs("test", &pem).unwrap();
        assert_eq!(certs[0].as_ref(), b"not really der but bytes");
    }
}
