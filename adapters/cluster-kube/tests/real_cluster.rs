//! The adapter against a real Kubernetes cluster: runs when `NEXUS_TEST_KUBECONFIG` names
//! a kubeconfig (a kind or k3d cluster will do), skipped otherwise. It installs the CRDs,
//! works in namespaces of its own and removes them at the end.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt};
use nexus_cluster_kube::crd::{NexusAgent, NexusTenant};
use nexus_cluster_kube::{KubeCluster, KubeSettings};
use nexus_ports::agents::{AgentManifest, AgentPhase, AgentStatus};
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{NodeProfile, Tenant, TenantId, TenantPhase};
use serde_json::json;

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("NEXUS_TEST_KUBECONFIG") else {
        eprintln!("skipping the real-cluster suite: NEXUS_TEST_KUBECONFIG is not set");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(path).expect("read NEXUS_TEST_KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Some(Client::try_from(config).expect("client"))
}

async fn install_crds(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in [NexusTenant::crd(), NexusAgent::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("nexus-test").force(), &Patch::Apply(&crd)).await.expect("install CRD");
    }
    // Wait until both are served.
    for _ in 0..60 {
        if Api::<NexusAgent>::all(client.clone()).list(&Default::default()).await.is_ok()
            && Api::<NexusTenant>::all(client.clone()).list(&Default::default()).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the CRDs were not served within 30 s");
}

#[tokio::test]
async fn provisions_tenants_and_holds_agents_on_a_real_cluster() {
    let Some(client) = client().await else { return };
    install_crds(&client).await;
    let system = format!("nexus-test-{}", &TenantId::generate().to_string()[2..10]);
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .patch(&system, &PatchParams::apply("nexus-test"), &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}})))
        .await
        .unwrap();

    let cluster = KubeCluster::new(client.clone(), KubeSettings { system_namespace: system.clone(), node_image: "astromesh:0.74.1".to_owned() });
    cluster.check().await.expect("the API server answers");
    let tenant = Tenant {
        id: TenantId::generate(),
        owner: UserId::generate(),
        display_name: DisplayName::parse("Integration").unwrap(),
        node_profile: NodeProfile::default(),
        max_agents: 3,
        created_at: chrono::Utc::now(),
    };
    let ns = tenant.id.cr_name();

    let status = cluster.provision_tenant(&tenant).await.expect("provision");
    assert_eq!(status.phase, TenantPhase::Ready);
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().node_endpoint, Some(format!("http://astromesh-node.{ns}.svc:8000")));
    let namespace = namespaces.get(&ns).await.unwrap();
    assert_eq!(namespace.metadata.labels.unwrap().get("nexus.astromesh.io/managed").map(String::as_str), Some("true"));
    Api::<Deployment>::namespaced(client.clone(), &ns).get("astromesh-node").await.expect("node deployment");
    Api::<Service>::namespaced(client.clone(), &ns).get("astromesh-node").await.expect("node service");
    assert_eq!(cluster.provision_tenant(&tenant).await.unwrap().phase, TenantPhase::Ready, "provisioning again changes nothing");

    let manifest = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "x-kept": {"a": 1}}})).unwrap();
    cluster.apply_agent(&tenant.id, &manifest).await.unwrap();
    let object = cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().expect("agent object");
    assert_eq!((object.generation, object.deleting), (1, false));
    assert_eq!(object.manifest.document()["spec"]["x-kept"]["a"], 1, "the API server kept the unknown fields");
    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(chrono::Utc::now()), message: None };
    cluster.set_agent_status(&tenant.id, manifest.name(), 1, &running).await.unwrap();
    let object = cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().unwrap();
    assert_eq!((object.status.phase, object.observed_generation), (AgentPhase::Running, 1));

    cluster.request_agent_deletion(&tenant.id, manifest.name()).await.unwrap();
    assert!(cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().unwrap().deleting, "held by its finalizer");
    cluster.forget_agent(&tenant.id, manifest.name()).await.unwrap();
    for _ in 0..20 {
        if cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().is_none(), "released");

    cluster.deprovision_tenant(&tenant.id).await.unwrap();
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().phase, TenantPhase::Pending, "the tenant resource is gone");
    let _ = namespaces.delete(&system, &DeleteParams::default()).await;
}
