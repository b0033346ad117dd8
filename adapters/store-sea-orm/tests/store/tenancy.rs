//! Tenants and API keys.

use chrono::Duration;
use nexus_ports::Error;
use nexus_ports::audit::AuditAction;
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::{ApiKeyStore, TenantStore, UserStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, Tenant, TenantId};
use nexus_ports::tokens::SecretDigest;
use nexus_store_sea_orm::SqlStore;

use crate::identity::new_user;
use crate::{now, on_both_backends};

on_both_backends!(
    tenants_belong_to_their_owner,
    deleting_a_tenant_takes_its_keys,
    keys_are_found_with_their_tenant,
    keys_are_revoked_only_within_their_tenant,
    key_usage_keeps_the_latest_time,
    the_tenant_quota_holds_under_racing_creates,
    the_key_quota_holds_under_racing_creates
);

pub(crate) async fn owner(store: &SqlStore) -> UserId {
    let user = new_user(&format!("{}@example.com", uuid::Uuid::new_v4().simple()));
    store.insert_user(&user, &crate::audit(AuditAction::UserRegister)).await.unwrap();
    user.user.id
}

pub(crate) async fn tenant_of(store: &SqlStore, owner: UserId, name: &str) -> Tenant {
    let tenant = Tenant { display_name: DisplayName::parse(name).unwrap(), created_at: now(), ..nexus_ports::testing::tenant(owner) };
    store.insert_tenant(&tenant, 100, &crate::audit(AuditAction::TenantCreate)).await.unwrap();
    tenant
}

pub(crate) async fn key_of(store: &SqlStore, tenant: &Tenant, label: &str) -> ApiKey {
    let key = ApiKey {
        digest: SecretDigest::of(&uuid::Uuid::new_v4().to_string()),
        tenant_id: tenant.id,
        label: KeyLabel::parse(label).unwrap(),
        scope: KeyScope::Write,
        created_at: now(),
        expires_at: None,
        last_used_at: None,
    };
    store.insert_key(&key, 100, &crate::audit(AuditAction::KeyCreate)).await.unwrap();
    key
}

