//! Identity use cases: register, login, rotate a refresh token, end sessions, change a
//! password, and resolve the caller of an access token.
//!
//! Sessions: each registration or login starts a refresh-token *family*. Refreshing rotates
//! the presented token (revoked, replaced within the family, atomically in the store). A
//! token presented again after its rotation is a replay, whether by a thief or by a racing
//! client: the whole family is revoked and the holder must log in again. A family ends for
//! good at its absolute lifetime (`session_max`), whatever the rotations. Access tokens name
//! their family (`sid`): logging out, or a replay, revokes one family and its access tokens
//! with it (announced, so that every replica refuses them); ending every session (or
//! changing the password) revokes them all and makes every access token issued before that
//! moment invalid.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use nexus_ports::audit::{AuditAction, AuditEvent, CursorKey, user_actor};
use nexus_ports::changes::Change;
use nexus_ports::identity::{DisplayName, Email, NewUser, Password, User, UserId};
use nexus_ports::ports::{AccessTokens, AuditStore, Clock, LoginAttemptStore, PasswordHasher, RefreshTokenStore, SecretGenerator, UserStore};
use nexus_ports::tokens::{AccessToken, FamilyId, OpaqueSecret, RefreshTokenRecord, Replacement, Rotation};
use nexus_ports::{Error, Result};

use super::changes::Changes;
use super::login_limit::LoginLimit;
use super::refusals::{Refusals, Refused, Trail, actor_of_user};
use super::tenancy::{TrailPage, page_bounds};

/// Prefix of refresh tokens, so a leaked one is recognisable.
const REFRESH_PREFIX: &str = "nxr_";
const BAD_LOGIN: &str = "invalid email or password";

/// What a client sends to register.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: String,
    pub password: String,
    /// Defaults to the local part of the email.
    pub display_name: Option<String>,
}

/// An access token and the refresh token to renew it.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access: AccessToken,
    pub refresh: OpaqueSecret,
    pub refresh_expires_at: DateTime<Utc>,
}

/// A signed-in user with fresh tokens.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub tokens: TokenPair,
}

/// The ports the identity use cases need, named so that one adapter serving several of
/// them cannot be wired to the wrong one.
pub struct IdentityPorts {
    pub users: Arc<dyn UserStore>,
    pub refresh_tokens: Arc<dyn RefreshTokenStore>,
    pub login_attempts: Arc<dyn LoginAttemptStore>,
    pub hasher: Arc<dyn PasswordHasher>,
    pub access_tokens: Arc<dyn AccessTokens>,
    pub secrets: Arc<dyn SecretGenerator>,
    pub clock: Arc<dyn Clock>,
    pub audit: Arc<dyn AuditStore>,
    /// Where ended sessions are announced, and users kept in memory.
    pub changes: Arc<Changes>,
}

/// How long sessions last, and how many failed logins an account may see.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Lifetime of each refresh token.
    pub refresh_ttl: Duration,
    /// Absolute lifetime of a family, however often it is rotated.
    pub session_max: Duration,
    pub login_limit: LoginLimit,
}

/// The identity use cases.
pub struct IdentityService {
    ports: IdentityPorts,
    policy: SessionPolicy,
    /// Where refusals are counted for the audit trails (none: not recorded).
    refusals: Option<Arc<Refusals>>,
    /// Seals the audit trail's cursors.
    cursors: CursorKey,
}

impl IdentityService {
    /// Wires the use cases to their ports.
    pub fn new(ports: IdentityPorts, policy: SessionPolicy) -> Self {
        Self { ports, policy, refusals: None, cursors: CursorKey::random() }
    }

    /// The same use cases, counting refusals in `refusals` for the audit trails.
    #[must_use]
    pub fn with_refusals(self, refusals: Arc<Refusals>) -> Self {
        Self { refusals: Some(refusals), ..self }
    }

    /// The same use cases, sealing cursors with `cursors` (the same on every replica).
    #[must_use]
    pub fn with_cursor_key(self, cursors: CursorKey) -> Self {
        Self { cursors, ..self }
    }

