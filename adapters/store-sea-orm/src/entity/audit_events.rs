//! `audit_events`: the audit trail, one row per event, in `seq` order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub id: Uuid,
    pub at: DateTimeUtc,
    pub tenant_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub source_ip: Option<String>,
    /// The client's own id for the request (its `X-Request-ID`).
    pub correlation_id: Option<String>,
    /// Refusals only: how many times in the row's minute.
    pub count: Option<i32>,
    /// Refusals only: the trail, actor, cause and minute the row counts.
    pub dedup_key: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
