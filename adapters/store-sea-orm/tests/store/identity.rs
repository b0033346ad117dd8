//! Users, refresh tokens, settings, migrations and health.

use chrono::{Duration, Utc};
use nexus_ports::Error;
use nexus_ports::audit::AuditAction;
use nexus_ports::identity::{DisplayName, Email, NewUser, PasswordHash, User, UserId};
use nexus_ports::ports::{HealthCheck, LoginAttemptStore, RefreshTokenStore, SettingsStore, UserStore};
use nexus_ports::tokens::{FamilyId, RefreshTokenRecord, Replacement, Rotation, SecretDigest};
use nexus_store_sea_orm::SqlStore;

use crate::on_both_backends;

on_both_backends!(
    users_are_unique_by_email,
    rotation_has_one_winner_and_detects_reuse,
    rotation_refuses_unknown_and_expired,
    racing_rotations_across_pools_have_one_winner,
    settings_keep_the_first_value,
    migrations_are_idempotent_and_health_answers,
    ending_sessions_revokes_every_token_and_sets_the_cutoff,
    a_password_change_ends_every_session,
    sessions_end_at_their_absolute_lifetime,
    logout_finds_the_family_of_any_of_its_tokens,
    a_session_is_live_until_its_family_is_revoked,
    pruning_keeps_only_tokens_that_can_still_matter,
    login_attempts_are_counted_per_account_in_windows
);

pub(crate) fn new_user(email: &str) -> NewUser {
    NewUser {
        user: User { id: UserId::generate(), email: Email::parse(email).unwrap(), display_name: DisplayName::parse("Ada").unwrap(), created_at: Utc::now() },
        password_hash: PasswordHash::from_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
    }
}

async fn user_with_token(store: &SqlStore, expires_in: Duration) -> (UserId, SecretDigest) {
    let new = new_user(&format!("{}@example.com", uuid::Uuid::new_v4().simple()));
    store.insert_user(&new, &crate::audit(AuditAction::UserRegister)).await.unwrap();
    (new.user.id, session_of(store, new.user.id, expires_in, Duration::days(90)).await)
}

/// Starts a session of `user` now: the first token of a new family.
async fn session_of(store: &SqlStore, user: UserId, expires_in: Duration, session_max: Duration) -> SecretDigest {
    let digest = SecretDigest::of(&uuid::Uuid::new_v4().to_string());
    let now = Utc::now();
    let record = RefreshTokenRecord {
        digest,
        user_id: user,
        family_id: FamilyId::generate(),
        issued_at: now,
        expires_at: now + expires_in,
        session_expires_at: now + session_max,
    };
    store.insert_refresh_token(&record, None).await.unwrap();
    digest
}

fn replacement() -> Replacement {
    let now = Utc::now();
    Replacement { digest: SecretDigest::of(&uuid::Uuid::new_v4().to_string()), issued_at: now, expires_at: now + Duration::days(30) }
}

async fn users_are_unique_by_email(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let first = new_user("Ada@Example.com");
    store.insert_user(&first, &crate::audit(AuditAction::UserRegister)).await.unwrap();
    let again = store.insert_user(&new_user("ada@example.COM"), &crate::audit(AuditAction::UserRegister)).await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");

    let found = store.find_credentials(&Email::parse("ADA@example.com").unwrap()).await.unwrap().unwrap();
    assert_eq!(found.user.id, first.user.id);
    assert_eq!(found.password_hash, first.password_hash);
    assert_eq!(found.user.created_at.timestamp_micros(), first.user.created_at.timestamp_micros());
    assert_eq!(store.find_user(&first.user.id).await.unwrap().unwrap().email.as_str(), "ada@example.com");
    assert!(store.find_user(&UserId::generate()).await.unwrap().is_none());
    assert!(store.find_credentials(&Email::parse("nobody@example.com").unwrap()).await.unwrap().is_none());
}

