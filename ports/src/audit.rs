//! The audit trail: who changed what, when, from where, as part of which request. Events
//! are written by the stores in the same transaction as the change they record, so a
//! change that fails records nothing and one that commits is never missing from the trail.
//! An event names things (ids, labels, key hashes), never a secret, a token or a manifest.
//!
//! Refusals that matter to an owner (a tenant reached for by someone else, a read-only key
//! writing, an expired or revoked key used, a refresh token replayed) are events too,
//! counted rather than repeated: one per trail, actor and cause per minute.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::agents::AgentName;
use crate::changes::Change;
use crate::identity::{Email, UserId};
use crate::tenancy::{KeyLabel, TenantId};
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
    /// Refused: a tenant reached for by a caller who may not reach it.
    AccessCrossTenant,
    /// Refused: a change asked with a read-only key.
    AccessReadOnlyKey,
    /// Refused: an expired key used.
    AccessExpiredKey,
    /// Refused: a revoked key used.
    AccessRevokedKey,
    /// A rotated refresh token presented again: its session was revoked.
    UserRefreshReused,
}

impl AuditAction {
    /// Every action, in the order the documentation lists them.
    pub const ALL: [Self; 19] = [
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
        Self::AccessCrossTenant,
        Self::AccessReadOnlyKey,
        Self::AccessExpiredKey,
        Self::AccessRevokedKey,
        Self::UserRefreshReused,
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
            Self::AccessCrossTenant => "access.cross_tenant",
            Self::AccessReadOnlyKey => "access.read_only_key",
            Self::AccessExpiredKey => "access.expired_key",
            Self::AccessRevokedKey => "access.revoked_key",
            Self::UserRefreshReused => "user.refresh_reused",
        }
    }

    /// Whether the action records a refusal (counted per minute, see [`AuditEvent::count`]).
    #[must_use]
    pub const fn is_refusal(self) -> bool {
        matches!(self, Self::AccessCrossTenant | Self::AccessReadOnlyKey | Self::AccessExpiredKey | Self::AccessRevokedKey | Self::UserRefreshReused)
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

/// The longest email an actor shows whole; a longer one is cut (the user id beside it is
/// what identifies the user), so that an actor fits its 160 characters.
const ACTOR_EMAIL_CHARS: usize = 120;

/// How a user is named as an actor (and as a versions' author): its id with its email,
/// `usr_0f3c... (ada@example.com)`.
#[must_use]
pub fn user_actor(user: &UserId, email: &Email) -> String {
    let email = email.as_str();
    if email.chars().count() <= ACTOR_EMAIL_CHARS {
        format!("{user} ({email})")
    } else {
        format!("{user} ({}…)", email.chars().take(ACTOR_EMAIL_CHARS).collect::<String>())
    }
}

/// How an API key is named as an actor (and as a versions' author): the first 8 hex digits
/// of its hash (what `GET /tenants/{id}/keys` lists, and revoking takes) with its label,
/// `key:3f9a1c2e (ci)`. Labels may repeat; the hash tells the keys apart.
#[must_use]
pub fn key_actor(digest: &SecretDigest, label: &KeyLabel) -> String {
    format!("key:{} ({})", &digest.to_hex()[..8], label.as_str())
}

/// One audited action. `tenant` and `user` say whose trails show it: a tenant's
/// (`GET /tenants/{id}/audit`), a user's (`GET /me/audit`), or both (creating and deleting
/// a tenant: the user's trail keeps them after the tenant is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub at: DateTime<Utc>,
    /// Who acted: [`user_actor`] or [`key_actor`].
    pub actor: String,
    pub action: AuditAction,
    /// What was acted on: a user or tenant id, a key's hash, an agent's name.
    pub target: String,
    pub tenant: Option<TenantId>,
    pub user: Option<UserId>,
    /// The request that made the change: the server's own id.
    pub request_id: Option<String>,
    /// The client's own id for that request (its `X-Request-ID`), never trusted as the id.
    pub correlation_id: Option<String>,
    /// The client address it came from (as the `/auth` rate limit resolves it).
    pub source_ip: Option<String>,
    /// Refusals only: how many times this actor was refused for this cause in the minute
    /// of `at` (the first refusal's request).
    pub count: Option<u32>,
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
            correlation_id: crate::context::correlation_id().map(|id| id.to_string()),
            source_ip: crate::context::source_ip().map(|ip| ip.to_string()),
            count: action.is_refusal().then_some(1),
        }
    }

    /// What refusals of one trail, actor and cause within one minute share: the key under
    /// which they are counted as one event (64 hex digits).
    #[must_use]
    pub fn dedup_key(&self) -> String {
        let minute = self.at.timestamp().div_euclid(60);
        let trail = match (self.tenant, self.user) {
            (Some(tenant), _) => tenant.to_string(),
            (None, Some(user)) => user.to_string(),
            (None, None) => String::new(),
        };
        let mut hash = Sha256::new();
        for part in [trail.as_str(), self.actor.as_str(), self.action.as_str(), &minute.to_string()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hex::encode(hash.finalize())
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
            // A session's own end names its session, which no event holds: it is announced
            // by the use case. Refusals change nothing.
            AuditAction::UserRegister
            | AuditAction::UserLogin
            | AuditAction::UserLoginFailed
            | AuditAction::UserLogout
            | AuditAction::UserRefreshReused
            | AuditAction::KeyCreate
            | AuditAction::AccessCrossTenant
            | AuditAction::AccessReadOnlyKey
            | AuditAction::AccessExpiredKey
            | AuditAction::AccessRevokedKey => None,
        }
    }
}

