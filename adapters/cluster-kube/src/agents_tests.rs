//! Agents against a mocked API server: one scenario per behaviour, every request asserted.

use http::Method;
use nexus_ports::Error;
use nexus_ports::agents::{AgentManifest, AgentName, AgentPhase, AgentStatus};
use nexus_ports::identity::UserId;
use nexus_ports::leadership::Fence;
use nexus_ports::ports::ClusterBackend;
use nexus_ports::tenancy::{Tenant, TenantId};
use nexus_ports::testing;
use serde_json::{Value, json};

use crate::fixtures::{APPLY, Expect, anything, mocked, ready_status, status_error, tenant_resource, tenant_uri};

const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";
const AGENTS: &str = "/apis/nexus.astromesh.io/v1alpha1/nexusagents?";

fn tenant() -> Tenant {
    Tenant { id: TenantId::from_cr_name(NS).unwrap(), max_agents: 7, ..testing::tenant(UserId::generate()) }
}

fn manifest() -> AgentManifest {
    let mut document = testing::manifest_document("bot", "m");
    document["spec"]["x-kept"] = json!(1);
    AgentManifest::parse(document).unwrap()
}

fn agent_uri() -> String {
    format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot")
}

fn agent_resource(generation: i64, deleting: bool, status: Value) -> Value {
    let mut metadata = json!({"name": "bot", "namespace": NS, "generation": generation, "resourceVersion": "42", "finalizers": ["nexus.astromesh.io/agent-cleanup", "other.io/keep"]});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    }
    json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata, "spec": {"agentSpec": manifest().document().unwrap()}, "status": status})
}

fn list_of(items: Vec<Value>) -> (u16, Value) {
    (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {}, "items": items}))
}

