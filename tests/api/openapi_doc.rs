//! The committed OpenAPI document is the generated one, and it describes what is served.

use serde_json::Value;

use crate::support::{Backend, Server, on_both_backends, with_server};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/nexus.json");
const REGENERATE: &str = "cargo run --quiet -- openapi > openapi/nexus.json";

#[test]
fn committed_document_matches_the_generated_one() {
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(committed == nexus::http::openapi_json(), "openapi/nexus.json is out of date; regenerate it with:\n    {REGENERATE}\n");
}

#[test]
fn document_describes_every_route_its_security_and_error_bodies() {
    let doc: Value = serde_json::from_str(&nexus::http::openapi_json()).unwrap();
    let operations = [
        ("/auth/register", "post", "auth_register"),
        ("/auth/login", "post", "auth_login"),
        ("/auth/refresh", "post", "auth_refresh"),
        ("/api/v1/me", "get", "me_get"),
        ("/healthz", "get", "health_live"),
        ("/readyz", "get", "health_ready"),
        ("/api/v1/tenants", "post", "tenant_create"),
        ("/api/v1/tenants", "get", "tenant_list"),
        ("/api/v1/tenants/{tenantId}", "delete", "tenant_delete"),
        ("/api/v1/tenants/{tenantId}/keys", "post", "key_create"),
        ("/api/v1/tenants/{tenantId}/keys", "get", "key_list"),
        ("/api/v1/tenants/{tenantId}/keys/{keyHash}", "delete", "key_revoke"),
    ];
    for (path, method, id) in operations {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["operationId"], id, "{method} {path}");
        for (status, response) in operation["responses"].as_object().unwrap() {
            let schema = &response["content"]["application/json; charset=utf-8"]["schema"]["$ref"];
            if status.starts_with('4') || status.starts_with('5') && path != "/readyz" {
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }
    // Every /api/v1 operation offers both schemes as alternatives; /me documents X-Tenant-ID.
    for (path, operations) in doc["paths"].as_object().unwrap().iter().filter(|(p, _)| p.starts_with("/api/v1")) {
        for (method, operation) in operations.as_object().unwrap() {
            assert_eq!(operation["security"], serde_json::json!([{"bearer": []}, {"apiKey": []}]), "{method} {path}");
        }
    }
    // Every operation has exactly one tag; public ones say they need no credentials.
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            assert_eq!(operation["tags"].as_array().map(Vec::len), Some(1), "{method} {path}");
            if !path.starts_with("/api/v1") {
                assert_eq!(operation["security"], serde_json::json!([]), "{method} {path}");
            }
        }
    }
    assert!(doc["servers"].as_array().is_some_and(|s| !s.is_empty()), "servers");
    assert_eq!(doc["info"]["license"]["name"], "Apache-2.0");
    assert_eq!(doc["paths"]["/api/v1/me"]["get"]["parameters"][0]["name"], "X-Tenant-ID");
    assert_eq!(doc["paths"]["/api/v1/me"]["get"]["parameters"][0]["in"], "header");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["name"], "X-API-Key");
    assert_eq!(
        doc["paths"]["/auth/register"]["post"]["responses"]["409"]["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

on_both_backends!(served_document_is_the_generated_one);

async fn served_document_is_the_generated_one(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let served = server.get("/openapi.json", None).await;
        assert_eq!(served.body, serde_json::from_str::<Value>(&nexus::http::openapi_json()).unwrap());
    })
    .await;
}
