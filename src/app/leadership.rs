//! Running the reconcile loop only while this replica leads. Several replicas serve the
//! API; the one holding the leader lease reconciles. Leadership comes as a watch channel
//! of terms (from a Kubernetes Lease or a lease row in the database; with one process the
//! loop simply runs), and the loop runs in one term at a time: it stops when the term
//! ends, and the next term starts it again from fresh lists. Changes made through any replica reach the leader's loop through the change
//! feed ([`wake_on_changes`]).

use std::sync::Arc;

use nexus_ports::agents::Change as Wake;
use nexus_ports::changes::Change;
use nexus_ports::leadership::Term;
use tokio::sync::{broadcast, watch};

use super::reconcile::Reconciler;

/// Runs `reconciler` in each term `leading` tells, and stops it as soon as the term is
/// over (no term, or another one: a term lost and another won between two looks is
/// still a new term); returns when the channel closes. Each term starts from fresh
/// lists, and what the loop knew is dropped when it ends. `nexus_reconcile_leader` says
/// whether it runs. While it follows, wakes are dropped rather than piled up for nobody.
pub async fn reconcile_while_leading(reconciler: Arc<Reconciler>, mut leading: watch::Receiver<Option<Term>>) {
    metrics::gauge!("nexus_reconcile_leader").set(0.0);
    loop {
        reconciler.end_term();
        let Ok(term) = leading.wait_for(Option::is_some).await.map(|term| *term) else { return };
        let number = term.map_or(0, |term| term.number);
        tracing::info!(term = number, "this replica leads: reconciling");
        reconciler.begin_term(number, leading.clone());
        metrics::gauge!("nexus_reconcile_leader").set(1.0);
        let running = StopOnDrop(Some(tokio::spawn(reconciler.clone().run())));
        let lost = leading.wait_for(|term| term.is_none_or(|term| term.number != number)).await.map(drop);
        // Nothing of the loop runs on once its term is over.
        running.stop().await;
        metrics::gauge!("nexus_reconcile_leader").set(0.0);
        if lost.is_err() {
            reconciler.end_term();
            return;
        }
        tracing::info!(term = number, "this replica's term is over: reconciling stopped");
    }
}

/// The running loop, stopped when this is dropped too (when the task leading it is
/// aborted at shutdown), so that it never outlives its leadership.
struct StopOnDrop(Option<tokio::task::JoinHandle<()>>);

