//! Errors on the wire: every failure is `{"error": "<message>"}` with its status.
//!
//! [`ApiError`] is what operations return; its type parameter names the statuses the
//! operation documents. Core errors become statuses in [`status_of`], the one mapping;
//! poem's own errors (parse, auth, 404, 405, 415...) are rendered by [`render`]. Refusals
//! that are worth retrying later (429, and 503 from a saturated hasher) carry
//! `Retry-After` in seconds.

use std::any::Any;
use std::marker::PhantomData;

use nexus_ports::Error;
use poem::http::{HeaderValue, StatusCode, header};
use poem::web::Json;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

/// The body of every failure.
#[derive(Debug, Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
    /// For a document that fails validation: every problem, with its field.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldProblem>>,
}

/// One validation problem of a document.
#[derive(Debug, Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
pub struct FieldProblem {
    /// Dotted path of the field (`metadata.name`, `spec.model.primary.provider`).
    pub field: String,
    pub message: String,
}

/// The statuses an operation documents for its failures.
pub(crate) trait ErrorSet: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;
        impl ErrorSet for $name {
            const STATUSES: &'static [u16] = &[$($status),*];
        }
    )*};
}

error_sets! {
    /// Creating an account.
    RegisterErrors = [400, 409, 413, 415, 429, 500, 503];
    /// Exchanging credentials or a refresh token for tokens.
    CredentialErrors = [400, 401, 413, 415, 429, 500, 503];
    /// Logging out: an unknown token is not an error.
    LogoutErrors = [400, 413, 415, 429, 500, 503];
    /// Changing one's password.
    PasswordErrors = [400, 401, 403, 413, 415, 429, 500, 503];
    /// Creating something a quota bounds (a tenant, a key).
    QuotaCreateErrors = [400, 401, 403, 409, 413, 415, 500, 503];
    /// An operation behind authentication without a body.
    AuthenticatedErrors = [400, 401, 403, 500, 503];
    /// An operation behind authentication with a JSON body.
    AuthenticatedWriteErrors = [400, 401, 403, 413, 415, 500, 503];
    /// An operation behind authentication on one resource that may be missing.
    AuthenticatedItemErrors = [400, 401, 403, 404, 500, 503];
    /// Registering an agent from its manifest.
    AgentCreateErrors = [400, 401, 403, 409, 413, 415, 500, 503];
    /// Replacing an agent's manifest (`If-Match` may fail), or rolling it back.
    AgentUpdateErrors = [400, 401, 403, 404, 409, 412, 413, 415, 500, 503];
    /// Deleting an agent (`If-Match` may fail).
    AgentDeleteErrors = [400, 401, 403, 404, 412, 500, 503];
    /// Reading through to an agent's node.
    NodeErrors = [400, 401, 403, 404, 500, 502, 503];
    /// Opening an agent's live status stream (bounded per tenant).
    EventsErrors = [400, 401, 403, 404, 429, 500, 503];
    /// Running an agent on its node.
    RunErrors = [400, 401, 403, 404, 413, 415, 500, 502, 503];
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed or fails validation.",
        401 => "Credentials are missing, invalid or expired.",
        403 => "The caller may not do this.",
        404 => "No such resource.",
        409 => "The request conflicts with existing state.",
        412 => "`If-Match` does not name the current version: the resource changed since it was read, and nothing was done.",
        413 => "The request body is too large.",
        415 => "The request body's content type is not accepted.",
        429 => "Too many requests from this address, failed logins for this account, or open streams for this tenant; retry after `Retry-After` seconds.",
        502 => "The agent's node could not be reached, did not answer in time, or refused (with its reason, when it gave one).",
        503 => "A dependency is unavailable, or the service is saturated; retry later (after `Retry-After` seconds, when given).",
        _ => "An unexpected failure; the details are in the server log.",
    }
}

/// A failure as it goes on the wire.
pub(crate) struct Refusal {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

impl Refusal {
    fn plain(status: StatusCode, error: String) -> Self {
        Self { status, body: ErrorBody { error, errors: None }, retry_after: None }
    }

    fn retry(status: StatusCode, error: String, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::plain(status, error) }
    }

