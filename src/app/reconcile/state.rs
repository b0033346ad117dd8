//! What the loop knows between items (its queue, each tenant's status as last seen,
//! retries, phases), and the wakes that reach it from the API and the cluster's watches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nexus_ports::agents::{AgentName, AgentObject, AgentPhase, Change};
use nexus_ports::ports::Clock;
use nexus_ports::tenancy::{TenantId, TenantPhase, TenantStatus};
use tokio::sync::Notify;

use super::step::Retry;
use crate::app::work_queue::{TokenBucket, WorkQueue};

/// How often the queue's depth is published at most.
const DEPTH_EVERY: Duration = Duration::from_millis(250);

/// What the loop works on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Item {
    /// Re-reads the lists: tenants and agent objects no event announced, what the cluster
    /// lost of the registry, deletions to finish.
    Sweep,
    Tenant(TenantId),
    Agent(TenantId, AgentName),
    /// Lists a node's agents once a period and compares them with what should be there.
    Node(String),
}

impl Item {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Sweep => "sweep",
            Self::Tenant(_) => "tenant",
            Self::Agent(..) => "agent",
            Self::Node(_) => "node",
        }
    }
}

pub(super) type AgentKey = (TenantId, AgentName);

/// What a node should list for an agent Running its current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OnNode {
    pub(super) generation: u64,
    /// Its node-side name.
    pub(super) name: String,
    /// The stamped version of the document pushed ([`nexus_ports::node_names`]).
    pub(super) version: String,
}

/// What the loop knows between items.
pub(super) struct State {
    pub(super) queue: WorkQueue<Item>,
    /// Each tenant's status as its last item found it: what its agents go by.
    pub(super) tenants: HashMap<TenantId, TenantStatus>,
    /// The agents the loop tracks, by tenant.
    pub(super) agents_of: HashMap<TenantId, HashSet<AgentName>>,
    pub(super) retries: HashMap<AgentKey, Retry>,
    /// Tenants whose provisioning failed, backing off like agents.
    pub(super) tenant_retries: HashMap<TenantId, Retry>,
    /// Resyncs allowed to reach nodes.
    pub(super) bucket: TokenBucket,
    /// Each tracked agent's phase as last seen or written, and how many are in each.
    pub(super) phases: HashMap<AgentKey, AgentPhase>,
    pub(super) phase_counts: [i64; 4],
    pub(super) depth_published: Option<Instant>,
    /// Agent objects a sweep just listed and woke, for their item to use instead of
    /// reading them again; dropped when an event says the object changed since.
    pub(super) listed: HashMap<AgentKey, AgentObject>,
    /// Agents whose resync the bucket deferred: each holds a token reserved for when it is
    /// due again, and goes then without asking the bucket again.
    pub(super) reserved: HashSet<AgentKey>,
    /// What each node should list for each agent Running its current generation.
    pub(super) on_node: HashMap<AgentKey, OnNode>,
    /// Agents their node's list showed missing or changed: pushed again when next looked at.
    pub(super) drifted: HashSet<AgentKey>,
    /// Each tenant's agent objects as the last sweep listed them: what the chain check of an
    /// agent woken by that sweep reads, instead of the tenant's list again per agent.
    pub(super) siblings: HashMap<TenantId, Arc<Vec<AgentObject>>>,
    /// Whether a sweep has found every object: until then, no node's list is compared (an
    /// agent not tracked yet would look like a stray).
    pub(super) swept: bool,
    /// The resync period: how often each node is listed.
    pub(super) resync: Duration,
    /// The tenants the last sweep listed from the store.
    pub(super) tenants_listed: HashSet<TenantId>,
    /// Tenants an event woke since their item last ran: looked at in full.
    pub(super) tenant_wakes: HashSet<TenantId>,
}

