//! The pure decisions of the loop: what to do next with an agent object, and how long a
//! failing object waits. No I/O: the runner performs what these decide.

use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_ports::agents::{AgentObject, AgentPhase};
use nexus_ports::tenancy::{TenantPhase, TenantStatus};

use crate::app::chains::{NodeCheck, may_be_on_node};

/// The longest wait between retries of a failing agent.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

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
