//! The adapter against a real Kubernetes API server: runs when `NEXUS_TEST_KUBECONFIG`
//! names an admin kubeconfig (`scripts/kube-cluster up` writes one; `.ci/run` starts it),
//! skipped otherwise. As the kubeconfig's user it installs what `kubectl apply -k deploy/`
//! would of the CRDs, the `nexus-system` namespace and the RBAC; then it drives the backend
//! as the deployed service account `nexus-system:nexus` (impersonated), so a permission
//! missing from `deploy/rbac.yaml` fails it. It works on tenants of its own and removes
//! them. On the script's cluster kwok plays the nodes, so tenants' nodes become available.
//!
//! What only a real API server shows, each a test: the CRDs accepted and an agent's unknown
//! fields kept while a tenant's are pruned; statuses written through the status
//! subresource; a second field manager on a field Nexus owns; a watch resumed at a
//! compacted revision recovered by relisting (the script's `NEXUS_KUBE_ETCD_COMPACTION`
//! short, NexusAgents watched from etcd); an invalid agent made by hand let go when
//! deleted; a namespace the cluster refuses reported in a sentence a user can act on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::{Client, CustomResourceExt, ResourceExt};
use nexus_cluster_kube::crd::{AGENT_FINALIZER, NexusAgent, NexusTenant};
use nexus_cluster_kube::{KubeCluster, KubeSettings};
use nexus_ports::agents::{AgentManifest, AgentName, AgentPhase, AgentStatus, Change};
use nexus_ports::identity::UserId;
use nexus_ports::leadership::Fence;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase};
use serde::Deserialize;
use serde_json::{Value, json};

const SYSTEM: &str = "nexus-system";
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
const NODE_IMAGE: &str = "astromesh-node:0.74.1";

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

/// The CRDs (as the committed `deploy/crds.yaml` has them), the namespace and the RBAC.
async fn install(admin: &Client) {
    let discovery = Discovery::new(admin.clone()).run().await.expect("discovery");
    apply_file(admin, &discovery, "crds.yaml").await;
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    for crd in [NexusTenant::crd(), NexusAgent::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        eventually(&format!("the API server establishes {name}"), 60, async || {
            let crd = crds.get(&name).await.unwrap();
            crd.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
        })
        .await;
    }
    eventually("the custom resources are served", 60, async || Api::<NexusAgent>::all(admin.clone()).list(&ListParams::default()).await.is_ok()).await;
    let discovery = Discovery::new(admin.clone()).run().await.expect("discovery");
    apply_file(admin, &discovery, "namespace.yaml").await;
    apply_file(admin, &discovery, "rbac.yaml").await;
}

/// Polls `done` every 250 ms until it holds, failing after `seconds`.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, seconds: u64, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done().await {
        assert!(Instant::now() < deadline, "not within {seconds} s: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The service account's configuration: the deployed permissions, no more.
fn as_nexus(mut config: kube::Config) -> kube::Config {
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{SYSTEM}:nexus"));
    config
}

struct Setup {
    config: kube::Config,
    admin: Client,
    cluster: KubeCluster,
}

fn settings() -> KubeSettings {
    KubeSettings { system_namespace: SYSTEM.to_owned(), node_image: NODE_IMAGE.to_owned() }
}

async fn setup() -> Option<Setup> {
    let config = config().await?;
    let admin = Client::try_from(config.clone()).expect("admin client");
    install(&admin).await;
    let cluster = KubeCluster::new(Client::try_from(as_nexus(config.clone())).expect("impersonating client"), settings());
    cluster.check().await.expect("the API server answers");
    Some(Setup { config, admin, cluster })
}

fn new_tenant() -> Tenant {
    Tenant { max_agents: 3, ..nexus_ports::testing::tenant(UserId::generate()) }
}

fn manifest(name: &str, extra: Value) -> AgentManifest {
    AgentManifest::parse(json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "x-kept": extra}}))
        .unwrap()
}

impl Setup {
    fn agents(&self, tenant: &TenantId) -> Api<NexusAgent> {
        Api::namespaced(self.admin.clone(), &tenant.cr_name())
    }

