//! The change log that pools sharing a SQLite file poll, to hear of each other's
//! changes (PostgreSQL sends them with NOTIFY instead and leaves it empty). Rows are
//! kept for a minute.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ChangeLog {
    Table,
    Seq,
    Change,
    /// When the change was published, in milliseconds since the Unix epoch.
    AtMillis,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ChangeLog::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ChangeLog::Seq).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(ChangeLog::Change).text().not_null())
                    .col(ColumnDef::new(ChangeLog::AtMillis).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ChangeLog::Table).to_owned()).await
    }
}
