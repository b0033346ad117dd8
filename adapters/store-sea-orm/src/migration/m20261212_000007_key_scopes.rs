//! Scoped and expiring API keys: what each key may do (`write`, or `read`: reads only) and
//! when it stops working. Keys that existed before keep doing everything, for good.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Scope,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(ApiKeys::Table).add_column(ColumnDef::new(ApiKeys::Scope).string_len(16).not_null().default("write")).to_owned())
            .await?;
        manager
            .alter_table(Table::alter().table(ApiKeys::Table).add_column(ColumnDef::new(ApiKeys::ExpiresAt).timestamp_with_time_zone().null()).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::ExpiresAt).to_owned()).await?;
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::Scope).to_owned()).await
    }
}
