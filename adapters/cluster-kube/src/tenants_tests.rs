//! Tenants against a mocked API server: one scenario per behaviour, every request asserted.

use http::Method;
use nexus_ports::Error;
use nexus_ports::identity::UserId;
use nexus_ports::ports::ClusterBackend;
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase};
use nexus_ports::testing;
use serde_json::{Value, json};

use crate::fixtures::{APPLY, Expect, anything, mocked, node_deployment, provisioned, ready_status, status_error, tenant_resource, tenant_uri};

const NS: &str = "tenant-0f0f0f0f-0000-4000-8000-000000000001";

fn tenant() -> Tenant {
    Tenant { id: TenantId::from_cr_name(NS).unwrap(), max_agents: 7, ..testing::tenant(UserId::generate()) }
}

/// The tenant resource as the API server answers the apply: with a quota set by kubectl
/// (cpu, memory) and a provider Secret named by the operator.
fn applied(status: Value) -> Value {
    let mut resource = tenant_resource(NS, status);
    resource["spec"] =
        json!({"displayName": "org", "nodeProfile": "full", "resourceQuota": {"maxAgents": 7, "cpu": "2", "memory": "4Gi"}, "providerSecret": "acme-llm-keys"});
    resource
}

fn status_uri() -> String {
    format!("{}/status{APPLY}", tenant_uri(NS))
}

