//! The reconcile loop, shared by every cluster backend: it drives each agent object
//! towards its node (Pending -> Deploying -> Running, or Failed with the reason, retried
//! with capped exponential backoff), resyncs running agents periodically, removes deleted
//! agents from their node before letting them go, and provisions every tenant (a tenant
//! whose provisioning fails backs off like an agent). Statuses are written only when they
//! change.
//!
//! It works per object: every tenant and every agent is an item of a queue
//! ([`WorkQueue`]), due at its own time (its resync, its backoff), handled alone, with at
//! most one in flight per object and a few objects at once. Events from the API and the
//! cluster's watches wake the one object they concern ([`Change`]); nothing walks every
//! object because one changed. Agents read their tenant's status from what the loop last
//! saw of it, not from the cluster. A sweep every resync period re-reads the lists to find
//! objects no event announced and re-applies what the cluster lost of the registry.
//! Resyncs are spread over the period ([`spread`]) and go through a token bucket, so that
//! thousands of agents never reach their nodes at once.
//!
//! What to do next for an object is decided by the pure [`next_step`]; the runner around
//! it only performs I/O. On a node that tenants share, an agent's chains must compile there
//! before it is pushed ([`super::chains`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use nexus_ports::Error;
use nexus_ports::agents::{Agent, AgentName, AgentObject, AgentPhase, AgentStatus, Change};
use nexus_ports::node_names::{NodeNames, NodeSharing};
use nexus_ports::ports::{AgentStore, Clock, ClusterBackend, NodeProxy, TenantStore};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use tokio::sync::Notify;

use super::chains::{NodeCheck, may_be_on_node, node_check};
use super::tenancy::provision;
use super::work_queue::{TokenBucket, WorkQueue, spread};

/// The longest wait between retries of a failing agent.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How many objects are reconciled at once.
const CONCURRENCY: usize = 8;
/// Resyncs per second allowed by default ([`Reconciler::with_resync_rate`]).
pub const DEFAULT_RESYNC_RATE: u32 = 200;
/// How soon a tenant whose node is not ready yet is looked at again (watches may wake it
/// sooner).
const NOT_READY_RECHECK: Duration = Duration::from_secs(2);
/// How often the queue's depth is published at most.
const DEPTH_EVERY: Duration = Duration::from_millis(250);

/// What to do next with an agent object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Register and deploy the manifest on the node.
    Deploy,
    /// Deletion was asked for: remove it from the node (if there is one), then forget it.
    Cleanup { node: Option<String> },
    /// Its tenant's node is not ready: wait, then look again.
    AwaitTenant,
    /// Nothing to do until then.
    Wait(Duration),
    /// It must not be on its (shared) node now, for `reason`: keep it off, Pending, taking
    /// it off first when it may be there (`withdraw`).
    Hold { reason: String, withdraw: bool },
}

/// Failures of an agent in a row, and when the last attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub failures: u32,
    pub last_attempt: DateTime<Utc>,
}

/// The wait before retry number `failures` (1 s, 2 s, 4 s... capped at 30 s).
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(BACKOFF_CAP)
}

/// How long a failing object (an agent, or a tenant whose provisioning failed) must still
/// wait before its next attempt; `None` when it may be tried now.
pub fn retry_wait(retry: Option<Retry>, now: DateTime<Utc>) -> Option<Duration> {
    let retry = retry?;
    let due = retry.last_attempt + chrono::Duration::from_std(backoff(retry.failures)).unwrap_or(chrono::Duration::MAX);
    (now < due).then(|| (due - now).to_std().unwrap_or_default())
}

/// How long an agent being deleted waits for those handing over to it to leave the node.
pub const NEEDED_WAIT: Duration = Duration::from_secs(1);

/// Decides what to do next with `object`, given its tenant's status, what its tenant's
/// chains allow on the node, its retry state, the resync period and the time.
pub fn next_step(object: &AgentObject, tenant: Option<&TenantStatus>, check: &NodeCheck, retry: Option<Retry>, resync: Duration, now: DateTime<Utc>) -> Step {
    let node = tenant.filter(|t| t.phase == TenantPhase::Ready).and_then(|t| t.node_endpoint.clone());
    if object.deleting {
        if node.is_some() && *check == NodeCheck::Needed {
            return Step::Wait(NEEDED_WAIT);
        }
        return Step::Cleanup { node };
    }
    if node.is_none() {
        return Step::AwaitTenant;
    }
    if let NodeCheck::Blocked(reason) = check {
        // Taken off at once when it may be there; otherwise held whenever it would deploy.
        let usual = timed_step(object, retry, resync, now);
        return if may_be_on_node(object) || usual == Step::Deploy { Step::Hold { reason: reason.clone(), withdraw: may_be_on_node(object) } } else { usual };
    }
    timed_step(object, retry, resync, now)
}

