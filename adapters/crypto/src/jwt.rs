//! HS256 access tokens. The algorithm is pinned (a token claiming any other is refused),
//! and `iss`, `sub`, `iat`, `exp`, `jti` and the token type are all required and checked;
//! expiry is checked against the caller's clock, with no leeway.
//!
//! `sid` names the session (refresh-token family) a token was issued in, so that logging
//! out (or reuse detection) ends the session's access tokens with it.
//!
//! `iat` is in whole seconds, as the standard has it; `iat_us` repeats it to the
//! microsecond, so that "every token issued before this moment" (ending every session)
//! does not also catch a token issued a moment after, within the same second.
//!
//! Whether a token's signature and claims hold depends on its bytes and the secret only:
//! a token verified once is kept, by its exact text, until it expires (at most
//! [`MAX_VERIFIED`] of them), and later presentations check only its expiry. Whether its
//! session is still current is not the token's to say, and is decided on every request by
//! the caller.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Duration, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use nexus_ports::identity::UserId;
use nexus_ports::ports::AccessTokens;
use nexus_ports::tokens::{AccessClaims, AccessToken, FamilyId};
use nexus_ports::{Error, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The shortest signing secret accepted: 256 bits, the HS256 output size.
pub const MIN_SECRET_BYTES: usize = 32;
const ISSUER: &str = "nexus";
const ACCESS_TYPE: &str = "access";
/// Verified tokens kept at most.
pub const MAX_VERIFIED: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    /// `iat` in microseconds; absent from tokens issued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat_us: Option<i64>,
    exp: i64,
    iss: String,
    typ: String,
    jti: String,
    /// The session (refresh-token family) the token was issued in; absent from tokens
    /// issued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// [`AccessTokens`] as HS256 JWTs.
pub struct JwtAccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Tokens already verified, by their exact text, with their claims.
    verified: RwLock<HashMap<Box<str>, AccessClaims>>,
}

impl JwtAccessTokens {
    /// Tokens signed with `secret` that live for `ttl`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the secret is shorter than [`MIN_SECRET_BYTES`] or the
    /// lifetime is not positive.
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Self> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(Error::invalid(format!("the JWT secret must be at least {MIN_SECRET_BYTES} bytes")));
        }
        if ttl <= Duration::zero() {
            return Err(Error::invalid("the access-token lifetime must be positive"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        validation.validate_exp = false; // checked below against the caller's clock
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).map_err(Error::internal)?,
            decoding: DecodingKey::from_secret(secret).map_err(Error::internal)?,
            validation,
            ttl,
            verified: RwLock::default(),
        })
    }

    /// Checks the signature and every claim of `token`.
    fn verify_signed(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| rejected())?.claims;
        if claims.typ != ACCESS_TYPE || claims.jti.is_empty() || claims.exp <= now.timestamp() {
            return Err(rejected());
        }
        let at = |secs| Utc.timestamp_opt(secs, 0).single().ok_or_else(rejected);
        let issued_at = match claims.iat_us {
            Some(micros) if micros.div_euclid(1_000_000) == claims.iat => DateTime::from_timestamp_micros(micros).ok_or_else(rejected)?,
            Some(_) => return Err(rejected()),
            None => at(claims.iat)?,
        };
        let session = claims.sid.as_deref().map(FamilyId::parse).transpose().map_err(|_| rejected())?;
        Ok(AccessClaims { user_id: UserId::parse(&claims.sub).map_err(|_| rejected())?, session, token_id: claims.jti, issued_at, expires_at: at(claims.exp)? })
    }

    /// Keeps a verified token. When full, expired tokens go first, then an arbitrary tenth
    /// of the rest.
    fn keep(&self, token: &str, claims: &AccessClaims, now: DateTime<Utc>) {
        let mut verified = self.verified.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, kept| !expired(kept, now));
            if verified.len() >= MAX_VERIFIED {
                let evicted: Vec<Box<str>> = verified.keys().take(MAX_VERIFIED.div_ceil(10)).cloned().collect();
                for token in evicted {
                    verified.remove(&token);
                }
            }
        }
        verified.insert(token.into(), claims.clone());
    }
}

