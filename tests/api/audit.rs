//! The audit trails over HTTP: every change recorded with who did it, from where and in
//! which request; a user's own trail, kept after its tenants are gone; pages; nothing
//! recorded for a refused change; never a secret.

use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, PASSWORD, Server, config, database, on_both_backends, on_postgres, with_configured_server, with_server};

on_both_backends!(
    a_tenants_trail_names_each_change_its_actor_and_its_request,
    a_users_trail_keeps_its_sessions_and_the_tenants_it_deleted,
    trails_are_paged_newest_first_and_bounded,
    a_refused_change_records_nothing,
    the_source_address_is_the_one_trusted_proxies_forward,
    keys_with_one_label_are_told_apart,
    request_ids_are_the_servers_own,
    cursors_are_opaque_and_bound_to_their_trail_and_caller,
    refusals_are_recorded_in_the_trail_they_targeted,
    a_flood_of_refusals_is_one_counted_event
);
// Several replicas share PostgreSQL only: SQLite serves one process.
on_postgres!(replicas_count_one_actors_refusals_in_one_event);

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
        let owner_actor = format!("{owner} (audit-owner@example.com)");
        assert_eq!((tenant_created["actor"].as_str(), tenant_created["target"].as_str()), (Some(owner_actor.as_str()), Some(tenant.as_str())));
        assert_eq!(tenant_created["requestId"].as_str(), created.header("x-request-id").as_deref(), "the server's own id");
        assert_eq!(tenant_created["correlationId"], "req-create-tenant", "the client's id, kept apart");
        assert_eq!(tenant_created["sourceIp"], "127.0.0.1");
        let agent_created = by_action("agent.create");
        let key_actor = format!("key:{} (ci)", &hash[..8]);
        assert_eq!(
            (agent_created["actor"].as_str(), agent_created["target"].as_str(), agent_created["correlationId"].as_str()),
            (Some(key_actor.as_str()), Some("audited"), Some("req-agent"))
        );
        assert_eq!(agent_created["requestId"].as_str(), registered.header("x-request-id").as_deref());
        assert_eq!(by_action("agent.update")["actor"], owner_actor.as_str());
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
        for bad in ["limit=0", "limit=501", "limit=x", "cursor=nonsense", "cursor=c", "cursor=c10000000000000000", "cursor=c5"] {
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

/// Two keys may share a label; their changes name each by its hash prefix, in the trail and
/// in the versions' authors alike.
async fn keys_with_one_label_are_told_apart(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("twins@example.com").await;
        let tenant = server.tenant(&token, "Twins").await.str("id");
        let (first, second) = (server.key(&token, &tenant, "alice-write").await, server.key(&token, &tenant, "alice-write").await);
        let manifest = nexus_ports::testing::manifest_document("twin", "m");
        assert_eq!(server.call(Method::POST, "/api/v1/agents", &[("x-api-key", &first.str("rawKey"))], Some(&manifest)).await.status, StatusCode::CREATED);
        assert_eq!(server.call(Method::PUT, "/api/v1/agents/twin", &[("x-api-key", &second.str("rawKey"))], Some(&manifest)).await.status, StatusCode::OK);
        let actor = |key: &crate::support::Answer| format!("key:{} (alice-write)", &key.str("hash")[..8]);
        let (first_actor, second_actor) = (actor(&first), actor(&second));
        assert_ne!(first_actor, second_actor);
        let events = trail(server, &format!("/api/v1/tenants/{tenant}/audit"), &token).await;
        let by_action = |action: &str| events.iter().find(|e| e["action"] == action).unwrap()["actor"].as_str().unwrap().to_owned();
        assert_eq!((by_action("agent.create"), by_action("agent.update")), (first_actor.clone(), second_actor.clone()));
        let versions = server.call(Method::GET, "/api/v1/agents/twin/versions", &[("x-api-key", &first.str("rawKey"))], None).await;
        let authors: Vec<&str> = versions.body.as_array().unwrap().iter().map(|v| v["author"].as_str().unwrap()).collect();
        assert_eq!(authors, [first_actor.as_str(), second_actor.as_str()], "{versions:?}");
    })
    .await;
}

