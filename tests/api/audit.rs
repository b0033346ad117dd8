//! The audit trails over HTTP: every change recorded with who did it, from where and in
//! which request; a user's own trail, kept after its tenants are gone; pages; nothing
//! recorded for a refused change; never a secret.

use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, PASSWORD, Server, on_both_backends, with_configured_server, with_server};

on_both_backends!(
    a_tenants_trail_names_each_change_its_actor_and_its_request,
    a_users_trail_keeps_its_sessions_and_the_tenants_it_deleted,
    trails_are_paged_newest_first_and_bounded,
    a_refused_change_records_nothing,
    the_source_address_is_the_one_trusted_proxies_forward
);

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn trail(server: &Server, path: &str, token: &str) -> Vec<Value> {
    let answer = server.get(path, Some(token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["events"].as_array().cloned().unwrap_or_default()
}

fn actions(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["action"].as_str().unwrap()).collect()
}

async fn a_tenants_trail_names_each_change_its_actor_and_its_request(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("audit-owner@example.com").await;
        let owner = server.get("/api/v1/me", Some(&token)).await.body["user"]["id"].as_str().unwrap().to_owned();
        let (auth, value) = bearer(&token);
        let created =
            server.call(Method::POST, "/api/v1/tenants", &[(auth, &value), ("x-request-id", "req-create-tenant")], Some(&json!({"displayName": "Org"}))).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let tenant = created.str("id");
        let key = server.key(&token, &tenant, "ci").await;
        let (raw, hash) = (key.str("rawKey"), key.str("hash"));
        let manifest = nexus_ports::testing::manifest_document("audited", "llama3.1:8b");
        let registered = server.call(Method::POST, "/api/v1/agents", &[("x-api-key", &raw), ("x-request-id", "req-agent")], Some(&manifest)).await;
        assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
        let scoped = [(auth, value.as_str()), ("x-tenant-id", tenant.as_str())];
        assert_eq!(server.call(Method::PUT, "/api/v1/agents/audited", &scoped, Some(&manifest)).await.status, StatusCode::OK);
        let rollback = server.call(Method::POST, "/api/v1/agents/audited/rollback", &scoped, Some(&json!({"version": 1}))).await;
        assert_eq!(rollback.status, StatusCode::OK, "{rollback:?}");
        assert_eq!(server.call(Method::DELETE, "/api/v1/agents/audited", &scoped, None).await.status, StatusCode::OK);
        assert_eq!(server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/{hash}"), &[(auth, &value)], None).await.status, StatusCode::OK);

        let path = format!("/api/v1/tenants/{tenant}/audit");
        let answer = server.get(&path, Some(&token)).await;
        let text = answer.body.to_string();
        let events = answer.body["events"].as_array().unwrap();
        assert_eq!(actions(events), ["key.revoke", "agent.delete", "agent.rollback", "agent.update", "agent.create", "key.create", "tenant.create"]);
        assert!(answer.body.get("nextCursor").is_none(), "one page: {text}");
        let by_action = |action: &str| events.iter().find(|e| e["action"] == action).unwrap().clone();
        let tenant_created = by_action("tenant.create");
        assert_eq!((tenant_created["actor"].as_str(), tenant_created["target"].as_str()), (Some(owner.as_str()), Some(tenant.as_str())));
        assert_eq!(tenant_created["requestId"], "req-create-tenant");
        assert_eq!(tenant_created["sourceIp"], "127.0.0.1");
        let agent_created = by_action("agent.create");
        assert_eq!(
            (agent_created["actor"].as_str(), agent_created["target"].as_str(), agent_created["requestId"].as_str()),
            (Some("key:ci"), Some("audited"), Some("req-agent"))
        );
        assert_eq!(by_action("agent.update")["actor"], owner.as_str());
        assert_eq!(by_action("agent.rollback")["target"], "audited");
        assert_eq!(by_action("key.create")["target"], hash.as_str());
        for event in events {
            assert!(event["id"].as_str().unwrap().starts_with("aud_") && event["at"].is_string() && event["requestId"].is_string(), "{event}");
        }
        for secret in [raw.as_str(), token.as_str(), "llama3.1:8b", "astromesh/v1"] {
            assert!(!text.contains(secret), "the trail shows no secret, token or manifest: {text}");
        }
        // A key reads no trail, not even its own tenant's.
        let refused = server.call(Method::GET, &path, &[("x-api-key", &server.key(&token, &tenant, "reader").await.str("rawKey"))], None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        // The user's own trail shows its tenant's creation, not its tenant's agents.
        assert_eq!(actions(&trail(server, "/api/v1/me/audit", &token).await), ["tenant.create", "user.register"]);
    })
    .await;
}

async fn a_users_trail_keeps_its_sessions_and_the_tenants_it_deleted(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let email = "audit-user@example.com";
        let first = server.register(email).await;
        assert_eq!(server.login(email, "not-the-password").await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(server.login("nobody@example.com", "not-the-password").await.status, StatusCode::UNAUTHORIZED);
        let session = server.login(email, PASSWORD).await;
        assert_eq!(server.post("/auth/logout", &json!({"refreshToken": session.str("refreshToken")})).await.status, StatusCode::NO_CONTENT);
        let token = first.str("accessToken");
        let tenant = server.tenant(&token, "Short-lived").await.str("id");
        let (auth, value) = bearer(&token);
        assert_eq!(server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}"), &[(auth, &value)], None).await.status, StatusCode::OK);
        let change = json!({"currentPassword": PASSWORD, "newPassword": "another-strong-password"});
        assert_eq!(server.call(Method::PUT, "/api/v1/me/password", &[(auth, &value)], Some(&change)).await.status, StatusCode::NO_CONTENT);
        let token = server.login(email, "another-strong-password").await.str("accessToken");
        let (auth, value) = bearer(&token);
        assert_eq!(server.call(Method::DELETE, "/api/v1/me/sessions", &[(auth, &value)], None).await.status, StatusCode::NO_CONTENT);
        let token = server.login(email, "another-strong-password").await.str("accessToken");

        let events = trail(server, "/api/v1/me/audit", &token).await;
        assert_eq!(
            actions(&events),
            [
                "user.login",
                "user.sessions_revoked",
                "user.login",
                "user.password_change",
                "tenant.delete",
                "tenant.create",
                "user.logout",
                "user.login",
                "user.login_failed",
                "user.register"
            ]
        );
        assert!(events.iter().filter(|e| e["action"].as_str().unwrap().starts_with("tenant.")).all(|e| e["target"] == tenant.as_str()));
        let text = serde_json::to_string(&events).unwrap();
        assert!(!text.contains("not-the-password") && !text.contains(PASSWORD) && !text.contains(&session.str("refreshToken")), "{text}");
        // The tenant is gone: its own trail is out of reach, as any tenant one does not own.
        assert_eq!(server.get(&format!("/api/v1/tenants/{tenant}/audit"), Some(&token)).await.status, StatusCode::FORBIDDEN);
    })
    .await;
}