impl StopOnDrop {
    /// Stops the loop and waits until it has.
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// What the reconcile loop must look at again after a change told through the feed:
/// an agent registered, updated or deleted (its object was applied or marked before the
/// change was told); a tenant changed or deleted (with its agents). `None` for changes
/// the loop does not go by, or [`Change::Missed`] (then the lists are swept).
pub fn wake_for(change: &Change) -> Option<Wake> {
    match change {
        Change::AgentChanged { tenant, name } => Some(Wake::Agent(*tenant, name.clone())),
        Change::TenantChanged { tenant } | Change::TenantDeleted { tenant } => Some(Wake::Tenant(*tenant)),
        Change::KeyRevoked { .. } | Change::SessionsEnded { .. } | Change::SessionRevoked { .. } | Change::Missed => None,
    }
}

/// Wakes `reconciler` for every change the feed brings, from this replica or any other,
/// so that a change made through a follower reaches the leader's loop at once (a
/// follower's loop does not run, and drops the wakes). Changes that may have been missed
/// ask for a sweep. Returns when the feed closes.
pub async fn wake_on_changes(reconciler: Arc<Reconciler>, mut changes: broadcast::Receiver<Change>) {
    loop {
        match changes.recv().await {
            Ok(Change::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => reconciler.trigger(),
            Ok(change) => {
                if let Some(wake) = wake_for(&change) {
                    reconciler.wake(wake);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use nexus_cluster_memory::MemoryCluster;
    use nexus_node_stub::StubNode;
    use nexus_ports::agents::{Agent, AgentManifest, AgentPhase};
    use nexus_ports::identity::UserId;
    use nexus_ports::ports::{Clock, ClusterBackend, MockAgentStore, MockClock, MockTenantStore};
    use nexus_ports::tenancy::TenantId;

    use tokio::sync::watch;

    use super::*;
    use crate::app::reconcile::ReconcilePorts;

    #[test]
    fn feed_changes_wake_what_they_concern() {
        let (tenant, name) = (TenantId::generate(), nexus_ports::agents::AgentName::parse("bot").unwrap());
        assert_eq!(wake_for(&Change::AgentChanged { tenant, name: name.clone() }), Some(Wake::Agent(tenant, name)));
        assert_eq!(wake_for(&Change::TenantChanged { tenant }), Some(Wake::Tenant(tenant)));
        assert_eq!(wake_for(&Change::TenantDeleted { tenant }), Some(Wake::Tenant(tenant)));
        assert_eq!(wake_for(&Change::SessionsEnded { user: UserId::generate() }), None);
        assert_eq!(wake_for(&Change::Missed), None);
    }

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
        let manifest = nexus_ports::testing::manifest("bot", "m");
        let registered = Agent { tenant_id: tenant.id, manifest: manifest.clone(), version_number: 1, created_at: Utc::now(), updated_at: Utc::now() };
        let mut agents = MockAgentStore::new();
        agents.expect_list_all_agents().returning(move || Ok(vec![registered.clone()]));
        let mut clock = MockClock::new();
        clock.expect_now().returning(Utc::now);
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let reconciler = Arc::new(Reconciler::new(
            ReconcilePorts { cluster: cluster.clone(), node: Arc::new(StubNode::new()), agents: Arc::new(agents), tenants: Arc::new(tenants), clock },
            Duration::from_secs(60),
        ));
        cluster.apply_agent(&tenant.id, &manifest).await.unwrap();

        let (lead, leading) = watch::channel(None);
        let task = tokio::spawn(reconcile_while_leading(reconciler.clone(), leading));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(phase(&cluster, &tenant.id, &manifest).await, AgentPhase::Pending, "a follower does not reconcile");

        lead.send(Some(Term { number: 1, until: tokio::time::Instant::now() + Duration::from_secs(3600) })).unwrap();
        for _ in 0..100 {
            if phase(&cluster, &tenant.id, &manifest).await == AgentPhase::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(phase(&cluster, &tenant.id, &manifest).await, AgentPhase::Running, "the leader does");

        lead.send(None).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.request_agent_deletion(&tenant.id, manifest.name()).await.unwrap();
        reconciler.trigger();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().is_some(), "after losing the lease it stops");

        drop(lead);
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("returns when the channel closes").unwrap();
    }
}

/// Two replicas on one database, each with its own runtime (a process of its own): the
/// leader freezes in the middle of a node call (its thread blocked: nothing of it runs, its
/// renewals neither), the other takes over and deploys; the frozen one wakes up past its
/// term in the middle of a deployment, whose next node call and status write it must not
/// make.
#[cfg(test)]
mod frozen_leader {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use nexus_node_stub::StubNode;
    use nexus_ports::Result;
    use nexus_ports::agents::{AgentName, AgentPhase};
    use nexus_ports::identity::UserId;
    use nexus_ports::leadership::Term;
    use nexus_ports::ports::{Clock, ClusterBackend, MockAgentStore, MockClock, MockTenantStore, NodeProxy};
    use nexus_store_sea_orm::SqlStore;
    use serde_json::Value;
    use tokio::sync::watch;

    use super::reconcile_while_leading;
    use crate::app::reconcile::{ReconcilePorts, Reconciler};

    const DURATION: Duration = Duration::from_millis(1500);
    const RENEW: Duration = Duration::from_millis(300);
    const FROZEN: Duration = Duration::from_secs(5);

    /// The stub node, but the first registration freezes the whole process for [`FROZEN`]
    /// before it answers; counts the calls made after it woke.
    struct FreezingNode {
        inner: Arc<StubNode>,
        froze: AtomicBool,
        woke: AtomicBool,
        calls_after: AtomicUsize,
    }

    impl FreezingNode {
        fn after_waking(&self) {
            if self.woke.load(Ordering::SeqCst) {
                self.calls_after.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[async_trait]
    impl NodeProxy for FreezingNode {
        async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
            if !self.froze.swap(true, Ordering::SeqCst) {
                std::thread::sleep(FROZEN);
                self.woke.store(true, Ordering::SeqCst);
                return self.inner.register_agent(node, manifest).await;
            }
            self.after_waking();
            self.inner.register_agent(node, manifest).await
        }
        async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
            self.after_waking();
            self.inner.deploy_agent(node, name).await
        }
        async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
            self.after_waking();
            self.inner.remove_agent(node, name).await
        }
        async fn list_node_agents(&self, node: &str) -> Result<Vec<nexus_ports::node_names::NodeAgent>> {
            self.after_waking();
            self.inner.list_node_agents(node).await
        }
        async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
            self.inner.agent_view(node, name).await
        }
        async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value> {
            self.inner.agent_traces(node, name, limit).await
        }
        async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, timeout: Duration) -> Result<Value> {
            self.inner.run_agent(node, name, request, timeout).await
        }
    }

    /// A replica's loop over the database at `url`, campaigning as `holder`.
    async fn replica(
        url: &str,
        holder: &str,
        node: Arc<dyn NodeProxy>,
        tenant: nexus_ports::tenancy::Tenant,
    ) -> (Arc<Reconciler>, watch::Receiver<Option<Term>>) {
        let store = SqlStore::connect(url).await.unwrap();
        let mut tenants = MockTenantStore::new();
        let listed = tenant.clone();
        tenants.expect_list_all_tenants().returning(move || Ok(vec![listed.clone()]));
        tenants.expect_find_tenant().returning(move |_| Ok(Some(tenant.clone())));
        let mut agents = MockAgentStore::new();
        agents.expect_list_all_agents().returning(|| Ok(vec![]));
        // The test applies its object directly; asked again, the registry has the agent
        // (a sweep marks objects whose agent the registry lost).
        agents.expect_find_agent().returning(|tenant, name| {
            let now = chrono::Utc::now();
            Ok(Some(nexus_ports::agents::Agent {
                tenant_id: *tenant,
                manifest: nexus_ports::testing::manifest(name.as_str(), "m"),
                version_number: 1,
                created_at: now,
                updated_at: now,
            }))
        });
        let mut clock = MockClock::new();
        clock.expect_now().returning(chrono::Utc::now);
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let ports = ReconcilePorts { cluster: Arc::new(store.cluster("http://node")), node, agents: Arc::new(agents), tenants: Arc::new(tenants), clock };
        let reconciler = Arc::new(Reconciler::new(ports, Duration::from_secs(60)));
        let (tell, leading) = watch::channel(None);
        tokio::spawn(store.lease(holder, DURATION).campaign(RENEW, tell));
        tokio::spawn(reconcile_while_leading(reconciler.clone(), leading.clone()));
        (reconciler, leading)
    }

    async fn case(url: String) {
        let tenant = nexus_ports::testing::tenant(UserId::generate());
        let shared_node = Arc::new(StubNode::new());
        let freezing = Arc::new(FreezingNode {
            inner: shared_node.clone(),
            froze: AtomicBool::new(false),
            woke: AtomicBool::new(false),
            calls_after: AtomicUsize::new(0),
        });
        let cluster = SqlStore::connect(&url).await.unwrap().cluster("http://node");
        cluster.provision_tenant(&tenant).await.unwrap();

        // Replica A, a process of its own: its runtime runs on one thread, which the node
        // call blocks.
        let (a_url, a_tenant, a_node) = (url.clone(), tenant.clone(), freezing.clone());
        let (a_leads, mut a_leading) = tokio::sync::oneshot::channel();
        let a = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (reconciler, mut leading) = replica(&a_url, "a", a_node, a_tenant).await;
                let term = *leading.wait_for(Option::is_some).await.unwrap();
                let _ = a_leads.send((term.unwrap().number, reconciler));
                tokio::time::sleep(FROZEN + Duration::from_secs(2)).await;
            });
        });
        let (a_term, a_reconciler) = tokio::time::timeout(Duration::from_secs(30), &mut a_leading).await.expect("a leads").unwrap();
        let (b, mut b_leading) = replica(&url, "b", shared_node.clone(), tenant.clone()).await;
        let manifest = nexus_ports::testing::manifest("bot", "m");
        cluster.apply_agent(&tenant.id, &manifest).await.unwrap();
        // A finds it and freezes in the node call.
        a_reconciler.trigger();
        drop(a_reconciler);
        let object = async || cluster.agent_object(&tenant.id, manifest.name()).await.unwrap().unwrap();

        let b_term = *tokio::time::timeout(Duration::from_secs(30), b_leading.wait_for(Option::is_some)).await.expect("b takes over").unwrap();
        assert!(b_term.unwrap().number > a_term, "a new term");
        b.trigger();
        for _ in 0..600 {
            if object().await.status.phase == AgentPhase::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(object().await.status.phase, AgentPhase::Running, "the new leader deployed it while the old one was frozen");
        a.join().unwrap();
        assert!(freezing.woke.load(Ordering::SeqCst), "the old leader froze in its node call, and woke");
        let status = object().await.status;
        assert_eq!(freezing.calls_after.load(Ordering::SeqCst), 0, "the old leader made no node call past its term");
        assert_eq!((status.phase, status.message), (AgentPhase::Running, None), "and its status write did not land");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_leader_that_wakes_past_its_term_changes_nothing() {
        let sqlite = nexus_store_sea_orm::testing::fresh_sqlite();
        case(sqlite.url.clone()).await;
        sqlite.drop_database().await;
        if let Some(postgres) = nexus_store_sea_orm::testing::fresh_postgres().await {
            case(postgres.url.clone()).await;
            postgres.drop_database().await;
        }
    }
}
