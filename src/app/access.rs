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
use nexus_ports::audit::{AuditAction, key_actor};
use nexus_ports::identity::UserId;
use nexus_ports::ports::{AccessTokens, ApiKeyStore, Clock, RefreshTokenStore, TenantStore, UserStore};
use nexus_ports::tenancy::{ApiKey, KeyScope, Tenant, TenantId};
use nexus_ports::tokens::{AccessClaims, SecretDigest};
use nexus_ports::{Error, Result};

use super::changes::Changes;
use super::key_usage::KeyUsage;
use super::refusals::{Refusals, Refused, Trail, actor_of_user};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user, by access token.
    User(UserId),
    /// A tenant, by one of its API keys.
    ApiKey { key: ApiKey, tenant: Tenant },
}

impl Principal {
    /// Who is refused, when this caller is.
    fn refused(&self) -> Refused {
        match self {
            Self::User(user) => Refused::User(*user),
            Self::ApiKey { key, .. } => Refused::Key(key_actor(&key.digest, &key.label)),
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
    /// Where refusals are counted for the audit trails (none: not recorded).
    refusals: Option<Arc<Refusals>>,
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
        Self { tokens, users, sessions, keys, tenants, clock, usage, changes, refusals: None }
    }

    /// The same service, counting refusals in `refusals` for the audit trails.
    #[must_use]
    pub fn with_refusals(self, refusals: Arc<Refusals>) -> Self {
        Self { refusals: Some(refusals), ..self }
    }

    fn refuse(&self, who: Refused, cause: AuditAction, target: &str, trail: Trail) {
        if let Some(refusals) = &self.refusals {
            refusals.note(who, cause, target, trail);
        }
    }

    /// How the caller is named as the actor of an event and the author of a version: a
    /// user by its id and email, a key by its hash prefix and label (see
    /// [`nexus_ports::audit::user_actor`], [`key_actor`]).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when the user no longer exists; what the store answered.
    pub async fn actor(&self, principal: &Principal) -> Result<String> {
        match principal {
            Principal::User(user) => actor_of_user(self.users.as_ref(), &self.changes, user).await,
            Principal::ApiKey { key, .. } => Ok(key_actor(&key.digest, &key.label)),
        }
    }

    /// [`Self::permits`], recording a refused change in the key's tenant's trail (`what`
    /// says the method and path asked).
    ///
    /// # Errors
    /// [`Error::Forbidden`] for a change asked with a read-scoped key.
    pub fn authorize(&self, principal: &Principal, reads_only: bool, what: impl FnOnce() -> String) -> Result<()> {
        Self::permits(principal, reads_only).inspect_err(|_| {
            if let Principal::ApiKey { tenant, .. } = principal {
                self.refuse(principal.refused(), AuditAction::AccessReadOnlyKey, &what(), Trail::Tenant(tenant.id));
            }
        })
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
        let cutoff = self.changes.caches().sessions.get_or_load(&claims.user_id, || self.users.sessions_valid_after(&claims.user_id)).await?;
        if issued_before_cutoff(claims.issued_at, cutoff) {
            return Ok(false);
        }
        let Some(session) = claims.session else { return Ok(true) };
        self.changes.caches().live_sessions.get_or_load(&session, || self.sessions.session_is_live(&session)).await
    }

    /// The key with this digest and its tenant, from memory when kept there.
    async fn find_key(&self, digest: &SecretDigest) -> Result<Option<(ApiKey, Tenant)>> {
        self.changes.caches().keys.get_or_find(digest, || self.keys.find_key(digest)).await
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
                    self.refuse(
                        Refused::Key(key_actor(&key.digest, &key.label)),
                        AuditAction::AccessExpiredKey,
                        &digest.to_hex(),
                        Trail::Tenant(key.tenant_id),
                    );
                    let end = key.expires_at.map(|end| end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
                    refusal = Some((Error::unauthorized(format!("this API key expired at {end}")), "expired_key"));
                }
                Some((key, tenant)) => {
                    self.usage.record(digest, now);
                    return Ok(Principal::ApiKey { key, tenant });
                }
                None => {
                    self.note_revoked_key(&digest).await;
                    refusal = Some((Error::unauthorized("invalid or revoked API key"), "invalid_key"));
                }
            }
        }
        let (refusal, reason) =
            refusal.unwrap_or_else(|| (Error::unauthorized("missing credentials: send Authorization: Bearer <access token> or X-API-Key: <key>"), "missing"));
        metrics::counter!("nexus_auth_refusals_total", "reason" => reason).increment(1);
        Err(refusal)
    }

    /// Records the use of a key that was revoked in its tenant's trail (a key never issued
    /// records nothing). A failure to look it up only goes unrecorded.
    async fn note_revoked_key(&self, digest: &SecretDigest) {
        if self.refusals.is_none() {
            return;
        }
        match self.keys.find_revoked_key(digest).await {
            Ok(Some((tenant, label))) => {
                self.refuse(Refused::Key(key_actor(digest, &label)), AuditAction::AccessRevokedKey, &digest.to_hex(), Trail::Tenant(tenant))
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "could not look up a revoked API key"),
        }
    }

    /// Records a caller reaching for the tenant `named`, which it may not reach: in that
    /// tenant's trail when it exists, else in the caller's own (a user's, or its key's
    /// tenant's).
    async fn note_cross_tenant(&self, principal: &Principal, named: &TenantId) {
        if self.refusals.is_none() {
            return;
        }
        let exists = match self.find_tenant(named).await {
            Ok(found) => found.is_some(),
            Err(err) => {
                tracing::warn!(error = %err, "could not look up a tenant reached for");
                false
            }
        };
        let trail = match principal {
            _ if exists => Trail::Tenant(*named),
            Principal::User(user) => Trail::User(*user),
            Principal::ApiKey { tenant, .. } => Trail::Tenant(tenant.id),
        };
        self.refuse(principal.refused(), AuditAction::AccessCrossTenant, &named.to_string(), trail);
    }

    /// The tenant with this id, from memory when kept there.
    async fn find_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.changes.caches().tenants.get_or_find(id, || self.tenants.find_tenant(id)).await
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
                    if let Ok(named) = TenantId::parse(named) {
                        self.note_cross_tenant(principal, &named).await;
                    }
                    Err(Error::Forbidden("this API key belongs to another tenant than X-Tenant-ID names".to_owned()))
                }
                _ => Ok(tenant.clone()),
            },
            Principal::User(user) => {
                let named = tenant_header.ok_or_else(|| Error::invalid("X-Tenant-ID is required with a user access token on tenant-scoped routes"))?;
                let id = TenantId::parse(named)?;
                match self.find_tenant(&id).await? {
                    Some(tenant) if tenant.owner == *user => Ok(tenant),
                    Some(tenant) => {
                        self.refuse(principal.refused(), AuditAction::AccessCrossTenant, &id.to_string(), Trail::Tenant(tenant.id));
                        Err(refused_tenant())
                    }
                    None => {
                        self.refuse(principal.refused(), AuditAction::AccessCrossTenant, &id.to_string(), Trail::User(*user));
                        Err(refused_tenant())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