impl State {
    /// Knowing nothing yet, letting `rate` resyncs a second reach nodes.
    pub(super) fn new(rate: u32, now: DateTime<Utc>, resync: Duration) -> Self {
        Self {
            queue: WorkQueue::default(),
            tenants: HashMap::new(),
            agents_of: HashMap::new(),
            retries: HashMap::new(),
            tenant_retries: HashMap::new(),
            bucket: TokenBucket::new(rate, now),
            phases: HashMap::new(),
            phase_counts: [0; 4],
            depth_published: None,
            listed: HashMap::new(),
            reserved: HashSet::new(),
            on_node: HashMap::new(),
            drifted: HashSet::new(),
            siblings: HashMap::new(),
            swept: false,
            resync,
            tenants_listed: HashSet::new(),
            tenant_wakes: HashSet::new(),
        }
    }

    /// Publishes the per-phase counts of agents and tenants, and the queue's size.
    pub(super) fn publish_counts(&mut self) {
        for (phase, count) in AgentPhase::ALL.into_iter().zip(self.phase_counts) {
            metrics::gauge!("nexus_agents", "phase" => phase.as_str()).set(count as f64);
        }
        self.publish_tenants();
        self.depth_published = None;
        publish_depth(self, Utc::now());
    }

    /// Notes the agent's phase, keeping the per-phase counts (`None`: it is gone).
    pub(super) fn note_phase(&mut self, key: &AgentKey, phase: Option<AgentPhase>) {
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

    /// Records a tenant's status; says whether it differs from what its agents went by. Its
    /// node, once ready, is listed every period from then on.
    pub(super) fn note_tenant(&mut self, id: TenantId, status: TenantStatus, now: DateTime<Utc>) -> bool {
        if status.phase == TenantPhase::Ready
            && let Some(endpoint) = &status.node_endpoint
        {
            let item = Item::Node(endpoint.clone());
            if !self.queue.contains(&item) {
                let first = after(now, crate::app::work_queue::spread(self.resync, endpoint));
                self.queue.wake(item, first);
            }
        }
        let changed = self.tenants.get(&id).is_none_or(|old| old.phase != status.phase || old.node_endpoint != status.node_endpoint);
        self.tenants.insert(id, status);
        if changed {
            self.publish_tenants();
        }
        changed
    }

    pub(super) fn publish_tenants(&self) {
        for phase in TenantPhase::ALL {
            let count = self.tenants.values().filter(|status| status.phase == phase).count();
            metrics::gauge!("nexus_tenants", "phase" => phase.as_str()).set(count as f64);
        }
    }

    /// Wakes every tracked agent of the tenant but `except`.
    pub(super) fn wake_agents_of(&mut self, tenant: TenantId, except: Option<&AgentName>, now: DateTime<Utc>) {
        let names: Vec<AgentName> = self.agents_of.get(&tenant).into_iter().flatten().filter(|name| Some(*name) != except).cloned().collect();
        for name in names {
            self.queue.wake(Item::Agent(tenant, name), now);
        }
    }

    pub(super) fn wake(&mut self, change: Change, now: DateTime<Utc>) {
        match change {
            // What changed of a tenant may change what each of its agents must do.
            Change::Tenant(tenant) => {
                self.tenant_wakes.insert(tenant);
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
    pub(super) fn forget_agent(&mut self, key: &AgentKey) {
        self.retries.remove(key);
        self.reserved.remove(key);
        self.on_node.remove(key);
        self.drifted.remove(key);
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
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) notify: Notify,
    pub(super) clock: Arc<dyn Clock>,
    /// Another replica reconciles: wakes are dropped (they would pile up with nobody to
    /// take them), since the loop starts with a sweep of the lists whenever it runs.
    pub(super) following: AtomicBool,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Wakes the loop for one changed object: what the API and the cluster's watches hold.
#[derive(Clone)]
pub struct Waker(pub(super) Arc<Shared>);

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

/// `at` plus `wait`.
pub(super) fn after(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

/// Publishes the queue's backlog (objects due and not yet taken) and size, at most every
/// [`DEPTH_EVERY`].
pub(super) fn publish_depth(state: &mut State, now: DateTime<Utc>) {
    if state.depth_published.is_some_and(|at| at.elapsed() < DEPTH_EVERY) {
        return;
    }
    state.depth_published = Some(Instant::now());
    metrics::gauge!("nexus_reconcile_queue_depth").set(state.queue.due_count(now) as f64);
    metrics::gauge!("nexus_reconcile_objects").set(state.queue.len() as f64);
}
