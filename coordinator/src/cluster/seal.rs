//! The installation's seal key: 32 random bytes in `seal.key` (hex, 0600)
//! in every coordinator's data dir and never in the database, and the
//! ChaCha20-Poly1305 sealing of what the database keeps for the
//! installation (the CA key, the admin credential).
//!
//! Each sealed value is `nonce (12 bytes) || ciphertext || tag`, with the
//! value's name as associated data, so a sealed value moved to another
//! name does not open.

use std::path::{Path, PathBuf};

use rand::RngCore as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// The seal key's file in the data dir.
pub const SEAL_KEY_FILE: &str = "seal.key";

/// Everything that can go wrong with the seal key.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file is missing.
    #[error(
        "{path} is missing: this database already holds an installation, whose secrets only \
         its seal key opens; copy seal.key (0600) from the data dir of a coordinator of this \
         installation"
    )]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// The key file cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The key file does not hold 64 hex digits.
    #[error("{0} does not hold a seal key (64 hex digits)")]
    Malformed(PathBuf),
    /// A sealed value does not open with this key.
    #[error(
        "the seal key in {0} does not open this installation's secrets: it belongs to another \
         installation, or the database was tampered with"
    )]
    WrongKey(PathBuf),
}

/// The installation's seal key, as loaded from a data dir.
pub struct SealKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// Loads `dir/seal.key`; a missing file is [`SealError::Missing`].
    pub fn load(dir: &Path) -> Result<SealKey, SealError> {
        let path = dir.join(SEAL_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealError::Missing { path })
            }
            Err(e) => {
                return Err(SealError::File {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::Malformed(path.clone()))?;
        Self::from_bytes(&bytes, path)
    }

    /// Loads `dir/seal.key`, creating a new random key there (0600) if there
    /// is none: only the coordinator that creates an installation does.
    pub fn load_or_create(dir: &Path) -> Result<SealKey, SealError> {
        match Self::load(dir) {
            Err(SealError::Missing { path }) => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                vantage_support::fs::write_private(
                    &path,
                    format!("{}\n", hex::encode(bytes)).as_bytes(),
                    0o600,
                )
                .map_err(|e| SealError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Self::from_bytes(&bytes, path)
            }
            other => other,
        }
    }

    fn from_bytes(bytes: &[u8], path: PathBuf) -> Result<SealKey, SealError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| SealError::Malformed(path.clone()))?;
        Ok(SealKey {
            key: LessSafeKey::new(unbound),
            path,
        })
    }

    /// Seals `plain` under `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = plain.to_vec();
        // Sealing only fails on inputs beyond ring's limit (256 GiB).
        if self
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .is_err()
        {
            sealed.clear();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`SealKey::seal`] sealed under `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let wrong = || SealError::WrongKey(self.path.clone());
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SealKey::load(dir.path()),
            Err(SealError::Missing { .. })
        ));
        let key = SealKey::load_or_create(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(SEAL_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("installation", b"the CA key");
        assert!(
            !sealed.windows(6).any(|w| w == b"CA key"),
            "sealed in clear"
        );
        // The same file loads the same key.
        let again = SealKey::load(dir.path()).unwrap();
        assert_eq!(again.open("installation", &sealed).unwrap(), b"the CA key");
        // Another name, another key, a flipped bit, a stub: refused.
        assert!(matches!(
            key.open("other", &sealed),
            Err(SealError::WrongKey(_))
        ));
        let other = tempfile::tempdir().unwrap();
        let stranger = SealKey::load_or_create(other.path()).unwrap();
        assert!(stranger.open("installation", &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(key.open("installation", &flipped).is_err());
        assert!(key.open("installation", &sealed[..5]).is_err());
        // A file that is not a key is named.
        std::fs::write(dir.path().join(SEAL_KEY_FILE), "not hex\n").unwrap();
        assert!(matches!(
            SealKey::load(dir.path()),
            Err(SealError::Malformed(_))
        ));
    }
}
