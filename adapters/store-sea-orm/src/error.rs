//! Driver errors translated into core errors by intent. The detail of anything that is
//! not the client's doing is logged here and kept out of the client's message.

use nexus_ports::Error;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// What clients are told when the database cannot serve them.
pub(crate) const UNAVAILABLE: &str = "the database is unavailable";

/// Translates a database error; `what` names the thing for an `AlreadyExists` message.
pub(crate) fn translate(err: DbErr, what: &str) -> Error {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => return Error::AlreadyExists(format!("{what} already exists")),
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => return Error::NotFound(format!("{what} refers to a record that does not exist")),
        _ => {}
    }
    if is_outage(&err) {
        tracing::warn!(error = %err, "database unavailable");
        return Error::Unavailable(UNAVAILABLE.to_owned());
    }
    tracing::error!(error = %err, "database error");
    Error::internal(err)
}

/// Shorthand for errors where no unique constraint can be violated.
pub(crate) fn db(err: DbErr) -> Error {
    translate(err, "record")
}

/// Whether the error means "the database cannot be reached or used right now", as
/// opposed to a fault in a statement.
fn is_outage(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed | sqlx::Error::Tls(_) => true,
            // PostgreSQL classes 08 (connection exception), 57 (operator intervention:
            // shutdown, terminated backend) and 3D000 (the database does not exist).
            sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57") || code == "3D000"),
            _ => false,
        },
        _ => false,
    }
}
