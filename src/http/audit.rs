//! The audit trails: a tenant's (`/api/v1/tenants/{tenantId}/audit`) and the caller's own
//! (`/api/v1/me/audit`). Both act for a user: they take a user's access token, and an API
//! key is refused with 403.

use chrono::{DateTime, Utc};
use nexus_ports::audit::{AuditAction, AuditEvent};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::ApiTags;
use super::auth::Caller;
use super::error::{ApiError, AuthenticatedErrors};
use crate::app::tenancy::TrailPage;
use crate::app::{AccessService, SharedNexus};

/// What an event records.
#[derive(Enum)]
enum AuditActionView {
    #[oai(rename = "user.register")]
    UserRegister,
    #[oai(rename = "user.login")]
    UserLogin,
    #[oai(rename = "user.login_failed")]
    UserLoginFailed,
    #[oai(rename = "user.logout")]
    UserLogout,
    #[oai(rename = "user.sessions_revoked")]
    UserSessionsRevoked,
    #[oai(rename = "user.password_change")]
    UserPasswordChange,
    #[oai(rename = "tenant.create")]
    TenantCreate,
    #[oai(rename = "tenant.delete")]
    TenantDelete,
    #[oai(rename = "key.create")]
    KeyCreate,
    #[oai(rename = "key.revoke")]
    KeyRevoke,
    #[oai(rename = "agent.create")]
    AgentCreate,
    #[oai(rename = "agent.update")]
    AgentUpdate,
    #[oai(rename = "agent.rollback")]
    AgentRollback,
    #[oai(rename = "agent.delete")]
    AgentDelete,
    /// Refused: a tenant reached for by a caller who may not reach it (by `X-Tenant-ID`,
    /// or a tenant's route).
    #[oai(rename = "access.cross_tenant")]
    AccessCrossTenant,
    /// Refused: a change asked with a read-only key.
    #[oai(rename = "access.read_only_key")]
    AccessReadOnlyKey,
    /// Refused: an expired key used.
    #[oai(rename = "access.expired_key")]
    AccessExpiredKey,
    /// Refused: a revoked key used.
    #[oai(rename = "access.revoked_key")]
    AccessRevokedKey,
    /// A rotated refresh token presented again: its session (with its access tokens) was
    /// revoked.
    #[oai(rename = "user.refresh_reused")]
    UserRefreshReused,
}

impl From<AuditAction> for AuditActionView {
    fn from(action: AuditAction) -> Self {
        match action {
            AuditAction::UserRegister => Self::UserRegister,
            AuditAction::UserLogin => Self::UserLogin,
            AuditAction::UserLoginFailed => Self::UserLoginFailed,
            AuditAction::UserLogout => Self::UserLogout,
            AuditAction::UserSessionsRevoked => Self::UserSessionsRevoked,
            AuditAction::UserPasswordChange => Self::UserPasswordChange,
            AuditAction::TenantCreate => Self::TenantCreate,
            AuditAction::TenantDelete => Self::TenantDelete,
            AuditAction::KeyCreate => Self::KeyCreate,
            AuditAction::KeyRevoke => Self::KeyRevoke,
            AuditAction::AgentCreate => Self::AgentCreate,
            AuditAction::AgentUpdate => Self::AgentUpdate,
            AuditAction::AgentRollback => Self::AgentRollback,
            AuditAction::AgentDelete => Self::AgentDelete,
            AuditAction::AccessCrossTenant => Self::AccessCrossTenant,
            AuditAction::AccessReadOnlyKey => Self::AccessReadOnlyKey,
            AuditAction::AccessExpiredKey => Self::AccessExpiredKey,
            AuditAction::AccessRevokedKey => Self::AccessRevokedKey,
            AuditAction::UserRefreshReused => Self::UserRefreshReused,
        }
    }
}

