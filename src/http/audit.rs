//! The audit trails: a tenant's (`/api/v1/tenants/{tenantId}/audit`) and the caller's own
//! (`/api/v1/me/audit`). Both act for a user: they take a user's access token, and an API
//! key is refused with 403.

use chrono::{DateTime, Utc};
use nexus_ports::audit::{AuditAction, AuditEvent, AuditPage};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::ApiTags;
use super::auth::Caller;
use super::error::{ApiError, AuthenticatedErrors};
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
    /// Who acted: `usr_...` (a user's access token) or `key:<label>` (an API key). For
    /// `user.login_failed`, the account the attempt claimed.
    actor: String,
    action: AuditActionView,
    /// What was acted on: a user id (`user.*`), a tenant id (`tenant.*`), a key's hash
    /// (`key.*`), an agent's name (`agent.*`; a rollback is `agent.rollback`).
    target: String,
    /// The `X-Request-ID` of the request that did it.
    request_id: Option<String>,
    /// The client address it came from (behind trusted proxies, the forwarded one).
    source_ip: Option<String>,
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
            source_ip: event.source_ip,
        }
    }
}

/// A page of an audit trail, newest first.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AuditPageView {
    events: Vec<AuditEventView>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

impl From<AuditPage> for AuditPageView {
    fn from(page: AuditPage) -> Self {
        Self { events: page.events.into_iter().map(Into::into).collect(), next_cursor: page.next.map(|cursor| cursor.to_string()) }
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
    /// its agents created, updated, rolled back and deleted. Needs its owner's access token.
    #[oai(path = "/api/v1/tenants/:tenantId/audit", method = "get", operation_id = "tenant_audit")]
    async fn tenant_audit(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
        /// At most this many events (1 to 500; 100 by default).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
        /// The `nextCursor` of the previous page.
        #[oai(validator(custom = "&super::patterns::CURSOR"))]
        cursor: Query<Option<String>>,
    ) -> Result<Json<AuditPageView>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.tenancy.audit(&user, &id, page_size(limit.0), cursor.0.as_deref()).await?.into()))
    }

    /// The caller's own audit trail, newest first: registration, logins (failed ones
    /// too), logouts, sessions ended, password changes, and the tenants it created and
    /// deleted (still listed once they are gone). Needs a user's access token.
    #[oai(path = "/api/v1/me/audit", method = "get", operation_id = "me_audit")]
    async fn me_audit(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        /// At most this many events (1 to 500; 100 by default).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
        /// The `nextCursor` of the previous page.
        #[oai(validator(custom = "&super::patterns::CURSOR"))]
        cursor: Query<Option<String>>,
    ) -> Result<Json<AuditPageView>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.identity.audit(&user, page_size(limit.0), cursor.0.as_deref()).await?.into()))
    }
}
