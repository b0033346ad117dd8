//! Reflector stores: what the watches have seen of the custom resources, kept in memory so
//! that reads (an agent, a tenant's agents, a tenant's status) cost no request to the API
//! server. kube-runtime's watcher feeds them (see `runtime.rs`), as its `reflector` would;
//! unlike its `Store`, objects are indexed by namespace, so that listing one tenant's
//! agents does not walk every tenant's, and what is kept is what reads need (an agent's
//! manifest once, as the core holds it, not its JSON tree).
//!
//! Read-your-writes: the answer of every write this replica makes (an apply, a status, a
//! deletion, a released finalizer) goes into the store at once, without waiting for its
//! watch event. Each object keeps the newest `resourceVersion` seen, so that an event
//! older than a write's answer never undoes it, and an object this replica saw go is not
//! brought back by an older event still on its way (for [`GONE_KEPT`]).
//!
//! A store is ready once its watch listed every object; until then (and once the watch
//! stopped for good) reads go to the API server.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use kube::ResourceExt;

/// How long an object this replica saw go is kept from coming back by an older event.
pub(crate) const GONE_KEPT: Duration = Duration::from_secs(300);

/// Where an object is: its namespace (empty for cluster-scoped ones) and name.
pub(crate) type Key = (String, String);

/// The key of `object`.
pub(crate) fn key_of<K: ResourceExt>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// The `resourceVersion` of `object` as a number, when it is one (it is an etcd revision
/// on every API server Nexus runs against; one that is not a number is taken as newest).
pub(crate) fn version_of<K: ResourceExt>(object: &K) -> Option<u64> {
    object.resource_version().and_then(|v| v.parse().ok())
}

/// Whether an object at `new` may replace one at `old`.
fn supersedes(new: Option<u64>, old: Option<u64>) -> bool {
    match (new, old) {
        (Some(new), Some(old)) => new >= old,
        _ => true,
    }
}

struct Held<V> {
    version: Option<u64>,
    value: Arc<V>,
}

type Objects<V> = HashMap<String, HashMap<String, Held<V>>>;

struct State<V> {
    /// The first list completed, and the watch still runs.
    ready: bool,
    objects: Objects<V>,
    /// While the watch lists again: what it listed so far (it replaces `objects` when done).
    relist: Option<Objects<V>>,
    /// Objects this replica saw go: the version they went at, and when.
    gone: HashMap<Key, (Option<u64>, Instant)>,
}

/// A store of `V`s (what is kept of each object), by namespace and name.
pub(crate) struct Reflector<V> {
    state: RwLock<State<V>>,
}

impl<V> Default for Reflector<V> {
    fn default() -> Self {
        Self { state: RwLock::new(State { ready: false, objects: HashMap::new(), relist: None, gone: HashMap::new() }) }
    }
}

/// Puts `value` at `key` in `objects` unless what is there is newer.
fn put<V>(objects: &mut Objects<V>, key: &Key, version: Option<u64>, value: &Arc<V>) {
    let names = objects.entry(key.0.clone()).or_default();
    if names.get(&key.1).is_none_or(|held| supersedes(version, held.version)) {
        names.insert(key.1.clone(), Held { version, value: value.clone() });
    }
}

/// Removes what is at `key` in `objects` unless it is newer than `version`.
fn take<V>(objects: &mut Objects<V>, key: &Key, version: Option<u64>) {
    let Some(names) = objects.get_mut(&key.0) else { return };
    if names.get(&key.1).is_some_and(|held| supersedes(version, held.version)) {
        names.remove(&key.1);
        if names.is_empty() {
            objects.remove(&key.0);
        }
    }
}

/// Whether an event of the object at `key` at `version` is kept out: this replica saw the
/// object go at a version no older, less than [`GONE_KEPT`] ago.
fn kept_out(gone: &HashMap<Key, (Option<u64>, Instant)>, key: &Key, version: Option<u64>) -> bool {
    gone.get(key).is_some_and(|(went_at, at)| at.elapsed() < GONE_KEPT && !matches!((version, went_at), (Some(new), Some(went)) if new > *went))
}

