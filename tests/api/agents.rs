//! Agents over HTTP with the in-process stub node: the walk, the three media types,
//! validation, hostile YAML, the quota, restarts, and an unreachable node.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Answer, Backend, Server, config, database, on_both_backends, with_server};

on_both_backends!(
    walk_create_read_update_delete,
    manifests_come_as_yaml_x_yaml_or_json,
    invalid_manifests_list_every_problem,
    hostile_bodies_are_refused,
    the_quota_is_enforced,
    agents_come_back_running_after_a_restart,
    an_unreachable_node_answers_502_and_fails_the_agent
);

pub(crate) const SUPPORT_BOT: &str = r#"apiVersion: astromesh/v1
kind: Agent
metadata:
  name: support-bot
  version: "1.0.0"
  namespace: not-mine
spec:
  identity:
    display_name: "Support Bot"
  model:
    primary:
      provider: ollama
      model: "llama3.1:8b"
  orchestration:
    pattern: react
  x-extension:
    kept: [1, 2]
"#;

/// A tenant with an API key on `server`: (tenant id, raw key).
pub(crate) async fn tenant_with_key(server: &Server, email: &str) -> (String, String) {
    let token = server.user(email).await;
    let tenant = server.tenant(&token, "agents").await.str("id");
    let key = server.key(&token, &tenant, "ci").await.str("rawKey");
    (tenant, key)
}

/// Sends `body` with `content_type` to `path` with the API key.
pub(crate) async fn send(server: &Server, method: Method, path: &str, key: &str, content_type: &str, body: &str) -> Answer {
    server.send_with(method, path, &[("x-api-key", key), ("content-type", content_type)], Some(body.as_bytes().to_vec())).await
}

pub(crate) async fn get(server: &Server, path: &str, key: &str) -> Answer {
    server.call(Method::GET, path, &[("x-api-key", key)], None).await
}

