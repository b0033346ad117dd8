//! The audit trail: events written with their change (and only when it commits), read back
//! newest first a page at a time, kept in a user's trail after its tenant is gone, pruned
//! past their retention.

use chrono::Duration;
use nexus_ports::Error;
use nexus_ports::agents::{Agent, AgentName};
use nexus_ports::audit::{AuditAction, AuditCursor, AuditEvent, AuditEventId};
use nexus_ports::identity::UserId;
use nexus_ports::ports::{AgentStore, ApiKeyStore, AuditStore, TenantStore, UserStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, Tenant, TenantId};
use nexus_ports::testing;
use nexus_ports::tokens::SecretDigest;
use nexus_store_sea_orm::SqlStore;

use crate::identity::new_user;
use crate::{now, on_both_backends};

on_both_backends!(
    events_are_read_back_newest_first_a_page_at_a_time,
    a_failed_change_records_nothing,
    a_users_trail_keeps_the_tenants_it_deleted,
    old_events_are_pruned,
    refusals_add_up_in_one_event_per_minute_and_go_with_the_retention,
    revoked_keys_are_remembered_as_long_as_the_trail,
    a_cursor_whose_event_was_pruned_goes_on_by_time
);

fn event(user: UserId, tenant: Option<TenantId>, action: AuditAction, target: &str) -> AuditEvent {
    let mut event = AuditEvent::now(now(), user.to_string(), action, target).of_user(user);
    event.tenant = tenant;
    event.request_id = Some("req-1".into());
    event.correlation_id = Some("client-1".into());
    event.source_ip = Some("2001:db8::7".into());
    event
}

fn in_tenant(tenant: TenantId, actor: &str, action: AuditAction, target: &str) -> AuditEvent {
    AuditEvent::now(now(), actor, action, target).in_tenant(tenant)
}

async fn user(store: &SqlStore) -> UserId {
    let user = new_user(&format!("{}@example.com", uuid::Uuid::new_v4().simple()));
    store.insert_user(&user, &event(user.user.id, None, AuditAction::UserRegister, &user.user.id.to_string())).await.unwrap();
    user.user.id
}

async fn tenant(store: &SqlStore, owner: UserId, max_tenants: u32) -> Result<Tenant, Error> {
    let tenant = Tenant { created_at: now(), ..testing::tenant(owner) };
    store.insert_tenant(&tenant, max_tenants, &event(owner, Some(tenant.id), AuditAction::TenantCreate, &tenant.id.to_string())).await?;
    Ok(tenant)
}

