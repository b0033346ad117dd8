//! `/api/v1/agents`: a tenant's agents. Tenant-scoped: an API key reaches its own tenant;
//! a user's access token needs `X-Tenant-ID` naming a tenant it owns. An agent of another
//! tenant answers 404 exactly as a missing one.

use chrono::{DateTime, Utc};
use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use nexus_ports::agents::{AgentName, AgentPhase, AgentStatus, AgentVersion, PublishedVersion};
use nexus_ports::tenancy::Tenant;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::Value;

use super::ApiTags;
use super::auth::Caller;
use super::error::{
    AgentCreateErrors, AgentDeleteErrors, AgentUpdateErrors, ApiError, AuthenticatedErrors, AuthenticatedItemErrors, ErrorSet, EventsErrors, NodeErrors,
    RunErrors,
};
use super::json::{JsonAnswer, rfc3339};
use super::manifest::ManifestBody;
use super::preconditions::{if_match, none_match, quoted};
use super::text::Text;
use crate::app::traces::RunMetrics;
use crate::app::{AccessService, AgentDetail, AgentEvent, AgentState, Credentials, LogQuery, RunRequest, SharedNexus, StillAllowed, etag};

/// A log level to filter traces by.
#[derive(Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// Where an agent stands on its tenant's node.
#[derive(Enum, serde::Serialize)]
enum AgentPhaseView {
    Pending,
    Deploying,
    Running,
    Failed,
}

impl From<AgentPhase> for AgentPhaseView {
    fn from(phase: AgentPhase) -> Self {
        match phase {
            AgentPhase::Pending => Self::Pending,
            AgentPhase::Deploying => Self::Deploying,
            AgentPhase::Running => Self::Running,
            AgentPhase::Failed => Self::Failed,
        }
    }
}

/// An agent just registered.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AgentCreatedView {
    name: String,
    /// The tenant's namespace (`tenant-<uuid>`).
    namespace: String,
    /// `metadata.version`.
    version: Option<String>,
    phase: AgentPhaseView,
    created_at: DateTime<Utc>,
}

/// An agent in a listing.
#[derive(Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
struct AgentSummaryView {
    name: String,
    phase: AgentPhaseView,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    updated_at: DateTime<Utc>,
}

/// What the runtime reports of an agent.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AgentStatusView {
    phase: AgentPhaseView,
    /// Whether the node acknowledged the current manifest.
    node_ack: bool,
    /// When Nexus last saw the agent as it should be on its node: its last push or, while
    /// it runs its current manifest, its node's last list that showed it so (once per
    /// resync period).
    last_synced_at: Option<DateTime<Utc>>,
    /// Why it is `Failed`, or what it waits for.
    message: Option<String>,
    /// The name the agent's node knows it by: on a node that tenants share, a name derived
    /// from the tenant and the agent's name; on a node of the tenant's own, its name.
    node_agent_name: String,
}

impl AgentStatusView {
    fn new(status: AgentStatus, node_agent_name: &AgentName) -> Self {
        Self {
            phase: status.phase.into(),
            node_ack: status.node_ack,
            last_synced_at: status.last_synced_at,
            message: status.message,
            node_agent_name: node_agent_name.to_string(),
        }
    }
}

/// An agent with its whole manifest and status.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AgentDetailView {
    name: String,
    namespace: String,
    /// The whole manifest, as stored (unknown fields included); null when the stored
    /// manifest cannot be read any more (the status then says so, `Failed`).
    agent_spec: Value,
    status: AgentStatusView,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<AgentState> for AgentDetailView {
    fn from(state: AgentState) -> Self {
        let AgentDetail { state: AgentState { agent, status, node_agent_name }, document } = AgentDetail::of(state);
        Self {
            name: agent.manifest.name().to_string(),
            namespace: agent.tenant_id.cr_name(),
            agent_spec: document.unwrap_or(Value::Null),
            status: AgentStatusView::new(status, &node_agent_name),
            created_at: agent.created_at,
            updated_at: agent.updated_at,
        }
    }
}

