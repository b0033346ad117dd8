//! Identity use cases against mockall doubles of every port.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use mockall::predicate::eq;
use nexus_ports::Error;
use nexus_ports::audit::AuditAction;
use nexus_ports::identity::{AttemptWindow, DisplayName, Email, PasswordHash, User, UserCredentials, UserId};
use nexus_ports::ports::{
    MockAccessTokens, MockAuditStore, MockClock, MockLoginAttemptStore, MockPasswordHasher, MockRefreshTokenStore, MockSecretGenerator, MockUserStore,
};
use nexus_ports::tokens::{AccessToken, FamilyId, OpaqueSecret, Rotation};

use super::{IdentityPorts, IdentityService, Registration, SessionPolicy};
use crate::app::LoginLimit;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

const TTL_DAYS: i64 = 30;
const SESSION_DAYS: i64 = 90;
const MAX_FAILURES: u32 = 3;

fn policy() -> SessionPolicy {
    SessionPolicy {
        refresh_ttl: Duration::days(TTL_DAYS),
        session_max: Duration::days(SESSION_DAYS),
        login_limit: LoginLimit { max_failures: MAX_FAILURES, window: Duration::minutes(15) },
    }
}

/// One double per port; each test sets the expectations it needs, so any other call fails.
#[derive(Default)]
struct Ports {
    users: MockUserStore,
    refresh: MockRefreshTokenStore,
    attempts: MockLoginAttemptStore,
    hasher: MockPasswordHasher,
    access: MockAccessTokens,
    secrets: MockSecretGenerator,
    audit: MockAuditStore,
    /// Whether the hasher's queue is full.
    hasher_full: bool,
}

impl Ports {
    fn service(self) -> IdentityService {
        self.service_with(policy())
    }

    fn service_with(self, policy: SessionPolicy) -> IdentityService {
        let mut clock = MockClock::new();
        clock.expect_now().returning(now);
        let mut hasher = self.hasher;
        let full = self.hasher_full;
        hasher.expect_has_room().returning(move || if full { Err(overloaded()) } else { Ok(()) });
        let ports = IdentityPorts {
            users: Arc::new(self.users),
            refresh_tokens: Arc::new(self.refresh),
            login_attempts: Arc::new(self.attempts),
            hasher: Arc::new(hasher),
            access_tokens: Arc::new(self.access),
            secrets: Arc::new(self.secrets),
            clock: Arc::new(clock),
            audit: Arc::new(self.audit),
            changes: crate::app::Changes::local(),
        };
        IdentityService::new(ports, policy)
    }

    /// Every user exists, as `ada@example.com`.
    fn expect_any_user(&mut self) {
        self.users.expect_find_user().returning(|id| {
            let email = Email::parse("ada@example.com").unwrap();
            Ok(Some(User { id: *id, display_name: DisplayName::from_email(&email), email, created_at: now() }))
        });
    }

    /// Expects the account's attempt to be counted once, as the `attempts`-th of its window.
    fn expect_attempt(&mut self, attempts: u32) {
        self.attempts
            .expect_count_login_attempt()
            .withf(|email, at, from| email.as_str() == "ada@example.com" && *at == now() && *from == now() - Duration::minutes(15))
            .times(1)
            .returning(move |_, _, _| Ok(AttemptWindow { started_at: now() - Duration::minutes(5), attempts }));
    }

    /// Expects one new session: an access token and a stored refresh token.
    fn expect_session(&mut self) {
        self.access
            .expect_issue()
            .times(1)
            .returning(|_, _, at| Ok(AccessToken { token: "jwt".into(), issued_at: at, expires_at: at + Duration::minutes(15) }));
        self.secrets.expect_generate().with(eq("nxr_")).times(1).returning(|_| Ok(OpaqueSecret::new("nxr_secret".into())));
        self.refresh
            .expect_insert_refresh_token()
            .withf(|record, _| {
                record.digest == OpaqueSecret::new("nxr_secret".into()).digest()
                    && record.expires_at == now() + Duration::days(TTL_DAYS)
                    && record.session_expires_at == now() + Duration::days(SESSION_DAYS)
            })
            .times(1)
            .returning(|_, _| Ok(()));
    }
}

