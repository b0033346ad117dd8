//! Failed-login limits: login attempts per account, counted in fixed windows, keyed by
//! the digest of the account's email.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum LoginAttempts {
    Table,
    Account,
    WindowStartedAt,
    Attempts,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LoginAttempts::Table)
                    .col(ColumnDef::new(LoginAttempts::Account).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(LoginAttempts::WindowStartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(LoginAttempts::Attempts).integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(LoginAttempts::Table).to_owned()).await
    }
}
