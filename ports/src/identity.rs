//! Users and the values that identify them. Each newtype validates on construction, so a
//! value of the type is valid wherever it is seen.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Error, Result};

/// Longest accepted email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Shortest accepted password at registration, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters: bounds the work one request can ask of the hasher.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Longest accepted display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// A user's id; shown to clients as `usr_<32 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(Uuid);

impl UserId {
    const PREFIX: &'static str = "usr_";

    /// A new random id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps a stored uuid.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The uuid behind the id, as stored.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Parses the client form `usr_<hex>`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the text is not a user id.
    pub fn parse(text: &str) -> Result<Self> {
        text.strip_prefix(Self::PREFIX).and_then(|hex| Uuid::try_parse(hex).ok()).map(Self).ok_or_else(|| Error::invalid("malformed user id"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

/// An email address, trimmed and lower-cased so that comparisons ignore case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Validates and normalises an address: one `@`, a non-empty local part of dot-separated
    /// atoms, a dotted domain of letters, digits and hyphens, no spaces or control
    /// characters, at most 254 characters in all.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming what is wrong.
    pub fn parse(raw: &str) -> Result<Self> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(Error::invalid("email is required"));
        }
        if email.chars().count() > MAX_EMAIL_LEN {
            return Err(Error::invalid(format!("email must be at most {MAX_EMAIL_LEN} characters")));
        }
        let invalid = || Error::invalid("email is not a valid address");
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"@()<>[]\\,;:\"".contains(c));
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok { Ok(Self(email)) } else { Err(invalid()) }
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`, which is never blank and holds no control characters.
    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password in the clear, as presented by a client. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A new password chosen at registration: 8 to 1024 characters.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when it is too short or too long.
    pub fn choose(raw: String) -> Result<Self> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(Error::invalid(format!("password must be at least {MIN_PASSWORD_CHARS} characters")));
        }
        Self::presented(raw)
    }

    /// A password presented at login: any length up to 1024 characters, so that an old or
    /// wrong one is simply wrong, while an oversized one costs no hashing.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when it is longer than 1024 characters.
    pub fn presented(raw: String) -> Result<Self> {
        if raw.chars().count() > MAX_PASSWORD_CHARS {
            return Err(Error::invalid(format!("password must be at most {MAX_PASSWORD_CHARS} characters")));
        }
        Ok(Self(raw))
    }

    /// The clear text, for the hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A password hash in PHC string form (`$argon2id$...`). Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string produced by a hasher or read from a store.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for storing and verifying.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Validates a short human-readable text field (`field` names it in errors): trimmed, 1 to
/// 100 characters, no control characters.
///
/// # Errors
/// [`Error::InvalidRequest`] when it is blank, too long or holds control characters.
pub(crate) fn short_text(raw: &str, field: &str) -> Result<String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(Error::invalid(format!("{field} must not be blank")));
    }
    if text.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(format!("{field} must be at most {MAX_DISPLAY_NAME_CHARS} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{field} must not contain control characters")));
    }
    Ok(text.to_owned())
}

/// A name to show for a user or a tenant: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Validates a display name.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when it is blank, too long or holds control characters.
    pub fn parse(raw: &str) -> Result<Self> {
        short_text(raw, "displayName").map(Self)
    }

    /// The name a user gets who chose none: the part of the email before the `@`, cut to
    /// [`MAX_DISPLAY_NAME_CHARS`] characters.
    #[must_use]
    pub fn from_email(email: &Email) -> Self {
        Self(email.local_part().chars().take(MAX_DISPLAY_NAME_CHARS).collect())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A registered user, as every part of the system but the credential check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub display_name: DisplayName,
    pub created_at: DateTime<Utc>,
}

/// A user to be stored, with the hash of the password it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user: User,
    pub password_hash: PasswordHash,
}

/// A user together with the hash its password is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: PasswordHash,
}

/// The login attempts counted for one account in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptWindow {
    /// When the window began (at its first attempt).
    pub started_at: DateTime<Utc>,
    /// Attempts counted in it, the one just counted included.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_validated() {
        assert_eq!(Email::parse("  Admin@Example.COM ").unwrap().as_str(), "admin@example.com");
        for bad in ["", "plain", "@example.com", "a@", "a@b", "a b@example.com", "a@exa mple.com", "a@@b.com", "a@-b.com", ".a@b.com", "a..b@c.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        // The whole address is bounded (254 characters, counted as characters); the local
        // part alone is not, as the OpenAPI pattern cannot say so.
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(242))).is_ok());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(243))).is_err());
        assert!(Email::parse(&format!("{}@example.com", "é".repeat(242))).is_ok());
        assert!(Email::parse("first.last+tag@sub.example.co").is_ok());
    }

    #[test]
    fn a_default_display_name_is_the_local_part_cut_to_the_limit() {
        assert_eq!(DisplayName::from_email(&Email::parse("Ada.Lovelace@example.com").unwrap()).as_str(), "ada.lovelace");
        let long = Email::parse(&format!("{}@example.com", "é".repeat(150))).unwrap();
        assert_eq!(DisplayName::from_email(&long).as_str(), "é".repeat(100));
    }

    #[test]
    fn password_bounds_count_characters() {
        assert!(Password::choose("short".into()).is_err());
        assert!(Password::choose("ééééééé".into()).is_err());
        assert!(Password::choose("éééééééé".into()).is_ok());
        assert!(Password::choose("x".repeat(1024)).is_ok());
        assert!(Password::choose("x".repeat(1025)).is_err());
        assert!(Password::presented("x".into()).is_ok());
        assert!(Password::presented("x".repeat(1025)).is_err());
        assert_eq!(format!("{:?}", Password::presented("hunter22".into()).unwrap()), "Password(<redacted>)");
    }

    #[test]
    fn user_id_round_trips() {
        let id = UserId::generate();
        let text = id.to_string();
        assert!(text.starts_with("usr_") && text.len() == 36);
        assert_eq!(UserId::parse(&text).unwrap(), id);
        assert!(UserId::parse("t_123").is_err());
    }

    #[test]
    fn display_name_rules() {
        assert_eq!(DisplayName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"x".repeat(101)).is_err());
        assert!(DisplayName::parse("a\u{0007}b").is_err());
    }
}