    fn tenants(&self) -> Api<NexusTenant> {
        Api::namespaced(self.admin.clone(), SYSTEM)
    }

    /// Deletes the tenant as Nexus does and waits until its resource is gone.
    async fn remove(&self, tenant: &TenantId) {
        self.cluster.deprovision_tenant(tenant).await.unwrap();
        let name = tenant.cr_name();
        eventually("the namespace goes, then the tenant's resource", 120, async || {
            for agent in self.agents(tenant).list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
                self.cluster.forget_agent(tenant, &AgentName::parse(&agent.name_any()).unwrap()).await.unwrap();
            }
            self.cluster.finish_deletions().await.unwrap();
            self.tenants().get_opt(&name).await.unwrap().is_none()
        })
        .await;
    }
}

#[tokio::test]
async fn provisions_tenants_holds_agents_and_leads_as_the_deployed_service_account() {
    let Some(setup) = setup().await else { return };
    let (admin, cluster) = (setup.admin.clone(), setup.cluster.clone());

    let mut leading = cluster.leadership(&format!("real-cluster-test-{}", &TenantId::generate().to_string()[2..10]));
    tokio::time::timeout(Duration::from_secs(60), leading.wait_for(Option::is_some)).await.expect("leads within a minute").unwrap();

    let tenant = new_tenant();
    let ns = tenant.id.cr_name();
    let status = cluster.provision_tenant(&tenant).await.expect("provision");
    assert!(matches!(status.phase, TenantPhase::Provisioning | TenantPhase::Ready), "{status:?}");
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().node_endpoint, Some(format!("http://astromesh-node.{ns}.svc:8000")));
    let namespace = Api::<Namespace>::all(admin.clone()).get(&ns).await.unwrap();
    assert_eq!(namespace.labels().get("nexus.astromesh.io/managed").map(String::as_str), Some("true"));
    assert_eq!(namespace.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));
    Api::<NetworkPolicy>::namespaced(admin.clone(), &ns).get("astromesh-node").await.expect("node network policy");
    Api::<Service>::namespaced(admin.clone(), &ns).get("astromesh-node").await.expect("node service");
    // kwok runs the pods the restricted profile admitted: the node becomes available, and
    // provisioning again says Ready.
    eventually("the tenant's node is available and the tenant Ready", 120, async || {
        cluster.provision_tenant(&tenant).await.expect("provisioning again").phase == TenantPhase::Ready
    })
    .await;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns).get("astromesh-node").await.unwrap();
    assert_eq!(deployment.status.and_then(|s| s.available_replicas), Some(1), "its pod admitted by the restricted profile and running");

    let manifest = manifest("bot", json!({"a": 1}));
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
    assert!(setup.agents(&tenant.id).get_opt("bot").await.unwrap().is_none(), "let go once its finalizer is released");

    // Deleting: the tenant is held until the namespace controller emptied and removed its
    // namespace, then let go.
    cluster.deprovision_tenant(&tenant.id).await.unwrap();
    cluster.finish_deletions().await.unwrap();
    assert!(setup.tenants().get_opt(&ns).await.unwrap().is_some(), "held while its namespace terminates");
    eventually("the namespace goes, then the tenant's resource", 120, async || {
        cluster.finish_deletions().await.unwrap();
        setup.tenants().get_opt(&ns).await.unwrap().is_none()
    })
    .await;
    assert!(Api::<Namespace>::all(admin.clone()).get_opt(&ns).await.unwrap().is_none(), "the namespace went first");
    assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().phase, TenantPhase::Pending, "then the tenant resource");
    drop(leading);
}

