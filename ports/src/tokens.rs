//! Opaque secrets (refresh tokens, API keys), their SHA-256 digests, and the claims of an
//! access token. Secrets are only ever stored as digests; their `Debug` forms hide them.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::identity::UserId;
use crate::{Error, Result};

/// A random secret handed to a client once (a refresh token, an API key).
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueSecret(String);

impl OpaqueSecret {
    /// Wraps a secret value, generated or presented by a client.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The clear value, to hand to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest under which the secret is stored and looked up.
    pub fn digest(&self) -> SecretDigest {
        SecretDigest::of(&self.0)
    }
}

impl fmt::Debug for OpaqueSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpaqueSecret(<redacted>)")
    }
}

/// The SHA-256 digest of an [`OpaqueSecret`]; written as 64 lower-case hex digits.
///
/// A plain (unsalted) digest is right here: the secrets are 256-bit random values, so the
/// digest can be an index key and a lookup costs one hash, not a password hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// Digest of a secret's text.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| Error::invalid("malformed hash: expected 64 hex digits"))?;
        Ok(Self(bytes))
    }

    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The chain of refresh tokens that one login (or registration) starts; reusing a rotated
/// token revokes the whole family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FamilyId(pub Uuid);

impl FamilyId {
    /// A new random family.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Reads the 32 hex digits [`fmt::Display`] writes (the `sid` of an access token).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        (text.len() == 32).then(|| Uuid::try_parse(text).ok()).flatten().map(Self).ok_or_else(|| Error::invalid("malformed session id"))
    }
}

impl fmt::Display for FamilyId {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

/// A refresh token as stored: its digest, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    pub digest: SecretDigest,
    pub user_id: UserId,
    pub family_id: FamilyId,
    pub issued_at: DateTime<Utc>,
    /// At most `session_expires_at`.
    pub expires_at: DateTime<Utc>,
    /// The absolute end of the family (the session): no token of it outlives this.
    pub session_expires_at: DateTime<Utc>,
}

/// The replacement a rotation inserts when the presented token is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub digest: SecretDigest,
    pub issued_at: DateTime<Utc>,
    /// The expiry asked for; the store cuts it to the family's `session_expires_at`.
    pub expires_at: DateTime<Utc>,
}

/// What a refresh-token rotation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token was live: it is now revoked and the replacement stored in its
    /// family, expiring at `expires_at` (the asked expiry, cut to the session's end).
    Rotated { user_id: UserId, family_id: FamilyId, expires_at: DateTime<Utc> },
    /// The presented token had already been rotated or revoked: a replay.
    Reused { user_id: UserId, family_id: FamilyId },
    /// The presented token exists but has expired.
    Expired,
    /// The presented token's session has reached its absolute lifetime.
    SessionEnded,
    /// No such token.
    Unknown,
}

/// The verified claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: UserId,
    /// The session (refresh-token family) the token was issued in; `None` for tokens issued
    /// before tokens named theirs.
    pub session: Option<FamilyId>,
    /// The token's unique id (`jti`).
    pub token_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A freshly signed access token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("token", &"<redacted>").field("issued_at", &self.issued_at).field("expires_at", &self.expires_at).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_hex_and_round_trips() {
        let digest = SecretDigest::of("abc");
        assert_eq!(digest.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(SecretDigest::from_hex(&digest.to_hex()).unwrap(), digest);
        assert!(SecretDigest::from_hex("zz").is_err());
        assert_eq!(format!("{:?}", OpaqueSecret::new("s3cret".into())), "OpaqueSecret(<redacted>)");
    }
}