fn stored_user() -> UserCredentials {
    UserCredentials {
        user: User {
            id: UserId::generate(),
            email: Email::parse("ada@example.com").unwrap(),
            display_name: DisplayName::parse("Ada").unwrap(),
            created_at: now(),
        },
        password_hash: PasswordHash::from_phc("$argon2id$real".into()),
    }
}

fn registration(email: &str, password: &str, display_name: Option<&str>) -> Registration {
    Registration { email: email.into(), password: password.into(), display_name: display_name.map(Into::into) }
}

#[tokio::test]
async fn register_normalises_hashes_stores_and_starts_a_session() {
    let mut ports = Ports::default();
    ports.users.expect_find_credentials().times(1).returning(|_| Ok(None));
    ports.hasher.expect_hash().times(1).returning(|_| Ok(PasswordHash::from_phc("$argon2id$new".into())));
    ports
        .users
        .expect_insert_user()
        .withf(|new, audit| {
            new.user.email.as_str() == "ada@example.com"
                && new.user.display_name.as_str() == "ada"
                && new.password_hash.as_phc() == "$argon2id$new"
                && (audit.action, audit.user, audit.actor.clone())
                    == (AuditAction::UserRegister, Some(new.user.id), format!("{} (ada@example.com)", new.user.id))
        })
        .times(1)
        .returning(|_, _| Ok(()));
    ports.expect_session();
    let session = ports.service().register(registration(" Ada@Example.com", "long enough", None)).await.unwrap();
    assert_eq!(session.user.email.as_str(), "ada@example.com");
    assert_eq!(session.tokens.refresh.expose(), "nxr_secret");
    assert_eq!(session.tokens.refresh_expires_at, now() + Duration::days(TTL_DAYS));
}

#[tokio::test]
async fn register_refuses_bad_input_before_any_port_is_called() {
    let service = Ports::default().service();
    for (email, password, name) in
        [("nope", "long enough", None), ("a@b.co", "short", None), ("a@b.co", &"x".repeat(1025), None), ("a@b.co", "long enough", Some("  "))]
    {
        let result = service.register(registration(email, password, name)).await;
        assert!(matches!(result, Err(Error::InvalidRequest(_))), "{email} {name:?}: {result:?}");
    }
}

#[tokio::test]
async fn register_of_a_taken_email_is_a_conflict_without_hashing() {
    let mut ports = Ports::default();
    ports.users.expect_find_credentials().returning(|_| Ok(Some(stored_user())));
    let result = ports.service().register(registration("ADA@example.com", "long enough", None)).await;
    assert_eq!(result.unwrap_err(), Error::AlreadyExists("a user with this email already exists".into()));
}

#[tokio::test]
async fn register_losing_the_insert_race_is_a_conflict() {
    let mut ports = Ports::default();
    ports.users.expect_find_credentials().returning(|_| Ok(None));
    ports.hasher.expect_hash().returning(|_| Ok(PasswordHash::from_phc("h".into())));
    ports.users.expect_insert_user().returning(|_, _| Err(Error::AlreadyExists("users.email".into())));
    let result = ports.service().register(registration("ada@example.com", "long enough", None)).await;
    assert_eq!(result.unwrap_err(), Error::AlreadyExists("a user with this email already exists".into()));
}

#[tokio::test]
async fn login_checks_the_stored_hash_and_starts_a_session() {
    let mut ports = Ports::default();
    ports.expect_attempt(1);
    ports.users.expect_find_credentials().with(eq(Email::parse("ada@example.com").unwrap())).returning(|_| Ok(Some(stored_user())));
    ports.hasher.expect_verify().withf(|_, hash| hash.as_phc() == "$argon2id$real").times(1).returning(|_, _| Ok(true));
    ports.attempts.expect_clear_login_attempts().times(1).returning(|_| Ok(()));
    ports.expect_session();
    let session = ports.service().login("Ada@example.com", "long enough".into()).await.unwrap();
    assert_eq!(session.user.display_name.as_str(), "Ada");
}

