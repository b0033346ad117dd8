//! The HTTP layer: poem-openapi operations over the use cases. Handlers are thin: parse,
//! call one use case, convert. The layer owns its DTOs and maps core errors to statuses in
//! one place (`error`). Operation ids are `resource_verb`; SDKs generated from the
//! document see them, so renaming one is a breaking change.

mod agents;
mod audit;
mod auth;
mod body_limit;
mod connections;
mod error;
mod health;
mod identity;
mod json;
mod manifest;
pub mod metrics;
mod observe;
mod patterns;
mod preconditions;
mod tenants;
mod text;
mod throttle;

use poem::listener::Acceptor;
use poem::middleware::{AddData, CatchPanic};
use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::{LicenseObject, OpenApiService, ServerObject, Tags};

use crate::app::SharedNexus;

/// Runs a write in a task of its own and waits for it, so that a client going away or a
/// request timing out cancels only the wait: the write is never cut short between two of
/// its steps (a commit and what follows it). It stays part of the request (its id and
/// client address in audit events and node calls).
pub(crate) async fn to_the_end<T: Send + 'static>(write: impl std::future::Future<Output = nexus_ports::Result<T>> + Send + 'static) -> nexus_ports::Result<T> {
    match tokio::spawn(nexus_ports::context::carried(write)).await {
        Ok(done) => done,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(nexus_ports::Error::Unavailable("the server is shutting down".to_owned())),
    }
}

pub use body_limit::{AUTH_BODY_LIMIT, BODY_LIMIT, BUDGET_WAIT};
pub use connections::{CONNECTION_MEMORY, ConnectionLimits, GuardedAcceptor, HEAD_BUFFER, HTTP2_HEADER_LIST, HTTP2_WINDOW, REQUEST_MEMORY};
pub use error::ErrorBody;
pub use observe::{CORRELATION_ID, REQUEST_ID, RequestId};

/// How long in-flight requests get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Tags)]
enum ApiTags {
    /// Accounts, logins, token rotation and logout. Every `/auth` route is rate-limited per
    /// client address (429 with `Retry-After`), and logins per account (10 failures in 15
    /// minutes by default).
    Auth,
    /// The authenticated caller, its sessions and its password.
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
    /// Audit trails: who changed what, when, from where, in which request. A tenant's
    /// trail and the caller's own; both need a user's access token (API keys get 403).
    Audit,
    /// Liveness and readiness probes.
    Health,
}

type Apis = (health::HealthApi, identity::AuthApi, identity::MeApi, tenants::TenantApi, tenants::KeyApi, agents::AgentApi, audit::AuditApi);

/// The OpenAPI service: every operation, with no state attached (handlers read the
/// shared [`crate::app::Nexus`] from request data).
pub(crate) fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (health::HealthApi, identity::AuthApi, identity::MeApi, tenants::TenantApi, tenants::KeyApi, agents::AgentApi, audit::AuditApi),
        "Nexus",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Multi-tenant control plane for Astromesh AI agents. Every failure answers \
             `{\"error\": \"<message>\"}` with the status that says what went wrong.",
    )
    .server(ServerObject::new("http://localhost:8080").description("A Nexus on its default address"))
    .license(LicenseObject::new("Apache-2.0").url("https://www.apache.org/licenses/LICENSE-2.0"))
}

