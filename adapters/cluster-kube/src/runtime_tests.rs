//! Reads served from the watches' stores, against a mocked API server: once listed, reads
//! cost no request, and every write's answer is read back at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::watcher::Event;
use nexus_ports::agents::{AgentName, AgentPhase, AgentStatus, Change};
use nexus_ports::leadership::Fence;
use nexus_ports::ports::ClusterBackend;
use nexus_ports::tenancy::{TenantId, TenantPhase};
use nexus_ports::testing;
use serde_json::{Value, json};

use crate::fixtures::{APPLY, Expect, anything, mocked, ready_status, status_error, tenant_resource};
use crate::{KubeCluster, KubeSettings};

const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";

fn tenant_id() -> TenantId {
    TenantId::from_cr_name(NS).unwrap()
}

fn bot() -> AgentName {
    AgentName::parse("bot").unwrap()
}

fn agent_uri() -> String {
    format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot")
}

/// The `NexusAgent` bot at `version`, with `status`, being deleted or not, held by `finalizers`.
fn agent(version: u64, status: Value, deleting: bool, finalizers: Value) -> Value {
    let mut metadata = json!({"name": "bot", "namespace": NS, "generation": 1, "resourceVersion": version.to_string(), "finalizers": finalizers});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    }
    json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata,
        "spec": {"agentSpec": testing::manifest_document("bot", "m")}, "status": status})
}

fn ours() -> Value {
    json!(["nexus.astromesh.io/agent-cleanup"])
}

fn typed<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn once_listed_reads_cost_no_request_and_every_write_is_read_back() {
    let status_uri = format!("{}/status{APPLY}", agent_uri());
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::PATCH, uri: format!("{}{APPLY}", agent_uri()), body: anything, answer: (200, agent(43, json!({}), false, ours())) },
        Expect {
            method: Method::PATCH,
            uri: status_uri,
            body: anything,
            answer: (200, agent(45, json!({"phase": "Running", "nodeAck": true}), false, ours())),
        },
        Expect {
            method: Method::DELETE,
            uri: format!("{}?", agent_uri()),
            body: anything,
            answer: (200, agent(46, json!({"phase": "Running"}), true, ours())),
        },
        // The finalizer is released at the version the store holds: no read first.
        Expect {
            method: Method::PATCH,
            uri: format!("{}?", agent_uri()),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": [], "resourceVersion": "46"}})),
            answer: (200, agent(47, json!({"phase": "Running"}), true, json!([]))),
        },
    ]);
    let pending = agent(42, json!({"phase": "Pending"}), false, ours());
    cluster.listed(&[typed(pending.clone())], &[typed(tenant_resource(NS, ready_status(NS)))]);

    let object = cluster.agent_object(&tenant_id(), &bot()).await.unwrap().expect("listed");
    assert_eq!(object.status.phase, AgentPhase::Pending);
    assert_eq!(cluster.list_tenant_agent_objects(&tenant_id()).await.unwrap().len(), 1);
    assert_eq!(cluster.list_agent_objects().await.unwrap().len(), 1);
    assert_eq!(cluster.tenant_status(&tenant_id()).await.unwrap().phase, TenantPhase::Ready);
    let other = TenantId::from_cr_name("tenant-0f0f0f0f-0000-4000-8000-000000000002").unwrap();
    assert_eq!(cluster.tenant_status(&other).await.unwrap().phase, TenantPhase::Pending, "a tenant the store lacks has nothing yet");
    assert!(cluster.list_tenant_agent_objects(&other).await.unwrap().is_empty());

    cluster.apply_agent(&tenant_id(), &testing::manifest("bot", "m")).await.unwrap();
    // The watch's event of a change older than the apply's answer comes late.
    cluster.watched(Event::Apply(typed(agent(42, json!({"phase": "Failed"}), false, ours()))));
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap().unwrap().status.phase, AgentPhase::Pending, "the apply's answer stands");

    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: None, message: None };
    cluster.set_agent_status(&tenant_id(), &bot(), 1, &running, Fence::Alone).await.unwrap();
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap().unwrap().status.phase, AgentPhase::Running, "read right after the write");

    cluster.request_agent_deletion(&tenant_id(), &bot()).await.unwrap();
    assert!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap().unwrap().deleting);
    cluster.forget_agent(&tenant_id(), &bot()).await.unwrap();
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap(), None, "let go: gone from the store at once");
    cluster.watched(Event::Apply(typed(agent(46, json!({"phase": "Running"}), true, ours()))));
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap(), None, "an older event does not bring it back");
    assert!(cluster.list_agent_objects().await.unwrap().is_empty());
    drop(cluster);
    scenario.await.unwrap();
}

