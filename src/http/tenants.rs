//! `/api/v1/tenants` and their API keys. These act for a user: they take a user's access
//! token, and an API key is refused with 403.

use chrono::{DateTime, Utc};
use nexus_ports::tenancy::{ApiKey, KeyScope, TenantPhase};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::ApiTags;
use super::auth::Caller;
use super::error::{ApiError, AuthenticatedErrors, AuthenticatedItemErrors, QuotaCreateErrors};
use super::text::Text;
use crate::app::{AccessService, KeyGrant, NewKey, SharedNexus, TenantState};

/// Where a tenant's provisioning stands.
#[derive(Enum)]
pub(crate) enum TenantPhaseView {
    Pending,
    Provisioning,
    Ready,
    Error,
}

impl From<TenantPhase> for TenantPhaseView {
    fn from(phase: TenantPhase) -> Self {
        match phase {
            TenantPhase::Pending => Self::Pending,
            TenantPhase::Provisioning => Self::Provisioning,
            TenantPhase::Ready => Self::Ready,
            TenantPhase::Error => Self::Error,
        }
    }
}

/// A new tenant.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct CreateTenantRequest {
    /// 1 to 100 characters, not only white space, no control characters.
    #[oai(validator(min_length = 1, max_length = 100, custom = "&super::patterns::LABEL"))]
    display_name: Text,
    /// What its node runs as (`ASTROMESH_ROLE`): lower-case letters, digits and `-`;
    /// defaults to `full`.
    #[oai(validator(custom = "&super::patterns::NODE_PROFILE"))]
    node_profile: Option<Text>,
}

/// A tenant.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
pub(crate) struct TenantView {
    /// `t_` and 32 hex digits.
    id: String,
    /// Its custom resource and namespace name: `tenant-<uuid>`.
    cr_name: String,
    display_name: String,
    node_profile: String,
    /// How many agents it may run.
    max_agents: u32,
    phase: TenantPhaseView,
    /// Its namespace, once provisioned.
    namespace: Option<String>,
    /// Where its astromesh-node answers, once provisioned.
    node_endpoint: Option<String>,
    /// Why it is in phase `Error`.
    message: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<TenantState> for TenantView {
    fn from(TenantState { tenant, status }: TenantState) -> Self {
        Self {
            id: tenant.id.to_string(),
            cr_name: tenant.id.cr_name(),
            display_name: tenant.display_name.as_str().to_owned(),
            node_profile: tenant.node_profile.as_str().to_owned(),
            max_agents: tenant.max_agents,
            phase: status.phase.into(),
            namespace: status.namespace,
            node_endpoint: status.node_endpoint,
            message: status.message,
            created_at: tenant.created_at,
        }
    }
}

/// What an API key may do in its tenant.
#[derive(Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
enum KeyScopeView {
    /// Everything a tenant-scoped caller may do.
    Write,
    /// Reads only: GET routes; anything else answers 403.
    Read,
}

impl From<KeyScope> for KeyScopeView {
    fn from(scope: KeyScope) -> Self {
        match scope {
            KeyScope::Write => Self::Write,
            KeyScope::Read => Self::Read,
        }
    }
}

impl From<KeyScopeView> for KeyScope {
    fn from(scope: KeyScopeView) -> Self {
        match scope {
            KeyScopeView::Write => Self::Write,
            KeyScopeView::Read => Self::Read,
        }
    }
}

/// A new API key.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct CreateKeyRequest {
    /// What the key is for: 1 to 100 characters, not only white space, no control
    /// characters.
    #[oai(validator(min_length = 1, max_length = 100, custom = "&super::patterns::LABEL"))]
    label: Text,
    // What it may do: `write` (the default) or `read`, GET routes only (the enum's own
    // description says so in the document).
    scope: Option<KeyScopeView>,
    /// When it stops working (RFC 3339, in the future); never when absent.
    expires_at: Option<DateTime<Utc>>,
}

/// An API key just created. `rawKey` is shown this once: only its hash is stored.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct CreatedKeyView {
    /// Send it as `X-API-Key`.
    raw_key: String,
    label: String,
    /// SHA-256 of the key, hex: its id for listing and revoking.
    hash: String,
    scope: KeyScopeView,
    created_at: DateTime<Utc>,
    /// When it stops working; absent for never.
    expires_at: Option<DateTime<Utc>>,
}

/// An API key, without its value.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct KeyView {
    /// SHA-256 of the key, hex.
    hash: String,
    label: String,
    // What it may do: `write` (the default) or `read`, GET routes only (the enum's own
    // description says so in the document).
    scope: KeyScopeView,
    created_at: DateTime<Utc>,
    /// When it stops working (or stopped: an expired key answers 401); absent for never.
    expires_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request.
    last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            hash: key.digest.to_hex(),
            label: key.label.as_str().to_owned(),
            scope: key.scope.into(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
        }
    }
}

