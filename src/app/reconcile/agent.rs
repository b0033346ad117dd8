//! The runner's work on one agent object: reads it and what it goes by, lets
//! [`next_step`] decide, and performs the step (node calls, status writes).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_ports::Error;
use nexus_ports::agents::{AgentObject, AgentPhase, AgentStatus};
use nexus_ports::node_names::NodeSharing;

use super::Reconciler;
use super::state::{AgentKey, Item, OnNode, after};
use super::step::{Retry, Step, backoff, chains_in, is_resync, next_step};
use super::term::is_term_over;
use crate::app::chains::{NodeCheck, node_check};
use crate::app::work_queue::spread;

impl Reconciler {
    /// Reconciles one agent object; returns when it is due next (`None`: it is gone).
    pub(super) async fn agent_item(&self, key: AgentKey) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let retry_soon = Some(after(now, backoff(1)));
        let listed = self.state().listed.remove(&key);
        let from_sweep = listed.is_some();
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
        self.expect_on_node(&key, &object);
        let (check, chained) = if self.cluster.node_sharing() == NodeSharing::PerTenant {
            (NodeCheck::Clear, false)
        } else {
            // An agent the sweep woke goes by the tenant's objects the sweep listed with it;
            // one an event woke reads them afresh.
            let swept = if from_sweep { self.state().siblings.get(&key.0).cloned() } else { None };
            let siblings = match swept {
                Some(siblings) => siblings,
                None => match self.cluster.list_tenant_agent_objects(&key.0).await {
                    Ok(siblings) => Arc::new(siblings),
                    Err(err) => {
                        tracing::warn!(agent = %key.1, error = %err, "cannot list the tenant's agent objects; will retry");
                        return retry_soon;
                    }
                },
            };
            (node_check(&object, &siblings.iter().collect::<Vec<_>>(), &self.names(&key.0)), chains_in(&siblings))
        };
        let resync = spread(self.resync, &key);
        // On a shared node, what one agent of a tenant with chains did may change what its
        // others may do: they are looked at again.
        let wake_siblings = || {
            if chained {
                self.state().wake_agents_of(key.0, Some(&key.1), self.clock.now());
            }
        };
        let step = next_step(&object, tenant.as_ref(), &check, retry, resync, now);
        if is_resync(&object) && matches!(step, Step::Deploy | Step::Wait(_)) {
            // At rest: its node's list, once a period, tells whether it must be pushed
            // again. Until then it is not looked at (a sweep or an event brings it back).
            let mut state = self.state();
            if !state.drifted.contains(&key) {
                state.reserved.remove(&key);
                return None;
            }
        }
        let step = if is_resync(&object) && matches!(step, Step::Wait(_)) { Step::Deploy } else { step };
        let wait = match step {
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
                    && let Err(err) = self.in_term(self.node.remove_agent(&node, &node_name)).await
                {
                    // Another leader takes it up: nothing is let go on a term that is over.
                    if is_term_over(&err) {
                        return retry_soon;
                    }
                    tracing::warn!(agent = %key.1, error = %err, "could not remove the agent from its node; letting it go");
                }
                if let Err(err) = self.in_term(self.cluster.forget_agent(&key.0, &key.1)).await {
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
                self.state().drifted.remove(&key);
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
    pub(super) fn failed_again(&self, key: &AgentKey, now: DateTime<Utc>) -> u32 {
        let mut state = self.state();
        let retry = state.retries.entry(key.clone()).or_insert(Retry { failures: 0, last_attempt: now });
        retry.failures += 1;
        retry.last_attempt = now;
        retry.failures
    }

    /// Keeps the agent off its node (taking it off first when it may be there): Pending,
    /// with the reason. Looked at again after a backoff, or after an event.
    pub(super) async fn hold(&self, object: &AgentObject, node: &str, reason: String, withdraw: bool, now: DateTime<Utc>) -> Duration {
        let key = (object.tenant_id, object.manifest.name().clone());
        let failures = self.failed_again(&key, now);
        if withdraw && let Err(err) = self.in_term(self.node.remove_agent(node, &self.names(&key.0).node_name(&key.1))).await {
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
    pub(super) async fn deploy(&self, object: &AgentObject, node: &str, now: DateTime<Utc>) -> (bool, Duration) {
        let key = (object.tenant_id, object.manifest.name().clone());
        if object.status.phase != AgentPhase::Running || object.observed_generation != object.generation {
            let deploying = AgentStatus { phase: AgentPhase::Deploying, node_ack: false, message: None, ..object.status.clone() };
            self.record(object, &deploying).await;
        }
        let names = self.names(&object.tenant_id);
        let document = names.to_node(&object.manifest);
        let outcome = match &document {
            Ok(document) => match self.in_term(self.node.register_agent(node, document)).await {
                Ok(()) => self.in_term(self.node.deploy_agent(node, &names.node_name(&key.1))).await,
                Err(err) => Err(err),
            },
            Err(err) => {
                tracing::error!(tenant = %key.0, agent = %key.1, error = %err, "an agent's stored manifest cannot be read");
                Err(Error::Upstream(crate::app::agents::UNREADABLE_MANIFEST.to_owned()))
            }
        };
        match outcome {
            Ok(()) => {
                {
                    let mut state = self.state();
                    state.retries.remove(&key);
                    if let Ok(document) = &document {
                        let should = OnNode {
                            generation: object.generation,
                            name: names.node_name(&key.1).as_str().to_owned(),
                            version: document["metadata"]["version"].as_str().unwrap_or_default().to_owned(),
                        };
                        state.on_node.insert(key.clone(), should);
                    }
                }
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

    /// Keeps what the node should list for the agent: for one Running its current
    /// generation, its node-side name and stamped version (worked out once per
    /// generation); for any other, nothing (its own item takes it to its node).
    fn expect_on_node(&self, key: &AgentKey, object: &AgentObject) {
        let at_rest =
            object.status.phase == AgentPhase::Running && object.status.node_ack && object.observed_generation == object.generation && !object.deleting;
        if !at_rest {
            self.state().on_node.remove(key);
            return;
        }
        if self.state().on_node.get(key).is_some_and(|should| should.generation == object.generation) {
            return;
        }
        let names = self.names(&key.0);
        match names.node_version(&object.manifest) {
            Ok(version) => {
                let should = OnNode { generation: object.generation, name: names.node_name(&key.1).as_str().to_owned(), version };
                self.state().on_node.insert(key.clone(), should);
            }
            Err(err) => tracing::error!(tenant = %key.0, agent = %key.1, error = %err, "an agent's stored manifest cannot be read"),
        }
    }

    /// Writes the agent's status, in the loop's term only.
    pub(super) async fn record(&self, object: &AgentObject, status: &AgentStatus) {
        let name = object.manifest.name();
        match self.fenced(|fence| self.cluster.set_agent_status(&object.tenant_id, name, object.generation, status, fence)).await {
            Ok(()) => self.state().note_phase(&(object.tenant_id, name.clone()), Some(status.phase)),
            Err(err) => tracing::warn!(agent = %name, error = %err, "could not record the agent's status"),
        }
    }
}
