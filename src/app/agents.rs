//! Agent use cases, all within one tenant (the caller's scope): register, list, read,
//! update, delete, and the node's live view, traces and metrics. The registry (store) is
//! the durable record; the cluster holds the desired runtime state; the reconcile loop is
//! woken by every change. On a node that tenants share, the node knows each agent by its
//! node-side name ([`NodeNames`]): it is asked only about that name, and its answers are
//! turned back into the tenant's names.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use nexus_ports::agents::{
    Agent, AgentManifest, AgentName, AgentPhase, AgentQuota, AgentStatus, AgentSummary, AgentVersion, Change, PublishedVersion, UpdateLimits,
};
use nexus_ports::audit::{AuditAction, AuditEvent};
use nexus_ports::node_names::NodeNames;
use nexus_ports::ports::{AgentStore, Clock, ClusterBackend, NodeProxy};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase};
use nexus_ports::{Error, Result};
use serde_json::Value;

use self::events::OpenStreams;
pub use self::events::{AgentEvent, EventSettings, StillAllowed};
use super::changes::Changes;
use super::reconcile::Reconciler;
use super::traces::{NODE_TRACE_WINDOW, RunMetrics, run_metrics, started_at};

/// The most traces one logs request returns.
pub const MAX_LOG_LINES: u32 = 1000;

/// The longest metrics period.
pub const MAX_METRICS_PERIOD: Duration = Duration::days(366);

/// An agent with what the runtime reports of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub agent: Agent,
    pub status: AgentStatus,
    /// The name its node knows it by.
    pub node_agent_name: AgentName,
}

/// An agent with its whole manifest, parsed, and what the runtime reports of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDetail {
    pub state: AgentState,
    /// The manifest; `None` when its stored text cannot be read any more (the status then
    /// says so, `Failed`).
    pub document: Option<Value>,
}

impl AgentDetail {
    /// The agent with its manifest parsed; one whose stored manifest cannot be read is
    /// reported `Failed`, saying so (the parser's detail goes to the log).
    pub fn of(mut state: AgentState) -> Self {
        match state.agent.manifest.document() {
            Ok(document) => Self { state, document: Some(document) },
            Err(err) => {
                tracing::error!(tenant = %state.agent.tenant_id, agent = %state.agent.manifest.name(), error = %err, "an agent's stored manifest cannot be read");
                state.status = AgentStatus { phase: AgentPhase::Failed, node_ack: false, message: Some(UNREADABLE_MANIFEST.to_owned()), ..state.status };
                Self { state, document: None }
            }
        }
    }
}

/// An agent as a listing shows it, with its phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentListing {
    pub summary: AgentSummary,
    pub status: AgentStatus,
}

/// What an agent's status says when its stored manifest cannot be read.
pub const UNREADABLE_MANIFEST: &str = "the stored manifest of this agent cannot be read; replace it with PUT or delete the agent";

/// What tenants may store of agents, besides their own agent quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// The versions kept per agent.
    pub max_versions: u32,
    /// The bytes of manifests one tenant may hold, all its agents' current ones together.
    pub max_manifest_bytes: u64,
}

/// What the node says of an agent, with the runtime status.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStatus {
    pub status: AgentStatus,
    /// The name its node knows it by.
    pub node_agent_name: AgentName,
    /// The node's view of the agent, in the tenant's names; `Null` when the node does not
    /// know it (yet).
    pub node: Value,
}

/// How long a run may take by default.
pub const DEFAULT_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One run of an agent, as asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    pub query: String,
    /// The conversation the run belongs to (the node's `session_id`); the node's default
    /// session when absent.
    pub session_id: Option<String>,
    /// Extra context for the run, passed to the node as it is.
    pub context: Option<serde_json::Map<String, Value>>,
}

/// What `If-Match` asks of an agent before it is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `*`: that it exists.
    Any,
    /// That its current tag ([`etag`]) is one of these.
    Tags(Vec<String>),
}

/// The entity tag of an agent, without its quotes: the number of its current version and
/// when the agent was created (so that an agent deleted and created again under the same
/// name never matches a tag of its predecessor). Status changes do not change it.
pub fn etag(agent: &Agent) -> String {
    format!("{}-{:x}", agent.version_number, agent.created_at.timestamp_micros())
}

