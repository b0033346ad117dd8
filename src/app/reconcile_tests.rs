//! Reconcile decisions as pure functions, and the runner over the in-memory cluster and
//! the stub node with a clock the test moves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use nexus_cluster_memory::MemoryCluster;
use nexus_node_stub::StubNode;
use nexus_ports::agents::{AgentManifest, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::{Clock, ClusterBackend, MockAgentStore, MockTenantStore};
use nexus_ports::tenancy::{NodeProfile, Tenant, TenantId, TenantPhase, TenantStatus};
use serde_json::{Value, json};

use super::{Reconciler, Retry, Step, backoff, next_step};

const RESYNC: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn manifest(model: &str) -> AgentManifest {
    AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot"}, "spec": {"model": {"primary": {"provider": "ollama", "model": model}}}})).unwrap()
}

fn object(phase: AgentPhase, generation: u64, observed: u64, synced: Option<DateTime<Utc>>) -> AgentObject {
    AgentObject {
        tenant_id: TenantId::generate(),
        manifest: manifest("m"),
        generation,
        observed_generation: observed,
        status: AgentStatus { phase, node_ack: phase == AgentPhase::Running, last_synced_at: synced, message: None },
        deleting: false,
    }
}

fn ready() -> TenantStatus {
    TenantStatus { phase: TenantPhase::Ready, namespace: Some("tenant-x".into()), node_endpoint: Some("http://node".into()), message: None }
}

#[test]
fn backoff_doubles_up_to_thirty_seconds() {
    let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(backoff(u32::MAX).as_secs(), 30);
}

#[test]
fn new_and_changed_agents_deploy_at_once() {
    assert_eq!(next_step(&object(AgentPhase::Pending, 1, 0, None), Some(&ready()), None, RESYNC, t0()), Step::Deploy);
    let changed = object(AgentPhase::Running, 2, 1, Some(t0()));
    assert_eq!(next_step(&changed, Some(&ready()), None, RESYNC, t0()), Step::Deploy, "a new generation does not wait for the resync");
    let failed_changed = object(AgentPhase::Failed, 3, 2, None);
    let retry = Retry { failures: 5, last_attempt: t0() };
    assert_eq!(next_step(&failed_changed, Some(&ready()), Some(retry), RESYNC, t0()), Step::Deploy, "nor for the backoff of an older one");
}

#[test]
fn running_agents_resync_periodically() {
    let running = object(AgentPhase::Running, 1, 1, Some(t0()));
    assert_eq!(next_step(&running, Some(&ready()), None, RESYNC, t0() + secs(10)), Step::Wait(Duration::from_secs(50)));
    assert_eq!(next_step(&running, Some(&ready()), None, RESYNC, t0() + secs(60)), Step::Deploy);
}

#[test]
fn failed_agents_retry_after_their_backoff() {
    let failed = object(AgentPhase::Failed, 1, 1, None);
    let retry = Retry { failures: 3, last_attempt: t0() };
    assert_eq!(next_step(&failed, Some(&ready()), Some(retry), RESYNC, t0() + secs(1)), Step::Wait(Duration::from_secs(3)));
    assert_eq!(next_step(&failed, Some(&ready()), Some(retry), RESYNC, t0() + secs(4)), Step::Deploy);
    assert_eq!(next_step(&failed, Some(&ready()), None, RESYNC, t0()), Step::Deploy, "no retry state (a restart): try now");
}

#[test]
fn agents_wait_for_their_tenant_and_deletion_comes_first() {
    let pending = object(AgentPhase::Pending, 1, 0, None);
    let provisioning = TenantStatus { phase: TenantPhase::Provisioning, ..ready() };
    assert_eq!(next_step(&pending, Some(&provisioning), None, RESYNC, t0()), Step::AwaitTenant);
    assert_eq!(next_step(&pending, None, None, RESYNC, t0()), Step::AwaitTenant);
    let deleting = AgentObject { deleting: true, ..object(AgentPhase::Running, 1, 1, Some(t0())) };
    assert_eq!(next_step(&deleting, Some(&ready()), None, RESYNC, t0()), Step::Cleanup { node: Some("http://node".into()) });
    assert_eq!(next_step(&deleting, None, None, RESYNC, t0()), Step::Cleanup { node: None }, "a tenant that is gone does not block deletion");
}

/// A clock the test moves.
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

#[tokio::test]
async fn the_runner_deploys_fails_recovers_and_cleans_up() {
    let tenant = Tenant {
        id: TenantId::generate(),
        owner: UserId::generate(),
        display_name: DisplayName::parse("org").unwrap(),
        node_profile: NodeProfile::default(),
        max_agents: 50,
        created_at: t0(),
    };
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let clock = Arc::new(TestClock(Mutex::new(t0())));
    let mut tenants = MockTenantStore::new();
    let listed = tenant.clone();
    tenants.expect_list_all_tenants().returning(move || Ok(vec![listed.clone()]));
    let reconciler = Reconciler::new(cluster.clone(), node.clone(), Arc::new(MockAgentStore::new()), Arc::new(tenants), clock.clone(), RESYNC);
    let status = async || cluster.agent_object(&tenant.id, manifest("a").name()).await.unwrap().unwrap().status;

    cluster.apply_agent(&tenant.id, &manifest("a")).await.unwrap();
    assert_eq!(reconciler.pass().await, RESYNC, "the tenant was provisioned and the agent deployed in one pass");
    assert_eq!((status().await.phase, status().await.node_ack), (AgentPhase::Running, true));
    assert!(node.agent("http://node", "bot").unwrap().deployed);

    node.set_failing(true);
    cluster.apply_agent(&tenant.id, &manifest("b")).await.unwrap();
    assert_eq!(reconciler.pass().await, Duration::from_secs(1));
    let failed = status().await;
    assert_eq!((failed.phase, failed.node_ack), (AgentPhase::Failed, false));
    assert!(failed.message.unwrap().contains("cannot be reached"));
    clock.advance(secs(1));
    assert_eq!(reconciler.pass().await, Duration::from_secs(2), "the second failure waits twice as long");

    node.set_failing(false);
    assert_eq!(reconciler.pass().await, Duration::from_secs(2), "still backing off");
    clock.advance(secs(2));
    reconciler.pass().await;
    assert_eq!(status().await.phase, AgentPhase::Running, "recovered with no API call");
    assert_eq!(node.agent("http://node", "bot").unwrap().manifest["spec"]["model"]["primary"]["model"], "b");

    cluster.request_agent_deletion(&tenant.id, manifest("b").name()).await.unwrap();
    reconciler.pass().await;
    assert!(node.agent("http://node", "bot").is_none(), "the node forgot it");
    assert!(cluster.agent_object(&tenant.id, manifest("b").name()).await.unwrap().is_none());
}

mod over_kubernetes {
    //! The same loop over the Kubernetes backend, against a mocked API server asserting
    //! every request.

    use http::Method;
    use nexus_cluster_kube::fixtures::{Expect, anything, mocked};
    use nexus_ports::ports::NodeProxy;

    use super::*;

    const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";

    fn endpoint() -> String {
        format!("http://astromesh-node.{NS}.svc:8000")
    }

    fn tenant() -> Tenant {
        Tenant {
            id: TenantId::from_uuid("0f0f0f0f-0000-4000-8000-000000000001".parse().unwrap()),
            owner: UserId::generate(),
            display_name: DisplayName::parse("org").unwrap(),
            node_profile: NodeProfile::default(),
            max_agents: 5,
            created_at: t0(),
        }
    }

    fn agent(deleting: bool) -> Value {
        let mut metadata = json!({"name": "bot", "namespace": NS, "generation": 1, "finalizers": ["nexus.astromesh.io/agent-cleanup"]});
        if deleting {
            metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
        }
        json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata, "spec": {"agentSpec": manifest("m").document()}})
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
        let reconciler =
            Reconciler::new(Arc::new(cluster), node, Arc::new(MockAgentStore::new()), Arc::new(tenants), Arc::new(TestClock(Mutex::new(t0()))), RESYNC);
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
        node.register_agent(&endpoint(), manifest("m").document()).await.unwrap();
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
}
