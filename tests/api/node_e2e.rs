//! End to end against a real astromesh-node (PyPI `astromesh` 0.74.1), started here on a
//! free loopback port from the virtualenv `.ci/run` installs (`.venv-node`, or the one
//! `NEXUS_TEST_NODE_VENV` names). Without it the tests skip, unless `CI` is set: then a
//! missing node is a failure. Every tenant shares the one node (the in-memory cluster), so
//! the node is checked through its own API under each agent's node-side name.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::agents::{SUPPORT_BOT, get, running, send, tenant_with_key};
use crate::isolation::{helper, manifest};
use nexus_store_sea_orm::testing::fresh_sqlite;

use crate::support::{PASSWORD, Server, config};

/// A node process, killed when dropped.
pub(crate) struct Node {
    child: Child,
    port: u16,
    config_dir: PathBuf,
    venv: PathBuf,
}

pub(crate) fn venv() -> Option<PathBuf> {
    let venv = std::env::var_os("NEXUS_TEST_NODE_VENV").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-node"), PathBuf::from);
    if venv.join("bin/uvicorn").exists() {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no astromesh-node at {}: .ci/run installs it (python3 -m venv .venv-node; pip install --ignore-requires-python astromesh==0.74.1)",
        venv.display()
    );
    eprintln!("skipping the end-to-end test: no astromesh-node at {}", venv.display());
    None
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Node {
    pub(crate) async fn start(venv: PathBuf, port: u16) -> Self {
        let config_dir = std::env::temp_dir().join(format!("nexus-e2e-node-{port}"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let log = std::fs::File::create(config_dir.join("node.log")).unwrap();
        let child = Command::new(venv.join("bin/uvicorn"))
            .args(["astromesh.api.main:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .env("ASTROMESH_CONFIG_DIR", &config_dir)
            .env("ASTROMESH_PERSIST_AGENTS", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start uvicorn");
        let node = Self { child, port, config_dir, venv };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if reqwest::get(format!("{}/v1/health", node.url())).await.is_ok_and(|r| r.status().is_success()) {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the node did not answer /v1/health within 60 s; see {}", node.config_dir.join("node.log").display());
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The node's own list of agents.
    async fn agents(&self) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/v1/agents", self.url())).await.unwrap().json().await.unwrap();
        body["agents"].as_array().cloned().unwrap_or_default()
    }

    pub(crate) async fn agent(&self, name: &str) -> Option<Value> {
        self.agents().await.into_iter().find(|a| a["name"] == name)
    }

    /// `GET` on the node's API: the status and the JSON body.
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = reqwest::get(format!("{}{path}", self.url())).await.unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }

    /// Runs the agent the node knows as `name` once with `query`: with no model reachable
    /// the run fails, and the node still records its trace (the query in its root span).
    async fn run(&self, name: &str, query: &str) {
        let response =
            reqwest::Client::new().post(format!("{}/v1/agents/{name}/run", self.url())).json(&serde_json::json!({"query": query})).send().await.unwrap();
        assert_ne!(response.status(), StatusCode::NOT_FOUND, "the node runs {name}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The package's own sample manifests.
    fn samples(&self) -> Vec<PathBuf> {
        let lib = self.venv.join("lib");
        let mut samples: Vec<PathBuf> = std::fs::read_dir(&lib)
            .unwrap()
            .flatten()
            .map(|python| python.path().join("site-packages/astromesh/_bundled/config/agents"))
            .filter(|dir| dir.is_dir())
            .flat_map(|dir| std::fs::read_dir(dir).unwrap().flatten().map(|f| f.path()))
            .filter(|path| path.to_string_lossy().ends_with(".agent.yaml"))
            .collect();
        samples.sort();
        samples
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

/// Polls until `done` holds (at most 60 s: a retry after a long outage waits up to 30 s).
async fn eventually<F: AsyncFn() -> bool>(what: &str, done: F) {
    within(Duration::from_secs(60), what, done).await;
}

/// Polls until `done` holds, for at most `limit`.
async fn within<F: AsyncFn() -> bool>(limit: Duration, what: &str, done: F) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_a_real_node_and_survive_its_outage() {
    let Some(venv) = venv() else { return };
    let port = free_port();
    let mut node = Node::start(venv.clone(), port).await;
    let db = fresh_sqlite();
    let server = Server::start(nexus::config::ServeConfig {
        node: nexus::config::NodeKind::Http,
        node_url: node.url(),
        resync: Duration::from_secs(1).into(),
        ..config(&db.url)
    })
    .await;
    let (tenant, key) = tenant_with_key(&server, "e2e@example.com").await;
    let namespace = format!("tenant-{}", uuid_of(&tenant));

    // Deploy: Running with nodeAck, and the node itself says deployed, in our namespace.
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await.status, StatusCode::CREATED);
    eventually("support-bot Running", async || running(&get(&server, "/api/v1/agents/support-bot", &key).await.body)).await;
    let support_bot = node_name(&server, &key, "support-bot").await;
    let on_node = node.agent(&support_bot).await.expect("the node lists support-bot");
    assert_eq!((on_node["status"].as_str(), on_node["namespace"].as_str()), (Some("deployed"), Some(namespace.as_str())));
    let status = get(&server, "/api/v1/agents/support-bot/status", &key).await;
    assert_eq!((status.status, status.body["node"]["status"].as_str()), (StatusCode::OK, Some("deployed")), "{status:?}");
    assert_eq!(get(&server, "/api/v1/agents/support-bot/logs?lines=5", &key).await.status, StatusCode::OK);
    assert_eq!(get(&server, "/api/v1/agents/support-bot/metrics", &key).await.status, StatusCode::OK);

    // Update: the node holds the new manifest.
    let updated = send(&server, Method::PUT, "/api/v1/agents/support-bot", &key, "application/yaml", &SUPPORT_BOT.replace("1.0.0", "1.1.0")).await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    // (The node lists the version with Nexus's stamp of what it pushed.)
    let holds = |version: &Value, own: &str| version.as_str().and_then(nexus_ports::node_names::unstamped) == Some(own);
    eventually("the node holds version 1.1.0", async || node.agent(&support_bot).await.is_some_and(|a| holds(&a["version"], "1.1.0"))).await;
    let view = get(&server, "/api/v1/agents/support-bot/status", &key).await.body;
    assert_eq!(
        (view["node"]["version"].as_str(), view["node"]["manifest"]["metadata"]["version"].as_str()),
        (Some("1.1.0"), Some("1.1.0")),
        "no stamp for users: {view}"
    );

    // Delete: the node forgets it.
    assert_eq!(server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    eventually("the node forgot support-bot", async || node.agent(&support_bot).await.is_none()).await;

    // Every sample manifest the package ships is accepted.
    let samples = node.samples();
    assert!(samples.len() >= 5, "the package ships its samples: {samples:?}");
    let samples_owner = server.user("samples@example.com").await;
    let samples_tenant = server.tenant(&samples_owner, "samples").await.str("id");
    let samples_key = server.key(&samples_owner, &samples_tenant, "ci").await.str("rawKey");
    let mut names = Vec::new();
    for sample in &samples {
        let body = std::fs::read_to_string(sample).unwrap();
        let created = send(&server, Method::POST, "/api/v1/agents", &samples_key, "application/x-yaml", &body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}: {created:?}", sample.display());
        names.push(node_name(&server, &samples_key, &created.str("name")).await);
    }
    eventually("the node holds every sample", async || {
        let held = node.agents().await;
        names.iter().all(|n| held.iter().any(|a| &a["name"] == n))
    })
    .await;

    // Deleting their tenant makes the (shared) node forget them.
    let auth = ("authorization", format!("Bearer {samples_owner}"));
    assert_eq!(server.call(Method::DELETE, &format!("/api/v1/tenants/{samples_tenant}"), &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
    eventually("the node forgot every sample", async || {
        let held = node.agents().await;
        !names.iter().any(|n| held.iter().any(|a| &a["name"] == n))
    })
    .await;

    // Outage: 502 and Failed while the node is down; Running again once it is back,
    // with no API call but reads.
    let resilient = SUPPORT_BOT.replace("name: support-bot", "name: resilient-bot");
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", &resilient).await.status, StatusCode::CREATED);
    eventually("resilient-bot Running", async || running(&get(&server, "/api/v1/agents/resilient-bot", &key).await.body)).await;
    let resilient_bot = node_name(&server, &key, "resilient-bot").await;
    node.stop();
    let down = get(&server, "/api/v1/agents/resilient-bot/status", &key).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{down:?}");
    down.error();
    eventually("resilient-bot Failed", async || get(&server, "/api/v1/agents/resilient-bot", &key).await.body["status"]["phase"] == "Failed").await;
    let failed = get(&server, "/api/v1/agents/resilient-bot", &key).await.body;
    assert_eq!(failed["status"]["nodeAck"], false);
    assert_eq!(failed["status"]["message"], "the agent's node cannot be reached", "{failed}");

    node = Node::start(venv, port).await;
    eventually("resilient-bot Running again", async || running(&get(&server, "/api/v1/agents/resilient-bot", &key).await.body)).await;
    eventually("the restarted node holds resilient-bot", async || node.agent(&resilient_bot).await.is_some_and(|a| a["status"] == "deployed")).await;

    server.stop().await;
    drop(node);
    db.drop_database().await;
}

/// A node that restarts empty gets its agents back from the next look at its list (once
/// per resync period), with no API call: deployed there again within the period plus a
/// few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_restarted_empty_gets_its_agents_back_within_a_resync_period() {
    let Some(venv) = venv() else { return };
    let port = free_port();
    let mut node = Node::start(venv.clone(), port).await;
    let db = fresh_sqlite();
    let resync = Duration::from_secs(4);
    let server =
        Server::start(nexus::config::ServeConfig { node: nexus::config::NodeKind::Http, node_url: node.url(), resync: resync.into(), ..config(&db.url) }).await;
    let (_, key) = tenant_with_key(&server, "restart@example.com").await;
    let names = ["first-bot", "second-bot", "third-bot"];
    let mut on_node = Vec::new();
    for name in names {
        let manifest = SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}"));
        assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", &manifest).await.status, StatusCode::CREATED);
        eventually("Running", async || running(&get(&server, &format!("/api/v1/agents/{name}"), &key).await.body)).await;
        on_node.push(node_name(&server, &key, name).await);
    }
    let all_deployed = async |node: &Node| {
        let held = node.agents().await;
        on_node.iter().all(|name| held.iter().any(|a| &a["name"] == name && a["status"] == "deployed"))
    };
    assert!(all_deployed(&node).await);

    node.stop();
    node = Node::start(venv, port).await;
    assert!(node.agents().await.is_empty(), "the node restarted empty");
    within(resync + Duration::from_secs(10), "every agent back on the restarted node", async || all_deployed(&node).await).await;
    for name in names {
        eventually("Running", async || running(&get(&server, &format!("/api/v1/agents/{name}"), &key).await.body)).await;
    }

    server.stop().await;
    drop(node);
    db.drop_database().await;
}

/// The name the node knows the agent `name` of `key`'s tenant by.
async fn node_name(server: &Server, key: &str, name: &str) -> String {
    get(server, &format!("/api/v1/agents/{name}"), key).await.body["status"]["nodeAgentName"].as_str().expect("a node-side name").to_owned()
}

/// Two tenants deploy an agent of one name with different specs on the one real node: each
/// sees only its own manifest, traces and metrics, and deleting one tenant's agent, then
/// that whole tenant, leaves the other's deployed, as the node's own API shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_real_node_are_isolated() {
    let Some(venv) = venv() else { return };
    let node = Node::start(venv, free_port()).await;
    let db = fresh_sqlite();
    let server = Server::start(nexus::config::ServeConfig {
        node: nexus::config::NodeKind::Http,
        node_url: node.url(),
        resync: Duration::from_secs(1).into(),
        ..config(&db.url)
    })
    .await;
    let (mine, my_key) = tenant_with_key(&server, "mine@example.com").await;
    let (theirs, their_key) = tenant_with_key(&server, "theirs@example.com").await;
    let tenants = [(&my_key, "my-model", &mine), (&their_key, "their-model", &theirs)];

    // Each deploys `helper`, then `bot` (a tool and a chain naming the helper: a chain's
    // target must be on the node first), both with its own model.
    for (key, model, _) in tenants {
        assert_eq!(send(&server, Method::POST, "/api/v1/agents", key, "application/yaml", &helper(model)).await.status, StatusCode::CREATED);
        eventually("helper Running", async || running(&get(&server, "/api/v1/agents/helper", key).await.body)).await;
        assert_eq!(send(&server, Method::POST, "/api/v1/agents", key, "application/yaml", &manifest("bot", model)).await.status, StatusCode::CREATED);
    }
    let mut bots = Vec::new();
    let mut helpers = Vec::new();
    for (key, model, tenant) in tenants {
        eventually("bot Running", async || running(&get(&server, "/api/v1/agents/bot", key).await.body)).await;
        let (bot, helper) = (node_name(&server, key, "bot").await, node_name(&server, key, "helper").await);

        // On the node: its own manifest under its node-side name, naming its own helper.
        let (found, held) = node.get(&format!("/v1/agents/{bot}")).await;
        assert_eq!(found, StatusCode::OK, "{held}");
        assert_eq!((held["metadata"]["name"].as_str(), held["spec"]["model"]["primary"]["model"].as_str()), (Some(bot.as_str()), Some(model)));
        assert_eq!(held["metadata"]["namespace"], format!("tenant-{}", uuid_of(tenant)));
        assert_eq!(
            (held["spec"]["tools"][0]["agent"].as_str(), held["spec"]["chain"]["on_complete"][0]["agent"].as_str()),
            (Some(helper.as_str()), Some(helper.as_str()))
        );
        assert_eq!(node.agent(&bot).await.unwrap()["status"], "deployed");

        // Through Nexus: the same, in the tenant's names.
        let status = get(&server, "/api/v1/agents/bot/status", key).await.body;
        assert_eq!(status["nodeAgentName"], bot.as_str());
        let on_node = &status["node"];
        assert_eq!((on_node["name"].as_str(), on_node["status"].as_str()), (Some("bot"), Some("deployed")), "{status}");
        assert_eq!(
            (on_node["manifest"]["metadata"]["name"].as_str(), on_node["manifest"]["spec"]["model"]["primary"]["model"].as_str()),
            (Some("bot"), Some(model))
        );
        assert_eq!(
            (on_node["manifest"]["spec"]["tools"][0]["agent"].as_str(), on_node["manifest"]["spec"]["chain"]["on_complete"][0]["agent"].as_str()),
            (Some("helper"), Some("helper"))
        );
        bots.push(bot);
        helpers.push(helper);
    }
    assert_ne!(bots[0], bots[1]);

    // A chain the node cannot compile would fail every deploy on it: mine is held off the
    // node (Pending, saying why), and theirs still deploy.
    let broken = manifest("broken", "my-model").replace("mode: sequential", "mode: sideways");
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &my_key, "application/yaml", &broken).await.status, StatusCode::CREATED);
    eventually("broken held", async || get(&server, "/api/v1/agents/broken", &my_key).await.body["status"]["message"].is_string()).await;
    let held = get(&server, "/api/v1/agents/broken", &my_key).await.body;
    assert_eq!(held["status"]["phase"], "Pending", "{held}");
    assert_eq!(held["status"]["message"], "not on the node: spec.chain.mode must be sequential or parallel");
    assert_eq!(node.get(&format!("/v1/agents/{}", node_name(&server, &my_key, "broken").await)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&server, Method::POST, "/api/v1/agents", &their_key, "application/yaml", &manifest("late", "their-model")).await.status,
        StatusCode::CREATED
    );
    eventually("their late agent Running", async || running(&get(&server, "/api/v1/agents/late", &their_key).await.body)).await;

    // Runs of `helper` (the node 0.74.1 cannot run a chain registered through its API):
    // mine twice, theirs once; each sees only its own traces and metrics.
    node.run(&helpers[0], "asked by my-model's tenant").await;
    node.run(&helpers[0], "asked by my-model's tenant").await;
    node.run(&helpers[1], "asked by their-model's tenant").await;
    for ((key, model, _), runs) in tenants.into_iter().zip([2, 1]) {
        let logs = get(&server, "/api/v1/agents/helper/logs", key).await;
        assert_eq!(logs.status, StatusCode::OK, "{logs:?}");
        let traces = logs.body["traces"].as_array().unwrap();
        assert_eq!(traces.len(), runs, "{logs:?}");
        assert!(traces.iter().all(|t| t["agent"] == "helper"), "its own traces, in its names: {logs:?}");
        assert!(traces.iter().all(|t| t["spans"][0]["attributes"]["query"] == format!("asked by {model}'s tenant")), "its own runs: {logs:?}");
        let metrics = get(&server, "/api/v1/agents/helper/metrics?period=1h", key).await;
        assert_eq!(metrics.status, StatusCode::OK, "{metrics:?}");
        let body = &metrics.body;
        assert_eq!((body["agent"].as_str(), body["period"].as_str()), (Some("helper"), Some("1h")));
        assert_eq!(
            (body["metrics"]["runs"].as_u64(), body["metrics"]["errors"].as_u64()),
            (Some(runs as u64), Some(runs as u64)),
            "no model answers: every run fails"
        );
        assert!(body["metrics"]["latencyMs"]["p50"].as_f64().is_some_and(|ms| ms > 0.0) && body["metrics"]["latencyMs"]["max"].as_f64().is_some(), "{body}");
        assert_eq!(body["computedFrom"], serde_json::json!({"traces": runs, "complete": true}));
    }

    // Deleting my bot leaves theirs deployed on the node.
    assert_eq!(server.call(Method::DELETE, "/api/v1/agents/bot", &[("x-api-key", &my_key)], None).await.status, StatusCode::OK);
    eventually("the node forgot my bot", async || node.get(&format!("/v1/agents/{}", bots[0])).await.0 == StatusCode::NOT_FOUND).await;
    assert_eq!(node.agent(&bots[1]).await.expect("their bot stays")["status"], "deployed");
    assert!(running(&get(&server, "/api/v1/agents/bot", &their_key).await.body));

    // Deleting my tenant leaves theirs deployed on the node.
    let token = server.post("/auth/login", &serde_json::json!({"email": "mine@example.com", "password": PASSWORD})).await.str("accessToken");
    let deleted = server.call(Method::DELETE, &format!("/api/v1/tenants/{mine}"), &[("authorization", &format!("Bearer {token}"))], None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    eventually("the node forgot my helper", async || node.agent(&helpers[0]).await.is_none()).await;
    for name in [&bots[1], &helpers[1]] {
        assert_eq!(node.agent(name).await.expect("theirs stay")["status"], "deployed");
    }
    let status = get(&server, "/api/v1/agents/bot/status", &their_key).await.body;
    assert_eq!((status["phase"].as_str(), status["node"]["status"].as_str()), (Some("Running"), Some("deployed")), "{status}");
    assert_eq!(get(&server, "/api/v1/agents/helper/logs", &their_key).await.body["traces"].as_array().map(Vec::len), Some(1));

    server.stop().await;
    drop(node);
    db.drop_database().await;
}

/// The uuid of a `t_<hex>` id, hyphenated as in namespaces.
fn uuid_of(tenant: &str) -> String {
    let hex = tenant.trim_start_matches("t_");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// A run through Nexus reaches the real node under the agent's node-side name: with no
/// model reachable the node refuses it, and Nexus answers 502 with the node's reason (in
/// the tenant's names); the node recorded the run's trace all the same, so it shows in
/// the agent's logs and metrics. An agent the tenant does not have is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_through_nexus_to_a_real_node() {
    let Some(venv) = venv() else { return };
    let node = Node::start(venv, free_port()).await;
    let db = fresh_sqlite();
    let server = Server::start(nexus::config::ServeConfig {
        node: nexus::config::NodeKind::Http,
        node_url: node.url(),
        resync: Duration::from_secs(1).into(),
        run_timeout: Duration::from_secs(60).into(),
        ..config(&db.url)
    })
    .await;
    let (_, key) = tenant_with_key(&server, "runs-e2e@example.com").await;
    assert_eq!(send(&server, Method::POST, "/api/v1/agents", &key, "application/yaml", &helper("no-such-model")).await.status, StatusCode::CREATED);
    eventually("helper Running", async || running(&get(&server, "/api/v1/agents/helper", &key).await.body)).await;
    let node_side = node_name(&server, &key, "helper").await;
    assert_ne!(node_side, "helper", "the node knows it by its node-side name");

    let run = server
        .call(Method::POST, "/api/v1/agents/helper/run", &[("x-api-key", &key)], Some(&serde_json::json!({"query": "asked through nexus", "sessionId": "e2e"})))
        .await;
    assert_eq!(run.status, StatusCode::BAD_GATEWAY, "{run:?}");
    let reason = run.error();
    assert!(reason.starts_with("the agent's node refused the run (502 Bad Gateway): model_all_providers_failed"), "the node's reason: {reason}");
    assert!(!reason.contains(&node_side), "in the tenant's names: {reason}");

    let logs = get(&server, "/api/v1/agents/helper/logs", &key).await;
    assert_eq!(logs.status, StatusCode::OK, "{logs:?}");
    let traces = logs.body["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1, "the run's trace: {logs:?}");
    assert_eq!((traces[0]["agent"].as_str(), traces[0]["spans"][0]["attributes"]["query"].as_str()), (Some("helper"), Some("asked through nexus")));
    assert_eq!(get(&server, "/api/v1/agents/helper/metrics", &key).await.body["metrics"]["runs"], 1);

    let missing = server.call(Method::POST, "/api/v1/agents/ghost/run", &[("x-api-key", &key)], Some(&serde_json::json!({"query": "x"}))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    server.stop().await;
    drop(node);
    db.drop_database().await;
}
