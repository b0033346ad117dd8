//! The authorization matrix: every `/api/v1` route called as each kind of caller, with the
//! exact status each must get. A route added to the API but not to [`ROWS`] fails
//! `every_api_route_is_in_the_matrix`, read from the generated OpenAPI document.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, PASSWORD, Server, on_both_backends, with_configured_server};

/// Who calls.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// No credentials at all.
    Nobody,
    /// A bearer token that is not a token.
    Garbage,
    /// Another user's access token.
    OtherUser,
    /// An API key of another user's tenant.
    OtherKey,
    /// The owner's access token.
    Owner,
    /// A read-scoped API key of the owner's tenant: GET routes only.
    ReadKey,
}

const CALLERS: [Who; 6] = [Who::Nobody, Who::Garbage, Who::OtherUser, Who::OtherKey, Who::Owner, Who::ReadKey];

/// Whether a route is tenant-scoped: user tokens then name the owner's tenant in
/// `X-Tenant-ID` (another user's too, which it does not own).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    User,
    Tenant,
}

/// (method, path as in the document, scope, JSON body, expected status per caller in [`CALLERS`] order).
type Row = (&'static str, &'static str, Scope, Option<fn() -> Value>, [u16; 6]);

fn manifest(name: &str) -> Value {
    let mut document = nexus_ports::testing::manifest_document(name, "llama3.1:8b");
    document["metadata"]["version"] = json!("1.0.0");
    document
}

