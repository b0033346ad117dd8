//! Reconcile decisions as pure functions, and the runner over the in-memory cluster and
//! the stub node with a clock the test moves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use nexus_cluster_memory::MemoryCluster;
use nexus_node_stub::StubNode;
use nexus_ports::Error;
use nexus_ports::agents::{Agent, AgentManifest, AgentName, AgentObject, AgentPhase, AgentStatus, Change};
use nexus_ports::identity::UserId;
use nexus_ports::leadership::{Fence, Term};
use nexus_ports::node_names::{NodeNames, NodeSharing};
use nexus_ports::ports::{Clock, ClusterBackend, MockAgentStore, MockClusterBackend, MockTenantStore};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::testing;
use serde_json::{Value, json};

use super::{NEEDED_WAIT, ReconcilePorts, Reconciler, Retry, Step, backoff, is_resync, next_step, retry_wait};
use crate::app::chains::NodeCheck;
use crate::app::work_queue::SPREAD;

const RESYNC: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn manifest(model: &str) -> AgentManifest {
    testing::manifest("bot", model)
}

fn object(phase: AgentPhase, generation: u64, observed: u64, synced: Option<DateTime<Utc>>) -> AgentObject {
    AgentObject {
        tenant_id: TenantId::generate(),
        manifest: manifest("m"),
        generation,
        observed_generation: observed,
        status: AgentStatus { phase, node_ack: phase == AgentPhase::Running, last_synced_at: synced, message: None },
        deleting: false,
    }
}

fn ready() -> TenantStatus {
    TenantStatus { phase: TenantPhase::Ready, namespace: Some("tenant-x".into()), node_endpoint: Some("http://node".into()), message: None }
}

#[test]
fn backoff_doubles_up_to_thirty_seconds() {
    let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(backoff(u32::MAX).as_secs(), 30);
}

#[test]
fn new_and_changed_agents_deploy_at_once() {
    assert_eq!(next_step(&object(AgentPhase::Pending, 1, 0, None), Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0()), Step::Deploy);
    let changed = object(AgentPhase::Running, 2, 1, Some(t0()));
    assert_eq!(next_step(&changed, Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0()), Step::Deploy, "a new generation does not wait for the resync");
    let failed_changed = object(AgentPhase::Failed, 3, 2, None);
    let retry = Retry { failures: 5, last_attempt: t0() };
    assert_eq!(next_step(&failed_changed, Some(&ready()), &NodeCheck::Clear, Some(retry), RESYNC, t0()), Step::Deploy, "nor for the backoff of an older one");
}

#[test]
fn running_agents_resync_periodically() {
    let running = object(AgentPhase::Running, 1, 1, Some(t0()));
    assert_eq!(next_step(&running, Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0() + secs(10)), Step::Wait(Duration::from_secs(50)));
    assert_eq!(next_step(&running, Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0() + secs(60)), Step::Deploy);
}

#[test]
fn failed_agents_retry_after_their_backoff() {
    let failed = object(AgentPhase::Failed, 1, 1, None);
    let retry = Retry { failures: 3, last_attempt: t0() };
    assert_eq!(next_step(&failed, Some(&ready()), &NodeCheck::Clear, Some(retry), RESYNC, t0() + secs(1)), Step::Wait(Duration::from_secs(3)));
    assert_eq!(next_step(&failed, Some(&ready()), &NodeCheck::Clear, Some(retry), RESYNC, t0() + secs(4)), Step::Deploy);
    assert_eq!(next_step(&failed, Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0()), Step::Deploy, "no retry state (a restart): try now");
}

#[test]
fn agents_wait_for_their_tenant_and_deletion_comes_first() {
    let pending = object(AgentPhase::Pending, 1, 0, None);
    let provisioning = TenantStatus { phase: TenantPhase::Provisioning, ..ready() };
    assert_eq!(next_step(&pending, Some(&provisioning), &NodeCheck::Clear, None, RESYNC, t0()), Step::AwaitTenant);
    assert_eq!(next_step(&pending, None, &NodeCheck::Clear, None, RESYNC, t0()), Step::AwaitTenant);
    let deleting = AgentObject { deleting: true, ..object(AgentPhase::Running, 1, 1, Some(t0())) };
    assert_eq!(next_step(&deleting, Some(&ready()), &NodeCheck::Clear, None, RESYNC, t0()), Step::Cleanup { node: Some("http://node".into()) });
    assert_eq!(
        next_step(&deleting, None, &NodeCheck::Clear, None, RESYNC, t0()),
        Step::Cleanup { node: None },
        "a tenant that is gone does not block deletion"
    );
}

#[test]
fn only_pushing_a_running_current_agent_again_is_a_resync() {
    assert!(is_resync(&object(AgentPhase::Running, 1, 1, Some(t0()))));
    assert!(!is_resync(&object(AgentPhase::Running, 2, 1, Some(t0()))), "a change goes at once");
    assert!(!is_resync(&object(AgentPhase::Failed, 1, 1, Some(t0()))), "a retry follows its backoff");
    assert!(!is_resync(&object(AgentPhase::Pending, 1, 0, None)), "a first push goes at once");
}

#[test]
fn a_failed_attempt_waits_for_its_backoff() {
    assert_eq!(retry_wait(None, t0()), None, "never failed: now");
    let third = Retry { failures: 3, last_attempt: t0() };
    assert_eq!(retry_wait(Some(third), t0() + secs(1)), Some(Duration::from_secs(3)));
    assert_eq!(retry_wait(Some(third), t0() + secs(4)), None);
}

