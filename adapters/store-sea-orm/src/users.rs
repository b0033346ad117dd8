//! [`UserStore`] on the `users` table.

use async_trait::async_trait;
use nexus_ports::Result;
use nexus_ports::identity::{DisplayName, Email, NewUser, PasswordHash, User, UserCredentials, UserId};
use nexus_ports::ports::UserStore;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use crate::SqlStore;
use crate::entity::users;
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

#[async_trait]
impl UserStore for SqlStore {
    async fn insert_user(&self, new: &NewUser) -> Result<()> {
        let row = users::ActiveModel {
            id: Set(new.user.id.as_uuid()),
            email: Set(new.user.email.as_str().to_owned()),
            display_name: Set(new.user.display_name.as_str().to_owned()),
            password_hash: Set(new.password_hash.as_phc().to_owned()),
            created_at: Set(new.user.created_at),
        };
        users::Entity::insert(row).exec_without_returning(&self.db).await.map_err(|e| translate(e, "a user with this email"))?;
        Ok(())
    }

    async fn find_credentials(&self, email: &Email) -> Result<Option<UserCredentials>> {
        let row = users::Entity::find().filter(users::Column::Email.eq(email.as_str())).one(&self.db).await.map_err(db)?;
        row.map(credentials).transpose()
    }

    async fn find_user(&self, id: &UserId) -> Result<Option<User>> {
        let row = users::Entity::find_by_id(id.as_uuid()).one(&self.db).await.map_err(db)?;
        Ok(row.map(credentials).transpose()?.map(|c| c.user))
    }
}
