//! [`TenantStore`] on the `tenants` table.
//!
//! Creating a tenant first takes its owner's row lock (a no-op update), so the quota
//! count and the insert are one atomic step: PostgreSQL serialises on the row lock,
//! SQLite on its write lock.

use async_trait::async_trait;
use nexus_ports::audit::AuditEvent;
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::TenantStore;
use nexus_ports::tenancy::{NodeProfile, Tenant, TenantId};
use nexus_ports::{Error, Result};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{agent_versions, agents, api_keys, tenants, users};
use crate::error::{db, translate};

/// A stored row as a domain tenant.
pub(crate) fn tenant(row: tenants::Model) -> Result<Tenant> {
    Ok(Tenant {
        id: TenantId::from_uuid(row.id),
        owner: UserId::from_uuid(row.owner_id),
        display_name: DisplayName::parse(&row.display_name)?,
        node_profile: NodeProfile::parse(&row.node_profile)?,
        max_agents: u32::try_from(row.max_agents).map_err(Error::internal)?,
        created_at: row.created_at,
    })
}

fn tenants(rows: Vec<tenants::Model>) -> Result<Vec<Tenant>> {
    rows.into_iter().map(tenant).collect()
}

#[async_trait]
impl TenantStore for SqlStore {
    async fn insert_tenant(&self, t: &Tenant, max_tenants: u32, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        let locked = users::Entity::update_many()
            .col_expr(users::Column::Id, Expr::col(users::Column::Id))
            .filter(users::Column::Id.eq(t.owner.as_uuid()))
            .exec(&txn)
            .await
            .map_err(db)?;
        if locked.rows_affected == 0 {
            return Err(Error::NotFound("the owner of the tenant does not exist".to_owned()));
        }
        let owned = tenants::Entity::find().filter(tenants::Column::OwnerId.eq(t.owner.as_uuid())).count(&txn).await.map_err(db)?;
        if owned >= u64::from(max_tenants) {
            return Err(Error::Conflict(format!("tenant quota reached: a user may own at most {max_tenants} tenants")));
        }
        let row = tenants::ActiveModel {
            id: Set(t.id.as_uuid()),
            owner_id: Set(t.owner.as_uuid()),
            display_name: Set(t.display_name.as_str().to_owned()),
            node_profile: Set(t.node_profile.as_str().to_owned()),
            max_agents: Set(i32::try_from(t.max_agents).map_err(Error::internal)?),
            created_at: Set(t.created_at),
        };
        tenants::Entity::insert(row).exec_without_returning(&txn).await.map_err(|e| translate(e, "tenant"))?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn find_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        tenants::Entity::find_by_id(id.as_uuid()).one(&self.reads).await.map_err(db)?.map(tenant).transpose()
    }

    async fn list_tenants_of(&self, owner: &UserId) -> Result<Vec<Tenant>> {
        let rows = tenants::Entity::find()
            .filter(tenants::Column::OwnerId.eq(owner.as_uuid()))
            .order_by_asc(tenants::Column::CreatedAt)
            .order_by_asc(tenants::Column::Id)
            .all(&self.reads)
            .await
            .map_err(db)?;
        tenants(rows)
    }

    async fn list_all_tenants(&self) -> Result<Vec<Tenant>> {
        tenants(tenants::Entity::find().order_by_asc(tenants::Column::CreatedAt).order_by_asc(tenants::Column::Id).all(&self.reads).await.map_err(db)?)
    }

    async fn delete_tenant(&self, id: &TenantId, audit: &AuditEvent) -> Result<bool> {
        let txn = self.db.begin().await.map_err(db)?;
        api_keys::Entity::delete_many().filter(api_keys::Column::TenantId.eq(id.as_uuid())).exec(&txn).await.map_err(db)?;
        agent_versions::Entity::delete_many().filter(agent_versions::Column::TenantId.eq(id.as_uuid())).exec(&txn).await.map_err(db)?;
        agents::Entity::delete_many().filter(agents::Column::TenantId.eq(id.as_uuid())).exec(&txn).await.map_err(db)?;
        let deleted = tenants::Entity::delete_by_id(id.as_uuid()).exec(&txn).await.map_err(db)?.rows_affected;
        if deleted > 0 {
            record(&txn, audit).await?;
        }
        txn.commit().await.map_err(db)?;
        Ok(deleted > 0)
    }
}
