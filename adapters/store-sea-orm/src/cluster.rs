//! The database-held cluster backend: what the in-memory cluster keeps in maps (each
//! tenant's node status, each agent object with its desired manifest, generation, status
//! and deletion mark, deprovisioned tenants whose agents still leave their node), kept in
//! tables instead, so that every replica sharing the database reads the same. Every
//! tenant's node is the one configured endpoint: tenants share it, and their agents go
//! there under node-side names. Only the leader's reconcile loop writes statuses and
//! forgets objects; the API writes desired state (a manifest, a deletion) from any replica.
//!
//! At rest the leader writes one row per period: when it last saw the node holding every
//! Running agent as it should (`cluster_nodes`), joined into each Running agent's
//! `last_synced_at` as statuses are read, in the same statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::agents::{AgentManifest, AgentName, AgentObject, AgentPhase, AgentStatus};
use nexus_ports::leadership::Fence;
use nexus_ports::node_names::NodeSharing;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, QueryResult, Statement, TransactionTrait, Value};

use crate::SqlStore;
use crate::error::db;
use crate::lease::term_lasts;

/// [`ClusterBackend`] in the store's database.
#[derive(Clone)]
pub struct SqlCluster {
    db: DatabaseConnection,
    node_endpoint: String,
}

impl SqlStore {
    /// The cluster backend held in this database, every tenant's node answering at
    /// `node_endpoint`.
    pub fn cluster(&self, node_endpoint: impl Into<String>) -> SqlCluster {
        SqlCluster { db: self.db.clone(), node_endpoint: node_endpoint.into() }
    }
}

/// A statement written with `?` placeholders, numbered for PostgreSQL.
pub(crate) fn statement(backend: DatabaseBackend, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    let sql = if backend == DatabaseBackend::Postgres {
        let mut numbered = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                numbered.push_str(&format!("${n}"));
            } else {
                numbered.push(c);
            }
        }
        numbered
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

const AGENT_COLUMNS: &str = "tenant_id, name, version, manifest, generation, observed_generation, phase, node_ack, last_synced_micros, message, deleting";
/// The node's last seen time, read with every agent row (one node: every tenant's).
const NODE_SEEN: &str = "(SELECT seen_micros FROM cluster_nodes WHERE endpoint = ?) AS node_seen_micros";

/// A stored phase; one a newer replica wrote and this one does not know reads as Pending.
fn agent_phase(text: &str) -> AgentPhase {
    AgentPhase::from_name(text).unwrap_or(AgentPhase::Pending)
}

/// A stored tenant phase; an unknown one reads as Pending.
fn tenant_phase(text: &str) -> TenantPhase {
    TenantPhase::from_name(text).unwrap_or(TenantPhase::Pending)
}

fn corrupt(what: &str) -> Error {
    Error::Internal(format!("a stored cluster object has a malformed {what}"))
}

/// An agent object from its row.
fn agent_object(row: &QueryResult) -> Result<AgentObject> {
    let tenant: String = row.try_get("", "tenant_id").map_err(db)?;
    let name: String = row.try_get("", "name").map_err(db)?;
    let name = AgentName::parse(&name).map_err(|_| corrupt("agent name"))?;
    let version: Option<String> = row.try_get("", "version").map_err(db)?;
    let manifest: String = row.try_get("", "manifest").map_err(db)?;
    let generation: i64 = row.try_get("", "generation").map_err(db)?;
    let observed: i64 = row.try_get("", "observed_generation").map_err(db)?;
    let phase: String = row.try_get("", "phase").map_err(db)?;
    let synced: Option<i64> = row.try_get("", "last_synced_micros").map_err(db)?;
    let node_seen: Option<i64> = row.try_get("", "node_seen_micros").map_err(db)?;
    let object = AgentObject {
        tenant_id: TenantId::parse(&tenant).map_err(|_| corrupt("tenant id"))?,
        manifest: AgentManifest::from_stored(name, version, manifest),
        generation: u64::try_from(generation).unwrap_or_default(),
        observed_generation: u64::try_from(observed).unwrap_or_default(),
        status: AgentStatus {
            phase: agent_phase(&phase),
            node_ack: row.try_get("", "node_ack").map_err(db)?,
            last_synced_at: synced.and_then(DateTime::<Utc>::from_timestamp_micros),
            message: row.try_get("", "message").map_err(db)?,
        },
        deleting: row.try_get("", "deleting").map_err(db)?,
    };
    Ok(object.seen_on_node(node_seen.and_then(DateTime::<Utc>::from_timestamp_micros)))
}

