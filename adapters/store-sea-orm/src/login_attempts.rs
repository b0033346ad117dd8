//! [`LoginAttemptStore`] on the `login_attempts` table: one upsert counts an attempt or
//! begins a new window, atomically on both databases (`INSERT ... ON CONFLICT DO UPDATE`,
//! whose `SET` expressions all read the row as it was).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::identity::{AttemptWindow, Email};
use nexus_ports::ports::LoginAttemptStore;
use nexus_ports::tokens::SecretDigest;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use crate::SqlStore;
use crate::entity::login_attempts as attempts;
use crate::error::db;

/// The key of an account: the digest of its normalised email, so that the emails tried
/// (mostly not anyone's) are not kept in the clear.
fn account_key(account: &Email) -> String {
    SecretDigest::of(account.as_str()).to_hex()
}

#[async_trait]
impl LoginAttemptStore for SqlStore {
    async fn count_login_attempt(&self, account: &Email, now: DateTime<Utc>, window_from: DateTime<Utc>) -> Result<AttemptWindow> {
        let key = account_key(account);
        let stale = || Expr::col((attempts::Entity, attempts::Column::WindowStartedAt)).lt(window_from);
        let upsert = OnConflict::column(attempts::Column::Account)
            .value(attempts::Column::Attempts, Expr::case(stale(), 1).finally(Expr::col((attempts::Entity, attempts::Column::Attempts)).add(1)))
            .value(attempts::Column::WindowStartedAt, Expr::case(stale(), now).finally(Expr::col((attempts::Entity, attempts::Column::WindowStartedAt))))
            .to_owned();
        let row = attempts::ActiveModel { account: Set(key.clone()), window_started_at: Set(now), attempts: Set(1) };
        let txn = self.db.begin().await.map_err(db)?;
        attempts::Entity::insert(row).on_conflict(upsert).exec_without_returning(&txn).await.map_err(db)?;
        let counted = attempts::Entity::find_by_id(key).one(&txn).await.map_err(db)?.ok_or_else(|| Error::internal("the counted login attempt vanished"))?;
        txn.commit().await.map_err(db)?;
        Ok(AttemptWindow { started_at: counted.window_started_at, attempts: u32::try_from(counted.attempts).unwrap_or(u32::MAX) })
    }

    async fn clear_login_attempts(&self, account: &Email) -> Result<()> {
        attempts::Entity::delete_by_id(account_key(account)).exec(&self.db).await.map_err(db)?;
        Ok(())
    }

    async fn prune_login_attempts(&self, window_from: DateTime<Utc>) -> Result<u64> {
        let pruned = attempts::Entity::delete_many().filter(attempts::Column::WindowStartedAt.lt(window_from)).exec(&self.db).await.map_err(db)?;
        Ok(pruned.rows_affected)
    }
}
