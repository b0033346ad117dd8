//! The agent registry: one row per agent with its current manifest, and its version
//! history (number, semver, checksum, author, time per publish).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    TenantId,
    Name,
    Manifest,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentVersions {
    Table,
    TenantId,
    Name,
    Number,
    Version,
    Checksum,
    Author,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .col(ColumnDef::new(Agents::TenantId).uuid().not_null())
                    .col(ColumnDef::new(Agents::Name).string_len(63).not_null())
                    .col(ColumnDef::new(Agents::Manifest).text().not_null())
                    .col(ColumnDef::new(Agents::Version).string().null())
                    .col(ColumnDef::new(Agents::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Agents::UpdatedAt).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(Agents::TenantId).col(Agents::Name))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_agents_tenant")
                            .from(Agents::Table, Agents::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AgentVersions::Table)
                    .col(ColumnDef::new(AgentVersions::TenantId).uuid().not_null())
                    .col(ColumnDef::new(AgentVersions::Name).string_len(63).not_null())
                    .col(ColumnDef::new(AgentVersions::Number).integer().not_null())
                    .col(ColumnDef::new(AgentVersions::Version).string().null())
                    .col(ColumnDef::new(AgentVersions::Checksum).string_len(64).not_null())
                    .col(ColumnDef::new(AgentVersions::Author).string().not_null())
                    .col(ColumnDef::new(AgentVersions::CreatedAt).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(AgentVersions::TenantId).col(AgentVersions::Name).col(AgentVersions::Number))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_agent_versions_agent")
                            .from(AgentVersions::Table, (AgentVersions::TenantId, AgentVersions::Name))
                            .to(Agents::Table, (Agents::TenantId, Agents::Name))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AgentVersions::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Agents::Table).to_owned()).await
    }
}
