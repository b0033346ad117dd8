//! Versions you can open and roll back to, and safe concurrent updates: every version keeps
//! its manifest; a rollback publishes an old one again; `ETag`, `If-Match` (412) and
//! `If-None-Match` (304) on agents.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::agents::{SUPPORT_BOT, get, send, tenant_with_key};
use crate::support::{Answer, Backend, Server, on_both_backends, with_configured_server};

on_both_backends!(versions_keep_their_manifest_and_roll_back, stale_tags_change_nothing);

/// The agent's `ETag`, asserting it is there and quoted.
fn tag(answer: &Answer) -> String {
    let tag = answer.headers.get("etag").unwrap_or_else(|| panic!("no ETag in {answer:?}")).to_str().unwrap().to_owned();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    tag
}

async fn call(server: &Server, method: Method, path: &str, key: &str, extra: &[(&str, &str)], body: Option<&serde_json::Value>) -> Answer {
    let mut headers = vec![("x-api-key", key)];
    headers.extend_from_slice(extra);
    server.call(method, path, &headers, body).await
}

async fn versions_keep_their_manifest_and_roll_back(backend: Backend) {
    with_configured_server(
        backend,
        |c| nexus::config::ServeConfig { max_versions: 3, ..c },
        async |server: &Server| {
            let (_, key) = tenant_with_key(server, "versions@example.com").await;
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
            let v2 = SUPPORT_BOT.replace("1.0.0", "2.0.0").replace("react", "plan_and_execute");
            assert_eq!(send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &v2).await.status, StatusCode::OK);

            // One version, with what it published (unknown fields and the tenant's namespace).
            let first = get(server, "/api/v1/agents/support-bot/versions/1", &key).await;
            assert_eq!(first.status, StatusCode::OK, "{first:?}");
            assert_eq!(
                (first.body["number"].as_u64(), first.body["version"].as_str(), first.body["author"].as_str()),
                (Some(1), Some("1.0.0"), Some(format!("key:{} (ci)", &nexus_ports::tokens::SecretDigest::of(&key).to_hex()[..8]).as_str()))
            );
            assert_eq!(first.body["manifest"]["spec"]["orchestration"]["pattern"], "react");
            assert_eq!(first.body["manifest"]["spec"]["x-extension"]["kept"], json!([1, 2]));
            assert!(first.body["manifest"]["metadata"]["namespace"].as_str().unwrap().starts_with("tenant-"));
            let listed = get(server, "/api/v1/agents/support-bot/versions", &key).await;
            assert_eq!(first.body["checksum"], listed.body[0]["checksum"]);
            for missing in ["/api/v1/agents/support-bot/versions/3", "/api/v1/agents/ghost/versions/1"] {
                let answer = get(server, missing, &key).await;
                assert_eq!(answer.status, StatusCode::NOT_FOUND, "{missing}: {answer:?}");
                answer.error();
            }
            for malformed in ["/api/v1/agents/support-bot/versions/0", "/api/v1/agents/support-bot/versions/x", "/api/v1/agents/support-bot/versions/-1"] {
                assert_eq!(get(server, malformed, &key).await.status, StatusCode::BAD_REQUEST, "{malformed}");
            }

            // A rollback publishes version 1's manifest as version 3, and answers as GET does.
            let rolled = call(server, Method::POST, "/api/v1/agents/support-bot/rollback", &key, &[], Some(&json!({"version": 1}))).await;
            assert_eq!(rolled.status, StatusCode::OK, "{rolled:?}");
            assert_eq!(
                (rolled.body["name"].as_str(), rolled.body["agentSpec"]["spec"]["orchestration"]["pattern"].as_str()),
                (Some("support-bot"), Some("react"))
            );
            let agent = get(server, "/api/v1/agents/support-bot", &key).await;
            assert_eq!(agent.body["agentSpec"], rolled.body["agentSpec"]);
            assert_eq!(tag(&agent), tag(&rolled));
            let history = get(server, "/api/v1/agents/support-bot/versions", &key).await.body;
            let numbers: Vec<(u64, &str)> =
                history.as_array().unwrap().iter().map(|v| (v["number"].as_u64().unwrap(), v["version"].as_str().unwrap())).collect();
            assert_eq!(numbers, [(1, "1.0.0"), (2, "2.0.0"), (3, "1.0.0")], "numbers only grow");
            assert_eq!(history[0]["checksum"], history[2]["checksum"]);

            // Past the retention (3 kept), version 1 is pruned: 404, to read or to roll back to.
            assert_eq!(send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &v2).await.status, StatusCode::OK);
            assert_eq!(get(server, "/api/v1/agents/support-bot/versions/1", &key).await.status, StatusCode::NOT_FOUND);
            let pruned = call(server, Method::POST, "/api/v1/agents/support-bot/rollback", &key, &[], Some(&json!({"version": 1}))).await;
            assert_eq!(pruned.status, StatusCode::NOT_FOUND, "{pruned:?}");
            assert!(pruned.error().contains("no version 1"), "{pruned:?}");
            let ghost = call(server, Method::POST, "/api/v1/agents/ghost/rollback", &key, &[], Some(&json!({"version": 1}))).await;
            assert_eq!(ghost.status, StatusCode::NOT_FOUND);
            for bad in [json!({"version": 0}), json!({"version": "one"}), json!({}), json!({"version": 1.5}), json!([1])] {
                let answer = call(server, Method::POST, "/api/v1/agents/support-bot/rollback", &key, &[], Some(&bad)).await;
                assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
                answer.error();
            }
            assert_eq!(get(server, "/api/v1/agents/support-bot/versions", &key).await.body.as_array().unwrap().len(), 3, "refusals published nothing");
        },
    )
    .await;
}

