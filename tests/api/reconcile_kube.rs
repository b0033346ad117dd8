//! The core's reconcile loop over the Kubernetes backend, against a mocked API server
//! asserting every request.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::Method;
use nexus::app::leadership::reconcile_while_leading;
use nexus::app::{ReconcilePorts, Reconciler};
use nexus_cluster_kube::fixtures::{self, Expect, anything, mocked};
use nexus_node_stub::StubNode;
use nexus_ports::agents::{Agent, AgentManifest};
use nexus_ports::identity::UserId;
use nexus_ports::ports::{Clock, MockAgentStore, MockTenantStore, NodeProxy};
use nexus_ports::tenancy::{Tenant, TenantId};
use nexus_ports::testing;
use serde_json::{Value, json};

const RESYNC: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

/// A clock standing still at [`t0`].
struct StillClock;

impl Clock for StillClock {
    fn now(&self) -> DateTime<Utc> {
        t0()
    }
}

fn manifest() -> AgentManifest {
    testing::manifest("bot", "m")
}

const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";

fn endpoint() -> String {
    format!("http://astromesh-node.{NS}.svc:8000")
}

fn tenant() -> Tenant {
    Tenant { id: TenantId::from_uuid("0f0f0f0f-0000-4000-8000-000000000001".parse().unwrap()), max_agents: 5, ..testing::tenant(UserId::generate()) }
}

fn agent(deleting: bool) -> Value {
    let mut metadata = json!({"name": "bot", "namespace": NS, "generation": 1, "resourceVersion": "5", "finalizers": ["nexus.astromesh.io/agent-cleanup"]});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    }
    json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata, "spec": {"agentSpec": manifest().document().unwrap()}})
}

/// What every pass does first: provision the tenant (its resources are there and its node
/// available: nothing to write), find no tenant deletion to finish, and list the agents.
fn reads(agent: Value) -> Vec<Expect> {
    let mut script = fixtures::provisioned(NS);
    script.push(fixtures::no_tenant_deletions());
    script.push(Expect {
        method: Method::GET,
        uri: "/apis/nexus.astromesh.io/v1alpha1/nexusagents?".to_owned(),
        body: anything,
        answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {}, "items": [agent]})),
    });
    script
}

/// The reads, then the Deploying status, then a status the test checks.
fn deploying_then(status: fn(&Value)) -> Vec<Expect> {
    let uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot/status?&force=true&fieldManager=nexus");
    let mut script = reads(agent(false));
    script.push(Expect { method: Method::PATCH, uri: uri.clone(), body: |b| assert_eq!(b["status"]["phase"], "Deploying"), answer: (200, agent(false)) });
    script.push(Expect { method: Method::PATCH, uri, body: status, answer: (200, agent(false)) });
    script
}

/// One pass of a reconciler over the scripted API server and `node`; returns the wait.
async fn pass(script: Vec<Expect>, node: Arc<StubNode>) -> Duration {
    let (cluster, scenario) = mocked(script);
    pass_on(cluster, scenario, node).await
}

/// One pass of a reconciler over `cluster`, whose API server plays `scenario`.
async fn pass_on(cluster: nexus_cluster_kube::KubeCluster, scenario: tokio::task::JoinHandle<()>, node: Arc<StubNode>) -> Duration {
    let mut tenants = MockTenantStore::new();
    tenants.expect_list_all_tenants().returning(|| Ok(vec![tenant()]));
    tenants.expect_find_tenant().returning(|_| Ok(Some(tenant())));
    let reconciler = Reconciler::new(
        ReconcilePorts { cluster: Arc::new(cluster), node, agents: Arc::new(MockAgentStore::new()), tenants: Arc::new(tenants), clock: Arc::new(StillClock) },
        RESYNC,
    );
    let wait = reconciler.pass().await;
    drop(reconciler);
    scenario.await.unwrap();
    wait
}

/// A new agent is marked Deploying, registered and deployed on its node, then Running
/// with nodeAck, and requeued after the resync period.
#[tokio::test]
async fn an_agent_is_deployed_and_runs() {
    let node = Arc::new(StubNode::new());
    let script = deploying_then(|b| {
        assert_eq!(
            (b["status"]["phase"].as_str(), b["status"]["nodeAck"].as_bool(), b["status"]["observedGeneration"].as_u64()),
            (Some("Running"), Some(true), Some(1))
        );
        assert!(b["status"]["lastSyncedAt"].is_string() && b["status"]["message"].is_null());
    });
    let wait = pass(script, node.clone()).await;
    assert!(wait <= RESYNC && wait >= RESYNC.mul_f64(0.8), "requeued after the (spread) resync period: {wait:?}");
    assert!(node.agent(&endpoint(), "bot").unwrap().deployed, "registered and deployed on the tenant's node");
}