    /// An event of the user's own trail, done by the user to itself (named by its id and
    /// email). (For a failed login, the actor is the account the attempt claimed.)
    async fn user_event(&self, user: &UserId, at: DateTime<Utc>, action: AuditAction) -> Result<AuditEvent> {
        let actor = actor_of_user(self.ports.users.as_ref(), &self.ports.changes, user).await?;
        Ok(AuditEvent::now(at, actor, action, user.to_string()).of_user(*user))
    }

    /// Creates an account and signs it in.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a bad email, password or display name;
    /// [`Error::AlreadyExists`] when the email is taken (compared case-insensitively);
    /// [`Error::Overloaded`] when the hasher's queue is full.
    pub async fn register(&self, registration: Registration) -> Result<Session> {
        let email = Email::parse(&registration.email)?;
        let password = Password::choose(registration.password)?;
        let display_name = match registration.display_name.as_deref() {
            Some(name) => DisplayName::parse(name)?,
            None => DisplayName::from_email(&email),
        };
        // Fails fast without hashing in the common case; the store's unique index decides races.
        if self.ports.users.find_credentials(&email).await?.is_some() {
            return Err(taken());
        }
        let password_hash = self.ports.hasher.hash(&password).await?;
        let user = User { id: UserId::generate(), email, display_name, created_at: self.ports.clock.now() };
        let audit = user_event(&user, user.created_at, AuditAction::UserRegister);
        self.ports.users.insert_user(&NewUser { user: user.clone(), password_hash }, &audit).await.map_err(|err| match err {
            Error::AlreadyExists(_) => taken(),
            other => other,
        })?;
        tracing::info!(user = %user.id, "user registered");
        self.start_session(user, None).await
    }

    /// Signs a user in. Unknown emails and wrong passwords get the same error after the
    /// same work (a verification against a dummy hash), so neither answer nor timing tells
    /// which emails have accounts; the failed-login limit counts both alike.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for bad credentials; [`Error::InvalidRequest`] for a password
    /// over the length limit; [`Error::RateLimited`] when the account has seen too many
    /// failed logins lately; [`Error::Overloaded`] when the hasher's queue is full.
    pub async fn login(&self, email: &str, password: String) -> Result<Session> {
        let password = Password::presented(password)?;
        // A full hasher refuses before the store is asked (or an attempt counted): under a
        // flood the refusals then cost no round trip.
        self.ports.hasher.has_room()?;
        let Ok(email) = Email::parse(email) else {
            self.ports.hasher.verify(&password, &self.ports.hasher.dummy_hash()).await?;
            return Err(Error::unauthorized(BAD_LOGIN));
        };
        self.count_attempt(&email).await?;
        let credentials = self.ports.users.find_credentials(&email).await?;
        let hash = credentials.as_ref().map_or_else(|| self.ports.hasher.dummy_hash(), |c| c.password_hash.clone());
        let matches = self.ports.hasher.verify(&password, &hash).await?;
        match credentials {
            Some(credentials) if matches => {
                self.clear_attempts(&email).await;
                let audit = user_event(&credentials.user, self.ports.clock.now(), AuditAction::UserLogin);
                self.start_session(credentials.user, Some(&audit)).await
            }
            Some(credentials) => {
                self.record_failed_login(&credentials.user).await;
                Err(Error::unauthorized(BAD_LOGIN))
            }
            None => Err(Error::unauthorized(BAD_LOGIN)),
        }
    }