/// Deploy now, or wait for the backoff of a failed agent or the resync of a running one.
fn timed_step(object: &AgentObject, retry: Option<Retry>, resync: Duration, now: DateTime<Utc>) -> Step {
    let wait_until = |since: DateTime<Utc>, wait: Duration| {
        let due = since + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        if now >= due { Step::Deploy } else { Step::Wait((due - now).to_std().unwrap_or_default()) }
    };
    let current = object.observed_generation == object.generation;
    match (object.status.phase, retry) {
        (AgentPhase::Failed, Some(retry)) if current => wait_until(retry.last_attempt, backoff(retry.failures)),
        (AgentPhase::Running, _) if current => match object.status.last_synced_at {
            Some(synced) => wait_until(synced, resync),
            None => Step::Deploy,
        },
        _ => Step::Deploy,
    }
}

/// Whether deploying `object` now would be a periodic resync (it runs its current
/// generation already), as opposed to a first push, a change or a retry.
pub fn is_resync(object: &AgentObject) -> bool {
    !object.deleting && object.status.phase == AgentPhase::Running && object.observed_generation == object.generation && object.status.last_synced_at.is_some()
}

/// Whether any agent of a tenant takes part in chains: only then can what happens to one
/// of its agents change what its other agents may do on a shared node.
pub fn chains_in(objects: &[AgentObject]) -> bool {
    objects.iter().any(|object| !object.manifest.links()["spec"]["chain"].is_null())
}

/// What the loop works on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    /// Re-reads the lists: tenants and agent objects no event announced, what the cluster
    /// lost of the registry, deletions to finish.
    Sweep,
    Tenant(TenantId),
    Agent(TenantId, AgentName),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sweep => "sweep",
            Self::Tenant(_) => "tenant",
            Self::Agent(..) => "agent",
        }
    }
}

type AgentKey = (TenantId, AgentName);

/// What the loop knows between items.
struct State {
    queue: WorkQueue<Item>,
    /// Each tenant's status as its last item found it: what its agents go by.
    tenants: HashMap<TenantId, TenantStatus>,
    /// The agents the loop tracks, by tenant.
    agents_of: HashMap<TenantId, HashSet<AgentName>>,
    retries: HashMap<AgentKey, Retry>,
    /// Tenants whose provisioning failed, backing off like agents.
    tenant_retries: HashMap<TenantId, Retry>,
    /// Resyncs allowed to reach nodes.
    bucket: TokenBucket,
    /// Each tracked agent's phase as last seen or written, and how many are in each.
    phases: HashMap<AgentKey, AgentPhase>,
    phase_counts: [i64; 4],
    depth_published: Option<Instant>,
    /// Agent objects a sweep just listed and woke, for their item to use instead of
    /// reading them again; dropped when an event says the object changed since.
    listed: HashMap<AgentKey, AgentObject>,
    /// Agents whose resync the bucket deferred: each holds a token reserved for when it is
    /// due again, and goes then without asking the bucket again.
    reserved: HashSet<AgentKey>,
}

impl State {
    /// Notes the agent's phase, keeping the per-phase counts (`None`: it is gone).
    fn note_phase(&mut self, key: &AgentKey, phase: Option<AgentPhase>) {
        let index = |phase: AgentPhase| AgentPhase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        let old = match phase {
            Some(phase) => self.phases.insert(key.clone(), phase),
            None => self.phases.remove(key),
        };
        if old == phase {
            return;
        }
        if let Some(old) = old {
            self.phase_counts[index(old)] -= 1;
        }
        if let Some(phase) = phase {
            self.phase_counts[index(phase)] += 1;
        }
        for (phase, count) in AgentPhase::ALL.into_iter().zip(self.phase_counts) {
            metrics::gauge!("nexus_agents", "phase" => phase.as_str()).set(count as f64);
        }
    }