/// A tenant was deleted.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct DeletedView {
    deleted: String,
}

/// A key was revoked.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct RevokedView {
    revoked: String,
}

#[derive(ApiResponse)]
enum TenantCreated {
    /// The tenant was created and provisioning started.
    #[oai(status = 201)]
    Created(Json<TenantView>),
}

#[derive(ApiResponse)]
enum KeyCreated {
    /// The key was created; its value is in `rawKey`, this once.
    #[oai(status = 201)]
    Created(Json<CreatedKeyView>),
}

pub(crate) struct TenantApi;

#[OpenApi(tag = "ApiTags::Tenants")]
impl TenantApi {
    /// Create a tenant, with its namespace and node; 409 once the caller owns as many as
    /// its quota allows.
    #[oai(path = "/api/v1/tenants", method = "post", operation_id = "tenant_create")]
    async fn create(&self, nexus: Data<&SharedNexus>, caller: Caller, body: Json<CreateTenantRequest>) -> Result<TenantCreated, ApiError<QuotaCreateErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let (nexus, Json(CreateTenantRequest { display_name, node_profile })) = (nexus.0.clone(), body);
        let state = super::to_the_end(async move { nexus.tenancy.create_tenant(user, &display_name, node_profile.as_deref()).await }).await?;
        Ok(TenantCreated::Created(Json(state.into())))
    }

    /// The caller's tenants, oldest first.
    #[oai(path = "/api/v1/tenants", method = "get", operation_id = "tenant_list")]
    async fn list(&self, nexus: Data<&SharedNexus>, caller: Caller) -> Result<Json<Vec<TenantView>>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.tenancy.list_tenants(&user).await?.into_iter().map(Into::into).collect()))
    }

    /// Delete a tenant: its node and namespace, its agents and its API keys.
    #[oai(path = "/api/v1/tenants/:tenantId", method = "delete", operation_id = "tenant_delete")]
    async fn delete(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
    ) -> Result<Json<DeletedView>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let (nexus, id) = (nexus.0.clone(), id.0);
        let deleted = super::to_the_end(async move { nexus.tenancy.delete_tenant(&user, &id).await }).await?;
        Ok(Json(DeletedView { deleted: deleted.to_string() }))
    }
}

pub(crate) struct KeyApi;

#[OpenApi(tag = "ApiTags::Keys")]
impl KeyApi {
    /// Create an API key for a tenant, `write` (the default) or `read` (GET routes only),
    /// maybe expiring at `expiresAt`; 400 for an expiry not in the future; 409 once the
    /// tenant has as many as its quota allows.
    #[oai(path = "/api/v1/tenants/:tenantId/keys", method = "post", operation_id = "key_create")]
    async fn create_key(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
        body: Json<CreateKeyRequest>,
    ) -> Result<KeyCreated, ApiError<QuotaCreateErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let grant = KeyGrant { scope: body.scope.map(Into::into).unwrap_or_default(), expires_at: body.expires_at };
        let (nexus, id, label) = (nexus.0.clone(), id.0, body.0.label);
        let NewKey { raw, key } = super::to_the_end(async move { nexus.tenancy.create_key(&user, &id, &label, grant).await }).await?;
        let view = CreatedKeyView {
            raw_key: raw.expose().to_owned(),
            label: key.label.as_str().to_owned(),
            hash: key.digest.to_hex(),
            scope: key.scope.into(),
            created_at: key.created_at,
            expires_at: key.expires_at,
        };
        Ok(KeyCreated::Created(Json(view)))
    }

    /// A tenant's API keys, without their values.
    #[oai(path = "/api/v1/tenants/:tenantId/keys", method = "get", operation_id = "key_list")]
    async fn list_keys(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
    ) -> Result<Json<Vec<KeyView>>, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        Ok(Json(nexus.tenancy.list_keys(&user, &id).await?.into_iter().map(Into::into).collect()))
    }

    /// Revoke an API key; it stops working at once.
    #[oai(path = "/api/v1/tenants/:tenantId/keys/:keyHash", method = "delete", operation_id = "key_revoke")]
    async fn revoke_key(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "tenantId", validator(custom = "&super::patterns::TENANT_ID"))] id: Path<String>,
        #[oai(name = "keyHash", validator(custom = "&super::patterns::KEY_HASH"))] hash: Path<String>,
    ) -> Result<Json<RevokedView>, ApiError<AuthenticatedItemErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let (nexus, id, hash) = (nexus.0.clone(), id.0, hash.0);
        let revoked = super::to_the_end(async move { nexus.tenancy.revoke_key(&user, &id, &hash).await }).await?;
        Ok(Json(RevokedView { revoked: revoked.to_hex() }))
    }
}
