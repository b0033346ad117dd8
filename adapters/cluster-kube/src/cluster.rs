//! [`ClusterBackend`] on a Kubernetes API server. Every write is a server-side apply with
//! field manager `nexus`; statuses go through the status subresource and are written only
//! when they change. Tenants are `NexusTenant`s in the system namespace (see
//! `tenants.rs`); agents are `NexusAgent`s in their tenant's namespace (see `agents.rs`).
//! Kubernetes errors are translated here: a 404 is "absent"; a connection failure, a 429
//! and a 5xx are [`Error::Unavailable`] (retry); a 409 is [`Error::Conflict`].
//!
//! Requests other than watches carry a timeout ([`REQUEST_TIMEOUT`]): a request client and
//! a watch client share one configuration but for that.
//!
//! Reads are served from the watches' stores once they listed everything (see
//! `reflector.rs`); every write's answer goes into them, so a read sees the write.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentStatus};
use nexus_ports::leadership::Fence;
use nexus_ports::node_names::NodeSharing;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantStatus};
use nexus_ports::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::agents::AgentEntry;
use crate::crd::{NexusAgent, NexusTenant};
use crate::reflector::{Reflector, key_of, version_of};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "nexus";
/// How long a request other than a watch may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how tenants' resources are made.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the `NexusTenant` resources and of the leader lease (`nexus-system`).
    pub system_namespace: String,
    /// Image of tenants' nodes.
    pub node_image: String,
}

/// [`ClusterBackend`] on Kubernetes.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    watch_client: Client,
    settings: KubeSettings,
    recorder: Recorder,
    stores: Arc<Stores>,
}

/// What the watches keep in memory, shared by every clone of a backend.
#[derive(Default)]
pub(crate) struct Stores {
    pub agents: Reflector<AgentEntry>,
    pub tenants: Reflector<NexusTenant>,
    /// What Nexus made for tenants, as the watches last saw it: tenant namespaces and the
    /// node's NetworkPolicies, Deployments and Services (see `tenants.rs`, drift).
    pub namespaces: Reflector<Owned>,
    pub policies: Reflector<Owned>,
    pub deployments: Reflector<Owned>,
    pub services: Reflector<Owned>,
    /// What this replica last applied of each tenant (by its resource's name).
    pub applied: std::sync::Mutex<std::collections::HashMap<String, crate::tenants::Applied>>,
}

impl Stores {
    /// The watches stopped: reads go to the API server again.
    pub(crate) fn stop(&self) {
        self.agents.stop();
        self.tenants.stop();
        for owned in [&self.namespaces, &self.policies, &self.deployments, &self.services] {
            owned.stop();
        }
    }
}

/// What is kept of an object Nexus made for a tenant: enough to tell whether anyone but
/// Nexus changed it since Nexus applied it, and whether a node Deployment is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owned {
    /// Its `resourceVersion`: any change of the object.
    pub version: Option<u64>,
    /// Its `metadata.generation`: a change of its spec (a status update leaves it).
    pub generation: Option<i64>,
    /// A Deployment's availability (see `tenants::node_available`).
    pub available: bool,
}

impl Owned {
    pub(crate) fn of<K: Resource + kube::ResourceExt>(object: &K) -> Self {
        Self { version: version_of(object), generation: object.meta().generation, available: false }
    }

    pub(crate) fn of_deployment(deployment: &k8s_openapi::api::apps::v1::Deployment) -> Self {
        Self { available: crate::tenants::node_available(deployment), ..Self::of(deployment) }
    }
}

/// Whether the API server let `object` go with this answer: it was being deleted and no
/// finalizer holds it any more.
fn let_go<K: Resource>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some() && object.meta().finalizers.as_ref().is_none_or(Vec::is_empty)
}

/// What clients are told when the cluster cannot serve them.
pub(crate) const UNAVAILABLE: &str = "the cluster is unavailable; retry later";
/// What clients are told when the cluster holds a conflicting change.
pub(crate) const CONFLICT: &str = "the cluster holds a conflicting change; retry";

/// Translates a Kubernetes error by intent. The API server's own message is logged here
/// and never put into a core error's client-facing text.
pub(crate) fn translate(err: kube::Error) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 409 => {
            tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, "the Kubernetes API refused a conflicting change");
            Error::Conflict(CONFLICT.to_owned())
        }
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, "the Kubernetes API failed or asked to slow down");
            Error::Unavailable(UNAVAILABLE.to_owned())
        }
        kube::Error::Api(status) => Error::Internal(format!("the Kubernetes API refused a request ({}): {}", status.code, status.message)),
        other => {
            tracing::warn!(error = %other, "Kubernetes API unreachable");
            Error::Unavailable(UNAVAILABLE.to_owned())
        }
    }
}

/// `Ok(None)` for a 404, the value otherwise.
pub(crate) fn absent_ok<T>(result: kube::Result<T>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(translate(err)),
    }
}

/// A forced server-side apply as `nexus`.
pub(crate) fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Removes `finalizer` from the object `name`, whose finalizers are `finalizers` at
/// `version`, keeping any other, with a merge patch that carries that resource version: a
/// concurrent change of the object answers 409 instead of being overwritten. Absent
/// objects and objects without the finalizer are fine. Returns the API server's answer.
pub(crate) async fn release_finalizer<K>(api: &Api<K>, name: &str, finalizers: &[String], version: Option<&str>, finalizer: &str) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(None);
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
    let mut release = json!({"metadata": {"finalizers": kept}});
    if let Some(version) = version {
        release["metadata"]["resourceVersion"] = json!(version);
    }
    absent_ok(api.patch(name, &PatchParams::default(), &Patch::Merge(&release)).await)
}