async fn trails_are_paged_newest_first_and_bounded(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("audit-pages@example.com").await;
        let tenant = server.tenant(&token, "Paged").await.str("id");
        for n in 0..4 {
            server.key(&token, &tenant, &format!("k{n}")).await;
        }
        let path = format!("/api/v1/tenants/{tenant}/audit");
        let all = trail(server, &path, &token).await;
        assert_eq!(all.len(), 5);
        let mut paged = Vec::new();
        let mut next = format!("{path}?limit=2");
        loop {
            let page = server.get(&next, Some(&token)).await;
            assert_eq!(page.status, StatusCode::OK, "{page:?}");
            let events = page.body["events"].as_array().unwrap();
            assert!(events.len() <= 2);
            paged.extend(events.iter().cloned());
            match page.body.get("nextCursor").and_then(Value::as_str) {
                Some(cursor) => next = format!("{path}?limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(paged, all, "pages follow one another, newest first, without a gap or a repeat");
        for bad in ["limit=0", "limit=501", "limit=x", "cursor=nonsense", "cursor=c", "cursor=c10000000000000000"] {
            let answer = server.get(&format!("{path}?{bad}"), Some(&token)).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
            assert!(!answer.error().is_empty());
        }
        assert_eq!(server.get("/api/v1/me/audit?limit=500", Some(&token)).await.status, StatusCode::OK);
        assert_eq!(server.get("/api/v1/me/audit?limit=501", Some(&token)).await.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

async fn a_refused_change_records_nothing(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { max_tenants: 1, max_keys: 1, ..config },
        async |server: &Server| {
            let token = server.user("audit-refused@example.com").await;
            let tenant = server.tenant(&token, "Only").await.str("id");
            let (auth, value) = bearer(&token);
            let over = server.call(Method::POST, "/api/v1/tenants", &[(auth, &value)], Some(&json!({"displayName": "Second"}))).await;
            assert_eq!(over.status, StatusCode::CONFLICT);
            server.key(&token, &tenant, "one").await;
            let keys = format!("/api/v1/tenants/{tenant}/keys");
            assert_eq!(server.call(Method::POST, &keys, &[(auth, &value)], Some(&json!({"label": "two"}))).await.status, StatusCode::CONFLICT);
            let scoped = [(auth, value.as_str()), ("x-tenant-id", tenant.as_str())];
            let manifest = nexus_ports::testing::manifest_document("bot", "m");
            assert_eq!(server.call(Method::POST, "/api/v1/agents", &scoped, Some(&manifest)).await.status, StatusCode::CREATED);
            assert_eq!(server.call(Method::POST, "/api/v1/agents", &scoped, Some(&manifest)).await.status, StatusCode::CONFLICT);
            let renamed = nexus_ports::testing::manifest_document("other", "m");
            assert_eq!(server.call(Method::PUT, "/api/v1/agents/bot", &scoped, Some(&renamed)).await.status, StatusCode::CONFLICT);
            assert_eq!(server.call(Method::DELETE, "/api/v1/agents/ghost", &scoped, None).await.status, StatusCode::NOT_FOUND);
            assert_eq!(server.call(Method::DELETE, &format!("{keys}/{}", "0".repeat(64)), &[(auth, &value)], None).await.status, StatusCode::NOT_FOUND);
            let wrong = json!({"currentPassword": "not-the-password", "newPassword": "another-strong-password"});
            assert_eq!(server.call(Method::PUT, "/api/v1/me/password", &[(auth, &value)], Some(&wrong)).await.status, StatusCode::FORBIDDEN);

            let tenant_trail = trail(server, &format!("/api/v1/tenants/{tenant}/audit"), &token).await;
            assert_eq!(actions(&tenant_trail), ["agent.create", "key.create", "tenant.create"]);
            assert_eq!(actions(&trail(server, "/api/v1/me/audit", &token).await), ["tenant.create", "user.register"]);
        },
    )
    .await;
}

async fn the_source_address_is_the_one_trusted_proxies_forward(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()], ..config },
        async |server: &Server| {
            let body = json!({"email": "proxied@example.com", "password": PASSWORD});
            let registered = server
                .send_with(
                    Method::POST,
                    "/auth/register",
                    &[("content-type", "application/json"), ("x-forwarded-for", "203.0.113.9")],
                    Some(body.to_string().into_bytes()),
                )
                .await;
            assert_eq!(registered.status, StatusCode::CREATED);
            let events = trail(server, "/api/v1/me/audit", &registered.str("accessToken")).await;
            assert_eq!(events[0]["sourceIp"], "203.0.113.9", "{events:?}");
        },
    )
    .await;
    // From an untrusted peer the header is ignored.
    with_server(backend, async |server: &Server| {
        let body = json!({"email": "direct@example.com", "password": PASSWORD});
        let registered = server
            .send_with(
                Method::POST,
                "/auth/register",
                &[("content-type", "application/json"), ("x-forwarded-for", "203.0.113.9")],
                Some(body.to_string().into_bytes()),
            )
            .await;
        let events = trail(server, "/api/v1/me/audit", &registered.str("accessToken")).await;
        assert_eq!(events[0]["sourceIp"], "127.0.0.1");
    })
    .await;
}
