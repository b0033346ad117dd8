//! Scoped and expiring API keys: a `read` key may only GET (403 otherwise), an expired key
//! answers 401 saying so, an expiry in the past is refused, and the key list shows both.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::agents::{SUPPORT_BOT, send};
use crate::support::{Answer, Backend, Server, on_both_backends, with_server};

on_both_backends!(read_keys_only_read, expired_keys_answer_401_saying_so);

async fn create_key(server: &Server, token: &str, tenant: &str, body: Value) -> Answer {
    server.call(Method::POST, &format!("/api/v1/tenants/{tenant}/keys"), &[("authorization", &format!("Bearer {token}"))], Some(&body)).await
}

async fn read_keys_only_read(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("scopes@example.com").await;
        let tenant = server.tenant(&token, "scopes").await.str("id");
        let writer = create_key(server, &token, &tenant, json!({"label": "writer"})).await;
        assert_eq!((writer.status, writer.body["scope"].as_str()), (StatusCode::CREATED, Some("write")), "write is the default: {writer:?}");
        assert!(writer.body.get("expiresAt").is_none(), "{writer:?}");
        let reader = create_key(server, &token, &tenant, json!({"label": "reader", "scope": "read"})).await;
        assert_eq!((reader.status, reader.body["scope"].as_str()), (StatusCode::CREATED, Some("read")), "{reader:?}");
        let (writer, reader) = (writer.str("rawKey"), reader.str("rawKey"));

        assert_eq!(send(server, Method::POST, "/api/v1/agents", &writer, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
        for path in ["/api/v1/agents", "/api/v1/agents/support-bot", "/api/v1/agents/support-bot/versions", "/api/v1/me"] {
            let answer = server.call(Method::GET, path, &[("x-api-key", &reader)], None).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
        }
        let refused = [
            send(server, Method::POST, "/api/v1/agents", &reader, "application/yaml", &SUPPORT_BOT.replace("support-bot", "other-bot")).await,
            send(server, Method::PUT, "/api/v1/agents/support-bot", &reader, "application/yaml", SUPPORT_BOT).await,
            server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &reader)], None).await,
            server.call(Method::POST, "/api/v1/agents/support-bot/rollback", &[("x-api-key", &reader)], Some(&json!({"version": 1}))).await,
        ];
        for answer in refused {
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
            assert!(answer.error().contains("read-only"), "{answer:?}");
        }
        let versions = server.call(Method::GET, "/api/v1/agents/support-bot/versions", &[("x-api-key", &writer)], None).await;
        assert_eq!(versions.body.as_array().map(Vec::len), Some(1), "the read key changed nothing");

        for bad in [json!({"label": "x", "scope": "admin"}), json!({"label": "x", "expiresAt": "tomorrow"}), json!({"label": "x", "scope": 1})] {
            let answer = create_key(server, &token, &tenant, bad.clone()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
            answer.error();
        }
    })
    .await;
}

async fn expired_keys_answer_401_saying_so(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.user("expiry@example.com").await;
        let tenant = server.tenant(&token, "expiry").await.str("id");
        let past = (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let refused = create_key(server, &token, &tenant, json!({"label": "late", "expiresAt": past})).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
        assert!(refused.error().contains("expiresAt"), "{refused:?}");

        let soon = Utc::now() + chrono::Duration::milliseconds(1500);
        let soon_text = soon.to_rfc3339_opts(SecondsFormat::Millis, true);
        let soon: chrono::DateTime<Utc> = soon_text.parse().unwrap();
        let created = create_key(server, &token, &tenant, json!({"label": "brief", "expiresAt": soon_text})).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        assert!(created.body["expiresAt"].is_string(), "{created:?}");
        let key = created.str("rawKey");
        assert_eq!(server.call(Method::GET, "/api/v1/agents", &[("x-api-key", &key)], None).await.status, StatusCode::OK, "works until it expires");

        let listed = server.call(Method::GET, &format!("/api/v1/tenants/{tenant}/keys"), &[("authorization", &format!("Bearer {token}"))], None).await;
        let shown = &listed.body.as_array().unwrap()[0];
        assert_eq!(shown["scope"], "write");
        assert_eq!(shown["expiresAt"].as_str().map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()), Some(soon), "{listed:?}");

        tokio::time::sleep((soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100)).await;
        let expired = server.call(Method::GET, "/api/v1/agents", &[("x-api-key", &key)], None).await;
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{expired:?}");
        assert!(expired.error().contains("expired"), "{expired:?}");
    })
    .await;
}
