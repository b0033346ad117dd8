//! Manifests that cannot hurt: YAML aliases bounded while parsing, one nesting limit for
//! every format that every accepted manifest reads back within, a manifest budget per
//! tenant, and stored rows that are trusted, a corrupt one reported for its agent alone.

use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::agents::{SUPPORT_BOT, get, running, send, tenant_with_key, wait_for};
use crate::support::{Backend, Server, config, database, on_both_backends, with_configured_server, with_server};

/// The bound on a manifest's compact JSON.
const BOUND: usize = 1024 * 1024;

on_both_backends!(
    aliases_expanding_past_the_bound_are_refused_and_modest_ones_kept,
    the_nesting_limit_holds_for_every_format_and_deep_manifests_read_back,
    each_tenant_has_a_manifest_budget,
    a_corrupt_row_is_reported_for_its_agent_alone
);

/// "Billion laughs" of a few KiB: five levels of ten aliases over a 30-byte string, about
/// 3 MB once expanded, put where a manifest may carry anything.
fn alias_bomb() -> String {
    let mut bomb = String::from("apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: laughs}\nspec:\n  model: {primary: {provider: ollama, model: m}}\n");
    bomb.push_str(&format!("  a: &a [{}]\n", ["\"lollollollollollollollollollol\""; 10].join(",")));
    for (level, previous) in ['b', 'c', 'd', 'e', 'f'].into_iter().zip(['a', 'b', 'c', 'd', 'e']) {
        bomb.push_str(&format!("  {level}: &{level} [{}]\n", vec![format!("*{previous}"); 10].join(",")));
    }
    bomb
}

async fn aliases_expanding_past_the_bound_are_refused_and_modest_ones_kept(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "ada@example.com").await;
        let bomb = alias_bomb();
        assert!(bomb.len() < 10 * 1024, "a small body: {}", bomb.len());
        let refused = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &bomb).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
        assert_eq!(refused.error(), "the manifest expands to more than 1048576 bytes of JSON (at least 1048584 measured)");
        assert_eq!(get(server, "/api/v1/agents/laughs", &key).await.status, StatusCode::NOT_FOUND, "nothing was stored");

        let modest = "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: echo}\nspec:\n  model:\n    primary: &m {provider: ollama, model: m}\n    fallback: *m\n  tags: &t [a, b]\n  more: [*t, *t]\n";
        let created = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", modest).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let agent = get(server, "/api/v1/agents/echo", &key).await;
        assert_eq!(agent.body["agentSpec"]["spec"]["model"]["fallback"], json!({"provider": "ollama", "model": "m"}), "aliases are expanded");
        assert_eq!(agent.body["agentSpec"]["spec"]["more"], json!([["a", "b"], ["a", "b"]]));
    })
    .await;
}

/// A valid manifest named `name` that nests exactly `levels` deep (the root is level 1).
fn nested(name: &str, levels: usize) -> Value {
    let mut inner = json!("bottom");
    for _ in 0..levels - 2 {
        inner = json!({"down": inner});
    }
    json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "deep": inner}})
}

async fn the_nesting_limit_holds_for_every_format_and_deep_manifests_read_back(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let first = Server::start(config(&db.url)).await;
    let (_, key) = tenant_with_key(&first, "ada@example.com").await;
    let limit = nexus_ports::agents::MAX_DEPTH;
    assert_eq!(nexus_ports::agents::depth(&nested("x", limit)), limit);
    for (content_type, render) in
        [("application/json", Value::to_string as fn(&Value) -> String), ("application/yaml", |v: &Value| serde_yaml::to_string(v).unwrap())]
    {
        let name = if content_type == "application/json" { "deep-json" } else { "deep-yaml" };
        let too_deep = send(&first, Method::POST, "/api/v1/agents", &key, content_type, &render(&nested(name, limit + 1))).await;
        assert_eq!(too_deep.status, StatusCode::BAD_REQUEST, "{content_type}: {too_deep:?}");
        assert_eq!(too_deep.error(), "the manifest nests deeper than 64 levels");
        let at_limit = send(&first, Method::POST, "/api/v1/agents", &key, content_type, &render(&nested(name, limit))).await;
        assert_eq!(at_limit.status, StatusCode::CREATED, "{content_type}: {at_limit:?}");
        let updated = send(&first, Method::PUT, &format!("/api/v1/agents/{name}"), &key, content_type, &render(&nested(name, limit + 1))).await;
        assert_eq!(updated.status, StatusCode::BAD_REQUEST, "an update is held to the same limit");
    }
    let deep = wait_for(&first, &key, "deep-json", "Running", running).await;
    assert_eq!(deep["agentSpec"]["spec"]["deep"], nested("deep-json", limit)["spec"]["deep"], "read back whole");
    let list = get(&first, "/api/v1/agents", &key).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    first.stop().await;

    let second = Server::start(config(&db.url)).await;
    for name in ["deep-json", "deep-yaml"] {
        let agent = wait_for(&second, &key, name, "Running after a restart", running).await;
        assert_eq!(agent["agentSpec"]["spec"]["deep"], nested(name, limit)["spec"]["deep"]);
    }
    assert_eq!(get(&second, "/api/v1/agents", &key).await.status, StatusCode::OK);
    second.stop().await;
    db.drop_database().await;
}

