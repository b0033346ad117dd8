//! What this replica keeps in memory of the store for the hot paths, and how it follows
//! the store: a use case that changes a record [`Changes::announce`]s it, which drops what
//! this replica kept at once and tells the other replicas through the [`ChangeFeed`];
//! [`Changes::follow`] drops what they announce (within the feed's delay, under a second).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use nexus_ports::agents::{Agent, AgentName, AgentSummary};
use nexus_ports::changes::Change;
use nexus_ports::identity::{User, UserId};
use nexus_ports::ports::ChangeFeed;
use nexus_ports::tenancy::{ApiKey, Tenant, TenantId};
use nexus_ports::tokens::{FamilyId, SecretDigest};
use tokio::sync::broadcast;

use super::cache::{CAPACITY, Cache, ENTRY_LIFETIME};

/// The stored records the hot paths read, kept in memory.
pub struct HotCaches {
    /// API keys by digest, with their tenant (only keys that exist).
    pub keys: Cache<SecretDigest, (ApiKey, Tenant)>,
    /// When each user last ended every session (`None`: never).
    pub sessions: Cache<UserId, Option<DateTime<Utc>>>,
    /// Whether each session (refresh-token family) access tokens name goes on.
    pub live_sessions: Cache<FamilyId, bool>,
    /// Users by id (a user's record never changes).
    pub users: Cache<UserId, User>,
    /// Tenants by id (only tenants that exist).
    pub tenants: Cache<TenantId, Tenant>,
    /// Each tenant's agents, by name.
    pub agents: Cache<TenantId, Arc<Vec<AgentSummary>>>,
    /// Agents with their manifests (only agents that exist), at most [`AGENT_BYTES`] of
    /// manifests together.
    pub agent_records: Cache<(TenantId, AgentName), Agent>,
}

/// The most bytes of manifests kept in memory for reads of single agents.
pub const AGENT_BYTES: usize = 32 * 1024 * 1024;

impl Default for HotCaches {
    fn default() -> Self {
        Self {
            keys: Cache::new(CAPACITY, ENTRY_LIFETIME),
            sessions: Cache::new(CAPACITY, ENTRY_LIFETIME),
            live_sessions: Cache::new(CAPACITY, ENTRY_LIFETIME),
            users: Cache::new(CAPACITY, ENTRY_LIFETIME),
            tenants: Cache::new(CAPACITY, ENTRY_LIFETIME),
            agents: Cache::new(CAPACITY, ENTRY_LIFETIME),
            agent_records: Cache::weighed(CAPACITY, ENTRY_LIFETIME, AGENT_BYTES, |agent| agent.manifest.size()),
        }
    }
}

impl HotCaches {
    /// Drops what `change` made stale.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::KeyRevoked { key, .. } => self.keys.remove(key),
            Change::TenantDeleted { tenant } | Change::TenantChanged { tenant } => {
                self.keys.remove_where(|_, (_, owner)| owner.id == *tenant);
                self.tenants.remove(tenant);
                self.agents.remove(tenant);
                self.agent_records.remove_where(|(owner, _), _| owner == tenant);
            }
            Change::SessionsEnded { user } => self.sessions.remove(user),
            Change::SessionRevoked { session, .. } => self.live_sessions.remove(session),
            Change::AgentChanged { tenant, name } => {
                self.agents.remove(tenant);
                self.agent_records.remove(&(*tenant, name.clone()));
            }
            Change::Missed => {
                self.keys.clear();
                self.sessions.clear();
                self.live_sessions.clear();
                self.users.clear();
                self.tenants.clear();
                self.agents.clear();
                self.agent_records.clear();
            }
        }
    }
}

/// How often a failed publication is tried again.
pub const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The caches and the feed that keeps them right.
pub struct Changes {
    caches: HotCaches,
    feed: Arc<dyn ChangeFeed>,
    /// Subscribed when built, so that nothing published after is missed; taken by
    /// [`Changes::follow`].
    receiver: Mutex<Option<broadcast::Receiver<Change>>>,
}

impl Changes {
    /// Caches kept right by `feed`.
    pub fn new(feed: Arc<dyn ChangeFeed>) -> Self {
        let receiver = Mutex::new(Some(feed.subscribe()));
        Self { caches: HotCaches::default(), feed, receiver }
    }

    /// Caches followed in this process only, for unit tests.
    #[cfg(test)]
    pub(crate) fn local() -> Arc<Self> {
        Arc::new(Self::new(Arc::new(nexus_ports::changes::LocalChangeFeed::default())))
    }

    /// What is kept in memory.
    pub fn caches(&self) -> &HotCaches {
        &self.caches
    }