#[test]
fn chains_that_cannot_compile_on_a_shared_node_hold_the_agent_off_it() {
    let blocked = NodeCheck::Blocked("why".into());
    let pending = object(AgentPhase::Pending, 1, 0, None);
    assert_eq!(next_step(&pending, Some(&ready()), &blocked, None, RESYNC, t0()), Step::Hold { reason: "why".into(), withdraw: false });
    let running = object(AgentPhase::Running, 1, 1, Some(t0()));
    let taken_off = Step::Hold { reason: "why".into(), withdraw: true };
    assert_eq!(next_step(&running, Some(&ready()), &blocked, None, RESYNC, t0() + secs(1)), taken_off, "taken off at once, not at the resync");
    let failed = object(AgentPhase::Failed, 1, 1, None);
    assert_eq!(
        next_step(&failed, Some(&ready()), &blocked, Some(Retry { failures: 3, last_attempt: t0() }), RESYNC, t0()),
        taken_off,
        "a failed push may have registered it"
    );
    let deleting = AgentObject { deleting: true, ..running.clone() };
    assert_eq!(next_step(&deleting, Some(&ready()), &NodeCheck::Needed, None, RESYNC, t0()), Step::Wait(NEEDED_WAIT), "those handing over to it leave first");
    assert_eq!(next_step(&deleting, None, &NodeCheck::Needed, None, RESYNC, t0()), Step::Cleanup { node: None });
}

/// A clock the test moves.
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

fn a_tenant() -> Tenant {
    Tenant { created_at: t0(), ..testing::tenant(UserId::generate()) }
}

/// The name the shared node knows `tenant`'s agent `bot` by.
fn bot_on_node(tenant: &Tenant) -> String {
    NodeNames::new(tenant.id, NodeSharing::Shared).node_name(manifest("m").name()).to_string()
}

/// A tenant store holding `tenants`.
fn tenant_store(tenants: Vec<Tenant>) -> MockTenantStore {
    let mut store = MockTenantStore::new();
    let listed = tenants.clone();
    store.expect_list_all_tenants().returning(move || Ok(listed.clone()));
    store.expect_find_tenant().returning(move |id| Ok(tenants.iter().find(|t| t.id == *id).cloned()));
    store
}

/// An empty registry.
fn no_registry() -> MockAgentStore {
    let mut store = MockAgentStore::new();
    store.expect_list_all_agents().returning(|| Ok(vec![]));
    // The tests put objects in the cluster directly: asked again, the registry has them
    // (no object is taken for one whose agent was deleted).
    store.expect_find_agent().returning(|tenant, name| {
        Ok(Some(Agent { tenant_id: *tenant, manifest: testing::manifest(name.as_str(), "m"), version_number: 1, created_at: t0(), updated_at: t0() }))
    });
    store
}

/// A reconciler over `cluster` and `node`, listing `tenants`.
fn reconciler(cluster: &Arc<MemoryCluster>, node: &Arc<StubNode>, tenants: Vec<Tenant>, clock: Arc<TestClock>) -> Reconciler {
    Reconciler::new(
        ReconcilePorts { cluster: cluster.clone(), node: node.clone(), agents: Arc::new(no_registry()), tenants: Arc::new(tenant_store(tenants)), clock },
        RESYNC,
    )
}

/// Whether `wait` is a resync period of some object: spread below the full one.
fn a_resync(wait: Duration) -> bool {
    wait <= RESYNC && wait >= RESYNC.mul_f64(1.0 - SPREAD)
}

#[tokio::test]
async fn the_runner_deploys_fails_recovers_and_cleans_up() {
    let tenant = a_tenant();
    let bot = bot_on_node(&tenant);
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let clock = Arc::new(TestClock(Mutex::new(t0())));
    let reconciler = reconciler(&cluster, &node, vec![tenant.clone()], clock.clone());
    let status = async || cluster.agent_object(&tenant.id, manifest("a").name()).await.unwrap().unwrap().status;

    cluster.apply_agent(&tenant.id, &manifest("a")).await.unwrap();
    assert!(a_resync(reconciler.pass().await), "the tenant was provisioned and the agent deployed in one pass");
    assert_eq!((status().await.phase, status().await.node_ack), (AgentPhase::Running, true));
    assert!(node.agent("http://node", &bot).unwrap().deployed);

    node.set_failing(true);
    cluster.apply_agent(&tenant.id, &manifest("b")).await.unwrap();
    assert_eq!(reconciler.pass().await, Duration::from_secs(1));
    let failed = status().await;
    assert_eq!((failed.phase, failed.node_ack), (AgentPhase::Failed, false));
    assert!(failed.message.unwrap().contains("cannot be reached"));
    clock.advance(secs(1));
    assert_eq!(reconciler.pass().await, Duration::from_secs(2), "the second failure waits twice as long");

    node.set_failing(false);
    assert_eq!(reconciler.pass().await, Duration::from_secs(2), "still backing off");
    clock.advance(secs(2));
    reconciler.pass().await;
    assert_eq!(status().await.phase, AgentPhase::Running, "recovered with no API call");
    assert_eq!(node.agent("http://node", &bot).unwrap().manifest["spec"]["model"]["primary"]["model"], "b");

    cluster.request_agent_deletion(&tenant.id, manifest("b").name()).await.unwrap();
    reconciler.pass().await;
    assert!(node.agent("http://node", &bot).is_none(), "the node forgot it");
    assert!(cluster.agent_object(&tenant.id, manifest("b").name()).await.unwrap().is_none());
}

