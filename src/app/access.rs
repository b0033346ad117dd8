//! Who is calling, and what they may reach. `authenticate` tries the bearer access token
//! first; when it is absent or invalid, the API key. A user reaches a tenant it owns by
//! naming it in `X-Tenant-ID`; an API key reaches its own tenant only.
//!
//! An access token is valid when it is signed, unexpired, issued no earlier than its user
//! last ended every session, and its own session (the refresh-token family it names) has
//! not been logged out or revoked ([`AccessService::session_is_current`], read from the
//! store so that every replica agrees).
//!
//! None of this asks the store on the hot path: API keys, users' session cut-offs and
//! tenants are read through the caches of [`Changes`], which every change to them drops
//! at once here and within the feed's delay on every other replica.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use nexus_ports::identity::UserId;
use nexus_ports::ports::{AccessTokens, ApiKeyStore, Clock, RefreshTokenStore, TenantStore, UserStore};
use nexus_ports::tenancy::{ApiKey, KeyScope, Tenant, TenantId};
use nexus_ports::tokens::{AccessClaims, SecretDigest};
use nexus_ports::{Error, Result};

use super::changes::Changes;
use super::key_usage::KeyUsage;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user, by access token.
    User(UserId),
    /// A tenant, by one of its API keys.
    ApiKey { key: ApiKey, tenant: Tenant },
}

impl Principal {
    /// How the caller is named as the author of a change: `usr_...`, or `key:<label>`.
    pub fn author(&self) -> String {
        match self {
            Self::User(user) => user.to_string(),
            Self::ApiKey { key, .. } => format!("key:{}", key.label.as_str()),
        }
    }
}

/// The credentials a request carried.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<&'a str>,
    /// The value of `X-API-Key`.
    pub api_key: Option<&'a str>,
}

/// Authentication and authorization.
pub struct AccessService {
    tokens: Arc<dyn AccessTokens>,
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn RefreshTokenStore>,
    keys: Arc<dyn ApiKeyStore>,
    tenants: Arc<dyn TenantStore>,
    clock: Arc<dyn Clock>,
    usage: Arc<KeyUsage>,
    changes: Arc<Changes>,
}

/// The tenant with this id if `user` owns it. A tenant that does not exist is refused
/// like one of another user's, so ids cannot be probed.
///
/// # Errors
/// [`Error::Forbidden`] unless the user owns the tenant.
pub(crate) async fn owned_tenant(tenants: &dyn TenantStore, user: &UserId, id: &TenantId) -> Result<Tenant> {
    match tenants.find_tenant(id).await? {
        Some(tenant) if tenant.owner == *user => Ok(tenant),
        _ => Err(refused_tenant()),
    }
}

fn refused_tenant() -> Error {
    Error::Forbidden("you do not own this tenant".to_owned())
}

/// The ports authentication needs, by name.
pub struct AccessPorts {
    pub tokens: Arc<dyn AccessTokens>,
    /// Where each user's sessions cut-off is kept.
    pub users: Arc<dyn UserStore>,
    /// Where each session (refresh-token family) is kept.
    pub sessions: Arc<dyn RefreshTokenStore>,
    pub keys: Arc<dyn ApiKeyStore>,
    pub tenants: Arc<dyn TenantStore>,
    pub clock: Arc<dyn Clock>,
    /// Where key use is noted, off the request path.
    pub usage: Arc<KeyUsage>,
    /// What is kept in memory of keys, sessions and tenants.
    pub changes: Arc<Changes>,
}

/// Whether a token issued at `issued_at` outlived its user's last ending of every session
/// (`cutoff`): it did when it was issued before it.
pub(crate) fn issued_before_cutoff(issued_at: DateTime<Utc>, cutoff: Option<DateTime<Utc>>) -> bool {
    cutoff.is_some_and(|cutoff| issued_at < cutoff)
}

impl AccessService {
    /// Wires authentication to its ports.
    pub fn new(ports: AccessPorts) -> Self {
        let AccessPorts { tokens, users, sessions, keys, tenants, clock, usage, changes } = ports;
        Self { tokens, users, sessions, keys, tenants, clock, usage, changes }
    }

    /// Whether the session of a verified access token is still current: its user has not
    /// ended every session since the token was issued, and the session the token names has
    /// not been logged out or revoked. The one place this is decided (from memory when kept
    /// there: a logout or revocation drops what is kept, here at once and on every other
    /// replica through the change feed).
    ///
    /// # Errors
    /// What the store answered.
    pub async fn session_is_current(&self, claims: &AccessClaims) -> Result<bool> {
        let sessions = &self.changes.caches().sessions;
        let cutoff = match sessions.get(&claims.user_id) {
            Some(cutoff) => cutoff,
            None => {
                let ticket = sessions.ticket();
                let cutoff = self.users.sessions_valid_after(&claims.user_id).await?;
                sessions.insert(ticket, claims.user_id, cutoff);
                cutoff
            }
        };
        if issued_before_cutoff(claims.issued_at, cutoff) {
            return Ok(false);
        }
        let Some(session) = claims.session else { return Ok(true) };
        let live = &self.changes.caches().live_sessions;
        if let Some(live) = live.get(&session) {
            return Ok(live);
        }
        let ticket = live.ticket();
        let is_live = self.sessions.session_is_live(&session).await?;
        live.insert(ticket, session, is_live);
        Ok(is_live)
    }

