//! The in-memory cluster backend: what a cluster would hold of each tenant and agent,
//! kept in maps. Every tenant's node is the one configured node endpoint, so tenants share
//! it: their agents go there under node-side names. It forgets everything on restart; the
//! core re-applies stored tenants and agents at start-up.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use async_trait::async_trait;
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentStatus};
use nexus_ports::node_names::NodeSharing;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};

/// [`ClusterBackend`] in process memory.
pub struct MemoryCluster {
    node_endpoint: String,
    tenants: RwLock<HashMap<TenantId, TenantStatus>>,
    /// Deprovisioned tenants whose agents are still being removed from the node.
    terminating: RwLock<HashSet<TenantId>>,
    /// By tenant, then name: a tenant's agents are one range.
    agents: RwLock<BTreeMap<(TenantId, AgentName), AgentObject>>,
}

impl MemoryCluster {
    /// A cluster where every tenant's node answers at `node_endpoint`.
    pub fn new(node_endpoint: impl Into<String>) -> Self {
        Self { node_endpoint: node_endpoint.into(), tenants: RwLock::default(), terminating: RwLock::default(), agents: RwLock::default() }
    }

    fn agents(&self) -> Result<std::sync::RwLockWriteGuard<'_, BTreeMap<(TenantId, AgentName), AgentObject>>> {
        self.agents.write().map_err(poisoned)
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("the in-memory cluster's lock was poisoned")
}

#[async_trait]
impl ClusterBackend for MemoryCluster {
    /// Every tenant's node is the one configured endpoint.
    fn node_sharing(&self) -> NodeSharing {
        NodeSharing::Shared
    }

    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus> {
        let status =
            TenantStatus { phase: TenantPhase::Ready, namespace: Some(tenant.id.cr_name()), node_endpoint: Some(self.node_endpoint.clone()), message: None };
        self.tenants.write().map_err(poisoned)?.insert(tenant.id, status.clone());
        Ok(status)
    }

    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        Ok(self.tenants.read().map_err(poisoned)?.get(id).cloned().unwrap_or_else(TenantStatus::pending))
    }

    /// The tenant's agents are marked for deletion and its status kept until the loop has
    /// removed them from its node (the node is shared: it must forget them).
    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()> {
        let mut agents = self.agents()?;
        let mut remaining = false;
        for ((tenant, _), object) in agents.iter_mut() {
            if tenant == id {
                object.deleting = true;
                remaining = true;
            }
        }
        if remaining {
            self.terminating.write().map_err(poisoned)?.insert(*id);
        } else {
            self.tenants.write().map_err(poisoned)?.remove(id);
        }
        Ok(())
    }

    /// Nothing waits here: deprovisioning hands the tenant's agents to the loop, and every
    /// object the loop holds has a valid manifest.
    async fn finish_deletions(&self) -> Result<()> {
        Ok(())
    }

    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()> {
        let mut agents = self.agents()?;
        let key = (*tenant, manifest.name().clone());
        match agents.get_mut(&key) {
            Some(object) if object.manifest == *manifest && !object.deleting => {}
            Some(object) => {
                object.manifest = manifest.clone();
                object.generation += 1;
                object.deleting = false;
            }
            None => {
                let object = AgentObject {
                    tenant_id: *tenant,
                    manifest: manifest.clone(),
                    generation: 1,
                    observed_generation: 0,
                    status: AgentStatus::pending(),
                    deleting: false,
                };
                agents.insert(key, object);
            }
        }
        Ok(())
    }

    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        if let Some(object) = self.agents()?.get_mut(&(*tenant, name.clone())) {
            object.deleting = true;
        }
        Ok(())
    }

    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        Ok(self.agents.read().map_err(poisoned)?.get(&(*tenant, name.clone())).cloned())
    }

    async fn tenant_agent_objects(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
        let agents = self.agents.read().map_err(poisoned)?;
        Ok(agents.range((*tenant, AgentName::MIN)..).take_while(|((t, _), _)| t == tenant).map(|(_, object)| object.clone()).collect())
    }

    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>> {
        Ok(self.agents.read().map_err(poisoned)?.values().cloned().collect())
    }

    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus) -> Result<()> {
        if let Some(object) = self.agents()?.get_mut(&(*tenant, name.clone())) {
            object.observed_generation = observed_generation;
            object.status = status.clone();
        }
        Ok(())
    }

    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let mut agents = self.agents()?;
        agents.remove(&(*tenant, name.clone()));
        // A deprovisioned tenant goes with its last agent.
        if !agents.keys().any(|(t, _)| t == tenant) && self.terminating.write().map_err(poisoned)?.remove(tenant) {
            self.tenants.write().map_err(poisoned)?.remove(tenant);
        }
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for MemoryCluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    async fn check(&self) -> Result<()> {
        self.tenants.read().map(|_| ()).map_err(poisoned)
    }
}