/// The runtime status and the node's live view of the agent.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct LiveStatusView {
    phase: AgentPhaseView,
    node_ack: bool,
    last_synced_at: Option<DateTime<Utc>>,
    message: Option<String>,
    /// The name the agent's node knows it by (see the agent's status).
    node_agent_name: String,
    /// What the node says of the agent (its list entry, with the manifest it holds), in
    /// the tenant's names; null when the node does not know it yet.
    node: Value,
}

/// The agent's execution traces from its node.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct LogsView {
    agent: String,
    traces: Vec<Value>,
}

/// Latency percentiles of runs, in milliseconds; absent without runs.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct LatencyView {
    p50: Option<f64>,
    p95: Option<f64>,
    max: Option<f64>,
}

/// An agent's runs within the period.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct RunMetricsView {
    /// Runs that started within the period.
    runs: u32,
    /// Of those, the runs that failed.
    errors: u32,
    latency_ms: LatencyView,
}

/// What the metrics were computed from.
#[derive(Object)]
struct ComputedFromView {
    /// The agent's traces on its node that fell within the period (one per run).
    traces: u32,
    /// Whether every run of the period was seen: false when the node's window of the
    /// agent's 100 most recent traces does not reach back to the period's start.
    complete: bool,
}

/// The agent's run metrics, computed from its own traces on its node.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct MetricsView {
    agent: String,
    /// The period, as asked for (default `1h`).
    period: String,
    metrics: RunMetricsView,
    computed_from: ComputedFromView,
}

impl MetricsView {
    fn new(agent: String, period: String, metrics: RunMetrics) -> Self {
        let latency = metrics.latency_ms;
        Self {
            agent,
            period,
            metrics: RunMetricsView {
                runs: metrics.runs,
                errors: metrics.errors,
                latency_ms: LatencyView { p50: latency.p50, p95: latency.p95, max: latency.max },
            },
            computed_from: ComputedFromView { traces: metrics.runs, complete: metrics.complete },
        }
    }
}

/// One published version of an agent.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct VersionView {
    /// 1 for the creation, then one more per update.
    number: u32,
    /// `metadata.version` of that manifest.
    version: Option<String>,
    /// SHA-256 of that manifest's canonical JSON.
    checksum: String,
    /// Who published it, named as audit actors are: `usr_<id> (<email>)` for a user, or
    /// `key:<first 8 hex digits of its hash> (<label>)` for an API key.
    author: String,
    created_at: DateTime<Utc>,
}

impl From<AgentVersion> for VersionView {
    fn from(v: AgentVersion) -> Self {
        Self { number: v.number, version: v.version, checksum: v.checksum, author: v.author, created_at: v.created_at }
    }
}

/// One version of an agent with the manifest it published.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct VersionDetailView {
    number: u32,
    version: Option<String>,
    checksum: String,
    author: String,
    created_at: DateTime<Utc>,
    /// The whole manifest it published, as stored; absent for a version published before
    /// versions kept their manifest.
    manifest: Option<Value>,
}

impl From<PublishedVersion> for VersionDetailView {
    fn from(PublishedVersion { version: v, manifest }: PublishedVersion) -> Self {
        Self {
            number: v.number,
            version: v.version,
            checksum: v.checksum,
            author: v.author,
            created_at: v.created_at,
            manifest: manifest.and_then(|m| m.document().ok()),
        }
    }
}

/// Which version to publish again.
#[derive(Object)]
struct RollbackRequest {
    /// The number of one of the agent's kept versions.
    #[oai(validator(minimum(value = "1"), maximum(value = "2147483647")))]
    version: u32,
}

/// One run of an agent.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
struct AgentRunRequest {
    /// What to ask the agent.
    #[oai(validator(min_length = 1, max_length = 100000))]
    query: Text,
    /// The conversation the run belongs to (the node keeps its memory per session); the
    /// node's default session when absent.
    #[oai(validator(custom = "&super::patterns::SESSION_ID"))]
    session_id: Option<Text>,
    /// Extra context for the run, passed to the node as it is.
    context: Option<std::collections::BTreeMap<String, Value>>,
}