/// `config` for requests other than watches: answers must come within [`REQUEST_TIMEOUT`]
/// of sending (not of the pooled connection's last use).
pub(crate) fn request_config(mut config: kube::Config) -> kube::Config {
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.reset_reader_on_write = true;
    config
}

impl KubeCluster {
    /// A backend on `client`, for requests and watches alike.
    pub fn new(client: Client, settings: KubeSettings) -> Self {
        Self::with_clients(client.clone(), client, settings)
    }

    /// A backend sending requests on `client` and watching on `watch_client`.
    pub fn with_clients(client: Client, watch_client: Client, settings: KubeSettings) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.to_owned(), instance: std::env::var("HOSTNAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, watch_client, settings, recorder, stores: Arc::default() }
    }

    /// Connects with the in-cluster configuration or `KUBECONFIG`, and checks that the API
    /// server answers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the cluster when it cannot be reached.
    pub async fn connect(settings: KubeSettings) -> Result<Self> {
        let config = kube::Config::infer().await.map_err(|err| Error::Unavailable(format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {err}")))?;
        let url = config.cluster_url.to_string();
        let build = |config| Client::try_from(config).map_err(|err| Error::Unavailable(format!("cannot build a client for the cluster at {url}: {err}")));
        let client = build(request_config(config.clone()))?;
        let watch_client = build(config)?;
        client.apiserver_version().await.map_err(|err| Error::Unavailable(format!("the Kubernetes cluster at {url} cannot be reached: {err}")))?;
        Ok(Self::with_clients(client, watch_client, settings))
    }

    /// The client of requests other than watches.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client of watches (no read timeout: a watch is quiet while nothing changes).
    pub(crate) fn watch_client(&self) -> Client {
        self.watch_client.clone()
    }

    /// The settings.
    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    pub(crate) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub(crate) fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// Keeps what a write answered of an agent (or forgets it, once let go).
    pub(crate) fn keep_agent(&self, agent: &NexusAgent) {
        if let_go(agent) {
            self.stores.agents.went(&key_of(agent), version_of(agent));
        } else {
            self.stores.agents.written(&key_of(agent), version_of(agent), AgentEntry::of(agent));
        }
    }

    /// Keeps what a write answered of a tenant (or forgets it, once let go).
    pub(crate) fn keep_tenant(&self, tenant: &NexusTenant) {
        if let_go(tenant) {
            self.stores.tenants.went(&key_of(tenant), version_of(tenant));
        } else {
            self.stores.tenants.written(&key_of(tenant), version_of(tenant), tenant.clone());
        }
    }

    pub(crate) fn tenants(&self) -> Api<NexusTenant> {
        Api::namespaced(self.client.clone(), &self.settings.system_namespace)
    }

    pub(crate) fn agents_in(&self, tenant: &TenantId) -> Api<NexusAgent> {
        Api::namespaced(self.client.clone(), &tenant.cr_name())
    }
}

#[async_trait]
impl ClusterBackend for KubeCluster {
    /// Each tenant has a node of its own, in its namespace.
    fn node_sharing(&self) -> NodeSharing {
        NodeSharing::PerTenant
    }

    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus> {
        self.provision(tenant).await
    }

    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        self.read_tenant_status(id).await
    }

    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()> {
        self.deprovision(id).await
    }

    async fn finish_deletions(&self) -> Result<()> {
        self.finish_tenant_deletions().await
    }

    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()> {
        self.apply_agent_resource(tenant, manifest).await
    }

    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        self.delete_agent_resource(tenant, name).await
    }

    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        self.read_agent(tenant, name).await
    }

    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>> {
        self.list_agents().await
    }

    async fn list_tenant_agent_objects(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
        self.list_tenant_agents(tenant).await
    }

    /// The API server cannot make a status write conditional on the Lease: the loop checks
    /// its term (the lease held, its deadline not passed) before every write instead.
    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus, _fence: Fence) -> Result<()> {
        self.write_agent_status(tenant, name, observed_generation, status).await
    }

    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        self.release_agent(tenant, name).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_time_out_and_watches_keep_the_configured_reads() {
        let config = kube::Config::new("https://cluster.example:6443".parse().unwrap());
        assert_eq!(config.read_timeout, None, "kube's default: a read may wait forever");
        let requests = request_config(config.clone());
        assert_eq!(requests.read_timeout, Some(REQUEST_TIMEOUT));
        assert!(requests.reset_reader_on_write, "counted from the request, not the connection's last use");
    }

    #[test]
    fn throttling_and_server_errors_mean_retry() {
        let status = |code: u16| kube::Error::Api(kube::core::Status::failure("busy", "TooManyRequests").with_code(code).boxed());
        assert!(matches!(translate(status(429)), Error::Unavailable(_)));
        assert!(matches!(translate(status(503)), Error::Unavailable(_)));
        assert!(matches!(translate(status(409)), Error::Conflict(_)));
        assert!(matches!(translate(status(403)), Error::Internal(_)));
    }
}