/// The OpenAPI document: what poem-openapi generates from the operations, completed with
/// what it cannot say: the patterns checked by validators compiled once (see `patterns`),
/// the manifest's schemas (see `manifest`), and `security: []` on
/// public operations, so generators and linters see that they need no credentials.
fn document() -> serde_json::Value {
    let mut document: serde_json::Value = serde_json::from_str(&openapi().spec()).expect("poem-openapi generates JSON");
    patterns::declare(&mut document);
    if let (Some(schemas), serde_json::Value::Object(manifest)) = (document["components"]["schemas"].as_object_mut(), manifest::schemas()) {
        schemas.extend(manifest);
    }
    // poem-openapi reads `null` as an absent optional field: say so for request bodies.
    for (name, schema) in document["components"]["schemas"].as_object_mut().into_iter().flat_map(|schemas| schemas.iter_mut()) {
        if !name.ends_with("Request") {
            continue;
        }
        let required: Vec<serde_json::Value> = schema["required"].as_array().cloned().unwrap_or_default();
        for (field, property) in schema["properties"].as_object_mut().into_iter().flat_map(|properties| properties.iter_mut()) {
            if !required.contains(&serde_json::Value::String(field.clone())) {
                property["nullable"] = serde_json::json!(true);
            }
        }
    }
    // Event streams: described per event, their payload's schema inlined in the event's.
    let mut streamed = Vec::new();
    for operations in document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for operation in operations.as_object_mut().into_iter().flat_map(|operations| operations.values_mut()) {
            if operation.get("security").is_none() {
                operation["security"] = serde_json::json!([]);
            }
            for response in operation["responses"].as_object_mut().into_iter().flat_map(|responses| responses.values_mut()) {
                if let Some(stream) = response.get_mut("content").and_then(|content| content.get_mut("text/event-stream")) {
                    streamed.extend(stream["schema"]["items"]["$ref"].as_str().map(str::to_owned));
                    stream["schema"] = event_schema();
                }
            }
        }
    }
    for reference in streamed {
        let name = reference.trim_start_matches("#/components/schemas/");
        if let Some(payload) = document["components"]["schemas"].as_object_mut().and_then(|schemas| schemas.remove(name)) {
            for operations in document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
                for operation in operations.as_object_mut().into_iter().flat_map(|operations| operations.values_mut()) {
                    if let Some(event) = operation.pointer_mut("/responses/200/content/text~1event-stream/schema/properties/data") {
                        event["x-payload"] = payload.clone();
                    }
                }
            }
        }
    }
    document
}

/// The schema of one Server-Sent Event of the status stream (poem-openapi describes a
/// stream as an array of payloads; tools read a `text/event-stream` schema as that of each
/// event): its type (`event`), and its `data`, a payload as JSON text.
fn event_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "One Server-Sent Event: its type, and its data, the payload as JSON text.",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["status", "deleted"]},
            "data": {"type": "string", "description": "The payload as JSON text (its schema under `x-payload`)."},
        },
    })
}

/// The OpenAPI document as pretty JSON, exactly as committed under `openapi/` and served
/// at `/openapi.json`.
pub fn openapi_json() -> String {
    let mut json = serde_json::to_string_pretty(&document()).expect("a JSON value serializes");
    json.push('\n');
    json
}

/// The OpenAPI document as YAML.
pub fn openapi_yaml() -> String {
    serde_yaml::to_string(&document()).expect("a JSON value serializes as YAML")
}

/// Each path template of the document: split into segments (`{...}` matches any one
/// segment), whole, and the methods it declares (for the `Allow` header of 405 answers).
static ALLOWED: std::sync::LazyLock<Vec<(Vec<String>, String, String)>> = std::sync::LazyLock::new(|| {
    let document = document();
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    paths
        .into_iter()
        .map(|(template, operations)| {
            let methods: Vec<String> = operations.as_object().into_iter().flat_map(|o| o.keys()).map(|m| m.to_ascii_uppercase()).collect();
            (template.split('/').map(str::to_owned).collect(), template, methods.join(", "))
        })
        .collect()
});

/// The document's path template `path` matches, with its methods.
fn matching_path(path: &str) -> Option<&'static (Vec<String>, String, String)> {
    let path = path.trim_end_matches('/');
    let segments = path.split('/').count();
    ALLOWED.iter().find(|(template, _, _)| {
        template.len() == segments && template.iter().zip(path.split('/')).all(|(part, segment)| part.starts_with('{') || part == segment)
    })
}