impl<V> Reflector<V> {
    // A panic while holding the lock leaves at worst one object stale: use it anyway.
    fn read(&self) -> RwLockReadGuard<'_, State<V>> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<V>> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether reads may be served from memory.
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        self.read().ready
    }

    /// The watch stopped for good: reads go to the API server again.
    pub(crate) fn stop(&self) {
        let mut state = self.write();
        state.ready = false;
        state.objects.clear();
        state.relist = None;
    }

    /// The watch reports `value` at `version` (an object added or changed). Ignored when
    /// older than what is kept, or than the object's going as this replica saw it.
    pub(crate) fn observed(&self, key: &Key, version: Option<u64>, value: V) {
        let mut state = self.write();
        if kept_out(&state.gone, key, version) {
            return;
        }
        state.gone.remove(key);
        Self::keep(&mut state, key, version, value);
    }

    /// This replica's write answered `value` at `version`: newer than any event of the
    /// object still on its way.
    pub(crate) fn written(&self, key: &Key, version: Option<u64>, value: V) {
        let mut state = self.write();
        state.gone.remove(key);
        Self::keep(&mut state, key, version, value);
    }

    fn keep(state: &mut State<V>, key: &Key, version: Option<u64>, value: V) {
        let value = Arc::new(value);
        put(&mut state.objects, key, version, &value);
        if let Some(relist) = state.relist.as_mut() {
            put(relist, key, version, &value);
        }
    }

    /// The watch reports the object deleted, as it was at `version`.
    pub(crate) fn deleted(&self, key: &Key, version: Option<u64>) {
        let mut state = self.write();
        state.gone.remove(key);
        take(&mut state.objects, key, version);
        if let Some(relist) = state.relist.as_mut() {
            take(relist, key, version);
        }
    }

    /// This replica's write made the object go (at `version`, when known). Gone at an
    /// unknown version (a deletion answered 404), it went no earlier than the version this
    /// replica last held of it: events up to that one are kept out, newer ones (an object
    /// of that name made again) are not. With nothing held of it there is nothing to keep
    /// out (an event of it still on its way is followed by its deletion's).
    pub(crate) fn went(&self, key: &Key, version: Option<u64>) {
        let mut state = self.write();
        state.gone.retain(|_, (_, at)| at.elapsed() < GONE_KEPT);
        let held = state.objects.get(&key.0).and_then(|names| names.get(&key.1)).map(|held| held.version);
        match version.map(Some).or(held) {
            Some(went_at) => state.gone.insert(key.clone(), (went_at, Instant::now())),
            None => state.gone.remove(key),
        };
        take(&mut state.objects, key, version);
        if let Some(relist) = state.relist.as_mut() {
            take(relist, key, version);
        }
    }

    /// The watch lists every object again, from now.
    pub(crate) fn relisting(&self) {
        self.write().relist = Some(HashMap::new());
    }

    /// One object of the list.
    pub(crate) fn listed(&self, key: &Key, version: Option<u64>, value: V) {
        let mut state = self.write();
        if kept_out(&state.gone, key, version) {
            return;
        }
        let value = Arc::new(value);
        if let Some(relist) = state.relist.as_mut() {
            put(relist, key, version, &value);
        }
    }

    /// The list is complete: it is what the store holds now, and reads may use it.
    pub(crate) fn relisted(&self) {
        let mut state = self.write();
        if let Some(relist) = state.relist.take() {
            state.objects = relist;
        }
        state.ready = true;
    }

    /// The object at `key`: `None` when the store is not ready, `Some(None)` when it has
    /// no such object.
    pub(crate) fn get(&self, key: &Key) -> Option<Option<Arc<V>>> {
        let state = self.read();
        state.ready.then(|| state.objects.get(&key.0).and_then(|names| names.get(&key.1)).map(|held| held.value.clone()))
    }

    /// Every object in `namespace`, by name; `None` when the store is not ready.
    pub(crate) fn in_namespace(&self, namespace: &str) -> Option<Vec<Arc<V>>> {
        let state = self.read();
        state.ready.then(|| {
            let mut held: Vec<(&String, &Held<V>)> = state.objects.get(namespace).into_iter().flatten().collect();
            held.sort_by(|a, b| a.0.cmp(b.0));
            held.into_iter().map(|(_, held)| held.value.clone()).collect()
        })
    }

    /// Every object; `None` when the store is not ready.
    pub(crate) fn all(&self) -> Option<Vec<Arc<V>>> {
        let state = self.read();
        state.ready.then(|| state.objects.values().flat_map(HashMap::values).map(|held| held.value.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("tenant-a".to_owned(), name.to_owned())
    }

    fn ready(objects: &[(&str, u64, &'static str)]) -> Reflector<&'static str> {
        let store = Reflector::default();
        store.relisting();
        for (name, version, value) in objects {
            store.listed(&key(name), Some(*version), *value);
        }
        store.relisted();
        store
    }

    fn value(store: &Reflector<&'static str>, name: &str) -> Option<&'static str> {
        store.get(&key(name)).expect("ready").map(|v| *v)
    }

    #[test]
    fn nothing_is_served_before_the_first_list_is_complete() {
        let store: Reflector<&str> = Reflector::default();
        store.relisting();
        store.listed(&key("a"), Some(1), "a1");
        assert!(store.get(&key("a")).is_none() && store.all().is_none() && store.in_namespace("tenant-a").is_none());
        store.relisted();
        assert_eq!(value(&store, "a"), Some("a1"));
        store.stop();
        assert!(store.get(&key("a")).is_none(), "a watch that stopped serves nothing");
    }

    #[test]
    fn an_older_event_never_undoes_a_write() {
        let store = ready(&[("a", 5, "a5")]);
        store.written(&key("a"), Some(7), "a7");
        store.observed(&key("a"), Some(6), "a6");
        assert_eq!(value(&store, "a"), Some("a7"));
        store.observed(&key("a"), Some(8), "a8");
        assert_eq!(value(&store, "a"), Some("a8"));
        store.deleted(&key("a"), Some(7));
        assert_eq!(value(&store, "a"), Some("a8"), "a deletion older than the object kept");
        store.deleted(&key("a"), Some(9));
        assert_eq!(value(&store, "a"), None);
    }

    #[test]
    fn an_object_seen_to_go_is_not_brought_back_by_an_older_event() {
        let store = ready(&[("a", 5, "a5")]);
        store.went(&key("a"), Some(6));
        store.observed(&key("a"), Some(6), "a6");
        assert_eq!(value(&store, "a"), None);
        store.observed(&key("a"), Some(9), "made again");
        assert_eq!(value(&store, "a"), Some("made again"));
        store.written(&key("a"), Some(11), "written");
        assert_eq!(value(&store, "a"), Some("written"));
    }

    /// A delete answered 404 (the object gone already, at a version this replica does not
    /// know) used to keep out every later event of an object of that name, until an
    /// unrelated deletion pruned the record: an agent created again was never seen.
    #[test]
    fn an_object_gone_at_an_unknown_version_is_seen_when_made_again() {
        let store = ready(&[("a", 5, "a5")]);
        store.went(&key("a"), None);
        assert_eq!(value(&store, "a"), None);
        store.observed(&key("a"), Some(5), "a5, late");
        assert_eq!(value(&store, "a"), None, "an event no newer than what this replica last held stays out");
        store.observed(&key("a"), Some(10), "made again");
        assert_eq!(value(&store, "a"), Some("made again"), "a newer object of that name is seen");

        store.went(&key("b"), None);
        store.observed(&key("b"), Some(3), "b3");
        assert_eq!(value(&store, "b"), Some("b3"), "nothing held of it: nothing to keep out");
        store.relisting();
        store.went(&key("c"), None);
        store.listed(&key("c"), Some(4), "c4");
        store.relisted();
        assert_eq!(value(&store, "c"), Some("c4"), "nor from a list");
    }

    #[test]
    fn a_going_is_remembered_for_a_while_only() {
        let store = ready(&[("a", 5, "a5")]);
        store.went(&key("a"), Some(6));
        store.write().gone.get_mut(&key("a")).unwrap().1 -= GONE_KEPT;
        store.observed(&key("a"), Some(6), "a6");
        assert_eq!(value(&store, "a"), Some("a6"), "past GONE_KEPT the record no longer counts, pruned or not");
    }

    #[test]
    fn a_relist_replaces_the_objects_but_keeps_writes_made_meanwhile() {
        let store = ready(&[("a", 1, "a1"), ("b", 1, "b1")]);
        store.relisting();
        store.listed(&key("a"), Some(2), "a2");
        store.written(&key("c"), Some(3), "c3");
        assert_eq!(value(&store, "b"), Some("b1"), "served from the previous list meanwhile");
        store.relisted();
        assert_eq!((value(&store, "a"), value(&store, "b"), value(&store, "c")), (Some("a2"), None, Some("c3")));
    }

    #[test]
    fn a_namespace_lists_its_own_objects_by_name() {
        let store = ready(&[("b", 1, "b"), ("a", 1, "a")]);
        store.written(&("tenant-b".to_owned(), "z".to_owned()), Some(2), "other");
        let names: Vec<&str> = store.in_namespace("tenant-a").unwrap().iter().map(|v| **v).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.in_namespace("tenant-c").unwrap().len(), 0);
        assert_eq!(store.all().unwrap().len(), 3);
    }
}