#[tokio::test]
async fn agents_are_applied_with_their_finalizer_and_manifest() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::PATCH,
        uri: format!("{}{APPLY}", agent_uri()),
        body: |b| {
            assert_eq!(b["metadata"]["finalizers"], json!(["nexus.astromesh.io/agent-cleanup"]));
            assert_eq!(b["spec"]["agentSpec"]["spec"]["x-kept"], 1, "unknown fields pass through");
        },
        answer: (200, agent_resource(1, false, json!({}))),
    }]);
    cluster.apply_agent(&tenant().id, &manifest()).await.unwrap();
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn an_agent_the_api_server_refuses_is_marked_on_its_tenant() {
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::PATCH, uri: format!("{}{APPLY}", agent_uri()), body: anything, answer: status_error(403, "namespace is being terminated") },
        Expect { method: Method::GET, uri: tenant_uri(NS), body: anything, answer: (200, tenant_resource(NS, ready_status(NS))) },
        Expect {
            method: Method::POST,
            uri: "/apis/events.k8s.io/v1/namespaces/nexus-system/events?".to_owned(),
            body: |b| {
                assert_eq!((b["type"].as_str(), b["reason"].as_str()), (Some("Warning"), Some("AgentNotApplied")));
                assert_eq!((b["regarding"]["kind"].as_str(), b["regarding"]["name"].as_str()), (Some("NexusTenant"), Some(NS)));
                let note = b["note"].as_str().unwrap();
                assert!(note.contains("agent bot") && note.contains("namespace is being terminated"), "{note}");
            },
            answer: (201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "nexus-system"}})),
        },
    ]);
    assert!(cluster.apply_agent(&tenant().id, &manifest()).await.is_err(), "the caller logs it and goes on");
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn agent_objects_carry_generations_status_and_deletion() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::GET,
        uri: AGENTS.to_owned(),
        body: anything,
        answer: list_of(vec![
            agent_resource(3, true, json!({"phase": "Running", "nodeAck": true, "observedGeneration": 2})),
            json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "broken", "namespace": NS}, "spec": {"agentSpec": {"kind": "Agent"}}}),
            json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "bot", "namespace": "default"}, "spec": {"agentSpec": manifest().document().unwrap()}}),
        ]),
    }]);
    let objects = cluster.list_agent_objects().await.unwrap();
    assert_eq!(objects.len(), 1, "invalid manifests and namespaces that are no tenant's are left alone");
    let object = &objects[0];
    assert_eq!((object.tenant_id, object.generation, object.observed_generation, object.deleting), (tenant().id, 3, 2, true));
    assert_eq!((object.status.phase, object.status.node_ack), (AgentPhase::Running, true));
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn an_invalid_agent_does_not_pin_its_finalizer_once_deleted() {
    let (cluster, scenario) = mocked(vec![
        Expect {
            method: Method::GET,
            uri: AGENTS.to_owned(),
            body: anything,
            answer: list_of(vec![json!({
                "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
                "metadata": {"name": "broken", "namespace": NS, "resourceVersion": "9", "deletionTimestamp": "2026-11-28T12:00:00Z",
                    "finalizers": ["nexus.astromesh.io/agent-cleanup"]},
                "spec": {"agentSpec": {"kind": "Agent"}}
            })]),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/broken?"),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": [], "resourceVersion": "9"}})),
            answer: (
                200,
                json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "broken", "namespace": NS}, "spec": {"agentSpec": {}}}),
            ),
        },
    ]);
    assert!(cluster.list_agent_objects().await.unwrap().is_empty());
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn statuses_go_through_the_status_subresource() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::PATCH,
        uri: format!("{}/status{APPLY}", agent_uri()),
        body: |b| {
            assert_eq!(b["status"]["phase"], "Failed");
            assert_eq!(b["status"]["nodeAck"], false);
            assert_eq!(b["status"]["observedGeneration"], 4);
            assert_eq!(b["status"]["message"], "the node at http://n cannot be reached");
        },
        answer: (200, agent_resource(4, false, json!({"phase": "Failed"}))),
    }]);
    let failed =
        AgentStatus { phase: AgentPhase::Failed, node_ack: false, last_synced_at: None, message: Some("the node at http://n cannot be reached".into()) };
    cluster.set_agent_status(&tenant().id, &AgentName::parse("bot").unwrap(), 4, &failed, Fence::Alone).await.unwrap();
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn forgetting_an_agent_removes_only_our_finalizer_at_the_version_read() {
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::GET, uri: agent_uri(), body: anything, answer: (200, agent_resource(2, true, json!({}))) },
        Expect {
            method: Method::PATCH,
            uri: format!("{}?", agent_uri()),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": ["other.io/keep"], "resourceVersion": "42"}})),
            answer: status_error(409, "Conflict"),
        },
    ]);
    let outcome = cluster.forget_agent(&tenant().id, &AgentName::parse("bot").unwrap()).await;
    assert!(matches!(outcome, Err(Error::Conflict(_))), "a change in between is not overwritten: the loop tries again");
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn api_server_failures_are_translated_by_intent() {
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::GET, uri: AGENTS.to_owned(), body: anything, answer: status_error(503, "etcdserver: request timed out") },
        Expect { method: Method::GET, uri: AGENTS.to_owned(), body: anything, answer: status_error(429, "TooManyRequests") },
        Expect {
            method: Method::PATCH,
            uri: format!("{}{APPLY}", agent_uri()),
            body: anything,
            answer: status_error(409, "Operation cannot be fulfilled on nexusagents.nexus.astromesh.io"),
        },
        Expect { method: Method::GET, uri: tenant_uri(NS), body: anything, answer: status_error(404, "NotFound") },
    ]);
    let unavailable = Error::Unavailable("the cluster is unavailable; retry later".into());
    assert_eq!(cluster.list_agent_objects().await.unwrap_err(), unavailable, "the API server's text is logged, not passed on");
    assert_eq!(cluster.list_agent_objects().await.unwrap_err(), unavailable, "throttled: retry, not an internal error");
    let conflict = cluster.apply_agent(&tenant().id, &manifest()).await.unwrap_err();
    assert_eq!(conflict, Error::Conflict("the cluster holds a conflicting change; retry".into()));
    drop(cluster);
    scenario.await.unwrap();
}