/// Once the watches listed everything, a pass asks the API server for nothing it reads:
/// the agent list, the tenant deletions to finish and the agent come from the stores.
/// Only the writes remain: the tenant's applies and the agent's two statuses.
#[tokio::test]
async fn with_the_stores_listed_a_pass_only_writes() {
    let node = Arc::new(StubNode::new());
    let uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot/status{}", fixtures::APPLY);
    let mut script = fixtures::provisioned(NS);
    script.push(Expect { method: Method::PATCH, uri: uri.clone(), body: |b| assert_eq!(b["status"]["phase"], "Deploying"), answer: (200, agent(false)) });
    script.push(Expect { method: Method::PATCH, uri, body: |b| assert_eq!(b["status"]["phase"], "Running"), answer: (200, agent(false)) });
    let (cluster, scenario) = mocked(script);
    fixtures::listed(&cluster, &[agent(false)], &[fixtures::tenant_resource(NS, fixtures::ready_status(NS))]);
    pass_on(cluster, scenario, node.clone()).await;
    assert!(node.agent(&endpoint(), "bot").unwrap().deployed);
}

/// With the node unreachable, the agent is marked Deploying, then Failed through the
/// status subresource, and the next pass is due after the first backoff.
#[tokio::test]
async fn an_unreachable_node_fails_the_agent_with_backoff() {
    let node = Arc::new(StubNode::new());
    node.set_failing(true);
    let script = deploying_then(|b| {
        assert_eq!(
            (b["status"]["phase"].as_str(), b["status"]["nodeAck"].as_bool(), b["status"]["observedGeneration"].as_u64()),
            (Some("Failed"), Some(false), Some(1))
        );
        assert!(b["status"]["message"].as_str().unwrap().contains("cannot be reached"));
    });
    assert_eq!(pass(script, node).await, Duration::from_secs(1), "retried after the first backoff");
}

/// An agent marked for deletion is removed from its node, then its finalizer released,
/// so the API server lets it go.
#[tokio::test]
async fn deletion_cleans_up_then_releases_the_finalizer() {
    let node = Arc::new(StubNode::new());
    node.register_agent(&endpoint(), &manifest().document().unwrap()).await.unwrap();
    let agent_uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot");
    let mut script = reads(agent(true));
    script.push(Expect { method: Method::GET, uri: agent_uri.clone(), body: anything, answer: (200, agent(true)) });
    script.push(Expect {
        method: Method::PATCH,
        uri: format!("{agent_uri}?"),
        body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": [], "resourceVersion": "5"}})),
        answer: (200, agent(true)),
    });
    pass(script, node.clone()).await;
    assert!(node.agent(&endpoint(), "bot").is_none(), "the node forgot the agent first");
}

/// A replica that does not lead writes nothing, not even at start; once it leads, its first
/// pass provisions the tenants, then applies the registry (into namespaces that exist by
/// then), then reconciles the agents. On tokio's paused clock: virtual time.
#[tokio::test(start_paused = true)]
async fn nothing_is_written_before_leading_then_tenants_come_before_the_registry() {
    let agents_uri = "/apis/nexus.astromesh.io/v1alpha1/nexusagents?".to_owned();
    let status_uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot/status{}", fixtures::APPLY);
    let mut script = fixtures::provisioned(NS);
    script.push(Expect {
        method: Method::GET,
        uri: agents_uri.clone(),
        body: anything,
        answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {}, "items": []})),
    });
    script.push(Expect {
        method: Method::PATCH,
        uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot{}", fixtures::APPLY),
        body: |b| assert_eq!(b["spec"]["agentSpec"]["metadata"]["name"], "bot"),
        answer: (200, agent(false)),
    });
    script.push(fixtures::no_tenant_deletions());
    script.push(Expect {
        method: Method::GET,
        uri: agents_uri,
        body: anything,
        answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {}, "items": [agent(false)]})),
    });
    script.push(Expect {
        method: Method::PATCH,
        uri: status_uri.clone(),
        body: |b| assert_eq!(b["status"]["phase"], "Deploying"),
        answer: (200, agent(false)),
    });
    script.push(Expect { method: Method::PATCH, uri: status_uri, body: |b| assert_eq!(b["status"]["phase"], "Running"), answer: (200, agent(false)) });
    let (cluster, scenario) = mocked(script);

    let mut tenants = MockTenantStore::new();
    tenants.expect_list_all_tenants().returning(|| Ok(vec![tenant()]));
    let mut agents = MockAgentStore::new();
    agents
        .expect_list_all_agents()
        .returning(|| Ok(vec![Agent { tenant_id: tenant().id, manifest: manifest(), version_number: 1, created_at: t0(), updated_at: t0() }]));
    let node = Arc::new(StubNode::new());
    let ports =
        ReconcilePorts { cluster: Arc::new(cluster), node: node.clone(), agents: Arc::new(agents), tenants: Arc::new(tenants), clock: Arc::new(StillClock) };
    let reconciler = Arc::new(Reconciler::new(ports, RESYNC));
    let (lead, leading) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(reconcile_while_leading(reconciler.clone(), leading));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(node.agent(&endpoint(), "bot").is_none(), "half a minute as a follower: no request (the script would have seen it)");

    lead.send(Some(nexus_ports::leadership::Term { number: 1, until: tokio::time::Instant::now() + Duration::from_secs(3600) })).unwrap();
    for _ in 0..1000 {
        if node.agent(&endpoint(), "bot").is_some_and(|agent| agent.deployed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(node.agent(&endpoint(), "bot").is_some_and(|agent| agent.deployed), "the leader deployed the agent");
    lead.send(None).unwrap();
    drop(lead);
    task.await.unwrap();
    drop(reconciler);
    scenario.await.unwrap();
}
