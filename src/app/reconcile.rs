//! The reconcile loop, shared by every cluster backend: it drives each agent object
//! towards its node (Pending -> Deploying -> Running, or Failed with the reason, retried
//! with capped exponential backoff), resyncs running agents periodically, removes deleted
//! agents from their node before letting them go, and provisions every tenant each pass
//! (a tenant whose provisioning fails backs off like an agent). Statuses are written only
//! when they change. Events from the API wake it at once.
//!
//! What to do next for an object is decided by the pure [`next_step`]; the runner around
//! it only performs I/O. On a node that tenants share, an agent's chains must compile there
//! before it is pushed ([`super::chains`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use nexus_ports::Error;
use nexus_ports::agents::{AgentName, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::node_names::{NodeNames, NodeSharing};
use nexus_ports::ports::{AgentStore, Clock, ClusterBackend, NodeProxy, TenantStore};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use tokio::sync::Notify;

use super::chains::{NodeCheck, may_be_on_node, node_check};
use super::tenancy::provision;

/// The longest wait between retries of a failing agent.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How many agents are reconciled at once.
const CONCURRENCY: usize = 8;
/// The shortest wait between passes.
const MIN_WAIT: Duration = Duration::from_millis(50);

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

/// What reconciling one agent did, as far as the next pass cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Deployed,
    Held,
    Other,
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

/// The runner: holds retry state, performs the steps.
pub struct Reconciler {
    cluster: Arc<dyn ClusterBackend>,
    node: Arc<dyn NodeProxy>,
    agents: Arc<dyn AgentStore>,
    tenants: Arc<dyn TenantStore>,
    clock: Arc<dyn Clock>,
    resync: Duration,
    wake: Notify,
    retries: Mutex<HashMap<(TenantId, AgentName), Retry>>,
    /// Tenants whose provisioning failed, backing off like agents.
    tenant_retries: Mutex<HashMap<TenantId, Retry>>,
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
    /// A runner resyncing every `resync`.
    pub fn new(ports: ReconcilePorts, resync: Duration) -> Self {
        let ReconcilePorts { cluster, node, agents, tenants, clock } = ports;
        Self { cluster, node, agents, tenants, clock, resync, wake: Notify::new(), retries: Mutex::default(), tenant_retries: Mutex::default() }
    }

    /// Asks for a pass now (an event from the API).
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    fn retries(&self) -> MutexGuard<'_, HashMap<(TenantId, AgentName), Retry>> {
        self.retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tenant_retries(&self) -> MutexGuard<'_, HashMap<TenantId, Retry>> {
        self.tenant_retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How a tenant's agents are named on its node, and whether it is shared.
    fn names(&self, tenant: &TenantId) -> NodeNames {
        NodeNames::new(*tenant, self.cluster.node_sharing())
    }

    /// Runs passes forever: after an event, or when the earliest wait is over. Passes that
    /// were not woken by an event also re-apply what the cluster lost of the registry,
    /// once the tenants were provisioned.
    pub async fn run(self: Arc<Self>) {
        let mut woken_by_event = false;
        loop {
            let wait = self.step(!woken_by_event).await;
            woken_by_event = tokio::select! {
                () = self.wake.notified() => true,
                () = tokio::time::sleep(wait) => false,
            };
        }
    }

    /// Applies every agent of the registry (the durable record) that has no object in the
    /// cluster: all of them at start-up on the in-memory cluster, any the cluster lost
    /// later. Agents with an object are left alone, so one being deleted is never revived
    /// (objects are only forgotten by this same loop). An agent the cluster refuses (its
    /// namespace deleted by hand or terminating, a policy) is logged (the cluster marks it
    /// where it can) and the others applied: the next timed pass tries it again. Returns
    /// how many it applied.
    ///
    /// # Errors
    /// When the store or the cluster cannot be listed.
    pub async fn apply_registry(&self) -> nexus_ports::Result<usize> {
        let existing: std::collections::HashSet<(TenantId, AgentName)> =
            self.cluster.list_agent_objects().await?.into_iter().map(|o| (o.tenant_id, o.manifest.name().clone())).collect();
        let mut applied = 0;
        for agent in self.agents.list_all_agents().await? {
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

    /// One pass over every tenant and agent object; returns how long to wait for the next.
    pub async fn pass(&self) -> Duration {
        self.step(false).await
    }

    /// A pass, re-applying the registry after the tenants when `with_registry`.
    async fn step(&self, with_registry: bool) -> Duration {
        let started = std::time::Instant::now();
        let (mut statuses, tenant_wait) = self.tenant_pass().await;
        if with_registry && let Err(err) = self.apply_registry().await {
            tracing::warn!(error = %err, "cannot re-apply the agent registry; will retry");
        }
        if let Err(err) = self.cluster.finish_deletions().await {
            tracing::warn!(error = %err, "cannot finish deletions yet; will retry");
        }
        let objects = match self.cluster.list_agent_objects().await {
            Ok(objects) => objects,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list agent objects; retrying");
                return backoff(1);
            }
        };
        // Objects of tenants the store no longer has (deleted ones whose agents must still
        // leave their node, or resources made outside the API): ask the cluster.
        for object in &objects {
            if !statuses.contains_key(&object.tenant_id)
                && let Ok(status) = self.cluster.tenant_status(&object.tenant_id).await
            {
                statuses.insert(object.tenant_id, status);
            }
        }
        record_phases(&statuses, &objects);
        let checks = self.node_checks(&objects);
        let outcomes: Vec<(Duration, Outcome)> = futures_util::stream::iter(objects.into_iter().zip(checks))
            .map(|(object, check)| {
                let tenant = statuses.get(&object.tenant_id);
                async move { self.reconcile_agent(object, tenant, &check).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        metrics::histogram!("nexus_reconcile_pass_duration_seconds").record(started.elapsed().as_secs_f64());
        // An agent held for another one that was deployed in this pass goes in the next.
        let soon = outcomes.iter().any(|(_, o)| *o == Outcome::Held) && outcomes.iter().any(|(_, o)| *o == Outcome::Deployed);
        let wait = outcomes.into_iter().map(|(wait, _)| wait).chain(tenant_wait).min().unwrap_or(self.resync).min(self.resync);
        if soon { MIN_WAIT } else { wait.max(MIN_WAIT) }
    }

    /// What each object's tenant's chains allow for it; everything is clear on nodes of
    /// tenants' own.
    fn node_checks(&self, objects: &[AgentObject]) -> Vec<NodeCheck> {
        if self.cluster.node_sharing() == NodeSharing::PerTenant {
            return vec![NodeCheck::Clear; objects.len()];
        }
        let mut by_tenant: HashMap<TenantId, Vec<&AgentObject>> = HashMap::new();
        for object in objects {
            by_tenant.entry(object.tenant_id).or_default().push(object);
        }
        objects.iter().map(|object| node_check(object, &by_tenant[&object.tenant_id], &self.names(&object.tenant_id))).collect()
    }

    /// Provisions every stored tenant (all of them at start-up on the in-memory cluster);
    /// returns every tenant's status.
    pub async fn reconcile_tenants(&self) -> HashMap<TenantId, TenantStatus> {
        self.tenant_pass().await.0
    }

    /// Provisions every stored tenant, every pass: the cluster repairs what was deleted and
    /// rolls out what changed (applying what is there already changes nothing). A tenant
    /// whose provisioning failed waits for its backoff. Returns every tenant's status and
    /// the shortest backoff still running.
    async fn tenant_pass(&self) -> (HashMap<TenantId, TenantStatus>, Option<Duration>) {
        let tenants = match self.tenants.list_all_tenants().await {
            Ok(tenants) => tenants,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list tenants");
                return (HashMap::new(), Some(backoff(1)));
            }
        };
        let now = self.clock.now();
        let outcomes: Vec<(TenantId, TenantStatus, Option<Duration>)> =
            futures_util::stream::iter(tenants).map(|tenant| self.reconcile_tenant(tenant, now)).buffer_unordered(CONCURRENCY).collect().await;
        let wait = outcomes.iter().filter_map(|(_, _, wait)| *wait).min();
        (outcomes.into_iter().map(|(id, status, _)| (id, status)).collect(), wait)
    }

    async fn reconcile_tenant(&self, tenant: Tenant, now: DateTime<Utc>) -> (TenantId, TenantStatus, Option<Duration>) {
        let retry = self.tenant_retries().get(&tenant.id).copied();
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
            self.tenant_retries().remove(&tenant.id);
            return (tenant.id, status, None);
        }
        let failures = {
            let mut retries = self.tenant_retries();
            let retry = retries.entry(tenant.id).or_insert(Retry { failures: 0, last_attempt: now });
            retry.failures += 1;
            retry.last_attempt = now;
            retry.failures
        };
        (tenant.id, status, Some(backoff(failures)))
    }

    async fn reconcile_agent(&self, object: AgentObject, tenant: Option<&TenantStatus>, check: &NodeCheck) -> (Duration, Outcome) {
        let key = (object.tenant_id, object.manifest.name().clone());
        let now = self.clock.now();
        let retry = self.retries().get(&key).copied();
        let wait = match next_step(&object, tenant, check, retry, self.resync, now) {
            Step::Wait(wait) => wait,
            Step::AwaitTenant => {
                let waiting = AgentStatus {
                    phase: AgentPhase::Pending,
                    node_ack: false,
                    last_synced_at: object.status.last_synced_at,
                    message: Some("waiting for the tenant's node to be ready".to_owned()),
                };
                // Written once, not every pass while it waits.
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
                    return (backoff(1), Outcome::Other);
                }
                self.retries().remove(&key);
                self.resync
            }
            Step::Deploy => {
                let node = tenant.and_then(|t| t.node_endpoint.clone()).unwrap_or_default();
                return self.deploy(&object, &node, now).await;
            }
            Step::Hold { reason, withdraw } => {
                let node = tenant.and_then(|t| t.node_endpoint.clone()).unwrap_or_default();
                return (self.hold(&object, &node, reason, withdraw, now).await, Outcome::Held);
            }
        };
        (wait, Outcome::Other)
    }

    /// Counts a failure of the agent now; returns how many in a row.
    fn failed_again(&self, key: &(TenantId, AgentName), now: DateTime<Utc>) -> u32 {
        let mut retries = self.retries();
        let retry = retries.entry(key.clone()).or_insert(Retry { failures: 0, last_attempt: now });
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

    async fn deploy(&self, object: &AgentObject, node: &str, now: DateTime<Utc>) -> (Duration, Outcome) {
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
                self.retries().remove(&key);
                let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(self.clock.now()), message: None };
                self.record(object, &running).await;
                (self.resync, Outcome::Deployed)
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
                (backoff(failures), Outcome::Other)
            }
        }
    }

    async fn record(&self, object: &AgentObject, status: &AgentStatus) {
        if let Err(err) = self.cluster.set_agent_status(&object.tenant_id, object.manifest.name(), object.generation, status).await {
            tracing::warn!(agent = %object.manifest.name(), error = %err, "could not record the agent's status");
        }
    }
}

/// Publishes how many tenants and agents are in each phase, as this pass found them.
fn record_phases(tenants: &HashMap<TenantId, TenantStatus>, agents: &[AgentObject]) {
    for phase in [TenantPhase::Pending, TenantPhase::Provisioning, TenantPhase::Ready, TenantPhase::Error] {
        let count = tenants.values().filter(|status| status.phase == phase).count();
        metrics::gauge!("nexus_tenants", "phase" => format!("{phase:?}")).set(count as f64);
    }
    for phase in [AgentPhase::Pending, AgentPhase::Deploying, AgentPhase::Running, AgentPhase::Failed] {
        let count = agents.iter().filter(|object| object.status.phase == phase).count();
        metrics::gauge!("nexus_agents", "phase" => format!("{phase:?}")).set(count as f64);
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
