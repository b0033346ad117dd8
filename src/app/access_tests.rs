//! Authentication and scoping against mockall doubles.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use nexus_ports::Error;
use nexus_ports::identity::UserId;
use nexus_ports::ports::{MockAccessTokens, MockApiKeyStore, MockClock, MockTenantStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, Tenant, TenantId};
use nexus_ports::tokens::{AccessClaims, SecretDigest};

use super::{AccessPorts, AccessService, Credentials, Principal};
use crate::app::key_usage::KeyUsage;

fn tenant(owner: UserId) -> Tenant {
    nexus_ports::testing::tenant(owner)
}

fn key(tenant: &Tenant, raw: &str) -> ApiKey {
    ApiKey { digest: SecretDigest::of(raw), tenant_id: tenant.id, label: KeyLabel::parse("ci").unwrap(), created_at: Utc::now(), last_used_at: None }
}

struct Ports {
    tokens: MockAccessTokens,
    keys: MockApiKeyStore,
    tenants: MockTenantStore,
}

impl Ports {
    fn new() -> Self {
        let mut tokens = MockAccessTokens::new();
        let user = UserId::from_uuid(uuid::Uuid::nil());
        tokens.expect_verify().returning(move |token, at| match token {
            "good" => Ok(AccessClaims { user_id: user, token_id: "j".into(), issued_at: at, expires_at: at }),
            _ => Err(Error::unauthorized("invalid or expired access token")),
        });
        Self { tokens, keys: MockApiKeyStore::new(), tenants: MockTenantStore::new() }
    }

    fn service(self) -> (AccessService, Arc<KeyUsage>) {
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap());
        let usage = Arc::new(KeyUsage::new(Arc::new(MockApiKeyStore::new())));
        (
            AccessService::new(AccessPorts {
                tokens: Arc::new(self.tokens),
                keys: Arc::new(self.keys),
                tenants: Arc::new(self.tenants),
                clock: Arc::new(clock),
                usage: usage.clone(),
            }),
            usage,
        )
    }
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
