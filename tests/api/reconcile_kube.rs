//! The core's reconcile loop over the Kubernetes backend, against a mocked API server
//! asserting every request.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::Method;
use nexus::app::{ReconcilePorts, Reconciler};
use nexus_cluster_kube::fixtures::{Expect, anything, mocked};
use nexus_node_stub::StubNode;
use nexus_ports::agents::AgentManifest;
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
    let mut metadata = json!({"name": "bot", "namespace": NS, "generation": 1, "finalizers": ["nexus.astromesh.io/agent-cleanup"]});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    }
    json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata, "spec": {"agentSpec": manifest().document()}})
}

/// What every pass reads first: the tenant (Ready) and the agent objects.
fn reads(agent: Value) -> Vec<Expect> {
    vec![
        Expect {
            method: Method::GET,
            uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{NS}"),
            body: anything,
            answer: (
                200,
                json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenant", "metadata": {"name": NS}, "spec": {"displayName": "org", "nodeProfile": "full"}, "status": {"phase": "Ready", "namespace": NS, "nodeEndpoint": endpoint()}}),
            ),
        },
        Expect {
            method: Method::GET,
            uri: "/apis/nexus.astromesh.io/v1alpha1/nexusagents?".to_owned(),
            body: anything,
            answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {}, "items": [agent]})),
        },
    ]
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
    let mut tenants = MockTenantStore::new();
    tenants.expect_list_all_tenants().returning(|| Ok(vec![tenant()]));
    let reconciler = Reconciler::new(
        ReconcilePorts { cluster: Arc::new(cluster), node, agents: Arc::new(MockAgentStore::new()), tenants: Arc::new(tenants), clock: Arc::new(StillClock) },
        RESYNC,
    );
    let wait = reconciler.pass().await;
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
    assert_eq!(pass(script, node.clone()).await, RESYNC, "requeued after the resync period");
    assert!(node.agent(&endpoint(), "bot").unwrap().deployed, "registered and deployed on the tenant's node");
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
    node.register_agent(&endpoint(), manifest().document()).await.unwrap();
    let agent_uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot");
    let mut script = reads(agent(true));
    script.push(Expect { method: Method::GET, uri: agent_uri.clone(), body: anything, answer: (200, agent(true)) });
    script.push(Expect {
        method: Method::PATCH,
        uri: format!("{agent_uri}?"),
        body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": []}})),
        answer: (200, agent(true)),
    });
    pass(script, node.clone()).await;
    assert!(node.agent(&endpoint(), "bot").is_none(), "the node forgot the agent first");
}
