//! The leader lease's generation: one more on every acquisition (never on a renewal), so
//! that each term of leadership has a number and the leader's status writes can be
//! conditional on its term still being the lease's current one.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum LeaderLease {
    Table,
    Generation,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(LeaderLease::Table).add_column(ColumnDef::new(LeaderLease::Generation).big_integer().not_null().default(0)).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(LeaderLease::Table).drop_column(LeaderLease::Generation).to_owned()).await
    }
}