/// Which of an agent's traces to return.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// At most this many (default 100, at most [`MAX_LOG_LINES`]).
    pub lines: Option<u32>,
    /// Only traces of this level, where traces carry one.
    pub level: Option<String>,
    /// Only traces at or after this time, where traces carry one.
    pub since: Option<DateTime<Utc>>,
}

/// The agent use cases.
pub struct AgentService {
    agents: Arc<dyn AgentStore>,
    cluster: Arc<dyn ClusterBackend>,
    node: Arc<dyn NodeProxy>,
    clock: Arc<dyn Clock>,
    changes: Arc<Changes>,
    reconciler: Arc<Reconciler>,
    limits: AgentLimits,
    run_timeout: std::time::Duration,
    events: EventSettings,
    open_streams: Arc<OpenStreams>,
}

fn missing(name: &AgentName) -> Error {
    Error::NotFound(format!("no agent named {name} in this tenant"))
}

fn no_version(name: &AgentName, number: u32) -> Error {
    Error::NotFound(format!("agent {name} has no version {number} (never published, or pruned)"))
}

/// The ports the agent use cases need, by name.
pub struct AgentPorts {
    pub agents: Arc<dyn AgentStore>,
    pub cluster: Arc<dyn ClusterBackend>,
    pub node: Arc<dyn NodeProxy>,
    pub clock: Arc<dyn Clock>,
    /// Where changed agents are announced, and tenants' agents kept in memory.
    pub changes: Arc<Changes>,
}

impl AgentService {
    /// Wires the use cases; API changes wake `reconciler`; `limits` bound what is kept.
    pub fn new(ports: AgentPorts, reconciler: Arc<Reconciler>, limits: AgentLimits) -> Self {
        let AgentPorts { agents, cluster, node, clock, changes } = ports;
        Self {
            agents,
            cluster,
            node,
            clock,
            changes,
            reconciler,
            limits,
            run_timeout: DEFAULT_RUN_TIMEOUT,
            events: EventSettings::default(),
            open_streams: Arc::default(),
        }
    }

    /// The same, with live status streams behaving as `events` says.
    #[must_use]
    pub fn with_events(self, events: EventSettings) -> Self {
        Self { events, ..self }
    }

    /// The same, with runs waiting at most `timeout` for their node.
    #[must_use]
    pub fn with_run_timeout(self, timeout: std::time::Duration) -> Self {
        Self { run_timeout: timeout, ..self }
    }