#[tokio::test]
async fn login_failures_look_alike_and_cost_a_verification() {
    // Unknown email, malformed email, wrong password: one message, one verification each.
    for (email, known) in [("ghost@example.com", false), ("not an email", false), ("ada@example.com", true)] {
        let mut ports = Ports::default();
        ports.attempts.expect_count_login_attempt().returning(|_, _, _| Ok(AttemptWindow { started_at: now(), attempts: 1 }));
        ports.users.expect_find_credentials().returning(move |_| Ok(known.then(stored_user)));
        ports.hasher.expect_dummy_hash().times(usize::from(!known)).returning(|| PasswordHash::from_phc("$argon2id$dummy".into()));
        let expected = if known { "$argon2id$real" } else { "$argon2id$dummy" };
        ports.hasher.expect_verify().withf(move |_, hash| hash.as_phc() == expected).times(1).returning(|_, _| Ok(false));
        // Only an existing account has a trail to record the failure in.
        ports
            .audit
            .expect_record_event()
            .withf(|event| event.action == AuditAction::UserLoginFailed && event.user.is_some())
            .times(usize::from(known))
            .returning(|_| Ok(()));
        let result = ports.service().login(email, "wrong password".into()).await;
        assert_eq!(result.unwrap_err(), Error::Unauthorized("invalid email or password".into()), "{email}");
    }
}

fn overloaded() -> Error {
    Error::Overloaded { message: "too many password checks are waiting; retry shortly".into(), retry_after_secs: 1 }
}

#[tokio::test]
async fn a_full_hasher_refuses_a_login_before_the_store_is_asked() {
    // No store expectation: asking it (or counting the attempt) fails the test.
    let result = Ports { hasher_full: true, ..Ports::default() }.service().login("ada@example.com", "a password".into()).await;
    assert_eq!(result.unwrap_err(), overloaded());
}

#[tokio::test]
async fn login_refuses_oversized_passwords_without_hashing() {
    let result = Ports::default().service().login("ada@example.com", "x".repeat(1025)).await;
    assert!(matches!(result, Err(Error::InvalidRequest(_))));
}

fn rotating(outcome: Rotation) -> Ports {
    let mut ports = Ports::default();
    ports.secrets.expect_generate().returning(|_| Ok(OpaqueSecret::new("nxr_next".into())));
    ports
        .refresh
        .expect_rotate_refresh_token()
        .withf(|presented, replacement, at| {
            *presented == OpaqueSecret::new("nxr_old".into()).digest() && replacement.digest == OpaqueSecret::new("nxr_next".into()).digest() && *at == now()
        })
        .times(1)
        .returning(move |_, _, _| Ok(outcome.clone()));
    ports
}

#[tokio::test]
async fn refresh_rotates_a_live_token() {
    let user = UserId::generate();
    // The store cut the new token's expiry to the session's end.
    let session_end = now() + Duration::days(2);
    let family = FamilyId::generate();
    let mut ports = rotating(Rotation::Rotated { user_id: user, family_id: family, expires_at: session_end });
    ports
        .access
        .expect_issue()
        .withf(move |u, s, at| *u == user && *s == family && *at == now())
        .returning(|_, _, at| Ok(AccessToken { token: "jwt2".into(), issued_at: at, expires_at: at }));
    let pair = ports.service().rotate_refresh("nxr_old").await.unwrap();
    assert_eq!((pair.access.token.as_str(), pair.refresh.expose()), ("jwt2", "nxr_next"));
    assert_eq!(pair.refresh_expires_at, session_end);
}

#[tokio::test]
async fn refresh_reuse_revokes_the_whole_family() {
    let family = FamilyId::generate();
    let mut ports = rotating(Rotation::Reused { user_id: UserId::generate(), family_id: family });
    ports.refresh.expect_revoke_family().withf(move |f, at, _| *f == family && *at == now()).times(1).returning(|_, _, _| Ok(2));
    assert!(matches!(ports.service().rotate_refresh("nxr_old").await, Err(Error::Unauthorized(_))));
}

