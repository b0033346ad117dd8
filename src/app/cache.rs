//! Bounded read-through caches of stored records, for the hot paths (authentication,
//! tenant scoping, agent listings), kept right by the change feed (see `changes`).
//!
//! A read that misses asks the store and keeps the answer, unless something was
//! invalidated while it asked ([`Cache::ticket`] before asking, [`Cache::insert`] with
//! it): an answer read before a change is never kept after it. Entries also expire after
//! a while, a backstop for changes a replica could not hear of. A cache of values whose
//! size varies (agents with their manifests) is bounded in bytes too ([`Cache::weighed`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// How long an entry is trusted without hearing of a change.
pub const ENTRY_LIFETIME: Duration = Duration::from_secs(60);

/// Entries each cache keeps at most.
pub const CAPACITY: usize = 10_000;

struct Entries<K, V> {
    map: HashMap<K, (V, Instant)>,
    /// Bumped by every invalidation.
    generation: u64,
    /// What the entries weigh together.
    weight: usize,
}

/// A map from keys to stored values, bounded in size and lifetime.
pub struct Cache<K, V> {
    entries: RwLock<Entries<K, V>>,
    capacity: usize,
    lifetime: Duration,
    /// The most the entries may weigh together.
    budget: usize,
    weigh: fn(&V) -> usize,
}

