//! The change feed: what one replica publishes, every replica on the database hears.

use std::sync::Arc;
use std::time::Duration;

use nexus_ports::changes::Change;
use nexus_ports::identity::UserId;
use nexus_ports::ports::ChangeFeed;
use nexus_ports::tenancy::TenantId;
use nexus_store_sea_orm::SqlStore;

use crate::on_both_backends;

on_both_backends!(every_replica_hears_every_change_in_order);

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