/// Ports around a mocked cluster (a node of each tenant's own), for the tests that count
/// its calls.
fn over(mut cluster: MockClusterBackend, tenants: Vec<Tenant>, agents: Vec<Agent>, clock: Arc<TestClock>) -> Reconciler {
    cluster.expect_node_sharing().return_const(NodeSharing::PerTenant);
    let tenant_store = tenant_store(tenants);
    let mut agent_store = MockAgentStore::new();
    agent_store.expect_list_all_agents().returning(move || Ok(agents.clone()));
    let ports =
        ReconcilePorts { cluster: Arc::new(cluster), node: Arc::new(StubNode::new()), agents: Arc::new(agent_store), tenants: Arc::new(tenant_store), clock };
    Reconciler::new(ports, RESYNC)
}

#[tokio::test]
async fn a_tenant_whose_provisioning_fails_backs_off_instead_of_retrying_every_pass() {
    let tenant = testing::tenant(UserId::generate());
    let mut cluster = MockClusterBackend::new();
    cluster.expect_provision_tenant().times(2).returning(|_| Err(Error::Unavailable("the Kubernetes API answered 503".into())));
    let failed = TenantStatus { phase: TenantPhase::Error, message: Some("the Kubernetes API answered 503".into()), ..TenantStatus::pending() };
    cluster.expect_tenant_status().times(1).returning(move |_| Ok(failed.clone()));
    cluster.expect_finish_deletions().returning(|| Ok(()));
    cluster.expect_list_agent_objects().returning(|| Ok(vec![]));
    let clock = Arc::new(TestClock(Mutex::new(t0())));
    let reconciler = over(cluster, vec![tenant], vec![], clock.clone());

    assert_eq!(reconciler.pass().await, Duration::from_secs(1), "the next pass is due when the first backoff is over");
    assert_eq!(reconciler.pass().await, Duration::from_secs(1), "a pass woken meanwhile (its own status write, say) only reads it");
    clock.advance(secs(1));
    assert_eq!(reconciler.pass().await, Duration::from_secs(2), "tried again, and the wait doubles");
}

#[tokio::test]
async fn the_registry_is_applied_past_an_agent_the_cluster_refuses() {
    let tenant = testing::tenant(UserId::generate());
    let registered = |name: &str| Agent { tenant_id: tenant.id, manifest: testing::manifest(name, "m"), version_number: 1, created_at: t0(), updated_at: t0() };
    let mut cluster = MockClusterBackend::new();
    cluster.expect_list_agent_objects().returning(|| Ok(vec![]));
    cluster
        .expect_apply_agent()
        .withf(|_, manifest| manifest.name().as_str() == "refused")
        .times(1)
        .returning(|_, _| Err(Error::Internal("the Kubernetes API refused a request (403): namespace is being terminated".into())));
    cluster.expect_apply_agent().withf(|_, manifest| manifest.name().as_str() != "refused").times(2).returning(|_, _| Ok(()));
    let reconciler = over(cluster, vec![], vec![registered("first"), registered("refused"), registered("last")], Arc::new(TestClock(Mutex::new(t0()))));
    assert_eq!(reconciler.apply_registry().await.unwrap(), 2, "start-up goes on: the others are applied");
}

#[tokio::test]
async fn a_status_already_recorded_is_not_written_again() {
    let tenant = testing::tenant(UserId::generate());
    let waiting = AgentStatus { message: Some("waiting for the tenant's node to be ready".into()), ..AgentStatus::pending() };
    let object = AgentObject { tenant_id: tenant.id, status: waiting, ..object(AgentPhase::Pending, 2, 2, None) };
    let mut cluster = MockClusterBackend::new();
    let provisioning = TenantStatus { phase: TenantPhase::Provisioning, ..TenantStatus::pending() };
    cluster.expect_provision_tenant().returning(move |_| Ok(provisioning.clone()));
    cluster.expect_finish_deletions().returning(|| Ok(()));
    let listed = object.clone();
    cluster.expect_list_agent_objects().returning(move || Ok(vec![listed.clone()]));
    cluster.expect_agent_object().returning(move |_, _| Ok(Some(object.clone())));
    cluster.expect_set_agent_status().never();
    let reconciler = over(cluster, vec![tenant], vec![], Arc::new(TestClock(Mutex::new(t0()))));
    reconciler.pass().await;
}

/// A manifest `name` with `chain` in its spec (none when null).
fn chained(name: &str, chain: Value) -> AgentManifest {
    let mut document = json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}});
    if !chain.is_null() {
        document["spec"]["chain"] = chain;
    }
    AgentManifest::parse(document).unwrap()
}

