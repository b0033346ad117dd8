//! The in-memory cluster backend: what a cluster would hold of each tenant and agent,
//! kept in maps. Every tenant's node is the one configured node endpoint, so tenants share
//! it: their agents go there under node-side names. It forgets everything on restart; the
//! core re-applies stored tenants and agents at start-up.
#![forbid(unsafe_code)]

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentStatus};
use nexus_ports::leadership::Fence;
use nexus_ports::node_names::NodeSharing;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};

/// Agent objects by tenant, then by name: reading one tenant's costs the same whatever
/// the other tenants hold.
type Agents = HashMap<TenantId, BTreeMap<AgentName, AgentObject>>;

/// [`ClusterBackend`] in process memory.
pub struct MemoryCluster {
    node_endpoint: String,
    tenants: RwLock<HashMap<TenantId, TenantStatus>>,
    /// Deprovisioned tenants whose agents are still being removed from the node.
    terminating: RwLock<HashSet<TenantId>>,
    agents: RwLock<Agents>,
    /// When the node was last seen holding every Running agent as it should.
    node_seen: RwLock<Option<DateTime<Utc>>>,
}

impl MemoryCluster {
    /// A cluster where every tenant's node answers at `node_endpoint`.
    pub fn new(node_endpoint: impl Into<String>) -> Self {
        Self {
            node_endpoint: node_endpoint.into(),
            tenants: RwLock::default(),
            terminating: RwLock::default(),
            agents: RwLock::default(),
            node_seen: RwLock::default(),
        }
    }

    fn node_seen(&self) -> Result<Option<DateTime<Utc>>> {
        self.node_seen.read().map(|seen| *seen).map_err(poisoned)
    }

    fn agents(&self) -> Result<std::sync::RwLockWriteGuard<'_, Agents>> {
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

    /// Only Nexus writes what it holds of tenants.
    fn tenants_drift(&self) -> bool {
        false
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
        for object in agents.get_mut(id).into_iter().flat_map(BTreeMap::values_mut) {
            object.deleting = true;
            remaining = true;
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
        match agents.entry(*tenant).or_default().entry(manifest.name().clone()) {
            Entry::Occupied(entry) if entry.get().manifest == *manifest && !entry.get().deleting => {}
            Entry::Occupied(mut entry) => {
                let object = entry.get_mut();
                object.manifest = manifest.clone();
                object.generation += 1;
                object.deleting = false;
            }
            Entry::Vacant(entry) => {
                entry.insert(AgentObject {
                    tenant_id: *tenant,
                    manifest: manifest.clone(),
                    generation: 1,
                    observed_generation: 0,
                    status: AgentStatus::pending(),
                    deleting: false,
                });
            }
        }
        Ok(())
    }

    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        if let Some(object) = self.agents()?.get_mut(tenant).and_then(|agents| agents.get_mut(name)) {
            object.deleting = true;
        }
        Ok(())
    }

    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        let seen = self.node_seen()?;
        Ok(self.agents.read().map_err(poisoned)?.get(tenant).and_then(|agents| agents.get(name)).map(|object| object.clone().seen_on_node(seen)))
    }

    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>> {
        let seen = self.node_seen()?;
        Ok(self.agents.read().map_err(poisoned)?.values().flat_map(BTreeMap::values).map(|object| object.clone().seen_on_node(seen)).collect())
    }

    async fn list_tenant_agent_objects(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
        let seen = self.node_seen()?;
        Ok(self
            .agents
            .read()
            .map_err(poisoned)?
            .get(tenant)
            .map(|agents| agents.values().map(|object| object.clone().seen_on_node(seen)).collect())
            .unwrap_or_default())
    }

    /// One time for the one node, in memory.
    async fn record_node_seen(&self, node: &str, at: DateTime<Utc>, _agents: &[(TenantId, AgentName, u64)], _fence: Fence) -> Result<()> {
        if node == self.node_endpoint {
            let mut seen = self.node_seen.write().map_err(poisoned)?;
            *seen = (*seen).max(Some(at));
        }
        Ok(())
    }

    /// One process, nothing shares this memory: the loop's own check of its term is the fence.
    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus, _fence: Fence) -> Result<()> {
        if let Some(object) = self.agents()?.get_mut(tenant).and_then(|agents| agents.get_mut(name)) {
            object.observed_generation = observed_generation;
            object.status = status.clone();
        }
        Ok(())
    }

    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let mut agents = self.agents()?;
        let Some(of_tenant) = agents.get_mut(tenant) else { return Ok(()) };
        of_tenant.remove(name);
        if of_tenant.is_empty() {
            agents.remove(tenant);
            // A deprovisioned tenant goes with its last agent.
            if self.terminating.write().map_err(poisoned)?.remove(tenant) {
                self.tenants.write().map_err(poisoned)?.remove(tenant);
            }
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
        cluster.set_agent_status(&tenant, &name, 2, &running, Fence::Alone).await.unwrap();
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
