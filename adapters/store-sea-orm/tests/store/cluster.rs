//! The database-held cluster backend and its leader lease, as two replicas on one
//! database see them: one's writes are the other's reads; generations, deletion marks and
//! terminating tenants behave as the in-memory cluster's; the lease has one holder, each
//! acquisition begins a new term, status writes of a term that is over are refused, and a
//! replica whose renewals failed leads again once the database answers again.

use std::time::Duration;

use nexus_ports::agents::{AgentName, AgentPhase, AgentStatus};
use nexus_ports::identity::UserId;
use nexus_ports::leadership::Fence;
use nexus_ports::ports::{ClusterBackend, HealthCheck};
use nexus_ports::tenancy::{Tenant, TenantPhase, TenantStatus};
use nexus_ports::testing::manifest;
use nexus_store_sea_orm::SqlStore;
use sea_orm::{ConnectionTrait, TransactionTrait};
use tokio::sync::watch;

use crate::{now, on_both_backends};

on_both_backends!(
    replicas_share_tenant_statuses,
    agent_objects_track_generations_and_deletion,
    the_lease_has_one_holder,
    a_nodes_seen_time_is_every_running_agents_last_sync,
    status_writes_of_a_term_that_is_over_are_refused,
    leadership_recovers_once_the_database_answers_again
);

async fn a_nodes_seen_time_is_every_running_agents_last_sync(url: &str) {
    let endpoint = format!("http://seen-{}:8000", uuid::Uuid::new_v4().simple());
    let (a, b) = (SqlStore::connect(url).await.unwrap().cluster(endpoint.clone()), SqlStore::connect(url).await.unwrap().cluster(endpoint.clone()));
    let tenant = nexus_ports::testing::tenant(UserId::generate()).id;
    let (bot, other) = (AgentName::parse("bot").unwrap(), AgentName::parse("other").unwrap());
    let pushed = now() - chrono::Duration::seconds(120);
    a.apply_agent(&tenant, &manifest("bot", "a")).await.unwrap();
    a.apply_agent(&tenant, &manifest("other", "a")).await.unwrap();
    a.set_agent_status(
        &tenant,
        &bot,
        1,
        &AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(pushed), message: None },
        Fence::Alone,
    )
    .await
    .unwrap();
    let failed = AgentStatus { phase: AgentPhase::Failed, node_ack: false, last_synced_at: Some(pushed), message: Some("why".into()) };
    a.set_agent_status(&tenant, &other, 1, &failed, Fence::Alone).await.unwrap();
    let synced = async |name: &AgentName| b.agent_object(&tenant, name).await.unwrap().unwrap().status.last_synced_at;
    assert_eq!(synced(&bot).await, Some(pushed), "never seen: its own push");

    let seen = now() - chrono::Duration::seconds(60);
    a.record_node_seen(&endpoint, seen, &[(tenant, bot.clone(), 1)], Fence::Alone).await.unwrap();
    a.record_node_seen("http://elsewhere:8000", now(), &[], Fence::Alone).await.unwrap();
    assert_eq!(synced(&bot).await, Some(seen), "one row for the node: every Running agent reads it");
    assert_eq!(synced(&other).await, Some(pushed), "a failed agent keeps its own time");
    assert_eq!(b.list_tenant_agent_statuses(&tenant).await.unwrap()[0].1.last_synced_at, Some(seen), "listings join it too");
    assert!(b.list_agent_objects().await.unwrap().iter().any(|o| o.tenant_id == tenant && o.status.last_synced_at == Some(seen)));
    a.record_node_seen(&endpoint, pushed, &[], Fence::Alone).await.unwrap();
    assert_eq!(synced(&bot).await, Some(seen), "never moved back");

    a.apply_agent(&tenant, &manifest("bot", "b")).await.unwrap();
    assert_eq!(synced(&bot).await, Some(pushed), "a generation not yet pushed is not what the node was seen holding");
}

async fn replicas_share_tenant_statuses(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap().cluster("http://node:8000"), SqlStore::connect(url).await.unwrap().cluster("http://node:8000"));
    let tenant = nexus_ports::testing::tenant(UserId::generate());
    assert_eq!(b.tenant_status(&tenant.id).await.unwrap(), TenantStatus::pending());
    let status = a.provision_tenant(&tenant).await.unwrap();
    assert_eq!(
        (status.phase, status.namespace.clone(), status.node_endpoint.as_deref()),
        (TenantPhase::Ready, Some(tenant.id.cr_name()), Some("http://node:8000"))
    );
    assert_eq!(b.provision_tenant(&tenant).await.unwrap(), status, "provisioning again changes nothing");
    assert_eq!(b.tenant_status(&tenant.id).await.unwrap(), status, "the other replica reads it");
    b.deprovision_tenant(&tenant.id).await.unwrap();
    b.deprovision_tenant(&tenant.id).await.unwrap();
    assert_eq!(a.tenant_status(&tenant.id).await.unwrap(), TenantStatus::pending(), "without agents it goes at once");
    a.check().await.unwrap();
}

