//! Tenants and API keys over HTTP: the reference walk, validation, revocation, scoping.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backend, Server, config, database, on_both_backends, with_server};

on_both_backends!(
    walk_register_tenant_key_me,
    tenant_input_is_validated,
    revoked_keys_and_keys_of_deleted_tenants_fail_at_once,
    keys_are_listed_without_values_with_their_last_use,
    x_tenant_id_scopes_a_user_to_tenants_it_owns,
    restart_keeps_tenants_and_keys
);

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn walk_register_tenant_key_me(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("admin@example.com").await;
        let auth = bearer(&token);
        let tenant =
            server.call(Method::POST, "/api/v1/tenants", &[(auth.0, &auth.1)], Some(&json!({"displayName": "My Organisation", "nodeProfile": "full"}))).await;
        assert_eq!(tenant.status, StatusCode::CREATED, "{tenant:?}");
        let id = tenant.str("id");
        let uuid = id.strip_prefix("t_").expect("t_ prefix");
        assert_eq!(uuid.len(), 32);
        assert!(tenant.str("crName").starts_with("tenant-") && tenant.str("crName").replace('-', "").ends_with(uuid));
        assert_eq!(tenant.body["displayName"], "My Organisation");
        assert_eq!(tenant.body["nodeProfile"], "full");
        assert_eq!(tenant.body["phase"], "Ready");
        assert_eq!(tenant.body["namespace"], tenant.body["crName"]);
        assert_eq!(tenant.body["maxAgents"], 50);

        let key = server.call(Method::POST, &format!("/api/v1/tenants/{id}/keys"), &[(auth.0, &auth.1)], Some(&json!({"label": "ci"}))).await;
        assert_eq!(key.status, StatusCode::CREATED, "{key:?}");
        let raw = key.str("rawKey");
        assert!(raw.starts_with("nxk_") && raw.len() >= 4 + 43);
        assert_eq!(key.body["label"], "ci");
        assert_eq!(key.str("hash").len(), 64);

        let me = server.call(Method::GET, "/api/v1/me", &[("x-api-key", &raw)], None).await;
        assert_eq!(me.status, StatusCode::OK, "{me:?}");
        assert_eq!(me.body["kind"], "apiKey");
        assert_eq!(me.body["keyLabel"], "ci");
        assert_eq!(me.body["tenant"], json!({"id": id, "crName": tenant.body["crName"], "displayName": "My Organisation"}));

        // The default node profile, and a garbage bearer falling back to a valid key.
        let second = server.call(Method::POST, "/api/v1/tenants", &[(auth.0, &auth.1)], Some(&json!({"displayName": "Second"}))).await;
        assert_eq!(second.body["nodeProfile"], "full");
        let fallback = server.call(Method::GET, "/api/v1/me", &[("authorization", "Bearer garbage"), ("x-api-key", &raw)], None).await;
        assert_eq!(fallback.body["kind"], "apiKey");
        let listed = server.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await;
        let ids: Vec<&str> = listed.body.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![id.as_str(), second.body["id"].as_str().unwrap()]);
    })
    .await;
}

async fn tenant_input_is_validated(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("admin@example.com").await;
        let auth = bearer(&token);
        let headers = [(auth.0, auth.1.as_str())];
        for body in [
            json!({}),
            json!({"displayName": ""}),
            json!({"displayName": "   "}),
            json!({"displayName": "x".repeat(101)}),
            json!({"displayName": 7}),
            json!({"displayName": "ok", "nodeProfile": "Not Valid"}),
        ] {
            let answer = server.call(Method::POST, "/api/v1/tenants", &headers, Some(&body)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
            answer.error();
        }
        let tenant = server.tenant(&token, "org").await.str("id");
        for body in [json!({}), json!({"label": ""}), json!({"label": "x".repeat(101)})] {
            let answer = server.call(Method::POST, &format!("/api/v1/tenants/{tenant}/keys"), &headers, Some(&body)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        }
        let malformed = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/not-hex"), &headers, None).await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
        let missing = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/{}", "0".repeat(64)), &headers, None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        missing.error();
        assert_eq!(server.call(Method::DELETE, "/api/v1/tenants/t_nope", &headers, None).await.status, StatusCode::BAD_REQUEST);
        // Nothing invalid was created.
        assert_eq!(server.call(Method::GET, "/api/v1/tenants", &headers, None).await.body.as_array().unwrap().len(), 1);
    })
    .await;
}