/// SUPPORT_BOT named `name`, padded to about `bytes`.
fn padded(name: &str, bytes: usize) -> String {
    format!("{}  padding: \"{}\"\n", SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}")), "x".repeat(bytes))
}

async fn each_tenant_has_a_manifest_budget(backend: Backend) {
    let budget = |config| ServeConfig { max_tenant_manifest_bytes: 10_000, ..config };
    with_configured_server(backend, budget, async |server: &Server| {
        let (_, key) = tenant_with_key(server, "ada@example.com").await;
        for name in ["one", "two"] {
            assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &padded(name, 4000)).await.status, StatusCode::CREATED);
        }
        let third = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &padded("three", 4000)).await;
        assert_eq!(third.status, StatusCode::CONFLICT, "{third:?}");
        assert_eq!(third.error(), "the tenant's manifests would take more than its budget of 10000 bytes");
        let grown = send(server, Method::PUT, "/api/v1/agents/two", &key, "application/yaml", &padded("two", 7000)).await;
        assert_eq!(grown.status, StatusCode::CONFLICT, "an update counts too: {grown:?}");
        assert_eq!(send(server, Method::PUT, "/api/v1/agents/two", &key, "application/yaml", &padded("two", 100)).await.status, StatusCode::OK);
        assert_eq!(send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &padded("three", 4000)).await.status, StatusCode::CREATED);

        let (_, other) = tenant_with_key(server, "bob@example.com").await;
        assert_eq!(
            send(server, Method::POST, "/api/v1/agents", &other, "application/yaml", &padded("one", 4000)).await.status,
            StatusCode::CREATED,
            "the budget is the tenant's own"
        );
    })
    .await;
}

async fn a_corrupt_row_is_reported_for_its_agent_alone(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    // The in-memory cluster, which a new process fills from the registry: the corrupt row
    // is what it reads back. (The database cluster keeps the manifest it was given.)
    let config = |url: &str| nexus::config::ServeConfig { cluster: Some(nexus::config::ClusterKind::Memory), ..config(url) };
    let first = Server::start(config(&db.url)).await;
    let (_, key) = tenant_with_key(&first, "ada@example.com").await;
    for name in ["alpha", "beta", "gamma"] {
        let body = SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}"));
        assert_eq!(send(&first, Method::POST, "/api/v1/agents", &key, "application/yaml", &body).await.status, StatusCode::CREATED);
    }
    first.stop().await;

    // By hand: beta's manifest no longer parses; alpha's breaks a rule of today (no model)
    // but was stored, so it is trusted as it is.
    let execute = nexus_store_sea_orm::testing::execute_sql;
    execute(&db.url, "UPDATE agents SET manifest = '{\"apiVersion\": [[[' WHERE name = 'beta'").await;
    let old = r#"{"apiVersion":"astromesh/v1","kind":"Agent","metadata":{"name":"alpha"},"spec":{"model":{}}}"#;
    execute(&db.url, &format!("UPDATE agents SET manifest = '{old}' WHERE name = 'alpha'")).await;

    let second = Server::start(config(&db.url)).await;
    let alpha = wait_for(&second, &key, "alpha", "Running", running).await;
    assert_eq!(alpha["agentSpec"]["spec"]["model"], json!({}), "a stored manifest is not checked again");
    wait_for(&second, &key, "gamma", "Running", running).await;
    let beta = wait_for(&second, &key, "beta", "Failed", |agent| agent["status"]["phase"] == "Failed").await;
    assert_eq!(beta["agentSpec"], Value::Null);
    assert!(beta["status"]["message"].as_str().unwrap().contains("stored manifest of this agent cannot be read"), "{beta}");
    assert!(!beta.to_string().contains("EOF"), "the parser's detail stays in the log: {beta}");
    let list = get(&second, "/api/v1/agents", &key).await;
    assert_eq!(list.status, StatusCode::OK);
    let phases: Vec<(&str, &str)> = list.body.as_array().unwrap().iter().map(|a| (a["name"].as_str().unwrap(), a["phase"].as_str().unwrap())).collect();
    assert_eq!(phases, [("alpha", "Running"), ("beta", "Failed"), ("gamma", "Running")]);

    // Its owner repairs it with a new manifest, or deletes it.
    let repaired = send(&second, Method::PUT, "/api/v1/agents/beta", &key, "application/yaml", &SUPPORT_BOT.replace("name: support-bot", "name: beta")).await;
    assert_eq!(repaired.status, StatusCode::OK, "{repaired:?}");
    wait_for(&second, &key, "beta", "Running once repaired", running).await;
    second.stop().await;
    db.drop_database().await;
}