/// One audited action.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AuditEventView {
    /// `aud_` and 32 hex digits.
    id: String,
    at: DateTime<Utc>,
    /// Who acted, by the credential it used: a user's access token as `usr_<id> (<email>)`
    /// (an email over 120 characters cut), an API key as `key:<first 8 hex digits of its
    /// hash> (<label>)` (labels may repeat; the hash prefix tells keys apart). For
    /// `user.login_failed`, the account the attempt claimed.
    actor: String,
    action: AuditActionView,
    /// What was acted on: a user id (`user.*`), a tenant id (`tenant.*`,
    /// `access.cross_tenant`), a key's hash (`key.*`, `access.expired_key`,
    /// `access.revoked_key`), an agent's name (`agent.*`; a rollback is `agent.rollback`),
    /// the method and path asked (`access.read_only_key`).
    target: String,
    /// The server's id of the request that did it (its answer's `X-Request-ID`; for a
    /// refusal, the first of its minute).
    request_id: Option<String>,
    /// The id the client sent for that request in `X-Request-ID`, if any (kept apart,
    /// never taken as the request's id).
    correlation_id: Option<String>,
    /// The client address it came from (behind trusted proxies, the forwarded one).
    source_ip: Option<String>,
    /// Refusals (`access.*`, `user.refresh_reused`) only: how many times this actor was
    /// refused for this cause in the minute of `at`. One event stands for them all.
    count: Option<u32>,
}

impl From<AuditEvent> for AuditEventView {
    fn from(event: AuditEvent) -> Self {
        Self {
            id: event.id.to_string(),
            at: event.at,
            actor: event.actor,
            action: event.action.into(),
            target: event.target,
            request_id: event.request_id,
            correlation_id: event.correlation_id,
            source_ip: event.source_ip,
            count: event.count,
        }
    }
}

/// A page of an audit trail, newest first.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AuditPageView {
    events: Vec<AuditEventView>,
    /// Pass it as `cursor` for the next page; absent on the last page. Opaque (80 hex
    /// digits, sealed by the server): it is good on this trail, for this caller, only.
    next_cursor: Option<String>,
}

impl From<TrailPage> for AuditPageView {
    fn from(page: TrailPage) -> Self {
        Self { events: page.events.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }
    }
}

/// A page size the validator already bounded to 1..=500.
fn page_size(limit: Option<i64>) -> Option<u32> {
    limit.map(|limit| u32::try_from(limit).unwrap_or(0))
}

pub(crate) struct AuditApi;

#[OpenApi(tag = "ApiTags::Audit")]
impl AuditApi {
    /// A tenant's audit trail, newest first: its creation, its keys created and revoked,
    /// its agents created, updated, rolled back and deleted, and the refusals aimed at it
    /// (another caller reaching for it, a read-only key writing, an expired or revoked key
    /// used), counted per actor and cause per minute. Needs its owner's access token.
    #[oai(path = "/api/v1/tenants/:tenantId/audit", method = "get", operation_id = "tenant_audit")]
    async fn tenant_audit(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
        /// At most this many events (1 to 500; 100 by default).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
        /// The `nextCursor` of the previous page of this trail, as this caller; another
        /// trail's or caller's is refused with 400.
        #[oai(validator(custom = "&super::patterns::CURSOR"))]
        cursor: Query<Option<String>>,
    ) -> Result<Json<AuditPageView>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.tenancy.audit(&user, &id, page_size(limit.0), cursor.0.as_deref()).await?.into()))
    }

    /// The caller's own audit trail, newest first: registration, logins (failed ones
    /// too), logouts, sessions ended, password changes, refresh tokens replayed (their
    /// session revoked), the tenants it created and deleted (still listed once they are
    /// gone), and its reaching for tenants that do not exist. Needs a user's access token.
    #[oai(path = "/api/v1/me/audit", method = "get", operation_id = "me_audit")]
    async fn me_audit(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        /// At most this many events (1 to 500; 100 by default).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
        /// The `nextCursor` of the previous page of this trail, as this caller; another
        /// trail's or caller's is refused with 400.
        #[oai(validator(custom = "&super::patterns::CURSOR"))]
        cursor: Query<Option<String>>,
    ) -> Result<Json<AuditPageView>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.identity.audit(&user, page_size(limit.0), cursor.0.as_deref()).await?.into()))
    }
}
