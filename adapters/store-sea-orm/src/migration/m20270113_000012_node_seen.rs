//! When the leader last saw each node holding every Running agent as it should: one time
//! per node and resync period, instead of a status write per agent. Statuses join it when
//! they are read (a Running agent's `lastSyncedAt` is the later of its own time and its
//! node's).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ClusterNodes {
    Table,
    /// The node's endpoint, as tenants' statuses name it.
    Endpoint,
    /// Microseconds since the Unix epoch.
    SeenMicros,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClusterNodes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ClusterNodes::Endpoint).string().not_null().primary_key())
                    .col(ColumnDef::new(ClusterNodes::SeenMicros).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ClusterNodes::Table).to_owned()).await
    }
}
