//! The adapter against a mocked API server: one scenario per behaviour.

use http::Method;
use nexus_ports::Error;
use nexus_ports::agents::{AgentManifest, AgentName, AgentPhase, AgentStatus};
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::ClusterBackend;
use nexus_ports::tenancy::{NodeProfile, Tenant, TenantId, TenantPhase};
use serde_json::{Value, json};

use crate::fixtures::{Expect, anything, mocked, status_error};

const TENANT_UUID: &str = "0f0f0f0f-0000-4000-8000-000000000001";
const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";
const APPLY: &str = "?&force=true&fieldManager=nexus";

fn tenant() -> Tenant {
    Tenant {
        id: TenantId::from_uuid(TENANT_UUID.parse().unwrap()),
        owner: UserId::generate(),
        display_name: DisplayName::parse("Acme").unwrap(),
        node_profile: NodeProfile::parse("gateway").unwrap(),
        max_agents: 7,
        created_at: chrono::Utc::now(),
    }
}

fn tenant_resource(status: Value) -> Value {
    json!({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenant",
        "metadata": {"name": NS, "namespace": "nexus-system", "finalizers": ["nexus.astromesh.io/tenant-cleanup"]},
        "spec": {"displayName": "Acme", "nodeProfile": "gateway", "resourceQuota": {"maxAgents": 7, "cpu": "2", "memory": "4Gi"}},
        "status": status
    })
}

fn manifest() -> AgentManifest {
    AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "x-kept": 1}})).unwrap()
}

fn agent_resource(generation: i64, deleting: bool, status: Value) -> Value {
    let mut metadata = json!({"name": "bot", "namespace": NS, "generation": generation, "finalizers": ["nexus.astromesh.io/agent-cleanup", "other.io/keep"]});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    }
    json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": metadata, "spec": {"agentSpec": manifest().document()}, "status": status})
}

#[tokio::test]
async fn provisioning_applies_the_tenant_with_its_finalizer_then_namespace_deployment_service_and_status() {
    let tenants = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{NS}");
    let (cluster, scenario) = mocked(vec![
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}{APPLY}"),
            body: |b| {
                assert_eq!(b["metadata"]["finalizers"], json!(["nexus.astromesh.io/tenant-cleanup"]), "the first reconcile adds the finalizer");
                assert_eq!(b["spec"], json!({"displayName": "Acme", "nodeProfile": "gateway", "resourceQuota": {"maxAgents": 7}}));
            },
            answer: (200, tenant_resource(json!({}))),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}/status{APPLY}"),
            body: |b| assert_eq!(b["status"], json!({"phase": "Provisioning"})),
            answer: (200, tenant_resource(json!({"phase": "Provisioning"}))),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("/api/v1/namespaces/{NS}{APPLY}"),
            body: |b| assert_eq!(b["metadata"]["labels"], json!({"nexus.astromesh.io/managed": "true"})),
            answer: (200, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("/apis/apps/v1/namespaces/{NS}/deployments/astromesh-node{APPLY}"),
            body: |b| {
                assert_eq!(b["spec"]["replicas"], 1);
                let container = &b["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(container["image"], "astromesh:0.74.1");
                assert_eq!(container["ports"][0]["containerPort"], 8000);
                assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/v1/health");
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/v1/health");
                assert_eq!(container["env"], json!([{"name": "ASTROMESH_ROLE", "value": "gateway"}]));
                assert_eq!(container["resources"]["limits"], json!({"cpu": "2", "memory": "4Gi"}), "limits from the quota");
            },
            answer: (200, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "astromesh-node", "namespace": NS}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("/api/v1/namespaces/{NS}/services/astromesh-node{APPLY}"),
            body: |b| assert_eq!(b["spec"]["ports"][0]["port"], 8000),
            answer: (200, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "astromesh-node", "namespace": NS}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}/status{APPLY}"),
            body: |b| {
                assert_eq!(
                    b["status"],
                    json!({"phase": "Ready", "namespace": NS, "nodeEndpoint": format!("http://astromesh-node.{NS}.svc:8000"), "conditions": []})
                )
            },
            answer: (200, tenant_resource(json!({"phase": "Ready"}))),
        },
    ]);
    let status = cluster.provision_tenant(&tenant()).await.unwrap();
    assert_eq!(status.phase, TenantPhase::Ready);
    assert_eq!(status.node_endpoint, Some(format!("http://astromesh-node.{NS}.svc:8000")));
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_provisioning_failure_shows_as_phase_error_on_the_tenant() {
    let tenants = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{NS}");
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::PATCH, uri: format!("{tenants}{APPLY}"), body: anything, answer: (200, tenant_resource(json!({}))) },
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}/status{APPLY}"),
            body: anything,
            answer: (200, tenant_resource(json!({"phase": "Provisioning"}))),
        },
        Expect { method: Method::PATCH, uri: format!("/api/v1/namespaces/{NS}{APPLY}"), body: anything, answer: status_error(503, "ServiceUnavailable") },
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}/status{APPLY}"),
            body: |b| {
                assert_eq!(b["status"]["phase"], "Error");
                assert_eq!(b["status"]["conditions"][0]["reason"], "ProvisioningFailed");
            },
            answer: (200, tenant_resource(json!({"phase": "Error"}))),
        },
    ]);
    assert!(matches!(cluster.provision_tenant(&tenant()).await, Err(Error::Unavailable(_))), "the loop retries it");
    scenario.await.unwrap();
}

