//! [`AuditStore`] on the `audit_events` table, and [`record`], which the other stores call
//! inside the transaction of the change an event records.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::Result;
use nexus_ports::audit::{AuditAction, AuditCursor, AuditEvent, AuditEventId, AuditPage};
use nexus_ports::identity::UserId;
use nexus_ports::ports::AuditStore;
use nexus_ports::tenancy::TenantId;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::SqlStore;
use crate::entity::{audit_events as events, revoked_keys};
use crate::error::db;

fn row(event: &AuditEvent) -> events::ActiveModel {
    events::ActiveModel {
        seq: NotSet,
        id: Set(event.id.as_uuid()),
        at: Set(event.at),
        tenant_id: Set(event.tenant.map(|t| t.as_uuid())),
        user_id: Set(event.user.map(|u| u.as_uuid())),
        actor: Set(event.actor.clone()),
        action: Set(event.action.as_str().to_owned()),
        target: Set(event.target.clone()),
        request_id: Set(event.request_id.clone()),
        source_ip: Set(event.source_ip.clone()),
        correlation_id: Set(event.correlation_id.clone()),
        count: Set(event.count.map(|count| i32::try_from(count).unwrap_or(i32::MAX))),
        dedup_key: Set(None),
    }
}

/// Writes `event` on `conn` (the transaction of the change it records), and sends what
/// the change makes stale ([`AuditEvent::change`]) to every replica in the same
/// transaction: PostgreSQL delivers a `NOTIFY` at commit, and a row of the change log
/// commits with the change, so a change is never committed without the others being told
/// (and a failed announcement fails the change).
pub(crate) async fn record(conn: &impl ConnectionTrait, event: &AuditEvent) -> Result<()> {
    events::Entity::insert(row(event)).exec_without_returning(conn).await.map_err(db)?;
    if let Some(change) = event.change() {
        crate::changes::announce_in(conn, &change).await?;
    }
    Ok(())
}

fn event(row: events::Model) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: AuditEventId::from_uuid(row.id),
        at: row.at,
        actor: row.actor,
        action: AuditAction::parse(&row.action)?,
        target: row.target,
        tenant: row.tenant_id.map(TenantId::from_uuid),
        user: row.user_id.map(UserId::from_uuid),
        request_id: row.request_id,
        correlation_id: row.correlation_id,
        source_ip: row.source_ip,
        count: row.count.map(|count| u32::try_from(count).unwrap_or(0)),
    })
}

impl SqlStore {
    async fn page(&self, column: events::Column, owner: sea_orm::prelude::Uuid, limit: u32, after: Option<AuditCursor>) -> Result<AuditPage> {
        let limit = std::cmp::max(limit, 1);
        let mut query = events::Entity::find().filter(column.eq(owner));
        if let Some(cursor) = after {
            // The page goes on after the cursor's event; when retention took it, after its
            // time (every event older than it went with it).
            let seq: Option<i64> = events::Entity::find()
                .select_only()
                .column(events::Column::Seq)
                .filter(events::Column::Id.eq(cursor.id.as_uuid()))
                .filter(column.eq(owner))
                .into_tuple()
                .one(&self.reads)
                .await
                .map_err(db)?;
            query = match seq {
                Some(seq) => query.filter(events::Column::Seq.lt(seq)),
                None => query.filter(events::Column::At.lt(cursor.at)),
            };
        }
        // One more than asked says whether there is a next page.
        let mut rows = query.order_by_desc(events::Column::Seq).limit(u64::from(limit) + 1).all(&self.reads).await.map_err(db)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(|row| AuditCursor { id: AuditEventId::from_uuid(row.id), at: row.at }) } else { None };
        let events = rows.into_iter().map(event).collect::<Result<Vec<_>>>()?;
        Ok(AuditPage { events, next })
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn record_event(&self, e: &AuditEvent) -> Result<()> {
        record(&self.db, e).await
    }

    async fn tenant_events(&self, tenant: &TenantId, limit: u32, after: Option<AuditCursor>) -> Result<AuditPage> {
        self.page(events::Column::TenantId, tenant.as_uuid(), limit, after).await
    }

    async fn user_events(&self, user: &UserId, limit: u32, after: Option<AuditCursor>) -> Result<AuditPage> {
        self.page(events::Column::UserId, user.as_uuid(), limit, after).await
    }

    async fn record_refusals(&self, e: &AuditEvent, count: u32) -> Result<()> {
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        let mut model = row(e);
        model.count = Set(Some(count));
        model.dedup_key = Set(Some(e.dedup_key()));
        // The existing row's count, qualified by its table: PostgreSQL and SQLite both read
        // it so in `ON CONFLICT ... DO UPDATE`.
        let add =
            OnConflict::column(events::Column::DedupKey).value(events::Column::Count, Expr::col((events::Entity, events::Column::Count)).add(count)).to_owned();
        events::Entity::insert(model).on_conflict(add).exec_without_returning(&self.db).await.map_err(db)?;
        Ok(())
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let deleted = events::Entity::delete_many().filter(events::Column::At.lt(before)).exec(&self.db).await.map_err(db)?;
        revoked_keys::Entity::delete_many().filter(revoked_keys::Column::RevokedAt.lt(before)).exec(&self.db).await.map_err(db)?;
        Ok(deleted.rows_affected)
    }
}