fn generation(value: u64) -> Value {
    i64::try_from(value).unwrap_or(i64::MAX).into()
}

impl SqlCluster {
    fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    async fn agents_where(&self, filter: &str, values: Vec<Value>) -> Result<Vec<AgentObject>> {
        let values = std::iter::once(self.node_endpoint.clone().into()).chain(values);
        let query = statement(self.backend(), &format!("SELECT {AGENT_COLUMNS}, {NODE_SEEN} FROM cluster_agents {filter} ORDER BY tenant_id, name"), values);
        let rows = self.db.query_all_raw(query).await.map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|row| agent_object(row).inspect_err(|err| tracing::error!(error = %err, "skipping an unreadable agent object")).ok())
            .collect())
    }
}

async fn tenant_row(conn: &impl ConnectionTrait, id: &TenantId) -> std::result::Result<Option<TenantStatus>, DbErr> {
    let query = statement(
        conn.get_database_backend(),
        "SELECT phase, namespace, node_endpoint, message FROM cluster_tenants WHERE tenant_id = ?",
        [id.to_string().into()],
    );
    let Some(row) = conn.query_one_raw(query).await? else { return Ok(None) };
    let phase: String = row.try_get("", "phase")?;
    Ok(Some(TenantStatus {
        phase: tenant_phase(&phase),
        namespace: row.try_get("", "namespace")?,
        node_endpoint: row.try_get("", "node_endpoint")?,
        message: row.try_get("", "message")?,
    }))
}

#[async_trait]
impl ClusterBackend for SqlCluster {
    /// Every tenant's node is the one configured endpoint.
    fn node_sharing(&self) -> NodeSharing {
        NodeSharing::Shared
    }

    /// Only Nexus writes what it holds of tenants.
    fn tenants_drift(&self) -> bool {
        false
    }

