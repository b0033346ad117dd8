//! Sessions that end: when each user's sessions were last ended, and the absolute end of
//! each refresh-token family.
//!
//! Families that existed before get their current token's expiry as their end: they
//! can no longer be stretched by rotation, and their users log in again once.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    SessionsValidAfter,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    UserId,
    ExpiresAt,
    SessionExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Users::Table).add_column(ColumnDef::new(Users::SessionsValidAfter).timestamp_with_time_zone().null()).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(RefreshTokens::Table)
                    .add_column(ColumnDef::new(RefreshTokens::SessionExpiresAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(RefreshTokens::Table)
                    .value(RefreshTokens::SessionExpiresAt, Expr::col(RefreshTokens::ExpiresAt))
                    .and_where(Expr::col(RefreshTokens::SessionExpiresAt).is_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("idx_refresh_tokens_user").table(RefreshTokens::Table).col(RefreshTokens::UserId).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("idx_refresh_tokens_user").table(RefreshTokens::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(RefreshTokens::Table).drop_column(RefreshTokens::SessionExpiresAt).to_owned()).await?;
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Users::SessionsValidAfter).to_owned()).await
    }
}
