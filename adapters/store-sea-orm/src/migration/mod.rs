//! Schema migrations, one file each, applied in order at start-up on SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;

mod m20261128_000001_identity;
mod m20261128_000002_tenancy;
mod m20261128_000003_agents;
mod m20261205_000004_login_attempts;
mod m20261205_000005_sessions;
mod m20261212_000006_version_manifests;
mod m20261212_000007_key_scopes;
mod m20261213_000007_audit_events;
mod m20261213_000008_manifest_bytes;
mod m20261229_000008_change_log;
mod m20270105_000009_cluster_state;
mod m20270110_000010_lease_generation;
mod m20270112_000011_audit_evidence;
mod m20270113_000012_node_seen;

/// Every migration of the store.
pub(crate) struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_identity::Migration),
            Box::new(m20261128_000002_tenancy::Migration),
            Box::new(m20261128_000003_agents::Migration),
            Box::new(m20261205_000004_login_attempts::Migration),
            Box::new(m20261205_000005_sessions::Migration),
            Box::new(m20261212_000006_version_manifests::Migration),
            Box::new(m20261212_000007_key_scopes::Migration),
            Box::new(m20261213_000007_audit_events::Migration),
            Box::new(m20261213_000008_manifest_bytes::Migration),
            Box::new(m20261229_000008_change_log::Migration),
            Box::new(m20270105_000009_cluster_state::Migration),
            Box::new(m20270110_000010_lease_generation::Migration),
            Box::new(m20270112_000011_audit_evidence::Migration),
            Box::new(m20270113_000012_node_seen::Migration),
        ]
    }
}
