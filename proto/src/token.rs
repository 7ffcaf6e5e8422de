//! The enrollment token: one printable line that carries everything an agent
//! needs to enroll — where the coordinator is, the SHA-256 fingerprint of its
//! CA (so the agent trusts nothing else), and a one-time secret.
//!
//! Format: `vtk1.` followed by unpadded base64url of a small JSON object. The
//! prefix versions the format and makes a pasted token easy to recognise.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "vtk1.";
/// Tokens longer than this are refused before decoding.
const MAX_TOKEN_LEN: usize = 4096;

/// Why a token could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a vantage token at all.
    #[error("not a vantage enrollment token (it should start with `{PREFIX}`)")]
    BadPrefix,
    /// Too long to be a token.
    #[error("enrollment token is {0} bytes long; a real one is far shorter")]
    TooLong(usize),
    /// The payload is not valid base64url.
    #[error("enrollment token is damaged (bad base64): was it copied whole?")]
    BadEncoding,
    /// The payload is not the expected JSON.
    #[error("enrollment token is damaged (bad payload): {0}")]
    BadPayload(String),
    /// A field is missing or malformed.
    #[error("enrollment token is invalid: {0}")]
    Invalid(&'static str),
}

/// A decoded enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Coordinator gRPC addresses (`host:port`), tried in order.
    #[serde(rename = "a")]
    pub addrs: Vec<String>,
    /// Lowercase hex SHA-256 of the coordinator CA certificate (DER).
    #[serde(rename = "f")]
    pub ca_sha256: String,
    /// The secret the coordinator knows only by its hash.
    #[serde(rename = "s")]
    pub secret: String,
}

impl EnrollmentToken {
    /// Encodes the token as one printable line.
    pub fn encode(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Decodes and checks a token typed or pasted by a person.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(text.len()));
        }
        let payload = text.strip_prefix(PREFIX).ok_or(TokenError::BadPrefix)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::BadEncoding)?;
        let token: EnrollmentToken =
            serde_json::from_slice(&json).map_err(|e| TokenError::BadPayload(e.to_string()))?;
        token.check()?;
        Ok(token)
    }

    fn check(&self) -> Result<(), TokenError> {
        if self.addrs.is_empty() || self.addrs.iter().any(|a| a.is_empty() || a.len() > 256) {
            return Err(TokenError::Invalid("no usable coordinator address"));
        }
        let fingerprint_ok = self.ca_sha256.len() == 64
            && self
                .ca_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !fingerprint_ok {
            return Err(TokenError::Invalid(
                "CA fingerprint is not 64 lowercase hex digits",
            ));
        }
        if self.secret.len() < 16 || self.secret.len() > 256 {
            return Err(TokenError::Invalid("secret has the wrong length"));
        }
        Ok(())
    }

    /// The hash under which the coordinator stores this token's secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// Lowercase hex SHA-256 of a secret: tokens and admin credentials are stored
/// only in this form.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Lowercase hex SHA-256 of DER bytes (certificate fingerprints).
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> EnrollmentToken {
        EnrollmentToken {
            addrs: vec!["127.0.0.1:7443".into()],
            ca_sha256: "ab".repeat(32),
            secret: "s3cr3t-s3cr3t-s3cr3t".into(),
        }
    }

    #[test]
    fn round_trip() {
        let encoded = token().encode();
        assert!(encoded.starts_with("vtk1."));
        assert_eq!(
            EnrollmentToken::decode(&format!("  {encoded}\n")),
            Ok(token())
        );
    }

    #[test]
    fn damaged_tokens_are_named() {
        assert_eq!(EnrollmentToken::decode("hello"), Err(TokenError::BadPrefix));
        assert_eq!(
            EnrollmentToken::decode("vtk1.!!!"),
            Err(TokenError::BadEncoding)
        );
        assert!(matches!(
            EnrollmentToken::decode("vtk1.e30"),
            Err(TokenError::BadPayload(_))
        ));
        let mut bad = token();
        bad.ca_sha256 = "xyz".into();
        assert!(matches!(
            EnrollmentToken::decode(&bad.encode()),
            Err(TokenError::Invalid(_))
        ));
        let mut no_addr = token();
        no_addr.addrs.clear();
        assert!(EnrollmentToken::decode(&no_addr.encode()).is_err());
        let long = format!("vtk1.{}", "A".repeat(10_000));
        assert_eq!(
            EnrollmentToken::decode(&long),
            Err(TokenError::TooLong(10_005))
        );
    }

    #[test]
    fn secret_hash_is_stable_hex() {
        assert_eq!(token().secret_hash().len(), 64);
        assert_eq!(token().secret_hash(), hash_secret("s3cr3t-s3cr3t-s3cr3t"));
    }
}