async fn tenants_belong_to_their_owner(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (ada, bob) = (owner(&store).await, owner(&store).await);
    let older = tenant_of(&store, ada, "Zed org").await;
    let a = tenant_of(&store, ada, "A org").await;
    let theirs = tenant_of(&store, bob, "Bob's").await;
    assert_eq!(store.list_tenants_of(&ada).await.unwrap(), vec![older, a.clone()], "oldest first, not by name");
    assert_eq!(store.list_tenants_of(&bob).await.unwrap(), vec![theirs.clone()]);
    assert_eq!(store.find_tenant(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.list_all_tenants().await.unwrap().len(), 3);
    assert!(store.find_tenant(&TenantId::generate()).await.unwrap().is_none());

    let orphan = Tenant { id: TenantId::generate(), owner: UserId::generate(), ..a.clone() };
    assert!(
        matches!(store.insert_tenant(&orphan, 100, &crate::audit(AuditAction::TenantCreate)).await, Err(Error::NotFound(_))),
        "an unknown owner is refused"
    );
    assert!(matches!(store.insert_tenant(&a, 100, &crate::audit(AuditAction::TenantCreate)).await, Err(Error::AlreadyExists(_))));
}

async fn deleting_a_tenant_takes_its_keys(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = owner(&store).await;
    let (gone, kept) = (tenant_of(&store, ada, "gone").await, tenant_of(&store, ada, "kept").await);
    let (gone_key, kept_key) = (key_of(&store, &gone, "ci").await, key_of(&store, &kept, "ci").await);
    assert!(store.delete_tenant(&gone.id, &crate::audit(AuditAction::TenantDelete)).await.unwrap());
    assert!(!store.delete_tenant(&gone.id, &crate::audit(AuditAction::TenantDelete)).await.unwrap(), "already gone");
    assert!(store.find_key(&gone_key.digest).await.unwrap().is_none());
    assert!(store.list_keys(&gone.id).await.unwrap().is_empty());
    assert_eq!(store.find_key(&kept_key.digest).await.unwrap().map(|(k, _)| k), Some(kept_key));
}

async fn keys_are_found_with_their_tenant(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let tenant = tenant_of(&store, owner(&store).await, "org").await;
    let (first, second) = (key_of(&store, &tenant, "ci").await, key_of(&store, &tenant, "deploy").await);
    let (found, of) = store.find_key(&second.digest).await.unwrap().unwrap();
    assert_eq!((found, of), (second.clone(), tenant.clone()));
    // Scope and expiry read back as written.
    let scoped = ApiKey { digest: SecretDigest::of("scoped"), scope: KeyScope::Read, expires_at: Some(now() + chrono::Duration::hours(1)), ..second.clone() };
    store.insert_key(&scoped, 100, &crate::audit(AuditAction::KeyCreate)).await.unwrap();
    assert_eq!(store.find_key(&scoped.digest).await.unwrap().unwrap().0, scoped);
    assert!(store.delete_key(&tenant.id, &scoped.digest, &crate::audit(AuditAction::KeyRevoke)).await.unwrap());
    assert!(store.find_key(&SecretDigest::of("unknown")).await.unwrap().is_none());
    let mut listed = store.list_keys(&tenant.id).await.unwrap();
    listed.sort_by_key(|k| k.label.as_str().to_owned());
    assert_eq!(listed, vec![first, second]);
    assert!(matches!(
        store.insert_key(&ApiKey { tenant_id: TenantId::generate(), ..key_of(&store, &tenant, "x").await }, 100, &crate::audit(AuditAction::KeyCreate)).await,
        Err(Error::AlreadyExists(_) | Error::NotFound(_))
    ));
}

async fn keys_are_revoked_only_within_their_tenant(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = owner(&store).await;
    let (mine, other) = (tenant_of(&store, ada, "mine").await, tenant_of(&store, ada, "other").await);
    let key = key_of(&store, &mine, "ci").await;
    assert!(!store.delete_key(&other.id, &key.digest, &crate::audit(AuditAction::KeyRevoke)).await.unwrap(), "not through another tenant");
    assert!(store.find_key(&key.digest).await.unwrap().is_some());
    assert!(store.delete_key(&mine.id, &key.digest, &crate::audit(AuditAction::KeyRevoke)).await.unwrap());
    assert!(store.find_key(&key.digest).await.unwrap().is_none());
}

async fn key_usage_keeps_the_latest_time(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let tenant = tenant_of(&store, owner(&store).await, "org").await;
    let key = key_of(&store, &tenant, "ci").await;
    let (early, late) = (now(), now() + Duration::minutes(5));
    store.record_key_usage(&[(key.digest, late), (SecretDigest::of("deleted key"), late)]).await.unwrap();
    store.record_key_usage(&[(key.digest, early)]).await.unwrap();
    let (found, _) = store.find_key(&key.digest).await.unwrap().unwrap();
    assert_eq!(found.last_used_at, Some(late));
    store.record_key_usage(&[]).await.unwrap();
}

async fn the_tenant_quota_holds_under_racing_creates(url: &str) {
    // Two pools stand for two Nexus processes sharing the database.
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (ada, bob) = (owner(&a).await, owner(&a).await);
    let racers = (0..10).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tenant = Tenant { display_name: DisplayName::parse("racer").unwrap(), created_at: now(), ..nexus_ports::testing::tenant(ada) };
        tokio::spawn(async move { store.insert_tenant(&tenant, 3, &crate::audit(AuditAction::TenantCreate)).await })
    });
    let mut outcomes = Vec::new();
    for racer in racers.collect::<Vec<_>>() {
        outcomes.push(racer.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 3, "{outcomes:?}");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        assert!(matches!(outcome, Err(Error::Conflict(m)) if m.contains("tenant quota")), "{outcome:?}");
    }
    assert_eq!(a.list_tenants_of(&ada).await.unwrap().len(), 3);
    // The quota is per owner.
    tenant_of(&a, bob, "bob's").await;
}

async fn the_key_quota_holds_under_racing_creates(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let ada = owner(&a).await;
    let (tenant, other) = (tenant_of(&a, ada, "org").await, tenant_of(&a, ada, "other").await);
    let racers = (0..10).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = ApiKey {
            digest: SecretDigest::of(&uuid::Uuid::new_v4().to_string()),
            tenant_id: tenant.id,
            label: KeyLabel::parse("racer").unwrap(),
            scope: KeyScope::Write,
            created_at: now(),
            expires_at: None,
            last_used_at: None,
        };
        tokio::spawn(async move { store.insert_key(&key, 4, &crate::audit(AuditAction::KeyCreate)).await })
    });
    let mut outcomes = Vec::new();
    for racer in racers.collect::<Vec<_>>() {
        outcomes.push(racer.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 4, "{outcomes:?}");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        assert!(matches!(outcome, Err(Error::Conflict(m)) if m.contains("API key quota")), "{outcome:?}");
    }
    assert_eq!(a.list_keys(&tenant.id).await.unwrap().len(), 4);
    key_of(&a, &other, "ci").await;
}