/// What `Allow` says for `path`, when it is one of the document's.
fn allowed_methods(path: &str) -> Option<&'static str> {
    matching_path(path).map(|(_, _, methods)| methods.as_str())
}

/// The route template (`/api/v1/agents/{name}`) `path` is served by, when it is one of the
/// document's: what metrics label requests with.
pub(crate) fn route_template(path: &str) -> Option<&'static str> {
    matching_path(path).map(|(_, template, _)| template.as_str())
}

/// Adds `Allow` to 405 answers, as RFC 9110 requires: the methods the path has.
async fn allow_on_405<E: Endpoint>(next: std::sync::Arc<E>, request: poem::Request) -> poem::Result<poem::Response> {
    let path = request.uri().path().to_owned();
    let mut response = next.call(request).await?.into_response();
    if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed_methods(&path)
        && let Ok(value) = poem::http::HeaderValue::from_str(methods)
    {
        response.headers_mut().insert(poem::http::header::ALLOW, value);
    }
    Ok(response)
}

/// Serves the document, rendered once.
#[poem::handler]
fn served_document() -> poem::Response {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_json);
    poem::Response::builder().content_type("application/json; charset=utf-8").body(DOCUMENT.as_str())
}

/// Serves Swagger UI's page (about a megabyte, the UI's script inlined), rendered once and
/// shared by every answer: a client that never reads its answers holds no copy of its own.
#[poem::handler]
fn served_docs() -> poem::Response {
    static PAGE: std::sync::LazyLock<bytes::Bytes> = std::sync::LazyLock::new(|| openapi().swagger_ui_html().into());
    poem::Response::builder().content_type("text/html; charset=utf-8").body(PAGE.clone())
}

/// The whole HTTP application: the API, `/openapi.json`, Swagger UI at `/docs`, with the
/// `/auth` rate limit, the body limits and budget, JSON errors for everything, panics
/// caught, requests bounded by the request timeout and capped in number, and an access log.
pub fn endpoint(nexus: SharedNexus, limits: ConnectionLimits) -> impl Endpoint {
    let request_timeout = limits.request_timeout;
    Route::new()
        .nest("/", openapi())
        .at("/openapi.json", served_document)
        .at("/docs", served_docs)
        .at("/docs/", served_docs)
        .with(AddData::new(nexus.clone()))
        .with(body_limit::BodyLimit::new(limits.body_budget))
        .with(throttle::AuthThrottle::new(nexus))
        .catch_all_error(error::render)
        .around(allow_on_405)
        .with(CatchPanic::new().with_handler(error::panicked))
        .around(move |next, request| connections::bound_request(next, request, request_timeout))
        .with(connections::InFlight::new(limits.max_requests))
        .around(observe::observe)
}

/// Serves `nexus` on `acceptor` within `limits` until `shutdown` resolves, lets in-flight
/// requests finish for up to 30 seconds, then stops the background tasks (writing what they
/// had pending).
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    acceptor: impl Acceptor + 'static,
    nexus: SharedNexus,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let served = connections::serve_connections(acceptor, endpoint(nexus.clone(), limits), limits, shutdown, SHUTDOWN_GRACE).await;
    nexus.shutdown().await;
    served
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    /// A write whose caller is cancelled between two of its steps (the client went away)
    /// still takes its second step, and stays part of its request.
    #[tokio::test]
    async fn a_write_runs_to_its_end_when_its_caller_is_cancelled() {
        let (between, resume, done) = (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let request: Arc<str> = Arc::from("req-1");
        let write = {
            let (between, resume, done) = (between.clone(), resume.clone(), done.clone());
            async move {
                between.notify_one();
                resume.notified().await;
                done.store(nexus_ports::context::request_id().as_deref() == Some("req-1"), Ordering::SeqCst);
                Ok(())
            }
        };
        let caller = tokio::spawn(nexus_ports::context::with_request_id(request, super::to_the_end(write)));
        between.notified().await;
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        resume.notify_one();
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the write did not finish, or lost its request");
    }
}
