//! One-time enrollment: generate a key locally, send a CSR with the token's
//! secret, verify the coordinator against the CA fingerprint in the token, and
//! keep what comes back as the agent's [`Identity`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use vantage_proto::pb;
use vantage_proto::pb::agent_service_client::AgentServiceClient;
use vantage_proto::token::{sha256_hex, EnrollmentToken};

use crate::session::identity::{Identity, IdentityInfo};
use vantage_support::tls::{self, PinnedCaVerifier, TlsConnector, TlsError};

/// What the agent asks to be enrolled as.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// The agent's name.
    pub name: String,
    /// Labels to attach.
    pub labels: BTreeMap<String, String>,
    /// `agent` or `witness`.
    pub role: String,
}

/// Why enrollment failed. Every variant is final: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The coordinator refused the token (unknown, expired, used up) or the request.
    #[error("the coordinator refused enrollment: {0}")]
    Refused(String),
    /// The server presented a CA other than the one the token pins.
    #[error(
        "the coordinator at {addr} presented a CA that does not match the token's fingerprint {expected}: \
         wrong address, or someone is in the middle"
    )]
    CaMismatch {
        /// The address tried.
        addr: String,
        /// The pinned fingerprint.
        expected: String,
    },
    /// No address in the token could be reached.
    #[error("cannot reach the coordinator at {addrs}: {last_error}")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The last transport error.
        last_error: String,
    },
    /// The answer was unusable.
    #[error("the coordinator's answer is unusable: {0}")]
    BadAnswer(String),
    /// Key or CSR generation failed.
    #[error("cannot generate the agent key: {0}")]
    Key(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Renews the agent's certificate over `channel` (an mTLS channel with the
/// current certificate): a fresh CSR for the agent's key, and the answer
/// checked to be a certificate for that key under the same CA. The key stays
/// the same so that renewal replaces one file atomically
/// ([`Identity::save_cert`]).
pub async fn renew(
    channel: tonic::transport::Channel,
    identity: &Identity,
) -> Result<Identity, EnrollError> {
    let key = KeyPair::from_pem(&identity.key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.info.name.clone());
    params.distinguished_name = dn;
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let response = AgentServiceClient::new(channel)
        .renew(pb::RenewRequest { csr_pem })
        .await
        .map_err(|status| EnrollError::Refused(status.message().to_string()))?
        .into_inner();
    let renewed = Identity {
        cert_pem: response.client_cert_pem,
        ..identity.clone()
    };
    renewed
        .client_config()
        .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    Ok(renewed)
}

/// Enrolls with the coordinator named in `token`.
pub async fn enroll(
    token: &EnrollmentToken,
    request: &EnrollRequest,
) -> Result<Identity, EnrollError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, request.name.clone());
    params.distinguished_name = dn;
    let csr_pem = params.serialize_request(&key)?.pem()?;

    let mut last_error = String::from("no address tried");
    for addr in &token.addrs {
        let verifier = Arc::new(PinnedCaVerifier::new(&token.ca_sha256));
        let config = tls::pinned_client_config(verifier.clone())?;
        let channel = match TlsConnector::new(addr, config, None) {
            Ok(connector) => connector.channel(Duration::from_secs(10))?,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let mut client = AgentServiceClient::new(channel);
        let answer = client
            .enroll(pb::EnrollRequest {
                token: token.secret.clone(),
                csr_pem: csr_pem.clone(),
                name: request.name.clone(),
                region: String::new(),
                labels: request.labels.clone().into_iter().collect(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                role: request.role.clone(),
            })
            .await;
        let response = match answer {
            Ok(response) => response.into_inner(),
            Err(_) if verifier.mismatch_seen() => {
                return Err(EnrollError::CaMismatch {
                    addr: addr.clone(),
                    expected: token.ca_sha256.clone(),
                })
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::Unknown =>
            {
                last_error = status.message().to_string();
                continue;
            }
            Err(status) => return Err(EnrollError::Refused(status.message().to_string())),
        };
        // The CA the server returns must be the one we pinned.
        let ca_der = tls::first_cert_der(&response.ca_pem)
            .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        if sha256_hex(&ca_der) != token.ca_sha256 {
            return Err(EnrollError::CaMismatch {
                addr: addr.clone(),
                expected: token.ca_sha256.clone(),
            });
        }
        let identity = Identity {
            info: IdentityInfo {
                agent_id: response.agent_id,
                name: request.name.clone(),
                region: response.region,
                labels: request.labels.clone(),
                role: request.role.clone(),
                coordinator: token.addrs.clone(),
            },
            key_pem: key.serialize_pem(),
            cert_pem: response.client_cert_pem,
            ca_pem: response.ca_pem,
        };
        identity
            .client_config()
            .map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
        return Ok(identity);
    }
    Err(EnrollError::Unreachable {
        addrs: token.addrs.join(", "),
        last_error,
    })
}