#[tokio::test]
async fn a_tenants_chains_never_break_the_shared_node() {
    let (mine, theirs) = (a_tenant(), a_tenant());
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let reconciler = reconciler(&cluster, &node, vec![mine.clone(), theirs.clone()], Arc::new(TestClock(Mutex::new(t0()))));
    let on_node = |tenant: &Tenant, name: &str| {
        node.agent("http://node", NodeNames::new(tenant.id, NodeSharing::Shared).node_name(chained(name, Value::Null).name()).as_str())
    };
    let status = async |tenant: &Tenant, name: &str| cluster.agent_object(&tenant.id, chained(name, Value::Null).name()).await.unwrap().unwrap().status;
    let to_helper = json!({"on_complete": [{"agent": "helper"}]});

    // A chain the node cannot parse, and one whose target is not there yet: neither is
    // pushed; the other tenant's agent is deployed as usual.
    cluster.apply_agent(&mine.id, &chained("broken", json!("x"))).await.unwrap();
    cluster.apply_agent(&mine.id, &chained("waiter", to_helper.clone())).await.unwrap();
    cluster.apply_agent(&theirs.id, &chained("bot", Value::Null)).await.unwrap();
    reconciler.pass().await;
    assert!(on_node(&mine, "broken").is_none() && on_node(&mine, "waiter").is_none());
    assert!(on_node(&theirs, "bot").unwrap().deployed);
    let broken = status(&mine, "broken").await;
    assert_eq!((broken.phase, broken.message.as_deref()), (AgentPhase::Pending, Some("not on the node: spec.chain must be a mapping")));
    assert!(status(&mine, "waiter").await.message.unwrap().contains("hands over to helper, which this tenant has not deployed"));

    // Its target deployed, the chain follows in the next pass.
    cluster.apply_agent(&mine.id, &chained("helper", Value::Null)).await.unwrap();
    reconciler.pass().await;
    assert!(on_node(&mine, "waiter").unwrap().deployed, "the held agent is looked at again as soon as its target is there");
    assert_eq!(status(&mine, "waiter").await.phase, AgentPhase::Running);

    // Deleting the target: the chain leaves the node first, then the target.
    cluster.request_agent_deletion(&mine.id, chained("helper", Value::Null).name()).await.unwrap();
    // (The target waits while the chain may be there, see the decision above; each wakes
    // the other when it is done, so both are settled in one pass.)
    reconciler.pass().await;
    assert!(on_node(&mine, "waiter").is_none(), "taken off: its chain would no longer compile");
    assert_eq!(status(&mine, "waiter").await.phase, AgentPhase::Pending);
    assert!(on_node(&mine, "helper").is_none());
    assert!(on_node(&theirs, "bot").unwrap().deployed);
}

#[tokio::test]
async fn tenants_sharing_a_node_keep_their_own_agent_of_one_name() {
    let (mine, theirs) = (a_tenant(), a_tenant());
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let reconciler = reconciler(&cluster, &node, vec![mine.clone(), theirs.clone()], Arc::new(TestClock(Mutex::new(t0()))));

    cluster.apply_agent(&mine.id, &manifest("mine")).await.unwrap();
    cluster.apply_agent(&theirs.id, &manifest("theirs")).await.unwrap();
    reconciler.pass().await;
    let model = |tenant: &Tenant| node.agent("http://node", &bot_on_node(tenant)).map(|a| a.manifest["spec"]["model"]["primary"]["model"].clone());
    assert_eq!((model(&mine), model(&theirs)), (Some(json!("mine")), Some(json!("theirs"))), "one node, two agents named bot");
    assert_eq!(node.agent("http://node", &bot_on_node(&mine)).unwrap().manifest["metadata"]["name"], bot_on_node(&mine));

    cluster.request_agent_deletion(&mine.id, manifest("m").name()).await.unwrap();
    reconciler.pass().await;
    assert_eq!((model(&mine), model(&theirs)), (None, Some(json!("theirs"))), "deleting mine leaves theirs");
    cluster.apply_agent(&mine.id, &manifest("again")).await.unwrap();
    reconciler.pass().await;
    cluster.deprovision_tenant(&mine.id).await.unwrap();
    reconciler.pass().await;
    assert_eq!((model(&mine), model(&theirs)), (None, Some(json!("theirs"))), "deleting my tenant leaves theirs");
}

#[tokio::test]
async fn an_agent_of_a_deleted_tenant_applied_again_leaves_the_shared_node() {
    let (gone, kept) = (a_tenant(), a_tenant());
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    // The store no longer holds `gone`; the cluster still does, with a live object of its
    // (as a sweep that raced the tenant's deletion leaves it).
    let reconciler = reconciler(&cluster, &node, vec![kept.clone()], Arc::new(TestClock(Mutex::new(t0()))));
    cluster.provision_tenant(&gone).await.unwrap();
    cluster.apply_agent(&gone.id, &manifest("gone")).await.unwrap();
    cluster.apply_agent(&kept.id, &manifest("kept")).await.unwrap();
    reconciler.pass().await;
    reconciler.pass().await;
    assert!(node.agent("http://node", &bot_on_node(&gone)).is_none(), "never pushed for a tenant the store no longer holds");
    assert!(cluster.agent_object(&gone.id, manifest("m").name()).await.unwrap().is_none(), "its object went");
    assert_eq!(cluster.tenant_status(&gone.id).await.unwrap().phase, TenantPhase::Pending, "and the tenant with it");
    assert!(node.agent("http://node", &bot_on_node(&kept)).unwrap().deployed, "the other tenant's agent is untouched");
}

