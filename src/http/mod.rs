//! The HTTP layer: poem-openapi operations over the use cases. Handlers are thin: parse,
//! call one use case, convert. The layer owns its DTOs and maps core errors to statuses in
//! one place (`error`). Operation ids are `resource_verb`; SDKs generated from the
//! document see them, so renaming one is a breaking change.

mod agents;
mod auth;
mod body_limit;
mod error;
mod health;
mod identity;
mod manifest;
mod tenants;
mod text;

use poem::listener::Acceptor;
use poem::middleware::{AddData, CatchPanic, Tracing};
use poem::{Endpoint, EndpointExt, Route, Server};
use poem_openapi::{OpenApiService, Tags};

use crate::app::SharedNexus;

pub use error::ErrorBody;

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Tags)]
enum ApiTags {
    /// Accounts, logins and token rotation.
    Auth,
    /// The authenticated caller.
    Me,
    /// Tenants: the unit of isolation, with a namespace and a node of its own. These routes
    /// act for a user: they need a user's access token, and refuse API keys with 403.
    Tenants,
    /// Tenant-scoped API keys for programmatic clients. Managing them needs a user's access
    /// token; API keys are refused with 403.
    Keys,
    /// A tenant's agents. Tenant-scoped: an API key, or a user's access token with
    /// `X-Tenant-ID` naming a tenant it owns.
    Agents,
    /// Liveness and readiness probes.
    Health,
}

type Apis = (health::HealthApi, identity::AuthApi, identity::MeApi, tenants::TenantApi, agents::AgentApi);

/// The OpenAPI service: every operation, with no state attached (handlers read the
/// shared [`crate::app::Nexus`] from request data).
pub(crate) fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new((health::HealthApi, identity::AuthApi, identity::MeApi, tenants::TenantApi, agents::AgentApi), "Nexus", env!("CARGO_PKG_VERSION"))
        .description(
            "Multi-tenant control plane for Astromesh AI agents. Every failure answers \
             `{\"error\": \"<message>\"}` with the status that says what went wrong.",
        )
}

/// The OpenAPI document as pretty JSON, exactly as committed under `openapi/`.
pub fn openapi_json() -> String {
    let mut spec = openapi().spec();
    spec.push('\n');
    spec
}

/// The OpenAPI document as YAML.
pub fn openapi_yaml() -> String {
    openapi().spec_yaml()
}

/// The whole HTTP application: the API, `/openapi.json`, Swagger UI at `/docs`, with the
/// body limit, JSON errors for everything, panics caught, and an access log.
pub fn endpoint(nexus: SharedNexus) -> impl Endpoint {
    let api = openapi();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .with(AddData::new(nexus))
        .with(body_limit::BodyLimit::new(BODY_LIMIT))
        .catch_all_error(error::render)
        .with(CatchPanic::new().with_handler(error::panicked))
        .with(Tracing)
}

/// Serves `nexus` on `acceptor` until `shutdown` resolves, lets in-flight requests finish
/// for up to 30 seconds, then stops the background tasks (writing what they had pending).
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(acceptor: impl Acceptor + 'static, nexus: SharedNexus, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
    let served = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(endpoint(nexus.clone()), shutdown, Some(SHUTDOWN_GRACE)).await;
    nexus.shutdown().await;
    served
}