    /// Drops what `change` made stale in this replica, once the store committed it: the
    /// store told every other replica in the same transaction (see the store's audit
    /// events), so nothing after the commit is needed for them to learn of it.
    pub fn committed(&self, change: &Change) {
        self.caches.apply(change);
    }

    /// Tells this replica (at once) and every other (through the feed) of a change no
    /// transaction carried. A publication that fails is retried in the background (every
    /// [`PUBLISH_RETRY`]) until it goes through or the others' entries have expired anyway
    /// ([`ENTRY_LIFETIME`]), whether or not the caller is still waiting.
    pub async fn announce(&self, change: Change) {
        self.caches.apply(&change);
        if let Err(err) = self.feed.publish(&change).await {
            tracing::warn!(error = %err, change = %change, "could not tell the other replicas about a change; retrying");
            let feed = self.feed.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + ENTRY_LIFETIME;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(PUBLISH_RETRY).await;
                    match feed.publish(&change).await {
                        Ok(()) => return,
                        Err(err) => tracing::debug!(error = %err, change = %change, "still cannot tell the other replicas about a change"),
                    }
                }
                tracing::warn!(change = %change, "gave up telling the other replicas about a change: their entries have expired since");
            });
        }
    }

    /// Applies every change the feed brings, until it closes. Run once, in the background.
    pub async fn follow(self: Arc<Self>) {
        let taken = self.receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(mut receiver) = taken else { return };
        loop {
            match receiver.recv().await {
                Ok(change) => self.caches.apply(&change),
                Err(broadcast::error::RecvError::Lagged(_)) => self.caches.apply(&Change::Missed),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nexus_ports::changes::LocalChangeFeed;
    use nexus_ports::tenancy::{KeyLabel, KeyScope};
    use nexus_ports::testing::tenant;

    use super::*;

    fn key_of(tenant: &Tenant) -> (SecretDigest, (ApiKey, Tenant)) {
        let digest = SecretDigest::of(&tenant.id.to_string());
        let key = ApiKey {
            digest,
            tenant_id: tenant.id,
            label: KeyLabel::parse("ci").unwrap(),
            scope: KeyScope::Write,
            created_at: tenant.created_at,
            expires_at: None,
            last_used_at: None,
        };
        (digest, (key, tenant.clone()))
    }

    /// A change no transaction carried, whose publication fails, is published again in
    /// the background until it goes through, even once its caller has moved on.
    #[tokio::test(start_paused = true)]
    async fn a_failed_publication_is_retried_until_it_goes_through() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let attempts = Arc::new(AtomicU32::new(0));
        let mut feed = nexus_ports::ports::MockChangeFeed::new();
        feed.expect_subscribe().returning(|| broadcast::channel(1).1);
        let counted = attempts.clone();
        feed.expect_publish().returning(move |_| {
            if counted.fetch_add(1, Ordering::SeqCst) < 3 { Err(nexus_ports::Error::Unavailable("the database is down".into())) } else { Ok(()) }
        });
        let changes = Changes::new(Arc::new(feed));
        changes.announce(Change::SessionsEnded { user: UserId::generate() }).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "the caller does not wait for the retries");
        tokio::time::sleep(PUBLISH_RETRY * 10).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 4, "retried until it went through, then no more");
    }

    #[tokio::test]
    async fn announced_and_followed_changes_drop_what_they_made_stale() {
        let feed = Arc::new(LocalChangeFeed::default());
        let (here, there) = (Arc::new(Changes::new(feed.clone())), Arc::new(Changes::new(feed)));
        let follower = tokio::spawn(there.clone().follow());
        let (kept, deleted) = (tenant(UserId::generate()), tenant(UserId::generate()));
        for changes in [&here, &there] {
            let caches = changes.caches();
            for tenant in [&kept, &deleted] {
                let (digest, entry) = key_of(tenant);
                caches.keys.insert(caches.keys.ticket(), digest, entry);
                caches.tenants.insert(caches.tenants.ticket(), tenant.id, tenant.clone());
            }
        }
        here.announce(Change::TenantDeleted { tenant: deleted.id }).await;
        let gone = |changes: &Changes| changes.caches().tenants.get(&deleted.id).is_none() && changes.caches().keys.get(&key_of(&deleted).0).is_none();
        assert!(gone(&here), "at once where it was announced");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !gone(&there) {
            assert!(tokio::time::Instant::now() < deadline, "the follower drops it too");
            tokio::task::yield_now().await;
        }
        assert!(there.caches().tenants.get(&kept.id).is_some() && there.caches().keys.get(&key_of(&kept).0).is_some(), "other tenants stay");
        here.announce(Change::Missed).await;
        assert_eq!(here.caches().tenants.len(), 0);
        follower.abort();
    }
}
