//! Agents on Kubernetes: `NexusAgent`s in their tenant's namespace, held by Nexus's
//! finalizer until their node forgot them. An agent the API server refuses is marked by a
//! Warning event on its tenant's `NexusTenant`; one whose manifest is not valid (made with
//! `kubectl`, say) is left to its author, and let go when deleted.
//!
//! Reads come from the agents' store once it is ready (see `reflector.rs`), from the API
//! server until then; every write's answer goes into the store.

use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use nexus_ports::Result;
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::tenancy::TenantId;
use serde_json::json;

use crate::KubeCluster;
use crate::cluster::{absent_ok, apply, release_finalizer, translate};
use crate::crd::{AGENT_FINALIZER, NexusAgent, NexusAgentPhase};

/// What the store keeps of a `NexusAgent`: what reads need, the manifest once.
#[derive(Debug, Clone)]
pub(crate) struct AgentEntry {
    /// The agent as the core sees it; `None` for one outside tenant namespaces or whose
    /// manifest is not valid.
    pub object: Option<AgentObject>,
    pub namespace: String,
    pub name: String,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub resource_version: Option<String>,
}

impl AgentEntry {
    pub(crate) fn of(agent: &NexusAgent) -> Self {
        Self {
            object: agent_object(agent),
            namespace: agent.namespace().unwrap_or_default(),
            name: agent.name_any(),
            deleting: agent.metadata.deletion_timestamp.is_some(),
            finalizers: agent.finalizers().to_vec(),
            resource_version: agent.resource_version(),
        }
    }

    /// Deleted, held by Nexus's finalizer, with a manifest the loop cannot handle: nobody
    /// but the listing lets it go.
    fn pinned_invalid(&self) -> bool {
        self.object.is_none() && self.deleting && self.finalizers.iter().any(|f| f == AGENT_FINALIZER) && TenantId::from_cr_name(&self.namespace).is_some()
    }
}