const ROWS: &[Row] = &[
    ("GET", "/api/v1/me", Scope::User, None, [401, 401, 200, 200, 200, 200]),
    // A user ends its own sessions and changes its own password; an API key acts for no user.
    ("DELETE", "/api/v1/me/sessions", Scope::User, None, [401, 401, 204, 403, 204, 403]),
    (
        "PUT",
        "/api/v1/me/password",
        Scope::User,
        Some(|| json!({"currentPassword": PASSWORD, "newPassword": "another-strong-password"})),
        [401, 401, 204, 403, 204, 403],
    ),
    ("POST", "/api/v1/tenants", Scope::User, Some(|| json!({"displayName": "matrix"})), [401, 401, 201, 403, 201, 403]),
    ("GET", "/api/v1/tenants", Scope::User, None, [401, 401, 200, 403, 200, 403]),
    ("DELETE", "/api/v1/tenants/{tenantId}", Scope::User, None, [401, 401, 403, 403, 200, 403]),
    ("POST", "/api/v1/tenants/{tenantId}/keys", Scope::User, Some(|| json!({"label": "matrix"})), [401, 401, 403, 403, 201, 403]),
    ("GET", "/api/v1/tenants/{tenantId}/keys", Scope::User, None, [401, 401, 403, 403, 200, 403]),
    // Audit trails: a tenant's to its owner only, one's own to a user; keys read neither.
    ("GET", "/api/v1/tenants/{tenantId}/audit", Scope::User, None, [401, 401, 403, 403, 200, 403]),
    ("GET", "/api/v1/me/audit", Scope::User, None, [401, 401, 200, 403, 200, 403]),
    ("DELETE", "/api/v1/tenants/{tenantId}/keys/{keyHash}", Scope::User, None, [401, 401, 403, 403, 200, 403]),
    // Another tenant's key acts in its own tenant: it creates and lists there, and the
    // owner's agent is as missing to it as one that does not exist.
    ("POST", "/api/v1/agents", Scope::Tenant, Some(|| manifest("fresh-bot")), [401, 401, 403, 201, 201, 403]),
    ("GET", "/api/v1/agents", Scope::Tenant, None, [401, 401, 403, 200, 200, 200]),
    ("GET", "/api/v1/agents/{name}", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("PUT", "/api/v1/agents/{name}", Scope::Tenant, Some(|| manifest("matrix-bot")), [401, 401, 403, 404, 200, 403]),
    ("DELETE", "/api/v1/agents/{name}", Scope::Tenant, None, [401, 401, 403, 404, 200, 403]),
    ("GET", "/api/v1/agents/{name}/status", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("GET", "/api/v1/agents/{name}/logs", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("GET", "/api/v1/agents/{name}/metrics", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("GET", "/api/v1/agents/{name}/versions", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("GET", "/api/v1/agents/{name}/versions/{number}", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("GET", "/api/v1/agents/{name}/events", Scope::Tenant, None, [401, 401, 403, 404, 200, 200]),
    ("POST", "/api/v1/agents/{name}/run", Scope::Tenant, Some(|| json!({"query": "hello"})), [401, 401, 403, 404, 200, 403]),
    ("POST", "/api/v1/agents/{name}/rollback", Scope::Tenant, Some(|| json!({"version": 1})), [401, 401, 403, 404, 200, 403]),
];

/// The owner's tenant and key, and the credentials of everyone else.
struct World {
    owner: String,
    tenant: String,
    key_hash: String,
    other_user: String,
    other_key: String,
    read_key: String,
}

impl World {
    async fn new(server: &Server, row: usize) -> Self {
        let owner = server.user(&format!("owner{row}@example.com")).await;
        let other_user = server.user(&format!("other{row}@example.com")).await;
        let tenant = server.tenant(&owner, "owned").await.str("id");
        let key_hash = server.key(&owner, &tenant, "owned").await.str("hash");
        let others = server.tenant(&other_user, "theirs").await.str("id");
        let other_key = server.key(&other_user, &others, "theirs").await.str("rawKey");
        let keys = format!("/api/v1/tenants/{tenant}/keys");
        let read = server.call(Method::POST, &keys, &[("authorization", &format!("Bearer {owner}"))], Some(&json!({"label": "reader", "scope": "read"}))).await;
        assert_eq!(read.status, StatusCode::CREATED, "{read:?}");
        let world = Self { owner, tenant, key_hash, other_user, other_key, read_key: read.str("rawKey") };
        let headers = world.headers(Who::Owner, Scope::Tenant);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let agent = server.call(Method::POST, "/api/v1/agents", &headers, Some(&manifest("matrix-bot"))).await;
        assert_eq!(agent.status, StatusCode::CREATED, "{agent:?}");
        // Running on its node, so that it can be run.
        crate::agents::wait_for(server, &world.read_key, "matrix-bot", "Running", crate::agents::running).await;
        world
    }

    fn headers(&self, who: Who, scope: Scope) -> Vec<(&'static str, String)> {
        let mut headers = match who {
            Who::Nobody => vec![],
            Who::Garbage => vec![("authorization", "Bearer not-a-token".to_owned())],
            Who::OtherUser => vec![("authorization", format!("Bearer {}", self.other_user))],
            Who::OtherKey => vec![("x-api-key", self.other_key.clone())],
            Who::Owner => vec![("authorization", format!("Bearer {}", self.owner))],
            Who::ReadKey => vec![("x-api-key", self.read_key.clone())],
        };
        if scope == Scope::Tenant && matches!(who, Who::OtherUser | Who::Owner | Who::Garbage) {
            headers.push(("x-tenant-id", self.tenant.clone()));
        }
        headers
    }

    fn path(&self, template: &str) -> String {
        template.replace("{tenantId}", &self.tenant).replace("{keyHash}", &self.key_hash).replace("{name}", "matrix-bot").replace("{number}", "1")
    }
}

on_both_backends!(authorization_matrix);

async fn authorization_matrix(backend: Backend) {
    // A status stream ends after a second, so that reading its whole answer ends too.
    let short_streams = |c| nexus::config::ServeConfig { events_max_duration: std::time::Duration::from_secs(1).into(), ..c };
    with_configured_server(backend, short_streams, async |server: &Server| {
        for (row, (method, template, scope, body, expected)) in ROWS.iter().enumerate() {
            // A world per row: the owner's call may delete what the next row needs.
            let world = World::new(server, row).await;
            // The read key calls before the owner, whose call may delete what it needs.
            let mut calls: Vec<(Who, &u16)> = CALLERS.into_iter().zip(expected).collect();
            calls.swap(4, 5);
            for (who, expected) in calls {
                let headers = world.headers(who, *scope);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let answer = server.call(method.clone(), &world.path(template), &headers, body.map(|b| b()).as_ref()).await;
                assert_eq!(answer.status, StatusCode::from_u16(*expected).unwrap(), "{method} {template} as {who:?}: {answer:?}");
                if !answer.status.is_success() {
                    answer.error();
                }
            }
        }
    })
    .await;
}

#[test]
fn every_api_route_is_in_the_matrix() {
    let doc: Value = serde_json::from_str(&nexus::http::openapi_json()).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/api/v1"))
        .flat_map(|(path, operations)| operations.as_object().unwrap().keys().map(move |method| (method.to_uppercase(), path.clone())))
        .collect();
    let covered: BTreeSet<(String, String)> = ROWS.iter().map(|(method, path, ..)| ((*method).to_owned(), (*path).to_owned())).collect();
    assert_eq!(documented, covered, "every /api/v1 route must have a row in the authorization matrix (tests/api/matrix.rs)");
}