#[tokio::test]
async fn the_crds_are_accepted_and_an_agent_keeps_unknown_fields_where_a_tenant_prunes_them() {
    let Some(setup) = setup().await else { return };
    let tenant = new_tenant();
    setup.cluster.provision_tenant(&tenant).await.unwrap();
    let deep = json!({"nested": {"list": [1, {"x": true}]}, "s": "kept"});
    setup.cluster.apply_agent(&tenant.id, &manifest("keeper", deep.clone())).await.unwrap();
    // Read back as stored, by another client than the one that wrote it.
    let stored = setup.agents(&tenant.id).get("keeper").await.unwrap();
    assert_eq!(stored.spec.agent_spec["spec"]["x-kept"], deep, "agentSpec keeps every field (x-kubernetes-preserve-unknown-fields)");

    // Outside agentSpec the structural schema rules. A server-side apply with a field it
    // does not declare is refused outright (Nexus's applies only carry declared fields)...
    let raw: Api<DynamicObject> = Api::namespaced_with(setup.admin.clone(), SYSTEM, &kube::discovery::ApiResource::erase::<NexusTenant>(&()));
    let patch = json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenant", "spec": {"unknownField": 1}});
    let refused = raw.patch(&tenant.id.cr_name(), &PatchParams::apply("nexus-test-prune"), &Patch::Apply(&patch)).await.unwrap_err();
    assert!(refused.to_string().contains("field not declared in schema"), "{refused}");
    // ...and a plain patch (kubectl edit) has the field pruned: dropped, not stored.
    let answer = raw.patch(&tenant.id.cr_name(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert!(answer.data["spec"].get("unknownField").is_none(), "pruned: {}", answer.data["spec"]);
    assert_eq!(answer.data["spec"]["displayName"], "org", "Nexus's fields untouched");
    setup.remove(&tenant.id).await;
}

#[tokio::test]
async fn statuses_are_written_through_the_status_subresource() {
    let Some(setup) = setup().await else { return };
    let tenant = new_tenant();
    setup.cluster.provision_tenant(&tenant).await.unwrap();
    let bot = manifest("bot", json!({}));
    setup.cluster.apply_agent(&tenant.id, &bot).await.unwrap();
    let failed = AgentStatus { phase: AgentPhase::Failed, node_ack: false, last_synced_at: None, message: Some("the node said no".into()) };
    setup.cluster.set_agent_status(&tenant.id, bot.name(), 1, &failed, Fence::Alone).await.unwrap();

    let stored = setup.agents(&tenant.id).get("bot").await.unwrap();
    assert_eq!(stored.metadata.generation, Some(1), "a status write does not bump the generation");
    let status = stored.status.clone().unwrap();
    assert_eq!((status.message.as_deref(), status.observed_generation), (Some("the node said no"), Some(1)));
    let managers: Vec<(String, Option<String>)> =
        stored.managed_fields().iter().map(|f| (f.manager.clone().unwrap_or_default(), f.subresource.clone().filter(|s| !s.is_empty()))).collect();
    assert!(managers.contains(&("nexus".to_owned(), Some("status".to_owned()))), "the status is Nexus's, through /status: {managers:?}");
    assert!(managers.contains(&("nexus".to_owned(), None)), "the spec is Nexus's: {managers:?}");

    // The main resource ignores a status: only /status writes it.
    let raw: Api<DynamicObject> = Api::namespaced_with(setup.admin.clone(), &tenant.id.cr_name(), &kube::discovery::ApiResource::erase::<NexusAgent>(&()));
    let sneaky = json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent", "status": {"phase": "Running"}});
    raw.patch("bot", &PatchParams::default(), &Patch::Merge(&sneaky)).await.unwrap();
    let stored = setup.agents(&tenant.id).get("bot").await.unwrap();
    assert_eq!(stored.status.unwrap().message.as_deref(), Some("the node said no"), "unchanged by a write to the main resource");

    // The tenant's status, likewise, and the schema refuses a phase it does not know.
    let tenants: Api<DynamicObject> = Api::namespaced_with(setup.admin.clone(), SYSTEM, &kube::discovery::ApiResource::erase::<NexusTenant>(&()));
    let bad = json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenant", "status": {"phase": "Exploded"}});
    let refused = tenants.patch_status(&tenant.id.cr_name(), &PatchParams::apply("nexus-test").force(), &Patch::Apply(&bad)).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 422), "{refused}");
    setup.remove(&tenant.id).await;
}

