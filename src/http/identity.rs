//! `/auth/*` and `/api/v1/me`: accounts, logins, token rotation, logout, the caller, and
//! the caller's sessions and password.

use chrono::{DateTime, Utc};
use nexus_ports::identity::User;
use nexus_ports::tenancy::Tenant;
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};

use super::ApiTags;
use super::auth::Caller;
use super::error::{ApiError, AuthenticatedErrors, CredentialErrors, LogoutErrors, PasswordErrors, RegisterErrors};
use super::json::{JsonAnswer, rfc3339};
use super::text::Text;
use crate::app::{AccessService, Principal, Registration, Session, SharedNexus, TokenPair};

/// A new account.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct RegisterRequest {
    /// An address `local@domain` (white space around it is ignored), the domain of DNS
    /// labels with at least one dot. Compared case-insensitively and stored lower-case.
    #[oai(validator(max_length = 254, custom = "&super::patterns::EMAIL"))]
    email: Text,
    /// 8 to 1024 characters.
    #[oai(write_only, validator(min_length = 8, max_length = 1024))]
    password: Text,
    /// 1 to 100 characters, not only white space, no control characters; defaults to the
    /// part of the email before the `@`.
    #[oai(validator(min_length = 1, max_length = 100, custom = "&super::patterns::LABEL"))]
    display_name: Option<Text>,
}

/// Credentials to log in with.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct LoginRequest {
    email: Text,
    /// At most 1024 characters.
    #[oai(write_only, validator(max_length = 1024))]
    password: Text,
}

/// A refresh token to rotate, or whose session to end.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: Text,
}

/// A password change.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct ChangePasswordRequest {
    /// The password in use now; at most 1024 characters.
    #[oai(write_only, validator(max_length = 1024))]
    current_password: Text,
    /// 8 to 1024 characters, as at registration.
    #[oai(write_only, validator(min_length = 8, max_length = 1024))]
    new_password: Text,
}

#[derive(ApiResponse)]
enum Done {
    /// Done; nothing to answer.
    #[oai(status = 204)]
    NoContent,
}

/// A user, as clients see it.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
struct UserView {
    /// `usr_` and 32 hex digits.
    id: String,
    email: String,
    display_name: String,
    #[serde(serialize_with = "rfc3339")]
    created_at: DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self { id: user.id.to_string(), email: user.email.to_string(), display_name: user.display_name.as_str().to_owned(), created_at: user.created_at }
    }
}

/// An access token and the refresh token that renews it.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct TokenPairView {
    /// HS256 JWT for `Authorization: Bearer`.
    access_token: String,
    /// Opaque; exchange it at `/auth/refresh`, once.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// When the refresh token expires.
    refresh_expires_at: DateTime<Utc>,
}

impl From<&TokenPair> for TokenPairView {
    fn from(pair: &TokenPair) -> Self {
        Self {
            access_token: pair.access.token.clone(),
            refresh_token: pair.refresh.expose().to_owned(),
            token_type: "Bearer".to_owned(),
            expires_in: (pair.access.expires_at - pair.access.issued_at).num_seconds(),
            refresh_expires_at: pair.refresh_expires_at,
        }
    }
}

/// Tokens for a signed-in user.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct AuthSession {
    #[oai(flatten)]
    tokens: TokenPairView,
    user: UserView,
}

impl From<Session> for AuthSession {
    fn from(session: Session) -> Self {
        Self { tokens: (&session.tokens).into(), user: (&session.user).into() }
    }
}

/// What every answer carrying tokens says of caching: never keep it.
const NO_STORE: &str = "no-store";

