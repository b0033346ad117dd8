//! The audit trail: one row per event, ordered by `seq`. Rows keep no foreign key to their
//! tenant or user, so that a user's trail still shows a tenant it deleted; they go when
//! their retention ends.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Seq,
    Id,
    At,
    TenantId,
    UserId,
    Actor,
    Action,
    Target,
    RequestId,
    SourceIp,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(ColumnDef::new(AuditEvents::Seq).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(AuditEvents::Id).uuid().not_null().unique_key())
                    .col(ColumnDef::new(AuditEvents::At).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(AuditEvents::TenantId).uuid().null())
                    .col(ColumnDef::new(AuditEvents::UserId).uuid().null())
                    .col(ColumnDef::new(AuditEvents::Actor).string_len(160).not_null())
                    .col(ColumnDef::new(AuditEvents::Action).string_len(40).not_null())
                    .col(ColumnDef::new(AuditEvents::Target).string_len(160).not_null())
                    .col(ColumnDef::new(AuditEvents::RequestId).string_len(128).null())
                    .col(ColumnDef::new(AuditEvents::SourceIp).string_len(45).null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in [("ix_audit_events_tenant", AuditEvents::TenantId), ("ix_audit_events_user", AuditEvents::UserId)] {
            manager.create_index(Index::create().name(name).table(AuditEvents::Table).col(column).col(AuditEvents::Seq).to_owned()).await?;
        }
        manager.create_index(Index::create().name("ix_audit_events_at").table(AuditEvents::Table).col(AuditEvents::At).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AuditEvents::Table).to_owned()).await
    }
}
