//! The audit trail: who changed what, when, from where, as part of which request. Events
//! are written by the stores in the same transaction as the change they record, so a
//! change that fails records nothing and one that commits is never missing from the trail.
//! An event names things (ids, labels, key hashes), never a secret, a token or a manifest.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::agents::AgentName;
use crate::changes::Change;
use crate::identity::UserId;
use crate::tenancy::TenantId;
use crate::tokens::SecretDigest;
use crate::{Error, Result};

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    UserRegister,
    UserLogin,
    UserLoginFailed,
    UserLogout,
    UserSessionsRevoked,
    UserPasswordChange,
    TenantCreate,
    TenantDelete,
    KeyCreate,
    KeyRevoke,
    AgentCreate,
    AgentUpdate,
    AgentRollback,
    AgentDelete,
}

impl AuditAction {
    /// Every action, in the order the documentation lists them.
    pub const ALL: [Self; 14] = [
        Self::UserRegister,
        Self::UserLogin,
        Self::UserLoginFailed,
        Self::UserLogout,
        Self::UserSessionsRevoked,
        Self::UserPasswordChange,
        Self::TenantCreate,
        Self::TenantDelete,
        Self::KeyCreate,
        Self::KeyRevoke,
        Self::AgentCreate,
        Self::AgentUpdate,
        Self::AgentRollback,
        Self::AgentDelete,
    ];

    /// The action as stored and shown: `tenant.create`, `user.login_failed`...
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UserRegister => "user.register",
            Self::UserLogin => "user.login",
            Self::UserLoginFailed => "user.login_failed",
            Self::UserLogout => "user.logout",
            Self::UserSessionsRevoked => "user.sessions_revoked",
            Self::UserPasswordChange => "user.password_change",
            Self::TenantCreate => "tenant.create",
            Self::TenantDelete => "tenant.delete",
            Self::KeyCreate => "key.create",
            Self::KeyRevoke => "key.revoke",
            Self::AgentCreate => "agent.create",
            Self::AgentUpdate => "agent.update",
            Self::AgentRollback => "agent.rollback",
            Self::AgentDelete => "agent.delete",
        }
    }

    /// The action named `text`.
    ///
    /// # Errors
    /// [`Error::Internal`] for a name no action has (a stored row this version cannot read).
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == text).ok_or_else(|| Error::Internal(format!("unknown audit action {text:?}")))
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event's id: `aud_` and 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditEventId(Uuid);

impl AuditEventId {
    const PREFIX: &'static str = "aud_";

    /// A fresh random id.
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of a stored row.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The id as stored.
    #[must_use]
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for AuditEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

/// One audited action. `tenant` and `user` say whose trails show it: a tenant's
/// (`GET /tenants/{id}/audit`), a user's (`GET /me/audit`), or both (creating and deleting
/// a tenant: the user's trail keeps them after the tenant is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub at: DateTime<Utc>,
    /// Who acted: `usr_...`, or `key:<label>` (as versions' author).
    pub actor: String,
    pub action: AuditAction,
    /// What was acted on: a user or tenant id, a key's hash, an agent's name.
    pub target: String,
    pub tenant: Option<TenantId>,
    pub user: Option<UserId>,
    /// The request that made the change.
    pub request_id: Option<String>,
    /// The client address it came from (as the `/auth` rate limit resolves it).
    pub source_ip: Option<String>,
}

impl AuditEvent {
    /// An event of the request the current task serves (its id and client address, when
    /// it serves one, see [`crate::context`]), shown in no trail until scoped with
    /// [`Self::in_tenant`] or [`Self::of_user`].
    #[must_use]
    pub fn now(at: DateTime<Utc>, actor: impl Into<String>, action: AuditAction, target: impl Into<String>) -> Self {
        Self {
            id: AuditEventId::generate(),
            at,
            actor: actor.into(),
            action,
            target: target.into(),
            tenant: None,
            user: None,
            request_id: crate::context::request_id().map(|id| id.to_string()),
            source_ip: crate::context::source_ip().map(|ip| ip.to_string()),
        }
    }