/// Proof of when a read began: [`Cache::insert`] keeps its answer only if nothing was
/// invalidated since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    /// A cache of at most `capacity` entries, each trusted for `lifetime`.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        Self::weighed(capacity, lifetime, usize::MAX, |_| 0)
    }

    /// A cache of at most `capacity` entries weighing at most `budget` together (as
    /// `weigh` weighs each), each trusted for `lifetime`. A value heavier than the whole
    /// budget is not kept.
    pub fn weighed(capacity: usize, lifetime: Duration, budget: usize, weigh: fn(&V) -> usize) -> Self {
        Self { entries: RwLock::new(Entries { map: HashMap::new(), generation: 0, weight: 0 }), capacity, lifetime, budget, weigh }
    }

    // A panic while holding the lock leaves at worst an entry missing: use it anyway.
    fn read(&self) -> RwLockReadGuard<'_, Entries<K, V>> {
        self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries<K, V>> {
        self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value kept for `key`, unless it expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.read();
        let (value, stored) = entries.map.get(key)?;
        (stored.elapsed() < self.lifetime).then(|| value.clone())
    }

    /// Taken before asking the store.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.read().generation)
    }

    /// The value kept for `key`, or else the one `load` reads from the store, kept under a
    /// ticket taken before reading.
    ///
    /// # Errors
    /// What `load` failed with; nothing is kept then.
    pub async fn get_or_load<E, F: Future<Output = Result<V, E>>>(&self, key: &K, load: impl FnOnce() -> F) -> Result<V, E> {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let ticket = self.ticket();
        let value = load().await?;
        self.insert(ticket, key.clone(), value.clone());
        Ok(value)
    }

    /// [`Cache::get_or_load`] for a lookup that may find nothing: only what is found is kept.
    ///
    /// # Errors
    /// What `find` failed with.
    pub async fn get_or_find<E, F: Future<Output = Result<Option<V>, E>>>(&self, key: &K, find: impl FnOnce() -> F) -> Result<Option<V>, E> {
        if let Some(value) = self.get(key) {
            return Ok(Some(value));
        }
        let ticket = self.ticket();
        let found = find().await?;
        if let Some(value) = &found {
            self.insert(ticket, key.clone(), value.clone());
        }
        Ok(found)
    }

    /// Keeps `value` for `key` if nothing was invalidated since `ticket` was taken. When
    /// full (in entries or in weight), expired entries go first, then an arbitrary tenth
    /// of the rest, as often as needed.
    pub fn insert(&self, ticket: Ticket, key: K, value: V) {
        let weight = (self.weigh)(&value);
        let mut entries = self.write();
        if entries.generation != ticket.0 || weight > self.budget {
            return;
        }
        if let Some((old, _)) = entries.map.remove(&key) {
            entries.weight -= (self.weigh)(&old);
        }
        let full = |entries: &Entries<K, V>| entries.map.len() >= self.capacity || entries.weight + weight > self.budget;
        if full(&entries) {
            let (lifetime, weigh) = (self.lifetime, self.weigh);
            let mut freed = 0;
            entries.map.retain(|_, (value, stored)| {
                let keep = stored.elapsed() < lifetime;
                if !keep {
                    freed += weigh(value);
                }
                keep
            });
            entries.weight -= freed;
            while full(&entries) && !entries.map.is_empty() {
                let evicted: Vec<K> = entries.map.keys().take(self.capacity.div_ceil(10)).cloned().collect();
                for key in evicted {
                    if let Some((old, _)) = entries.map.remove(&key) {
                        entries.weight -= weigh(&old);
                    }
                }
            }
        }
        entries.weight += weight;
        entries.map.insert(key, (value, Instant::now()));
    }

    /// Drops the entry of `key`.
    pub fn remove(&self, key: &K) {
        let mut entries = self.write();
        entries.generation += 1;
        if let Some((old, _)) = entries.map.remove(key) {
            entries.weight -= (self.weigh)(&old);
        }
    }

    /// Drops every entry `doomed` says must go.
    pub fn remove_where(&self, mut doomed: impl FnMut(&K, &V) -> bool) {
        let mut entries = self.write();
        entries.generation += 1;
        let weigh = self.weigh;
        let mut freed = 0;
        entries.map.retain(|key, (value, _)| {
            let doomed = doomed(key, value);
            if doomed {
                freed += weigh(value);
            }
            !doomed
        });
        entries.weight -= freed;
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut entries = self.write();
        entries.generation += 1;
        entries.map.clear();
        entries.weight = 0;
    }

    /// What the entries weigh together.
    pub fn weight(&self) -> usize {
        self.read().weight
    }

    /// How many entries are kept (expired ones included).
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.read().map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> Cache<u32, &'static str> {
        Cache::new(capacity, ENTRY_LIFETIME)
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept() {
        let cache = cache(10);
        let ticket = cache.ticket();
        cache.remove(&1);
        cache.insert(ticket, 1, "stale");
        assert_eq!(cache.get(&1), None);
        let ticket = cache.ticket();
        cache.insert(ticket, 1, "fresh");
        assert_eq!(cache.get(&1), Some("fresh"));
        cache.remove_where(|_, value| *value == "fresh");
        assert_eq!(cache.get(&1), None);
    }

    #[test]
    fn entries_expire() {
        let cache: Cache<u32, u32> = Cache::new(10, Duration::ZERO);
        cache.insert(cache.ticket(), 1, 1);
        assert_eq!(cache.get(&1), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = cache(20);
        for key in 0..1000 {
            cache.insert(cache.ticket(), key, "v");
            assert!(cache.len() <= 20);
        }
        assert_eq!(cache.get(&999), Some("v"), "the newest entry is kept");
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_weighed_cache_stays_within_its_budget() {
        let cache: Cache<u32, String> = Cache::weighed(1000, ENTRY_LIFETIME, 100, String::len);
        cache.insert(cache.ticket(), 0, "x".repeat(101));
        assert_eq!((cache.get(&0), cache.weight()), (None, 0), "heavier than the whole budget: not kept");
        for key in 0..50 {
            cache.insert(cache.ticket(), key, "x".repeat(30));
            assert!(cache.weight() <= 100 && cache.weight() == cache.len() * 30, "{} for {} entries", cache.weight(), cache.len());
        }
        assert!(cache.get(&49).is_some(), "the newest entry is kept");
        cache.insert(cache.ticket(), 49, "y".repeat(10));
        assert_eq!(cache.get(&49).as_deref(), Some("yyyyyyyyyy"));
        cache.remove(&49);
        cache.remove_where(|_, _| true);
        assert_eq!((cache.len(), cache.weight()), (0, 0));
    }
}