#[tokio::test]
async fn a_field_nexus_owns_changed_by_another_manager_is_taken_back_by_the_next_apply() {
    let Some(setup) = setup().await else { return };
    let tenant = new_tenant();
    let ns = tenant.id.cr_name();
    setup.cluster.provision_tenant(&tenant).await.unwrap();
    let deployments = Api::<Deployment>::namespaced(setup.admin.clone(), &ns);
    let image = |d: &Deployment| d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
    let change = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "astromesh-node", "image": "someone/else:1"}]}}}});

    // An apply by another manager that does not force is refused: the field is Nexus's.
    let conflict = deployments.patch("astromesh-node", &PatchParams::apply("ops-team"), &Patch::Apply(&change)).await.unwrap_err();
    assert!(matches!(&conflict, kube::Error::Api(s) if s.code == 409 && s.message.contains("nexus")), "{conflict}");
    // A plain patch (kubectl edit, kubectl set image) goes through and takes the field over...
    let edited = deployments
        .patch("astromesh-node", &PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() }, &Patch::Strategic(&change))
        .await
        .unwrap();
    assert_eq!(image(&edited), "someone/else:1");
    // ...until Nexus applies again: its forced apply wins and the field is Nexus's again.
    setup.cluster.provision_tenant(&tenant).await.unwrap();
    let taken_back = deployments.get("astromesh-node").await.unwrap();
    assert_eq!(image(&taken_back), NODE_IMAGE);
    let owns_image = |manager: &str| {
        taken_back.managed_fields().iter().any(|f| {
            f.manager.as_deref() == Some(manager) && f.fields_v1.as_ref().is_some_and(|v| serde_json::to_string(&v.0).unwrap_or_default().contains("f:image"))
        })
    };
    assert!(owns_image("nexus") && !owns_image("kubectl-edit"), "{:?}", taken_back.managed_fields());
    setup.remove(&tenant.id).await;
}

/// A TCP proxy to the API server that can be cut: what it relays dies with it, and while
/// cut it refuses nothing but closes every connection at once.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn to(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (flag, gen_tx) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_now = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Self { port, cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_watch_resumed_at_a_compacted_revision_relists_and_carries_on() {
    let Some(setup) = setup().await else { return };
    let upstream = format!("{}:{}", setup.config.cluster_url.host().unwrap(), setup.config.cluster_url.port_u16().unwrap());
    let proxy = Proxy::to(upstream).await;
    let mut watch_config = as_nexus(setup.config.clone());
    watch_config.cluster_url = format!("https://127.0.0.1:{}", proxy.port).parse().unwrap();
    watch_config.tls_server_name = Some(setup.config.cluster_url.host().unwrap().to_owned());
    let requests = Client::try_from(as_nexus(setup.config.clone())).unwrap();
    let cluster = KubeCluster::with_clients(requests, Client::try_from(watch_config).unwrap(), settings());
    let tenant = new_tenant();
    cluster.provision_tenant(&tenant).await.unwrap();

    let (seen, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = Box::pin(cluster.changes());
    let watching = tokio::spawn(async move {
        while let Some(change) = stream.next().await {
            if seen.send(change).is_err() {
                break;
            }
        }
    });
    let agent_change = |name: &str| Change::Agent(tenant.id, AgentName::parse(name).unwrap());
    let mut wait_for = async |change: Change| {
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(seen) = changes.recv().await {
                if seen == change {
                    return;
                }
            }
            panic!("the watch stream ended");
        })
        .await
        .unwrap_or_else(|_| panic!("no {change:?} within 120 s"));
    };
    cluster.apply_agent(&tenant.id, &manifest("before", json!({}))).await.unwrap();
    wait_for(agent_change("before")).await;

    // Cut the watches off, and while they are away change agents and let the API server
    // compact etcd past the revision they resume at.
    proxy.cut();
    let agents = setup.agents(&tenant.id);
    let resumed_at = agents.get("before").await.unwrap().resource_version().unwrap();
    cluster.apply_agent(&tenant.id, &manifest("while-away", json!({}))).await.unwrap();
    for round in 0..5 {
        cluster.apply_agent(&tenant.id, &manifest("before", json!({"round": round}))).await.unwrap();
    }
    eventually("etcd compacts the revision the watch would resume at", 120, async || {
        let mut watch = match agents.watch(&WatchParams::default(), &resumed_at).await {
            Ok(watch) => Box::pin(watch),
            Err(kube::Error::Api(status)) => return status.code == 410,
            Err(err) => panic!("{err}"),
        };
        // The API server answers the watch, then says in its first event that the
        // revision is gone.
        match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Error(status)))) => status.code == 410,
            Ok(Some(Err(kube::Error::Api(status)))) => status.code == 410,
            _ => false,
        }
    })
    .await;

    // Back: the watch is told its revision is gone (410), lists again, and reports what
    // changed meanwhile, on the same stream.
    proxy.restore();
    wait_for(agent_change("while-away")).await;
    assert!(!watching.is_finished(), "the same stream goes on: no restart");
    let object = cluster.agent_object(&tenant.id, &AgentName::parse("while-away").unwrap()).await.unwrap();
    assert!(object.is_some(), "the store has what the relist found");
    watching.abort();
    setup.remove(&tenant.id).await;
}

