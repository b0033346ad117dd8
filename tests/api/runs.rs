//! Runs through the control plane with the in-process stub node: the node's answer, the
//! tenant's names, validation, and 404 for an agent the tenant does not have. (The real
//! node, its refusal and its trace: `node_e2e`.)

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::agents::{SUPPORT_BOT, running, send, tenant_with_key, wait_for};
use crate::support::{Backend, Server, config, database, on_both_backends, with_server};

on_both_backends!(runs_reach_the_agents_node, an_unreachable_node_fails_the_run_with_502);

async fn runs_reach_the_agents_node(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "runs@example.com").await;
        let (_, their_key) = tenant_with_key(server, "others@example.com").await;
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
        wait_for(server, &key, "support-bot", "Running", running).await;
        let run = async |key: &str, name: &str, body: serde_json::Value| {
            server.call(Method::POST, &format!("/api/v1/agents/{name}/run"), &[("x-api-key", key)], Some(&body)).await
        };

        let answered = run(&key, "support-bot", json!({"query": "hello", "sessionId": "s-1", "context": {"user": "ada"}})).await;
        assert_eq!(answered.status, StatusCode::OK, "{answered:?}");
        assert_eq!((answered.body["answer"].as_str(), answered.body["blocked"].as_bool()), (Some("(stub node) hello"), Some(false)));
        assert_eq!(answered.body["steps"], json!([]));
        assert_eq!(run(&key, "support-bot", json!({"query": "again", "sessionId": null})).await.status, StatusCode::OK);

        let missing = run(&key, "ghost", json!({"query": "hello"})).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
        assert_eq!(run(&their_key, "support-bot", json!({"query": "hello"})).await.status, StatusCode::NOT_FOUND, "another tenant's agent");
        for bad in [json!({}), json!({"query": ""}), json!({"query": 1}), json!({"query": "x", "sessionId": "a b"}), json!({"query": "x", "context": [1]})] {
            let answer = run(&key, "support-bot", bad.clone()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
            answer.error();
        }
    })
    .await;
}

async fn an_unreachable_node_fails_the_run_with_502(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let unreachable = nexus::config::ServeConfig { node: nexus::config::NodeKind::Http, node_url: "http://127.0.0.1:1".to_owned(), ..config(&db.url) };
    let server = Server::start(unreachable).await;
    let (_, key) = tenant_with_key(&server, "down@example.com").await;
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
    let answer = server.call(Method::POST, "/api/v1/agents/support-bot/run", &[("x-api-key", &key)], Some(&json!({"query": "hello"}))).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    assert_eq!(answer.error(), "the agent's node cannot be reached", "the node's address is not for clients");
    server.stop().await;
    db.drop_database().await;
}
