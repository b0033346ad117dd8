//! [`ApiKeyStore`] on the `api_keys` table. Authentication looks a key up by its digest
//! (the primary key) joined with its tenant: one indexed query, no password hash.
//!
//! Creating a key first takes its tenant's row lock (a no-op update), so the quota count
//! and the insert are one atomic step, as for agents.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::audit::AuditEvent;
use nexus_ports::ports::ApiKeyStore;
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, Tenant, TenantId};
use nexus_ports::tokens::SecretDigest;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::{Condition, Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{api_keys, revoked_keys, tenants};
use crate::error::{db, translate};
use crate::tenants::tenant;

fn key(row: api_keys::Model) -> Result<ApiKey> {
    Ok(ApiKey {
        digest: SecretDigest::from_hex(&row.digest).map_err(|_| Error::Internal(format!("stored key digest {:?} is not hex", row.digest)))?,
        tenant_id: TenantId::from_uuid(row.tenant_id),
        label: KeyLabel::parse(&row.label)?,
        scope: KeyScope::parse(&row.scope).map_err(|_| Error::Internal(format!("stored key scope {:?} is unknown", row.scope)))?,
        created_at: row.created_at,
        expires_at: row.expires_at,
        last_used_at: row.last_used_at,
    })
}

#[async_trait]
impl ApiKeyStore for SqlStore {
    async fn insert_key(&self, k: &ApiKey, max_keys: u32, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        let locked = tenants::Entity::update_many()
            .col_expr(tenants::Column::MaxAgents, Expr::col(tenants::Column::MaxAgents))
            .filter(tenants::Column::Id.eq(k.tenant_id.as_uuid()))
            .exec(&txn)
            .await
            .map_err(db)?;
        if locked.rows_affected == 0 {
            return Err(Error::NotFound("no such tenant".to_owned()));
        }
        let keys = api_keys::Entity::find().filter(api_keys::Column::TenantId.eq(k.tenant_id.as_uuid())).count(&txn).await.map_err(db)?;
        if keys >= u64::from(max_keys) {
            return Err(Error::Conflict(format!("API key quota reached: a tenant may have at most {max_keys} keys")));
        }
        let row = api_keys::ActiveModel {
            digest: Set(k.digest.to_hex()),
            tenant_id: Set(k.tenant_id.as_uuid()),
            label: Set(k.label.as_str().to_owned()),
            scope: Set(k.scope.as_str().to_owned()),
            created_at: Set(k.created_at),
            expires_at: Set(k.expires_at),
            last_used_at: Set(k.last_used_at),
        };
        api_keys::Entity::insert(row).exec_without_returning(&txn).await.map_err(|e| translate(e, "API key"))?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn find_key(&self, digest: &SecretDigest) -> Result<Option<(ApiKey, Tenant)>> {
        let found = api_keys::Entity::find_by_id(digest.to_hex()).find_also_related(tenants::Entity).one(&self.reads).await.map_err(db)?;
        match found {
            Some((k, Some(t))) => Ok(Some((key(k)?, tenant(t)?))),
            _ => Ok(None),
        }
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>> {
        let rows = api_keys::Entity::find()
            .filter(api_keys::Column::TenantId.eq(tenant.as_uuid()))
            .order_by_asc(api_keys::Column::CreatedAt)
            .order_by_asc(api_keys::Column::Digest)
            .all(&self.reads)
            .await
            .map_err(db)?;
        rows.into_iter().map(key).collect()
    }

    async fn delete_key(&self, tenant: &TenantId, digest: &SecretDigest, audit: &AuditEvent) -> Result<bool> {
        let txn = self.db.begin().await.map_err(db)?;
        let label: Option<String> = api_keys::Entity::find_by_id(digest.to_hex())
            .select_only()
            .column(api_keys::Column::Label)
            .filter(api_keys::Column::TenantId.eq(tenant.as_uuid()))
            .into_tuple()
            .one(&txn)
            .await
            .map_err(db)?;
        let deleted = api_keys::Entity::delete_many()
            .filter(api_keys::Column::TenantId.eq(tenant.as_uuid()))
            .filter(api_keys::Column::Digest.eq(digest.to_hex()))
            .exec(&txn)
            .await
            .map_err(db)?
            .rows_affected;
        if deleted > 0 {
            record(&txn, audit).await?;
            let remembered = revoked_keys::ActiveModel {
                digest: Set(digest.to_hex()),
                tenant_id: Set(tenant.as_uuid()),
                label: Set(label.unwrap_or_default()),
                revoked_at: Set(audit.at),
            };
            let keep_first = OnConflict::column(revoked_keys::Column::Digest).do_nothing().to_owned();
            revoked_keys::Entity::insert(remembered).on_conflict(keep_first).exec_without_returning(&txn).await.map_err(db)?;
        }
        txn.commit().await.map_err(db)?;
        Ok(deleted > 0)
    }

    async fn find_revoked_key(&self, digest: &SecretDigest) -> Result<Option<(TenantId, KeyLabel)>> {
        let Some(row) = revoked_keys::Entity::find_by_id(digest.to_hex()).one(&self.reads).await.map_err(db)? else { return Ok(None) };
        Ok(Some((TenantId::from_uuid(row.tenant_id), KeyLabel::parse(&row.label)?)))
    }

    async fn record_key_usage(&self, usage: &[(SecretDigest, DateTime<Utc>)]) -> Result<()> {
        if usage.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await.map_err(db)?;
        for (digest, at) in usage {
            api_keys::Entity::update_many()
                .col_expr(api_keys::Column::LastUsedAt, Expr::value(*at))
                .filter(api_keys::Column::Digest.eq(digest.to_hex()))
                .filter(Condition::any().add(api_keys::Column::LastUsedAt.is_null()).add(api_keys::Column::LastUsedAt.lt(*at)))
                .exec(&txn)
                .await
                .map_err(db)?;
        }
        txn.commit().await.map_err(db)
    }
}
