//! The runner's work on the lists and on tenants: sweeps that re-read the lists (and
//! re-apply what the cluster lost of the registry), provisioning, tenants gone from the
//! store whose agents must still leave their node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use nexus_ports::agents::{Agent, AgentName, AgentObject, Change};
use nexus_ports::node_names::NodeSharing;
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};

use super::state::{AgentKey, Item, after};
use super::step::{Retry, backoff, retry_wait};
use super::{CONCURRENCY, NOT_READY_RECHECK, Reconciler};
use crate::app::tenancy::provision;
use crate::app::work_queue::spread;

impl Reconciler {
    /// Applies every agent of the registry (the durable record) that has no object in the
    /// later. Agents with an object are left alone, so one being deleted is never revived
    /// (objects are only forgotten by this same loop). An agent the cluster refuses (its
    /// namespace deleted by hand or terminating, a policy) is logged (the cluster marks it
    /// where it can) and the others applied: the next sweep tries it again. Returns how
    /// many objects it applied or marked for deletion.
    ///
    /// # Errors
    /// When the store or the cluster cannot be listed.
    pub async fn apply_registry(&self) -> nexus_ports::Result<usize> {
        let objects = self.cluster.list_agent_objects().await?;
        self.apply_registry_over(&objects).await
    }

    /// [`Self::apply_registry`], given the objects the cluster has (listed before the
    /// registry). Objects whose agent the registry lost are marked for deletion first.
    async fn apply_registry_over(&self, objects: &[AgentObject]) -> nexus_ports::Result<usize> {
        let registry = self.agents.list_all_agents().await?;
        // Marked objects count as applied: the caller's listing of them is stale.
        let mut applied = self.mark_unregistered(objects, &registry).await;
        let existing: HashSet<AgentKey> = objects.iter().map(|o| (o.tenant_id, o.manifest.name().clone())).collect();
        for agent in registry {
            if existing.contains(&(agent.tenant_id, agent.manifest.name().clone())) {
                continue;
            }
            match self.in_term(self.cluster.apply_agent(&agent.tenant_id, &agent.manifest)).await {
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
    /// Returns how many it marked.
    async fn mark_unregistered(&self, objects: &[AgentObject], registry: &[Agent]) -> usize {
        let mut marked = 0;
        let registered: HashSet<(TenantId, &AgentName)> = registry.iter().map(|agent| (agent.tenant_id, agent.manifest.name())).collect();
        for object in objects.iter().filter(|object| !object.deleting && !registered.contains(&(object.tenant_id, object.manifest.name()))) {
            let (tenant, name) = (&object.tenant_id, object.manifest.name());
            match self.agents.find_agent(tenant, name).await {
                Ok(None) => {
                    tracing::warn!(%tenant, agent = %name, "the registry lost an agent its cluster object was not marked for; marking it now");
                    match self.in_term(self.cluster.request_agent_deletion(tenant, name)).await {
                        Ok(()) => marked += 1,
                        Err(err) => tracing::warn!(%tenant, agent = %name, error = %err, "cannot mark the deleted agent's object; will retry"),
                    }
                }
                Ok(Some(_)) => {}
                Err(err) => tracing::warn!(%tenant, agent = %name, error = %err, "cannot read the agent; will retry"),
            }
        }
        marked
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
    pub(super) async fn provision_all(&self, tenants: Vec<Tenant>) -> HashMap<TenantId, TenantStatus> {
        let now = self.clock.now();
        let outcomes: Vec<(TenantId, TenantStatus, Option<Duration>)> =
            futures_util::stream::iter(tenants).map(|tenant| self.reconcile_tenant(tenant, now)).buffer_unordered(CONCURRENCY).collect().await;
        let mut state = self.state();
        let mut statuses = HashMap::new();
        for (id, status, wait) in outcomes {
            let next = after(now, wait.unwrap_or_else(|| self.tenant_period(&id, &status)));
            state.note_tenant(id, status.clone(), now);
            state.queue.wake(Item::Tenant(id), next);
            statuses.insert(id, status);
        }
        statuses
    }

    /// How long a tenant in `status` waits for its next look.
    pub(super) fn tenant_period(&self, id: &TenantId, status: &TenantStatus) -> Duration {
        if status.phase == TenantPhase::Ready { spread(self.resync, id) } else { NOT_READY_RECHECK.min(self.resync) }
    }

    /// Re-reads the lists: provisions tenants the loop has not seen yet (all of them at
    /// its start on Kubernetes), re-applies what the cluster lost of the registry, finishes
    /// deletions, and starts tracking every tenant and agent object no event announced.
    pub(super) async fn sweep(&self, with_registry: bool) -> Option<DateTime<Utc>> {
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
            let mut state = self.state();
            state.tenants_listed = tenants.iter().map(|t| t.id).collect();
            tenants.into_iter().filter(|t| !state.tenants.contains_key(&t.id) && !state.queue.contains(&Item::Tenant(t.id))).collect()
        };
        self.provision_all(unseen).await;
        // With the registry, it is compared with the objects listed first, and they are
        // listed again only when it applied some: one list of them a sweep at rest, not two.
        let mut listed = None;
        if with_registry {
            match self.cluster.list_agent_objects().await {
                Ok(objects) => match self.apply_registry_over(&objects).await {
                    Ok(0) => listed = Some(objects),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "cannot re-apply the agent registry; will retry"),
                },
                Err(err) => tracing::warn!(error = %err, "cannot re-apply the agent registry; will retry"),
            }
        }
        if let Err(err) = self.in_term(self.cluster.finish_deletions()).await {
            tracing::warn!(error = %err, "cannot finish deletions yet; will retry");
        }
        let objects = match listed {
            Some(objects) => objects,
            None => match self.cluster.list_agent_objects().await {
                Ok(objects) => objects,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list agent objects; will retry");
                    return retry;
                }
            },
        };
        // A tenant's agents, for the chain checks of those this sweep wakes: read once here,
        // not once per agent.
        let mut siblings: HashMap<TenantId, Vec<AgentObject>> = HashMap::new();
        if self.cluster.node_sharing() == NodeSharing::Shared {
            for object in &objects {
                siblings.entry(object.tenant_id).or_default().push(object.clone());
            }
        }
        let mut state = self.state();
        state.siblings = siblings.into_iter().map(|(tenant, objects)| (tenant, Arc::new(objects))).collect();
        state.swept = true;
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
    pub(super) async fn tenant_item(&self, id: TenantId) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        {
            // At rest on a cluster only Nexus writes: a ready tenant the last sweep listed
            // and nothing woke is as it was; nothing is read.
            let mut state = self.state();
            let woken = state.tenant_wakes.remove(&id);
            let ready = state.tenants.get(&id).is_some_and(|status| status.phase == TenantPhase::Ready);
            if !woken && ready && !self.cluster.tenants_drift() && state.tenants_listed.contains(&id) && !state.tenant_retries.contains_key(&id) {
                return Some(after(now, spread(self.resync, &id)));
            }
        }
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
                    if let Err(err) = self.in_term(self.cluster.deprovision_tenant(&id)).await {
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
        if state.note_tenant(id, status, now) {
            state.wake_agents_of(id, None, now);
        }
        Some(next)
    }

    pub(super) async fn reconcile_tenant(&self, tenant: Tenant, now: DateTime<Utc>) -> (TenantId, TenantStatus, Option<Duration>) {
        let retry = self.state().tenant_retries.get(&tenant.id).copied();
        if let Some(wait) = retry_wait(retry, now) {
            let status = self.cluster.tenant_status(&tenant.id).await.unwrap_or_else(|err| TenantStatus {
                phase: TenantPhase::Error,
                message: Some(err.public_message()),
                ..TenantStatus::pending()
            });
            return (tenant.id, status, Some(wait));
        }
        let status = match self.in_term(async { Ok(provision(self.cluster.as_ref(), &tenant).await) }).await {
            Ok(status) => status,
            Err(err) => TenantStatus { phase: TenantPhase::Error, message: Some(err.public_message()), ..TenantStatus::pending() },
        };
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
}