/// The in-memory cluster, counting the agent objects the loop reads and what it writes.
struct Counting {
    inner: MemoryCluster,
    reads: std::sync::atomic::AtomicUsize,
    /// Objects applied, statuses set, deletions asked for, objects forgotten, tenants
    /// deprovisioned.
    writes: std::sync::atomic::AtomicUsize,
    /// Times a node was recorded as seen.
    seen: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn new(node: &str) -> Self {
        Self { inner: MemoryCluster::new(node), reads: 0.into(), writes: 0.into(), seen: 0.into() }
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl ClusterBackend for Counting {
    fn node_sharing(&self) -> NodeSharing {
        self.inner.node_sharing()
    }
    fn tenants_drift(&self) -> bool {
        self.inner.tenants_drift()
    }
    async fn provision_tenant(&self, tenant: &Tenant) -> nexus_ports::Result<TenantStatus> {
        self.inner.provision_tenant(tenant).await
    }
    async fn tenant_status(&self, id: &TenantId) -> nexus_ports::Result<TenantStatus> {
        self.inner.tenant_status(id).await
    }
    async fn deprovision_tenant(&self, id: &TenantId) -> nexus_ports::Result<()> {
        self.wrote();
        self.inner.deprovision_tenant(id).await
    }
    async fn finish_deletions(&self) -> nexus_ports::Result<()> {
        self.inner.finish_deletions().await
    }
    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> nexus_ports::Result<()> {
        self.wrote();
        self.inner.apply_agent(tenant, manifest).await
    }
    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> nexus_ports::Result<()> {
        self.wrote();
        self.inner.request_agent_deletion(tenant, name).await
    }
    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> nexus_ports::Result<Option<AgentObject>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.agent_object(tenant, name).await
    }
    async fn list_agent_objects(&self) -> nexus_ports::Result<Vec<AgentObject>> {
        self.reads.fetch_add(1_000_000, std::sync::atomic::Ordering::Relaxed);
        self.inner.list_agent_objects().await
    }
    async fn list_tenant_agent_objects(&self, tenant: &TenantId) -> nexus_ports::Result<Vec<AgentObject>> {
        self.inner.list_tenant_agent_objects(tenant).await
    }
    async fn set_agent_status(
        &self,
        tenant: &TenantId,
        name: &AgentName,
        observed_generation: u64,
        status: &AgentStatus,
        fence: Fence,
    ) -> nexus_ports::Result<()> {
        self.wrote();
        self.inner.set_agent_status(tenant, name, observed_generation, status, fence).await
    }
    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> nexus_ports::Result<()> {
        self.wrote();
        self.inner.forget_agent(tenant, name).await
    }
    async fn record_node_seen(&self, node: &str, at: DateTime<Utc>, agents: &[(TenantId, AgentName, u64)], fence: Fence) -> nexus_ports::Result<()> {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.record_node_seen(node, at, agents, fence).await
    }
}

#[tokio::test]
async fn an_event_reconciles_its_object_alone() {
    let tenants: Vec<Tenant> = (0..20).map(|_| a_tenant()).collect();
    let cluster = Arc::new(Counting::new("http://node"));
    let node = Arc::new(StubNode::new());
    let reconciler = Arc::new(Reconciler::new(
        ReconcilePorts {
            cluster: cluster.clone(),
            node: node.clone(),
            agents: Arc::new(no_registry()),
            tenants: Arc::new(tenant_store(tenants.clone())),
            clock: Arc::new(TestClock(Mutex::new(t0()))),
        },
        RESYNC,
    ));
    for tenant in &tenants {
        for name in ["a", "b", "c", "d", "e"] {
            cluster.apply_agent(&tenant.id, &testing::manifest(name, "m")).await.unwrap();
        }
    }
    let task = tokio::spawn(reconciler.clone().run());
    let running = async || cluster.inner.list_agent_objects().await.unwrap().iter().filter(|o| o.status.phase == AgentPhase::Running).count();
    for _ in 0..200 {
        if running().await == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running().await, 100, "the first sweep found and deployed them all");

    cluster.reads.store(0, std::sync::atomic::Ordering::Relaxed);
    let (tenant, changed) = (tenants[7].id, testing::manifest("c", "other"));
    cluster.apply_agent(&tenant, &changed).await.unwrap();
    reconciler.wake(Change::Agent(tenant, changed.name().clone()));
    let observed = async || cluster.inner.agent_object(&tenant, changed.name()).await.unwrap().unwrap().observed_generation;
    for _ in 0..200 {
        if observed().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(observed().await, 2, "the changed agent was pushed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    assert_eq!(cluster.reads.load(std::sync::atomic::Ordering::Relaxed), 1, "one object read: no list, no other agent");
}

#[test]
fn a_follower_drops_wakes_instead_of_piling_them_up() {
    let (cluster, node) = (Arc::new(MemoryCluster::new("http://node")), Arc::new(StubNode::new()));
    let reconciler = reconciler(&cluster, &node, vec![], Arc::new(TestClock(Mutex::new(t0()))));
    let tenant = a_tenant();
    reconciler.set_following(true);
    for n in 0..100 {
        reconciler.wake(Change::Agent(tenant.id, AgentName::parse(&format!("bot-{n}")).unwrap()));
    }
    reconciler.trigger();
    assert_eq!(reconciler.state().queue.len(), 0, "another replica reconciles: nothing is kept");
    reconciler.set_following(false);
    reconciler.wake(Change::Tenant(tenant.id));
    assert_eq!(reconciler.state().queue.len(), 1, "the leader keeps what it is woken for");
}

/// A delete cut short between the registry's commit and the cluster's mark (a client gone,
/// the cluster failing) leaves an object no mark reached: the sweep marks it, so that the
/// loop takes it off its node. An object whose agent was registered again since the
/// listing, and one still registered, are left alone.
#[tokio::test]
async fn the_sweep_marks_objects_whose_agent_the_registry_lost() {
    let tenant = a_tenant();
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    for name in ["lost", "kept", "again"] {
        cluster.apply_agent(&tenant.id, &testing::manifest(name, "m")).await.unwrap();
    }
    let registered = |name: &str| Agent { tenant_id: tenant.id, manifest: testing::manifest(name, "m"), version_number: 1, created_at: t0(), updated_at: t0() };
    let mut agents = MockAgentStore::new();
    let listed = vec![registered("kept")];
    agents.expect_list_all_agents().returning(move || Ok(listed.clone()));
    let again = registered("again");
    agents.expect_find_agent().withf(|_, name| name.as_str() == "again").returning(move |_, _| Ok(Some(again.clone())));
    agents.expect_find_agent().withf(|_, name| name.as_str() == "lost").times(1).returning(|_, _| Ok(None));
    let ports = ReconcilePorts {
        cluster: cluster.clone(),
        node: Arc::new(StubNode::new()),
        agents: Arc::new(agents),
        tenants: Arc::new(tenant_store(vec![tenant.clone()])),
        clock: Arc::new(TestClock(Mutex::new(t0()))),
    };
    let reconciler = Reconciler::new(ports, RESYNC);
    assert_eq!(reconciler.apply_registry().await.unwrap(), 1, "one object marked; every registered agent has its object");
    let deleting = async |name: &str| cluster.agent_object(&tenant.id, &AgentName::parse(name).unwrap()).await.unwrap().unwrap().deleting;
    assert!(deleting("lost").await, "the object the registry lost is marked");
    assert!(!deleting("kept").await && !deleting("again").await, "registered agents are not");
}

#[tokio::test]
async fn a_pass_over_a_converged_world_writes_nothing_and_only_lists_the_node() {
    use std::sync::atomic::Ordering::Relaxed;
    let tenants: Vec<Tenant> = (0..3).map(|_| a_tenant()).collect();
    let cluster = Arc::new(Counting::new("http://node"));
    let node = Arc::new(StubNode::new());
    let clock = Arc::new(TestClock(Mutex::new(t0())));
    let tenant_reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tenant_store = MockTenantStore::new();
    let (listed, counted) = (tenants.clone(), tenant_reads.clone());
    tenant_store.expect_list_all_tenants().returning(move || Ok(listed.clone()));
    let found = tenants.clone();
    tenant_store.expect_find_tenant().returning(move |id| {
        counted.fetch_add(1, Relaxed);
        Ok(found.iter().find(|t| t.id == *id).cloned())
    });
    let ports =
        ReconcilePorts { cluster: cluster.clone(), node: node.clone(), agents: Arc::new(no_registry()), tenants: Arc::new(tenant_store), clock: clock.clone() };
    let reconciler = Reconciler::new(ports, RESYNC);
    for tenant in &tenants {
        for name in ["a", "b", "c"] {
            cluster.apply_agent(&tenant.id, &testing::manifest(name, "m")).await.unwrap();
        }
    }
    reconciler.pass().await;
    let all = async || cluster.inner.list_agent_objects().await.unwrap();
    assert!(all().await.iter().all(|o| o.status.phase == AgentPhase::Running), "converged");
    let on_node = || node.requests();
    let pushed_at = clock.now();

    // Resync periods at rest: one list of the node each, one time recorded for it, and
    // nothing else written anywhere.
    let (writes, node_before) = (cluster.writes.load(Relaxed), on_node());
    tenant_reads.store(0, Relaxed);
    for period in 1..=3 {
        clock.advance(chrono::Duration::from_std(RESYNC).unwrap());
        reconciler.pass().await;
        assert_eq!(cluster.writes.load(Relaxed), writes, "no store write at rest (period {period})");
        assert_eq!(on_node().writes, node_before.writes, "no node write at rest (period {period})");
        assert_eq!(on_node().lists, node_before.lists + period, "one list of the node per period");
        assert_eq!(cluster.seen.load(Relaxed), period as usize, "one time recorded per node and period");
    }
    assert_eq!(on_node().reads, node_before.reads);
    assert_eq!(tenant_reads.load(Relaxed), 0, "a ready tenant nothing woke is not read again");
    reconciler.wake(Change::Tenant(tenants[0].id));
    reconciler.pass().await;
    assert_eq!(tenant_reads.load(Relaxed), 1, "one an event woke is");
    let synced = all().await[0].status.last_synced_at.unwrap();
    assert!(synced > pushed_at && synced <= clock.now(), "lastSyncedAt follows the node's last look: {synced}");

    // The node restarted empty: the next look pushes every agent back, and only those.
    node.restart("http://node");
    clock.advance(chrono::Duration::from_std(RESYNC).unwrap());
    reconciler.pass().await;
    assert_eq!(on_node().writes, node_before.writes + 9 * 2, "each agent registered and deployed once");
    for tenant in &tenants {
        for name in ["a", "b", "c"] {
            let on = NodeNames::new(tenant.id, NodeSharing::Shared).node_name(&AgentName::parse(name).unwrap());
            assert!(node.agent("http://node", on.as_str()).unwrap().deployed, "{name} is back");
        }
    }
    assert!(all().await.iter().all(|o| o.status.phase == AgentPhase::Running));

    // One agent changed behind Nexus's back, a stray Nexus pushed and one it did not: the
    // changed one is pushed again, the stray removed, the other left alone.
    let changed = NodeNames::new(tenants[0].id, NodeSharing::Shared).node_name(&AgentName::parse("b").unwrap());
    let mut tampered = node.agent("http://node", changed.as_str()).unwrap();
    tampered.manifest["metadata"]["version"] = "9.9.9".into();
    node.put("http://node", changed.as_str(), tampered);
    let stray = nexus_node_stub::StubAgent { manifest: json!({"metadata": {"name": "gone", "version": "1.0.0+nexus.0123456789abcdef"}}), deployed: true };
    node.put("http://node", "gone", stray);
    let foreign = nexus_node_stub::StubAgent { manifest: json!({"metadata": {"name": "theirs", "version": "1.0.0"}}), deployed: true };
    node.put("http://node", "theirs", foreign);
    let before = on_node();
    clock.advance(chrono::Duration::from_std(RESYNC).unwrap());
    reconciler.pass().await;
    assert_eq!(on_node().writes, before.writes + 3, "one agent pushed again (2 calls), one stray removed");
    assert!(node.agent("http://node", "gone").is_none() && node.agent("http://node", "theirs").is_some());
    let version = node.agent("http://node", changed.as_str()).unwrap().manifest["metadata"]["version"].clone();
    assert!(version.as_str().unwrap().contains("+nexus."), "{version}");

    // Back at rest.
    let (writes, before) = (cluster.writes.load(Relaxed), on_node());
    clock.advance(chrono::Duration::from_std(RESYNC).unwrap());
    reconciler.pass().await;
    assert_eq!((cluster.writes.load(Relaxed), on_node().writes, on_node().lists), (writes, before.writes, before.lists + 1));
}

/// A term that lasts `for_` from now, and the channel its election tells it on.
fn term_lasting(number: u64, for_: Duration) -> (tokio::sync::watch::Sender<Option<Term>>, tokio::sync::watch::Receiver<Option<Term>>) {
    tokio::sync::watch::channel(Some(Term { number, until: tokio::time::Instant::now() + for_ }))
}

#[tokio::test]
async fn a_leader_frozen_past_its_term_neither_calls_the_node_nor_writes_when_it_wakes() {
    let tenant = a_tenant();
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let reconciler = reconciler(&cluster, &node, vec![tenant.clone()], Arc::new(TestClock(Mutex::new(t0()))));
    let (_election, leading) = term_lasting(7, Duration::from_millis(50));
    reconciler.begin_term(7, leading);
    cluster.provision_tenant(&tenant).await.unwrap();
    cluster.apply_agent(&tenant.id, &manifest("m")).await.unwrap();
    // Frozen (SIGSTOP, a pause) past the term's deadline; its election has not said so yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reconciler.in_term_now());
    reconciler.pass().await;
    assert!(node.agent("http://node", &bot_on_node(&tenant)).is_none(), "no node call once the term is over");
    let object = cluster.agent_object(&tenant.id, manifest("m").name()).await.unwrap().unwrap();
    assert_eq!((object.status, object.observed_generation), (AgentStatus::pending(), 0), "no status written");

    cluster.request_agent_deletion(&tenant.id, manifest("m").name()).await.unwrap();
    reconciler.pass().await;
    assert!(cluster.agent_object(&tenant.id, manifest("m").name()).await.unwrap().is_some(), "nor an object let go");
}

#[tokio::test]
async fn a_node_call_still_running_when_the_term_ends_is_cut_off() {
    let tenant = a_tenant();
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let reconciler = reconciler(&cluster, &Arc::new(StubNode::new()), vec![tenant.clone()], Arc::new(TestClock(Mutex::new(t0()))));
    let (_election, leading) = term_lasting(1, Duration::from_millis(100));
    reconciler.begin_term(1, leading);
    let hung = reconciler.in_term(std::future::pending::<nexus_ports::Result<()>>());
    let err = tokio::time::timeout(Duration::from_secs(30), hung).await.expect("cut off at the term's end").unwrap_err();
    assert!(crate::app::reconcile::is_term_over(&err));
}

#[tokio::test]
async fn a_renewed_term_goes_on_and_a_new_one_is_not_the_old_one() {
    let tenant = a_tenant();
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let reconciler = reconciler(&cluster, &Arc::new(StubNode::new()), vec![tenant], Arc::new(TestClock(Mutex::new(t0()))));
    let (election, leading) = term_lasting(3, Duration::from_millis(100));
    reconciler.begin_term(3, leading);
    election.send_replace(Some(Term { number: 3, until: tokio::time::Instant::now() + Duration::from_secs(60) }));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(reconciler.in_term_now(), "renewed: its deadline moved on");
    election.send_replace(Some(Term { number: 4, until: tokio::time::Instant::now() + Duration::from_secs(60) }));
    assert!(!reconciler.in_term_now(), "a later term (lost, then won again) is not the one the loop began in");
    reconciler.end_term();
    assert!(!reconciler.in_term_now());
}

/// A replica led, listed an agent in a sweep, and lost the lease before handling it;
/// meanwhile another leader removed the agent for good; hours later this replica leads
/// again. It used to start from the queued snapshot and push the deleted agent again.
#[tokio::test]
async fn a_replica_leading_again_starts_from_fresh_lists_not_stale_snapshots() {
    let tenant = a_tenant();
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let node = Arc::new(StubNode::new());
    let reconciler = reconciler(&cluster, &node, vec![tenant.clone()], Arc::new(TestClock(Mutex::new(t0()))));
    let (_first, leading) = term_lasting(1, Duration::from_secs(3600));
    reconciler.begin_term(1, leading);
    cluster.apply_agent(&tenant.id, &manifest("m")).await.unwrap();
    reconciler.sweep(false).await;
    assert_eq!(reconciler.state().listed.len(), 1, "the sweep listed the agent for its item");

    reconciler.end_term();
    assert!(reconciler.state().listed.is_empty() && reconciler.state().queue.is_empty(), "losing the lease drops the queue and the snapshots");
    // Another leader deletes it meanwhile; the wakes of its events reach a follower, which drops them.
    cluster.request_agent_deletion(&tenant.id, manifest("m").name()).await.unwrap();
    cluster.forget_agent(&tenant.id, manifest("m").name()).await.unwrap();
    reconciler.wake(Change::Agent(tenant.id, manifest("m").name().clone()));

    let (_second, leading) = term_lasting(2, Duration::from_secs(3600));
    reconciler.begin_term(2, leading);
    reconciler.pass().await;
    assert!(node.agent("http://node", &bot_on_node(&tenant)).is_none(), "the deleted agent is not pushed again");
    assert!(cluster.agent_object(&tenant.id, manifest("m").name()).await.unwrap().is_none());
}

/// A tenant deleted while one of its agents is being created: the tenant's deprovisioning
/// (which marks its objects) comes before the create's apply, which leaves a live object
/// of a tenant the store no longer has; both wakes reach the loop, in either order.
#[tokio::test]
async fn an_agent_created_while_its_tenant_is_deprovisioned_never_stays_on_the_shared_node() {
    for agent_first in [true, false] {
        let (deleted, kept) = (a_tenant(), a_tenant());
        let cluster = Arc::new(MemoryCluster::new("http://node"));
        let node = Arc::new(StubNode::new());
        let tenants = Arc::new(Mutex::new(vec![deleted.clone(), kept.clone()]));
        let mut store = MockTenantStore::new();
        let listed = tenants.clone();
        store.expect_list_all_tenants().returning(move || Ok(listed.lock().unwrap().clone()));
        let found = tenants.clone();
        store.expect_find_tenant().returning(move |id| Ok(found.lock().unwrap().iter().find(|t| t.id == *id).cloned()));
        let reconciler = Reconciler::new(
            ReconcilePorts {
                cluster: cluster.clone(),
                node: node.clone(),
                agents: Arc::new(no_registry()),
                tenants: Arc::new(store),
                clock: Arc::new(TestClock(Mutex::new(t0()))),
            },
            RESYNC,
        );
        cluster.apply_agent(&deleted.id, &manifest("old")).await.unwrap();
        cluster.apply_agent(&kept.id, &manifest("kept")).await.unwrap();
        reconciler.pass().await;
        assert!(node.agent("http://node", &bot_on_node(&deleted)).unwrap().deployed);

        // DELETE of the tenant runs between the create's registry insert and its apply.
        cluster.deprovision_tenant(&deleted.id).await.unwrap();
        tenants.lock().unwrap().retain(|t| t.id != deleted.id);
        let racing = testing::manifest("racer", "m");
        cluster.apply_agent(&deleted.id, &racing).await.unwrap();
        let (agent, tenant) = (Change::Agent(deleted.id, racing.name().clone()), Change::Tenant(deleted.id));
        if agent_first {
            reconciler.wake(agent);
            reconciler.wake(tenant);
        } else {
            reconciler.wake(tenant);
            reconciler.wake(agent);
        }
        for _ in 0..3 {
            reconciler.pass().await;
        }
        let racer = NodeNames::new(deleted.id, NodeSharing::Shared).node_name(racing.name()).to_string();
        assert!(node.agent("http://node", &racer).is_none(), "the agent created meanwhile is off the shared node (agent woken first: {agent_first})");
        assert!(node.agent("http://node", &bot_on_node(&deleted)).is_none(), "and the tenant's other agent");
        assert!(cluster.list_tenant_agent_objects(&deleted.id).await.unwrap().is_empty(), "their objects went");
        assert!(node.agent("http://node", &bot_on_node(&kept)).unwrap().deployed, "the other tenant's agent is untouched");
    }
}

/// A call in flight when the process froze past its term takes no further step on waking.
#[tokio::test]
async fn a_call_in_flight_takes_no_step_once_its_term_is_over() {
    let cluster = Arc::new(MemoryCluster::new("http://node"));
    let reconciler = reconciler(&cluster, &Arc::new(StubNode::new()), vec![], Arc::new(TestClock(Mutex::new(t0()))));
    let (_election, leading) = term_lasting(1, Duration::from_millis(100));
    reconciler.begin_term(1, leading);
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let call = async {
        steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Frozen here, past the term: the thread sleeps without yielding.
        std::thread::sleep(Duration::from_millis(200));
        tokio::task::yield_now().await;
        steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    };
    let err = reconciler.in_term(call).await.unwrap_err();
    assert!(crate::app::reconcile::is_term_over(&err));
    assert_eq!(steps.load(std::sync::atomic::Ordering::SeqCst), 1, "the step after waking was not taken");
}
