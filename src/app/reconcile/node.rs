//! The runner's work on one node: once a period it lists the agents the node holds (one
//! call), compares them with what should be there, has the agents that are missing or
//! differ pushed again, and removes what Nexus pushed that nothing should be there under.
//! When all is as it should be, it records one time for the node (what Running agents'
//! `last_synced_at` shows) instead of writing every agent's status.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use nexus_ports::agents::AgentName;
use nexus_ports::node_names::NodeAgent;
use nexus_ports::tenancy::TenantId;

use super::state::{AgentKey, Item, OnNode, after};
use super::term::is_term_over;
use super::{NOT_READY_RECHECK, Reconciler};
use crate::app::work_queue::spread;

/// What comparing a node's list with what should be there found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Agents missing from the node, not deployed there, or there in another version.
    pub repush: Vec<AgentKey>,
    /// Names on the node that Nexus pushed (stamped) and that no tracked agent has.
    pub strays: Vec<String>,
}

/// Compares what the node lists with `expected` (each agent Running its current
/// generation, with what the node should list for it) and `owned` (the node-side names of
/// every agent tracked for the node, in whatever phase).
pub fn compare(listed: &[NodeAgent], expected: &[(AgentKey, OnNode)], owned: &HashSet<String>) -> Drift {
    let on_node: HashMap<&str, &NodeAgent> = listed.iter().map(|agent| (agent.name.as_str(), agent)).collect();
    let repush = expected
        .iter()
        .filter(|(_, should)| {
            !on_node.get(should.name.as_str()).is_some_and(|agent| agent.is_deployed() && agent.version.as_deref() == Some(should.version.as_str()))
        })
        .map(|(key, _)| key.clone())
        .collect();
    let strays = listed.iter().filter(|agent| agent.is_stamped() && !owned.contains(&agent.name)).map(|agent| agent.name.clone()).collect();
    Drift { repush, strays }
}

impl Reconciler {
    /// Lists the node at `endpoint` and acts on what differs; returns when it is due next
    /// (`None`: no tenant's agents go there any more).
    pub(super) async fn node_item(&self, endpoint: &str) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let next = Some(after(now, spread(self.resync, &endpoint)));
        {
            let state = self.state();
            if !state.swept {
                return Some(after(now, NOT_READY_RECHECK));
            }
            if !state.tenants.values().any(|status| status.node_endpoint.as_deref() == Some(endpoint)) {
                return None;
            }
        }
        // Listed before what should be there is read: whatever is pushed meanwhile was
        // tracked before it was pushed, so it is never taken for a stray.
        let listed = self.in_term(self.node.list_node_agents(endpoint)).await;
        let (expected, owned) = self.expected_on(endpoint);
        let listed = match listed {
            Ok(listed) => listed,
            Err(err) if is_term_over(&err) => return next,
            Err(err) => {
                // As when each agent was pushed every period: they are tried, and say why
                // they fail.
                tracing::warn!(error = %err, "cannot list the node's agents; its agents are pushed again");
                self.mark_drifted(expected.into_iter().map(|(key, _)| key).collect(), now);
                return next;
            }
        };
        let drift = compare(&listed, &expected, &owned);
        for stray in &drift.strays {
            let Ok(name) = AgentName::parse(stray) else { continue };
            tracing::info!(agent = %name, "removing an agent no tenant has from its node");
            metrics::counter!("nexus_reconcile_strays_removed_total").increment(1);
            if let Err(err) = self.in_term(self.node.remove_agent(endpoint, &name)).await {
                tracing::warn!(agent = %name, error = %err, "could not remove a stray agent from its node; will retry");
            }
        }
        if drift.repush.is_empty() {
            let agents: Vec<(TenantId, AgentName, u64)> = expected.into_iter().map(|((tenant, name), should)| (tenant, name, should.generation)).collect();
            if let Err(err) = self.fenced(|fence| self.cluster.record_node_seen(endpoint, now, &agents, fence)).await {
                tracing::warn!(error = %err, "could not record when the node was seen; will retry");
            }
        } else {
            tracing::info!(agents = drift.repush.len(), "agents missing or changed on their node; pushing them again");
            metrics::counter!("nexus_reconcile_drift_total").increment(drift.repush.len() as u64);
            self.mark_drifted(drift.repush, now);
        }
        next
    }

    /// What the node at `endpoint` should list (agents Running their current generation)
    /// and the node-side names of every agent tracked for it.
    fn expected_on(&self, endpoint: &str) -> (Vec<(AgentKey, OnNode)>, HashSet<String>) {
        let state = self.state();
        let mut expected = Vec::new();
        let mut owned = HashSet::new();
        for (tenant, _) in state.tenants.iter().filter(|(_, status)| status.node_endpoint.as_deref() == Some(endpoint)) {
            let names = self.names(tenant);
            for name in state.agents_of.get(tenant).into_iter().flatten() {
                let key = (*tenant, name.clone());
                match state.on_node.get(&key) {
                    Some(should) => {
                        owned.insert(should.name.clone());
                        expected.push((key, should.clone()));
                    }
                    None => {
                        owned.insert(names.node_name(name).as_str().to_owned());
                    }
                }
            }
        }
        (expected, owned)
    }

    /// Has `agents` pushed again when next looked at (now).
    fn mark_drifted(&self, agents: Vec<AgentKey>, now: DateTime<Utc>) {
        let mut state = self.state();
        for key in agents {
            state.queue.wake(Item::Agent(key.0, key.1.clone()), now);
            state.drifted.insert(key);
        }
        drop(state);
        self.shared.notify.notify_one();
    }
}