async fn rotation_has_one_winner_and_detects_reuse(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (user, first) = user_with_token(&store, Duration::days(1)).await;
    let next = replacement();
    let rotated = store.rotate_refresh_token(&first, &next, Utc::now()).await.unwrap();
    let Rotation::Rotated { user_id, family_id, expires_at } = rotated else { panic!("{rotated:?}") };
    assert_eq!(expires_at.timestamp_micros(), next.expires_at.timestamp_micros(), "well within the session: as asked");
    assert_eq!(user_id, user);

    // The replacement is live and in the same family; the first is now a replay.
    let again = store.rotate_refresh_token(&first, &replacement(), Utc::now()).await.unwrap();
    assert_eq!(again, Rotation::Reused { user_id: user, family_id });
    assert_eq!(store.revoke_family(&family_id, Utc::now(), None).await.unwrap(), 1, "only the live replacement is left to revoke");
    let after = store.rotate_refresh_token(&next.digest, &replacement(), Utc::now()).await.unwrap();
    assert!(matches!(after, Rotation::Reused { .. }), "{after:?}");
}

async fn rotation_refuses_unknown_and_expired(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    assert_eq!(store.rotate_refresh_token(&SecretDigest::of("nope"), &replacement(), Utc::now()).await.unwrap(), Rotation::Unknown);
    let (_, expiring) = user_with_token(&store, Duration::seconds(1)).await;
    let later = Utc::now() + Duration::seconds(5);
    assert_eq!(store.rotate_refresh_token(&expiring, &replacement(), later).await.unwrap(), Rotation::Expired);
    // Refusing an expired token changed nothing: it is expired, not reused.
    assert_eq!(store.rotate_refresh_token(&expiring, &replacement(), later).await.unwrap(), Rotation::Expired);
}

async fn racing_rotations_across_pools_have_one_winner(url: &str) {
    // Two pools stand for two Nexus processes sharing the database.
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (_, digest) = user_with_token(&a, Duration::days(1)).await;
    let racers = (0..16).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.rotate_refresh_token(&digest, &replacement(), Utc::now()).await })
    });
    let outcomes: Vec<Rotation> = futures_join(racers).await;
    let winners = outcomes.iter().filter(|o| matches!(o, Rotation::Rotated { .. })).count();
    let losers = outcomes.iter().filter(|o| matches!(o, Rotation::Reused { .. })).count();
    assert_eq!((winners, losers), (1, 15), "{outcomes:?}");
}

async fn futures_join(handles: impl Iterator<Item = tokio::task::JoinHandle<nexus_ports::Result<Rotation>>>) -> Vec<Rotation> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