/// What the node answered to a run, in the tenant's names.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct RunView {
    /// The agent's answer.
    answer: String,
    /// The steps it took (tool calls, reasoning), as the node reports them.
    steps: Vec<Value>,
    /// Tokens used, per model, as the node reports them.
    usage: Option<Value>,
    /// The run's trace (also listed in the agent's logs).
    trace: Option<Value>,
    /// Structured output, when the agent gives one.
    data: Option<Value>,
    /// Whether a guardrail blocked the run (`answer` then says why).
    blocked: bool,
}

impl From<Value> for RunView {
    fn from(mut answer: Value) -> Self {
        let mut take = |field: &str| Some(answer.get_mut(field)?.take()).filter(|value| !value.is_null());
        Self {
            answer: take("answer").and_then(|a| a.as_str().map(str::to_owned)).unwrap_or_default(),
            steps: take("steps").and_then(|s| s.as_array().cloned()).unwrap_or_default(),
            usage: take("usage"),
            trace: take("trace"),
            data: take("data"),
            blocked: take("blocked").and_then(|b| b.as_bool()).unwrap_or(false),
        }
    }
}

/// One event of an agent's live status stream, sent as the `data` of an SSE event whose
/// type is `event` (`status` or `deleted`).
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
#[oai(rename_all = "camelCase")]
struct AgentEventView {
    /// `status`: the agent's status (at once, then on every change of phase or `nodeAck`);
    /// `deleted`: the agent was deleted, and the stream ends; `revoked`: the credential
    /// that opened the stream no longer holds (`message` says why), and the stream ends.
    event: String,
    name: String,
    phase: Option<AgentPhaseView>,
    node_ack: Option<bool>,
    last_synced_at: Option<DateTime<Utc>>,
    message: Option<String>,
    /// The number of the agent's current version.
    version: Option<u32>,
}

impl From<AgentEvent> for AgentEventView {
    fn from(event: AgentEvent) -> Self {
        match event {
            AgentEvent::Status { name, status, version_number } => Self {
                event: "status".to_owned(),
                name: name.to_string(),
                phase: Some(status.phase.into()),
                node_ack: Some(status.node_ack),
                last_synced_at: status.last_synced_at,
                message: status.message,
                version: Some(version_number),
            },
            AgentEvent::Deleted { name } => {
                Self { event: "deleted".to_owned(), name: name.to_string(), phase: None, node_ack: None, last_synced_at: None, message: None, version: None }
            }
            AgentEvent::Revoked { name, reason } => Self {
                event: "revoked".to_owned(),
                name: name.to_string(),
                phase: None,
                node_ack: None,
                last_synced_at: None,
                message: Some(reason),
                version: None,
            },
        }
    }
}

/// An agent's live status stream.
#[derive(ApiResponse)]
enum AgentEvents {
    /// Server-Sent Events: `status` at once and on every change of phase or `nodeAck`,
    /// `deleted` when the agent goes, `revoked` when the caller's credential no longer
    /// holds (then the stream ends); heartbeat comments while idle.
    #[oai(status = 200)]
    Stream(EventStream<BoxStream<'static, AgentEventView>>),
}

/// An agent was deleted.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct AgentDeletedView {
    deleted: String,
}

#[derive(ApiResponse)]
enum AgentCreated {
    /// The agent was registered; the reconcile loop deploys it.
    #[oai(status = 201)]
    Created(Json<AgentCreatedView>),
}

