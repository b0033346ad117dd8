//! [`AgentStore`] on the `agents` and `agent_versions` tables.
//!
//! Creating an agent first takes the tenant's row lock (a no-op update), so the quota
//! count and the insert are one atomic step: PostgreSQL serialises on the row lock,
//! SQLite on its write lock. Updating one writes the agent's row first, which orders
//! concurrent updates the same way, so each appends one past the last number and prunes
//! what falls out of the kept history. A conditional update or delete (`expected`) adds
//! the current version number to the row's filter, so the check and the write are one
//! statement. Each row keeps its manifest's size beside it, so that the tenant's
//! manifest budget is checked, under the tenant's row lock, without reading manifests;
//! listings read no manifest at all.
//!
//! Rows are trusted on read: a manifest is not checked again with today's rules (nor even
//! parsed here), so a rule tightened later never makes an old row unreadable.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::agents::{Agent, AgentManifest, AgentName, AgentQuota, AgentSummary, AgentVersion, PublishedVersion, UpdateLimits};
use nexus_ports::audit::AuditEvent;
use nexus_ports::ports::AgentStore;
use nexus_ports::tenancy::TenantId;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{agent_versions as versions, agents, tenants};
use crate::error::{db, translate};

fn number(stored: i32) -> Result<u32> {
    u32::try_from(stored).map_err(|_| Error::Internal(format!("stored version number {stored} is negative")))
}