    /// Records a tenant's status; says whether it differs from what its agents went by.
    fn note_tenant(&mut self, id: TenantId, status: TenantStatus) -> bool {
        let changed = self.tenants.get(&id).is_none_or(|old| old.phase != status.phase || old.node_endpoint != status.node_endpoint);
        self.tenants.insert(id, status);
        if changed {
            self.publish_tenants();
        }
        changed
    }

    fn publish_tenants(&self) {
        for phase in TenantPhase::ALL {
            let count = self.tenants.values().filter(|status| status.phase == phase).count();
            metrics::gauge!("nexus_tenants", "phase" => phase.as_str()).set(count as f64);
        }
    }

    /// Wakes every tracked agent of the tenant but `except`.
    fn wake_agents_of(&mut self, tenant: TenantId, except: Option<&AgentName>, now: DateTime<Utc>) {
        let names: Vec<AgentName> = self.agents_of.get(&tenant).into_iter().flatten().filter(|name| Some(*name) != except).cloned().collect();
        for name in names {
            self.queue.wake(Item::Agent(tenant, name), now);
        }
    }

    fn wake(&mut self, change: Change, now: DateTime<Utc>) {
        match change {
            // What changed of a tenant may change what each of its agents must do.
            Change::Tenant(tenant) => {
                self.queue.wake(Item::Tenant(tenant), now);
                self.wake_agents_of(tenant, None, now);
            }
            Change::Agent(tenant, name) => {
                self.listed.remove(&(tenant, name.clone()));
                self.agents_of.entry(tenant).or_default().insert(name.clone());
                self.queue.wake(Item::Agent(tenant, name), now);
            }
        }
    }

    /// Stops tracking an agent that is gone.
    fn forget_agent(&mut self, key: &AgentKey) {
        self.retries.remove(key);
        self.reserved.remove(key);
        self.note_phase(key, None);
        if let Some(names) = self.agents_of.get_mut(&key.0) {
            names.remove(&key.1);
            if names.is_empty() {
                self.agents_of.remove(&key.0);
            }
        }
    }
}

/// The loop's state and its wake-up, shared with [`Waker`]s.
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    clock: Arc<dyn Clock>,
    /// Another replica reconciles: wakes are dropped (they would pile up with nobody to
    /// take them), since the loop starts with a sweep of the lists whenever it runs.
    following: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Wakes the loop for one changed object: what the API and the cluster's watches hold.
#[derive(Clone)]
pub struct Waker(Arc<Shared>);

impl Waker {
    /// Asks for the changed object to be reconciled now (a tenant: with its agents).
    pub fn wake(&self, change: Change) {
        if self.0.following.load(Ordering::Relaxed) {
            return;
        }
        let now = self.0.clock.now();
        self.0.state().wake(change, now);
        self.0.notify.notify_one();
    }
}

/// The runner: holds the queue and what it knows, performs the steps.
pub struct Reconciler {
    cluster: Arc<dyn ClusterBackend>,
    node: Arc<dyn NodeProxy>,
    agents: Arc<dyn AgentStore>,
    tenants: Arc<dyn TenantStore>,
    clock: Arc<dyn Clock>,
    resync: Duration,
    shared: Arc<Shared>,
}

/// The ports the reconcile loop drives and reads, by name.
pub struct ReconcilePorts {
    pub cluster: Arc<dyn ClusterBackend>,
    pub node: Arc<dyn NodeProxy>,
    pub agents: Arc<dyn AgentStore>,
    pub tenants: Arc<dyn TenantStore>,
    pub clock: Arc<dyn Clock>,
}