/// Where a page of a trail ends: its last event (id and time). The next page starts
/// after it. Clients see it sealed to its trail and caller ([`CursorKey::seal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub id: AuditEventId,
    pub at: DateTime<Utc>,
}

/// The secret that seals cursors, so that a cursor carries nothing a client can read or
/// forge, and is good on one trail, for one caller, only. Replicas derive it from one
/// shared secret, so that any of them opens a cursor another gave.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CursorKey(<redacted>)")
    }
}

/// The bytes of the tag a sealed cursor carries.
const TAG_BYTES: usize = 16;

impl CursorKey {
    /// The key derived from the server's `secret` (the token-signing secret).
    #[must_use]
    pub fn derive(secret: &[u8]) -> Self {
        Self(hmac_sha256(secret, b"nexus audit cursors v1"))
    }

    /// A key of this process only (cursors do not outlive it): for tests and tools.
    #[must_use]
    pub fn random() -> Self {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(a.as_bytes());
        secret[16..].copy_from_slice(b.as_bytes());
        Self::derive(&secret)
    }

    fn tag(&self, scope: &str, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut message = Vec::with_capacity(scope.len() + 1 + body.len());
        message.extend_from_slice(scope.as_bytes());
        message.push(0);
        message.extend_from_slice(body);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&hmac_sha256(&self.0, &message)[..TAG_BYTES]);
        tag
    }

    /// The cursor as a client sees it, good for `scope` (a trail and its caller) only:
    /// 80 hex digits.
    #[must_use]
    pub fn seal(&self, cursor: &AuditCursor, scope: &str) -> String {
        let mut body = Vec::with_capacity(24 + TAG_BYTES);
        body.extend_from_slice(cursor.id.as_uuid().as_bytes());
        body.extend_from_slice(&cursor.at.timestamp_micros().to_be_bytes());
        let tag = self.tag(scope, &body);
        body.extend_from_slice(&tag);
        hex::encode(body)
    }

    /// The cursor a client sent back for `scope`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for anything that is not a cursor this server gave for
    /// this scope (another trail's, another caller's, altered, or malformed).
    pub fn open(&self, text: &str, scope: &str) -> Result<AuditCursor> {
        let refused = || Error::invalid("invalid cursor: pass back the nextCursor of a previous page of this trail, as the same caller");
        let mut bytes = [0u8; 24 + TAG_BYTES];
        if text.len() != 2 * bytes.len() || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(refused());
        }
        hex::decode_to_slice(text, &mut bytes).map_err(|_| refused())?;
        let (body, tag) = bytes.split_at(24);
        let expected = self.tag(scope, body);
        // Compared in full whatever differs, so that timing tells nothing of the tag.
        if expected.iter().zip(tag).fold(0u8, |diff, (a, b)| diff | (a ^ b)) != 0 {
            return Err(refused());
        }
        let id = Uuid::from_slice(&body[..16]).map_err(|_| refused())?;
        let micros = i64::from_be_bytes(body[16..24].try_into().map_err(|_| refused())?);
        let at = DateTime::from_timestamp_micros(micros).ok_or_else(refused)?;
        Ok(AuditCursor { id: AuditEventId::from_uuid(id), at })
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
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
    fn hmac_matches_the_rfc_4231_vectors() {
        let tag = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(hex::encode(tag), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let long_key = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(long_key), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn cursors_open_only_where_they_were_sealed() {
        let key = CursorKey::derive(b"a secret of the server, long enough");
        let cursor = AuditCursor { id: AuditEventId::generate(), at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap() };
        let sealed = key.seal(&cursor, "tenant:t_1/usr_1");
        assert_eq!(sealed.len(), 80);
        assert_eq!(key.open(&sealed, "tenant:t_1/usr_1").unwrap(), cursor);
        for scope in ["tenant:t_2/usr_1", "tenant:t_1/usr_2", "user:usr_1"] {
            assert!(matches!(key.open(&sealed, scope), Err(Error::InvalidRequest(_))), "{scope}");
        }
        let other = CursorKey::derive(b"another server's secret, long enough");
        assert!(other.open(&sealed, "tenant:t_1/usr_1").is_err());
        let flipped = format!("{}{}", &sealed[..79], if sealed.ends_with('0') { '1' } else { '0' });
        for bad in ["", "c5", "nonsense", flipped.as_str(), &sealed.to_uppercase(), &sealed[..78]] {
            assert!(matches!(key.open(bad, "tenant:t_1/usr_1"), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn actors_name_the_credential() {
        let user = UserId::generate();
        assert_eq!(user_actor(&user, &Email::parse("Ada@Example.com").unwrap()), format!("{user} (ada@example.com)"));
        let long = Email::parse(&format!("{}@example.com", "a".repeat(200))).unwrap();
        assert!(user_actor(&user, &long).chars().count() <= 160);
        let digest = SecretDigest::of("nxk_x");
        assert_eq!(key_actor(&digest, &KeyLabel::parse("ci").unwrap()), format!("key:{} (ci)", &digest.to_hex()[..8]));
    }

    #[test]
    fn refusals_of_one_trail_actor_cause_and_minute_share_a_key() {
        let tenant = TenantId::generate();
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let event = |at, actor: &str, action| AuditEvent::now(at, actor, action, "x").in_tenant(tenant);
        let first = event(at, "a", AuditAction::AccessReadOnlyKey);
        assert_eq!(first.count, Some(1));
        assert_eq!(first.dedup_key(), event(at + chrono::Duration::seconds(59), "a", AuditAction::AccessReadOnlyKey).dedup_key());
        for other in [
            event(at + chrono::Duration::seconds(60), "a", AuditAction::AccessReadOnlyKey),
            event(at, "b", AuditAction::AccessReadOnlyKey),
            event(at, "a", AuditAction::AccessExpiredKey),
            event(at, "a", AuditAction::AccessReadOnlyKey).in_tenant(TenantId::generate()),
        ] {
            assert_ne!(first.dedup_key(), other.dedup_key());
        }
        assert_eq!(AuditEvent::now(at, "a", AuditAction::KeyCreate, "x").count, None);
    }
}