async fn stale_tags_change_nothing(backend: Backend) {
    with_configured_server(
        backend,
        |c| c,
        async |server: &Server| {
            let (_, key) = tenant_with_key(server, "etags@example.com").await;
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
            let path = "/api/v1/agents/support-bot";
            let first = tag(&get(server, path, &key).await);

            // If-None-Match: 304 without a body while the version is the same.
            let unchanged = call(server, Method::GET, path, &key, &[("if-none-match", &first)], None).await;
            assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED, "{unchanged:?}");
            assert_eq!((tag(&unchanged), &unchanged.body), (first.clone(), &serde_json::Value::Null));
            assert_eq!(call(server, Method::GET, path, &key, &[("if-none-match", "*")], None).await.status, StatusCode::NOT_MODIFIED);
            assert_eq!(call(server, Method::GET, path, &key, &[("if-none-match", "\"1-0\"")], None).await.status, StatusCode::OK);

            // If-Match with the current tag: the update goes through and the tag moves on.
            let v2 = SUPPORT_BOT.replace("1.0.0", "2.0.0");
            let headers = |tag: &str| vec![("x-api-key", key.clone()), ("content-type", "application/yaml".to_owned()), ("if-match", tag.to_owned())];
            let put = async |tag: &str, body: &str| {
                let headers = headers(tag);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                server.send_with(Method::PUT, path, &headers, Some(body.as_bytes().to_vec())).await
            };
            let updated = put(&first, &v2).await;
            assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
            let second = tag(&updated);
            assert_ne!(second, first);
            assert_eq!(call(server, Method::GET, path, &key, &[("if-none-match", &first)], None).await.status, StatusCode::OK, "changed since");

            // A stale tag: 412 for PUT, rollback and DELETE, and nothing changes.
            let stale = put(&first, &SUPPORT_BOT.replace("1.0.0", "3.0.0")).await;
            assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{stale:?}");
            assert!(stale.error().contains("current version"), "{stale:?}");
            let rollback = call(server, Method::POST, "/api/v1/agents/support-bot/rollback", &key, &[("if-match", &first)], Some(&json!({"version": 1}))).await;
            assert_eq!(rollback.status, StatusCode::PRECONDITION_FAILED, "{rollback:?}");
            let delete = call(server, Method::DELETE, path, &key, &[("if-match", &first)], None).await;
            assert_eq!(delete.status, StatusCode::PRECONDITION_FAILED, "{delete:?}");
            assert_eq!(put(&format!("W/{second}"), &v2).await.status, StatusCode::PRECONDITION_FAILED, "weak tags never match");
            let agent = get(server, path, &key).await;
            assert_eq!((agent.status, agent.body["agentSpec"]["metadata"]["version"].as_str(), tag(&agent)), (StatusCode::OK, Some("2.0.0"), second.clone()));
            assert_eq!(get(server, "/api/v1/agents/support-bot/versions", &key).await.body.as_array().unwrap().len(), 2);

            // Without If-Match, today's behaviour; with `*`, it must exist.
            assert_eq!(put("*", &v2).await.status, StatusCode::OK);
            let third = tag(&get(server, path, &key).await);
            let rolled = call(server, Method::POST, "/api/v1/agents/support-bot/rollback", &key, &[("if-match", &third)], Some(&json!({"version": 1}))).await;
            assert_eq!(rolled.status, StatusCode::OK, "{rolled:?}");
            let ghost = call(server, Method::DELETE, "/api/v1/agents/ghost", &key, &[("if-match", "*")], None).await;
            assert_eq!(ghost.status, StatusCode::NOT_FOUND);
            // An If-Match that is neither `*` nor entity tags is refused as the document
            // declares (400), never taken for a tag that does not match (412).
            for malformed in ["", "  ", "3-abc", "\"unterminated"] {
                let refused = call(server, Method::DELETE, path, &key, &[("if-match", malformed)], None).await;
                assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{malformed:?}: {refused:?}");
                assert_eq!(put(malformed, &v2).await.status, StatusCode::BAD_REQUEST, "{malformed:?}");
            }
            assert_eq!(get(server, path, &key).await.status, StatusCode::OK, "nothing deleted");

            // A tag of a deleted agent never matches the one created again under its name.
            let last = tag(&rolled);
            assert_eq!(call(server, Method::DELETE, path, &key, &[("if-match", &last)], None).await.status, StatusCode::OK);
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
            let reborn = tag(&get(server, path, &key).await);
            assert_ne!(reborn, first);
            assert_eq!(call(server, Method::DELETE, path, &key, &[("if-match", &first)], None).await.status, StatusCode::PRECONDITION_FAILED);
        },
    )
    .await;
}