async fn revoked_keys_and_keys_of_deleted_tenants_fail_at_once(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("admin@example.com").await;
        let auth = bearer(&token);
        let tenant = server.tenant(&token, "org").await.str("id");
        let (revoked, kept) = (server.key(&token, &tenant, "revoked").await, server.key(&token, &tenant, "kept").await);
        let me_with = async |key: &str| server.call(Method::GET, "/api/v1/me", &[("x-api-key", key)], None).await;
        assert_eq!(me_with(&revoked.str("rawKey")).await.status, StatusCode::OK);

        let revoke = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/{}", revoked.str("hash")), &[(auth.0, &auth.1)], None).await;
        assert_eq!(revoke.status, StatusCode::OK, "{revoke:?}");
        assert_eq!(revoke.body, json!({"revoked": revoked.str("hash")}));
        let refused = me_with(&revoked.str("rawKey")).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.error(), "invalid or revoked API key");
        assert_eq!(me_with(&kept.str("rawKey")).await.status, StatusCode::OK, "other keys keep working");

        let deleted = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}"), &[(auth.0, &auth.1)], None).await;
        assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
        assert_eq!(deleted.body, json!({"deleted": tenant}));
        assert_eq!(me_with(&kept.str("rawKey")).await.status, StatusCode::UNAUTHORIZED);
        assert!(server.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await.body.as_array().unwrap().is_empty());
        // The deleted tenant is gone for its owner too: indistinguishable from another's.
        assert_eq!(server.call(Method::GET, &format!("/api/v1/tenants/{tenant}/keys"), &[(auth.0, &auth.1)], None).await.status, StatusCode::FORBIDDEN);
    })
    .await;
}

async fn keys_are_listed_without_values_with_their_last_use(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("admin@example.com").await;
        let auth = bearer(&token);
        let tenant = server.tenant(&token, "org").await.str("id");
        let (used, unused) = (server.key(&token, &tenant, "used").await, server.key(&token, &tenant, "unused").await);
        assert_eq!(server.call(Method::GET, "/api/v1/me", &[("x-api-key", &used.str("rawKey"))], None).await.status, StatusCode::OK);
        let listed = server.call(Method::GET, &format!("/api/v1/tenants/{tenant}/keys"), &[(auth.0, &auth.1)], None).await;
        assert_eq!(listed.status, StatusCode::OK);
        let keys = listed.body.as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for key in keys {
            assert!(key.get("rawKey").is_none(), "{key}");
            assert!(!key.to_string().contains(&used.str("rawKey")) && !key.to_string().contains(&unused.str("rawKey")));
            let expect_used = key["label"] == "used";
            assert_eq!(key["lastUsedAt"].is_string(), expect_used, "{key}");
            assert_eq!(key["hash"], if expect_used { used.body["hash"].clone() } else { unused.body["hash"].clone() });
        }
    })
    .await;
}

async fn x_tenant_id_scopes_a_user_to_tenants_it_owns(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (ada, bob) = (server.user("ada@example.com").await, server.user("bob@example.com").await);
        let (adas, bobs) = (server.tenant(&ada, "Ada's").await.str("id"), server.tenant(&bob, "Bob's").await.str("id"));
        let ada_auth = bearer(&ada);
        let me = async |tenant: &str| server.call(Method::GET, "/api/v1/me", &[(ada_auth.0, &ada_auth.1), ("x-tenant-id", tenant)], None).await;
        let own = me(&adas).await;
        assert_eq!(own.status, StatusCode::OK);
        assert_eq!(own.body["tenant"]["id"], adas.as_str());
        assert_eq!(me(&bobs).await.status, StatusCode::FORBIDDEN);
        assert_eq!(me("t_0123456789abcdef0123456789abcdef").await.status, StatusCode::FORBIDDEN);
        assert_eq!(me("garbage").await.status, StatusCode::BAD_REQUEST);
        // An API key is scoped already: naming another tenant is refused.
        let key = server.key(&bob, &bobs, "ci").await.str("rawKey");
        let crossing = server.call(Method::GET, "/api/v1/me", &[("x-api-key", &key), ("x-tenant-id", &adas)], None).await;
        assert_eq!(crossing.status, StatusCode::FORBIDDEN);
        let matching = server.call(Method::GET, "/api/v1/me", &[("x-api-key", &key), ("x-tenant-id", &bobs)], None).await;
        assert_eq!(matching.status, StatusCode::OK);
    })
    .await;
}

async fn restart_keeps_tenants_and_keys(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let first = Server::start(config(&db.url)).await;
    let token = first.user("ada@example.com").await;
    let tenant = first.tenant(&token, "org").await;
    let key = first.key(&token, &tenant.str("id"), "ci").await.str("rawKey");
    assert_eq!(first.call(Method::GET, "/api/v1/me", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    first.stop().await;

    let second = Server::start(config(&db.url)).await;
    let auth = bearer(&token);
    // The usage noted before the restart was written at shutdown (checked before this
    // server sees the key, so nothing is merely noted in its memory).
    let keys = second.call(Method::GET, &format!("/api/v1/tenants/{}/keys", tenant.str("id")), &[(auth.0, &auth.1)], None).await;
    assert!(keys.body[0]["lastUsedAt"].is_string(), "{keys:?}");
    assert_eq!(second.call(Method::GET, "/api/v1/me", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    let listed = second.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(listed.body[0]["phase"], "Ready", "re-applied to the in-memory cluster at start-up");
    second.stop().await;
    db.drop_database().await;
}