/// The id of a request is the server's, random: a client's `X-Request-ID` is kept and echoed
/// as the correlation id, never taken as the request's id.
async fn request_ids_are_the_servers_own(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("ids@example.com").await;
        let (auth, value) = bearer(&token);
        let mut ids = Vec::new();
        for name in ["One", "Two"] {
            let created =
                server.call(Method::POST, "/api/v1/tenants", &[(auth, &value), ("x-request-id", "reused-id")], Some(&json!({"displayName": name}))).await;
            assert_eq!(created.status, StatusCode::CREATED);
            assert_eq!(created.header("x-correlation-id").as_deref(), Some("reused-id"), "echoed apart");
            let id = created.header("x-request-id").unwrap();
            assert!(id != "reused-id" && id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            let events = trail(server, &format!("/api/v1/tenants/{}/audit", created.str("id")), &token).await;
            assert_eq!((events[0]["requestId"].as_str(), events[0]["correlationId"].as_str()), (Some(id.as_str()), Some("reused-id")));
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1], "two requests sending one id still have two ids");
        // Consecutive ids share no visible counter: they differ in most of their digits.
        let (a, b) = (ids[0].as_bytes(), ids[1].as_bytes());
        assert!(a.iter().zip(b).filter(|(x, y)| x != y).count() > 16, "{ids:?}");
        // A correlation id that is not 1 to 128 visible characters is dropped.
        let long = server.call(Method::GET, "/api/v1/me", &[(auth, &value), ("x-request-id", &"x".repeat(129))], None).await;
        assert_eq!((long.status, long.header("x-correlation-id")), (StatusCode::OK, None));
    })
    .await;
}