async fn settings_keep_the_first_value(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (x, y) = tokio::join!(a.get_or_insert_setting("jwt_secret", "first"), b.get_or_insert_setting("jwt_secret", "second"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x, y);
    assert_eq!(a.get_or_insert_setting("jwt_secret", "third").await.unwrap(), x);
}

async fn migrations_are_idempotent_and_health_answers(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    store.insert_user(&new_user("kept@example.com"), &crate::audit(AuditAction::UserRegister)).await.unwrap();
    store.close().await;
    let reopened = SqlStore::connect(url).await.unwrap();
    assert!(reopened.find_credentials(&Email::parse("kept@example.com").unwrap()).await.unwrap().is_some());
    assert_eq!(reopened.name(), "database");
    reopened.check().await.unwrap();
}

#[tokio::test]
async fn unreachable_database_is_unavailable_fast() {
    let started = std::time::Instant::now();
    let result = SqlStore::connect("postgres://postgres@127.0.0.1:1/none").await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{:?}", result.err());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

async fn ending_sessions_revokes_every_token_and_sets_the_cutoff(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (user, first) = user_with_token(&a, Duration::days(1)).await;
    let second = session_of(&a, user, Duration::days(1), Duration::days(90)).await;
    let (bystander, theirs) = user_with_token(&a, Duration::days(1)).await;
    assert_eq!(a.sessions_valid_after(&user).await.unwrap(), None);

    let ended = crate::now();
    a.end_sessions(&user, ended, &crate::audit(AuditAction::UserSessionsRevoked)).await.unwrap();
    assert_eq!(b.sessions_valid_after(&user).await.unwrap(), Some(ended), "seen through another pool");
    for token in [first, second] {
        assert!(matches!(b.rotate_refresh_token(&token, &replacement(), Utc::now()).await.unwrap(), Rotation::Reused { .. }), "revoked");
    }
    assert_eq!(a.sessions_valid_after(&bystander).await.unwrap(), None);
    assert!(matches!(a.rotate_refresh_token(&theirs, &replacement(), Utc::now()).await.unwrap(), Rotation::Rotated { .. }));

    // The cut-off only moves forward.
    a.end_sessions(&user, ended - Duration::seconds(10), &crate::audit(AuditAction::UserSessionsRevoked)).await.unwrap();
    assert_eq!(a.sessions_valid_after(&user).await.unwrap(), Some(ended));
    // A session that began before the cut-off (a login racing the end) is refused; one after is fine.
    let late = RefreshTokenRecord {
        digest: SecretDigest::of("late"),
        user_id: user,
        family_id: FamilyId::generate(),
        issued_at: ended - Duration::milliseconds(1),
        expires_at: ended + Duration::days(1),
        session_expires_at: ended + Duration::days(2),
    };
    assert!(matches!(a.insert_refresh_token(&late, None).await, Err(Error::Unauthorized(_))));
    session_of(&a, user, Duration::days(1), Duration::days(90)).await;
    assert!(matches!(a.end_sessions(&UserId::generate(), ended, &crate::audit(AuditAction::UserSessionsRevoked)).await, Err(Error::NotFound(_))));
    assert_eq!(a.sessions_valid_after(&UserId::generate()).await.unwrap(), None);
}

async fn a_password_change_ends_every_session(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (user, token) = user_with_token(&store, Duration::days(1)).await;
    let email = store.find_user(&user).await.unwrap().unwrap().email;
    let (hash, at) = (PasswordHash::from_phc("$argon2id$new".into()), crate::now());
    store.change_password(&user, &hash, at, &crate::audit(AuditAction::UserPasswordChange)).await.unwrap();
    assert_eq!(store.find_credentials(&email).await.unwrap().unwrap().password_hash, hash);
    assert_eq!(store.sessions_valid_after(&user).await.unwrap(), Some(at));
    assert!(matches!(store.rotate_refresh_token(&token, &replacement(), Utc::now()).await.unwrap(), Rotation::Reused { .. }));
    assert!(matches!(store.change_password(&UserId::generate(), &hash, at, &crate::audit(AuditAction::UserPasswordChange)).await, Err(Error::NotFound(_))));
}

async fn sessions_end_at_their_absolute_lifetime(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let new = new_user("long@example.com");
    store.insert_user(&new, &crate::audit(AuditAction::UserRegister)).await.unwrap();
    // Tokens live a day, the session an hour: the first token is cut to the hour already.
    let first = session_of(&store, new.user.id, Duration::days(1), Duration::hours(1)).await;
    let session_end = Utc::now() + Duration::hours(1);
    let next = replacement();
    let Rotation::Rotated { expires_at, .. } = store.rotate_refresh_token(&first, &next, Utc::now()).await.unwrap() else { panic!("rotates") };
    assert!(expires_at <= session_end && expires_at < next.expires_at, "cut to the session's end: {expires_at}");
    // Past the session's end, rotation stops, whatever the token's own expiry said.
    let after = Utc::now() + Duration::hours(2);
    assert_eq!(store.rotate_refresh_token(&next.digest, &replacement(), after).await.unwrap(), Rotation::SessionEnded);
    assert_eq!(store.rotate_refresh_token(&next.digest, &replacement(), after).await.unwrap(), Rotation::SessionEnded, "and changes nothing");
}

async fn logout_finds_the_family_of_any_of_its_tokens(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (_, first) = user_with_token(&store, Duration::days(1)).await;
    let next = replacement();
    let Rotation::Rotated { family_id, .. } = store.rotate_refresh_token(&first, &next, Utc::now()).await.unwrap() else { panic!("rotates") };
    assert_eq!(store.family_of(&first).await.unwrap().map(|(family, _)| family), Some(family_id), "a rotated token still names its family");
    assert_eq!(store.family_of(&next.digest).await.unwrap().map(|(family, _)| family), Some(family_id));
    assert_eq!(store.family_of(&SecretDigest::of("unknown")).await.unwrap(), None);
    assert_eq!(store.revoke_family(&family_id, Utc::now(), None).await.unwrap(), 1);
}

async fn a_session_is_live_until_its_family_is_revoked(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (user, first) = user_with_token(&store, Duration::days(1)).await;
    let Rotation::Rotated { family_id, .. } = store.rotate_refresh_token(&first, &replacement(), Utc::now()).await.unwrap() else { panic!("rotates") };
    assert!(store.session_is_live(&family_id).await.unwrap(), "rotated: its replacement is live");
    let other = session_of(&store, user, Duration::days(1), Duration::days(90)).await;
    let (other_family, _) = store.family_of(&other).await.unwrap().unwrap();
    store.revoke_family(&family_id, Utc::now(), None).await.unwrap();
    assert!(!store.session_is_live(&family_id).await.unwrap(), "logged out");
    assert!(store.session_is_live(&other_family).await.unwrap(), "another session of the user goes on");
    assert!(!store.session_is_live(&FamilyId::generate()).await.unwrap(), "unknown (or pruned)");
    store.end_sessions(&user, Utc::now(), &crate::audit(AuditAction::UserSessionsRevoked)).await.unwrap();
    assert!(!store.session_is_live(&other_family).await.unwrap(), "every session ended");
}

async fn pruning_keeps_only_tokens_that_can_still_matter(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    // A live family with a rotated ancestor: both kept (presenting the ancestor revokes the family).
    let (_, ancestor) = user_with_token(&store, Duration::days(1)).await;
    let live = replacement();
    store.rotate_refresh_token(&ancestor, &live, Utc::now()).await.unwrap();
    // An ended family (logged out): gone. An expired token: gone.
    let (_, ended) = user_with_token(&store, Duration::days(1)).await;
    let ended_family = store.family_of(&ended).await.unwrap().unwrap().0;
    store.revoke_family(&ended_family, Utc::now(), None).await.unwrap();
    let (_, expired) = user_with_token(&store, Duration::seconds(1)).await;

    let pruned = store.prune_refresh_tokens(Utc::now() + Duration::minutes(1)).await.unwrap();
    assert_eq!(pruned, 2);
    assert!(store.family_of(&ended).await.unwrap().is_none() && store.family_of(&expired).await.unwrap().is_none());
    let Rotation::Reused { family_id, .. } = store.rotate_refresh_token(&ancestor, &replacement(), Utc::now()).await.unwrap() else { panic!("a replay") };
    store.revoke_family(&family_id, Utc::now(), None).await.unwrap();
    assert_eq!(store.prune_refresh_tokens(Utc::now()).await.unwrap(), 2, "the family the replay revoked goes next");
}

async fn login_attempts_are_counted_per_account_in_windows(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (ada, bob) = (Email::parse("ada@example.com").unwrap(), Email::parse("bob@example.com").unwrap());
    let start = crate::now();
    let window = Duration::minutes(15);
    // Racing attempts from two pools all count.
    let racers = (0..10).map(|i| {
        let (store, ada) = (if i % 2 == 0 { a.clone() } else { b.clone() }, ada.clone());
        tokio::spawn(async move { store.count_login_attempt(&ada, start, start - window).await.unwrap() })
    });
    let mut counts = Vec::new();
    for racer in racers.collect::<Vec<_>>() {
        let counted = racer.await.unwrap();
        assert_eq!(counted.started_at, start);
        counts.push(counted.attempts);
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=10).collect::<Vec<_>>(), "each attempt got a count of its own");
    assert_eq!(a.count_login_attempt(&bob, start, start - window).await.unwrap().attempts, 1, "per account");

    // Within the window the count goes on; past it a new window begins.
    let later = start + Duration::minutes(10);
    assert_eq!(a.count_login_attempt(&ada, later, later - window).await.unwrap().attempts, 11);
    let next = start + Duration::minutes(16);
    let fresh = a.count_login_attempt(&ada, next, next - window).await.unwrap();
    assert_eq!((fresh.started_at, fresh.attempts), (next, 1));

    a.clear_login_attempts(&ada).await.unwrap();
    assert_eq!(a.count_login_attempt(&ada, next, next - window).await.unwrap().attempts, 1);
    assert_eq!(a.prune_login_attempts(next - window).await.unwrap(), 1, "bob's window began before");
    assert_eq!(a.prune_login_attempts(next - window).await.unwrap(), 0);
}