    /// Exchanges a refresh token for a new pair, revoking the presented one. The new
    /// refresh token expires no later than its session.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for an unknown, expired or already-used token, or one whose
    /// session has reached its absolute lifetime; a used one also revokes every token of
    /// its family.
    pub async fn rotate_refresh(&self, presented: &str) -> Result<TokenPair> {
        let presented = OpaqueSecret::new(presented.to_owned());
        let now = self.ports.clock.now();
        let refresh = self.ports.secrets.generate(REFRESH_PREFIX)?;
        let replacement = Replacement { digest: refresh.digest(), issued_at: now, expires_at: now + self.policy.refresh_ttl };
        match self.ports.refresh_tokens.rotate_refresh_token(&presented.digest(), &replacement, now).await? {
            Rotation::Rotated { user_id, family_id, expires_at } => {
                let access = self.ports.access_tokens.issue(&user_id, &family_id, now)?;
                Ok(TokenPair { access, refresh, refresh_expires_at: expires_at })
            }
            Rotation::Reused { user_id, family_id } => {
                let revoked = self.ports.refresh_tokens.revoke_family(&family_id, now, None).await?;
                self.ports.changes.announce(Change::SessionRevoked { user: user_id, session: family_id }).await;
                if let Some(refusals) = &self.refusals {
                    refusals.note(Refused::User(user_id), AuditAction::UserRefreshReused, &user_id.to_string(), Trail::User(user_id));
                }
                tracing::warn!(user = %user_id, revoked, "refresh token presented after rotation: its session was revoked");
                Err(Error::unauthorized("refresh token has already been used; the session was revoked, log in again"))
            }
            Rotation::Expired => Err(Error::unauthorized("refresh token has expired; log in again")),
            Rotation::SessionEnded => Err(Error::unauthorized("the session has reached its maximum lifetime; log in again")),
            Rotation::Unknown => Err(Error::unauthorized("invalid refresh token")),
        }
    }

    /// Logs out: revokes the whole family of the presented refresh token. A token that is
    /// unknown (or already revoked) is not an error: there is nothing to reveal.
    pub async fn logout(&self, presented: &str) -> Result<()> {
        let digest = OpaqueSecret::new(presented.to_owned()).digest();
        if let Some((family, user)) = self.ports.refresh_tokens.family_of(&digest).await? {
            let now = self.ports.clock.now();
            let audit = self.user_event(&user, now, AuditAction::UserLogout).await?;
            let revoked = self.ports.refresh_tokens.revoke_family(&family, now, Some(&audit)).await?;
            self.ports.changes.announce(Change::SessionRevoked { user, session: family }).await;
            tracing::info!(revoked, "logged out: a session was revoked");
        }
        Ok(())
    }

    /// Ends every session of the user: all its refresh tokens are revoked, and every access
    /// token issued before now is refused from now on, by every replica.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when the user no longer exists.
    pub async fn end_sessions(&self, user: &UserId) -> Result<()> {
        let now = self.ports.clock.now();
        let audit = self.user_event(user, now, AuditAction::UserSessionsRevoked).await?;
        self.ports.users.end_sessions(user, now, &audit).await.map_err(gone_as_unauthorized)?;
        self.ports.changes.committed(&Change::SessionsEnded { user: *user });
        tracing::info!(user = %user, "every session of the user was ended");
        Ok(())
    }

    /// Changes the user's password, then ends every session as [`Self::end_sessions`].
    /// A wrong current password counts as a failed login.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the new password breaks the registration rules;
    /// [`Error::Forbidden`] when the current password is wrong; [`Error::RateLimited`]
    /// when the account has seen too many failed logins lately; [`Error::Overloaded`] when
    /// the hasher's queue is full.
    pub async fn change_password(&self, user: &UserId, current: String, new: String) -> Result<()> {
        let current = Password::presented(current)?;
        let new = Password::choose(new)?;
        let email = self.current_user(user).await?.email;
        self.count_attempt(&email).await?;
        let credentials = self.ports.users.find_credentials(&email).await?.ok_or_else(|| Error::unauthorized("the user of this token no longer exists"))?;
        if !self.ports.hasher.verify(&current, &credentials.password_hash).await? {
            return Err(Error::Forbidden("the current password is wrong".to_owned()));
        }
        self.clear_attempts(&email).await;
        let hash = self.ports.hasher.hash(&new).await?;
        let now = self.ports.clock.now();
        let audit = self.user_event(user, now, AuditAction::UserPasswordChange).await?;
        self.ports.users.change_password(user, &hash, now, &audit).await.map_err(gone_as_unauthorized)?;
        self.ports.changes.committed(&Change::SessionsEnded { user: *user });
        tracing::info!(user = %user, "password changed; every session of the user was ended");
        Ok(())
    }

