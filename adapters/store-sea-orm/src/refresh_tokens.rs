//! [`RefreshTokenStore`] on the `refresh_tokens` table.
//!
//! Rotation writes first: the conditional `UPDATE ... WHERE revoked_at IS NULL` is what
//! decides the one winner among concurrent rotations. On PostgreSQL the losers block on
//! the row lock and then match nothing; on SQLite the write lock serialises them. Reading
//! before writing would let two SQLite readers both try to upgrade and fail.
//!
//! Every write of a new token first writes its user's row (see `users`), so that ending
//! the user's sessions concurrently cannot leave the new token live.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::audit::AuditEvent;
use nexus_ports::identity::UserId;
use nexus_ports::ports::RefreshTokenStore;
use nexus_ports::tokens::{FamilyId, RefreshTokenRecord, Replacement, Rotation, SecretDigest};
use nexus_ports::{Error, Result};
use sea_orm::sea_query::{Condition, Expr, Query};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};

use crate::SqlStore;
use crate::audit::record;
use crate::entity::{refresh_tokens as tokens, users};
use crate::error::{db, translate};
use crate::users::sessions_allowed_at;

struct Row<'a> {
    digest: &'a SecretDigest,
    user_id: &'a UserId,
    family_id: &'a FamilyId,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    session_expires_at: DateTime<Utc>,
}

async fn insert(conn: &impl ConnectionTrait, row: Row<'_>) -> Result<()> {
    let model = tokens::ActiveModel {
        digest: Set(row.digest.to_hex()),
        user_id: Set(row.user_id.as_uuid()),
        family_id: Set(row.family_id.0),
        issued_at: Set(row.issued_at),
        expires_at: Set(row.expires_at.min(row.session_expires_at)),
        revoked_at: Set(None),
        replaced_by: Set(None),
        session_expires_at: Set(Some(row.session_expires_at)),
    };
    tokens::Entity::insert(model).exec_without_returning(conn).await.map_err(|e| translate(e, "refresh token"))?;
    Ok(())
}

