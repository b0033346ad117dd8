//! The audit trail as evidence: each event keeps the client's correlation id apart from the
//! server's request id; refusals are counted (`count`), one row per trail, actor, cause and
//! minute (`dedup_key`, unique, so that replicas add to one row); and revoked keys are
//! remembered (by digest, with their tenant and label) so that their later use can be
//! recorded in their tenant's trail. Rows of both go with the trail's retention.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    CorrelationId,
    Count,
    DedupKey,
}

#[derive(DeriveIden)]
enum RevokedKeys {
    Table,
    Digest,
    TenantId,
    Label,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ColumnDef::new(AuditEvents::CorrelationId).string_len(128).null().to_owned(),
            ColumnDef::new(AuditEvents::Count).integer().null().to_owned(),
            ColumnDef::new(AuditEvents::DedupKey).string_len(64).null().to_owned(),
        ] {
            manager.alter_table(Table::alter().table(AuditEvents::Table).add_column(column).to_owned()).await?;
        }
        manager.create_index(Index::create().name("ux_audit_events_dedup").table(AuditEvents::Table).col(AuditEvents::DedupKey).unique().to_owned()).await?;
        manager
            .create_table(
                Table::create()
                    .table(RevokedKeys::Table)
                    .col(ColumnDef::new(RevokedKeys::Digest).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(RevokedKeys::TenantId).uuid().not_null())
                    .col(ColumnDef::new(RevokedKeys::Label).string_len(160).not_null())
                    .col(ColumnDef::new(RevokedKeys::RevokedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("ix_revoked_keys_at").table(RevokedKeys::Table).col(RevokedKeys::RevokedAt).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RevokedKeys::Table).to_owned()).await?;
        manager.drop_index(Index::drop().name("ux_audit_events_dedup").table(AuditEvents::Table).to_owned()).await?;
        for column in [AuditEvents::DedupKey, AuditEvents::Count, AuditEvents::CorrelationId] {
            manager.alter_table(Table::alter().table(AuditEvents::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