/// Whether a token with these claims has expired at `now` (`exp` is in whole seconds).
fn expired(claims: &AccessClaims, now: DateTime<Utc>) -> bool {
    claims.expires_at.timestamp() <= now.timestamp()
}

fn rejected() -> Error {
    Error::unauthorized("invalid or expired access token")
}

impl AccessTokens for JwtAccessTokens {
    fn issue(&self, user_id: &UserId, session: &FamilyId, now: DateTime<Utc>) -> Result<AccessToken> {
        // `exp` is in whole seconds: round up, so that a token lives at least its lifetime.
        let exact = now + self.ttl;
        let expires_at = Utc
            .timestamp_opt(exact.timestamp() + i64::from(exact.timestamp_subsec_nanos() > 0), 0)
            .single()
            .ok_or_else(|| Error::internal("access-token expiry out of range"))?;
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now.timestamp(),
            iat_us: Some(now.timestamp_micros()),
            exp: expires_at.timestamp(),
            iss: ISSUER.to_owned(),
            typ: ACCESS_TYPE.to_owned(),
            jti: Uuid::new_v4().simple().to_string(),
            sid: Some(session.to_string()),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(Error::internal)?;
        Ok(AccessToken { token, issued_at: now, expires_at })
    }

    fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims> {
        let kept = self.verified.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(token).cloned();
        if let Some(claims) = kept {
            return if expired(&claims, now) { Err(rejected()) } else { Ok(claims) };
        }
        let claims = self.verify_signed(token, now)?;
        self.keep(token, &claims, now);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> JwtAccessTokens {
        JwtAccessTokens::new(SECRET, Duration::minutes(15)).unwrap()
    }

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let (tokens, user, now) = (tokens(), UserId::generate(), Utc::now());
        let issued = tokens.issue(&user, &FamilyId::generate(), now).unwrap();
        let claims = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(claims.user_id, user);
        assert_eq!(claims.expires_at, issued.expires_at);
        assert!(issued.expires_at >= now + Duration::minutes(15) && issued.expires_at < now + Duration::minutes(15) + Duration::seconds(1));
        assert!(tokens.verify(&issued.token, now + Duration::minutes(15) - Duration::milliseconds(1)).is_ok());
        assert!(tokens.verify(&issued.token, issued.expires_at).is_err());
        assert_ne!(tokens.issue(&user, &FamilyId::generate(), now).unwrap().token, issued.token, "jti makes every token unique");
    }