#[async_trait]
impl RefreshTokenStore for SqlStore {
    async fn insert_refresh_token<'a>(&self, t: &RefreshTokenRecord, audit: Option<&'a AuditEvent>) -> Result<()> {
        let txn = self.db.begin().await.map_err(db)?;
        let allowed = users::Entity::update_many()
            .col_expr(users::Column::Id, Expr::col(users::Column::Id))
            .filter(users::Column::Id.eq(t.user_id.as_uuid()))
            .filter(sessions_allowed_at(t.issued_at))
            .exec(&txn)
            .await
            .map_err(db)?;
        if allowed.rows_affected == 0 {
            return Err(match users::Entity::find_by_id(t.user_id.as_uuid()).one(&txn).await.map_err(db)? {
                Some(_) => Error::unauthorized("the sessions of this user were ended while it signed in; log in again"),
                None => Error::NotFound("refresh token refers to a user that does not exist".to_owned()),
            });
        }
        let row = Row {
            digest: &t.digest,
            user_id: &t.user_id,
            family_id: &t.family_id,
            issued_at: t.issued_at,
            expires_at: t.expires_at,
            session_expires_at: t.session_expires_at,
        };
        insert(&txn, row).await?;
        if let Some(audit) = audit {
            record(&txn, audit).await?;
        }
        txn.commit().await.map_err(db)
    }

    async fn rotate_refresh_token(&self, presented: &SecretDigest, replacement: &Replacement, now: DateTime<Utc>) -> Result<Rotation> {
        let txn = self.db.begin().await.map_err(db)?;
        let owner = Query::select().column(tokens::Column::UserId).from(tokens::Entity).and_where(tokens::Column::Digest.eq(presented.to_hex())).to_owned();
        users::Entity::update_many()
            .col_expr(users::Column::Id, Expr::col(users::Column::Id))
            .filter(users::Column::Id.in_subquery(owner))
            .exec(&txn)
            .await
            .map_err(db)?;
        let claimed = tokens::Entity::update_many()
            .col_expr(tokens::Column::RevokedAt, Expr::value(now))
            .col_expr(tokens::Column::ReplacedBy, Expr::value(replacement.digest.to_hex()))
            .filter(tokens::Column::Digest.eq(presented.to_hex()))
            .filter(tokens::Column::RevokedAt.is_null())
            .exec(&txn)
            .await
            .map_err(db)?
            .rows_affected;
        let Some(current) = tokens::Entity::find_by_id(presented.to_hex()).one(&txn).await.map_err(db)? else {
            return Ok(Rotation::Unknown);
        };
        let (user_id, family_id) = (UserId::from_uuid(current.user_id), FamilyId(current.family_id));
        if claimed == 0 {
            return Ok(Rotation::Reused { user_id, family_id });
        }
        // Dropping the transaction rolls the claim back: a token past its end stays as it was.
        let session_expires_at = current.session_expires_at.unwrap_or(current.expires_at);
        if session_expires_at <= now {
            return Ok(Rotation::SessionEnded);
        }
        if current.expires_at <= now {
            return Ok(Rotation::Expired);
        }
        let row = Row {
            digest: &replacement.digest,
            user_id: &user_id,
            family_id: &family_id,
            issued_at: replacement.issued_at,
            expires_at: replacement.expires_at,
            session_expires_at,
        };
        insert(&txn, row).await?;
        txn.commit().await.map_err(db)?;
        Ok(Rotation::Rotated { user_id, family_id, expires_at: replacement.expires_at.min(session_expires_at) })
    }

    async fn revoke_family<'a>(&self, family: &FamilyId, now: DateTime<Utc>, audit: Option<&'a AuditEvent>) -> Result<u64> {
        let txn = self.db.begin().await.map_err(db)?;
        let result = tokens::Entity::update_many()
            .col_expr(tokens::Column::RevokedAt, Expr::value(now))
            .filter(tokens::Column::FamilyId.eq(family.0))
            .filter(tokens::Column::RevokedAt.is_null())
            .exec(&txn)
            .await
            .map_err(db)?;
        if let Some(audit) = audit {
            record(&txn, audit).await?;
        }
        txn.commit().await.map_err(db)?;
        Ok(result.rows_affected)
    }

    async fn session_is_live(&self, family: &FamilyId) -> Result<bool> {
        let live = tokens::Entity::find()
            .select_only()
            .column(tokens::Column::Digest)
            .filter(tokens::Column::FamilyId.eq(family.0))
            .filter(tokens::Column::RevokedAt.is_null())
            .into_tuple::<String>()
            .one(&self.db)
            .await
            .map_err(db)?;
        Ok(live.is_some())
    }

    async fn family_of(&self, digest: &SecretDigest) -> Result<Option<(FamilyId, UserId)>> {
        let found: Option<(uuid::Uuid, uuid::Uuid)> = tokens::Entity::find_by_id(digest.to_hex())
            .select_only()
            .column(tokens::Column::FamilyId)
            .column(tokens::Column::UserId)
            .into_tuple()
            .one(&self.reads)
            .await
            .map_err(db)?;
        Ok(found.map(|(family, user)| (FamilyId(family), UserId::from_uuid(user))))
    }

    async fn prune_refresh_tokens(&self, now: DateTime<Utc>) -> Result<u64> {
        let live_families = Query::select()
            .column(tokens::Column::FamilyId)
            .from(tokens::Entity)
            .and_where(tokens::Column::RevokedAt.is_null())
            .and_where(tokens::Column::ExpiresAt.gt(now))
            .to_owned();
        let pruned = tokens::Entity::delete_many()
            .filter(Condition::any().add(tokens::Column::ExpiresAt.lte(now)).add(tokens::Column::FamilyId.not_in_subquery(live_families)))
            .exec(&self.db)
            .await
            .map_err(db)?;
        Ok(pruned.rows_affected)
    }
}
