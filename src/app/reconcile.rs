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

mod agent;
mod lists;
mod node;
mod state;
mod step;
mod term;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use nexus_ports::agents::Change;
use nexus_ports::node_names::NodeNames;
use nexus_ports::ports::{AgentStore, Clock, ClusterBackend, NodeProxy, TenantStore};
use nexus_ports::tenancy::TenantId;
use tokio::sync::Notify;

pub use self::state::Waker;
use self::state::{AgentKey, Item, Shared, State, publish_depth};
pub use self::step::{BACKOFF_CAP, NEEDED_WAIT, Retry, Step, backoff, chains_in, is_resync, next_step, retry_wait};
use self::term::Acting;
pub use self::term::{TERM_OVER, is_term_over};
use super::work_queue::TokenBucket;

/// How many objects are reconciled at once.
const CONCURRENCY: usize = 8;
/// Resyncs per second allowed by default ([`Reconciler::with_resync_rate`]).
pub const DEFAULT_RESYNC_RATE: u32 = 200;
/// How soon a tenant whose node is not ready yet is looked at again (watches may wake it
/// sooner).
const NOT_READY_RECHECK: Duration = Duration::from_secs(2);

/// The runner: holds the queue and what it knows, performs the steps.
pub struct Reconciler {
    cluster: Arc<dyn ClusterBackend>,
    node: Arc<dyn NodeProxy>,
    agents: Arc<dyn AgentStore>,
    tenants: Arc<dyn TenantStore>,
    clock: Arc<dyn Clock>,
    resync: Duration,
    /// Resyncs a second allowed to reach nodes.
    resync_rate: u32,
    shared: Arc<Shared>,
    /// The term it acts in.
    acting: Mutex<Acting>,
}

/// The ports the reconcile loop drives and reads, by name.
pub struct ReconcilePorts {
    pub cluster: Arc<dyn ClusterBackend>,
    pub node: Arc<dyn NodeProxy>,
    pub agents: Arc<dyn AgentStore>,
    pub tenants: Arc<dyn TenantStore>,
    pub clock: Arc<dyn Clock>,
}

impl Reconciler {
    /// A runner resyncing every `resync`, at most [`DEFAULT_RESYNC_RATE`] agents a second.
    pub fn new(ports: ReconcilePorts, resync: Duration) -> Self {
        let ReconcilePorts { cluster, node, agents, tenants, clock } = ports;
        let state = State::new(DEFAULT_RESYNC_RATE, clock.now(), resync);
        let shared = Arc::new(Shared { state: Mutex::new(state), notify: Notify::new(), clock: clock.clone(), following: AtomicBool::new(false) });
        Self { cluster, node, agents, tenants, clock, resync, resync_rate: DEFAULT_RESYNC_RATE, shared, acting: Mutex::new(Acting::Alone) }
    }

    /// The same runner letting at most `rate` resyncs a second reach nodes (0: no limit).
    #[must_use]
    pub fn with_resync_rate(mut self, rate: u32) -> Self {
        self.resync_rate = rate;
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
            Item::Node(endpoint) => self.node_item(endpoint).await,
        };
        metrics::histogram!("nexus_reconcile_item_duration_seconds", "kind" => item.kind()).record(started.elapsed().as_secs_f64());
        (item, next)
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
