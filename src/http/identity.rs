//! `/auth/*` and `/api/v1/me`: accounts, logins, token rotation, and the caller.

use chrono::{DateTime, Utc};
use nexus_ports::identity::User;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};

use super::ApiTags;
use super::auth::BearerAuth;
use super::error::{ApiError, AuthenticatedErrors, CredentialErrors, RegisterErrors};
use crate::app::{Registration, Session, SharedNexus, TokenPair};

/// A new account.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RegisterRequest {
    /// Compared case-insensitively and stored lower-case.
    #[oai(validator(max_length = 254))]
    email: String,
    /// 8 to 1024 characters.
    #[oai(write_only)]
    password: String,
    /// 1 to 100 characters; defaults to the part of the email before the `@`.
    display_name: Option<String>,
}

/// Credentials to log in with.
#[derive(Object)]
struct LoginRequest {
    email: String,
    #[oai(write_only)]
    password: String,
}

/// A refresh token to rotate.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

/// A user, as clients see it.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct UserView {
    /// `usr_` and 32 hex digits.
    id: String,
    email: String,
    display_name: String,
    created_at: DateTime<Utc>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self { id: user.id.to_string(), email: user.email.to_string(), display_name: user.display_name.as_str().to_owned(), created_at: user.created_at }
    }
}

/// An access token and the refresh token that renews it.
#[derive(Object)]
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

#[derive(ApiResponse)]
enum RegisterResponse {
    /// The account was created and signed in.
    #[oai(status = 201)]
    Created(Json<AuthSession>),
}

/// The caller authenticated as a user.
#[derive(Object)]
struct UserPrincipal {
    user: UserView,
}

/// Who the caller is; `kind` says which credential it presented.
#[derive(Union)]
#[oai(discriminator_name = "kind")]
enum Me {
    #[oai(mapping = "user")]
    User(UserPrincipal),
}

pub(crate) struct AuthApi;

#[poem_openapi::OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Register a user and sign it in.
    #[oai(path = "/auth/register", method = "post", operation_id = "auth_register")]
    async fn register(&self, nexus: Data<&SharedNexus>, body: Json<RegisterRequest>) -> Result<RegisterResponse, ApiError<RegisterErrors>> {
        let Json(RegisterRequest { email, password, display_name }) = body;
        let session = nexus.identity.register(Registration { email, password, display_name }).await?;
        Ok(RegisterResponse::Created(Json(session.into())))
    }

    /// Log in with email and password.
    #[oai(path = "/auth/login", method = "post", operation_id = "auth_login")]
    async fn login(&self, nexus: Data<&SharedNexus>, body: Json<LoginRequest>) -> Result<Json<AuthSession>, ApiError<CredentialErrors>> {
        let Json(LoginRequest { email, password }) = body;
        Ok(Json(nexus.identity.login(&email, password).await?.into()))
    }

    /// Rotate a refresh token: it is revoked and a new access and refresh token issued.
    /// Presenting a rotated token again revokes its whole session.
    #[oai(path = "/auth/refresh", method = "post", operation_id = "auth_refresh")]
    async fn refresh(&self, nexus: Data<&SharedNexus>, body: Json<RefreshRequest>) -> Result<Json<TokenPairView>, ApiError<CredentialErrors>> {
        let pair = nexus.identity.rotate_refresh(&body.refresh_token).await?;
        Ok(Json((&pair).into()))
    }
}

pub(crate) struct MeApi;

#[OpenApi(tag = "ApiTags::Me")]
impl MeApi {
    /// The caller: the user behind the access token.
    #[oai(path = "/api/v1/me", method = "get", operation_id = "me_get")]
    async fn me(&self, nexus: Data<&SharedNexus>, auth: BearerAuth) -> Result<Json<Me>, ApiError<AuthenticatedErrors>> {
        let user = nexus.identity.current_user(&auth.0).await?;
        Ok(Json(Me::User(UserPrincipal { user: (&user).into() })))
    }
}
