//! Tenants sharing one node (the in-memory cluster and the stub node): two tenants deploy
//! an agent of the same name with different specs; each sees only its own, under its own
//! node-side name, and deleting one tenant's agent, or the whole tenant, leaves the other's.
//! The same against a real astromesh-node is in `node_e2e.rs`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::agents::{get, running, send, tenant_with_key, wait_for};
use crate::support::{Backend, PASSWORD, Server, on_both_backends, with_server};

on_both_backends!(tenants_sharing_a_node_see_only_their_own_agent);

/// A manifest named `name` using `model`, with a tool invoking the agent `helper` and a
/// chain handing over to it.
pub(crate) fn manifest(name: &str, model: &str) -> String {
    format!(
        r#"apiVersion: astromesh/v1
kind: Agent
metadata:
  name: {name}
  version: "1.0.0"
spec:
  model:
    primary:
      provider: ollama
      model: "{model}"
  tools:
    - name: ask_helper
      type: agent
      agent: helper
      description: "Ask the helper"
  chain:
    mode: sequential
    on_complete:
      - agent: helper
"#
    )
}

/// A plain agent named `helper` using `model`.
pub(crate) fn helper(model: &str) -> String {
    format!(
        r#"apiVersion: astromesh/v1
kind: Agent
metadata:
  name: helper
spec:
  model:
    primary:
      provider: ollama
      model: "{model}"
"#
    )
}

/// The node's view of `name` as `key`'s tenant sees it.
async fn view(server: &Server, key: &str, name: &str) -> Value {
    let status = get(server, &format!("/api/v1/agents/{name}/status"), key).await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    status.body
}

async fn tenants_sharing_a_node_see_only_their_own_agent(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (mine, my_key) = tenant_with_key(server, "mine@example.com").await;
        let (_, their_key) = tenant_with_key(server, "theirs@example.com").await;
        for (key, model) in [(&my_key, "my-model"), (&their_key, "their-model")] {
            assert_eq!(send(server, Method::POST, "/api/v1/agents", key, "application/yaml", &helper(model)).await.status, StatusCode::CREATED);
            let created = send(server, Method::POST, "/api/v1/agents", key, "application/yaml", &manifest("bot", model)).await;
            assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        }
        let mut node_names = Vec::new();
        for (key, model) in [(&my_key, "my-model"), (&their_key, "their-model")] {
            let agent = wait_for(server, key, "bot", "Running", running).await;
            let status = view(server, key, "bot").await;
            let node_name = status["nodeAgentName"].as_str().unwrap().to_owned();
            assert_eq!(agent["status"]["nodeAgentName"], node_name.as_str(), "the agent's status names it too");
            assert!(node_name != "bot" && node_name.starts_with("bot-") && node_name.len() <= 63, "{node_name}");
            let on_node = &status["node"];
            assert_eq!((on_node["name"].as_str(), on_node["status"].as_str()), (Some("bot"), Some("deployed")), "{status}");
            let spec = &on_node["manifest"]["spec"];
            assert_eq!(spec["model"]["primary"]["model"], model, "its own manifest, not the other tenant's");
            assert_eq!(on_node["manifest"]["metadata"]["name"], "bot", "read back in the tenant's names");
            assert_eq!((spec["tools"][0]["agent"].as_str(), spec["chain"]["on_complete"][0]["agent"].as_str()), (Some("helper"), Some("helper")));
            assert_eq!(agent["agentSpec"]["spec"]["tools"][0]["agent"], "helper", "the stored manifest is the tenant's own");
            node_names.push(node_name);
        }
        assert_ne!(node_names[0], node_names[1], "one name, two node-side names");

        // The longest agent name still makes a node-side name of at most 63 characters.
        let long = "a".repeat(63);
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &my_key, "application/yaml", &manifest(&long, "m")).await.status, StatusCode::CREATED);
        let long_node_name = view(server, &my_key, &long).await["nodeAgentName"].as_str().unwrap().to_owned();
        assert_eq!(long_node_name.len(), 63, "{long_node_name}");

        // Deleting my agent, then my whole tenant, leaves theirs on the node.
        assert_eq!(server.call(Method::DELETE, "/api/v1/agents/bot", &[("x-api-key", &my_key)], None).await.status, StatusCode::OK);
        let token = server.post("/auth/login", &json!({"email": "mine@example.com", "password": PASSWORD})).await.str("accessToken");
        let deleted = server.call(Method::DELETE, &format!("/api/v1/tenants/{mine}"), &[("authorization", &format!("Bearer {token}"))], None).await;
        assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
        for _ in 0..20 {
            // Several passes of the loop: whatever it does to my agents, theirs stay.
            let theirs = view(server, &their_key, "bot").await;
            assert_eq!((theirs["phase"].as_str(), theirs["node"]["status"].as_str()), (Some("Running"), Some("deployed")), "{theirs}");
            assert_eq!(theirs["node"]["manifest"]["spec"]["model"]["primary"]["model"], "their-model");
            assert_eq!(view(server, &their_key, "helper").await["node"]["status"], "deployed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}