/// Polls the agent until `done` holds of it (at most 10 s).
pub(crate) async fn wait_for(server: &Server, key: &str, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let agent = get(server, &format!("/api/v1/agents/{name}"), key).await;
        if agent.status == StatusCode::OK && done(&agent.body) {
            return agent.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("agent {name} never became {what}");
}

pub(crate) fn running(agent: &Value) -> bool {
    agent["status"]["phase"] == "Running" && agent["status"]["nodeAck"] == true
}

async fn walk_create_read_update_delete(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (tenant, key) = tenant_with_key(server, "ada@example.com").await;
        let created = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let namespace = created.str("namespace");
        assert!(namespace.starts_with("tenant-") && namespace.replace('-', "").ends_with(tenant.trim_start_matches("t_")));
        assert_eq!((created.body["name"].as_str(), created.body["version"].as_str()), (Some("support-bot"), Some("1.0.0")));
        assert!(created.body["createdAt"].is_string() && created.body["phase"].is_string());

        let agent = wait_for(server, &key, "support-bot", "Running", running).await;
        assert_eq!(agent["namespace"], namespace.as_str());
        assert_eq!(agent["agentSpec"]["metadata"]["namespace"], namespace.as_str(), "the tenant's namespace wins");
        assert_eq!(agent["agentSpec"]["spec"]["x-extension"]["kept"], json!([1, 2]), "unknown fields are kept");
        assert!(agent["status"]["lastSyncedAt"].is_string());

        let status = get(server, "/api/v1/agents/support-bot/status", &key).await;
        assert_eq!(status.status, StatusCode::OK, "{status:?}");
        assert_eq!((status.body["phase"].as_str(), status.body["nodeAck"].as_bool()), (Some("Running"), Some(true)));
        assert_eq!(status.body["node"]["status"], "deployed");

        let listed = get(server, "/api/v1/agents", &key).await;
        assert_eq!(listed.body.as_array().unwrap().len(), 1);
        assert_eq!(listed.body[0]["name"], "support-bot");
        for field in ["phase", "version", "createdAt", "updatedAt"] {
            assert!(!listed.body[0][field].is_null(), "{field}");
        }

        let updated_yaml = SUPPORT_BOT.replace("1.0.0", "1.1.0").replace("react", "plan_and_execute");
        let updated = send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &updated_yaml).await;
        assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
        assert_eq!(updated.body["agentSpec"]["metadata"]["version"], "1.1.0");
        let status = async || get(server, "/api/v1/agents/support-bot/status", &key).await.body;
        for _ in 0..200 {
            if status().await["node"]["manifest"]["spec"]["orchestration"]["pattern"] == "plan_and_execute" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status().await["node"]["manifest"]["spec"]["orchestration"]["pattern"], "plan_and_execute", "the node received the update");
        let versions = get(server, "/api/v1/agents/support-bot/versions", &key).await;
        let numbers: Vec<(i64, &str, &str)> = versions
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["number"].as_i64().unwrap(), v["version"].as_str().unwrap(), v["author"].as_str().unwrap()))
            .collect();
        // The author names the key by its hash prefix and label, as the audit trail does.
        let author = format!("key:{} (ci)", &nexus_ports::tokens::SecretDigest::of(&key).to_hex()[..8]);
        assert_eq!(numbers, [(1, "1.0.0", author.as_str()), (2, "1.1.0", author.as_str())]);
        assert_ne!(versions.body[0]["checksum"], versions.body[1]["checksum"]);

        let renamed =
            send(server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &SUPPORT_BOT.replace("name: support-bot", "name: other-bot"))
                .await;
        assert_eq!(renamed.status, StatusCode::CONFLICT);
        assert!(renamed.error().contains("differs"), "{renamed:?}");
        let ghost =
            send(server, Method::PUT, "/api/v1/agents/ghost-bot", &key, "application/yaml", &SUPPORT_BOT.replace("name: support-bot", "name: ghost-bot")).await;
        assert_eq!(ghost.status, StatusCode::NOT_FOUND);

        let logs = get(server, "/api/v1/agents/support-bot/logs?lines=10&level=info&since=2026-01-01T00:00:00Z", &key).await;
        assert_eq!((logs.status, logs.body["traces"].is_array()), (StatusCode::OK, true), "{logs:?}");
        assert_eq!(get(server, "/api/v1/agents/support-bot/logs?lines=0", &key).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(get(server, "/api/v1/agents/support-bot/logs?since=yesterday", &key).await.status, StatusCode::BAD_REQUEST);
        let metrics = get(server, "/api/v1/agents/support-bot/metrics?period=15m", &key).await;
        assert_eq!(metrics.status, StatusCode::OK, "{metrics:?}");
        let no_runs = json!({"runs": 0, "errors": 0, "latencyMs": {}});
        assert_eq!((&metrics.body["agent"], &metrics.body["period"], &metrics.body["metrics"]), (&json!("support-bot"), &json!("15m"), &no_runs));
        assert_eq!(metrics.body["computedFrom"], json!({"traces": 0, "complete": true}));
        assert_eq!(get(server, "/api/v1/agents/support-bot/metrics", &key).await.body["period"], "1h", "the default period");
        for period in ["366d", "8784h", "9999m", "9999s"] {
            assert_eq!(get(server, &format!("/api/v1/agents/support-bot/metrics?period={period}"), &key).await.status, StatusCode::OK, "{period}");
        }
        for period in ["soon", "0s", "400d", "367d", "8785h", "10000m"] {
            let refused = get(server, &format!("/api/v1/agents/support-bot/metrics?period={period}"), &key).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{period}");
            refused.error();
        }

        let deleted = server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await;
        assert_eq!((deleted.status, deleted.body.clone()), (StatusCode::OK, json!({"deleted": "support-bot"})));
        for path in ["/api/v1/agents/support-bot", "/api/v1/agents/support-bot/status", "/api/v1/agents/support-bot/versions"] {
            let gone = get(server, path, &key).await;
            assert_eq!(gone.status, StatusCode::NOT_FOUND, "{path}");
            gone.error();
        }
        assert_eq!(server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(server, "/api/v1/agents/Not_A_Name", &key).await.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

async fn manifests_come_as_yaml_x_yaml_or_json(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "ada@example.com").await;
        let yaml = |name: &str| SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}"));
        for (name, content_type, body) in [
            ("yaml-bot", "application/yaml", yaml("yaml-bot")),
            ("x-yaml-bot", "application/x-yaml", yaml("x-yaml-bot")),
            ("charset-bot", "application/yaml; charset=utf-8", yaml("charset-bot")),
            ("json-bot", "application/json", serde_yaml::from_str::<Value>(&yaml("json-bot")).unwrap().to_string()),
        ] {
            let created = send(server, Method::POST, "/api/v1/agents", &key, content_type, &body).await;
            assert_eq!(created.status, StatusCode::CREATED, "{content_type}: {created:?}");
            assert_eq!(created.body["name"], name);
        }
        let unsupported = send(server, Method::POST, "/api/v1/agents", &key, "text/plain", &yaml("plain-bot")).await;
        assert_eq!(unsupported.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        unsupported.error();
    })
    .await;
}