/// The scripted applies of a tenant's resources; `deployment` is the Deployment answered.
fn resources(deployment: Value) -> Vec<Expect> {
    let mut script = provisioned(NS);
    script.remove(0);
    script[0].body = |b| {
        let labels = &b["metadata"]["labels"];
        assert_eq!((labels["nexus.astromesh.io/managed"].as_str(), labels["pod-security.kubernetes.io/enforce"].as_str()), (Some("true"), Some("restricted")));
    };
    script[1].body = |b| {
        assert_eq!(b["spec"]["podSelector"], json!({}));
        assert_eq!(b["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "nexus-system");
        assert_eq!(b["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "nexus");
        assert_eq!(b["spec"]["ingress"][0]["ports"], json!([{"protocol": "TCP", "port": 8000}]));
    };
    script[2].body = node_is_isolated_and_bounded;
    script[2].answer = (200, deployment);
    script[3].body = |b| assert_eq!(b["spec"]["ports"][0]["port"], 8000);
    script
}

fn node_is_isolated_and_bounded(b: &Value) {
    assert_eq!(b["spec"]["replicas"], 1);
    let pod = &b["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "no service-account token in the node");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let node = &pod["containers"][0];
    assert_eq!(node["image"], "astromesh-node:0.74.1");
    assert_eq!(node["ports"][0]["containerPort"], 8000);
    assert_eq!(
        node["securityContext"],
        json!({"runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(node[probe]["httpGet"]["path"], "/v1/health", "{probe}");
    }
    assert_eq!(
        node["resources"],
        json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}}),
        "requests from the profile, limits from the quota"
    );
    assert_eq!(
        node["env"],
        json!([
            {"name": "ASTROMESH_ROLE", "value": "full"},
            {"name": "ASTROMESH_CONFIG_DIR", "value": "/var/lib/astromesh/config"},
            {"name": "ASTROMESH_PERSIST_AGENTS", "value": "0"},
            {"name": "HOME", "value": "/tmp"}
        ]),
        "as the README's node command runs it"
    );
    assert_eq!(node["envFrom"], json!([{"secretRef": {"name": "acme-llm-keys", "optional": true}}]), "the tenant's provider credentials");
    let mounts: Vec<&str> = node["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["/var/lib/astromesh/config", "/tmp"], "the only writable places");
}

#[tokio::test]
async fn provisioning_applies_the_tenant_then_an_isolated_bounded_node_and_waits_for_it() {
    let mut script = vec![Expect {
        method: Method::PATCH,
        uri: format!("{}{APPLY}", tenant_uri(NS)),
        body: |b| {
            assert_eq!(b["metadata"]["finalizers"], json!(["nexus.astromesh.io/tenant-cleanup"]), "the first apply adds the finalizer");
            assert_eq!(b["spec"], json!({"displayName": "org", "nodeProfile": "full", "resourceQuota": {"maxAgents": 7}}), "only the fields Nexus owns");
        },
        answer: (200, applied(json!({}))),
    }];
    script.extend(resources(node_deployment(NS, false)));
    script.push(Expect {
        method: Method::PATCH,
        uri: status_uri(),
        body: |b| {
            assert_eq!(b["status"]["phase"], "Provisioning", "objects applied is not Ready: the node is not available yet");
            assert_eq!((b["status"]["conditions"][0]["type"].as_str(), b["status"]["conditions"][0]["status"].as_str()), (Some("Ready"), Some("False")));
            assert_eq!(b["status"]["nodeEndpoint"], format!("http://astromesh-node.{NS}.svc:8000"));
        },
        answer: (200, applied(json!({"phase": "Provisioning"}))),
    });
    let (cluster, scenario) = mocked(script);
    let status = cluster.provision_tenant(&tenant()).await.unwrap();
    assert_eq!((status.phase, status.message.as_deref()), (TenantPhase::Provisioning, Some("waiting for the tenant's node to be available")));
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_tenant_is_ready_once_its_node_is_available_and_an_unchanged_status_is_not_written_again() {
    let waiting = json!({"phase": "Provisioning", "namespace": NS, "nodeEndpoint": format!("http://astromesh-node.{NS}.svc:8000"),
        "conditions": [{"type": "Ready", "status": "False", "reason": "NodeUnavailable", "message": "waiting for the tenant's node to be available", "lastTransitionTime": "2026-11-28T12:00:00Z"}]});
    let mut script = vec![Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(NS)), body: anything, answer: (200, applied(waiting)) }];
    script.extend(resources(node_deployment(NS, true)));
    script.push(Expect {
        method: Method::PATCH,
        uri: status_uri(),
        body: |b| {
            assert_eq!(b["status"]["phase"], "Ready");
            assert_eq!(
                (b["status"]["conditions"][0]["status"].as_str(), b["status"]["conditions"][0]["reason"].as_str()),
                (Some("True"), Some("NodeAvailable"))
            );
        },
        answer: (200, applied(ready_status(NS))),
    });
    // The next pass re-applies everything (a deleted Deployment would come back) and,
    // finding the status as it would write it, writes nothing.
    script.push(Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(NS)), body: anything, answer: (200, applied(ready_status(NS))) });
    script.extend(resources(node_deployment(NS, true)));
    let (cluster, scenario) = mocked(script);
    assert_eq!(cluster.provision_tenant(&tenant()).await.unwrap().phase, TenantPhase::Ready);
    let again = cluster.provision_tenant(&tenant()).await.unwrap();
    assert_eq!((again.phase, again.node_endpoint), (TenantPhase::Ready, Some(format!("http://astromesh-node.{NS}.svc:8000"))));
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_provisioning_failure_shows_as_phase_error_once() {
    let failed = json!({"phase": "Error", "conditions": [{"type": "Ready", "status": "False", "reason": "ProvisioningFailed",
        "message": "the cluster is unavailable; retry later", "lastTransitionTime": "2026-11-28T12:00:00Z"}]});
    let namespace =
        Expect { method: Method::PATCH, uri: format!("/api/v1/namespaces/{NS}{APPLY}"), body: anything, answer: status_error(503, "ServiceUnavailable") };
    let script = vec![
        Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(NS)), body: anything, answer: (200, applied(json!({}))) },
        namespace,
        Expect {
            method: Method::PATCH,
            uri: status_uri(),
            body: |b| {
                assert_eq!(b["status"]["phase"], "Error");
                assert_eq!(b["status"]["conditions"][0]["reason"], "ProvisioningFailed");
                assert_eq!(b["status"]["conditions"][0]["message"], "the cluster is unavailable; retry later", "the API server's own text is logged");
            },
            answer: (200, applied(failed.clone())),
        },
        // Failing the same way again: the status already says so.
        Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(NS)), body: anything, answer: (200, applied(failed)) },
        Expect { method: Method::PATCH, uri: format!("/api/v1/namespaces/{NS}{APPLY}"), body: anything, answer: status_error(503, "ServiceUnavailable") },
    ];
    let (cluster, scenario) = mocked(script);
    assert!(matches!(cluster.provision_tenant(&tenant()).await, Err(Error::Unavailable(_))), "the loop retries it with backoff");
    assert!(matches!(cluster.provision_tenant(&tenant()).await, Err(Error::Unavailable(_))));
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_tenant_being_deleted_is_not_provisioned_again() {
    let mut deleting = applied(ready_status(NS));
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    let (cluster, scenario) =
        mocked(vec![Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(NS)), body: anything, answer: (200, deleting) }]);
    let status = cluster.provision_tenant(&tenant()).await.unwrap();
    assert_eq!((status.phase, status.message.as_deref()), (TenantPhase::Pending, Some("the tenant is being deleted")));
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn tenant_status_reads_the_resource_and_an_absent_one_is_pending() {
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::GET, uri: tenant_uri(NS), body: anything, answer: (200, applied(ready_status(NS))) },
        Expect { method: Method::GET, uri: tenant_uri(NS), body: anything, answer: status_error(404, "NotFound") },
    ]);
    let ready = cluster.tenant_status(&tenant().id).await.unwrap();
    assert_eq!((ready.phase, ready.node_endpoint), (TenantPhase::Ready, Some(format!("http://astromesh-node.{NS}.svc:8000"))));
    assert_eq!(cluster.tenant_status(&tenant().id).await.unwrap().phase, TenantPhase::Pending);
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn deprovisioning_marks_the_tenant_deleting_first_then_deletes_its_namespace_and_keeps_the_finalizer() {
    let (cluster, scenario) = mocked(vec![
        Expect { method: Method::DELETE, uri: format!("{}?", tenant_uri(NS)), body: anything, answer: (200, applied(ready_status(NS))) },
        Expect {
            method: Method::DELETE,
            uri: format!("/api/v1/namespaces/{NS}?"),
            body: anything,
            answer: (200, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
        },
    ]);
    cluster.deprovision_tenant(&tenant().id).await.unwrap();
    drop(cluster);
    scenario.await.unwrap();
}

/// A `NexusTenant` being deleted, held by Nexus's finalizer and another.
fn deleting_tenant() -> Value {
    let mut tenant = applied(ready_status(NS));
    tenant["metadata"]["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    tenant["metadata"]["resourceVersion"] = json!("7");
    tenant["metadata"]["finalizers"] = json!(["nexus.astromesh.io/tenant-cleanup", "other.io/keep"]);
    tenant
}

fn list_of(items: Vec<Value>) -> Expect {
    Expect {
        method: Method::GET,
        uri: "/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants?".to_owned(),
        body: anything,
        answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenantList", "metadata": {}, "items": items})),
    }
}

fn namespace(deleting: bool, managed: bool) -> (u16, Value) {
    let mut namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {}}});
    if managed {
        namespace["metadata"]["labels"]["nexus.astromesh.io/managed"] = json!("true");
    }
    if deleting {
        namespace["metadata"]["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
        namespace["status"] = json!({"phase": "Terminating"});
    }
    (200, namespace)
}