/// A cursor tells nothing of the service (no global counter), and is refused with 400 on
/// another trail, or from another caller.
async fn cursors_are_opaque_and_bound_to_their_trail_and_caller(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("cursor-owner@example.com").await;
        let other = server.user("cursor-other@example.com").await;
        let (first, second) = (server.tenant(&token, "First").await.str("id"), server.tenant(&token, "Second").await.str("id"));
        for tenant in [&first, &second] {
            server.key(&token, tenant, "a").await;
            server.key(&token, tenant, "b").await;
        }
        server.tenant(&other, "Theirs").await;
        let page = |path: String, token: String| async move { server.get(&path, Some(&token)).await };
        let cursor_of = async |path: &str, token: &str| page(format!("{path}?limit=1"), token.to_owned()).await.str("nextCursor");
        let first_path = format!("/api/v1/tenants/{first}/audit");
        let cursor = cursor_of(&first_path, &token).await;
        // Sealed (80 hex digits: the last event's id and time and a tag), not a counter such as `c88`.
        assert!(cursor.len() == 80 && cursor.bytes().all(|b| b.is_ascii_hexdigit()), "opaque, not a counter: {cursor}");
        assert_eq!(page(format!("{first_path}?limit=1&cursor={cursor}"), token.clone()).await.status, StatusCode::OK);
        let elsewhere = page(format!("/api/v1/tenants/{second}/audit?cursor={cursor}"), token.clone()).await;
        assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST, "another tenant's cursor: {elsewhere:?}");
        elsewhere.error();
        assert_eq!(page(format!("/api/v1/me/audit?cursor={cursor}"), token.clone()).await.status, StatusCode::BAD_REQUEST, "a tenant's on the user's");
        let mine = cursor_of("/api/v1/me/audit", &token).await;
        assert_eq!(page(format!("/api/v1/me/audit?cursor={mine}"), token.clone()).await.status, StatusCode::OK);
        assert_eq!(page(format!("/api/v1/me/audit?cursor={mine}"), other.clone()).await.status, StatusCode::BAD_REQUEST, "another caller's");
        // Altered by one character: refused.
        let last = mine.chars().last().unwrap();
        let altered = format!("{}{}", &mine[..mine.len() - 1], if last == 'A' { 'B' } else { 'A' });
        assert_eq!(page(format!("/api/v1/me/audit?cursor={altered}"), token.clone()).await.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

/// Polls the trail at `path` until `holds` says yes (refusals are written off the request
/// path, within a few seconds).
async fn eventually(server: &Server, path: &str, token: &str, what: &str, holds: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let events = trail(server, path, token).await;
        if holds(&events) {
            return events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {events:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn find<'a>(events: &'a [Value], action: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["action"] == action)
}

/// What an owner needs to see: another user reaching for the tenant, a read-only key
/// trying to write, an expired key and a revoked key being used, and (in the user's own
/// trail) a refresh token replayed, its session revoked.
async fn refusals_are_recorded_in_the_trail_they_targeted(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("refusal-owner@example.com").await;
        let owner = server.get("/api/v1/me", Some(&token)).await.body["user"]["id"].as_str().unwrap().to_owned();
        let intruder_session = server.register("intruder@example.com").await;
        let intruder = intruder_session.str("accessToken");
        let intruder_id = intruder_session.body["user"]["id"].as_str().unwrap().to_owned();
        let tenant = server.tenant(&token, "Targeted").await.str("id");
        let path = format!("/api/v1/tenants/{tenant}/audit");

        // Cross-tenant: by header and by path.
        let (auth, value) = bearer(&intruder);
        assert_eq!(server.call(Method::GET, "/api/v1/agents", &[(auth, &value), ("x-tenant-id", &tenant)], None).await.status, StatusCode::FORBIDDEN);
        assert_eq!(server.get(&format!("/api/v1/tenants/{tenant}/keys"), Some(&intruder)).await.status, StatusCode::FORBIDDEN);
        // A read-only key writing.
        let reader = server
            .call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/keys"),
                &[(bearer(&token).0, &bearer(&token).1)],
                Some(&json!({"label": "reader", "scope": "read"})),
            )
            .await;
        let manifest = nexus_ports::testing::manifest_document("bot", "m");
        assert_eq!(server.call(Method::POST, "/api/v1/agents", &[("x-api-key", &reader.str("rawKey"))], Some(&manifest)).await.status, StatusCode::FORBIDDEN);
        // A revoked key.
        let revoked = server.key(&token, &tenant, "gone").await;
        let revoke = format!("/api/v1/tenants/{tenant}/keys/{}", revoked.str("hash"));
        assert_eq!(server.call(Method::DELETE, &revoke, &[(bearer(&token).0, &bearer(&token).1)], None).await.status, StatusCode::OK);
        assert_eq!(server.call(Method::GET, "/api/v1/agents", &[("x-api-key", &revoked.str("rawKey"))], None).await.status, StatusCode::UNAUTHORIZED);
        // An expired key.
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        let brief = server
            .call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/keys"),
                &[(bearer(&token).0, &bearer(&token).1)],
                Some(&json!({"label": "brief", "expiresAt": soon})),
            )
            .await;
        assert_eq!(brief.status, StatusCode::CREATED);
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(server.call(Method::GET, "/api/v1/agents", &[("x-api-key", &brief.str("rawKey"))], None).await.status, StatusCode::UNAUTHORIZED);

        let events = eventually(server, &path, &token, "every refusal is in the tenant's trail", |events| {
            ["access.cross_tenant", "access.read_only_key", "access.revoked_key", "access.expired_key"].iter().all(|action| find(events, action).is_some())
        })
        .await;
        let crossing = find(&events, "access.cross_tenant").unwrap();
        assert_eq!(crossing["actor"], format!("{intruder_id} (intruder@example.com)"));
        assert_eq!((crossing["target"].as_str(), crossing["count"].as_u64()), (Some(tenant.as_str()), Some(2)), "{crossing}");
        let writing = find(&events, "access.read_only_key").unwrap();
        assert_eq!(writing["actor"], format!("key:{} (reader)", &reader.str("hash")[..8]));
        assert_eq!(find(&events, "access.revoked_key").unwrap()["actor"], format!("key:{} (gone)", &revoked.str("hash")[..8]));
        assert_eq!(find(&events, "access.expired_key").unwrap()["actor"], format!("key:{} (brief)", &brief.str("hash")[..8]));
        assert!(events.iter().all(|e| e["requestId"].is_string()), "{events:?}");
        let text = serde_json::to_string(&events).unwrap();
        for secret in [reader.str("rawKey"), revoked.str("rawKey"), brief.str("rawKey"), intruder.clone()] {
            assert!(!text.contains(&secret), "no secret in the trail");
        }
        // The intruder's own trail does not show the owner's tenant events.
        let theirs = trail(server, "/api/v1/me/audit", &intruder).await;
        assert!(theirs.iter().all(|e| e["actor"].as_str().unwrap().starts_with(&intruder_id)), "{theirs:?}");

        // A replayed refresh token: the user's own trail.
        let session = server.login("refusal-owner@example.com", PASSWORD).await;
        assert_eq!(server.post("/auth/refresh", &json!({"refreshToken": session.str("refreshToken")})).await.status, StatusCode::OK);
        assert_eq!(server.post("/auth/refresh", &json!({"refreshToken": session.str("refreshToken")})).await.status, StatusCode::UNAUTHORIZED);
        let fresh = server.login("refusal-owner@example.com", PASSWORD).await.str("accessToken");
        let mine =
            eventually(server, "/api/v1/me/audit", &fresh, "the replay is in the user's trail", |events| find(events, "user.refresh_reused").is_some()).await;
        let reused = find(&mine, "user.refresh_reused").unwrap();
        assert_eq!(reused["actor"], format!("{owner} (refusal-owner@example.com)"));
        assert!(!serde_json::to_string(&mine).unwrap().contains(&session.str("refreshToken")));
    })
    .await;
}

