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

/// A TCP relay to PostgreSQL whose connections can be frozen: they stay open but carry
/// nothing more, as a load balancer's idle cut or a failover without a reset leaves them.
/// Connections made after a freeze are relayed again.
struct Freezer {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Freezer {
    async fn to(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let generation = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (born, generation) = (generation.load(Ordering::SeqCst), generation.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                    let generation = generation.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else { return };
                            if read == 0 {
                                return;
                            }
                            if generation.load(Ordering::SeqCst) != born {
                                // Frozen: hold both ends open, carrying nothing.
                                let _held = (from, to);
                                return std::future::pending::<()>().await;
                            }
                            if to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A half-open LISTEN connection (it neither fails nor carries anything) is found dead by
/// its missing heartbeat and replaced: the replica is told changes may have been missed
/// once it listens again, and hears what is published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listen_connection_is_replaced_and_missed_changes_said_after() {
    let Some(db) = nexus_store_sea_orm::testing::fresh_postgres().await else { return };
    let (authority, rest) = db.url.trim_start_matches("postgres://").split_once('/').unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_owned();
    let freezer = Freezer::to(host.clone()).await;
    let relayed = db.url.replacen(&host, &format!("127.0.0.1:{}", freezer.port), 1);
    assert!(relayed.ends_with(rest));
    let (writer, listening) = (SqlStore::connect(&db.url).await.unwrap(), SqlStore::connect(&relayed).await.unwrap());
    let (writer_feed, feed) = (writer.change_feed().await.unwrap(), Arc::new(listening.change_feed().await.unwrap()));
    let mut heard = feed.subscribe();
    let relay = tokio::spawn(feed.clone().relay());
    let tenant = TenantId::generate();
    writer_feed.publish(&Change::TenantChanged { tenant }).await.unwrap();
    assert_eq!(next(&mut heard).await, Change::TenantChanged { tenant }, "heard while the connection is live");

    freezer.freeze();
    writer_feed.publish(&Change::TenantDeleted { tenant }).await.unwrap();
    let wait = nexus_store_sea_orm::SILENCE_LIMIT + Duration::from_secs(10);
    let missed = tokio::time::timeout(wait, heard.recv()).await.expect("the silent connection is noticed").expect("the feed is open");
    assert_eq!(missed, Change::Missed, "what the frozen connection swallowed is said missed");
    // Said missed once more when LISTEN is back; drain those, then a new change comes through.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let user = UserId::generate();
        writer_feed.publish(&Change::SessionsEnded { user }).await.unwrap();
        let change = tokio::time::timeout(Duration::from_secs(1), heard.recv()).await;
        if let Ok(Ok(change)) = change
            && change != Change::Missed
        {
            assert_eq!(change, Change::SessionsEnded { user }, "heard on the new connection");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the feed listens again on a new connection");
    }
    relay.abort();
    freezer.task.abort();
    db.drop_database().await;
}
