//! Versions you can open and roll back to: each version keeps its manifest, and each agent
//! keeps the number of its current version (what its ETag names and `If-Match` compares).
//!
//! Agents that existed before get their newest version's number, and that version gets
//! their current manifest; older versions stay without one (their manifest was never kept).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Agents {
    Table,
    VersionNumber,
}

#[derive(DeriveIden)]
enum AgentVersions {
    Table,
    Manifest,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Agents::Table).add_column(ColumnDef::new(Agents::VersionNumber).integer().not_null().default(1)).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(AgentVersions::Table).add_column(ColumnDef::new(AgentVersions::Manifest).text().null()).to_owned()).await?;
        // Plain SQL both databases read alike: correlated subqueries on the version history.
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE agents SET version_number = COALESCE((SELECT MAX(v.number) FROM agent_versions v \
             WHERE v.tenant_id = agents.tenant_id AND v.name = agents.name), 1)",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE agent_versions SET manifest = (SELECT a.manifest FROM agents a \
             WHERE a.tenant_id = agent_versions.tenant_id AND a.name = agent_versions.name AND a.version_number = agent_versions.number) \
             WHERE manifest IS NULL",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(AgentVersions::Table).drop_column(AgentVersions::Manifest).to_owned()).await?;
        manager.alter_table(Table::alter().table(Agents::Table).drop_column(Agents::VersionNumber).to_owned()).await
    }
}
