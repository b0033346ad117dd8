//! Running the reconcile loop only while this replica leads. Several replicas serve the
//! API; the one holding the leader lease reconciles. Leadership comes as a watch channel
//! (from a Kubernetes Lease, or always `true` with one process).

use std::sync::Arc;

use tokio::sync::watch;

use super::reconcile::Reconciler;

/// Runs `reconciler` whenever `leading` says so, and stops it as soon as it says not;
/// returns when the channel closes.
pub async fn reconcile_while_leading(reconciler: Arc<Reconciler>, mut leading: watch::Receiver<bool>) {
    loop {
        if leading.wait_for(|leads| *leads).await.is_err() {
            return;
        }
        tracing::info!("this replica leads: reconciling");
        let running = tokio::spawn(reconciler.clone().run());
        let lost = leading.wait_for(|leads| !*leads).await;
        running.abort();
        if lost.is_err() {
            return;
        }
        tracing::info!("this replica no longer leads: reconciling stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use nexus_cluster_memory::MemoryCluster;
    use nexus_node_stub::StubNode;
    use nexus_ports::agents::{AgentManifest, AgentPhase};
    use nexus_ports::identity::UserId;
    use nexus_ports::ports::{Clock, ClusterBackend, MockAgentStore, MockClock, MockTenantStore};
    use nexus_ports::tenancy::TenantId;

    use tokio::sync::watch;

    use super::*;
    use crate::app::reconcile::ReconcilePorts;

    async fn phase(cluster: &MemoryCluster, tenant: &TenantId, manifest: &AgentManifest) -> AgentPhase {
        cluster.agent_object(tenant, manifest.name()).await.unwrap().unwrap().status.phase
    }

    #[tokio::test]
    async fn only_the_leader_reconciles() {
        let tenant = nexus_ports::testing::tenant(UserId::generate());
        let cluster = Arc::new(MemoryCluster::new("http://node"));
        let mut tenants = MockTenantStore::new();
        let listed = tenant.clone();
        tenants.expect_list_all_tenants().returning(move || Ok(vec![listed.clone()]));
        let mut agents = MockAgentStore::new();
        agents.expect_list_all_agents().returning(|| Ok(vec![]));
        let mut clock = MockClock::new();
        clock.expect_now().returning(Utc::now);
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let reconciler = Arc::new(Reconciler::new(
            ReconcilePorts { cluster: cluster.clone(), node: Arc::new(StubNode::new()), agents: Arc::new(agents), tenants: Arc::new(tenants), clock },
            Duration::from_secs(60),
        ));
        let manifest = nexus_ports::testing::manifest("bot", "m");
        cluster.apply_agent(&tenant.id, &manifest).await.unwrap();

        let (lead, leading) = watch::channel(false);
        let task = tokio::spawn(reconcile_while_leading(reconciler.clone(), leading));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(phase(&cluster, &tenant.id, &manifest).await, AgentPhase::Pending, "a follower does not reconcile");

        lead.send(true).unwrap();
        for _ in 0..100 {
            if phase(&cluster, &tenant.id, &manifest).await == AgentPhase::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(phase(&cluster, &tenant.id, &manifest).await, AgentPhase::Running, "the leader does");

        lead.send(false).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.request_agent_deletion(&tenant.id, manifest.name()).await.unwrap();
        reconciler.trigger();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().is_some(), "after losing the lease it stops");

        drop(lead);
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("returns when the channel closes").unwrap();
    }
}
