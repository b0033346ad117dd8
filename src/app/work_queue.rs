//! The reconcile loop's bookkeeping, without I/O: a queue of work items (tenants, agents)
//! each due at its own time and at most one in flight; the spread of resyncs over time;
//! and the token bucket that bounds how fast resyncs reach nodes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Work items by the time they are due. An item is either waiting (due at one time) or in
/// flight (taken, not finished); an item woken while in flight is due again when it
/// finishes, at the earlier of the wake and its own next time.
#[derive(Debug)]
pub struct WorkQueue<K> {
    /// Waiting items in due order (ties in the order they were scheduled).
    due: BTreeMap<(DateTime<Utc>, u64), K>,
    /// When each waiting item is due, as its key in `due`.
    waiting: HashMap<K, (DateTime<Utc>, u64)>,
    /// Items in flight, with the earliest wake they received meanwhile.
    in_flight: HashMap<K, Option<DateTime<Utc>>>,
    sequence: u64,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        Self { due: BTreeMap::new(), waiting: HashMap::new(), in_flight: HashMap::new(), sequence: 0 }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// Puts `item` in the queue due at `at`, replacing the time it had.
    fn set(&mut self, item: K, at: DateTime<Utc>) {
        if let Some(old) = self.waiting.remove(&item) {
            self.due.remove(&old);
        }
        self.sequence += 1;
        self.due.insert((at, self.sequence), item.clone());
        self.waiting.insert(item, (at, self.sequence));
    }

    /// Asks for `item` to be handled at `at` at the latest: an item due later is brought
    /// forward, one due sooner stays, one in flight is taken again once finished.
    pub fn wake(&mut self, item: K, at: DateTime<Utc>) {
        if let Some(woken) = self.in_flight.get_mut(&item) {
            *woken = Some(woken.map_or(at, |w| w.min(at)));
            return;
        }
        match self.waiting.get(&item) {
            Some((due, _)) if *due <= at => {}
            _ => self.set(item, at),
        }
    }

    /// Takes the first item due at `now`, marking it in flight.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<K> {
        let entry = self.due.first_entry().filter(|entry| entry.key().0 <= now)?;
        let item = entry.remove();
        self.waiting.remove(&item);
        self.in_flight.insert(item.clone(), None);
        Some(item)
    }

    /// Ends the handling of `item`: due again at `next` (or forgotten when `None`), or
    /// sooner when it was woken meanwhile.
    pub fn finish(&mut self, item: K, next: Option<DateTime<Utc>>) {
        let woken = self.in_flight.remove(&item).flatten();
        let at = match (next, woken) {
            (Some(next), Some(woken)) => Some(next.min(woken)),
            (next, woken) => next.or(woken),
        };
        if let Some(at) = at {
            self.set(item, at);
        }
    }

    /// Puts every item in flight back, due at `now` (their handling was abandoned).
    pub fn requeue_in_flight(&mut self, now: DateTime<Utc>) {
        for item in self.in_flight.drain().map(|(item, _)| item).collect::<Vec<_>>() {
            self.wake(item, now);
        }
    }

    /// When the first waiting item is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// Whether the item is waiting or in flight.
    pub fn contains(&self, item: &K) -> bool {
        self.waiting.contains_key(item) || self.in_flight.contains_key(item)
    }

    /// How many items are due at `now` and not in flight (the backlog).
    pub fn due_count(&self, now: DateTime<Utc>) -> usize {
        self.due.range(..=(now, u64::MAX)).count()
    }

    /// How many items are waiting or in flight.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.len()
    }

    /// Whether no item is waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How much earlier than the full period a resync may come, as a share of it.
pub const SPREAD: f64 = 0.2;

/// The resync period of the object keyed `key`: between `(1 - SPREAD) * resync` and
/// `resync`, fixed per object, so that objects created together do not come due together.
pub fn spread(resync: Duration, key: &impl Hash) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    // The top 53 bits, as a fraction in [0, 1).
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    resync.mul_f64(1.0 - SPREAD * fraction)
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: DateTime<Utc>,
}

impl TokenBucket {
    /// A full bucket at `now`. A rate of zero means no limit.
    pub fn new(rate: u32, now: DateTime<Utc>) -> Self {
        let rate = f64::from(rate);
        Self { rate, burst: rate.max(1.0), tokens: rate.max(1.0), at: now }
    }

    /// Takes a token at `now`; when there is none, reserves the next one not yet reserved
    /// and says how long until it comes: the caller goes then, without taking another.
    /// Callers that must wait are spread over the coming tokens, one each, instead of all
    /// asking again when the next token comes (a backlog larger than the rate would
    /// otherwise go round and round).
    pub fn take(&mut self, now: DateTime<Utc>) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        if now > self.at {
            let elapsed = (now - self.at).to_std().unwrap_or_default().as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            self.at = now;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 { Ok(()) } else { Err(Duration::from_secs_f64(-self.tokens / self.rate)) }
    }
}

#[cfg(test)]
#[path = "work_queue_tests.rs"]
mod tests;