    /// Registers an agent from its manifest; `metadata.namespace` becomes the tenant's.
    ///
    /// # Errors
    /// [`Error::InvalidFields`] for an invalid manifest; [`Error::AlreadyExists`] when the
    /// tenant has an agent of that name; [`Error::Conflict`] when its agent quota or its
    /// manifest budget is reached.
    pub async fn create(&self, tenant: &Tenant, author: &str, document: Value) -> Result<AgentState> {
        let manifest = AgentManifest::parse_in(document, Some(&tenant.id.cr_name()))?;
        let now = self.clock.now();
        let agent = Agent { tenant_id: tenant.id, manifest, version_number: 1, created_at: now, updated_at: now };
        let quota = AgentQuota { max_agents: tenant.max_agents, max_manifest_bytes: self.limits.max_manifest_bytes };
        let audit = AuditEvent::now(now, author, AuditAction::AgentCreate, agent.manifest.name().as_str()).in_tenant(tenant.id);
        self.agents.insert_agent(&agent, author, quota, &audit).await.map_err(|err| match err {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!("an agent named {} already exists in this tenant", agent.manifest.name())),
            other => other,
        })?;
        tracing::info!(tenant = %tenant.id, agent = %agent.manifest.name(), "agent registered");
        self.apply(&agent).await;
        let node_agent_name = self.names(&tenant.id).node_name(agent.manifest.name());
        Ok(AgentState { agent, status: AgentStatus::pending(), node_agent_name })
    }

    /// How the tenant's agents are named on their node.
    fn names(&self, tenant: &TenantId) -> NodeNames {
        NodeNames::new(*tenant, self.cluster.node_sharing())
    }

    /// Once the registry committed the change (and with it told every replica, which
    /// dropped what they kept of the agent), the desired state goes to the cluster, then
    /// every replica is told again, so that the leader's loop, woken by it, finds the
    /// object applied (it may have looked before), and this loop wakes. A new agent the
    /// cluster fails to take now, or whose second word is lost, is applied or found by the
    /// loop's next sweep, which re-applies what the cluster lacks of the registry; a failed
    /// update is retried by the next update.
    async fn apply(&self, agent: &Agent) {
        self.committed(&agent.tenant_id, agent.manifest.name());
        if let Err(err) = self.cluster.apply_agent(&agent.tenant_id, &agent.manifest).await {
            tracing::warn!(agent = %agent.manifest.name(), error = %err, "could not apply the agent to the cluster yet");
        }
        self.changes.announce(nexus_ports::changes::Change::AgentChanged { tenant: agent.tenant_id, name: agent.manifest.name().clone() }).await;
        self.reconciler.wake(Change::Agent(agent.tenant_id, agent.manifest.name().clone()));
    }

    async fn status_of(&self, agent: &Agent) -> Result<AgentStatus> {
        let object = self.cluster.agent_object(&agent.tenant_id, agent.manifest.name()).await?;
        Ok(object.map_or_else(AgentStatus::pending, |o| o.status))
    }

    async fn state_of(&self, agent: Agent) -> Result<AgentState> {
        let status = self.status_of(&agent).await?;
        let node_agent_name = self.names(&agent.tenant_id).node_name(agent.manifest.name());
        Ok(AgentState { agent, status, node_agent_name })
    }

    /// The tenant's agents, by name, with their phases (no manifest is read).
    /// The tenant's agents come from memory when kept there, their statuses from one
    /// listing of the cluster's objects' statuses.
    /// An agent the cluster has no object of is Pending, unless its stored manifest cannot
    /// be read (then no object can ever be made of it): it is `Failed`, as reading it says.
    pub async fn list(&self, tenant: &Tenant) -> Result<Vec<AgentListing>> {
        let summaries = self.registry(&tenant.id).await?;
        let listed = self.cluster.list_tenant_agent_statuses(&tenant.id).await?;
        let statuses: std::collections::HashMap<&AgentName, &AgentStatus> = listed.iter().map(|(name, status)| (name, status)).collect();
        let mut listings = Vec::with_capacity(summaries.len());
        for summary in summaries.iter() {
            let status = match statuses.get(&summary.name) {
                Some(status) => (*status).clone(),
                None => self.status_without_object(&tenant.id, &summary.name).await?,
            };
            listings.push(AgentListing { summary: summary.clone(), status });
        }
        Ok(listings)
    }

    /// The status of a registered agent the cluster has no object of (yet).
    async fn status_without_object(&self, tenant: &TenantId, name: &AgentName) -> Result<AgentStatus> {
        match self.record(tenant, name.clone()).await {
            Ok(agent) if agent.manifest.document().is_err() => {
                Ok(AgentStatus { phase: AgentPhase::Failed, message: Some(UNREADABLE_MANIFEST.to_owned()), ..AgentStatus::pending() })
            }
            // Deleted meanwhile: the listing still shows what it read.
            Ok(_) | Err(Error::NotFound(_)) => Ok(AgentStatus::pending()),
            Err(err) => Err(err),
        }
    }

    /// The tenant's agents, by name: from memory when kept there.
    async fn registry(&self, tenant: &TenantId) -> Result<Arc<Vec<AgentSummary>>> {
        self.changes.caches().agents.get_or_load(tenant, || async { Ok(Arc::new(self.agents.list_agents(tenant).await?)) }).await
    }

    /// Drops what this replica kept of the agent; the store told the others with the
    /// change.
    fn committed(&self, tenant: &TenantId, name: &AgentName) {
        self.changes.committed(&nexus_ports::changes::Change::AgentChanged { tenant: *tenant, name: name.clone() });
    }

    /// One agent with its status.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a malformed name; [`Error::NotFound`] when the tenant
    /// has no such agent (also when another tenant has one).
    pub async fn get(&self, tenant: &Tenant, name: &str) -> Result<AgentState> {
        let agent = self.find(tenant, name).await?;
        self.state_of(agent).await
    }

    async fn find(&self, tenant: &Tenant, name: &str) -> Result<Agent> {
        let name = AgentName::parse(name)?;
        self.record(&tenant.id, name).await
    }

    /// The agent's stored record: from memory when kept there (every change of the agent
    /// is announced, which drops it, so a read after a write sees the write).
    async fn record(&self, tenant: &TenantId, name: AgentName) -> Result<Agent> {
        let key = (*tenant, name);
        let load = || async { self.agents.find_agent(tenant, &key.1).await?.ok_or_else(|| missing(&key.1)) };
        self.changes.caches().agent_records.get_or_load(&key, load).await
    }

    /// Replaces an agent's manifest (a new version; the oldest past `max_versions` are
    /// pruned, numbers never reused); the node receives it. With a `condition`, only when
    /// it holds of the agent as it is when written.
    ///
    /// # Errors
    /// [`Error::InvalidFields`] for an invalid manifest; [`Error::Conflict`] when its
    /// `metadata.name` is not `name` (a well-formed manifest of another agent than the one
    /// addressed); [`Error::NotFound`] when there is no such agent;
    /// [`Error::PreconditionFailed`] when the condition does not hold (nothing changes).
    pub async fn update(&self, tenant: &Tenant, author: &str, name: &str, document: Value, condition: Option<&Condition>) -> Result<AgentState> {
        let name = AgentName::parse(name)?;
        let manifest = AgentManifest::parse_in(document, Some(&tenant.id.cr_name()))?;
        if *manifest.name() != name {
            return Err(Error::Conflict(format!("metadata.name {} differs from the agent in the path, {name}", manifest.name())));
        }
        let expected = self.expected(tenant, &name, condition).await?;
        self.publish(tenant, author, &manifest, expected, AuditAction::AgentUpdate).await
    }

    /// Publishes `manifest` as the agent's next version and sends it to the cluster,
    /// recording `action` in the audit trail.
    async fn publish(&self, tenant: &Tenant, author: &str, manifest: &AgentManifest, expected: Option<u32>, action: AuditAction) -> Result<AgentState> {
        let name = manifest.name();
        let now = self.clock.now();
        let audit = AuditEvent::now(now, author, action, name.as_str()).in_tenant(tenant.id);
        let limits = UpdateLimits { keep_versions: self.limits.max_versions, max_manifest_bytes: self.limits.max_manifest_bytes };
        let agent = self.agents.update_agent(&tenant.id, manifest, author, now, limits, expected, &audit).await.map_err(|err| match err {
            Error::NotFound(_) => missing(name),
            other => other,
        })?;
        tracing::info!(tenant = %tenant.id, agent = %name, version = agent.version_number, "agent updated");
        self.apply(&agent).await;
        self.state_of(agent).await
    }

    /// The version number a conditional change of the agent must find (checked again by
    /// the store as it writes), or `None` for a change without a version condition.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::PreconditionFailed`] when
    /// no tag of the condition is the agent's.
    async fn expected(&self, tenant: &Tenant, name: &AgentName, condition: Option<&Condition>) -> Result<Option<u32>> {
        let Some(condition) = condition else { return Ok(None) };
        let agent = self.agents.find_agent(&tenant.id, name).await?.ok_or_else(|| missing(name))?;
        match condition {
            Condition::Any => Ok(None),
            Condition::Tags(tags) if tags.contains(&etag(&agent)) => Ok(Some(agent.version_number)),
            Condition::Tags(_) => {
                Err(Error::PreconditionFailed(format!("If-Match does not name the agent's current version ({}): read it again", agent.version_number)))
            }
        }
    }

    /// One version of the agent, with the manifest it published.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent or version (pruned ones included).
    pub async fn version(&self, tenant: &Tenant, name: &str, number: u32) -> Result<PublishedVersion> {
        let agent = self.find(tenant, name).await?;
        let name = agent.manifest.name();
        self.agents.find_version(&tenant.id, name, number).await?.ok_or_else(|| no_version(name, number))
    }

    /// Publishes the manifest of version `number` again, as a new version (numbers only
    /// grow); the node receives it. With a `condition`, only when it holds.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent or version (pruned ones included);
    /// [`Error::Conflict`] when that version was published before versions kept their
    /// manifest; [`Error::PreconditionFailed`] when the condition does not hold.
    pub async fn rollback(&self, tenant: &Tenant, author: &str, name: &str, number: u32, condition: Option<&Condition>) -> Result<AgentState> {
        let published = self.version(tenant, name, number).await?;
        let manifest = published
            .manifest
            .ok_or_else(|| Error::Conflict(format!("version {number} was published before versions kept their manifest: it cannot be restored")))?;
        // Published again as a new version: held to today's rules, like any other.
        let document =
            manifest.document().map_err(|_| Error::Conflict(format!("the stored manifest of version {number} cannot be read: it cannot be restored")))?;
        let manifest = AgentManifest::parse_in(document, Some(&tenant.id.cr_name()))?;
        let expected = self.expected(tenant, manifest.name(), condition).await?;
        let state = self.publish(tenant, author, &manifest, expected, AuditAction::AgentRollback).await?;
        tracing::info!(tenant = %tenant.id, agent = %manifest.name(), from = number, to = state.agent.version_number, "agent rolled back");
        Ok(state)
    }

    /// Deletes an agent for `author`; the reconcile loop removes it from its node. With a
    /// `condition`, only when it holds.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::PreconditionFailed`] when
    /// the condition does not hold (nothing is deleted).
    pub async fn delete(&self, tenant: &Tenant, author: &str, name: &str, condition: Option<&Condition>) -> Result<AgentName> {
        let name = AgentName::parse(name)?;
        let expected = self.expected(tenant, &name, condition).await?;
        let audit = AuditEvent::now(self.clock.now(), author, AuditAction::AgentDelete, name.as_str()).in_tenant(tenant.id);
        if !self.agents.delete_agent(&tenant.id, &name, expected, &audit).await? {
            return Err(missing(&name));
        }
        tracing::info!(tenant = %tenant.id, agent = %name, "agent deleted");
        self.committed(&tenant.id, &name);
        // The database cluster marked the object in the delete's transaction; elsewhere it
        // is marked now, and an object the registry lost that no mark reached (this
        // request cut short, the cluster failing) is marked by the loop's next sweep.
        if let Err(err) = self.cluster.request_agent_deletion(&tenant.id, &name).await {
            tracing::warn!(tenant = %tenant.id, agent = %name, error = %err, "could not mark the deleted agent's object yet; the next sweep will");
        }
        self.reconciler.wake(Change::Agent(tenant.id, name.clone()));
        Ok(name)
    }

    /// The tenant's node endpoint.
    async fn node_of(&self, tenant: &Tenant) -> Result<String> {
        let status = self.cluster.tenant_status(&tenant.id).await?;
        match (status.phase, status.node_endpoint) {
            (TenantPhase::Ready, Some(endpoint)) => Ok(endpoint),
            _ => Err(Error::Upstream("the tenant's node is not ready yet".to_owned())),
        }
    }

    /// The runtime status and the node's live view of the agent.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::Upstream`] when the node
    /// cannot be reached.
    pub async fn live_status(&self, tenant: &Tenant, name: &str) -> Result<LiveStatus> {
        let agent = self.find(tenant, name).await?;
        let state = self.state_of(agent).await?;
        let view = self.node.agent_view(&self.node_of(tenant).await?, &state.node_agent_name).await?;
        let node = view.map_or(Value::Null, |view| self.names(&tenant.id).restore(&state.agent.manifest, view));
        Ok(LiveStatus { status: state.status, node_agent_name: state.node_agent_name, node })
    }

    /// The agent's most recent traces on its node (at most `limit`), in the tenant's names.
    async fn traces(&self, tenant: &Tenant, agent: &Agent, limit: u32) -> Result<Vec<Value>> {
        let names = self.names(&tenant.id);
        let answer = self.node.agent_traces(&self.node_of(tenant).await?, &names.node_name(agent.manifest.name()), limit).await?;
        let traces = answer.get("traces").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(traces.into_iter().map(|trace| names.restore(&agent.manifest, trace)).collect())
    }

    /// The node's execution traces of the agent (its nearest thing to logs), newest as the
    /// node orders them, filtered by level and time where traces carry them.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::InvalidRequest`] for more
    /// than [`MAX_LOG_LINES`] lines; [`Error::Upstream`] when the node cannot be reached.
    pub async fn logs(&self, tenant: &Tenant, name: &str, query: &LogQuery) -> Result<Vec<Value>> {
        let lines = query.lines.unwrap_or(100);
        if lines == 0 || lines > MAX_LOG_LINES {
            return Err(Error::invalid(format!("lines must be between 1 and {MAX_LOG_LINES}")));
        }
        let agent = self.find(tenant, name).await?;
        let traces = self.traces(tenant, &agent, lines).await?;
        Ok(traces.into_iter().filter(|trace| keep(trace, query)).collect())
    }

    /// The agent's run metrics over the `period` before now, computed from its own most
    /// recent traces on its node (at most [`NODE_TRACE_WINDOW`] of them).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a period that is not positive or over
    /// [`MAX_METRICS_PERIOD`]; [`Error::NotFound`] when there is no such agent;
    /// [`Error::Upstream`] when the node cannot be reached.
    pub async fn metrics(&self, tenant: &Tenant, name: &str, period: Duration) -> Result<RunMetrics> {
        if period <= Duration::zero() || period > MAX_METRICS_PERIOD {
            return Err(Error::invalid("period must be a duration from 1s to 366d, such as 15m, 1h or 24h"));
        }
        let agent = self.find(tenant, name).await?;
        let traces = self.traces(tenant, &agent, NODE_TRACE_WINDOW).await?;
        Ok(run_metrics(&traces, NODE_TRACE_WINDOW, period, self.clock.now()))
    }

    /// Runs the agent once on its tenant's node, under its node-side name, waiting at most
    /// the run timeout; the node's answer, in the tenant's names.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent; [`Error::Upstream`] when the node
    /// is not ready, cannot be reached, does not answer in time, or refuses the run (then
    /// with the node's reason, in the tenant's names).
    pub async fn run(&self, tenant: &Tenant, name: &str, request: RunRequest) -> Result<Value> {
        let agent = self.find(tenant, name).await?;
        let names = self.names(&tenant.id);
        let node_name = names.node_name(agent.manifest.name());
        let mut body = serde_json::json!({"query": request.query});
        if let Some(session) = request.session_id {
            body["session_id"] = Value::String(session);
        }
        if let Some(context) = request.context {
            body["context"] = Value::Object(context);
        }
        let node = self.node_of(tenant).await?;
        match self.node.run_agent(&node, &node_name, &body, self.run_timeout).await {
            Ok(answer) => {
                tracing::info!(tenant = %tenant.id, agent = %agent.manifest.name(), "agent run");
                Ok(names.restore(&agent.manifest, answer))
            }
            // The node's reason speaks of the agent by the name the node knows.
            Err(Error::Upstream(reason)) => Err(Error::Upstream(reason.replace(node_name.as_str(), agent.manifest.name().as_str()))),
            Err(other) => Err(other),
        }
    }

    /// The agent's published versions, oldest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such agent.
    pub async fn versions(&self, tenant: &Tenant, name: &str) -> Result<Vec<AgentVersion>> {
        let agent = self.find(tenant, name).await?;
        self.agents.list_versions(&tenant.id, agent.manifest.name()).await
    }
}

/// Whether a trace passes the level and time filters; a trace without the field passes.
fn keep(trace: &Value, query: &LogQuery) -> bool {
    let level_ok = query.level.as_deref().is_none_or(|level| trace.get("level").and_then(Value::as_str).is_none_or(|l| l.eq_ignore_ascii_case(level)));
    let time = ["timestamp", "started_at", "start_time", "created_at"]
        .iter()
        .find_map(|k| trace.get(*k).and_then(Value::as_str))
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .or_else(|| started_at(trace));
    let since_ok = query.since.is_none_or(|since| time.is_none_or(|t| t >= since));
    level_ok && since_ok
}

#[path = "agent_events.rs"]
mod events;

#[cfg(test)]
#[path = "agents_tests.rs"]
mod tests;