#[derive(ApiResponse)]
enum RegisterResponse {
    /// The account was created and signed in.
    #[oai(status = 201)]
    Created(
        Json<AuthSession>,
        /// Always `no-store`: the answer carries tokens.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[derive(ApiResponse)]
enum LoginResponse {
    /// Signed in.
    #[oai(status = 200)]
    Ok(
        Json<AuthSession>,
        /// Always `no-store`: the answer carries tokens.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[derive(ApiResponse)]
enum RefreshResponse {
    /// The rotated pair.
    #[oai(status = 200)]
    Ok(
        Json<TokenPairView>,
        /// Always `no-store`: the answer carries tokens.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// A tenant, as a caller's scope.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
struct TenantRef {
    /// `t_` and 32 hex digits.
    id: String,
    /// `tenant-<uuid>`.
    cr_name: String,
    display_name: String,
}

impl From<&Tenant> for TenantRef {
    fn from(tenant: &Tenant) -> Self {
        Self { id: tenant.id.to_string(), cr_name: tenant.id.cr_name(), display_name: tenant.display_name.as_str().to_owned() }
    }
}

/// The caller authenticated as a user by an access token.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
struct UserPrincipal {
    user: UserView,
    /// The tenant named by `X-Tenant-ID`, when the request named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<TenantRef>,
}

/// The caller authenticated by a tenant's API key.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
struct ApiKeyPrincipal {
    tenant: TenantRef,
    key_label: String,
}

/// Who the caller is; `kind` says which credential it presented.
#[derive(Union, serde::Serialize)]
#[oai(discriminator_name = "kind", one_of)]
#[serde(tag = "kind")]
enum Me {
    #[oai(mapping = "user")]
    #[serde(rename = "user")]
    User(UserPrincipal),
    #[oai(mapping = "apiKey")]
    #[serde(rename = "apiKey")]
    ApiKey(ApiKeyPrincipal),
}

pub(crate) struct AuthApi;

#[poem_openapi::OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Register a user and sign it in.
    #[oai(path = "/auth/register", method = "post", operation_id = "auth_register")]
    async fn register(&self, nexus: Data<&SharedNexus>, body: Json<RegisterRequest>) -> Result<RegisterResponse, ApiError<RegisterErrors>> {
        let Json(RegisterRequest { email, password, display_name }) = body;
        let (nexus, registration) = (nexus.0.clone(), Registration { email: email.0, password: password.0, display_name: display_name.map(|name| name.0) });
        let session = super::to_the_end(async move { nexus.identity.register(registration).await }).await?;
        Ok(RegisterResponse::Created(Json(session.into()), NO_STORE.to_owned()))
    }

    /// Log in with email and password.
    #[oai(path = "/auth/login", method = "post", operation_id = "auth_login")]
    async fn login(&self, nexus: Data<&SharedNexus>, body: Json<LoginRequest>) -> Result<LoginResponse, ApiError<CredentialErrors>> {
        let Json(LoginRequest { email, password }) = body;
        let nexus = nexus.0.clone();
        let session = super::to_the_end(async move { nexus.identity.login(&email, password.0).await }).await?;
        Ok(LoginResponse::Ok(Json(session.into()), NO_STORE.to_owned()))
    }

    /// Rotate a refresh token: it is revoked and a new access and refresh token issued.
    /// Presenting a rotated token again revokes its whole session, access tokens included.
    #[oai(path = "/auth/refresh", method = "post", operation_id = "auth_refresh")]
    async fn refresh(&self, nexus: Data<&SharedNexus>, body: Json<RefreshRequest>) -> Result<RefreshResponse, ApiError<CredentialErrors>> {
        let (nexus, token) = (nexus.0.clone(), body.0.refresh_token);
        let pair = super::to_the_end(async move { nexus.identity.rotate_refresh(&token).await }).await?;
        Ok(RefreshResponse::Ok(Json((&pair).into()), NO_STORE.to_owned()))
    }

    /// Log out: the refresh token's whole session (its rotation family) is revoked, and the
    /// access tokens issued in it are refused from now on, by every replica. An unknown or
    /// already revoked token answers the same: there is nothing to reveal.
    #[oai(path = "/auth/logout", method = "post", operation_id = "auth_logout")]
    async fn logout(&self, nexus: Data<&SharedNexus>, body: Json<RefreshRequest>) -> Result<Done, ApiError<LogoutErrors>> {
        let (nexus, token) = (nexus.0.clone(), body.0.refresh_token);
        super::to_the_end(async move { nexus.identity.logout(&token).await }).await?;
        Ok(Done::NoContent)
    }
}

pub(crate) struct MeApi;

#[OpenApi(tag = "ApiTags::Me")]
impl MeApi {
    /// The caller: the user behind an access token (and the tenant its `X-Tenant-ID`
    /// names, which it must own), or the tenant behind an API key.
    #[oai(path = "/api/v1/me", method = "get", operation_id = "me_get")]
    async fn me(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
    ) -> Result<JsonAnswer<Me>, ApiError<AuthenticatedErrors>> {
        let me = match &caller.0 {
            Principal::User(user_id) => {
                let user = nexus.identity.current_user(user_id).await?;
                let tenant = match tenant_id.0.as_deref().filter(|named| !named.is_empty()) {
                    Some(named) => Some(TenantRef::from(&nexus.access.tenant_scope(&caller.0, Some(named)).await?)),
                    None => None,
                };
                Me::User(UserPrincipal { user: (&user).into(), tenant })
            }
            Principal::ApiKey { key, tenant } => {
                nexus.access.tenant_scope(&caller.0, tenant_id.0.as_deref()).await?;
                Me::ApiKey(ApiKeyPrincipal { tenant: tenant.into(), key_label: key.label.as_str().to_owned() })
            }
        };
        Ok(JsonAnswer(me))
    }

    /// End every session of the caller: all its refresh tokens are revoked, and every
    /// access token issued before now is refused from now on (this one too), by every
    /// replica. Needs a user's access token.
    #[oai(path = "/api/v1/me/sessions", method = "delete", operation_id = "me_sessions_end")]
    async fn end_sessions(&self, nexus: Data<&SharedNexus>, caller: Caller) -> Result<Done, ApiError<AuthenticatedErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let nexus = nexus.0.clone();
        super::to_the_end(async move { nexus.identity.end_sessions(&user).await }).await?;
        Ok(Done::NoContent)
    }

    /// Change the caller's password; then every session ends as with `DELETE
    /// /api/v1/me/sessions`. A wrong current password is refused with 403 and counts as a
    /// failed login. Needs a user's access token.
    #[oai(path = "/api/v1/me/password", method = "put", operation_id = "me_password_change")]
    async fn change_password(&self, nexus: Data<&SharedNexus>, caller: Caller, body: Json<ChangePasswordRequest>) -> Result<Done, ApiError<PasswordErrors>> {
        let user = AccessService::require_user(&caller.0)?;
        let Json(ChangePasswordRequest { current_password, new_password }) = body;
        let nexus = nexus.0.clone();
        super::to_the_end(async move { nexus.identity.change_password(&user, current_password.0, new_password.0).await }).await?;
        Ok(Done::NoContent)
    }
}
