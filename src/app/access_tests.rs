//! Authentication and scoping against mockall doubles.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use nexus_ports::Error;
use nexus_ports::changes::Change;
use nexus_ports::identity::UserId;
use nexus_ports::ports::{MockAccessTokens, MockApiKeyStore, MockClock, MockRefreshTokenStore, MockTenantStore, MockUserStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, Tenant, TenantId};
use nexus_ports::tokens::{AccessClaims, FamilyId, SecretDigest};

use super::{AccessPorts, AccessService, Credentials, Principal, issued_before_cutoff};
use crate::app::key_usage::KeyUsage;

fn tenant(owner: UserId) -> Tenant {
    nexus_ports::testing::tenant(owner)
}

fn key(tenant: &Tenant, raw: &str) -> ApiKey {
    ApiKey {
        digest: SecretDigest::of(raw),
        tenant_id: tenant.id,
        label: KeyLabel::parse("ci").unwrap(),
        scope: KeyScope::Write,
        created_at: Utc::now(),
        expires_at: None,
        last_used_at: None,
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

struct Ports {
    tokens: MockAccessTokens,
    users: MockUserStore,
    sessions: MockRefreshTokenStore,
    keys: MockApiKeyStore,
    tenants: MockTenantStore,
}

impl Ports {
    /// Tokens: "good" was issued a minute ago, "older" an hour ago, both before sessions
    /// were named; "in-session" names [`session`]. No session was ever ended.
    fn new() -> Self {
        let mut tokens = MockAccessTokens::new();
        let user = UserId::from_uuid(uuid::Uuid::nil());
        tokens.expect_verify().returning(move |token, at| match token {
            "good" => Ok(AccessClaims { user_id: user, session: None, token_id: "j".into(), issued_at: at - Duration::minutes(1), expires_at: at }),
            "older" => Ok(AccessClaims { user_id: user, session: None, token_id: "k".into(), issued_at: at - Duration::hours(1), expires_at: at }),
            "in-session" => {
                Ok(AccessClaims { user_id: user, session: Some(session()), token_id: "l".into(), issued_at: at - Duration::minutes(1), expires_at: at })
            }
            _ => Err(Error::unauthorized("invalid or expired access token")),
        });
        let mut users = MockUserStore::new();
        users.expect_sessions_valid_after().returning(|_| Ok(None));
        Self { tokens, users, sessions: MockRefreshTokenStore::new(), keys: MockApiKeyStore::new(), tenants: MockTenantStore::new() }
    }

    fn service(self) -> (AccessService, Arc<KeyUsage>) {
        self.service_with(crate::app::Changes::local())
    }

    fn service_with(self, changes: Arc<crate::app::Changes>) -> (AccessService, Arc<KeyUsage>) {
        let mut clock = MockClock::new();
        clock.expect_now().returning(now);
        let usage = Arc::new(KeyUsage::new(Arc::new(MockApiKeyStore::new())));
        (
            AccessService::new(AccessPorts {
                tokens: Arc::new(self.tokens),
                users: Arc::new(self.users),
                sessions: Arc::new(self.sessions),
                keys: Arc::new(self.keys),
                tenants: Arc::new(self.tenants),
                clock: Arc::new(clock),
                usage: usage.clone(),
                changes,
            }),
            usage,
        )
    }
}

fn session() -> FamilyId {
    FamilyId(uuid::Uuid::from_u128(7))
}

fn nil_user() -> UserId {
    UserId::from_uuid(uuid::Uuid::nil())
}

#[tokio::test]
async fn bearer_first_then_api_key_and_each_refusal_says_why() {
    let org = tenant(UserId::generate());
    let stored = key(&org, "nxk_good");
    let mut ports = Ports::new();
    let found = (stored.clone(), org.clone());
    ports.keys.expect_find_key().returning(move |digest| Ok((*digest == SecretDigest::of("nxk_good")).then(|| found.clone())));
    let (access, usage) = ports.service();
    let auth = |bearer, api_key| access.authenticate(Credentials { bearer, api_key });

    assert_eq!(auth(Some("good"), Some("nxk_good")).await.unwrap(), Principal::User(nil_user()), "bearer wins");
    assert_eq!(
        auth(Some("bad"), Some("nxk_good")).await.unwrap(),
        Principal::ApiKey { key: stored.clone(), tenant: org.clone() },
        "invalid bearer falls back to the key"
    );
    assert!(usage.noted(&stored.digest).is_some(), "key use is noted");
    let refusal = |r: nexus_ports::Result<Principal>| match r {
        Err(Error::Unauthorized(message)) => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(refusal(auth(Some("bad"), None).await), "invalid or expired access token");
    assert_eq!(refusal(auth(None, Some("nxk_revoked")).await), "invalid or revoked API key");
    assert_eq!(refusal(auth(Some("bad"), Some("nxk_revoked")).await), "invalid or revoked API key");
    assert!(refusal(auth(None, None).await).starts_with("missing credentials"));
}

#[tokio::test]
async fn users_reach_only_tenants_they_own_and_keys_only_their_own() {
    let mine = tenant(nil_user());
    let theirs = tenant(UserId::generate());
    let mut ports = Ports::new();
    let (m, t) = (mine.clone(), theirs.clone());
    ports.tenants.expect_find_tenant().returning(move |id| Ok([&m, &t].into_iter().find(|x| x.id == *id).cloned()));
    let (access, _) = ports.service();
    let user = Principal::User(nil_user());

    assert_eq!(access.tenant_scope(&user, Some(&mine.id.to_string())).await.unwrap(), mine);
    assert!(matches!(access.tenant_scope(&user, Some(&theirs.id.to_string())).await, Err(Error::Forbidden(_))));
    assert!(matches!(access.tenant_scope(&user, Some(&TenantId::generate().to_string())).await, Err(Error::Forbidden(_))), "unknown looks like not owned");
    assert!(matches!(access.tenant_scope(&user, None).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(access.tenant_scope(&user, Some("t_zz")).await, Err(Error::InvalidRequest(_))));

    let by_key = Principal::ApiKey { key: key(&theirs, "k"), tenant: theirs.clone() };
    assert_eq!(access.tenant_scope(&by_key, None).await.unwrap(), theirs);
    assert_eq!(access.tenant_scope(&by_key, Some(&theirs.id.to_string())).await.unwrap(), theirs);
    assert!(matches!(access.tenant_scope(&by_key, Some(&mine.id.to_string())).await, Err(Error::Forbidden(_))));

    assert_eq!(AccessService::require_user(&user).unwrap(), nil_user());
    assert!(matches!(AccessService::require_user(&by_key), Err(Error::Forbidden(_))));
}

#[test]
fn tokens_issued_before_the_cutoff_are_stale() {
    assert!(!issued_before_cutoff(now(), None), "no session was ever ended");
    assert!(issued_before_cutoff(now() - Duration::microseconds(1), Some(now())));
    assert!(!issued_before_cutoff(now(), Some(now())), "issued at the very moment: a login just after the end");
    assert!(!issued_before_cutoff(now() + Duration::seconds(1), Some(now())));
}

#[tokio::test]
async fn tokens_from_before_the_sessions_ended_are_refused_and_fall_back_to_the_key() {
    let org = tenant(UserId::generate());
    let stored = key(&org, "nxk_good");
    let mut ports = Ports::new();
    // The user ended every session ten minutes ago: "older" predates it, "good" does not.
    ports.users.checkpoint();
    ports.users.expect_sessions_valid_after().returning(|_| Ok(Some(now() - Duration::minutes(10))));
    let found = (stored.clone(), org.clone());
    ports.keys.expect_find_key().returning(move |_| Ok(Some(found.clone())));
    let (access, _) = ports.service();
    let auth = |bearer| access.authenticate(Credentials { bearer: Some(bearer), api_key: None });
    assert_eq!(auth("good").await.unwrap(), Principal::User(nil_user()));
    assert_eq!(auth("older").await, Err(Error::unauthorized("this session has ended; log in again")));
    let with_key = access.authenticate(Credentials { bearer: Some("older"), api_key: Some("nxk_good") }).await.unwrap();
    assert_eq!(with_key, Principal::ApiKey { key: stored, tenant: org });
}

#[tokio::test]
async fn a_token_is_refused_once_its_own_session_is_revoked_and_the_store_is_asked_once_per_change() {
    let mut ports = Ports::new();
    let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let stored = live.clone();
    ports.sessions.expect_session_is_live().times(2).returning(move |family| {
        assert_eq!(*family, session());
        Ok(stored.load(std::sync::atomic::Ordering::SeqCst))
    });
    let changes = crate::app::Changes::local();
    let (access, _) = ports.service_with(changes.clone());
    let auth = || access.authenticate(Credentials { bearer: Some("in-session"), api_key: None });
    for _ in 0..3 {
        assert_eq!(auth().await.unwrap(), Principal::User(nil_user()), "read once, then from memory");
    }
    live.store(false, std::sync::atomic::Ordering::SeqCst);
    changes.announce(Change::SessionRevoked { user: nil_user(), session: session() }).await;
    for _ in 0..3 {
        assert_eq!(auth().await, Err(Error::unauthorized("this session has ended; log in again")));
    }
    assert_eq!(
        access.authenticate(Credentials { bearer: Some("good"), api_key: None }).await.unwrap(),
        Principal::User(nil_user()),
        "a token naming no session"
    );
}

#[tokio::test]
async fn a_store_outage_while_checking_the_session_is_not_a_refusal() {
    let mut ports = Ports::new();
    ports.users.checkpoint();
    ports.users.expect_sessions_valid_after().returning(|_| Err(Error::Unavailable("the database is unavailable".into())));
    let (access, _) = ports.service();
    let result = access.authenticate(Credentials { bearer: Some("good"), api_key: None }).await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
}

#[test]
fn read_scoped_keys_may_only_read() {
    let org = tenant(UserId::generate());
    let reader = Principal::ApiKey { key: ApiKey { scope: KeyScope::Read, ..key(&org, "r") }, tenant: org.clone() };
    let writer = Principal::ApiKey { key: key(&org, "w"), tenant: org.clone() };
    assert_eq!(AccessService::permits(&reader, true), Ok(()));
    assert!(matches!(AccessService::permits(&reader, false), Err(Error::Forbidden(m)) if m.contains("read-only")));
    assert_eq!(AccessService::permits(&writer, false), Ok(()));
    assert_eq!(AccessService::permits(&Principal::User(UserId::generate()), false), Ok(()));
}

#[test]
fn keys_work_up_to_their_expiry() {
    let end = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let expiring = ApiKey { expires_at: Some(end), ..key(&tenant(UserId::generate()), "e") };
    assert!(!expiring.expired_at(end - Duration::seconds(1)));
    assert!(expiring.expired_at(end));
    assert!(!key(&tenant(UserId::generate()), "forever").expired_at(end));
}