#[tokio::test]
async fn an_invalid_agent_made_by_hand_loses_its_finalizer_when_deleted() {
    let Some(setup) = setup().await else { return };
    let tenant = new_tenant();
    setup.cluster.provision_tenant(&tenant).await.unwrap();
    let agents = setup.agents(&tenant.id);
    // Made with kubectl, finalizer and all, with a manifest Nexus cannot read.
    let by_hand: NexusAgent = serde_json::from_value(json!({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
        "metadata": {"name": "broken", "finalizers": [AGENT_FINALIZER]},
        "spec": {"agentSpec": {"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "another-name"}}}
    }))
    .unwrap();
    agents.create(&PostParams::default(), &by_hand).await.expect("the API server accepts it: the schema keeps agentSpec open");
    assert!(setup.cluster.list_agent_objects().await.unwrap().iter().all(|o| o.manifest.name().as_str() != "broken"), "left to its author");
    agents.delete("broken", &DeleteParams::default()).await.unwrap();
    assert!(agents.get("broken").await.unwrap().metadata.deletion_timestamp.is_some(), "held by the finalizer");
    eventually("the listing lets it go", 30, async || {
        setup.cluster.list_agent_objects().await.unwrap();
        agents.get_opt("broken").await.unwrap().is_none()
    })
    .await;
    setup.remove(&tenant.id).await;
}

#[tokio::test]
async fn a_namespace_the_cluster_refuses_is_reported_in_words_a_user_can_act_on() {
    let Some(setup) = setup().await else { return };
    let tenant = new_tenant();
    let ns = tenant.id.cr_name();
    // An admission policy of the cluster's operator refuses this tenant's namespace.
    let policy_name = format!("refuse-{}", &ns[7..15]);
    let policies: Api<DynamicObject> = Api::all_with(
        setup.admin.clone(),
        &kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy")),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        setup.admin.clone(),
        &kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding")),
    );
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["namespaces"]}]},
            "validations": [{"expression": format!("object.metadata.name != '{ns}'"), "message": "new namespaces are frozen during the migration"}]
        }
    }))
    .unwrap();
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {"policyName": policy_name, "validationActions": ["Deny"]}
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();

    // Policies take effect within a second or so: wait until a dry run is refused, so that
    // the namespace is not made before.
    let namespaces = Api::<Namespace>::all(setup.admin.clone());
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let probe: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    eventually("the policy is in force", 30, async || namespaces.create(&dry_run, &probe).await.is_err()).await;
    let refusal = setup.cluster.provision_tenant(&tenant).await.expect_err("the namespace is refused");
    let message = refusal.public_message();
    assert!(message.contains("namespace") && message.contains("new namespaces are frozen during the migration"), "{message}");
    assert_ne!(message, "internal error");
    let status = setup.cluster.tenant_status(&tenant.id).await.unwrap();
    assert_eq!((status.phase, status.message.as_deref()), (TenantPhase::Error, Some(message.as_str())), "the tenant says why");

    // The operator lifts the policy: the next attempt provisions it.
    bindings.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    policies.delete(&policy_name, &DeleteParams::default()).await.unwrap();
    eventually("the tenant provisions once the policy is gone", 30, async || setup.cluster.provision_tenant(&tenant).await.is_ok()).await;
    setup.remove(&tenant.id).await;
}
