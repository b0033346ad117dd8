//! Agent use cases against mockall doubles.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use nexus_ports::Error;
use nexus_ports::agents::{Agent, AgentManifest, AgentName, AgentPhase, AgentStatus, AgentSummary};
use nexus_ports::audit::AuditAction;
use nexus_ports::identity::UserId;
use nexus_ports::node_names::{NodeNames, NodeSharing};
use nexus_ports::ports::{MockAgentStore, MockClock, MockClusterBackend, MockNodeProxy, MockTenantStore};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::testing;
use serde_json::{Value, json};

use super::{AgentLimits, AgentPorts, AgentService, LogQuery};
use crate::app::reconcile::{ReconcilePorts, Reconciler};

/// Versions kept per agent.
const MAX_VERSIONS: u32 = 7;

fn tenant() -> Tenant {
    Tenant { id: TenantId::from_uuid(uuid::Uuid::max()), max_agents: 7, ..testing::tenant(UserId::generate()) }
}

fn document(name: &str) -> Value {
    let mut document = testing::manifest_document(name, "m");
    document["metadata"]["namespace"] = json!("elsewhere");
    document
}

fn stored(name: &str) -> Agent {
    let manifest = AgentManifest::parse(document(name)).unwrap().in_namespace(&tenant().id.cr_name());
    Agent { tenant_id: tenant().id, manifest, version_number: 1, created_at: Utc::now(), updated_at: Utc::now() }
}

#[derive(Default)]
struct Ports {
    agents: MockAgentStore,
    cluster: MockClusterBackend,
    node: MockNodeProxy,
}

impl Ports {
    fn service(mut self) -> AgentService {
        self.cluster.expect_node_sharing().return_const(NodeSharing::Shared);
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap());
        let clock = Arc::new(clock);
        let idle = Reconciler::new(
            ReconcilePorts {
                cluster: Arc::new(MockClusterBackend::new()),
                node: Arc::new(MockNodeProxy::new()),
                agents: Arc::new(MockAgentStore::new()),
                tenants: Arc::new(MockTenantStore::new()),
                clock: clock.clone(),
            },
            Duration::from_secs(60),
        );
        let ports = AgentPorts {
            agents: Arc::new(self.agents),
            cluster: Arc::new(self.cluster),
            node: Arc::new(self.node),
            clock,
            changes: crate::app::Changes::local(),
        };
        AgentService::new(ports, Arc::new(idle), AgentLimits { max_versions: MAX_VERSIONS, max_manifest_bytes: 1 << 20 })
    }

    fn with_agent(mut self, name: &'static str) -> Self {
        self.agents.expect_find_agent().returning(move |_, n| Ok((n.as_str() == name).then(|| stored(name))));
        self
    }

    fn with_node(mut self, phase: TenantPhase) -> Self {
        self.cluster
            .expect_tenant_status()
            .returning(move |_| Ok(TenantStatus { phase, namespace: None, node_endpoint: Some("http://node".into()), message: None }));
        self.cluster.expect_agent_object().returning(|_, _| Ok(None));
        self
    }
}

#[tokio::test]
async fn creating_puts_the_agent_in_the_tenants_namespace_within_quota() {
    let mut ports = Ports::default();
    ports
        .agents
        .expect_insert_agent()
        .withf(|agent, author, quota, audit| {
            agent.manifest.document().unwrap()["metadata"]["namespace"] == tenant().id.cr_name()
                && author == "key:ci"
                && quota.max_agents == 7
                && quota.max_manifest_bytes == 1 << 20
                && (audit.action, audit.actor.as_str(), audit.target.as_str(), audit.tenant) == (AuditAction::AgentCreate, "key:ci", "bot", Some(tenant().id))
        })
        .times(1)
        .returning(|_, _, _, _| Ok(()));
    ports.cluster.expect_apply_agent().times(1).returning(|_, _| Ok(()));
    let state = ports.service().create(&tenant(), "key:ci", document("bot")).await.unwrap();
    assert_eq!(state.status, AgentStatus::pending());
}

#[tokio::test]
async fn invalid_duplicate_and_over_quota_agents_are_refused() {
    let service = Ports::default().service();
    assert!(matches!(service.create(&tenant(), "a", json!({"kind": "Agent"})).await, Err(Error::InvalidFields(_))));

    let mut ports = Ports::default();
    ports.agents.expect_insert_agent().returning(|agent, _, _, _| match agent.manifest.name().as_str() {
        "dup" => Err(Error::AlreadyExists("x".into())),
        _ => Err(Error::Conflict("the tenant has reached its quota of 7 agents".into())),
    });
    let service = ports.service();
    assert_eq!(
        service.create(&tenant(), "a", document("dup")).await.unwrap_err(),
        Error::AlreadyExists("an agent named dup already exists in this tenant".into())
    );
    assert!(matches!(service.create(&tenant(), "a", document("many")).await, Err(Error::Conflict(_))));
}

