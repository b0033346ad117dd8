//! Driver errors translated into core errors by intent. The detail of anything that is
//! not the client's doing is logged here and kept out of the client's message.

use nexus_ports::Error;
use sea_orm::{DbErr, SqlErr};

/// Translates a database error; `what` names the thing for an `AlreadyExists` message.
pub(crate) fn translate(err: DbErr, what: &str) -> Error {
    if let Some(SqlErr::UniqueConstraintViolation(_)) = err.sql_err() {
        return Error::AlreadyExists(format!("{what} already exists"));
    }
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
            tracing::warn!(error = %err, "database unavailable");
            Error::Unavailable("the database is unavailable".to_owned())
        }
        other => {
            tracing::error!(error = %other, "database error");
            Error::internal(other)
        }
    }
}

/// Shorthand for errors where no unique constraint can be violated.
pub(crate) fn db(err: DbErr) -> Error {
    translate(err, "record")
}
