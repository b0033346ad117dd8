//! The agent registry: manifests, versions, quota.

use chrono::Duration;
use nexus_ports::Error;
use nexus_ports::agents::{Agent, AgentManifest, AgentName, AgentQuota, UpdateLimits};
use nexus_ports::audit::AuditAction;
use nexus_ports::ports::{AgentStore, TenantStore, UserStore};
use nexus_ports::tenancy::{Tenant, TenantId};
use nexus_ports::testing;
use nexus_store_sea_orm::SqlStore;
use serde_json::json;

use crate::identity::new_user;
use crate::{now, on_both_backends};

on_both_backends!(
    agents_are_registered_with_their_history,
    the_quota_holds_under_racing_creates,
    agents_go_with_their_tenant,
    old_versions_are_pruned_and_numbers_never_reused,
    versions_keep_their_manifest_and_writes_can_be_conditional,
    the_manifest_budget_holds_for_creates_and_updates,
    stored_rows_are_trusted_and_a_corrupt_one_stays_its_own,
    reads_in_progress_never_hold_a_write_up,
    a_deletion_marks_the_database_cluster_object_in_its_own_transaction
);

async fn tenant(store: &SqlStore) -> TenantId {
    let user = new_user(&format!("{}@example.com", uuid::Uuid::new_v4().simple()));
    store.insert_user(&user, &crate::audit(AuditAction::UserRegister)).await.unwrap();
    let tenant = Tenant { created_at: now(), ..testing::tenant(user.user.id) };
    store.insert_tenant(&tenant, 100, &crate::audit(AuditAction::TenantCreate)).await.unwrap();
    tenant.id
}

fn manifest(name: &str, version: &str) -> AgentManifest {
    let mut document = testing::manifest_document(name, "llama3.1:8b");
    document["metadata"]["version"] = json!(version);
    document["spec"]["unknown"] = json!({"kept": true});
    AgentManifest::parse(document).unwrap()
}

fn quota(max_agents: u32) -> AgentQuota {
    AgentQuota { max_agents, max_manifest_bytes: 1 << 30 }
}

fn keep(keep_versions: u32) -> UpdateLimits {
    UpdateLimits { keep_versions, max_manifest_bytes: 1 << 30 }
}

fn agent(tenant: TenantId, name: &str) -> Agent {
    Agent { tenant_id: tenant, manifest: manifest(name, "1.0.0"), version_number: 1, created_at: now(), updated_at: now() }
}

async fn agents_are_registered_with_their_history(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    let bot = agent(t, "bot");
    store.insert_agent(&bot, "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    assert!(matches!(store.insert_agent(&bot, "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await, Err(Error::AlreadyExists(_))));
    let name = AgentName::parse("bot").unwrap();
    assert_eq!(store.find_agent(&t, &name).await.unwrap(), Some(bot.clone()));
    assert_eq!(store.find_agent(&t, &name).await.unwrap().unwrap().manifest.document().unwrap()["spec"]["unknown"]["kept"], true);
    assert!(store.find_agent(&TenantId::generate(), &name).await.unwrap().is_none());

    let later = now() + Duration::seconds(5);
    let updated = store.update_agent(&t, &manifest("bot", "1.1.0"), "key:ci", later, keep(100), None, &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    assert_eq!((updated.manifest.version(), updated.created_at, updated.updated_at), (Some("1.1.0"), bot.created_at, later));
    let history = store.list_versions(&t, &name).await.unwrap();
    assert_eq!(
        history.iter().map(|v| (v.number, v.version.as_deref(), v.author.as_str())).collect::<Vec<_>>(),
        vec![(1, Some("1.0.0"), "usr_a"), (2, Some("1.1.0"), "key:ci")]
    );
    assert_eq!(history[1].checksum, manifest("bot", "1.1.0").checksum());
    assert!(matches!(
        store.update_agent(&t, &manifest("ghost", "1.0.0"), "usr_a", later, keep(100), None, &crate::audit(AuditAction::AgentUpdate)).await,
        Err(Error::NotFound(_))
    ));

    store.insert_agent(&agent(t, "alpha"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    let names: Vec<String> = store.list_agents(&t).await.unwrap().iter().map(|a| a.name.to_string()).collect();
    assert_eq!(names, ["alpha", "bot"]);
    assert_eq!(store.list_all_agents().await.unwrap().len(), 2);
    assert!(store.delete_agent(&t, &name, None, &crate::audit(AuditAction::AgentDelete)).await.unwrap());
    assert!(!store.delete_agent(&t, &name, None, &crate::audit(AuditAction::AgentDelete)).await.unwrap());
    assert!(store.list_versions(&t, &name).await.unwrap().is_empty());
    assert!(matches!(
        store.insert_agent(&agent(TenantId::generate(), "x"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await,
        Err(Error::NotFound(_))
    ));
}

async fn the_quota_holds_under_racing_creates(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let t = tenant(&a).await;
    let racers = (0..10).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.insert_agent(&agent(t, &format!("bot-{i}")), "usr_a", quota(3), &crate::audit(AuditAction::AgentCreate)).await })
    });
    let mut outcomes = Vec::new();
    for racer in racers.collect::<Vec<_>>() {
        outcomes.push(racer.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 3, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.is_ok() || matches!(o, Err(Error::Conflict(_)))), "{outcomes:?}");
    assert_eq!(a.list_agents(&t).await.unwrap().len(), 3);
}