#[tokio::test]
async fn refresh_refuses_expired_and_unknown_tokens() {
    for outcome in [Rotation::Expired, Rotation::Unknown, Rotation::SessionEnded] {
        let result = rotating(outcome.clone()).service().rotate_refresh("nxr_old").await;
        assert!(matches!(result, Err(Error::Unauthorized(_))), "{outcome:?}");
    }
    let ended = rotating(Rotation::SessionEnded).service().rotate_refresh("nxr_old").await;
    assert_eq!(ended.unwrap_err(), Error::unauthorized("the session has reached its maximum lifetime; log in again"));
}

#[tokio::test]
async fn tokens_of_vanished_users_are_refused() {
    let mut ports = Ports::default();
    ports.users.expect_find_user().returning(|_| Ok(None));
    assert!(matches!(ports.service().current_user(&UserId::generate()).await, Err(Error::Unauthorized(_))));
}

#[tokio::test]
async fn store_outages_pass_through_as_unavailable() {
    let mut ports = Ports::default();
    ports.attempts.expect_count_login_attempt().returning(|_, _, _| Ok(AttemptWindow { started_at: now(), attempts: 1 }));
    ports.users.expect_find_credentials().returning(|_| Err(Error::Unavailable("the database is unavailable".into())));
    let result = ports.service().login("ada@example.com", "whatever1".into()).await;
    assert!(matches!(result, Err(Error::Unavailable(_))));
}

#[tokio::test]
async fn a_session_never_outlives_its_maximum() {
    // Sessions of a day with tokens of thirty: the first token is cut to the day.
    let mut ports = Ports::default();
    ports.users.expect_find_credentials().returning(|_| Ok(None));
    ports.hasher.expect_hash().returning(|_| Ok(PasswordHash::from_phc("h".into())));
    ports.users.expect_insert_user().returning(|_, _| Ok(()));
    ports.access.expect_issue().returning(|_, _, at| Ok(AccessToken { token: "jwt".into(), issued_at: at, expires_at: at }));
    ports.secrets.expect_generate().returning(|_| Ok(OpaqueSecret::new("nxr_secret".into())));
    ports
        .refresh
        .expect_insert_refresh_token()
        .withf(|record, _| record.expires_at == now() + Duration::days(1) && record.session_expires_at == now() + Duration::days(1))
        .times(1)
        .returning(|_, _| Ok(()));
    let session =
        ports.service_with(SessionPolicy { session_max: Duration::days(1), ..policy() }).register(registration("ada@example.com", "long enough", None)).await;
    assert_eq!(session.unwrap().tokens.refresh_expires_at, now() + Duration::days(1));
}

#[tokio::test]
async fn an_account_over_its_failures_is_refused_before_any_hashing() {
    let mut ports = Ports::default();
    ports.expect_attempt(MAX_FAILURES + 1);
    // No credentials lookup, no verification: the doubles would fail on either.
    let result = ports.service().login("ada@example.com", "the right one, maybe".into()).await;
    // The window began five minutes ago and lasts fifteen: ten minutes to wait.
    assert_eq!(result.unwrap_err(), Error::RateLimited { message: "too many failed logins for this account; try again later".into(), retry_after_secs: 600 });
}

#[tokio::test]
async fn a_failed_login_stays_counted_and_an_off_limit_counts_nothing() {
    let mut ports = Ports::default();
    ports.expect_attempt(MAX_FAILURES);
    ports.users.expect_find_credentials().returning(|_| Ok(Some(stored_user())));
    ports.hasher.expect_verify().returning(|_, _| Ok(false));
    ports.audit.expect_record_event().times(1).returning(|_| Err(Error::Unavailable("down".into())));
    // No clear_login_attempts expectation: a failure must not clear the count.
    assert!(matches!(ports.service().login("ada@example.com", "wrong".into()).await, Err(Error::Unauthorized(_))));

    let mut off = Ports::default();
    off.users.expect_find_credentials().returning(|_| Ok(Some(stored_user())));
    off.hasher.expect_verify().returning(|_, _| Ok(true));
    off.expect_session();
    let policy = SessionPolicy { login_limit: LoginLimit { max_failures: 0, window: Duration::minutes(15) }, ..policy() };
    off.service_with(policy).login("ada@example.com", "right".into()).await.unwrap();
}