    #[test]
    fn forged_foreign_and_unsigned_tokens_are_refused() {
        let (tokens, now) = (tokens(), Utc::now());
        let issued = tokens.issue(&UserId::generate(), &FamilyId::generate(), now).unwrap();
        let other = JwtAccessTokens::new(b"another secret that is long enough!", Duration::minutes(15)).unwrap();
        assert!(other.verify(&issued.token, now).is_err());
        assert!(tokens.verify("garbage", now).is_err());
        // alg "none" with the same claims
        let claims = issued.token.split('.').nth(1).unwrap();
        let none = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(tokens.verify(&none, now).is_err());
        // a token of another type
        let refresh_typed = Claims {
            sub: UserId::generate().to_string(),
            iat: now.timestamp(),
            iat_us: None,
            exp: now.timestamp() + 60,
            iss: ISSUER.into(),
            typ: "refresh".into(),
            jti: "x".into(),
            sid: None,
        };
        let token = encode(&Header::new(Algorithm::HS256), &refresh_typed, &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert!(tokens.verify(&token, now).is_err());
    }

    #[test]
    fn tokens_live_at_least_their_lifetime_despite_whole_second_expiry() {
        let tokens = JwtAccessTokens::new(SECRET, Duration::seconds(1)).unwrap();
        let issued_at = Utc.timestamp_opt(1_800_000_000, 999_000_000).single().unwrap();
        let token = tokens.issue(&UserId::generate(), &FamilyId::generate(), issued_at).unwrap();
        assert_eq!(token.expires_at.timestamp(), 1_800_000_001 + 1);
        assert!(tokens.verify(&token.token, issued_at + Duration::milliseconds(999)).is_ok(), "valid for its whole lifetime");
        assert!(tokens.verify(&token.token, token.expires_at).is_err());
        assert_eq!((token.expires_at - token.issued_at).num_seconds(), 1);
    }

    #[test]
    fn a_kept_token_answers_as_verified_and_an_altered_one_is_checked_anew() {
        let (tokens, now) = (tokens(), Utc::now());
        let issued = tokens.issue(&UserId::generate(), &FamilyId::generate(), now).unwrap();
        let first = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(tokens.verify(&issued.token, now).unwrap(), first, "the kept claims are the verified ones");
        // The same claims under a signature with one character changed.
        let at = issued.token.len() - 5;
        let replaced = if &issued.token[at..=at] == "A" { "B" } else { "A" };
        let altered = format!("{}{replaced}{}", &issued.token[..at], &issued.token[at + 1..]);
        assert!(tokens.verify(&altered, now).is_err());
        assert!(tokens.verify(&issued.token, issued.expires_at).is_err(), "a kept token still expires");
    }

    #[test]
    fn kept_tokens_stay_bounded() {
        let (tokens, now) = (tokens(), Utc::now());
        for _ in 0..MAX_VERIFIED + 10 {
            let issued = tokens.issue(&UserId::generate(), &FamilyId::generate(), now).unwrap();
            tokens.verify(&issued.token, now).unwrap();
        }
        assert!(tokens.verified.read().unwrap().len() <= MAX_VERIFIED);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtAccessTokens::new(b"short", Duration::minutes(1)).is_err());
    }

    #[test]
    fn the_issue_time_is_kept_to_the_microsecond() {
        let tokens = tokens();
        let issued_at = Utc.timestamp_opt(1_800_000_000, 123_456_000).single().unwrap();
        let token = tokens.issue(&UserId::generate(), &FamilyId::generate(), issued_at).unwrap();
        assert_eq!(tokens.verify(&token.token, issued_at).unwrap().issued_at, issued_at);
        // A token without `iat_us` (issued before it existed) is taken at its whole second.
        let claims = Claims {
            sub: UserId::generate().to_string(),
            iat: 1_800_000_000,
            iat_us: None,
            exp: 1_800_000_060,
            iss: ISSUER.into(),
            typ: ACCESS_TYPE.into(),
            jti: "x".into(),
            sid: None,
        };
        let older = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert_eq!(tokens.verify(&older, issued_at).unwrap().issued_at.timestamp_micros(), 1_800_000_000_000_000);
    }

    #[test]
    fn a_token_names_its_session() {
        let (tokens, now, session) = (tokens(), Utc::now(), FamilyId::generate());
        let issued = tokens.issue(&UserId::generate(), &session, now).unwrap();
        assert_eq!(tokens.verify(&issued.token, now).unwrap().session, Some(session));
        // A token of before `sid` (none) has no session; a malformed one is refused.
        let mut claims = Claims {
            sub: UserId::generate().to_string(),
            iat: now.timestamp(),
            iat_us: None,
            exp: now.timestamp() + 60,
            iss: ISSUER.into(),
            typ: ACCESS_TYPE.into(),
            jti: "y".into(),
            sid: None,
        };
        let sign = |claims: &Claims| encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert_eq!(tokens.verify(&sign(&claims), now).unwrap().session, None);
        claims.sid = Some("not-a-session".into());
        assert!(tokens.verify(&sign(&claims), now).is_err());
    }
}
