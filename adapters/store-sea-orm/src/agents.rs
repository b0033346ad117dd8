//! [`AgentStore`] on the `agents` and `agent_versions` tables.
//!
//! Creating an agent first takes the tenant's row lock (a no-op update), so the quota
//! count and the insert are one atomic step: PostgreSQL serialises on the row lock,
//! SQLite on its write lock. Updating one writes the agent's row first, which orders
//! concurrent updates the same way, so each appends one past the last number and prunes
//! what falls out of the kept history. A conditional update or delete (`expected`) adds
//! the current version number to the row's filter, so the check and the write are one
//! statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::agents::{Agent, AgentManifest, AgentName, AgentVersion, PublishedVersion};
use nexus_ports::audit::AuditEvent;
use nexus_ports::ports::AgentStore;
use nexus_ports::tenancy::TenantId;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{agent_versions as versions, agents, tenants};
use crate::error::{db, translate};

fn parse_manifest(stored: &str, name: &str) -> Result<AgentManifest> {
    let document = serde_json::from_str(stored).map_err(|err| Error::Internal(format!("stored manifest of {name} is not JSON: {err}")))?;
    AgentManifest::parse(document)
}

fn number(stored: i32) -> Result<u32> {
    u32::try_from(stored).map_err(|_| Error::Internal(format!("stored version number {stored} is negative")))
}

