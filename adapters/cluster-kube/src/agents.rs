//! Agents on Kubernetes: `NexusAgent`s in their tenant's namespace, held by Nexus's
//! finalizer until their node forgot them. An agent the API server refuses is marked by a
//! Warning event on its tenant's `NexusTenant`; one whose manifest is not valid (made with
//! `kubectl`, say) is left to its author, and let go when deleted.

use kube::api::{Api, ListParams, Patch};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use nexus_ports::Result;
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::tenancy::TenantId;
use serde_json::json;

use crate::KubeCluster;
use crate::cluster::{absent_ok, apply, release_finalizer, translate};
use crate::crd::{AGENT_FINALIZER, NexusAgent, NexusAgentPhase};

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
        if let Err(err) = &applied {
            self.mark_tenant(tenant, "AgentNotApplied", &format!("agent {} could not be applied: {err}", manifest.name())).await;
        }
        applied.map(drop)
    }

    /// Publishes a Warning event on the tenant's resource, for `kubectl describe`; best
    /// effort (a cluster that refused the agent may refuse this too).
    async fn mark_tenant(&self, tenant: &TenantId, reason: &str, note: &str) {
        let Ok(Some(resource)) = absent_ok(self.tenants().get(&tenant.cr_name()).await) else { return };
        let event = Event { type_: EventType::Warning, reason: reason.to_owned(), note: Some(note.to_owned()), action: "Apply".to_owned(), secondary: None };
        if let Err(err) = self.recorder().publish(&event, &resource.object_ref(&())).await {
            tracing::debug!(tenant = %tenant, error = %err, "could not publish an event on the tenant");
        }
    }

    /// Every agent in tenant namespaces with a valid manifest. Those being deleted whose
    /// manifest is not valid are let go on the way: the loop never sees them, so without
    /// this Nexus's finalizer would hold them (and their namespace) forever.
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentObject>> {
        let agents = Api::<NexusAgent>::all(self.client()).list(&ListParams::default()).await.map_err(translate)?;
        for agent in &agents.items {
            let pinned = agent.metadata.deletion_timestamp.is_some() && agent.finalizers().iter().any(|f| f == AGENT_FINALIZER);
            if pinned && manifest_of(agent).is_err() {
                let api = Api::<NexusAgent>::namespaced(self.client(), &agent.namespace().unwrap_or_default());
                if let Err(err) = release_finalizer(&api, agent, AGENT_FINALIZER).await {
                    tracing::warn!(agent = %agent.name_any(), error = %err, "cannot let the deleted invalid agent go yet");
                }
            }
        }
        Ok(agents.items.iter().filter_map(agent_object).collect())
    }

    /// Every agent in the tenant's namespace with a valid manifest.
    pub(crate) async fn list_tenant_agents(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
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
        absent_ok(self.agents_in(tenant).patch_status(name.as_str(), &apply(), &Patch::Apply(&patch)).await)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "agents_tests.rs"]
mod tests;