    pub(crate) fn into_response(self) -> Response {
        let mut response = Json(self.body).with_status(self.status).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A failure of an operation documenting the statuses of `S`.
pub(crate) struct ApiError<S> {
    refusal: Refusal,
    set: PhantomData<fn() -> S>,
}

/// The one mapping of core errors to statuses. Internal details are logged, not sent.
pub(crate) fn status_of(err: Error) -> Refusal {
    match err {
        Error::NotFound(m) => Refusal::plain(StatusCode::NOT_FOUND, m),
        Error::AlreadyExists(m) | Error::Conflict(m) => Refusal::plain(StatusCode::CONFLICT, m),
        Error::InvalidRequest(m) => Refusal::plain(StatusCode::BAD_REQUEST, m),
        Error::Unauthorized(m) => Refusal::plain(StatusCode::UNAUTHORIZED, m),
        Error::Forbidden(m) => Refusal::plain(StatusCode::FORBIDDEN, m),
        Error::PreconditionFailed(m) => Refusal::plain(StatusCode::PRECONDITION_FAILED, m),
        Error::Unavailable(m) => Refusal::plain(StatusCode::SERVICE_UNAVAILABLE, m),
        Error::RateLimited { message, retry_after_secs } => Refusal::retry(StatusCode::TOO_MANY_REQUESTS, message, retry_after_secs),
        Error::Overloaded { message, retry_after_secs } => Refusal::retry(StatusCode::SERVICE_UNAVAILABLE, message, retry_after_secs),
        Error::Upstream(m) => Refusal::plain(StatusCode::BAD_GATEWAY, m),
        invalid @ Error::InvalidFields(_) => {
            let error = invalid.to_string();
            let Error::InvalidFields(problems) = invalid else { unreachable!("matched above") };
            let errors = problems.into_iter().map(|p| FieldProblem { field: p.field, message: p.message }).collect();
            Refusal { status: StatusCode::BAD_REQUEST, body: ErrorBody { error, errors: Some(errors) }, retry_after: None }
        }
        Error::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            Refusal::plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
        }
    }
}

impl<S: ErrorSet> From<Error> for ApiError<S> {
    /// Converts a core error, asserting (in debug builds, so in every test) that its status
    /// is one the operation declares: a use case answering outside its operation's set
    /// fails the test that reaches it.
    fn from(err: Error) -> Self {
        let refusal = status_of(err);
        debug_assert!(
            S::STATUSES.contains(&refusal.status.as_u16()),
            "{} is not among the statuses this operation declares ({:?}): {}",
            refusal.status,
            S::STATUSES,
            refusal.body.error
        );
        Self { refusal, set: PhantomData }
    }
}

pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    Refusal::plain(status, message.into()).into_response()
}

impl<S> From<ApiError<S>> for poem::Error {
    fn from(err: ApiError<S>) -> Self {
        poem::Error::from_response(err.refusal.into_response())
    }
}

impl<S: ErrorSet> ApiResponse for ApiError<S> {
    fn meta() -> MetaResponses {
        let responses = S::STATUSES
            .iter()
            .map(|&status| MetaResponse {
                description: describe(status),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType { content_type: "application/json; charset=utf-8", schema: ErrorBody::schema_ref() }],
                headers: if matches!(status, 429 | 503) { vec![retry_after_header()] } else { vec![] },
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

fn retry_after_header() -> MetaHeader {
    MetaHeader {
        name: "Retry-After".to_owned(),
        description: Some("Seconds to wait before retrying (on 503, only when the service is saturated).".to_owned()),
        required: false,
        deprecated: false,
        schema: u64::schema_ref(),
    }
}

/// Renders any error that reached the top as JSON. Errors from [`ApiError`] already are;
/// poem's own (unparseable body, missing credentials, unknown route...) get their message.
pub(crate) async fn render(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let message = if err.is::<poem_openapi::error::AuthorizationError>() {
        "missing credentials: send Authorization: Bearer <access token>".to_owned()
    } else if status.is_server_error() {
        tracing::error!(error = %err, "unhandled error");
        "internal error".to_owned()
    } else {
        err.to_string()
    };
    json_error(status, message)
}

/// The answer when a handler panicked: a plain 500, the panic already logged by the hook.
pub(crate) fn panicked(_panic: Box<dyn Any + Send + 'static>) -> Response {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}
