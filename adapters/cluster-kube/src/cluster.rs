//! [`ClusterBackend`] on a Kubernetes API server. Every write is a server-side apply with
//! field manager `nexus`; statuses go through the status subresource. Tenants are
//! `NexusTenant`s in the system namespace, each provisioned as a namespace (labelled
//! managed) with Deployment and Service `astromesh-node`; agents are `NexusAgent`s in
//! their tenant's namespace, held by a finalizer until their node forgot them.
//! Kubernetes errors are translated here: a 404 is "absent", a connection failure is
//! [`Error::Unavailable`].

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};
use serde_json::{Value, json};

use crate::crd::{AGENT_FINALIZER, MANAGED_LABEL, NexusAgent, NexusAgentPhase, NexusTenant, NexusTenantPhase, TENANT_FINALIZER};
use crate::resources::{node_deployment, node_endpoint, node_service};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "nexus";

/// Where and how tenants' resources are made.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the `NexusTenant` resources (`nexus-system`).
    pub system_namespace: String,
    /// Image of tenants' nodes.
    pub node_image: String,
}

/// [`ClusterBackend`] on Kubernetes.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    settings: KubeSettings,
}

/// Translates a Kubernetes error by intent.
pub(crate) fn translate(err: kube::Error) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 409 => Error::Conflict(status.message),
        kube::Error::Api(status) if status.code >= 500 => Error::Unavailable(format!("the Kubernetes API answered {}: {}", status.code, status.message)),
        kube::Error::Api(status) => Error::Internal(format!("the Kubernetes API refused a request ({}): {}", status.code, status.message)),
        other => {
            tracing::warn!(error = %other, "Kubernetes API unreachable");
            Error::Unavailable("the Kubernetes cluster cannot be reached".to_owned())
        }
    }
}

/// `Ok(None)` for a 404, the value otherwise.
fn absent_ok<T>(result: kube::Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(translate(err)),
    }
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// An agent resource as the core sees it; `None` for one whose manifest is not valid (made
/// with kubectl, say), which is logged and left alone.
pub(crate) fn agent_object(agent: &NexusAgent) -> Option<AgentObject> {
    let namespace = agent.namespace()?;
    let tenant_id = TenantId::from_cr_name(&namespace)?;
    let manifest = match AgentManifest::parse(agent.spec.agent_spec.clone()) {
        Ok(manifest) if manifest.name().as_str() == agent.name_any() => manifest,
        Ok(_) => {
            tracing::warn!(agent = %agent.name_any(), %namespace, "metadata.name of agentSpec differs from the resource name; left alone");
            return None;
        }
        Err(err) => {
            tracing::warn!(agent = %agent.name_any(), %namespace, error = %err, "invalid agentSpec; left alone");
            return None;
        }
    };
    let status = agent.status.clone().unwrap_or_default();
    Some(AgentObject {
        tenant_id,
        manifest,
        generation: agent.metadata.generation.and_then(|g| u64::try_from(g).ok()).unwrap_or(1),
        observed_generation: status.observed_generation.and_then(|g| u64::try_from(g).ok()).unwrap_or(0),
        status: AgentStatus {
            phase: status.phase.map_or(AgentPhase::Pending, AgentPhase::from),
            node_ack: status.node_ack,
            last_synced_at: status.last_synced_at,
            message: status.message,
        },
        deleting: agent.metadata.deletion_timestamp.is_some(),
    })
}

impl KubeCluster {
    /// A backend on `client`.
    pub fn new(client: Client, settings: KubeSettings) -> Self {
        Self { client, settings }
    }

    /// Connects with the in-cluster configuration or `KUBECONFIG`, and checks that the API
    /// server answers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the cluster when it cannot be reached.
    pub async fn connect(settings: KubeSettings) -> Result<Self> {
        let config = kube::Config::infer().await.map_err(|err| Error::Unavailable(format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {err}")))?;
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|err| Error::Unavailable(format!("cannot build a client for the cluster at {url}: {err}")))?;
        client.apiserver_version().await.map_err(|err| Error::Unavailable(format!("the Kubernetes cluster at {url} cannot be reached: {err}")))?;
        Ok(Self::new(client, settings))
    }

    /// The client, for watchers and leader election.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The settings.
    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    fn tenants(&self) -> Api<NexusTenant> {
        Api::namespaced(self.client.clone(), &self.settings.system_namespace)
    }

    fn agents_in(&self, tenant: &TenantId) -> Api<NexusAgent> {
        Api::namespaced(self.client.clone(), &tenant.cr_name())
    }

    /// Namespace, node Deployment and Service of an applied tenant, then its status Ready.
    async fn provision_resources(&self, name: &str, applied: &NexusTenant) -> Result<TenantStatus> {
        self.set_tenant_status(name, json!({"phase": NexusTenantPhase::Provisioning})).await?;
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {MANAGED_LABEL: "true"}}});
        Api::<Namespace>::all(self.client.clone()).patch(name, &apply(), &Patch::Apply(&namespace)).await.map_err(translate)?;
        let deployment = node_deployment(applied, &self.settings.node_image);
        Api::<Deployment>::namespaced(self.client.clone(), name).patch("astromesh-node", &apply(), &Patch::Apply(&deployment)).await.map_err(translate)?;
        Api::<Service>::namespaced(self.client.clone(), name).patch("astromesh-node", &apply(), &Patch::Apply(&node_service())).await.map_err(translate)?;
        let endpoint = node_endpoint(name);
        self.set_tenant_status(name, json!({"phase": NexusTenantPhase::Ready, "namespace": name, "nodeEndpoint": endpoint, "conditions": []})).await?;
        Ok(TenantStatus { phase: TenantPhase::Ready, namespace: Some(name.to_owned()), node_endpoint: Some(endpoint), message: None })
    }

    async fn set_tenant_status(&self, name: &str, status: Value) -> Result<()> {
        let patch = json!({"apiVersion": NexusTenant::api_version(&()), "kind": NexusTenant::kind(&()), "status": status});
        self.tenants().patch_status(name, &apply(), &Patch::Apply(&patch)).await.map_err(translate)?;
        Ok(())
    }
}