fn agent(row: agents::Model) -> Agent {
    Agent {
        tenant_id: TenantId::from_uuid(row.tenant_id),
        manifest: AgentManifest::from_stored(AgentName::from_stored(row.name), row.version, row.manifest),
        // Only a row corrupted by hand holds a negative number; it reads as no version yet.
        version_number: u32::try_from(row.version_number).unwrap_or(0),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// What a listing reads of a row: everything but the manifest.
#[derive(FromQueryResult)]
struct SummaryRow {
    tenant_id: sea_orm::prelude::Uuid,
    name: String,
    version: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Takes the tenant's row lock (a no-op update); whether the tenant exists.
async fn lock_tenant(txn: &impl ConnectionTrait, tenant: &TenantId) -> Result<bool> {
    let locked = tenants::Entity::update_many()
        .col_expr(tenants::Column::MaxAgents, Expr::col(tenants::Column::MaxAgents))
        .filter(tenants::Column::Id.eq(tenant.as_uuid()))
        .exec(txn)
        .await
        .map_err(db)?;
    Ok(locked.rows_affected > 0)
}

/// The bytes of current manifests the tenant holds, but for its agent `except`.
async fn manifest_bytes(txn: &impl ConnectionTrait, tenant: &TenantId, except: Option<&AgentName>) -> Result<u64> {
    let mut query = agents::Entity::find()
        .select_only()
        .column_as(Expr::cust("CAST(COALESCE(SUM(manifest_bytes), 0) AS BIGINT)"), "total")
        .filter(agents::Column::TenantId.eq(tenant.as_uuid()));
    if let Some(name) = except {
        query = query.filter(agents::Column::Name.ne(name.as_str()));
    }
    let total: Option<i64> = query.into_tuple().one(txn).await.map_err(db)?;
    Ok(u64::try_from(total.unwrap_or(0)).unwrap_or(0))
}

fn over_budget(max_manifest_bytes: u64) -> Error {
    Error::Conflict(format!("the tenant's manifests would take more than its budget of {max_manifest_bytes} bytes"))
}

fn size_of(manifest: &AgentManifest) -> i64 {
    i64::try_from(manifest.size()).unwrap_or(i64::MAX)
}

fn version(v: versions::Model) -> Result<AgentVersion> {
    Ok(AgentVersion { number: number(v.number)?, version: v.version, checksum: v.checksum, author: v.author, created_at: v.created_at })
}

/// What a conditional write found instead of `expected`.
fn stale(expected: u32, found: &agents::Model) -> Error {
    Error::PreconditionFailed(format!("If-Match names version {expected}, but the agent is at version {}: read it again", found.version_number))
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
        manifest: Set(Some(manifest.json().to_owned())),
    }
}

fn of_agent(tenant: &TenantId, name: &AgentName) -> sea_orm::Condition {
    sea_orm::Condition::all().add(agents::Column::TenantId.eq(tenant.as_uuid())).add(agents::Column::Name.eq(name.as_str()))
}

#[async_trait]
impl AgentStore for SqlStore {
    async fn insert_agent(&self, a: &Agent, author: &str, quota: AgentQuota, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        if !lock_tenant(&txn, &a.tenant_id).await? {
            return Err(Error::NotFound("no such tenant".to_owned()));
        }
        let running = agents::Entity::find().filter(agents::Column::TenantId.eq(a.tenant_id.as_uuid())).count(&txn).await.map_err(db)?;
        if running >= u64::from(quota.max_agents) {
            return Err(Error::Conflict(format!("the tenant has reached its quota of {} agents", quota.max_agents)));
        }
        if manifest_bytes(&txn, &a.tenant_id, None).await?.saturating_add(a.manifest.size() as u64) > quota.max_manifest_bytes {
            return Err(over_budget(quota.max_manifest_bytes));
        }
        let row = agents::ActiveModel {
            tenant_id: Set(a.tenant_id.as_uuid()),
            name: Set(a.manifest.name().as_str().to_owned()),
            manifest: Set(a.manifest.json().to_owned()),
            manifest_bytes: Set(size_of(&a.manifest)),
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
        limits: UpdateLimits,
        expected: Option<u32>,
        audit: &AuditEvent,
    ) -> Result<Agent> {
        let UpdateLimits { keep_versions, max_manifest_bytes } = limits;
        let txn = self.db.begin().await.map_err(db)?;
        if !lock_tenant(&txn, tenant).await? {
            return Err(Error::NotFound(format!("no agent named {}", manifest.name())));
        }
        if manifest_bytes(&txn, tenant, Some(manifest.name())).await?.saturating_add(manifest.size() as u64) > max_manifest_bytes {
            return Err(over_budget(max_manifest_bytes));
        }
        let mut filter = of_agent(tenant, manifest.name());
        if let Some(expected) = expected {
            filter = filter.add(agents::Column::VersionNumber.eq(i64::from(expected)));
        }
        let updated = agents::Entity::update_many()
            .col_expr(agents::Column::Manifest, Expr::value(manifest.json()))
            .col_expr(agents::Column::ManifestBytes, Expr::value(size_of(manifest)))
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
        row.map(agent).ok_or_else(|| Error::internal("the updated agent vanished"))
    }

    async fn find_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<Agent>> {
        Ok(agents::Entity::find().filter(of_agent(tenant, name)).one(&self.reads).await.map_err(db)?.map(agent))
    }

    async fn list_agents(&self, tenant: &TenantId) -> Result<Vec<AgentSummary>> {
        let rows = agents::Entity::find()
            .select_only()
            .columns([agents::Column::TenantId, agents::Column::Name, agents::Column::Version, agents::Column::CreatedAt, agents::Column::UpdatedAt])
            .filter(agents::Column::TenantId.eq(tenant.as_uuid()))
            .order_by_asc(agents::Column::Name)
            .into_model::<SummaryRow>()
            .all(&self.reads)
            .await
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|row| AgentSummary {
                tenant_id: TenantId::from_uuid(row.tenant_id),
                name: AgentName::from_stored(row.name),
                version: row.version,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
            .collect())
    }

    async fn list_all_agents(&self) -> Result<Vec<Agent>> {
        let rows = agents::Entity::find().order_by_asc(agents::Column::TenantId).order_by_asc(agents::Column::Name).all(&self.reads).await.map_err(db)?;
        Ok(rows.into_iter().map(agent).collect())
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
            // Where the cluster is held in this database too, its object is marked for
            // deletion in the same transaction: nothing after the commit is needed for
            // the loop to take the agent off its node (elsewhere the table is empty).
            let mark = crate::cluster::statement(
                txn.get_database_backend(),
                "UPDATE cluster_agents SET deleting = ? WHERE tenant_id = ? AND name = ?",
                [true.into(), tenant.to_string().into(), name.as_str().into()],
            );
            txn.execute_raw(mark).await.map_err(db)?;
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
            .all(&self.reads)
            .await
            .map_err(db)?;
        rows.into_iter().map(version).collect()
    }

    async fn find_version(&self, tenant: &TenantId, name: &AgentName, number: u32) -> Result<Option<PublishedVersion>> {
        let row = versions::Entity::find()
            .filter(versions::Column::TenantId.eq(tenant.as_uuid()))
            .filter(versions::Column::Name.eq(name.as_str()))
            .filter(versions::Column::Number.eq(i64::from(number)))
            .one(&self.reads)
            .await
            .map_err(db)?;
        let Some(mut row) = row else { return Ok(None) };
        let manifest = row.manifest.take().map(|stored| AgentManifest::from_stored(name.clone(), row.version.clone(), stored));
        Ok(Some(PublishedVersion { version: version(row)?, manifest }))
    }
}