    /// The user an access token was issued to.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] when that user no longer exists.
    pub async fn current_user(&self, user_id: &UserId) -> Result<User> {
        let load = || async { self.ports.users.find_user(user_id).await?.ok_or_else(|| Error::unauthorized("the user of this token no longer exists")) };
        self.ports.changes.caches().users.get_or_load(user_id, load).await
    }

    /// A page of the user's own audit trail, newest first: at most `limit` events (at most
    /// [`nexus_ports::audit::MAX_AUDIT_PAGE`]), after `cursor` when given (good on this
    /// trail only).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a limit out of range, or a cursor this server did not
    /// give for this user's trail.
    pub async fn audit(&self, user: &UserId, limit: Option<u32>, cursor: Option<&str>) -> Result<TrailPage> {
        let scope = format!("user:{user}");
        let (limit, after) = page_bounds(&self.cursors, &scope, limit, cursor)?;
        Ok(TrailPage::sealed(self.ports.audit.user_events(user, limit, after).await?, &self.cursors, &scope))
    }

    /// Records a wrong password for an existing account in its trail. Failing to record it
    /// does not change the answer (the login fails either way); it is logged.
    async fn record_failed_login(&self, user: &User) {
        let audit = user_event(user, self.ports.clock.now(), AuditAction::UserLoginFailed);
        if let Err(err) = self.ports.audit.record_event(&audit).await {
            tracing::warn!(error = %err, "could not record a failed login in the audit trail");
        }
    }

    /// Counts a login attempt for the account and refuses it when over the limit.
    async fn count_attempt(&self, email: &Email) -> Result<()> {
        let limit = self.policy.login_limit;
        if !limit.enabled() {
            return Ok(());
        }
        let now = self.ports.clock.now();
        let window = self.ports.login_attempts.count_login_attempt(email, now, limit.window_from(now)).await?;
        limit.admit(&window, now).inspect_err(|_| {
            metrics::counter!("nexus_rate_limit_refusals_total", "limit" => "login_account").increment(1);
            tracing::warn!(attempts = window.attempts, "login refused: too many failed attempts for the account");
        })
    }

    /// Forgets the account's attempts after a success; a failure to do so only leaves the
    /// count to expire with its window.
    async fn clear_attempts(&self, email: &Email) {
        if !self.policy.login_limit.enabled() {
            return;
        }
        if let Err(err) = self.ports.login_attempts.clear_login_attempts(email).await {
            tracing::warn!(error = %err, "could not clear the login attempts of an account");
        }
    }

    async fn start_session(&self, user: User, audit: Option<&AuditEvent>) -> Result<Session> {
        let now = self.ports.clock.now();
        let family_id = FamilyId::generate();
        let access = self.ports.access_tokens.issue(&user.id, &family_id, now)?;
        let refresh = self.ports.secrets.generate(REFRESH_PREFIX)?;
        let session_expires_at = now + self.policy.session_max;
        let record = RefreshTokenRecord {
            digest: refresh.digest(),
            user_id: user.id,
            family_id,
            issued_at: now,
            expires_at: (now + self.policy.refresh_ttl).min(session_expires_at),
            session_expires_at,
        };
        self.ports.refresh_tokens.insert_refresh_token(&record, audit).await?;
        Ok(Session { user, tokens: TokenPair { access, refresh, refresh_expires_at: record.expires_at } })
    }
}

/// An event of `user`'s own trail, done by the user to itself (named by its id and email).
/// (For a failed login, the actor is the account the attempt claimed.)
fn user_event(user: &User, at: DateTime<Utc>, action: AuditAction) -> AuditEvent {
    AuditEvent::now(at, user_actor(&user.id, &user.email), action, user.id.to_string()).of_user(user.id)
}

fn taken() -> Error {
    Error::AlreadyExists("a user with this email already exists".to_owned())
}

fn gone_as_unauthorized(err: Error) -> Error {
    match err {
        Error::NotFound(_) => Error::unauthorized("the user of this token no longer exists"),
        other => other,
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