#[tokio::test]
async fn logout_revokes_the_family_and_says_nothing_of_unknown_tokens() {
    let family = FamilyId::generate();
    let mut ports = Ports::default();
    ports
        .refresh
        .expect_family_of()
        .returning(move |digest| Ok((*digest == OpaqueSecret::new("nxr_known".into()).digest()).then_some((family, UserId::generate()))));
    ports
        .refresh
        .expect_revoke_family()
        .withf(move |f, at, audit| *f == family && *at == now() && audit.is_some_and(|a| a.actor.ends_with("(ada@example.com)")))
        .times(1)
        .returning(|_, _, _| Ok(2));
    ports.expect_any_user();
    let service = ports.service();
    service.logout("nxr_known").await.unwrap();
    service.logout("nxr_unknown").await.unwrap();
}

#[tokio::test]
async fn ending_sessions_records_the_moment() {
    let user = UserId::generate();
    let mut ports = Ports::default();
    ports
        .users
        .expect_end_sessions()
        .withf(move |u, at, audit| *u == user && *at == now() && audit.action == AuditAction::UserSessionsRevoked)
        .times(1)
        .returning(|_, _, _| Ok(()));
    ports.users.expect_end_sessions().returning(|_, _, _| Err(Error::NotFound("no such user".into())));
    ports.expect_any_user();
    let service = ports.service();
    service.end_sessions(&user).await.unwrap();
    assert!(matches!(service.end_sessions(&UserId::generate()).await, Err(Error::Unauthorized(_))), "a vanished user");
}

/// A user whose current password is "old password".
fn changing() -> (Ports, UserId) {
    let stored = stored_user();
    let id = stored.user.id;
    let mut ports = Ports::default();
    let user = stored.user.clone();
    ports.users.expect_find_user().returning(move |_| Ok(Some(user.clone())));
    ports.users.expect_find_credentials().returning(move |_| Ok(Some(stored.clone())));
    ports.hasher.expect_verify().returning(|password, _| Ok(password.expose() == "old password"));
    (ports, id)
}

#[tokio::test]
async fn a_password_change_rehashes_and_ends_every_session() {
    let (mut ports, id) = changing();
    ports.expect_attempt(1);
    ports.attempts.expect_clear_login_attempts().times(1).returning(|_| Ok(()));
    ports.hasher.expect_hash().withf(|p| p.expose() == "new password").times(1).returning(|_| Ok(PasswordHash::from_phc("$argon2id$new".into())));
    ports
        .users
        .expect_change_password()
        .withf(move |user, hash, at, audit| *user == id && hash.as_phc() == "$argon2id$new" && *at == now() && audit.action == AuditAction::UserPasswordChange)
        .times(1)
        .returning(|_, _, _, _| Ok(()));
    ports.service().change_password(&id, "old password".into(), "new password".into()).await.unwrap();
}

#[tokio::test]
async fn a_wrong_current_password_is_forbidden_and_counted() {
    let (mut ports, id) = changing();
    ports.expect_attempt(1);
    let result = ports.service().change_password(&id, "not it".into(), "new password".into()).await;
    assert_eq!(result.unwrap_err(), Error::Forbidden("the current password is wrong".into()));

    let (mut locked, id) = changing();
    locked.expect_attempt(MAX_FAILURES + 1);
    assert!(matches!(locked.service().change_password(&id, "old password".into(), "new password".into()).await, Err(Error::RateLimited { .. })));
}

#[tokio::test]
async fn a_new_password_breaking_the_rules_is_refused_before_anything() {
    let service = Ports::default().service();
    for new in ["short", &"x".repeat(1025)] {
        let result = service.change_password(&UserId::generate(), "old password".into(), new.into()).await;
        assert!(matches!(result, Err(Error::InvalidRequest(_))), "{result:?}");
    }
}
