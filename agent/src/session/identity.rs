//! The agent's persistent identity in its state directory: the key it
//! generated, the certificate the coordinator signed, the coordinator's CA,
//! and what enrollment assigned (id, name, region, addresses).
//!
//! Secrets are written with mode 0600 and every file is written to a temporary
//! name and renamed, so a crash mid-enrollment leaves no half identity: the
//! `identity.json` written last is what marks an enrollment as complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use vantage_support::fs::{create_private_dir, write_private, PrivateFileError};
use vantage_support::tls::{self, TlsError};

const IDENTITY_FILE: &str = "identity.json";
const KEY_FILE: &str = "agent.key";
const CERT_FILE: &str = "agent.crt";
const CA_FILE: &str = "ca.crt";

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `identity.json` is not what this version writes.
    #[error(
        "{path}: damaged identity file ({source}); remove the state directory and enroll again"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Another agent process uses this state directory.
    #[error("{path} is in use by another vantage-agent process (one state directory per agent)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The stored certificate or key is unusable.
    #[error("stored credentials are unusable: {0}")]
    Tls(#[from] TlsError),
}

impl From<PrivateFileError> for IdentityError {
    fn from(e: PrivateFileError) -> Self {
        IdentityError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// What enrollment assigned, stored as `identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// The coordinator's id for this agent.
    pub agent_id: String,
    /// The agent's name.
    pub name: String,
    /// The agent's region (from the token).
    pub region: String,
    /// Labels sent at enrollment.
    pub labels: BTreeMap<String, String>,
    /// `agent` or `witness`.
    pub role: String,
    /// Coordinator addresses from the token.
    pub coordinator: Vec<String>,
}

/// A complete identity: info plus credentials.
#[derive(Debug, Clone)]
pub struct Identity {
    /// What enrollment assigned.
    pub info: IdentityInfo,
    /// PEM private key (never leaves the agent).
    pub key_pem: String,
    /// PEM certificate signed by the coordinator CA.
    pub cert_pem: String,
    /// PEM CA certificate of the coordinator.
    pub ca_pem: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the state directory's lock for the life of the returned file, so two
/// agent processes never share one identity and spool (they would evict each
/// other's sessions and race on the spool).
pub fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, IdentityError> {
    create_private_dir(state_dir)?;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(IdentityError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

impl Identity {
    /// Loads the identity from `state_dir`; `None` if the agent never
    /// completed enrollment there.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let info_path = state_dir.join(IDENTITY_FILE);
        let info_text = match std::fs::read_to_string(&info_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&info_path)(e)),
        };
        let info: IdentityInfo =
            serde_json::from_str(&info_text).map_err(|source| IdentityError::Damaged {
                path: info_path.clone(),
                source,
            })?;
        let read = |name: &str| {
            let path = state_dir.join(name);
            std::fs::read_to_string(&path).map_err(io_err(&path))
        };
        let identity = Identity {
            info,
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
        };
        // Fail now, with the file named, rather than at the first handshake.
        identity.client_config()?;
        Ok(Some(identity))
    }

    /// Saves the identity into `state_dir` (created if missing).
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        create_private_dir(state_dir)?;
        write_private(&state_dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_private(&state_dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o600)?;
        write_private(&state_dir.join(CA_FILE), self.ca_pem.as_bytes(), 0o600)?;
        let info =
            serde_json::to_vec_pretty(&self.info).map_err(|source| IdentityError::Damaged {
                path: state_dir.join(IDENTITY_FILE),
                source,
            })?;
        Ok(write_private(&state_dir.join(IDENTITY_FILE), &info, 0o600)?)
    }

    /// Rewrites `identity.json` alone (one atomic rename of a 0600 file),
    /// after the coordinators it names changed.
    pub fn save_info(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let info =
            serde_json::to_vec_pretty(&self.info).map_err(|source| IdentityError::Damaged {
                path: path.clone(),
                source,
            })?;
        Ok(write_private(&path, &info, 0o600)?)
    }

    /// The mTLS client configuration for the session.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        tls::mtls_client_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// Replaces the stored certificate with a renewed one (same key): one
    /// atomic rename of a 0600 file, so a crash leaves the old or the new
    /// certificate, never half of one.
    pub fn save_cert(&self, state_dir: &Path) -> Result<(), IdentityError> {
        Ok(write_private(
            &state_dir.join(CERT_FILE),
            self.cert_pem.as_bytes(),
            0o600,
        )?)
    }

    /// When the certificate should be renewed: once less than a third of its
    /// lifetime is left. `None` if it cannot be parsed.
    pub fn renewal_due(&self) -> Option<std::time::SystemTime> {
        let (not_before, not_after) = cert_validity(&self.cert_pem)?;
        let lifetime = not_after.duration_since(not_before).ok()?;
        Some(not_before + lifetime * 2 / 3)
    }
}

/// The validity period of the first certificate in `pem`.
pub fn cert_validity(pem: &str) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let der = tls::first_cert_der(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    };
    Some((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}