fn agent(row: agents::Model) -> Result<Agent> {
    Ok(Agent {
        tenant_id: TenantId::from_uuid(row.tenant_id),
        manifest: parse_manifest(&row.manifest, &row.name)?,
        version_number: number(row.version_number)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn version(v: versions::Model) -> Result<AgentVersion> {
    Ok(AgentVersion { number: number(v.number)?, version: v.version, checksum: v.checksum, author: v.author, created_at: v.created_at })
}

/// What a conditional write found instead of `expected`.
fn stale(expected: u32, found: &agents::Model) -> Error {
    Error::PreconditionFailed(format!("If-Match names version {expected}, but the agent is at version {}: read it again", found.version_number))
}

fn agents(rows: Vec<agents::Model>) -> Result<Vec<Agent>> {
    rows.into_iter().map(agent).collect()
}

fn version_row(tenant: &TenantId, manifest: &AgentManifest, number: i32, author: &str, at: DateTime<Utc>) -> versions::ActiveModel {
    versions::ActiveModel {
        tenant_id: Set(tenant.as_uuid()),
        name: Set(manifest.name().as_str().to_owned()),
        number: Set(number),
        version: Set(manifest.version().map(str::to_owned)),
        checksum: Set(manifest.checksum()),
        author: Set(author.to_owned()),
        created_at: Set(at),
        manifest: Set(Some(manifest.document().to_string())),
    }
}

fn of_agent(tenant: &TenantId, name: &AgentName) -> sea_orm::Condition {
    sea_orm::Condition::all().add(agents::Column::TenantId.eq(tenant.as_uuid())).add(agents::Column::Name.eq(name.as_str()))
}

#[async_trait]
impl AgentStore for SqlStore {
    async fn insert_agent(&self, a: &Agent, author: &str, max_agents: u32, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        let locked = tenants::Entity::update_many()
            .col_expr(tenants::Column::MaxAgents, Expr::col(tenants::Column::MaxAgents))
            .filter(tenants::Column::Id.eq(a.tenant_id.as_uuid()))
            .exec(&txn)
            .await
            .map_err(db)?;
        if locked.rows_affected == 0 {
            return Err(Error::NotFound("no such tenant".to_owned()));
        }
        let running = agents::Entity::find().filter(agents::Column::TenantId.eq(a.tenant_id.as_uuid())).count(&txn).await.map_err(db)?;
        if running >= u64::from(max_agents) {
            return Err(Error::Conflict(format!("the tenant has reached its quota of {max_agents} agents")));
        }
        let row = agents::ActiveModel {
            tenant_id: Set(a.tenant_id.as_uuid()),
            name: Set(a.manifest.name().as_str().to_owned()),
            manifest: Set(a.manifest.document().to_string()),
            version: Set(a.manifest.version().map(str::to_owned)),
            version_number: Set(1),
            created_at: Set(a.created_at),
            updated_at: Set(a.updated_at),
        };
        agents::Entity::insert(row).exec_without_returning(&txn).await.map_err(|e| translate(e, "an agent with this name"))?;
        versions::Entity::insert(version_row(&a.tenant_id, &a.manifest, 1, author, a.created_at)).exec_without_returning(&txn).await.map_err(db)?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn update_agent(
        &self,
        tenant: &TenantId,
        manifest: &AgentManifest,
        author: &str,
        at: DateTime<Utc>,
        keep_versions: u32,
        expected: Option<u32>,
        audit: &AuditEvent,
    ) -> Result<Agent> {
        let txn = self.db.begin().await.map_err(db)?;
        let mut filter = of_agent(tenant, manifest.name());
        if let Some(expected) = expected {
            filter = filter.add(agents::Column::VersionNumber.eq(i64::from(expected)));
        }
        let updated = agents::Entity::update_many()
            .col_expr(agents::Column::Manifest, Expr::value(manifest.document().to_string()))
            .col_expr(agents::Column::Version, Expr::value(manifest.version().map(str::to_owned)))
            .col_expr(agents::Column::UpdatedAt, Expr::value(at))
            .filter(filter)
            .exec(&txn)
            .await
            .map_err(db)?;
        if updated.rows_affected == 0 {
            let found = agents::Entity::find().filter(of_agent(tenant, manifest.name())).one(&txn).await.map_err(db)?;
            return Err(match (expected, found) {
                (Some(expected), Some(found)) => stale(expected, &found),
                _ => Error::NotFound(format!("no agent named {}", manifest.name())),
            });
        }
        let last = versions::Entity::find()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(manifest.name().as_str()))
            .order_by_desc(versions::Column::Number)
            .one(&txn)
            .await
            .map_err(db)?
            .map_or(0, |v| v.number);
        // The agent's own count and its history's agree (both one past the last number given).
        let next = last + 1;
        agents::Entity::update_many()
            .col_expr(agents::Column::VersionNumber, Expr::value(next))
            .filter(of_agent(tenant, manifest.name()))
            .exec(&txn)
            .await
            .map_err(db)?;
        versions::Entity::insert(version_row(tenant, manifest, next, author, at)).exec_without_returning(&txn).await.map_err(db)?;
        // The newest is always kept, so the next number stays one past the last ever given.
        let pruned_up_to = i64::from(last + 1) - i64::from(keep_versions.max(1));
        versions::Entity::delete_many()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(manifest.name().as_str()))
            .filter(versions::Column::Number.lte(pruned_up_to))
            .exec(&txn)
            .await
            .map_err(db)?;
        let row = agents::Entity::find().filter(of_agent(tenant, manifest.name())).one(&txn).await.map_err(db)?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)?;
        row.map(agent).transpose()?.ok_or_else(|| Error::internal("the updated agent vanished"))
    }

    async fn find_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<Agent>> {
        agents::Entity::find().filter(of_agent(tenant, name)).one(&self.db).await.map_err(db)?.map(agent).transpose()
    }

    async fn list_agents(&self, tenant: &TenantId) -> Result<Vec<Agent>> {
        agents(agents::Entity::find().filter(agents::Column::TenantId.eq(tenant.as_uuid())).order_by_asc(agents::Column::Name).all(&self.db).await.map_err(db)?)
    }

    async fn list_all_agents(&self) -> Result<Vec<Agent>> {
        agents(agents::Entity::find().order_by_asc(agents::Column::TenantId).order_by_asc(agents::Column::Name).all(&self.db).await.map_err(db)?)
    }

    async fn delete_agent(&self, tenant: &TenantId, name: &AgentName, expected: Option<u32>, audit: &AuditEvent) -> Result<bool> {
        let txn = self.db.begin().await.map_err(db)?;
        if let Some(expected) = expected {
            // Locks the row (a no-op update) where the version matches, so that no update
            // slips in between the check and the delete.
            let matched = agents::Entity::update_many()
                .col_expr(agents::Column::VersionNumber, Expr::col(agents::Column::VersionNumber))
                .filter(of_agent(tenant, name).add(agents::Column::VersionNumber.eq(i64::from(expected))))
                .exec(&txn)
                .await
                .map_err(db)?;
            if matched.rows_affected == 0 {
                let found = agents::Entity::find().filter(of_agent(tenant, name)).one(&txn).await.map_err(db)?;
                return match found {
                    Some(found) => Err(stale(expected, &found)),
                    None => Ok(false),
                };
            }
        }
        versions::Entity::delete_many()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(name.as_str()))
            .exec(&txn)
            .await
            .map_err(db)?;
        let deleted = agents::Entity::delete_many().filter(of_agent(tenant, name)).exec(&txn).await.map_err(db)?.rows_affected;
        if deleted > 0 {
            record(&txn, audit).await?;
        }
        txn.commit().await.map_err(db)?;
        Ok(deleted > 0)
    }

    async fn list_versions(&self, tenant: &TenantId, name: &AgentName) -> Result<Vec<AgentVersion>> {
        let rows = versions::Entity::find()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(name.as_str()))
            .order_by_asc(versions::Column::Number)
            .all(&self.db)
            .await
            .map_err(db)?;
        rows.into_iter().map(version).collect()
    }

    async fn find_version(&self, tenant: &TenantId, name: &AgentName, number: u32) -> Result<Option<PublishedVersion>> {
        let row = versions::Entity::find()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(name.as_str()))
            .filter(versions::Column::Number.eq(i64::from(number)))
            .one(&self.db)
            .await
            .map_err(db)?;
        let Some(mut row) = row else { return Ok(None) };
        let manifest = row.manifest.take().map(|stored| parse_manifest(&stored, name.as_str())).transpose()?;
        Ok(Some(PublishedVersion { version: version(row)?, manifest }))
    }
}
