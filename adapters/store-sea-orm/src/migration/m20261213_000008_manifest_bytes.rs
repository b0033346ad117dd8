//! The size of each agent's manifest beside it, so that a tenant's manifest budget is
//! checked without reading its manifests. Rows that existed before get the length of
//! their text (bytes on PostgreSQL; characters on SQLite, the same for the ASCII that
//! serialized manifests almost always are).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Agents {
    Table,
    ManifestBytes,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Agents::Table).add_column(ColumnDef::new(Agents::ManifestBytes).big_integer().not_null().default(0)).to_owned())
            .await?;
        let length = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "octet_length(manifest)",
            _ => "length(manifest)",
        };
        manager.get_connection().execute_unprepared(&format!("UPDATE agents SET manifest_bytes = {length}")).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Agents::Table).drop_column(Agents::ManifestBytes).to_owned()).await
    }
}