/// A manifest in `namespace` whose compact JSON takes exactly `bytes`: `list` (given as
/// YAML text and as the JSON it means) anchored once and repeated by alias, then a padding
/// string to make up the exact length. Returns the YAML text, a few KiB at most, and the
/// document it means.
fn exactly(name: &str, namespace: &str, list_yaml: &str, list: &Value, bytes: usize) -> (String, Value) {
    let document = |copies: usize, pad: usize| {
        json!({
            "apiVersion": "astromesh/v1",
            "kind": "Agent",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "list": list, "lists": vec![list.clone(); copies], "pad": "x".repeat(pad)},
        })
    };
    let length = |value: &Value| serde_json::to_string(value).expect("JSON").len();
    let (base, one) = (length(&document(0, 0)), length(list));
    let copies = (bytes - base - 1) / (one + 1);
    let pad = bytes - length(&document(copies, 0));
    let value = document(copies, pad);
    assert_eq!(length(&value), bytes);
    let yaml = format!(
        "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  model: {{primary: {{provider: ollama, model: m}}}}\n  list: &l {list_yaml}\n  lists: [{}]\n  pad: \"{}\"\n",
        vec!["*l"; copies].join(", "),
        "x".repeat(pad)
    );
    (yaml, value)
}

/// Creates manifests whose JSON takes exactly the bound (accepted, read back as sent) and
/// one byte more (refused, saying what was measured), built from `list`.
/// `items` (as YAML and as the JSON they mean) are repeated a hundred times in the list.
async fn the_bound_is_exact_for(server: &Server, token: &str, what: &str, items_yaml: &str, items: &Value) {
    let tenant = server.tenant(token, &format!("{what}-tenant")).await;
    let namespace = tenant.str("namespace");
    let key_for_tenant = server.key(token, &tenant.str("id"), "bound").await.str("rawKey");
    let list_yaml = format!("[{}]", vec![items_yaml; 100].join(", "));
    let list = Value::Array((0..100).flat_map(|_| items.as_array().expect("a list").clone()).collect());
    let (list_yaml, list) = (list_yaml.as_str(), &list);
    let (yaml, value) = exactly(&format!("{what}-yaml"), &namespace, list_yaml, list, BOUND);
    assert!(yaml.len() < BOUND / 8, "the YAML text is small, its aliases expand: {}", yaml.len());
    let created = send(server, Method::POST, "/api/v1/agents", &key_for_tenant, "application/yaml", &yaml).await;
    assert_eq!(created.status, StatusCode::CREATED, "{what}: exactly {BOUND} bytes of JSON is within the bound: {created:?}");
    let read = get(server, &format!("/api/v1/agents/{what}-yaml"), &key_for_tenant).await;
    assert_eq!(read.body["agentSpec"], value, "{what}: read back as sent");

    let (json_name, json_value) = (format!("{what}-json"), exactly(&format!("{what}-json"), &namespace, list_yaml, list, BOUND).1);
    let text = serde_json::to_string(&json_value).expect("JSON");
    assert_eq!(text.len(), BOUND);
    let created = send(server, Method::POST, "/api/v1/agents", &key_for_tenant, "application/json", &text).await;
    assert_eq!(created.status, StatusCode::CREATED, "{what}: a JSON body at the bound: {created:?}");
    assert_eq!(get(server, &format!("/api/v1/agents/{json_name}"), &key_for_tenant).await.status, StatusCode::OK);

    let (past, _) = exactly(&format!("{what}-past"), &namespace, list_yaml, list, BOUND + 1);
    let refused = send(server, Method::POST, "/api/v1/agents", &key_for_tenant, "application/yaml", &past).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{what}: one byte past the bound: {refused:?}");
    assert_eq!(refused.error(), format!("the manifest expands to more than {BOUND} bytes of JSON (at least {} measured)", BOUND + 1));
    assert_eq!(get(server, &format!("/api/v1/agents/{what}-past"), &key_for_tenant).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_expanded_size_bound_counts_numbers_and_strings_as_json_takes_them() {
    let roomy = |config| ServeConfig { max_tenant_manifest_bytes: 64 * 1024 * 1024, ..config };
    with_configured_server(Backend::Sqlite, roomy, async |server: &Server| {
        let token = server.user("ada@example.com").await;
        // Numbers take their digits (and sign): small ones were charged 21 bytes each.
        the_bound_is_exact_for(server, &token, "numbers", "7, -12, 0.5, 100000, 0, 3", &json!([7, -12, 0.5, 100000, 0, 3])).await;
        // Strings take their quotes and escapes: a tab two bytes, a control character six.
        let strings = json!(["a\tb", "\u{1}", "quote \" and \\", "é", ""]);
        the_bound_is_exact_for(server, &token, "strings", r#""a\tb", "\x01", "quote \" and \\", "é", """#, &strings).await;

        // The manifest of the report: about 290 KB of YAML, small number lists in block
        // style, about 270 KB as JSON; it was refused as "more than 1048576 bytes".
        let (_, key) = tenant_with_key(server, "bob@example.com").await;
        let mut yaml = String::from(
            "apiVersion: astromesh/v1\nkind: Agent\nmetadata: {name: series}\nspec:\n  model: {primary: {provider: ollama, model: m}}\n  series:\n",
        );
        while yaml.len() < 289_000 {
            yaml.push_str("    - [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]\n");
        }
        let created = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", &yaml).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    })
    .await;
}