#[tokio::test]
async fn tenant_status_reads_the_resource_and_an_absent_one_is_pending() {
    let uri = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{NS}");
    let (cluster, scenario) = mocked(vec![
        Expect {
            method: Method::GET,
            uri: uri.clone(),
            body: anything,
            answer: (200, tenant_resource(json!({"phase": "Ready", "namespace": NS, "nodeEndpoint": "http://n:8000"}))),
        },
        Expect { method: Method::GET, uri, body: anything, answer: status_error(404, "NotFound") },
    ]);
    let ready = cluster.tenant_status(&tenant().id).await.unwrap();
    assert_eq!((ready.phase, ready.node_endpoint.as_deref()), (TenantPhase::Ready, Some("http://n:8000")));
    assert_eq!(cluster.tenant_status(&tenant().id).await.unwrap().phase, TenantPhase::Pending);
    scenario.await.unwrap();
}

#[tokio::test]
async fn deprovisioning_deletes_the_tenant_and_its_namespace_then_releases_the_finalizer() {
    let tenants = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{NS}");
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::DELETE, uri: format!("{tenants}?"), body: anything, answer: (200, tenant_resource(json!({}))) },
        Expect {
            method: Method::DELETE,
            uri: format!("/api/v1/namespaces/{NS}?"),
            body: anything,
            answer: (200, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{tenants}?"),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": null}})),
            answer: status_error(404, "NotFound"),
        },
    ]);
    cluster.deprovision_tenant(&tenant().id).await.unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn agents_are_applied_with_their_finalizer_and_manifest() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::PATCH,
        uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot{APPLY}"),
        body: |b| {
            assert_eq!(b["metadata"]["finalizers"], json!(["nexus.astromesh.io/agent-cleanup"]));
            assert_eq!(b["spec"]["agentSpec"]["spec"]["x-kept"], 1, "unknown fields pass through");
        },
        answer: (200, agent_resource(1, false, json!({}))),
    }]);
    cluster.apply_agent(&tenant().id, &manifest()).await.unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn agent_objects_carry_generations_status_and_deletion() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::GET,
        uri: "/apis/nexus.astromesh.io/v1alpha1/nexusagents?".to_owned(),
        body: anything,
        answer: (
            200,
            json!({
                "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgentList", "metadata": {},
                "items": [
                    agent_resource(3, true, json!({"phase": "Running", "nodeAck": true, "observedGeneration": 2})),
                    {"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "broken", "namespace": NS}, "spec": {"agentSpec": {"kind": "Agent"}}},
                    {"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "metadata": {"name": "bot", "namespace": "default"}, "spec": {"agentSpec": manifest().document()}}
                ]
            }),
        ),
    }]);
    let objects = cluster.list_agent_objects().await.unwrap();
    assert_eq!(objects.len(), 1, "invalid manifests and namespaces that are no tenant's are left alone");
    let object = &objects[0];
    assert_eq!((object.tenant_id, object.generation, object.observed_generation, object.deleting), (tenant().id, 3, 2, true));
    assert_eq!((object.status.phase, object.status.node_ack), (AgentPhase::Running, true));
    scenario.await.unwrap();
}

#[tokio::test]
async fn statuses_go_through_the_status_subresource() {
    let (cluster, scenario) = mocked(vec![Expect {
        method: Method::PATCH,
        uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot/status{APPLY}"),
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
    cluster.set_agent_status(&tenant().id, &AgentName::parse("bot").unwrap(), 4, &failed).await.unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn forgetting_an_agent_removes_only_our_finalizer() {
    let agent = format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot");
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::GET, uri: agent.clone(), body: anything, answer: (200, agent_resource(2, true, json!({}))) },
        Expect {
            method: Method::PATCH,
            uri: format!("{agent}?"),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": ["other.io/keep"]}})),
            answer: (200, agent_resource(2, true, json!({}))),
        },
    ]);
    cluster.forget_agent(&tenant().id, &AgentName::parse("bot").unwrap()).await.unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn api_server_failures_are_translated_by_intent() {
    let (cluster, scenario) = mocked(vec![
        Expect {
            method: Method::GET,
            uri: "/apis/nexus.astromesh.io/v1alpha1/nexusagents?".to_owned(),
            body: anything,
            answer: status_error(503, "ServiceUnavailable"),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/{NS}/nexusagents/bot{APPLY}"),
            body: anything,
            answer: status_error(409, "Conflict"),
        },
    ]);
    assert!(matches!(cluster.list_agent_objects().await, Err(Error::Unavailable(_))));
    assert!(matches!(cluster.apply_agent(&tenant().id, &manifest()).await, Err(Error::Conflict(_))));
    scenario.await.unwrap();
}
