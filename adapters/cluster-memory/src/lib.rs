//! The in-memory cluster backend: what a cluster would hold of each tenant, kept in a map.
//! Every tenant's node is the one configured node endpoint. It forgets everything on
//! restart; the core re-applies stored tenants at start-up.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};

/// [`ClusterBackend`] in process memory.
pub struct MemoryCluster {
    node_endpoint: String,
    tenants: RwLock<HashMap<TenantId, TenantStatus>>,
}

impl MemoryCluster {
    /// A cluster where every tenant's node answers at `node_endpoint`.
    pub fn new(node_endpoint: impl Into<String>) -> Self {
        Self { node_endpoint: node_endpoint.into(), tenants: RwLock::default() }
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("the in-memory cluster's lock was poisoned")
}

#[async_trait]
impl ClusterBackend for MemoryCluster {
    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus> {
        let status = TenantStatus {
            phase: TenantPhase::Ready,
            namespace: Some(tenant.id.cr_name()),
            node_endpoint: Some(self.node_endpoint.clone()),
            message: None,
        };
        self.tenants.write().map_err(poisoned)?.insert(tenant.id, status.clone());
        Ok(status)
    }

    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        Ok(self.tenants.read().map_err(poisoned)?.get(id).cloned().unwrap_or_else(TenantStatus::pending))
    }

    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()> {
        self.tenants.write().map_err(poisoned)?.remove(id);
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
    use nexus_ports::identity::{DisplayName, UserId};
    use nexus_ports::tenancy::NodeProfile;

    use super::*;

    fn tenant() -> Tenant {
        Tenant {
            id: TenantId::generate(),
            owner: UserId::generate(),
            display_name: DisplayName::parse("org").unwrap(),
            node_profile: NodeProfile::default(),
            max_agents: 50,
            created_at: chrono::Utc::now(),
        }
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
}