#[cfg(test)]
mod tests {
    use nexus_ports::identity::UserId;

    use super::*;

    fn tenant() -> Tenant {
        nexus_ports::testing::tenant(UserId::generate())
    }

    #[tokio::test]
    async fn provisioning_is_idempotent_and_deprovisioning_forgets() {
        let cluster = MemoryCluster::new("http://node:8000");
        let tenant = tenant();
        assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap(), TenantStatus::pending());
        let status = cluster.provision_tenant(&tenant).await.unwrap();
        assert_eq!(status.phase, TenantPhase::Ready);
        assert_eq!(status.namespace, Some(tenant.id.cr_name()));
        assert_eq!(status.node_endpoint.as_deref(), Some("http://node:8000"));
        assert_eq!(cluster.provision_tenant(&tenant).await.unwrap(), status);
        assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap(), status);
        cluster.deprovision_tenant(&tenant.id).await.unwrap();
        cluster.deprovision_tenant(&tenant.id).await.unwrap();
        assert_eq!(cluster.tenant_status(&tenant.id).await.unwrap().phase, TenantPhase::Pending);
        cluster.check().await.unwrap();
    }

    fn manifest(model: &str) -> AgentManifest {
        nexus_ports::testing::manifest("bot", model)
    }

    #[tokio::test]
    async fn agent_objects_track_generations_and_deletion() {
        let cluster = MemoryCluster::new("http://node:8000");
        let (tenant, name) = (TenantId::generate(), AgentName::parse("bot").unwrap());
        cluster.apply_agent(&tenant, &manifest("a")).await.unwrap();
        cluster.apply_agent(&tenant, &manifest("a")).await.unwrap();
        let object = cluster.agent_object(&tenant, &name).await.unwrap().unwrap();
        assert_eq!((object.generation, object.observed_generation, object.status.phase), (1, 0, nexus_ports::agents::AgentPhase::Pending));
        cluster.apply_agent(&tenant, &manifest("b")).await.unwrap();
        assert_eq!(cluster.agent_object(&tenant, &name).await.unwrap().unwrap().generation, 2, "a new manifest is a new generation");

        let running = AgentStatus { phase: nexus_ports::agents::AgentPhase::Running, node_ack: true, last_synced_at: None, message: None };
        cluster.set_agent_status(&tenant, &name, 2, &running).await.unwrap();
        let object = cluster.agent_object(&tenant, &name).await.unwrap().unwrap();
        assert_eq!((object.observed_generation, object.status), (2, running));

        cluster.request_agent_deletion(&tenant, &name).await.unwrap();
        assert!(cluster.list_agent_objects().await.unwrap()[0].deleting);
        cluster.forget_agent(&tenant, &name).await.unwrap();
        assert!(cluster.agent_object(&tenant, &name).await.unwrap().is_none());

        let owner = Tenant { id: tenant, ..super::tests::tenant() };
        cluster.provision_tenant(&owner).await.unwrap();
        cluster.apply_agent(&tenant, &manifest("a")).await.unwrap();
        cluster.deprovision_tenant(&tenant).await.unwrap();
        assert!(cluster.list_agent_objects().await.unwrap().iter().all(|o| o.deleting), "a tenant's agents are marked for deletion");
        assert_eq!(cluster.tenant_status(&tenant).await.unwrap().phase, TenantPhase::Ready, "its node stays known until they are removed from it");
        cluster.forget_agent(&tenant, &name).await.unwrap();
        assert_eq!(cluster.tenant_status(&tenant).await.unwrap().phase, TenantPhase::Pending, "then the tenant goes");
    }
}