    /// The key with this digest and its tenant, from memory when kept there.
    async fn find_key(&self, digest: &SecretDigest) -> Result<Option<(ApiKey, Tenant)>> {
        let keys = &self.changes.caches().keys;
        if let Some(found) = keys.get(digest) {
            return Ok(Some(found));
        }
        let ticket = keys.ticket();
        let found = self.keys.find_key(digest).await?;
        if let Some(found) = &found {
            keys.insert(ticket, *digest, found.clone());
        }
        Ok(found)
    }

    /// Who the credentials belong to. An API key costs one indexed lookup by its SHA-256
    /// digest, never a password hash; its use is noted off the request path.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when neither credential is valid, saying why.
    pub async fn authenticate(&self, credentials: Credentials<'_>) -> Result<Principal> {
        let now = self.clock.now();
        // The refusal, and its reason as the `nexus_auth_refusals_total` label.
        let mut refusal = None;
        if let Some(token) = credentials.bearer {
            match self.tokens.verify(token, now) {
                Ok(claims) if self.session_is_current(&claims).await? => return Ok(Principal::User(claims.user_id)),
                Ok(_) => refusal = Some((Error::unauthorized("this session has ended; log in again"), "session_ended")),
                Err(err) => refusal = Some((err, "invalid_token")),
            }
        }
        if let Some(raw) = credentials.api_key {
            let digest = SecretDigest::of(raw);
            match self.find_key(&digest).await? {
                Some((key, _)) if key.expired_at(now) => {
                    let end = key.expires_at.map(|end| end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
                    refusal = Some((Error::unauthorized(format!("this API key expired at {end}")), "expired_key"));
                }
                Some((key, tenant)) => {
                    self.usage.record(digest, now);
                    return Ok(Principal::ApiKey { key, tenant });
                }
                None => refusal = Some((Error::unauthorized("invalid or revoked API key"), "invalid_key")),
            }
        }
        let (refusal, reason) =
            refusal.unwrap_or_else(|| (Error::unauthorized("missing credentials: send Authorization: Bearer <access token> or X-API-Key: <key>"), "missing"));
        metrics::counter!("nexus_auth_refusals_total", "reason" => reason).increment(1);
        Err(refusal)
    }

    /// Whether the principal may make a request that reads only (`GET`, `HEAD`) or one that
    /// changes something: a read-scoped API key may only read.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for a change asked with a read-scoped key.
    pub fn permits(principal: &Principal, reads_only: bool) -> Result<()> {
        match principal {
            Principal::ApiKey { key, .. } if key.scope == KeyScope::Read && !reads_only => {
                Err(Error::Forbidden("this API key is read-only (scope read): it may only make GET requests".to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// The user behind a principal, for routes that act on a user's behalf.
    ///
    /// # Errors
    /// [`Error::Forbidden`] for an API key.
    pub fn require_user(principal: &Principal) -> Result<UserId> {
        match principal {
            Principal::User(user) => Ok(*user),
            Principal::ApiKey { .. } => {
                Err(Error::Forbidden("this route acts for a user: send a user's access token (Authorization: Bearer), not an API key".to_owned()))
            }
        }
    }

    /// The tenant a request is scoped to: an API key's own tenant, or, for a user, the
    /// tenant named by `X-Tenant-ID`, which it must own.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when a user names no tenant or a malformed one;
    /// [`Error::Forbidden`] when the user does not own it, or an API key's request names
    /// another tenant.
    pub async fn tenant_scope(&self, principal: &Principal, tenant_header: Option<&str>) -> Result<Tenant> {
        // An empty header names no tenant.
        let tenant_header = tenant_header.filter(|named| !named.is_empty());
        match principal {
            Principal::ApiKey { tenant, .. } => match tenant_header {
                Some(named) if TenantId::parse(named).ok() != Some(tenant.id) => {
                    Err(Error::Forbidden("this API key belongs to another tenant than X-Tenant-ID names".to_owned()))
                }
                _ => Ok(tenant.clone()),
            },
            Principal::User(user) => {
                let named = tenant_header.ok_or_else(|| Error::invalid("X-Tenant-ID is required with a user access token on tenant-scoped routes"))?;
                let id = TenantId::parse(named)?;
                let tenants = &self.changes.caches().tenants;
                let tenant = match tenants.get(&id) {
                    Some(tenant) => Some(tenant),
                    None => {
                        let ticket = tenants.ticket();
                        let found = self.tenants.find_tenant(&id).await?;
                        if let Some(tenant) = &found {
                            tenants.insert(ticket, id, tenant.clone());
                        }
                        found
                    }
                };
                match tenant {
                    Some(tenant) if tenant.owner == *user => Ok(tenant),
                    _ => Err(refused_tenant()),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