/// An agent, with its entity tag.
#[derive(ApiResponse)]
enum AgentAnswer {
    /// The agent; `ETag` names its current version (status changes leave it as it is).
    #[oai(status = 200)]
    Ok(Json<AgentDetailView>, #[oai(header = "ETag")] String),
    /// `If-None-Match` names the agent's current version: nothing to send again.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

/// An agent just changed, with its new entity tag.
#[derive(ApiResponse)]
enum AgentChanged {
    /// The agent as GET answers it; `ETag` names its new version.
    #[oai(status = 200)]
    Ok(Json<AgentDetailView>, #[oai(header = "ETag")] String),
}

impl From<AgentState> for AgentChanged {
    fn from(state: AgentState) -> Self {
        let tag = quoted(&etag(&state.agent));
        Self::Ok(Json(state.into()), tag)
    }
}

pub(crate) struct AgentApi;

/// The tenant a request is scoped to.
async fn scope<S: ErrorSet>(nexus: &SharedNexus, caller: &Caller, tenant_id: &Header<Option<String>>) -> Result<Tenant, ApiError<S>> {
    Ok(nexus.access.tenant_scope(&caller.0, tenant_id.0.as_deref()).await?)
}

#[OpenApi(tag = "ApiTags::Agents")]
impl AgentApi {
    /// Register an agent from its raw manifest (YAML or JSON); its `metadata.name` names it.
    #[oai(path = "/api/v1/agents", method = "post", operation_id = "agent_create")]
    async fn create(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        body: ManifestBody,
    ) -> Result<AgentCreated, ApiError<AgentCreateErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let (author, document) = (nexus.access.actor(&caller.0).await?, body.into_document());
        let (nexus, written) = (nexus.0.clone(), tenant.clone());
        let state = super::to_the_end(async move { nexus.agents.create(&written, &author, document).await }).await?;
        Ok(AgentCreated::Created(Json(AgentCreatedView {
            name: state.agent.manifest.name().to_string(),
            namespace: tenant.id.cr_name(),
            version: state.agent.manifest.version().map(str::to_owned),
            phase: state.status.phase.into(),
            created_at: state.agent.created_at,
        })))
    }

    /// The tenant's agents, by name.
    #[oai(path = "/api/v1/agents", method = "get", operation_id = "agent_list")]
    async fn list(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
    ) -> Result<JsonAnswer<Vec<AgentSummaryView>>, ApiError<AuthenticatedErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let listings = nexus.agents.list(&tenant).await?;
        Ok(JsonAnswer(
            listings
                .into_iter()
                .map(|l| AgentSummaryView {
                    name: l.summary.name.to_string(),
                    phase: l.status.phase.into(),
                    version: l.summary.version,
                    created_at: l.summary.created_at,
                    updated_at: l.summary.updated_at,
                })
                .collect(),
        ))
    }

    /// An agent: its whole manifest and its status. `ETag` names its current version;
    /// with `If-None-Match` naming it, 304 and no body.
    #[oai(path = "/api/v1/agents/:name", method = "get", operation_id = "agent_get")]
    async fn get(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        /// Entity tags from earlier answers (or `*`): 304 when one names the current version.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> Result<AgentAnswer, ApiError<AuthenticatedItemErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let state = nexus.agents.get(&tenant, &name).await?;
        let tag = etag(&state.agent);
        if none_match(if_none_match.0.as_deref(), &tag) {
            return Ok(AgentAnswer::NotModified(quoted(&tag)));
        }
        Ok(AgentAnswer::Ok(Json(state.into()), quoted(&tag)))
    }

    /// Replace an agent's manifest (a new version); its node receives it. With `If-Match`,
    /// only if it names the current version (else 412, and nothing changes).
    #[oai(path = "/api/v1/agents/:name", method = "put", operation_id = "agent_update")]
    async fn update(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        /// The agent's `ETag` as last read (or `*`): the change is made only if it is current.
        #[oai(name = "If-Match", validator(custom = "&super::patterns::IF_MATCH"))]
        if_match_header: Header<Option<String>>,
        body: ManifestBody,
    ) -> Result<AgentChanged, ApiError<AgentUpdateErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let condition = if_match(if_match_header.0.as_deref());
        let (author, name, document) = (nexus.access.actor(&caller.0).await?, name.0, body.into_document());
        let nexus = nexus.0.clone();
        Ok(super::to_the_end(async move { nexus.agents.update(&tenant, &author, &name, document, condition.as_ref()).await }).await?.into())
    }

