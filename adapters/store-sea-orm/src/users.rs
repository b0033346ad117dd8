//! [`UserStore`] on the `users` table.
//!
//! Ending a user's sessions writes the user's row first, and so does every write of a new
//! refresh token (`refresh_tokens`): on PostgreSQL the row lock orders them, so a token
//! written concurrently is either refused or revoked with the rest, never left live; on
//! SQLite the write lock does the same.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::audit::AuditEvent;
use nexus_ports::identity::{DisplayName, Email, NewUser, PasswordHash, User, UserCredentials, UserId};
use nexus_ports::ports::UserStore;
use nexus_ports::{Error, Result};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{refresh_tokens as tokens, users};
use crate::error::{db, translate};

fn credentials(row: users::Model) -> Result<UserCredentials> {
    Ok(UserCredentials {
        user: User {
            id: UserId::from_uuid(row.id),
            email: Email::parse(&row.email)?,
            display_name: DisplayName::parse(&row.display_name)?,
            created_at: row.created_at,
        },
        password_hash: PasswordHash::from_phc(row.password_hash),
    })
}

fn no_such_user() -> Error {
    Error::NotFound("no such user".to_owned())
}

/// Whether sessions that began at `at` are still allowed: none were ended after it.
pub(crate) fn sessions_allowed_at(at: DateTime<Utc>) -> Condition {
    Condition::any().add(users::Column::SessionsValidAfter.is_null()).add(users::Column::SessionsValidAfter.lte(at))
}

/// Ends every session of `user` at `at` inside `txn`: moves the user's cut-off forward
/// (never back) and revokes its live refresh tokens.
async fn end_sessions_in(txn: &impl ConnectionTrait, user: &UserId, at: DateTime<Utc>) -> Result<()> {
    let moved = users::Entity::update_many()
        .col_expr(users::Column::SessionsValidAfter, Expr::value(at))
        .filter(users::Column::Id.eq(user.as_uuid()))
        .filter(Condition::any().add(users::Column::SessionsValidAfter.is_null()).add(users::Column::SessionsValidAfter.lt(at)))
        .exec(txn)
        .await
        .map_err(db)?;
    if moved.rows_affected == 0 && users::Entity::find_by_id(user.as_uuid()).one(txn).await.map_err(db)?.is_none() {
        return Err(no_such_user());
    }
    tokens::Entity::update_many()
        .col_expr(tokens::Column::RevokedAt, Expr::value(at))
        .filter(tokens::Column::UserId.eq(user.as_uuid()))
        .filter(tokens::Column::RevokedAt.is_null())
        .exec(txn)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl UserStore for SqlStore {
    async fn insert_user(&self, new: &NewUser, audit: &AuditEvent) -> Result<()> {
        let row = users::ActiveModel {
            id: Set(new.user.id.as_uuid()),
            email: Set(new.user.email.as_str().to_owned()),
            display_name: Set(new.user.display_name.as_str().to_owned()),
            password_hash: Set(new.password_hash.as_phc().to_owned()),
            created_at: Set(new.user.created_at),
            sessions_valid_after: Set(None),
        };
        let txn = self.db.begin().await.map_err(db)?;
        users::Entity::insert(row).exec_without_returning(&txn).await.map_err(|e| translate(e, "a user with this email"))?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn find_credentials(&self, email: &Email) -> Result<Option<UserCredentials>> {
        let row = users::Entity::find().filter(users::Column::Email.eq(email.as_str())).one(&self.reads).await.map_err(db)?;
        row.map(credentials).transpose()
    }

    async fn find_user(&self, id: &UserId) -> Result<Option<User>> {
        let row = users::Entity::find_by_id(id.as_uuid()).one(&self.reads).await.map_err(db)?;
        Ok(row.map(credentials).transpose()?.map(|c| c.user))
    }

    async fn change_password(&self, user: &UserId, hash: &PasswordHash, at: DateTime<Utc>, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        let changed = users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, Expr::value(hash.as_phc()))
            .filter(users::Column::Id.eq(user.as_uuid()))
            .exec(&txn)
            .await
            .map_err(db)?;
        if changed.rows_affected == 0 {
            return Err(no_such_user());
        }
        end_sessions_in(&txn, user, at).await?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn end_sessions(&self, user: &UserId, at: DateTime<Utc>, audit: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        end_sessions_in(&txn, user, at).await?;
        record(&txn, audit).await?;
        txn.commit().await.map_err(db)
    }

    async fn sessions_valid_after(&self, user: &UserId) -> Result<Option<DateTime<Utc>>> {
        let cutoff: Option<Option<DateTime<Utc>>> = users::Entity::find_by_id(user.as_uuid())
            .select_only()
            .column(users::Column::SessionsValidAfter)
            .into_tuple()
            .one(&self.reads)
            .await
            .map_err(db)?;
        Ok(cutoff.flatten())
    }
}