async fn invalid_manifests_list_every_problem(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "ada@example.com").await;
        let bad = "apiVersion: astromesh/v2\nkind: Agent\nmetadata:\n  name: Bad_Name\n  version: one\nspec:\n  model:\n    primary:\n      provider: ollama\n";
        let refused = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", bad).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.error().starts_with("invalid manifest: apiVersion"), "{refused:?}");
        let fields: Vec<&str> = refused.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["apiVersion", "metadata.name", "metadata.version", "spec.model.primary.model"]);
        for (what, body) in [
            ("not YAML", "apiVersion: [unclosed"),
            ("empty", ""),
            ("a list", "- 1\n- 2\n"),
            ("two documents", "a: 1\n---\nb: 2\n"),
            ("no model", "apiVersion: astromesh/v1\nkind: Agent\nmetadata:\n  name: bot\nspec:\n  model: {}\n"),
        ] {
            let answer = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", body).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{what}: {answer:?}");
            answer.error();
        }
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/json", "{\"apiVersion\":").await.status, StatusCode::BAD_REQUEST);
        assert!(get(server, "/api/v1/agents", &key).await.body.as_array().unwrap().is_empty(), "nothing invalid was stored");
    })
    .await;
}

async fn hostile_bodies_are_refused(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "ada@example.com").await;
        // "Billion laughs": nine levels of nine aliases each.
        let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let mut previous = 'a';
        for level in 'b'..='i' {
            let refs = vec![format!("*{previous}"); 9].join(",");
            bomb.push_str(&format!("{level}: &{level} [{refs}]\n"));
            previous = level;
        }
        let answer = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &bomb).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
        // The parser's own repetition limit stops this one before the expansion bound does.
        assert!(answer.error().contains("repetition limit") || answer.error().contains("expands to more than"), "{answer:?}");
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        for content_type in ["application/yaml", "application/json"] {
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, content_type, &deep).await.status, StatusCode::BAD_REQUEST, "{content_type}");
        }
        let huge = format!("{SUPPORT_BOT}  padding: \"{}\"\n", "x".repeat(1024 * 1024));
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &huge).await.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status,
            StatusCode::CREATED,
            "the server is still fine"
        );
    })
    .await;
}

async fn the_quota_is_enforced(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let server = Server::start(nexus::config::ServeConfig { max_agents: 2, ..config(&db.url) }).await;
    let (_, key) = tenant_with_key(&server, "ada@example.com").await;
    for name in ["one", "two"] {
        let body = SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}"));
        assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", &body).await.status, StatusCode::CREATED);
    }
    let third = send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await;
    assert_eq!(third.status, StatusCode::CONFLICT);
    assert_eq!(third.error(), "the tenant has reached its quota of 2 agents");
    assert_eq!(server.call(Method::DELETE, "/api/v1/agents/one", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    assert_eq!(
        send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status,
        StatusCode::CREATED,
        "room again after a deletion"
    );
    server.stop().await;
    db.drop_database().await;
}

async fn agents_come_back_running_after_a_restart(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    // The in-memory cluster, which forgets everything with its process (the database
    // cluster keeps its objects: `replica_processes`).
    let config = |url: &str| nexus::config::ServeConfig { cluster: Some(nexus::config::ClusterKind::Memory), ..config(url) };
    let first = Server::start(config(&db.url)).await;
    let (_, key) = tenant_with_key(&first, "ada@example.com").await;
    assert_eq!(send(&first, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
    wait_for(&first, &key, "support-bot", "Running", running).await;
    first.stop().await;

    // A new process: empty in-memory cluster, a stub node that knows nothing.
    let second = Server::start(config(&db.url)).await;
    let agent = wait_for(&second, &key, "support-bot", "Running again", running).await;
    assert_eq!(agent["agentSpec"]["spec"]["x-extension"]["kept"], json!([1, 2]));
    assert_eq!(get(&second, "/api/v1/agents/support-bot/versions", &key).await.body.as_array().unwrap().len(), 1);
    second.stop().await;
    db.drop_database().await;
}

async fn an_unreachable_node_answers_502_and_fails_the_agent(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let unreachable = nexus::config::ServeConfig { node: nexus::config::NodeKind::Http, node_url: "http://127.0.0.1:1".to_owned(), ..config(&db.url) };
    let server = Server::start(unreachable).await;
    let (_, key) = tenant_with_key(&server, "ada@example.com").await;
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
    for path in ["status", "logs", "metrics"] {
        let answer = get(&server, &format!("/api/v1/agents/support-bot/{path}"), &key).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{path}: {answer:?}");
        assert_eq!(answer.error(), "the agent's node cannot be reached", "the node's address is not for clients");
    }
    let failed = wait_for(&server, &key, "support-bot", "Failed", |a| a["status"]["phase"] == "Failed").await;
    assert_eq!(failed["status"]["nodeAck"], false);
    assert_eq!(failed["status"]["message"], "the agent's node cannot be reached");
    // Deletion is not blocked by the node being gone.
    assert_eq!(server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    server.stop().await;
    db.drop_database().await;
}