/// The manifest of an agent resource, if it is a valid one for its name.
fn manifest_of(agent: &NexusAgent) -> Result<AgentManifest, String> {
    match AgentManifest::parse(agent.spec.agent_spec.clone()) {
        Ok(manifest) if manifest.name().as_str() == agent.name_any() => Ok(manifest),
        Ok(_) => Err("metadata.name of agentSpec differs from the resource name".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

/// An agent resource as the core sees it; `None` for one outside tenant namespaces or
/// whose manifest is not valid, which is logged and left alone.
pub(crate) fn agent_object(agent: &NexusAgent) -> Option<AgentObject> {
    let namespace = agent.namespace()?;
    let tenant_id = TenantId::from_cr_name(&namespace)?;
    let manifest = match manifest_of(agent) {
        Ok(manifest) => manifest,
        Err(problem) => {
            tracing::warn!(agent = %agent.name_any(), %namespace, %problem, "invalid agentSpec; left alone");
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
    /// Applies the agent with its finalizer; a refusal is marked on the tenant.
    pub(crate) async fn apply_agent_resource(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()> {
        let document = manifest.document()?;
        let resource = json!({
            "apiVersion": NexusAgent::api_version(&()),
            "kind": NexusAgent::kind(&()),
            "metadata": {"name": manifest.name().as_str(), "finalizers": [AGENT_FINALIZER]},
            "spec": {"agentSpec": document}
        });
        let applied = self.agents_in(tenant).patch(manifest.name().as_str(), &apply(), &Patch::Apply(&resource)).await.map_err(translate);
        match applied {
            Ok(agent) => {
                self.keep_agent(&agent);
                Ok(())
            }
            Err(err) => {
                self.mark_tenant(tenant, "AgentNotApplied", &format!("agent {} could not be applied: {err}", manifest.name())).await;
                Err(err)
            }
        }
    }

    /// The agent object: from the store once it is ready.
    pub(crate) async fn read_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        if let Some(kept) = self.stores().agents.get(&(tenant.cr_name(), name.as_str().to_owned())) {
            return Ok(kept.and_then(|entry| entry.object.clone()));
        }
        Ok(absent_ok(self.agents_in(tenant).get(name.as_str()).await)?.as_ref().and_then(agent_object))
    }

    /// Asks for the agent's deletion; what the API server answers is kept.
    pub(crate) async fn delete_agent_resource(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let answer = absent_ok(self.agents_in(tenant).delete(name.as_str(), &DeleteParams::default()).await)?;
        match answer.and_then(|answer| answer.left()) {
            Some(agent) => self.keep_agent(&agent),
            // Gone at once (nothing held it), or absent already.
            None => self.stores().agents.went(&(tenant.cr_name(), name.as_str().to_owned()), None),
        }
        Ok(())
    }

    /// Removes Nexus's finalizer from the agent (read from the store once it is ready).
    pub(crate) async fn release_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let api = self.agents_in(tenant);
        let key = (tenant.cr_name(), name.as_str().to_owned());
        let entry = match self.stores().agents.get(&key) {
            Some(kept) => kept.map(|entry| (*entry).clone()),
            None => absent_ok(api.get(name.as_str()).await)?.as_ref().map(AgentEntry::of),
        };
        let Some(entry) = entry else { return Ok(()) };
        self.release_entry(&api, &entry).await
    }

    /// Removes Nexus's finalizer from the agent `entry` describes, keeping the answer.
    async fn release_entry(&self, api: &Api<NexusAgent>, entry: &AgentEntry) -> Result<()> {
        if let Some(answer) = release_finalizer(api, &entry.name, &entry.finalizers, entry.resource_version.as_deref(), AGENT_FINALIZER).await? {
            self.keep_agent(&answer);
        }
        Ok(())
    }

    /// Publishes a Warning event on the tenant's resource, for `kubectl describe`; best
    /// effort (a cluster that refused the agent may refuse this too).
    async fn mark_tenant(&self, tenant: &TenantId, reason: &str, note: &str) {
        let Ok(Some(resource)) = self.read_tenant(tenant).await else { return };
        let event = Event { type_: EventType::Warning, reason: reason.to_owned(), note: Some(note.to_owned()), action: "Apply".to_owned(), secondary: None };
        if let Err(err) = self.recorder().publish(&event, &resource.object_ref(&())).await {
            tracing::debug!(tenant = %tenant, error = %err, "could not publish an event on the tenant");
        }
    }

    /// Every agent in tenant namespaces with a valid manifest. Those being deleted whose
    /// manifest is not valid are let go on the way: the loop never sees them, so without
    /// this Nexus's finalizer would hold them (and their namespace) forever.
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentObject>> {
        let entries: Vec<AgentEntry> = match self.stores().agents.all() {
            Some(kept) => kept.iter().map(|entry| (**entry).clone()).collect(),
            None => Api::<NexusAgent>::all(self.client()).list(&ListParams::default()).await.map_err(translate)?.items.iter().map(AgentEntry::of).collect(),
        };
        for entry in entries.iter().filter(|entry| entry.pinned_invalid()) {
            let api = Api::<NexusAgent>::namespaced(self.client(), &entry.namespace);
            if let Err(err) = self.release_entry(&api, entry).await {
                tracing::warn!(agent = %entry.name, error = %err, "cannot let the deleted invalid agent go yet");
            }
        }
        Ok(entries.into_iter().filter_map(|entry| entry.object).collect())
    }

    /// Every agent in the tenant's namespace with a valid manifest: from the store once it
    /// is ready (only that namespace's objects are looked at).
    pub(crate) async fn list_tenant_agents(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
        if let Some(kept) = self.stores().agents.in_namespace(&tenant.cr_name()) {
            return Ok(kept.iter().filter_map(|entry| entry.object.clone()).collect());
        }
        let agents = self.agents_in(tenant).list(&ListParams::default()).await.map_err(translate)?;
        Ok(agents.items.iter().filter_map(agent_object).collect())
    }

    /// Records `status` for `observed_generation` through the status subresource.
    pub(crate) async fn write_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus) -> Result<()> {
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
        if let Some(agent) = absent_ok(self.agents_in(tenant).patch_status(name.as_str(), &apply(), &Patch::Apply(&patch)).await)? {
            self.keep_agent(&agent);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "agents_tests.rs"]
mod tests;