    /// Shown in the tenant's trail.
    #[must_use]
    pub const fn in_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Shown in the user's trail.
    #[must_use]
    pub const fn of_user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }

    /// What the audited change makes stale in every replica's memory, if anything: the
    /// store sends it to the other replicas in the transaction that records the event, so
    /// that a change is never committed without them being told.
    #[must_use]
    pub fn change(&self) -> Option<Change> {
        match self.action {
            AuditAction::UserSessionsRevoked | AuditAction::UserPasswordChange => Some(Change::SessionsEnded { user: self.user? }),
            AuditAction::TenantCreate => Some(Change::TenantChanged { tenant: self.tenant? }),
            AuditAction::TenantDelete => Some(Change::TenantDeleted { tenant: self.tenant? }),
            AuditAction::KeyRevoke => Some(Change::KeyRevoked { tenant: self.tenant?, key: SecretDigest::from_hex(&self.target).ok()? }),
            AuditAction::AgentCreate | AuditAction::AgentUpdate | AuditAction::AgentRollback | AuditAction::AgentDelete => {
                Some(Change::AgentChanged { tenant: self.tenant?, name: AgentName::parse(&self.target).ok()? })
            }
            AuditAction::UserRegister | AuditAction::UserLogin | AuditAction::UserLoginFailed | AuditAction::UserLogout | AuditAction::KeyCreate => None,
        }
    }
}

/// Where a page of a trail ends: the next page starts after it. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor(pub i64);

impl AuditCursor {
    const PREFIX: &'static str = "c";

    /// The cursor a client sent back.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for anything that is not a cursor this server gave.
    pub fn parse(text: &str) -> Result<Self> {
        text.strip_prefix(Self::PREFIX)
            .filter(|hex| !hex.is_empty() && hex.len() <= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .and_then(|n| i64::try_from(n).ok())
            .map(Self)
            .ok_or_else(|| Error::invalid("malformed cursor: pass back the nextCursor of a previous page"))
    }
}

impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:x}", Self::PREFIX, self.0)
    }
}

/// One page of a trail, newest first, and where the next begins (if there is more).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next: Option<AuditCursor>,
}

/// The most events one page holds, and the default.
pub const MAX_AUDIT_PAGE: u32 = 500;
pub const DEFAULT_AUDIT_PAGE: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_that_make_memory_stale_are_named_by_their_event() {
        let (user, tenant) = (UserId::generate(), TenantId::generate());
        let digest = SecretDigest::of("key");
        let event = |action, target: &str| AuditEvent::now(Utc::now(), "usr_x", action, target).in_tenant(tenant).of_user(user);
        let name = AgentName::parse("bot").unwrap();
        assert_eq!(event(AuditAction::KeyRevoke, &digest.to_hex()).change(), Some(Change::KeyRevoked { tenant, key: digest }));
        assert_eq!(event(AuditAction::UserSessionsRevoked, &user.to_string()).change(), Some(Change::SessionsEnded { user }));
        assert_eq!(event(AuditAction::UserPasswordChange, &user.to_string()).change(), Some(Change::SessionsEnded { user }));
        assert_eq!(event(AuditAction::TenantCreate, &tenant.to_string()).change(), Some(Change::TenantChanged { tenant }));
        assert_eq!(event(AuditAction::TenantDelete, &tenant.to_string()).change(), Some(Change::TenantDeleted { tenant }));
        for action in [AuditAction::AgentCreate, AuditAction::AgentUpdate, AuditAction::AgentRollback, AuditAction::AgentDelete] {
            assert_eq!(event(action, "bot").change(), Some(Change::AgentChanged { tenant, name: name.clone() }));
        }
        for action in [AuditAction::UserRegister, AuditAction::UserLogin, AuditAction::UserLoginFailed, AuditAction::KeyCreate] {
            assert_eq!(event(action, "x").change(), None, "{action}");
        }
    }

    #[test]
    fn actions_round_trip_by_name() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()).unwrap(), action);
        }
        assert!(AuditAction::parse("user.fly").is_err());
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        for n in [0, 1, 255, i64::MAX] {
            assert_eq!(AuditCursor::parse(&AuditCursor(n).to_string()).unwrap(), AuditCursor(n));
        }
        for bad in ["", "c", "cFF", "x10", "c-1", "c10000000000000000", "c8000000000000000", "c 1"] {
            assert!(matches!(AuditCursor::parse(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
    }
}
