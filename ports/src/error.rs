//! The one error enum of the core. Adapters translate their driver errors into it by
//! intent (a unique-constraint violation is [`Error::AlreadyExists`]); the HTTP layer turns
//! it into a status code and an `{"error": ...}` body in exactly one place.

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by intent rather than by cause.
///
/// The message of every variant but [`Error::Internal`] is written for the API client; the
/// message of `Internal` is for the log only and is never sent to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist (or the caller may not know it exists).
    #[error("{0}")]
    NotFound(String),
    /// Creating the thing would duplicate a unique one.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed or fails validation.
    #[error("{0}")]
    InvalidRequest(String),
    /// Credentials are missing, invalid or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the current state (other than a duplicate).
    #[error("{0}")]
    Conflict(String),
    /// A precondition the request set (`If-Match`) does not hold: the thing changed since
    /// the caller last read it; nothing was done.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A dependency of the service itself (database, cluster) cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests from this client, or failed logins for this account: refused
    /// without doing the work, until `retry_after_secs` have passed.
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// The service is saturated (too many password hashes waiting): refused at once
    /// instead of queued without end; worth retrying after `retry_after_secs`.
    #[error("{message}")]
    Overloaded { message: String, retry_after_secs: u64 },
    /// An upstream the request was relayed to (a tenant's node) failed or cannot be reached.
    #[error("{0}")]
    Upstream(String),
    /// A document fails validation; each problem names its field.
    #[error("{}", summarise(.0))]
    InvalidFields(Vec<FieldError>),
    /// A bug or an unexpected failure; the detail is for the log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One validation problem of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`metadata.name`, `spec.model.primary.provider`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

fn summarise(problems: &[FieldError]) -> String {
    match problems {
        [] => "invalid document".to_owned(),
        [one] => format!("invalid manifest: {}: {}", one.field, one.message),
        [first, rest @ ..] => format!("invalid manifest: {}: {} (and {} more)", first.field, first.message, rest.len()),
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    /// Shorthand for [`Error::Unauthorized`].
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(message.into())
    }

    /// Shorthand for [`Error::RateLimited`]; a wait under a second is rounded up to one.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self::RateLimited { message: message.into(), retry_after_secs: whole_seconds(retry_after) }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    /// What a client may read of this error (in an answer, or in a status it can fetch):
    /// the message, but never the detail of [`Error::Internal`], which is for the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// A wait in whole seconds, rounded up, at least one (what `Retry-After` carries).
pub fn whole_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        let limited = Error::rate_limited("slow down", Duration::from_millis(1500));
        assert_eq!(limited, Error::RateLimited { message: "slow down".into(), retry_after_secs: 2 });
        assert_eq!(limited.to_string(), "slow down");
    }
}
