//! Quotas: tenants per user, keys per tenant, versions kept per agent. Racing creations
//! never exceed a quota; over it the answer is 409 naming the quota.

use futures_util::future::join_all;
use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::agents::{SUPPORT_BOT, get, send, tenant_with_key};
use crate::support::{Backend, Server, on_both_backends, with_configured_server};

on_both_backends!(the_tenant_quota_holds_under_a_race, the_key_quota_holds_under_a_race, old_versions_are_pruned_and_numbers_go_on);

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn the_tenant_quota_holds_under_a_race(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { max_tenants: 3, ..config },
        async |server: &Server| {
            let token = server.user("ada@example.com").await;
            let auth = bearer(&token);
            let create = async || server.call(Method::POST, "/api/v1/tenants", &[(auth.0, &auth.1)], Some(&json!({"displayName": "racer"}))).await;
            let answers = join_all((0..8).map(|_| create())).await;
            let created = answers.iter().filter(|a| a.status == StatusCode::CREATED).count();
            assert_eq!(created, 3, "{answers:?}");
            for refused in answers.iter().filter(|a| a.status != StatusCode::CREATED) {
                assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
                assert_eq!(refused.error(), "tenant quota reached: a user may own at most 3 tenants");
            }
            let listed = server.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await;
            assert_eq!(listed.body.as_array().unwrap().len(), 3);
            // The quota is per user; and deleting a tenant makes room again.
            server.tenant(&server.user("bob@example.com").await, "bob's").await;
            let id = listed.body[0]["id"].as_str().unwrap();
            assert_eq!(server.call(Method::DELETE, &format!("/api/v1/tenants/{id}"), &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
            assert_eq!(create().await.status, StatusCode::CREATED);
        },
    )
    .await;
}

async fn the_key_quota_holds_under_a_race(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { max_keys: 2, ..config },
        async |server: &Server| {
            let token = server.user("ada@example.com").await;
            let auth = bearer(&token);
            let tenant = server.tenant(&token, "org").await.str("id");
            let path = format!("/api/v1/tenants/{tenant}/keys");
            let create = async || server.call(Method::POST, &path, &[(auth.0, &auth.1)], Some(&json!({"label": "racer"}))).await;
            let answers = join_all((0..6).map(|_| create())).await;
            assert_eq!(answers.iter().filter(|a| a.status == StatusCode::CREATED).count(), 2, "{answers:?}");
            for refused in answers.iter().filter(|a| a.status != StatusCode::CREATED) {
                assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
                assert_eq!(refused.error(), "API key quota reached: a tenant may have at most 2 keys");
            }
            // Revoking one makes room again; another tenant has a quota of its own.
            let hash = answers.iter().find(|a| a.status == StatusCode::CREATED).unwrap().str("hash");
            assert_eq!(server.call(Method::DELETE, &format!("{path}/{hash}"), &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
            assert_eq!(create().await.status, StatusCode::CREATED);
            let other = server.tenant(&token, "other").await.str("id");
            server.key(&token, &other, "ci").await;
        },
    )
    .await;
}

async fn old_versions_are_pruned_and_numbers_go_on(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { max_versions: 3, ..config },
        async |server: &Server| {
            let (_, key) = tenant_with_key(server, "ada@example.com").await;
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
            for minor in 1..=4 {
                let body = SUPPORT_BOT.replace("version: \"1.0.0\"", &format!("version: \"1.{minor}.0\""));
                let updated = send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &body).await;
                assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
            }
            let versions = get(server, "/api/v1/agents/support-bot/versions", &key).await;
            let kept: Vec<(u64, String)> =
                versions.body.as_array().unwrap().iter().map(|v| (v["number"].as_u64().unwrap(), v["version"].as_str().unwrap().to_owned())).collect();
            assert_eq!(kept, [(3, "1.2.0".to_owned()), (4, "1.3.0".to_owned()), (5, "1.4.0".to_owned())], "the newest three, oldest first");
            let body = SUPPORT_BOT.replace("version: \"1.0.0\"", "version: \"2.0.0\"");
            send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &body).await;
            let numbers: Vec<u64> =
                get(server, "/api/v1/agents/support-bot/versions", &key).await.body.as_array().unwrap().iter().map(|v| v["number"].as_u64().unwrap()).collect();
            assert_eq!(numbers, [4, 5, 6], "numbers are never reused");
        },
    )
    .await;
}