/// `at` plus `wait`.
fn after(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

impl Reconciler {
    /// A runner resyncing every `resync`, at most [`DEFAULT_RESYNC_RATE`] agents a second.
    pub fn new(ports: ReconcilePorts, resync: Duration) -> Self {
        let ReconcilePorts { cluster, node, agents, tenants, clock } = ports;
        let now = clock.now();
        let state = State {
            queue: WorkQueue::default(),
            tenants: HashMap::new(),
            agents_of: HashMap::new(),
            retries: HashMap::new(),
            tenant_retries: HashMap::new(),
            bucket: TokenBucket::new(DEFAULT_RESYNC_RATE, now),
            phases: HashMap::new(),
            phase_counts: [0; 4],
            depth_published: None,
            listed: HashMap::new(),
            reserved: HashSet::new(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), notify: Notify::new(), clock: clock.clone(), following: AtomicBool::new(false) });
        Self { cluster, node, agents, tenants, clock, resync, shared }
    }

    /// The same runner letting at most `rate` resyncs a second reach nodes (0: no limit).
    #[must_use]
    pub fn with_resync_rate(self, rate: u32) -> Self {
        self.state().bucket = TokenBucket::new(rate, self.clock.now());
        self
    }

    /// What wakes this loop for a changed object.
    pub fn waker(&self) -> Waker {
        Waker(self.shared.clone())
    }

    /// Asks for the changed object to be reconciled now.
    pub fn wake(&self, change: Change) {
        self.waker().wake(change);
    }

    /// Asks for a sweep now: objects the lists hold that no event announced are found.
    pub fn trigger(&self) {
        if self.shared.following.load(Ordering::Relaxed) {
            return;
        }
        let now = self.clock.now();
        self.state().queue.wake(Item::Sweep, now);
        self.shared.notify.notify_one();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Whether another replica reconciles: while it does, wakes are dropped (a loop that
    /// starts running begins with a sweep, which finds whatever they named).
    pub fn set_following(&self, following: bool) {
        self.shared.following.store(following, Ordering::Relaxed);
    }

    /// How a tenant's agents are named on its node, and whether it is shared.
    fn names(&self, tenant: &TenantId) -> NodeNames {
        NodeNames::new(*tenant, self.cluster.node_sharing())
    }

    /// Runs forever: each object when it is due or woken, a few at once, one at a time per
    /// object. Starts with a sweep (and takes up again what a run stopped midway had in
    /// hand).
    pub async fn run(self: Arc<Self>) {
        let now = self.clock.now();
        {
            let mut state = self.state();
            state.queue.requeue_in_flight(now);
            state.queue.wake(Item::Sweep, now);
        }
        let mut active = FuturesUnordered::new();
        loop {
            let now = self.clock.now();
            let wait = {
                let mut state = self.state();
                while active.len() < CONCURRENCY
                    && let Some(item) = state.queue.pop_due(now)
                {
                    active.push(self.handle(item));
                }
                publish_depth(&mut state, now);
                state.queue.next_due().map_or(self.resync, |due| (due - now).to_std().unwrap_or_default())
            };
            let full = active.len() >= CONCURRENCY;
            tokio::select! {
                Some((item, next)) = active.next(), if !active.is_empty() => self.state().queue.finish(item, next),
                () = self.shared.notify.notified() => {}
                () = tokio::time::sleep(wait.max(Duration::from_millis(1))), if !full => {}
            }
        }
    }

    /// Reconciles every object the loop tracks, and after a sweep of the lists (without
    /// the registry) every object it finds, and whatever they wake, one at a time; returns
    /// how long until the next is due. Each object is looked at, so one waiting for its
    /// resync or backoff only reads.
    pub async fn pass(&self) -> Duration {
        let now = self.clock.now();
        {
            let mut state = self.state();
            let tenants: Vec<TenantId> = state.tenants.keys().copied().collect();
            for tenant in tenants {
                state.queue.wake(Item::Tenant(tenant), now);
            }
            let agents: Vec<AgentKey> = state.agents_of.iter().flat_map(|(t, names)| names.iter().map(|n| (*t, n.clone()))).collect();
            for (tenant, name) in agents {
                state.queue.wake(Item::Agent(tenant, name), now);
            }
        }
        if let Some(next) = self.sweep(false).await {
            self.state().queue.wake(Item::Sweep, next);
        }
        loop {
            let now = self.clock.now();
            let Some(item) = self.state().queue.pop_due(now) else { break };
            let (item, next) = self.handle(item).await;
            self.state().queue.finish(item, next);
        }
        let now = self.clock.now();
        self.state().queue.next_due().map_or(self.resync, |due| (due - now).to_std().unwrap_or_default())
    }

    /// Reconciles one item; returns it with when it is due next (`None`: forgotten).
    async fn handle(&self, item: Item) -> (Item, Option<DateTime<Utc>>) {
        let started = Instant::now();
        let next = match &item {
            Item::Sweep => self.sweep(true).await,
            Item::Tenant(id) => self.tenant_item(*id).await,
            Item::Agent(tenant, name) => self.agent_item((*tenant, name.clone())).await,
        };
        metrics::histogram!("nexus_reconcile_item_duration_seconds", "kind" => item.kind()).record(started.elapsed().as_secs_f64());
        (item, next)
    }

    /// Applies every agent of the registry (the durable record) that has no object in the
    /// cluster: all of them at start-up on the in-memory cluster, any the cluster lost
    /// later. Agents with an object are left alone, so one being deleted is never revived
    /// (objects are only forgotten by this same loop). An agent the cluster refuses (its
    /// namespace deleted by hand or terminating, a policy) is logged (the cluster marks it
    /// where it can) and the others applied: the next sweep tries it again. Returns how
    /// many it applied.
    ///
    /// # Errors
    /// When the store or the cluster cannot be listed.
    pub async fn apply_registry(&self) -> nexus_ports::Result<usize> {
        let objects = self.cluster.list_agent_objects().await?;
        let registry = self.agents.list_all_agents().await?;
        self.mark_unregistered(&objects, &registry).await;
        let existing: HashSet<AgentKey> = objects.into_iter().map(|o| (o.tenant_id, o.manifest.name().clone())).collect();
        let mut applied = 0;
        for agent in registry {
            if existing.contains(&(agent.tenant_id, agent.manifest.name().clone())) {
                continue;
            }
            match self.cluster.apply_agent(&agent.tenant_id, &agent.manifest).await {
                Ok(()) => applied += 1,
                Err(err) => tracing::warn!(tenant = %agent.tenant_id, agent = %agent.manifest.name(), error = %err, "cannot apply the agent; will retry"),
            }
        }
        Ok(applied)
    }

    /// Marks for deletion every object (listed before the registry) whose agent the
    /// registry no longer has and that no deletion mark reached: a delete cut short
    /// between its commit and its mark, or whose mark the cluster refused. Objects are
    /// made after their registry row, so such an object's agent was deleted; it is read
    /// again just before, in case it was registered again since.
    async fn mark_unregistered(&self, objects: &[AgentObject], registry: &[Agent]) {
        let registered: HashSet<(TenantId, &AgentName)> = registry.iter().map(|agent| (agent.tenant_id, agent.manifest.name())).collect();
        for object in objects.iter().filter(|object| !object.deleting && !registered.contains(&(object.tenant_id, object.manifest.name()))) {
            let (tenant, name) = (&object.tenant_id, object.manifest.name());
            match self.agents.find_agent(tenant, name).await {
                Ok(None) => {
                    tracing::warn!(%tenant, agent = %name, "the registry lost an agent its cluster object was not marked for; marking it now");
                    if let Err(err) = self.cluster.request_agent_deletion(tenant, name).await {
                        tracing::warn!(%tenant, agent = %name, error = %err, "cannot mark the deleted agent's object; will retry");
                    }
                }
                Ok(Some(_)) => {}
                Err(err) => tracing::warn!(%tenant, agent = %name, error = %err, "cannot read the agent; will retry"),
            }
        }
    }

    /// Provisions every stored tenant (all of them at start-up on the in-memory cluster),
    /// each then due again at its resync; returns every tenant's status.
    pub async fn reconcile_tenants(&self) -> HashMap<TenantId, TenantStatus> {
        let tenants = match self.tenants.list_all_tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list tenants");
                return HashMap::new();
            }
        };
        self.provision_all(tenants).await
    }

    /// Provisions `tenants`, a few at once, and schedules each; returns their statuses.
    async fn provision_all(&self, tenants: Vec<Tenant>) -> HashMap<TenantId, TenantStatus> {
        let now = self.clock.now();
        let outcomes: Vec<(TenantId, TenantStatus, Option<Duration>)> =
            futures_util::stream::iter(tenants).map(|tenant| self.reconcile_tenant(tenant, now)).buffer_unordered(CONCURRENCY).collect().await;
        let mut state = self.state();
        let mut statuses = HashMap::new();
        for (id, status, wait) in outcomes {
            let next = after(now, wait.unwrap_or_else(|| self.tenant_period(&id, &status)));
            state.note_tenant(id, status.clone());
            state.queue.wake(Item::Tenant(id), next);
            statuses.insert(id, status);
        }
        statuses
    }

    /// How long a tenant in `status` waits for its next look.
    fn tenant_period(&self, id: &TenantId, status: &TenantStatus) -> Duration {
        if status.phase == TenantPhase::Ready { spread(self.resync, id) } else { NOT_READY_RECHECK.min(self.resync) }
    }

    /// Re-reads the lists: provisions tenants the loop has not seen yet (all of them at
    /// its start on Kubernetes), re-applies what the cluster lost of the registry, finishes
    /// deletions, and starts tracking every tenant and agent object no event announced.
    async fn sweep(&self, with_registry: bool) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let retry = Some(after(now, backoff(1)));
        let tenants = match self.tenants.list_all_tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list tenants; will retry");
                return retry;
            }
        };
        let unseen: Vec<Tenant> = {
            let state = self.state();
            tenants.into_iter().filter(|t| !state.tenants.contains_key(&t.id) && !state.queue.contains(&Item::Tenant(t.id))).collect()
        };
        self.provision_all(unseen).await;
        if with_registry && let Err(err) = self.apply_registry().await {
            tracing::warn!(error = %err, "cannot re-apply the agent registry; will retry");
        }
        if let Err(err) = self.cluster.finish_deletions().await {
            tracing::warn!(error = %err, "cannot finish deletions yet; will retry");
        }
        let objects = match self.cluster.list_agent_objects().await {
            Ok(objects) => objects,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list agent objects; will retry");
                return retry;
            }
        };
        let mut state = self.state();
        for object in objects {
            let (tenant, name) = (object.tenant_id, object.manifest.name().clone());
            // The tenant of objects the store no longer has (deleted, whose agents must
            // still leave their node) is looked at too.
            if !state.queue.contains(&Item::Tenant(tenant)) {
                state.queue.wake(Item::Tenant(tenant), now);
            }
            let item = Item::Agent(tenant, name.clone());
            if !state.queue.contains(&item) {
                let key = (tenant, name.clone());
                state.note_phase(&key, Some(object.status.phase));
                state.wake(Change::Agent(tenant, name), now);
                state.listed.insert(key, object);
            }
        }
        Some(after(now, self.resync))
    }

    /// Provisions the tenant again (or, gone from the store, reads what the cluster still
    /// has of it while its agents leave); wakes its agents when what they go by changed.
    async fn tenant_item(&self, id: TenantId) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let (status, next) = match self.tenants.find_tenant(&id).await {
            Ok(Some(tenant)) => {
                let (id, status, wait) = self.reconcile_tenant(tenant, now).await;
                let wait = wait.unwrap_or_else(|| self.tenant_period(&id, &status));
                (status, after(now, wait))
            }
            Ok(None) => {
                if !self.state().agents_of.contains_key(&id) {
                    let mut state = self.state();
                    state.tenants.remove(&id);
                    state.tenant_retries.remove(&id);
                    state.publish_tenants();
                    return None;
                }
                // Objects of a tenant gone from the store must all leave a shared node, one
                // applied again by a sweep that raced the tenant's deletion included.
                if self.cluster.node_sharing() == NodeSharing::Shared {
                    if let Err(err) = self.cluster.deprovision_tenant(&id).await {
                        tracing::warn!(tenant = %id, error = %err, "cannot deprovision the deleted tenant again; will retry");
                        return Some(after(now, backoff(1)));
                    }
                    self.state().wake_agents_of(id, None, now);
                }
                match self.cluster.tenant_status(&id).await {
                    Ok(status) => (status, after(now, spread(self.resync, &id))),
                    Err(err) => {
                        tracing::warn!(tenant = %id, error = %err, "cannot read the deleted tenant's status; will retry");
                        return Some(after(now, backoff(1)));
                    }
                }
            }
            Err(err) => {
                tracing::warn!(tenant = %id, error = %err, "cannot read the tenant; will retry");
                return Some(after(now, backoff(1)));
            }
        };
        let mut state = self.state();
        if state.note_tenant(id, status) {
            state.wake_agents_of(id, None, now);
        }
        Some(next)
    }

    async fn reconcile_tenant(&self, tenant: Tenant, now: DateTime<Utc>) -> (TenantId, TenantStatus, Option<Duration>) {
        let retry = self.state().tenant_retries.get(&tenant.id).copied();
        if let Some(wait) = retry_wait(retry, now) {
            let status = self.cluster.tenant_status(&tenant.id).await.unwrap_or_else(|err| TenantStatus {
                phase: TenantPhase::Error,
                message: Some(err.public_message()),
                ..TenantStatus::pending()
            });
            return (tenant.id, status, Some(wait));
        }
        let status = provision(self.cluster.as_ref(), &tenant).await;
        if status.phase != TenantPhase::Error {
            self.state().tenant_retries.remove(&tenant.id);
            return (tenant.id, status, None);
        }
        let failures = {
            let mut state = self.state();
            let retry = state.tenant_retries.entry(tenant.id).or_insert(Retry { failures: 0, last_attempt: now });
            retry.failures += 1;
            retry.last_attempt = now;
            retry.failures
        };
        (tenant.id, status, Some(backoff(failures)))
    }

    /// Reconciles one agent object; returns when it is due next (`None`: it is gone).
    async fn agent_item(&self, key: AgentKey) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let retry_soon = Some(after(now, backoff(1)));
        let listed = self.state().listed.remove(&key);
        let read = match listed {
            Some(object) => Ok(Some(object)),
            None => self.cluster.agent_object(&key.0, &key.1).await,
        };
        let object = match read {
            Ok(Some(object)) => object,
            Ok(None) => {
                self.state().forget_agent(&key);
                return None;
            }
            Err(err) => {
                tracing::warn!(agent = %key.1, error = %err, "cannot read the agent object; will retry");
                return retry_soon;
            }
        };
        let (tenant, retry) = {
            let mut state = self.state();
            state.note_phase(&key, Some(object.status.phase));
            let tenant = state.tenants.get(&key.0).cloned();
            if tenant.is_none() && !state.queue.contains(&Item::Tenant(key.0)) {
                state.queue.wake(Item::Tenant(key.0), now);
            }
            (tenant, state.retries.get(&key).copied())
        };
        let (check, chained) = if self.cluster.node_sharing() == NodeSharing::PerTenant {
            (NodeCheck::Clear, false)
        } else {
            match self.cluster.list_tenant_agent_objects(&key.0).await {
                Ok(siblings) => (node_check(&object, &siblings.iter().collect::<Vec<_>>(), &self.names(&key.0)), chains_in(&siblings)),
                Err(err) => {
                    tracing::warn!(agent = %key.1, error = %err, "cannot list the tenant's agent objects; will retry");
                    return retry_soon;
                }
            }
        };
        let resync = spread(self.resync, &key);
        // On a shared node, what one agent of a tenant with chains did may change what its
        // others may do: they are looked at again.
        let wake_siblings = || {
            if chained {
                self.state().wake_agents_of(key.0, Some(&key.1), self.clock.now());
            }
        };
        let wait = match next_step(&object, tenant.as_ref(), &check, retry, resync, now) {
            Step::Wait(wait) => {
                if object.deleting && check == NodeCheck::Needed {
                    wake_siblings();
                }
                wait
            }
            Step::AwaitTenant => {
                let waiting = AgentStatus {
                    phase: AgentPhase::Pending,
                    node_ack: false,
                    last_synced_at: object.status.last_synced_at,
                    message: Some("waiting for the tenant's node to be ready".to_owned()),
                };
                // Written once, not every time it is looked at while it waits.
                if object.status != waiting || object.observed_generation != object.generation {
                    self.record(&object, &waiting).await;
                }
                backoff(retry.map_or(1, |r| r.failures + 1))
            }
            Step::Cleanup { node } => {
                let node_name = self.names(&key.0).node_name(&key.1);
                if let Some(node) = node
                    && let Err(err) = self.node.remove_agent(&node, &node_name).await
                {
                    tracing::warn!(agent = %key.1, error = %err, "could not remove the agent from its node; letting it go");
                }
                if let Err(err) = self.cluster.forget_agent(&key.0, &key.1).await {
                    tracing::warn!(agent = %key.1, error = %err, "could not forget the agent object; will retry");
                    return retry_soon;
                }
                self.state().forget_agent(&key);
                wake_siblings();
                return None;
            }
            Step::Deploy => {
                if is_resync(&object) {
                    let mut state = self.state();
                    if !state.reserved.remove(&key)
                        && let Err(wait) = state.bucket.take(now)
                    {
                        state.reserved.insert(key.clone());
                        metrics::counter!("nexus_reconcile_resyncs_deferred_total").increment(1);
                        return Some(after(now, wait));
                    }
                }
                let node = tenant.and_then(|t| t.node_endpoint).unwrap_or_default();
                let (deployed, wait) = self.deploy(&object, &node, now).await;
                if deployed && !object.status.node_ack {
                    wake_siblings();
                }
                wait
            }
            Step::Hold { reason, withdraw } => {
                let node = tenant.and_then(|t| t.node_endpoint).unwrap_or_default();
                let wait = self.hold(&object, &node, reason, withdraw, now).await;
                if withdraw {
                    wake_siblings();
                }
                wait
            }
        };
        Some(after(now, wait))
    }

    /// Counts a failure of the agent now; returns how many in a row.
    fn failed_again(&self, key: &AgentKey, now: DateTime<Utc>) -> u32 {
        let mut state = self.state();
        let retry = state.retries.entry(key.clone()).or_insert(Retry { failures: 0, last_attempt: now });
        retry.failures += 1;
        retry.last_attempt = now;
        retry.failures
    }

    /// Keeps the agent off its node (taking it off first when it may be there): Pending,
    /// with the reason. Looked at again after a backoff, or after an event.
    async fn hold(&self, object: &AgentObject, node: &str, reason: String, withdraw: bool, now: DateTime<Utc>) -> Duration {
        let key = (object.tenant_id, object.manifest.name().clone());
        let failures = self.failed_again(&key, now);
        if withdraw && let Err(err) = self.node.remove_agent(node, &self.names(&key.0).node_name(&key.1)).await {
            tracing::warn!(agent = %key.1, error = %err, "could not take the agent off its node; will retry");
            let failed =
                AgentStatus { phase: AgentPhase::Failed, node_ack: false, last_synced_at: object.status.last_synced_at, message: Some(err.public_message()) };
            self.record(object, &failed).await;
            return backoff(failures);
        }
        let held = AgentStatus {
            phase: AgentPhase::Pending,
            node_ack: false,
            last_synced_at: object.status.last_synced_at,
            message: Some(format!("not on the node: {reason}")),
        };
        if held != object.status || object.observed_generation != object.generation {
            tracing::info!(agent = %key.1, %reason, withdraw, "agent held off its shared node");
            self.record(object, &held).await;
        }
        backoff(failures)
    }

    /// Pushes the agent to its node; says whether it is there now, and how long until it
    /// is looked at again.
    async fn deploy(&self, object: &AgentObject, node: &str, now: DateTime<Utc>) -> (bool, Duration) {
        let key = (object.tenant_id, object.manifest.name().clone());
        if object.status.phase != AgentPhase::Running || object.observed_generation != object.generation {
            let deploying = AgentStatus { phase: AgentPhase::Deploying, node_ack: false, message: None, ..object.status.clone() };
            self.record(object, &deploying).await;
        }
        let names = self.names(&object.tenant_id);
        let outcome = match names.to_node(&object.manifest) {
            Ok(document) => match self.node.register_agent(node, &document).await {
                Ok(()) => self.node.deploy_agent(node, &names.node_name(&key.1)).await,
                Err(err) => Err(err),
            },
            Err(err) => {
                tracing::error!(tenant = %key.0, agent = %key.1, error = %err, "an agent's stored manifest cannot be read");
                Err(Error::Upstream(super::agents::UNREADABLE_MANIFEST.to_owned()))
            }
        };
        match outcome {
            Ok(()) => {
                self.state().retries.remove(&key);
                let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(self.clock.now()), message: None };
                self.record(object, &running).await;
                (true, spread(self.resync, &key))
            }
            Err(err) => {
                let failures = self.failed_again(&key, now);
                tracing::warn!(agent = %key.1, failures, error = %err, "deploying the agent failed; will retry");
                let failed = AgentStatus {
                    phase: AgentPhase::Failed,
                    node_ack: false,
                    last_synced_at: object.status.last_synced_at,
                    message: Some(err.public_message()),
                };
                self.record(object, &failed).await;
                (false, backoff(failures))
            }
        }
    }

    async fn record(&self, object: &AgentObject, status: &AgentStatus) {
        let name = object.manifest.name();
        match self.cluster.set_agent_status(&object.tenant_id, name, object.generation, status).await {
            Ok(()) => self.state().note_phase(&(object.tenant_id, name.clone()), Some(status.phase)),
            Err(err) => tracing::warn!(agent = %name, error = %err, "could not record the agent's status"),
        }
    }
}

/// Publishes the queue's backlog (objects due and not yet taken) and size, at most every
/// [`DEPTH_EVERY`].
fn publish_depth(state: &mut State, now: DateTime<Utc>) {
    if state.depth_published.is_some_and(|at| at.elapsed() < DEPTH_EVERY) {
        return;
    }
    state.depth_published = Some(Instant::now());
    metrics::gauge!("nexus_reconcile_queue_depth").set(state.queue.due_count(now) as f64);
    metrics::gauge!("nexus_reconcile_objects").set(state.queue.len() as f64);
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