async fn agent_objects_track_generations_and_deletion(url: &str) {
    let (a, b) = (SqlStore::connect(url).await.unwrap().cluster("http://node:8000"), SqlStore::connect(url).await.unwrap().cluster("http://node:8000"));
    let owner = nexus_ports::testing::tenant(UserId::generate());
    let (tenant, name) = (owner.id, AgentName::parse("bot").unwrap());
    a.apply_agent(&tenant, &manifest("bot", "a")).await.unwrap();
    b.apply_agent(&tenant, &manifest("bot", "a")).await.unwrap();
    let object = b.agent_object(&tenant, &name).await.unwrap().unwrap();
    assert_eq!((object.generation, object.observed_generation, object.status.phase, object.deleting), (1, 0, AgentPhase::Pending, false));
    assert_eq!(object.manifest, manifest("bot", "a"), "the manifest reads back as applied");
    b.apply_agent(&tenant, &manifest("bot", "b")).await.unwrap();
    assert_eq!(a.agent_object(&tenant, &name).await.unwrap().unwrap().generation, 2, "a new manifest is a new generation");

    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(now()), message: None };
    a.set_agent_status(&tenant, &name, 2, &running, Fence::Alone).await.unwrap();
    let object = b.agent_object(&tenant, &name).await.unwrap().unwrap();
    assert_eq!((object.observed_generation, object.status), (2, running.clone()), "statuses read the same through every replica");
    let failed = AgentStatus { phase: AgentPhase::Failed, node_ack: false, last_synced_at: None, message: Some("why".into()) };
    a.set_agent_status(&tenant, &name, 2, &failed, Fence::Alone).await.unwrap();
    assert_eq!(b.list_tenant_agent_objects(&tenant).await.unwrap()[0].status, failed);
    assert_eq!(b.list_tenant_agent_statuses(&tenant).await.unwrap(), vec![(name.clone(), failed.clone())], "listed without the manifest");

    b.request_agent_deletion(&tenant, &name).await.unwrap();
    assert!(a.list_agent_objects().await.unwrap().iter().any(|o| o.tenant_id == tenant && o.deleting), "the mark is durable and shared");
    a.apply_agent(&tenant, &manifest("bot", "b")).await.unwrap();
    let revived = b.agent_object(&tenant, &name).await.unwrap().unwrap();
    assert_eq!((revived.deleting, revived.generation), (false, 3), "applied again after a delete: a new generation");
    a.forget_agent(&tenant, &name).await.unwrap();
    assert!(b.agent_object(&tenant, &name).await.unwrap().is_some(), "an object no longer marked is not forgotten");
    b.request_agent_deletion(&tenant, &name).await.unwrap();
    a.forget_agent(&tenant, &name).await.unwrap();
    assert!(b.agent_object(&tenant, &name).await.unwrap().is_none());

    let tenant_record = Tenant { id: tenant, ..owner };
    a.provision_tenant(&tenant_record).await.unwrap();
    a.apply_agent(&tenant, &manifest("bot", "a")).await.unwrap();
    b.deprovision_tenant(&tenant).await.unwrap();
    assert!(a.list_tenant_agent_objects(&tenant).await.unwrap().iter().all(|o| o.deleting), "a tenant's agents are marked for deletion");
    assert_eq!(a.tenant_status(&tenant).await.unwrap().phase, TenantPhase::Ready, "its node stays known until they are removed from it");
    a.provision_tenant(&tenant_record).await.unwrap();
    a.forget_agent(&tenant, &name).await.unwrap();
    assert_eq!(b.tenant_status(&tenant).await.unwrap().phase, TenantPhase::Pending, "then the tenant goes, provisioned meanwhile or not");
}

async fn the_lease_has_one_holder(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (a, b) = (store.lease("a", Duration::from_secs(1)), store.lease("b", Duration::from_secs(1)));
    assert_eq!(a.try_hold().await.unwrap(), Some(1), "a free lease is taken, in term 1");
    assert_eq!(b.try_hold().await.unwrap(), None, "a held one is not");
    assert_eq!(a.try_hold().await.unwrap(), Some(1), "its holder renews it, in the same term");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(b.try_hold().await.unwrap(), Some(2), "past its end another takes it, in a new term");
    assert_eq!(a.try_hold().await.unwrap(), None);
    b.release().await.unwrap();
    a.release().await.unwrap();
    assert_eq!(a.try_hold().await.unwrap(), Some(3), "a lease given up is taken at once");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a.try_hold().await.unwrap(), Some(4), "its own lease taken again after it lapsed: a new term");
}