/// An attacker repeating a refused request leaves one event per actor and cause per
/// minute, with how many times it was refused.
async fn a_flood_of_refusals_is_one_counted_event(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("flood-owner@example.com").await;
        let tenant = server.tenant(&token, "Flooded").await.str("id");
        let reader = server
            .call(
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/keys"),
                &[(bearer(&token).0, &bearer(&token).1)],
                Some(&json!({"label": "reader", "scope": "read"})),
            )
            .await;
        for n in 0..60 {
            let path = format!("/api/v1/agents/bot-{n}");
            assert_eq!(server.call(Method::DELETE, &path, &[("x-api-key", &reader.str("rawKey"))], None).await.status, StatusCode::FORBIDDEN);
        }
        let path = format!("/api/v1/tenants/{tenant}/audit");
        let events = eventually(server, &path, &token, "all 60 refusals counted", |events| {
            events.iter().filter(|e| e["action"] == "access.read_only_key").map(|e| e["count"].as_u64().unwrap_or(0)).sum::<u64>() == 60
        })
        .await;
        let refusals = events.iter().filter(|e| e["action"] == "access.read_only_key").count();
        // One per minute: two if the run straddled a minute's end.
        assert!((1..=2).contains(&refusals), "{events:#?}");
        assert_eq!(events.len(), refusals + 2, "with tenant.create and key.create, nothing else: {events:#?}");
    })
    .await;
}

/// Two replicas refusing the same key in the same minute add to one event; each replica's
/// cursor is good on the other.
async fn replicas_count_one_actors_refusals_in_one_event(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let (a, b) = (Server::start(config(&db.url)).await, Server::start(config(&db.url)).await);
    let token = a.user("replicas-owner@example.com").await;
    let tenant = a.tenant(&token, "Shared").await.str("id");
    let reader = a
        .call(
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/keys"),
            &[(bearer(&token).0, &bearer(&token).1)],
            Some(&json!({"label": "reader", "scope": "read"})),
        )
        .await;
    let manifest = nexus_ports::testing::manifest_document("bot", "m");
    for server in [&a, &b, &a, &b, &b] {
        assert_eq!(server.call(Method::POST, "/api/v1/agents", &[("x-api-key", &reader.str("rawKey"))], Some(&manifest)).await.status, StatusCode::FORBIDDEN);
    }
    let path = format!("/api/v1/tenants/{tenant}/audit");
    let counted = |events: &[Value]| events.iter().filter(|e| e["action"] == "access.read_only_key").map(|e| e["count"].as_u64().unwrap_or(0)).sum::<u64>();
    let events = eventually(&b, &path, &token, "both replicas' refusals counted", |events| counted(events) == 5).await;
    let refusals = events.iter().filter(|e| e["action"] == "access.read_only_key").count();
    assert!((1..=2).contains(&refusals), "one event a minute, whichever replica refused: {events:#?}");
    let cursor = a.get(&format!("{path}?limit=1"), Some(&token)).await.str("nextCursor");
    assert_eq!(b.get(&format!("{path}?limit=1&cursor={cursor}"), Some(&token)).await.status, StatusCode::OK, "a cursor is good on every replica");
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}