#[async_trait]
impl ClusterBackend for KubeCluster {
    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus> {
        let name = tenant.id.cr_name();
        let quota = json!({"maxAgents": tenant.max_agents});
        let resource = json!({
            "apiVersion": NexusTenant::api_version(&()),
            "kind": NexusTenant::kind(&()),
            "metadata": {"name": name, "finalizers": [TENANT_FINALIZER]},
            "spec": {"displayName": tenant.display_name.as_str(), "nodeProfile": tenant.node_profile.as_str(), "resourceQuota": quota}
        });
        let applied = self.tenants().patch(&name, &apply(), &Patch::Apply(&resource)).await.map_err(translate)?;
        match self.provision_resources(&name, &applied).await {
            Ok(status) => Ok(status),
            Err(err) => {
                // Best effort: the resource shows why; the loop retries with backoff.
                let _ = self.set_tenant_status(&name, json!({"phase": NexusTenantPhase::Error, "conditions": [{"type": "Ready", "status": "False", "reason": "ProvisioningFailed", "message": err.to_string()}]})).await;
                Err(err)
            }
        }
    }

    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        let Some(tenant) = absent_ok(self.tenants().get(&id.cr_name()).await)? else { return Ok(TenantStatus::pending()) };
        let status = tenant.status.unwrap_or_default();
        Ok(TenantStatus {
            phase: status.phase.map_or(TenantPhase::Pending, TenantPhase::from),
            namespace: status.namespace,
            node_endpoint: status.node_endpoint,
            message: None,
        })
    }

    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()> {
        let name = id.cr_name();
        absent_ok(self.tenants().delete(&name, &DeleteParams::default()).await)?;
        absent_ok(Api::<Namespace>::all(self.client.clone()).delete(&name, &DeleteParams::default()).await)?;
        let release = json!({"metadata": {"finalizers": null}});
        absent_ok(self.tenants().patch(&name, &PatchParams::default(), &Patch::Merge(&release)).await)?;
        Ok(())
    }

    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()> {
        let resource = json!({
            "apiVersion": NexusAgent::api_version(&()),
            "kind": NexusAgent::kind(&()),
            "metadata": {"name": manifest.name().as_str(), "finalizers": [AGENT_FINALIZER]},
            "spec": {"agentSpec": manifest.document()}
        });
        self.agents_in(tenant).patch(manifest.name().as_str(), &apply(), &Patch::Apply(&resource)).await.map_err(translate)?;
        Ok(())
    }

    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        absent_ok(self.agents_in(tenant).delete(name.as_str(), &DeleteParams::default()).await)?;
        Ok(())
    }

    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        Ok(absent_ok(self.agents_in(tenant).get(name.as_str()).await)?.as_ref().and_then(agent_object))
    }

    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>> {
        let agents = Api::<NexusAgent>::all(self.client.clone()).list(&ListParams::default()).await.map_err(translate)?;
        Ok(agents.items.iter().filter_map(agent_object).collect())
    }

    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus) -> Result<()> {
        let patch = json!({
            "apiVersion": NexusAgent::api_version(&()),
            "kind": NexusAgent::kind(&()),
            "status": {
                "phase": NexusAgentPhase::from(status.phase),
                "nodeAck": status.node_ack,
                "lastSyncedAt": status.last_synced_at,
                "observedGeneration": observed_generation,
                "message": status.message,
            }
        });
        absent_ok(self.agents_in(tenant).patch_status(name.as_str(), &apply(), &Patch::Apply(&patch)).await)?;
        Ok(())
    }

    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let api = self.agents_in(tenant);
        let Some(agent) = absent_ok(api.get(name.as_str()).await)? else { return Ok(()) };
        let kept: Vec<String> = agent.finalizers().iter().filter(|f| f.as_str() != AGENT_FINALIZER).cloned().collect();
        let release = json!({"metadata": {"finalizers": kept}});
        absent_ok(api.patch(name.as_str(), &PatchParams::default(), &Patch::Merge(&release)).await)?;
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for KubeCluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    async fn check(&self) -> Result<()> {
        self.client.apiserver_version().await.map(drop).map_err(translate)
    }
}