/// A replica whose deletion of an agent was answered 404 (another replica's deletion went
/// first) used to ignore every later event of an agent of that name, until an unrelated
/// deletion pruned its record: an agent created again through another replica was never
/// reconciled by it.
#[tokio::test]
async fn an_agent_made_again_after_a_deletion_answered_404_is_seen() {
    let (cluster, scenario) =
        mocked(vec![Expect { method: Method::DELETE, uri: format!("{}?", agent_uri()), body: anything, answer: status_error(404, "NotFound") }]);
    cluster.listed(&[typed(agent(42, json!({"phase": "Running"}), false, ours()))], &[typed(tenant_resource(NS, ready_status(NS)))]);
    cluster.request_agent_deletion(&tenant_id(), &bot()).await.unwrap();
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap(), None, "absent already: gone from the store");
    cluster.watched(Event::Apply(typed(agent(42, json!({"phase": "Running"}), false, ours()))));
    assert_eq!(cluster.agent_object(&tenant_id(), &bot()).await.unwrap(), None, "an event of the object that went does not bring it back");
    cluster.watched(Event::Apply(typed(agent(57, json!({}), false, ours()))));
    let made_again = cluster.agent_object(&tenant_id(), &bot()).await.unwrap().expect("the agent made again is seen");
    assert_eq!(made_again.status.phase, AgentPhase::Pending);
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_deleted_invalid_agent_in_the_store_is_let_go_at_the_version_kept() {
    let broken = json!({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
        "metadata": {"name": "broken", "namespace": NS, "resourceVersion": "9", "deletionTimestamp": "2026-11-28T12:00:00Z",
            "finalizers": ["nexus.astromesh.io/agent-cleanup"]},
        "spec": {"agentSpec": {"kind": "Agent"}}
    });
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::PATCH,
        uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/broken?"),
        body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": [], "resourceVersion": "9"}})),
        answer: (
            200,
            json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "broken", "namespace": NS}, "spec": {"agentSpec": {}}}),
        ),
    }]);
    cluster.listed(&[typed(broken)], &[]);
    assert!(cluster.list_agent_objects().await.unwrap().is_empty());
    drop(cluster);
    scenario.await.unwrap();
}

/// An API server that answers every list with `items` (agents), `tenants` or nothing, and
/// leaves every watch open; counts the other requests.
async fn lists_then_quiet(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, others: Arc<AtomicUsize>) {
    let mut open = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        let uri = request.uri().to_string();
        if uri.contains("watch=true") {
            open.push(respond);
            continue;
        }
        let list = |kind: &str, items: Vec<Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "50"}, "items": items});
        let answer = if request.method() != Method::GET || !uri.contains('?') {
            others.fetch_add(1, Ordering::SeqCst);
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"})
        } else if uri.contains("/nexusagents") {
            list("NexusAgentList", vec![agent(42, json!({"phase": "Running"}), false, ours())])
        } else if uri.contains("/nexustenants") {
            list("NexusTenantList", vec![tenant_resource(NS, ready_status(NS))])
        } else {
            list("DeploymentList", vec![])
        };
        let status = if answer["kind"] == "Status" { 404 } else { 200 };
        respond.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
    }
}

#[tokio::test]
async fn the_watches_fill_the_stores_and_wake_the_loop_and_reads_go_back_to_the_server_once_they_stop() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let others = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn(lists_then_quiet(handle, others.clone()));
    let settings = KubeSettings { system_namespace: "nexus-system".to_owned(), node_image: "astromesh-node:0.74.1".to_owned() };
    let cluster = KubeCluster::new(kube::Client::new(service, "default"), settings);

    let mut changes = Box::pin(cluster.changes());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(changes.next().await.expect("the watches report what they list"));
    }
    assert!(seen.contains(&Change::Agent(tenant_id(), bot())) && seen.contains(&Change::Tenant(tenant_id())), "{seen:?}");
    let watching = tokio::spawn(async move { while changes.next().await.is_some() {} });
    // The lists are complete once their watches start: then the stores are ready.
    for _ in 0..10_000 {
        if cluster.stores().agents.is_ready() && cluster.stores().tenants.is_ready() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let object = cluster.agent_object(&tenant_id(), &bot()).await.unwrap().expect("listed");
    assert_eq!(object.status.phase, AgentPhase::Running);
    assert_eq!(cluster.tenant_status(&tenant_id()).await.unwrap().phase, TenantPhase::Ready);
    assert_eq!(cluster.list_tenant_agent_objects(&tenant_id()).await.unwrap().len(), 1);
    assert_eq!(others.load(Ordering::SeqCst), 0, "served from the stores");

    watching.abort();
    let _ = watching.await;
    assert_eq!(cluster.agent_object(&tenant_id(), &AgentName::parse("other").unwrap()).await.unwrap(), None);
    assert_eq!(others.load(Ordering::SeqCst), 1, "the watches stopped: read from the server");
    drop(cluster);
    server.abort();
}
