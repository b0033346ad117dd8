//! Terms of leadership. The replica that holds the leader lease reconciles; each time a
//! replica acquires the lease a new term begins, numbered by the lease's generation (one
//! more on every acquisition, never on a renewal). A term is over for its holder at its
//! local deadline (its last successful renewal plus the lease's duration, less a margin)
//! or as soon as it learns that another holds the lease, whichever comes first: a leader
//! that was frozen and wakes up checks its term before it acts.

use tokio::time::Instant;

/// One term of this replica's leadership, as its election last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The lease's generation when this replica acquired it.
    pub number: u64,
    /// Until when this replica may act in the term, by its own monotonic clock (moved on by
    /// every renewal).
    pub until: Instant,
}

impl Term {
    /// Whether the term still lasts at `now`.
    pub fn lasts(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// What a write of the leader is conditional on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// One process and no election: nothing to be conditional on.
    Alone,
    /// The term of this number: a store that holds the lease writes only while that term
    /// is the lease's current one and has not expired.
    Term(u64),
}