#[tokio::test]
async fn updates_must_name_the_agent_of_the_path() {
    let mut ports = Ports::default();
    ports
        .agents
        .expect_update_agent()
        .withf(|_, _, _, _, limits, expected, audit| {
            limits.keep_versions == MAX_VERSIONS && limits.max_manifest_bytes == 1 << 20 && expected.is_none() && audit.action == AuditAction::AgentUpdate
        })
        .returning(|_, m, _, _, _, _, _| if m.name().as_str() == "bot" { Ok(stored("bot")) } else { Err(Error::NotFound("x".into())) });
    ports.cluster.expect_apply_agent().times(1).returning(|_, _| Ok(()));
    ports.cluster.expect_agent_object().returning(|_, _| Ok(None));
    let service = ports.service();
    assert!(matches!(service.update(&tenant(), "a", "bot", document("other"), None).await, Err(Error::Conflict(_))));
    assert!(matches!(service.update(&tenant(), "a", "ghost", document("ghost"), None).await, Err(Error::NotFound(_))));
    assert!(matches!(service.update(&tenant(), "a", "Bad_Name", document("bot"), None).await, Err(Error::InvalidRequest(_))));
    assert_eq!(service.update(&tenant(), "a", "bot", document("bot"), None).await.unwrap().agent.manifest, stored("bot").manifest);
}

#[tokio::test]
async fn deleting_asks_the_cluster_to_let_the_agent_go() {
    let mut ports = Ports::default();
    ports
        .agents
        .expect_delete_agent()
        .returning(|_, n, _, audit| Ok(n.as_str() == "bot" && audit.action == AuditAction::AgentDelete && audit.actor == "usr_a"));
    ports.cluster.expect_request_agent_deletion().times(1).returning(|_, _| Ok(()));
    let service = ports.service();
    assert!(matches!(service.delete(&tenant(), "usr_a", "ghost", None).await, Err(Error::NotFound(_))));
    assert_eq!(service.delete(&tenant(), "usr_a", "bot", None).await.unwrap().as_str(), "bot");
}

#[tokio::test]
async fn an_agent_is_read_from_the_store_once_until_it_changes() {
    let mut ports = Ports::default();
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reads.clone();
    // Found the first time, gone once deleted.
    ports.agents.expect_find_agent().times(2).returning(move |_, _| {
        let first = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Ok(first.then(|| stored("bot")))
    });
    ports.agents.expect_delete_agent().times(1).returning(|_, _, _, _| Ok(true));
    ports.cluster.expect_agent_object().returning(|_, _| Ok(None));
    ports.cluster.expect_request_agent_deletion().times(1).returning(|_, _| Ok(()));
    let service = ports.service();
    let first = service.get(&tenant(), "bot").await.unwrap();
    let again = service.get(&tenant(), "bot").await.unwrap();
    assert_eq!((super::etag(&first.agent), &first.agent.manifest), (super::etag(&again.agent), &again.agent.manifest), "the same record, the same tag");
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1, "the second read came from memory");
    service.delete(&tenant(), "usr_a", "bot", None).await.unwrap();
    assert!(matches!(service.get(&tenant(), "bot").await, Err(Error::NotFound(_))), "read again after the change");
}

fn summary(name: &str) -> AgentSummary {
    AgentSummary { tenant_id: tenant().id, name: AgentName::parse(name).unwrap(), version: None, created_at: Utc::now(), updated_at: Utc::now() }
}

#[tokio::test]
async fn the_listing_agrees_with_reading_an_agent_whose_stored_manifest_is_unreadable() {
    let mut ports = Ports::default();
    ports.agents.expect_list_agents().returning(|_| Ok(vec![summary("alpha"), summary("beta"), summary("gamma")]));
    ports.agents.expect_find_agent().returning(|_, name| {
        Ok(Some(match name.as_str() {
            "beta" => Agent { manifest: AgentManifest::from_stored(name.clone(), None, "{\"apiVersion\": [[[".to_owned()), ..stored("beta") },
            other => stored(other),
        }))
    });
    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: None, message: None };
    ports.cluster.expect_list_tenant_agent_statuses().returning(move |_| Ok(vec![(AgentName::parse("alpha").unwrap(), running.clone())]));
    // No cluster object for beta (none can be made of it) nor, yet, for gamma.
    ports.cluster.expect_agent_object().returning(|_, _| Ok(None));
    let service = ports.service();
    let listed: Vec<(String, AgentPhase)> = service.list(&tenant()).await.unwrap().into_iter().map(|l| (l.summary.name.to_string(), l.status.phase)).collect();
    assert_eq!(listed, [("alpha".to_owned(), AgentPhase::Running), ("beta".to_owned(), AgentPhase::Failed), ("gamma".to_owned(), AgentPhase::Pending)]);
    let read = super::AgentDetail::of(service.get(&tenant(), "beta").await.unwrap());
    assert_eq!(read.state.status.phase, AgentPhase::Failed, "what reading it says");
    let listed = service.list(&tenant()).await.unwrap();
    assert_eq!(listed[1].status.message, read.state.status.message);
}