async fn agents_go_with_their_tenant(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    store.insert_agent(&agent(t, "bot"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    assert!(store.delete_tenant(&t, &crate::audit(AuditAction::TenantDelete)).await.unwrap());
    assert!(store.list_all_agents().await.unwrap().is_empty());
}

async fn old_versions_are_pruned_and_numbers_never_reused(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let t = tenant(&a).await;
    let name = AgentName::parse("bot").unwrap();
    a.insert_agent(&agent(t, "bot"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    let numbers = async || a.list_versions(&t, &name).await.unwrap().iter().map(|v| v.number).collect::<Vec<_>>();
    for minor in 1..=4 {
        a.update_agent(&t, &manifest("bot", &format!("1.{minor}.0")), "usr_a", now(), keep(3), None, &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    }
    assert_eq!(numbers().await, [3, 4, 5], "the newest three are kept");
    let newest = a.list_versions(&t, &name).await.unwrap().pop().unwrap();
    assert_eq!(newest.version.as_deref(), Some("1.4.0"));
    // A smaller retention keeps at least the newest; the next number goes on from it.
    a.update_agent(&t, &manifest("bot", "2.0.0"), "usr_a", now(), keep(0), None, &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    assert_eq!(numbers().await, [6]);
    // Racing updates from two pools each get a number of their own, and the history stays bounded.
    let racers = (0..8).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            store.update_agent(&t, &manifest("bot", &format!("3.{i}.0")), "usr_a", now(), keep(4), None, &crate::audit(AuditAction::AgentUpdate)).await
        })
    });
    for racer in racers.collect::<Vec<_>>() {
        racer.await.unwrap().unwrap();
    }
    assert_eq!(numbers().await, [11, 12, 13, 14]);
}

async fn versions_keep_their_manifest_and_writes_can_be_conditional(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    let name = AgentName::parse("bot").unwrap();
    store.insert_agent(&agent(t, "bot"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    assert_eq!(store.find_agent(&t, &name).await.unwrap().unwrap().version_number, 1);
    let updated = store.update_agent(&t, &manifest("bot", "1.1.0"), "usr_a", now(), keep(2), Some(1), &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    assert_eq!(updated.version_number, 2);

    // Each version keeps what it published, unknown fields included.
    let first = store.find_version(&t, &name, 1).await.unwrap().expect("version 1");
    assert_eq!((first.version.number, first.version.author.as_str()), (1, "usr_a"));
    let kept = first.manifest.expect("its manifest");
    assert_eq!((kept.version(), kept.document().unwrap()["spec"]["unknown"]["kept"].as_bool()), (Some("1.0.0"), Some(true)));
    assert_eq!(kept.checksum(), first.version.checksum);
    assert!(store.find_version(&t, &name, 3).await.unwrap().is_none());
    assert!(store.find_version(&TenantId::generate(), &name, 1).await.unwrap().is_none(), "another tenant's agent is not there");

    // A stale expectation changes nothing.
    let stale = store.update_agent(&t, &manifest("bot", "9.9.9"), "usr_a", now(), keep(2), Some(1), &crate::audit(AuditAction::AgentUpdate)).await;
    assert!(matches!(stale, Err(Error::PreconditionFailed(_))), "{stale:?}");
    assert!(matches!(store.delete_agent(&t, &name, Some(1), &crate::audit(AuditAction::AgentDelete)).await, Err(Error::PreconditionFailed(_))));
    let current = store.find_agent(&t, &name).await.unwrap().unwrap();
    assert_eq!((current.version_number, current.manifest.version()), (2, Some("1.1.0")));
    assert_eq!(store.list_versions(&t, &name).await.unwrap().len(), 2);
    assert!(matches!(
        store.update_agent(&t, &manifest("ghost", "1.0.0"), "usr_a", now(), keep(2), Some(1), &crate::audit(AuditAction::AgentUpdate)).await,
        Err(Error::NotFound(_))
    ));

    // Pruned versions are gone; numbers go on.
    store.update_agent(&t, &manifest("bot", "1.2.0"), "usr_a", now(), keep(2), None, &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    assert!(store.find_version(&t, &name, 1).await.unwrap().is_none(), "pruned");
    assert_eq!(store.find_version(&t, &name, 3).await.unwrap().unwrap().manifest.unwrap().version(), Some("1.2.0"));
    assert_eq!(store.find_agent(&t, &name).await.unwrap().unwrap().version_number, 3);

    // Racing conditional updates from one read: exactly one wins.
    let racers = (0..6).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store.update_agent(&t, &manifest("bot", &format!("4.{i}.0")), "usr_a", now(), keep(10), Some(3), &crate::audit(AuditAction::AgentUpdate)).await
        })
    });
    let mut won = 0;
    for racer in racers.collect::<Vec<_>>() {
        match racer.await.unwrap() {
            Ok(agent) => {
                assert_eq!(agent.version_number, 4);
                won += 1;
            }
            Err(Error::PreconditionFailed(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert!(!store.delete_agent(&t, &AgentName::parse("ghost").unwrap(), Some(1), &crate::audit(AuditAction::AgentDelete)).await.unwrap());
    assert!(store.delete_agent(&t, &name, Some(4), &crate::audit(AuditAction::AgentDelete)).await.unwrap());
}

async fn the_manifest_budget_holds_for_creates_and_updates(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    let size = agent(t, "bot-1").manifest.size() as u64;
    let budget = AgentQuota { max_agents: 50, max_manifest_bytes: 2 * size + size / 2 };
    store.insert_agent(&agent(t, "bot-1"), "usr_a", budget, &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    store.insert_agent(&agent(t, "bot-2"), "usr_a", budget, &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    match store.insert_agent(&agent(t, "bot-3"), "usr_a", budget, &crate::audit(AuditAction::AgentCreate)).await {
        Err(Error::Conflict(message)) => assert!(message.contains("budget"), "{message}"),
        other => panic!("a third manifest is over the budget: {other:?}"),
    }
    let other = tenant(&store).await;
    store.insert_agent(&agent(other, "bot-3"), "usr_a", budget, &crate::audit(AuditAction::AgentCreate)).await.expect("the budget is per tenant");

    let mut bigger = testing::manifest_document("bot-1", "llama3.1:8b");
    bigger["metadata"]["version"] = json!("1.0.0");
    bigger["spec"]["unknown"] = json!({"kept": true, "padding": "x".repeat(usize::try_from(size).unwrap())});
    let bigger = AgentManifest::parse(bigger).unwrap();
    let limits = UpdateLimits { keep_versions: 10, max_manifest_bytes: budget.max_manifest_bytes };
    assert!(matches!(store.update_agent(&t, &bigger, "usr_a", now(), limits, None, &crate::audit(AuditAction::AgentUpdate)).await, Err(Error::Conflict(_))));
    store
        .update_agent(&t, &manifest("bot-1", "1.0.1"), "usr_a", now(), limits, None, &crate::audit(AuditAction::AgentUpdate))
        .await
        .expect("its own old size is not counted twice");
    store.delete_agent(&t, &AgentName::parse("bot-2").unwrap(), None, &crate::audit(AuditAction::AgentDelete)).await.unwrap();
    store.update_agent(&t, &bigger, "usr_a", now(), limits, None, &crate::audit(AuditAction::AgentUpdate)).await.expect("room was made");
}

async fn stored_rows_are_trusted_and_a_corrupt_one_stays_its_own(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    for name in ["alpha", "beta", "gamma"] {
        store.insert_agent(&agent(t, name), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    }
    // A row a later rule would refuse (an apiVersion no longer accepted), and one that does
    // not even parse (corrupted by hand).
    let old_rules = r#"{"apiVersion":"astromesh/v0","kind":"Agent","metadata":{"name":"alpha"},"spec":{}}"#;
    nexus_store_sea_orm::testing::execute_sql(url, &format!("UPDATE agents SET manifest = '{old_rules}' WHERE name = 'alpha'")).await;
    nexus_store_sea_orm::testing::execute_sql(url, "UPDATE agents SET manifest = '{\"apiVersion\": [[[' WHERE name = 'beta'").await;

    let alpha = store.find_agent(&t, &AgentName::parse("alpha").unwrap()).await.unwrap().unwrap();
    assert_eq!(alpha.manifest.document().unwrap()["apiVersion"], "astromesh/v0", "read back as it was stored");
    let beta = store.find_agent(&t, &AgentName::parse("beta").unwrap()).await.unwrap().expect("a corrupt row is still found");
    assert!(matches!(beta.manifest.document(), Err(Error::Internal(_))), "its manifest is what cannot be read");
    let names: Vec<String> = store.list_agents(&t).await.unwrap().iter().map(|a| a.name.to_string()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"], "the listing reads no manifest");
    assert_eq!(store.list_all_agents().await.unwrap().len(), 3, "the registry is read whole");
}

/// Writes have a connection of their own: with every read connection held by a read in
/// progress (a sweep listing every agent, say), agents are still created, updated and
/// deleted. With one connection for everything, such writes waited past the pool's wait
/// and failed as "unavailable" (the scale benchmark's 503 at about 6,700 agents).
async fn reads_in_progress_never_hold_a_write_up(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let t = tenant(&store).await;
    let held = store.hold_reads().await;
    store.insert_agent(&agent(t, "bot"), "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
    let name = AgentName::parse("bot").unwrap();
    store.update_agent(&t, &manifest("bot", "2.0.0"), "usr_a", now(), keep(5), Some(1), &crate::audit(AuditAction::AgentUpdate)).await.unwrap();
    assert!(store.delete_agent(&t, &name, Some(2), &crate::audit(AuditAction::AgentDelete)).await.unwrap());
    drop(held);
    assert_eq!(store.find_agent(&t, &name).await.unwrap(), None, "read after the writes");
}

/// Where the cluster is held in the same database, deleting an agent marks its object for
/// deletion in the same transaction: nothing after the commit (which a cancelled request
/// could skip) is needed for the loop to take it off its node.
async fn a_deletion_marks_the_database_cluster_object_in_its_own_transaction(url: &str) {
    use nexus_ports::ports::ClusterBackend;
    let store = SqlStore::connect(url).await.unwrap();
    let cluster = store.cluster("http://node:8000");
    let (t, other) = (tenant(&store).await, tenant(&store).await);
    let name = AgentName::parse("bot").unwrap();
    for owner in [t, other] {
        let bot = agent(owner, "bot");
        store.insert_agent(&bot, "usr_a", quota(50), &crate::audit(AuditAction::AgentCreate)).await.unwrap();
        cluster.apply_agent(&owner, &bot.manifest).await.unwrap();
    }
    assert!(!cluster.agent_object(&t, &name).await.unwrap().expect("an object").deleting);
    assert!(store.delete_agent(&t, &name, None, &crate::audit(AuditAction::AgentDelete)).await.unwrap());
    assert!(cluster.agent_object(&t, &name).await.unwrap().expect("an object").deleting, "marked with the deletion");
    assert!(!cluster.agent_object(&other, &name).await.unwrap().expect("an object").deleting, "another tenant's agent of that name is not");
}
