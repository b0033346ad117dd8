//! The adapter against a real Kubernetes cluster: runs when `NEXUS_TEST_KUBECONFIG` names
//! a kubeconfig (a kind or k3d cluster will do), skipped otherwise. As the kubeconfig's
//! user (an admin) it installs what `kubectl apply -k deploy/` would of the CRDs, the
//! `nexus-system` namespace and the RBAC; then it drives the backend as the deployed
//! service account `nexus-system:nexus` (impersonated), so a permission missing from
//! `deploy/rbac.yaml` fails it. It works on tenants of its own and removes them.
//!
//! Without the node image loaded into the cluster the tenants' nodes never become
//! available, so tenants stay Provisioning; with it (`kind load docker-image
//! astromesh-node:0.74.1`) they become Ready.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::{Client, CustomResourceExt, ResourceExt};
use nexus_cluster_kube::crd::{NexusAgent, NexusTenant};
use nexus_cluster_kube::{KubeCluster, KubeSettings};
use nexus_ports::agents::{AgentManifest, AgentPhase, AgentStatus};
use nexus_ports::identity::UserId;
use nexus_ports::leadership::Fence;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase};
use serde::Deserialize;
use serde_json::json;

const SYSTEM: &str = "nexus-system";
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

async fn config() -> Option<kube::Config> {
    let Some(path) = std::env::var_os("NEXUS_TEST_KUBECONFIG") else {
        eprintln!("skipping the real-cluster suite: NEXUS_TEST_KUBECONFIG is not set");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(path).expect("read NEXUS_TEST_KUBECONFIG");
    Some(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig"))
}

/// Applies every document of a file under `deploy/` as the admin.
async fn apply_file(admin: &Client, discovery: &Discovery, file: &str) {
    let text = std::fs::read_to_string(format!("{DEPLOY}/{file}")).unwrap();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: DynamicObject = DynamicObject::deserialize(document).unwrap();
        let types = object.types.clone().expect("apiVersion and kind");
        let (group, version) = types.api_version.split_once('/').unwrap_or(("", types.api_version.as_str()));
        let (resource, capabilities) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.group == group && r.version == version && r.kind == types.kind)
            .unwrap_or_else(|| panic!("{} is not served", types.kind));
        let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => Api::namespaced_with(admin.clone(), &namespace, &resource),
            _ => Api::all_with(admin.clone(), &resource),
        };
        api.patch(&object.name_any(), &PatchParams::apply("nexus-test").force(), &Patch::Apply(&object))
            .await
            .unwrap_or_else(|err| panic!("apply {file}: {err}"));
    }
}

async fn install(admin: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    for crd in [NexusTenant::crd(), NexusAgent::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("nexus-test").force(), &Patch::Apply(&crd)).await.expect("install CRD");
    }
    for _ in 0..60 {
        if Api::<NexusAgent>::all(admin.clone()).list(&Default::default()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let discovery = Discovery::new(admin.clone()).run().await.expect("discovery");
    apply_file(admin, &discovery, "namespace.yaml").await;
    apply_file(admin, &discovery, "rbac.yaml").await;
}

/// The service account's client: the deployed permissions, no more.
fn as_nexus(mut config: kube::Config) -> Client {
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{SYSTEM}:nexus"));
    Client::try_from(config).expect("impersonating client")
}

#[tokio::test]
async fn provisions_tenants_holds_agents_and_leads_as_the_deployed_service_account() {
    let Some(config) = config().await else { return };
    let admin = Client::try_from(config.clone()).expect("admin client");
    install(&admin).await;
    let client = as_nexus(config);
    let cluster = KubeCluster::new(client.clone(), KubeSettings { system_namespace: SYSTEM.to_owned(), node_image: "astromesh-node:0.74.1".to_owned() });
    cluster.check().await.expect("the API server answers");

    let mut leading = cluster.leadership(&format!("real-cluster-test-{}", &TenantId::generate().to_string()[2..10]));
    tokio::time::timeout(Duration::from_secs(60), leading.wait_for(Option::is_some)).await.expect("leads within a minute").unwrap();

    let tenant = Tenant { max_agents: 3, ..nexus_ports::testing::tenant(UserId::generate()) };
    let ns = tenant.id.cr_name();
    let status = cluster.provision_tenant(&tenant).await.expect("provision");
    assert!(matches!(status.phase, TenantPhase::Provisioning | TenantPhase::Ready), "{status:?}");
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().node_endpoint, Some(format!("http://astromesh-node.{ns}.svc:8000")));
    let namespace = Api::<Namespace>::all(admin.clone()).get(&ns).await.unwrap();
    assert_eq!(namespace.labels().get("nexus.astromesh.io/managed").map(String::as_str), Some("true"));
    assert_eq!(namespace.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    Api::<NetworkPolicy>::namespaced(admin.clone(), &ns).get("astromesh-node").await.expect("node network policy");
    Api::<Deployment>::namespaced(admin.clone(), &ns).get("astromesh-node").await.expect("node deployment, admitted by the restricted profile");
    Api::<Service>::namespaced(admin.clone(), &ns).get("astromesh-node").await.expect("node service");
    cluster.provision_tenant(&tenant).await.expect("provisioning again changes nothing");

    let manifest = AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "bot"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "x-kept": {"a": 1}}})).unwrap();
    cluster.apply_agent(&tenant.id, &manifest).await.unwrap();
    let object = cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().expect("agent object");
    assert_eq!((object.generation, object.deleting), (1, false));
    assert_eq!(object.manifest.document().unwrap()["spec"]["x-kept"]["a"], 1, "the API server kept the unknown fields");
    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(chrono::Utc::now()), message: None };
    cluster.set_agent_status(&tenant.id, manifest.name(), 1, &running, Fence::Alone).await.unwrap();
    let object = cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().unwrap();
    assert_eq!((object.status.phase, object.observed_generation), (AgentPhase::Running, 1));
    assert!(cluster.list_agent_objects().await.unwrap().iter().any(|o| o.tenant_id == tenant.id));

    cluster.request_agent_deletion(&tenant.id, manifest.name()).await.unwrap();
    assert!(cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().unwrap().deleting, "held by its finalizer");
    cluster.forget_agent(&tenant.id, manifest.name()).await.unwrap();

    // Deleting: the tenant is held until its namespace is gone, then let go.
    cluster.deprovision_tenant(&tenant.id).await.unwrap();
    for _ in 0..240 {
        cluster.finish_deletions().await.unwrap();
        if Api::<NexusTenant>::namespaced(admin.clone(), SYSTEM).get_opt(&ns).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(Api::<Namespace>::all(admin.clone()).get_opt(&ns).await.unwrap().is_none(), "the namespace went first");
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().phase, TenantPhase::Pending, "then the tenant resource");
    drop(leading);
}