    /// Delete an agent; its node forgets it. With `If-Match`, only if it names the current
    /// version (else 412, and nothing is deleted).
    #[oai(path = "/api/v1/agents/:name", method = "delete", operation_id = "agent_delete")]
    async fn delete(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        /// The agent's `ETag` as last read (or `*`): it is deleted only if that is current.
        #[oai(name = "If-Match", validator(custom = "&super::patterns::IF_MATCH"))]
        if_match_header: Header<Option<String>>,
    ) -> Result<Json<AgentDeletedView>, ApiError<AgentDeleteErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let condition = if_match(if_match_header.0.as_deref());
        let (author, name) = (nexus.access.actor(&caller.0).await?, name.0);
        let nexus = nexus.0.clone();
        let deleted = super::to_the_end(async move { nexus.agents.delete(&tenant, &author, &name, condition.as_ref()).await }).await?;
        Ok(Json(AgentDeletedView { deleted: deleted.to_string() }))
    }

    /// Phase, nodeAck and lastSyncedAt, with the node's live view of the agent.
    #[oai(path = "/api/v1/agents/:name/status", method = "get", operation_id = "agent_status")]
    async fn status(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
    ) -> Result<Json<LiveStatusView>, ApiError<NodeErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let live = nexus.agents.live_status(&tenant, &name).await?;
        let status = live.status;
        Ok(Json(LiveStatusView {
            phase: status.phase.into(),
            node_ack: status.node_ack,
            last_synced_at: status.last_synced_at,
            message: status.message,
            node_agent_name: live.node_agent_name.to_string(),
            node: live.node,
        }))
    }

    /// The agent's logs: its execution traces on the node, at most `lines` (1 to 1000,
    /// default 100), optionally only of `level` and from `since` (RFC 3339).
    #[oai(path = "/api/v1/agents/:name/logs", method = "get", operation_id = "agent_logs")]
    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] lines: Query<Option<i64>>,
        level: Query<Option<LogLevel>>,
        since: Query<Option<DateTime<Utc>>>,
    ) -> Result<Json<LogsView>, ApiError<NodeErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let lines = lines.0.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let level = level.0.map(|level| level.as_str().to_owned());
        let traces = nexus.agents.logs(&tenant, &name, &LogQuery { lines, level, since: since.0 }).await?;
        Ok(Json(LogsView { agent: name.0, traces }))
    }

    /// The agent's run metrics over `period` (such as `15m`, `1h`, `24h`; default `1h`):
    /// runs, errors and latency percentiles, computed from the agent's own traces on its node.
    #[oai(path = "/api/v1/agents/:name/metrics", method = "get", operation_id = "agent_metrics")]
    async fn metrics(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        // Exactly the periods the use case accepts (1s to 366d, at most 8784h): so that a
        // period the document allows is never refused.
        #[oai(validator(custom = "&super::patterns::PERIOD"))] period: Query<Option<String>>,
    ) -> Result<Json<MetricsView>, ApiError<NodeErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let period = period.0.unwrap_or_else(|| "1h".to_owned());
        let invalid = || nexus_ports::Error::invalid("period must be a duration from 1s to 366d, such as 15m, 1h or 24h");
        let length = humantime::parse_duration(&period).map_err(|_| invalid())?;
        let length = chrono::Duration::from_std(length).map_err(|_| invalid())?;
        let metrics = nexus.agents.metrics(&tenant, &name, length).await?;
        Ok(Json(MetricsView::new(name.0, period, metrics)))
    }

    /// Run the agent once on its tenant's node and return the node's answer. 502 when the
    /// node cannot be reached, does not answer within `NEXUS_RUN_TIMEOUT`, or refuses the
    /// run (then with the node's reason, such as no model being reachable).
    #[oai(path = "/api/v1/agents/:name/run", method = "post", operation_id = "agent_run")]
    async fn run(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        body: Json<AgentRunRequest>,
    ) -> Result<Json<RunView>, ApiError<RunErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let Json(AgentRunRequest { query, session_id, context }) = body;
        let request = RunRequest { query: query.0, session_id: session_id.map(|s| s.0), context: context.map(|c| c.into_iter().collect()) };
        Ok(Json(nexus.agents.run(&tenant, &name, request).await?.into()))
    }

    /// The agent's live status as Server-Sent Events (`text/event-stream`): its status at
    /// once, then an event on every change of phase or `nodeAck`, and `deleted` when it is
    /// deleted; heartbeats keep an idle stream open. 429 when the tenant holds as many open
    /// streams as allowed; a stream ends after `NEXUS_EVENTS_MAX_DURATION` (reconnect).
    #[oai(path = "/api/v1/agents/:name/events", method = "get", operation_id = "agent_events")]
    async fn events(
        &self,
        request: &poem::Request,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
    ) -> Result<AgentEvents, ApiError<EventsErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        // The credential as presented, checked again at every look of the stream.
        let bearer = super::auth::bearer_token(request).map(str::to_owned);
        let api_key = request.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (checking, scoped) = (nexus.0.clone(), tenant_id.0.clone());
        let allowed: StillAllowed = Arc::new(move || {
            let (nexus, bearer, api_key, scoped) = (checking.clone(), bearer.clone(), api_key.clone(), scoped.clone());
            async move {
                let principal = nexus.access.authenticate(Credentials { bearer: bearer.as_deref(), api_key: api_key.as_deref() }).await?;
                AccessService::permits(&principal, true)?;
                nexus.access.tenant_scope(&principal, scoped.as_deref()).await.map(drop)
            }
            .boxed()
        });
        let events = nexus.agents.events(&tenant, &name, allowed).await?.map(AgentEventView::from).boxed();
        let stream = EventStream::new(events)
            .keep_alive(nexus.agents.event_settings().heartbeat)
            .to_event(|view: AgentEventView| poem::web::sse::Event::message(poem_openapi::types::ToJSON::to_json_string(&view)).event_type(view.event));
        Ok(AgentEvents::Stream(stream))
    }

    /// The agent's published versions, oldest first.
    #[oai(path = "/api/v1/agents/:name/versions", method = "get", operation_id = "agent_versions")]
    async fn versions(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
    ) -> Result<Json<Vec<VersionView>>, ApiError<AuthenticatedItemErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        Ok(Json(nexus.agents.versions(&tenant, &name).await?.into_iter().map(Into::into).collect()))
    }

    /// One version of the agent, with the manifest it published; 404 for a version it
    /// never had or that was pruned.
    #[oai(path = "/api/v1/agents/:name/versions/:number", method = "get", operation_id = "agent_version_get")]
    async fn version(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        #[oai(validator(minimum(value = "1"), maximum(value = "2147483647")))] number: Path<u32>,
    ) -> Result<Json<VersionDetailView>, ApiError<AuthenticatedItemErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        Ok(Json(nexus.agents.version(&tenant, &name, number.0).await?.into()))
    }

    /// Publish a kept version's manifest again, as a new version (numbers only grow); its
    /// node receives it. Answers as GET does. 404 for a version the agent never had or that
    /// was pruned; with `If-Match`, only if it names the current version (else 412).
    #[oai(path = "/api/v1/agents/:name/rollback", method = "post", operation_id = "agent_rollback")]
    async fn rollback(
        &self,
        nexus: Data<&SharedNexus>,
        caller: Caller,
        #[oai(name = "X-Tenant-ID", validator(custom = "&super::patterns::TENANT_HEADER"))] tenant_id: Header<Option<String>>,
        #[oai(validator(max_length = 63, custom = "&super::patterns::AGENT_NAME"))] name: Path<String>,
        /// The agent's `ETag` as last read (or `*`): it is rolled back only if that is current.
        #[oai(name = "If-Match", validator(custom = "&super::patterns::IF_MATCH"))]
        if_match_header: Header<Option<String>>,
        body: Json<RollbackRequest>,
    ) -> Result<AgentChanged, ApiError<AgentUpdateErrors>> {
        let tenant = scope(&nexus, &caller, &tenant_id).await?;
        let condition = if_match(if_match_header.0.as_deref());
        let (author, name, version) = (nexus.access.actor(&caller.0).await?, name.0, body.version);
        let nexus = nexus.0.clone();
        Ok(super::to_the_end(async move { nexus.agents.rollback(&tenant, &author, &name, version, condition.as_ref()).await }).await?.into())
    }
}