#[tokio::test]
async fn a_deleted_tenant_is_let_go_only_once_its_namespace_is_gone_and_only_by_our_finalizer() {
    let namespace_uri = format!("/api/v1/namespaces/{NS}");
    let (cluster, scenario) = mocked(vec![
        // kubectl delete of the tenant: its namespace is still there and not deleting.
        list_of(vec![deleting_tenant()]),
        Expect { method: Method::GET, uri: namespace_uri.clone(), body: anything, answer: namespace(false, true) },
        Expect { method: Method::DELETE, uri: format!("{namespace_uri}?"), body: anything, answer: namespace(true, true) },
        // The namespace is terminating: wait.
        list_of(vec![deleting_tenant()]),
        Expect { method: Method::GET, uri: namespace_uri.clone(), body: anything, answer: namespace(true, true) },
        // It is gone: remove our finalizer, keep the other, at the version read.
        list_of(vec![deleting_tenant()]),
        Expect { method: Method::GET, uri: namespace_uri, body: anything, answer: status_error(404, "NotFound") },
        Expect {
            method: Method::PATCH,
            uri: format!("{}?", tenant_uri(NS)),
            body: |b| assert_eq!(b, &json!({"metadata": {"finalizers": ["other.io/keep"], "resourceVersion": "7"}})),
            answer: (200, deleting_tenant()),
        },
    ]);
    for _ in 0..3 {
        cluster.finish_deletions().await.unwrap();
    }
    drop(cluster);
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_namespace_nexus_does_not_manage_is_never_deleted() {
    let (cluster, scenario) = mocked(vec![
        list_of(vec![deleting_tenant()]),
        Expect { method: Method::GET, uri: format!("/api/v1/namespaces/{NS}"), body: anything, answer: namespace(false, false) },
        Expect {
            method: Method::PATCH,
            uri: format!("{}?", tenant_uri(NS)),
            body: |b| assert_eq!(b["metadata"]["finalizers"], json!(["other.io/keep"])),
            answer: status_error(409, "Conflict"),
        },
    ]);
    cluster.finish_deletions().await.unwrap();
    drop(cluster);
    scenario.await.unwrap();
}
