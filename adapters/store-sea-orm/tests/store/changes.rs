//! The change feed: what one replica publishes, every replica on the database hears.

use std::sync::Arc;
use std::time::Duration;

use nexus_ports::agents::AgentName;
use nexus_ports::audit::{AuditAction, AuditEvent};
use nexus_ports::changes::Change;
use nexus_ports::identity::UserId;
use nexus_ports::ports::{AgentStore, ApiKeyStore, ChangeFeed, UserStore};
use nexus_ports::tenancy::TenantId;
use nexus_store_sea_orm::SqlStore;

use crate::on_both_backends;

on_both_backends!(every_replica_hears_every_change_in_order, an_audited_change_is_announced_by_its_own_transaction);

/// The next change `receiver` gets, waiting at most a few seconds.
async fn next(receiver: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await.expect("a change arrives").expect("the feed is open")
}

async fn every_replica_hears_every_change_in_order(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let (feed_a, feed_b) = (Arc::new(a.change_feed().await.unwrap()), Arc::new(b.change_feed().await.unwrap()));
    let (mut heard_a, mut heard_b) = (feed_a.subscribe(), feed_b.subscribe());
    let relays = [tokio::spawn(feed_a.clone().relay()), tokio::spawn(feed_b.clone().relay())];

    let (tenant, user) = (TenantId::generate(), UserId::generate());
    let sent = [Change::TenantDeleted { tenant }, Change::SessionsEnded { user }];
    for change in &sent {
        feed_a.publish(change).await.unwrap();
    }
    for change in &sent {
        assert_eq!(&next(&mut heard_b).await, change, "the other replica hears it, in order");
        assert_eq!(&next(&mut heard_a).await, change, "so does the one that published it");
    }

    // A replica that starts later hears only what is published after it.
    let late = Arc::new(SqlStore::connect(url).await.unwrap().change_feed().await.unwrap());
    let mut heard_late = late.subscribe();
    let relay_late = tokio::spawn(late.clone().relay());
    feed_b.publish(&Change::TenantChanged { tenant }).await.unwrap();
    assert_eq!(next(&mut heard_late).await, Change::TenantChanged { tenant });
    for relay in relays.iter().chain([&relay_late]) {
        relay.abort();
    }
}

/// A change is sent to every replica by the transaction that commits it (the audit event
/// it records names it), not by a later call a cancelled request could skip: what a
/// replica hears comes with the revocation, the end of sessions, an agent's deletion,
/// and nothing comes of a write that changed nothing.
async fn an_audited_change_is_announced_by_its_own_transaction(url: &str) {
    let (writer, other) = (SqlStore::connect(url).await.unwrap(), SqlStore::connect(url).await.unwrap());
    let feed = Arc::new(other.change_feed().await.unwrap());
    let mut heard = feed.subscribe();
    let relay = tokio::spawn(feed.clone().relay());

    let owner = crate::tenancy::owner(&writer).await;
    let tenant = crate::tenancy::tenant_of(&writer, owner, "announced").await;
    let key = crate::tenancy::key_of(&writer, &tenant, "doomed").await;
    let revoke = AuditEvent::now(crate::now(), owner.to_string(), AuditAction::KeyRevoke, key.digest.to_hex()).in_tenant(tenant.id);
    assert!(writer.delete_key(&tenant.id, &key.digest, &revoke).await.unwrap());
    assert_eq!(next(&mut heard).await, Change::KeyRevoked { tenant: tenant.id, key: key.digest });
    assert!(!writer.delete_key(&tenant.id, &key.digest, &revoke).await.unwrap(), "nothing left to revoke");

    let ended = AuditEvent::now(crate::now(), owner.to_string(), AuditAction::UserSessionsRevoked, owner.to_string()).of_user(owner);
    writer.end_sessions(&owner, crate::now(), &ended).await.unwrap();
    assert_eq!(next(&mut heard).await, Change::SessionsEnded { user: owner });

    let agent = nexus_ports::agents::Agent {
        tenant_id: tenant.id,
        manifest: nexus_ports::testing::manifest("bot", "a"),
        version_number: 1,
        created_at: crate::now(),
        updated_at: crate::now(),
    };
    let name = AgentName::parse("bot").unwrap();
    let event = |action| AuditEvent::now(crate::now(), owner.to_string(), action, "bot").in_tenant(tenant.id);
    let quota = nexus_ports::agents::AgentQuota { max_agents: 10, max_manifest_bytes: 1 << 20 };
    writer.insert_agent(&agent, "usr_test", quota, &event(AuditAction::AgentCreate)).await.unwrap();
    assert_eq!(next(&mut heard).await, Change::AgentChanged { tenant: tenant.id, name: name.clone() });
    assert!(writer.delete_agent(&tenant.id, &name, None, &event(AuditAction::AgentDelete)).await.unwrap());
    assert_eq!(next(&mut heard).await, Change::AgentChanged { tenant: tenant.id, name });
    // The key's failed second revocation announced nothing: the feed has nothing more.
    assert!(tokio::time::timeout(Duration::from_millis(500), heard.recv()).await.is_err(), "no change announced for a write that changed nothing");
    relay.abort();
}
