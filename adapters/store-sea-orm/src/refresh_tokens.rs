//! [`RefreshTokenStore`] on the `refresh_tokens` table.
//!
//! Rotation writes first: the conditional `UPDATE ... WHERE revoked_at IS NULL` is what
//! decides the one winner among concurrent rotations. On PostgreSQL the losers block on
//! the row lock and then match nothing; on SQLite the write lock serialises them. Reading
//! before writing would let two SQLite readers both try to upgrade and fail.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nexus_ports::Result;
use nexus_ports::identity::UserId;
use nexus_ports::ports::RefreshTokenStore;
use nexus_ports::tokens::{FamilyId, RefreshTokenRecord, Replacement, Rotation, SecretDigest};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use crate::SqlStore;
use crate::entity::refresh_tokens as tokens;
use crate::error::{db, translate};

fn row(digest: &SecretDigest, user_id: &UserId, family_id: &FamilyId, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> tokens::ActiveModel {
    tokens::ActiveModel {
        digest: Set(digest.to_hex()),
        user_id: Set(user_id.as_uuid()),
        family_id: Set(family_id.0),
        issued_at: Set(issued_at),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        replaced_by: Set(None),
    }
}

#[async_trait]
impl RefreshTokenStore for SqlStore {
    async fn insert_refresh_token(&self, t: &RefreshTokenRecord) -> Result<()> {
        tokens::Entity::insert(row(&t.digest, &t.user_id, &t.family_id, t.issued_at, t.expires_at))
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| translate(e, "refresh token"))?;
        Ok(())
    }

    async fn rotate_refresh_token(&self, presented: &SecretDigest, replacement: &Replacement, now: DateTime<Utc>) -> Result<Rotation> {
        let txn = self.db.begin().await.map_err(db)?;
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
        if current.expires_at <= now {
            // Dropping the transaction rolls the claim back: an expired token stays as it was.
            return Ok(Rotation::Expired);
        }
        tokens::Entity::insert(row(&replacement.digest, &user_id, &family_id, replacement.issued_at, replacement.expires_at))
            .exec_without_returning(&txn)
            .await
            .map_err(|e| translate(e, "refresh token"))?;
        txn.commit().await.map_err(db)?;
        Ok(Rotation::Rotated { user_id, family_id })
    }

    async fn revoke_family(&self, family: &FamilyId, now: DateTime<Utc>) -> Result<u64> {
        let result = tokens::Entity::update_many()
            .col_expr(tokens::Column::RevokedAt, Expr::value(now))
            .filter(tokens::Column::FamilyId.eq(family.0))
            .filter(tokens::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(db)?;
        Ok(result.rows_affected)
    }
}
