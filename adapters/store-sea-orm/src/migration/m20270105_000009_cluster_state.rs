//! The cluster state that replicas sharing one database share: what the database-held
//! cluster backend holds of each tenant's node and each agent object (desired manifest,
//! generation, status, deletion), and the lease that elects the one replica that
//! reconciles. Tenants and agents are named as the store names them, without foreign
//! keys: a deleted tenant's objects stay until the leader has removed them from the node.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ClusterTenants {
    Table,
    TenantId,
    Phase,
    Namespace,
    NodeEndpoint,
    Message,
    /// Deprovisioned: the row goes with the tenant's last agent object.
    Terminating,
}

#[derive(DeriveIden)]
enum ClusterAgents {
    Table,
    TenantId,
    Name,
    Version,
    Manifest,
    Generation,
    ObservedGeneration,
    Phase,
    NodeAck,
    /// Microseconds since the Unix epoch.
    LastSyncedMicros,
    Message,
    Deleting,
}

#[derive(DeriveIden)]
enum LeaderLease {
    Table,
    Name,
    Holder,
    /// When the lease ends, in milliseconds since the Unix epoch on the database's clock.
    ExpiresMillis,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClusterTenants::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ClusterTenants::TenantId).string().not_null().primary_key())
                    .col(ColumnDef::new(ClusterTenants::Phase).string().not_null())
                    .col(ColumnDef::new(ClusterTenants::Namespace).string())
                    .col(ColumnDef::new(ClusterTenants::NodeEndpoint).text())
                    .col(ColumnDef::new(ClusterTenants::Message).text())
                    .col(ColumnDef::new(ClusterTenants::Terminating).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClusterAgents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ClusterAgents::TenantId).string().not_null())
                    .col(ColumnDef::new(ClusterAgents::Name).string().not_null())
                    .col(ColumnDef::new(ClusterAgents::Version).string())
                    .col(ColumnDef::new(ClusterAgents::Manifest).text().not_null())
                    .col(ColumnDef::new(ClusterAgents::Generation).big_integer().not_null())
                    .col(ColumnDef::new(ClusterAgents::ObservedGeneration).big_integer().not_null())
                    .col(ColumnDef::new(ClusterAgents::Phase).string().not_null())
                    .col(ColumnDef::new(ClusterAgents::NodeAck).boolean().not_null())
                    .col(ColumnDef::new(ClusterAgents::LastSyncedMicros).big_integer())
                    .col(ColumnDef::new(ClusterAgents::Message).text())
                    .col(ColumnDef::new(ClusterAgents::Deleting).boolean().not_null())
                    .primary_key(Index::create().col(ClusterAgents::TenantId).col(ClusterAgents::Name))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LeaderLease::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(LeaderLease::Name).string().not_null().primary_key())
                    .col(ColumnDef::new(LeaderLease::Holder).string().not_null())
                    .col(ColumnDef::new(LeaderLease::ExpiresMillis).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [LeaderLease::Table.into_iden(), ClusterAgents::Table.into_iden(), ClusterTenants::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