    /// Written only when it changes: the leader provisions every tenant at each resync.
    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus> {
        let status =
            TenantStatus { phase: TenantPhase::Ready, namespace: Some(tenant.id.cr_name()), node_endpoint: Some(self.node_endpoint.clone()), message: None };
        if tenant_row(&self.db, &tenant.id).await.map_err(db)?.as_ref() == Some(&status) {
            return Ok(status);
        }
        let upsert = statement(
            self.backend(),
            "INSERT INTO cluster_tenants (tenant_id, phase, namespace, node_endpoint, message, terminating) VALUES (?, ?, ?, ?, NULL, ?) \
             ON CONFLICT (tenant_id) DO UPDATE SET phase = excluded.phase, namespace = excluded.namespace, node_endpoint = excluded.node_endpoint, message = NULL",
            [tenant.id.to_string().into(), status.phase.as_str().into(), status.namespace.clone().into(), status.node_endpoint.clone().into(), false.into()],
        );
        self.db.execute_raw(upsert).await.map_err(db)?;
        Ok(status)
    }

    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        Ok(tenant_row(&self.db, id).await.map_err(db)?.unwrap_or_else(TenantStatus::pending))
    }

    /// The tenant's agents are marked for deletion and its status kept (marked
    /// terminating) until the leader has removed them from its node (the node is shared:
    /// it must forget them); with no agents the status goes at once.
    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()> {
        let backend = self.backend();
        let tx = self.db.begin().await.map_err(db)?;
        let marked = tx
            .execute_raw(statement(backend, "UPDATE cluster_agents SET deleting = ? WHERE tenant_id = ?", [true.into(), id.to_string().into()]))
            .await
            .map_err(db)?
            .rows_affected();
        let tenant = if marked > 0 {
            statement(backend, "UPDATE cluster_tenants SET terminating = ? WHERE tenant_id = ?", [true.into(), id.to_string().into()])
        } else {
            statement(backend, "DELETE FROM cluster_tenants WHERE tenant_id = ?", [id.to_string().into()])
        };
        tx.execute_raw(tenant).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Nothing waits here: deprovisioning hands the tenant's agents to the loop.
    async fn finish_deletions(&self) -> Result<()> {
        Ok(())
    }

    /// One statement: a new object at generation 1; a changed manifest, or one whose
    /// deletion was asked for, bumps the generation (and is no longer deleting); the same
    /// manifest changes nothing.
    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()> {
        let upsert = statement(
            self.backend(),
            &format!(
                "INSERT INTO cluster_agents ({AGENT_COLUMNS}) VALUES (?, ?, ?, ?, 1, 0, ?, ?, NULL, NULL, ?) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET manifest = excluded.manifest, version = excluded.version, \
                 generation = cluster_agents.generation + 1, deleting = excluded.deleting \
                 WHERE cluster_agents.manifest <> excluded.manifest OR cluster_agents.deleting = ?"
            ),
            [
                tenant.to_string().into(),
                manifest.name().as_str().into(),
                manifest.version().map(str::to_owned).into(),
                manifest.json().into(),
                AgentPhase::Pending.as_str().into(),
                false.into(),
                false.into(),
                true.into(),
            ],
        );
        self.db.execute_raw(upsert).await.map(drop).map_err(db)
    }

    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let mark = statement(
            self.backend(),
            "UPDATE cluster_agents SET deleting = ? WHERE tenant_id = ? AND name = ?",
            [true.into(), tenant.to_string().into(), name.as_str().into()],
        );
        self.db.execute_raw(mark).await.map(drop).map_err(db)
    }

    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>> {
        Ok(self.agents_where("WHERE tenant_id = ? AND name = ?", vec![tenant.to_string().into(), name.as_str().into()]).await?.pop())
    }

    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>> {
        self.agents_where("", vec![]).await
    }

    async fn list_tenant_agent_objects(&self, tenant: &TenantId) -> Result<Vec<AgentObject>> {
        self.agents_where("WHERE tenant_id = ?", vec![tenant.to_string().into()]).await
    }

    /// No manifest is read.
    async fn list_tenant_agent_statuses(&self, tenant: &TenantId) -> Result<Vec<(AgentName, AgentStatus)>> {
        let query = statement(
            self.backend(),
            &format!(
                "SELECT name, phase, node_ack, last_synced_micros, message, generation, observed_generation, deleting, {NODE_SEEN} FROM cluster_agents WHERE tenant_id = ? ORDER BY name"
            ),
            [self.node_endpoint.clone().into(), tenant.to_string().into()],
        );
        let rows = self.db.query_all_raw(query).await.map_err(db)?;
        let status = |row: &QueryResult| -> Result<(AgentName, AgentStatus)> {
            let name: String = row.try_get("", "name").map_err(db)?;
            let phase: String = row.try_get("", "phase").map_err(db)?;
            let synced: Option<i64> = row.try_get("", "last_synced_micros").map_err(db)?;
            let node_seen: Option<i64> = row.try_get("", "node_seen_micros").map_err(db)?;
            let generation: i64 = row.try_get("", "generation").map_err(db)?;
            let observed: i64 = row.try_get("", "observed_generation").map_err(db)?;
            let deleting: bool = row.try_get("", "deleting").map_err(db)?;
            let status = AgentStatus {
                phase: agent_phase(&phase),
                node_ack: row.try_get("", "node_ack").map_err(db)?,
                last_synced_at: synced.and_then(DateTime::<Utc>::from_timestamp_micros),
                message: row.try_get("", "message").map_err(db)?,
            };
            let current = generation == observed && !deleting;
            Ok((
                AgentName::parse(&name).map_err(|_| corrupt("agent name"))?,
                status.seen_on_node(current, node_seen.and_then(DateTime::<Utc>::from_timestamp_micros)),
            ))
        };
        Ok(rows.iter().filter_map(|row| status(row).inspect_err(|err| tracing::error!(error = %err, "skipping an unreadable agent status")).ok()).collect())
    }

    /// With a term's fence, written only while that term is the lease's current one and
    /// unexpired, in the same statement: a leader frozen past its lease writes nothing.
    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus, fence: Fence) -> Result<()> {
        let backend = self.backend();
        let mut values = vec![
            generation(observed_generation),
            status.phase.as_str().into(),
            status.node_ack.into(),
            status.last_synced_at.map(|at| at.timestamp_micros()).into(),
            status.message.clone().into(),
            tenant.to_string().into(),
            name.as_str().into(),
        ];
        let mut sql =
            "UPDATE cluster_agents SET observed_generation = ?, phase = ?, node_ack = ?, last_synced_micros = ?, message = ? WHERE tenant_id = ? AND name = ?"
                .to_owned();
        let Fence::Term(term) = fence else {
            return self.db.execute_raw(statement(backend, &sql, values)).await.map(drop).map_err(db);
        };
        sql = format!("{sql} AND {}", term_lasts(backend));
        values.push(generation(term));
        if self.db.execute_raw(statement(backend, &sql, values)).await.map_err(db)?.rows_affected() > 0 {
            return Ok(());
        }
        // Nothing written: the object is gone (fine), or the term is over (said).
        let lasts = statement(backend, &format!("SELECT 1 AS one WHERE {}", term_lasts(backend)), [generation(term)]);
        match self.db.query_one_raw(lasts).await.map_err(db)? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable(format!("status not written: term {term} of the leader lease is over"))),
        }
    }

    /// One row for the one node, whatever the number of agents: never moved back. With a
    /// term's fence, written only while that term is the lease's current one and
    /// unexpired, in the same statement.
    async fn record_node_seen(&self, node: &str, at: DateTime<Utc>, _agents: &[(TenantId, AgentName, u64)], fence: Fence) -> Result<()> {
        if node != self.node_endpoint {
            return Ok(());
        }
        let backend = self.backend();
        let mut values: Vec<Value> = vec![node.into(), at.timestamp_micros().into()];
        let condition = match fence {
            Fence::Alone => String::new(),
            Fence::Term(term) => {
                values.push(generation(term));
                format!(" AND {}", term_lasts(backend))
            }
        };
        // An INSERT ... SELECT, so that the fence guards the first write as well.
        let upsert = statement(
            backend,
            &format!(
                "INSERT INTO cluster_nodes (endpoint, seen_micros) SELECT ?, ? WHERE 1 = 1{condition} \
                 ON CONFLICT (endpoint) DO UPDATE SET seen_micros = excluded.seen_micros WHERE cluster_nodes.seen_micros < excluded.seen_micros"
            ),
            values,
        );
        self.db.execute_raw(upsert).await.map(drop).map_err(db)
    }

    /// Only an object still marked for deletion goes (one applied again meanwhile stays);
    /// a deprovisioned tenant goes with its last agent.
    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()> {
        let backend = self.backend();
        let tx = self.db.begin().await.map_err(db)?;
        let forget = statement(
            backend,
            "DELETE FROM cluster_agents WHERE tenant_id = ? AND name = ? AND deleting = ?",
            [tenant.to_string().into(), name.as_str().into(), true.into()],
        );
        tx.execute_raw(forget).await.map_err(db)?;
        let last = statement(
            backend,
            "DELETE FROM cluster_tenants WHERE tenant_id = ? AND terminating = ? AND NOT EXISTS (SELECT 1 FROM cluster_agents WHERE tenant_id = ?)",
            [tenant.to_string().into(), true.into(), tenant.to_string().into()],
        );
        tx.execute_raw(last).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

#[async_trait]
impl HealthCheck for SqlCluster {
    fn name(&self) -> &'static str {
        "cluster"
    }

    async fn check(&self) -> Result<()> {
        let ping = self.db.query_one_raw(statement(self.backend(), "SELECT COUNT(*) AS n FROM cluster_tenants WHERE tenant_id = ?", ["".into()]));
        match tokio::time::timeout(crate::CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(db(err)),
            Err(_) => Err(Error::Unavailable("the database did not answer in time".to_owned())),
        }
    }
}