async fn status_writes_of_a_term_that_is_over_are_refused(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let cluster = store.cluster("http://node:8000");
    let (a, b) = (store.lease("a", Duration::from_secs(1)), store.lease("b", Duration::from_secs(1)));
    let (tenant, name) = (nexus_ports::testing::tenant(UserId::generate()).id, AgentName::parse("bot").unwrap());
    cluster.apply_agent(&tenant, &manifest("bot", "a")).await.unwrap();
    let status = |phase, message: &str| AgentStatus { phase, node_ack: false, last_synced_at: None, message: Some(message.to_owned()) };
    let phase = async || cluster.agent_object(&tenant, &name).await.unwrap().unwrap().status;

    let term = a.try_hold().await.unwrap().unwrap();
    cluster.set_agent_status(&tenant, &name, 1, &status(AgentPhase::Deploying, "a"), Fence::Term(term)).await.unwrap();
    assert_eq!(phase().await.message.as_deref(), Some("a"), "the current term writes");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = cluster.set_agent_status(&tenant, &name, 1, &status(AgentPhase::Failed, "a, expired"), Fence::Term(term)).await.unwrap_err();
    assert!(matches!(err, nexus_ports::Error::Unavailable(_)), "{err:?}");
    assert_eq!(phase().await.message.as_deref(), Some("a"), "a term past its end on the database's clock writes nothing");

    let next = b.try_hold().await.unwrap().unwrap();
    assert!(next > term);
    let err = cluster.set_agent_status(&tenant, &name, 1, &status(AgentPhase::Failed, "a, superseded"), Fence::Term(term)).await.unwrap_err();
    assert!(matches!(err, nexus_ports::Error::Unavailable(_)), "{err:?}");
    cluster.set_agent_status(&tenant, &name, 1, &status(AgentPhase::Running, "b"), Fence::Term(next)).await.unwrap();
    assert_eq!(phase().await.message.as_deref(), Some("b"), "the new term writes; the old one never again");

    // The node's seen time is fenced alike.
    let endpoint = format!("http://fenced-{}:8000", uuid::Uuid::new_v4().simple());
    let seen_by = store.cluster(endpoint.clone());
    let other = nexus_ports::testing::tenant(UserId::generate()).id;
    seen_by.apply_agent(&other, &manifest("bot", "a")).await.unwrap();
    let pushed = now() - chrono::Duration::seconds(60);
    let running = AgentStatus { phase: AgentPhase::Running, node_ack: true, last_synced_at: Some(pushed), message: None };
    seen_by.set_agent_status(&other, &name, 1, &running, Fence::Term(next)).await.unwrap();
    let synced = async || seen_by.agent_object(&other, &name).await.unwrap().unwrap().status.last_synced_at;
    seen_by.record_node_seen(&endpoint, now(), &[], Fence::Term(term)).await.unwrap();
    assert_eq!(synced().await, Some(pushed), "an old term records no time");
    let seen = now();
    seen_by.record_node_seen(&endpoint, seen, &[], Fence::Term(next)).await.unwrap();
    assert_eq!(synced().await.map(|at| at.timestamp_micros()), Some(seen.timestamp_micros()), "the current one does");

    cluster.forget_agent(&tenant, &name).await.unwrap();
    cluster.request_agent_deletion(&tenant, &name).await.unwrap();
    cluster.forget_agent(&tenant, &name).await.unwrap();
    cluster.set_agent_status(&tenant, &name, 1, &status(AgentPhase::Running, "gone"), Fence::Term(next)).await.expect("an object gone is no error");
}

/// One replica campaigning; the database stops answering the lease (its row locked by
/// another transaction) for longer than the lease lasts, then answers again.
async fn leadership_recovers_once_the_database_answers_again(url: &str) {
    let store = SqlStore::connect(url).await.unwrap();
    let (duration, renew) = (Duration::from_millis(1500), Duration::from_millis(300));
    let (tell, mut leading) = watch::channel(None);
    let campaign = tokio::spawn(store.lease("solo", duration).campaign(renew, tell));
    let first = tokio::time::timeout(Duration::from_secs(20), leading.wait_for(Option::is_some)).await.expect("leads").unwrap().unwrap();

    let blocker = sea_orm::Database::connect(url).await.unwrap();
    let outage = blocker.begin().await.unwrap();
    outage.execute_unprepared("UPDATE leader_lease SET holder = holder").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), leading.wait_for(Option::is_none)).await.expect("steps down").unwrap();
    tokio::time::sleep(duration * 2).await;
    outage.rollback().await.unwrap();
    let answering = std::time::Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(30), leading.wait_for(Option::is_some))
        .await
        .expect("leads again once the database answers (it used to never campaign again)")
        .unwrap()
        .unwrap();
    eprintln!("led again {:?} after the database answered (lease {duration:?}, renew {renew:?})", answering.elapsed());
    assert!(again.number > first.number, "in a new term: the lease ran out meanwhile");
    campaign.abort();
}

/// A replica frozen mid-transaction (a GC pause, SIGSTOP) would hold the rows it locked,
/// and every other replica's writes to them, for as long as it is frozen: the server ends
/// a transaction idle for 10 s on every connection of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_frozen_replicas_idle_transaction() {
    let Some(db) = nexus_store_sea_orm::testing::fresh_postgres().await else { return };
    let store = SqlStore::connect(&db.url).await.unwrap();
    assert_eq!(store.setting("idle_in_transaction_session_timeout").await, "10s");
    store.close().await;
    db.drop_database().await;
}