fn actions(events: &[AuditEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

async fn events_are_read_back_newest_first_a_page_at_a_time(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let t = tenant(&store, ada, 10).await.unwrap();
    let key = ApiKey {
        digest: SecretDigest::of("k"),
        tenant_id: t.id,
        label: KeyLabel::parse("ci").unwrap(),
        scope: KeyScope::default(),
        created_at: now(),
        expires_at: None,
        last_used_at: None,
    };
    store.insert_key(&key, 10, &in_tenant(t.id, &ada.to_string(), AuditAction::KeyCreate, &key.digest.to_hex())).await.unwrap();
    let bot = Agent { tenant_id: t.id, manifest: testing::manifest("bot", "m"), version_number: 1, created_at: now(), updated_at: now() };
    store
        .insert_agent(
            &bot,
            "key:ci",
            nexus_ports::agents::AgentQuota { max_agents: 10, max_manifest_bytes: 1 << 30 },
            &in_tenant(t.id, "key:ci", AuditAction::AgentCreate, "bot"),
        )
        .await
        .unwrap();
    store
        .update_agent(
            &t.id,
            &testing::manifest("bot", "n"),
            "key:ci",
            now(),
            nexus_ports::agents::UpdateLimits { keep_versions: 10, max_manifest_bytes: 1 << 30 },
            None,
            &in_tenant(t.id, "key:ci", AuditAction::AgentUpdate, "bot"),
        )
        .await
        .unwrap();
    let name = AgentName::parse("bot").unwrap();
    assert!(store.delete_agent(&t.id, &name, None, &in_tenant(t.id, "key:ci", AuditAction::AgentDelete, "bot")).await.unwrap());
    assert!(store.delete_key(&t.id, &key.digest, &in_tenant(t.id, &ada.to_string(), AuditAction::KeyRevoke, &key.digest.to_hex())).await.unwrap());

    let all = store.tenant_events(&t.id, 100, None).await.unwrap();
    assert_eq!(actions(&all.events), ["key.revoke", "agent.delete", "agent.update", "agent.create", "key.create", "tenant.create"]);
    assert_eq!(all.next, None, "one page holds them all");
    let created = all.events.last().unwrap();
    assert_eq!((created.actor.clone(), created.target.clone(), created.user, created.tenant), (ada.to_string(), t.id.to_string(), Some(ada), Some(t.id)));
    assert_eq!(
        (created.request_id.as_deref(), created.correlation_id.as_deref(), created.source_ip.as_deref()),
        (Some("req-1"), Some("client-1"), Some("2001:db8::7")),
        "what the request said is kept"
    );
    assert_eq!(created.count, None, "only refusals are counted");
    assert_eq!(all.events[1].actor, "key:ci");

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.tenant_events(&t.id, 4, after).await.unwrap();
        assert!(page.events.len() <= 4);
        paged.extend(page.events);
        match page.next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(paged, all.events, "pages follow one another without a gap or a repeat");

    let mine = store.user_events(&ada, 100, None).await.unwrap();
    assert_eq!(actions(&mine.events), ["tenant.create", "user.register"], "a user's trail holds its own events, not its tenants'");
    assert!(store.user_events(&UserId::generate(), 100, None).await.unwrap().events.is_empty());
}

async fn a_failed_change_records_nothing(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let t = tenant(&store, ada, 1).await.unwrap();
    assert!(matches!(tenant(&store, ada, 1).await, Err(Error::Conflict(_))), "over the tenant quota");
    let bot = Agent { tenant_id: t.id, manifest: testing::manifest("bot", "m"), version_number: 1, created_at: now(), updated_at: now() };
    store
        .insert_agent(
            &bot,
            "key:ci",
            nexus_ports::agents::AgentQuota { max_agents: 1, max_manifest_bytes: 1 << 30 },
            &in_tenant(t.id, "key:ci", AuditAction::AgentCreate, "bot"),
        )
        .await
        .unwrap();
    let again = store
        .insert_agent(
            &bot,
            "key:ci",
            nexus_ports::agents::AgentQuota { max_agents: 5, max_manifest_bytes: 1 << 30 },
            &in_tenant(t.id, "key:ci", AuditAction::AgentCreate, "bot"),
        )
        .await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "a name taken");
    let other = Agent { manifest: testing::manifest("other", "m"), ..bot.clone() };
    let over = store
        .insert_agent(
            &other,
            "key:ci",
            nexus_ports::agents::AgentQuota { max_agents: 1, max_manifest_bytes: 1 << 30 },
            &in_tenant(t.id, "key:ci", AuditAction::AgentCreate, "other"),
        )
        .await;
    assert!(matches!(over, Err(Error::Conflict(_))), "over the agent quota");
    let ghost = store
        .update_agent(
            &t.id,
            &testing::manifest("ghost", "m"),
            "key:ci",
            now(),
            nexus_ports::agents::UpdateLimits { keep_versions: 5, max_manifest_bytes: 1 << 30 },
            None,
            &in_tenant(t.id, "key:ci", AuditAction::AgentUpdate, "ghost"),
        )
        .await;
    assert!(matches!(ghost, Err(Error::NotFound(_))));
    let stale = store
        .update_agent(
            &t.id,
            &testing::manifest("bot", "n"),
            "key:ci",
            now(),
            nexus_ports::agents::UpdateLimits { keep_versions: 5, max_manifest_bytes: 1 << 30 },
            Some(9),
            &in_tenant(t.id, "key:ci", AuditAction::AgentUpdate, "bot"),
        )
        .await;
    assert!(matches!(stale, Err(Error::PreconditionFailed(_))), "a stale If-Match");
    let bot_name = AgentName::parse("bot").unwrap();
    let stale = store.delete_agent(&t.id, &bot_name, Some(9), &in_tenant(t.id, "key:ci", AuditAction::AgentDelete, "bot")).await;
    assert!(matches!(stale, Err(Error::PreconditionFailed(_))));
    let name = AgentName::parse("ghost").unwrap();
    assert!(!store.delete_agent(&t.id, &name, None, &in_tenant(t.id, "key:ci", AuditAction::AgentDelete, "ghost")).await.unwrap());
    let key = ApiKey {
        digest: SecretDigest::of("k"),
        tenant_id: t.id,
        label: KeyLabel::parse("ci").unwrap(),
        scope: KeyScope::default(),
        created_at: now(),
        expires_at: None,
        last_used_at: None,
    };
    let revoke = in_tenant(t.id, &ada.to_string(), AuditAction::KeyRevoke, "k");
    assert!(!store.delete_key(&t.id, &key.digest, &revoke).await.unwrap(), "no such key");
    store.insert_key(&key, 1, &in_tenant(t.id, &ada.to_string(), AuditAction::KeyCreate, "k")).await.unwrap();
    let second = ApiKey { digest: SecretDigest::of("k2"), ..key.clone() };
    assert!(matches!(store.insert_key(&second, 1, &in_tenant(t.id, &ada.to_string(), AuditAction::KeyCreate, "k2")).await, Err(Error::Conflict(_))));
    let hash = nexus_ports::identity::PasswordHash::from_phc("$argon2id$x".into());
    let nobody = UserId::generate();
    assert!(matches!(store.change_password(&nobody, &hash, now(), &event(nobody, None, AuditAction::UserPasswordChange, "x")).await, Err(Error::NotFound(_))));
    assert!(matches!(store.end_sessions(&nobody, now(), &event(nobody, None, AuditAction::UserSessionsRevoked, "x")).await, Err(Error::NotFound(_))));
    let gone = TenantId::generate();
    assert!(!store.delete_tenant(&gone, &event(ada, Some(gone), AuditAction::TenantDelete, "x")).await.unwrap());

    assert_eq!(actions(&store.tenant_events(&t.id, 100, None).await.unwrap().events), ["key.create", "agent.create", "tenant.create"]);
    assert_eq!(actions(&store.user_events(&ada, 100, None).await.unwrap().events), ["tenant.create", "user.register"]);
    assert!(store.user_events(&nobody, 100, None).await.unwrap().events.is_empty());
}

async fn a_users_trail_keeps_the_tenants_it_deleted(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let t = tenant(&store, ada, 10).await.unwrap();
    assert!(store.delete_tenant(&t.id, &event(ada, Some(t.id), AuditAction::TenantDelete, &t.id.to_string())).await.unwrap());
    let mine = store.user_events(&ada, 100, None).await.unwrap();
    assert_eq!(actions(&mine.events), ["tenant.delete", "tenant.create", "user.register"]);
    assert_eq!(mine.events[0].target, t.id.to_string());
}

async fn old_events_are_pruned(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let mut old = event(ada, None, AuditAction::UserLoginFailed, "x");
    old.at = now() - Duration::days(91);
    store.record_event(&old).await.unwrap();
    store.record_event(&event(ada, None, AuditAction::UserLoginFailed, "x")).await.unwrap();
    assert_eq!(store.prune_events(now() - Duration::days(90)).await.unwrap(), 1);
    assert_eq!(actions(&store.user_events(&ada, 100, None).await.unwrap().events), ["user.login_failed", "user.register"]);
}

async fn refusals_add_up_in_one_event_per_minute_and_go_with_the_retention(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let t = tenant(&store, ada, 10).await.unwrap();
    let minute = chrono::DateTime::from_timestamp(now().timestamp().div_euclid(60) * 60, 0).unwrap();
    let refusal = |at, actor: &str| {
        let mut event = in_tenant(t.id, actor, AuditAction::AccessReadOnlyKey, "POST /api/v1/agents");
        event.at = at;
        event
    };
    // Two replicas count the same minute: one event, the counts added.
    store.record_refusals(&refusal(minute, "key:12345678 (ci)"), 3).await.unwrap();
    store.record_refusals(&refusal(minute + Duration::seconds(30), "key:12345678 (ci)"), 4).await.unwrap();
    store.record_refusals(&refusal(minute + Duration::seconds(60), "key:12345678 (ci)"), 1).await.unwrap();
    store.record_refusals(&refusal(minute, "key:87654321 (ci)"), 2).await.unwrap();
    let events = store.tenant_events(&t.id, 100, None).await.unwrap().events;
    let counts: Vec<(String, Option<u32>)> = events.iter().filter(|e| e.action == AuditAction::AccessReadOnlyKey).map(|e| (e.actor.clone(), e.count)).collect();
    assert_eq!(counts, [("key:87654321 (ci)".to_owned(), Some(2)), ("key:12345678 (ci)".to_owned(), Some(1)), ("key:12345678 (ci)".to_owned(), Some(7))]);
    let pruned = store.prune_events(minute + Duration::seconds(60)).await.unwrap();
    assert_eq!(pruned, 2 + 2, "retention bounds refusals too (with user.register and tenant.create)");
    assert_eq!(store.tenant_events(&t.id, 100, None).await.unwrap().events.len(), 1);
}

async fn revoked_keys_are_remembered_as_long_as_the_trail(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    let t = tenant(&store, ada, 10).await.unwrap();
    let key = ApiKey {
        digest: SecretDigest::of("revoked"),
        tenant_id: t.id,
        label: KeyLabel::parse("old ci").unwrap(),
        scope: KeyScope::default(),
        created_at: now(),
        expires_at: None,
        last_used_at: None,
    };
    store.insert_key(&key, 10, &in_tenant(t.id, "a", AuditAction::KeyCreate, "k")).await.unwrap();
    assert_eq!(store.find_revoked_key(&key.digest).await.unwrap(), None, "live keys are not revoked");
    assert!(store.delete_key(&t.id, &key.digest, &in_tenant(t.id, "a", AuditAction::KeyRevoke, "k")).await.unwrap());
    assert_eq!(store.find_revoked_key(&key.digest).await.unwrap(), Some((t.id, key.label.clone())));
    assert_eq!(store.find_revoked_key(&SecretDigest::of("never")).await.unwrap(), None);
    store.prune_events(now() + Duration::seconds(1)).await.unwrap();
    assert_eq!(store.find_revoked_key(&key.digest).await.unwrap(), None, "forgotten with the trail");
}

async fn a_cursor_whose_event_was_pruned_goes_on_by_time(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let ada = user(&store).await;
    for days in [3, 2, 1] {
        let mut old = event(ada, None, AuditAction::UserLoginFailed, &format!("{days}"));
        old.at = now() - Duration::days(days);
        store.record_event(&old).await.unwrap();
    }
    let first = store.user_events(&ada, 2, None).await.unwrap();
    let cursor = first.next.expect("more");
    assert_eq!(cursor.id, first.events[1].id);
    // Retention takes the cursor's event: the next page starts before its time.
    store.prune_events(now() - Duration::days(2) + Duration::seconds(1)).await.unwrap();
    let next = store.user_events(&ada, 10, Some(cursor)).await.unwrap();
    assert!(next.events.is_empty(), "everything older went with it: {next:?}");
    let mut newer = event(ada, None, AuditAction::UserLoginFailed, "0");
    newer.at = now() - Duration::hours(1);
    store.record_event(&newer).await.unwrap();
    let page = store.user_events(&ada, 10, Some(AuditCursor { id: AuditEventId::generate(), at: now() - Duration::minutes(1) })).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["0", "1"], "an unknown event: by its time");
}