#[tokio::test]
async fn the_live_view_comes_from_the_node_or_is_an_upstream_error() {
    let mut ports = Ports::default().with_agent("bot").with_node(TenantPhase::Ready);
    ports
        .node
        .expect_agent_view()
        .returning(|node, _| if node == "http://node" { Err(Error::Upstream("the node at http://node cannot be reached".into())) } else { Ok(None) });
    let service = ports.service();
    assert!(matches!(service.live_status(&tenant(), "bot").await, Err(Error::Upstream(_))));
    assert!(matches!(service.live_status(&tenant(), "ghost").await, Err(Error::NotFound(_))));

    let not_ready = Ports::default().with_agent("bot").with_node(TenantPhase::Provisioning).service();
    assert!(matches!(not_ready.live_status(&tenant(), "bot").await, Err(Error::Upstream(_))));
}

/// The node-side name of the tenant's agent `name` on the shared node.
fn on_node(name: &str) -> AgentName {
    NodeNames::new(tenant().id, NodeSharing::Shared).node_name(&AgentName::parse(name).unwrap())
}

#[tokio::test]
async fn the_node_is_asked_about_the_node_side_name_and_answers_in_the_tenants_names() {
    let mut ports = Ports::default().with_agent("bot").with_node(TenantPhase::Ready);
    ports
        .node
        .expect_agent_view()
        .withf(|_, name| *name == on_node("bot"))
        .returning(|_, name| Ok(Some(json!({"name": name.as_str(), "status": "deployed", "manifest": {"metadata": {"name": name.as_str()}}}))));
    ports.node.expect_agent_traces().withf(|_, name, _| *name == on_node("bot")).returning(|_, name, _| Ok(json!({"traces": [{"agent": name.as_str()}]})));
    let service = ports.service();
    let live = service.live_status(&tenant(), "bot").await.unwrap();
    assert_eq!(live.node_agent_name, on_node("bot"));
    assert_eq!(live.node, json!({"name": "bot", "status": "deployed", "manifest": {"metadata": {"name": "bot"}}}));
    assert_eq!(service.logs(&tenant(), "bot", &LogQuery::default()).await.unwrap(), [json!({"agent": "bot"})]);
    assert_eq!(service.get(&tenant(), "bot").await.unwrap().node_agent_name, on_node("bot"));
}

#[tokio::test]
async fn metrics_come_from_the_agents_own_traces_within_the_period() {
    let mut ports = Ports::default().with_agent("bot").with_node(TenantPhase::Ready);
    ports.node.expect_agent_traces().withf(|_, name, limit| *name == on_node("bot") && *limit == 100).returning(|_, _, _| {
        let at = |minutes: i64| (Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap() - chrono::Duration::minutes(minutes)).timestamp() as f64;
        Ok(json!({"traces": [
            {"spans": [{"name": "agent.run", "parent_span_id": null, "status": "error", "start_time": at(1), "duration_ms": 12.0}]},
            {"spans": [{"name": "agent.run", "parent_span_id": null, "status": "ok", "start_time": at(90), "duration_ms": 50.0}]}
        ]}))
    });
    let service = ports.service();
    let hour = service.metrics(&tenant(), "bot", chrono::Duration::hours(1)).await.unwrap();
    assert_eq!((hour.runs, hour.errors, hour.latency_ms.max, hour.complete), (1, 1, Some(12.0), true));
    assert_eq!(service.metrics(&tenant(), "bot", chrono::Duration::hours(2)).await.unwrap().runs, 2);
    for period in [chrono::Duration::zero(), chrono::Duration::days(367)] {
        assert!(matches!(service.metrics(&tenant(), "bot", period).await, Err(Error::InvalidRequest(_))), "{period}");
    }
    assert!(matches!(service.metrics(&tenant(), "ghost", chrono::Duration::hours(1)).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn logs_are_bounded_and_filtered() {
    let mut ports = Ports::default().with_agent("bot").with_node(TenantPhase::Ready);
    ports.node.expect_agent_traces().withf(|_, _, limit| *limit == 5).returning(|_, _, _| {
        Ok(json!({"traces": [
            {"id": 1, "level": "error", "timestamp": "2026-11-28T11:00:00Z"},
            {"id": 2, "level": "info", "timestamp": "2026-11-28T13:00:00Z"},
            {"id": 3}
        ]}))
    });
    let service = ports.service();
    let ids = |traces: Vec<Value>| traces.iter().map(|t| t["id"].as_i64().unwrap()).collect::<Vec<_>>();
    let query = |level: Option<&str>, since: Option<&str>| LogQuery { lines: Some(5), level: level.map(Into::into), since: since.map(|s| s.parse().unwrap()) };
    assert_eq!(ids(service.logs(&tenant(), "bot", &query(None, None)).await.unwrap()), [1, 2, 3]);
    assert_eq!(ids(service.logs(&tenant(), "bot", &query(Some("ERROR"), None)).await.unwrap()), [1, 3]);
    assert_eq!(ids(service.logs(&tenant(), "bot", &query(None, Some("2026-11-28T12:00:00Z"))).await.unwrap()), [2, 3]);
    for lines in [0, 1001] {
        let result = service.logs(&tenant(), "bot", &LogQuery { lines: Some(lines), ..LogQuery::default() }).await;
        assert!(matches!(result, Err(Error::InvalidRequest(_))), "{lines}");
    }
}
