//! [`SettingsStore`] on the `settings` table: insert-if-absent, then read back, so racing
//! replicas agree on whichever value landed first.

use async_trait::async_trait;
use nexus_ports::ports::SettingsStore;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait};

use crate::SqlStore;
use crate::entity::settings;
use crate::error::db;

#[async_trait]
impl SettingsStore for SqlStore {
    async fn get_or_insert_setting(&self, key: &str, candidate: &str) -> Result<String> {
        let row = settings::ActiveModel { key: Set(key.to_owned()), value: Set(candidate.to_owned()) };
        settings::Entity::insert(row)
            .on_conflict(OnConflict::column(settings::Column::Key).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await
            .map_err(db)?;
        let stored = settings::Entity::find_by_id(key.to_owned()).one(&self.reads).await.map_err(db)?;
        stored.map(|s| s.value).ok_or_else(|| Error::Internal(format!("setting {key} vanished after insert")))
    }
}
