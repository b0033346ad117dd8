//! Leader election through the database: one row of `leader_lease` names the replica
//! that reconciles and when its lease ends, on the database's own clock (replicas' clocks
//! never compare with each other). A replica takes the lease in one statement when it is
//! free or past its end, and the holder renews it every `renew`. The holder counts its
//! lease from the moment it *sent* a renewal that succeeded, so it stops leading at that
//! moment plus `duration - renew`: before the database's end of the lease (the database
//! stamped it later), so a replica that cannot reach the database (its connection lost,
//! the database gone) has stopped before any other may take over. A replica killed
//! without warning leaves its lease to end by itself: another takes over within
//! `duration + renew`. One that stops cleanly gives it up at once.
//!
//! Every acquisition (by another replica, or by the same one after its lease lapsed) adds
//! one to the lease's `generation`, which numbers the term; renewals keep it. The leader's
//! status writes are conditional on its term being the lease's current one and unexpired
//! (see the database cluster backend), so a leader frozen past its lease writes nothing.
//!
//! What to do with each attempt's outcome is [`Election`], pure and tested without I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nexus_ports::Result;
use nexus_ports::leadership::Term;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::SqlStore;
use crate::cluster::statement;
use crate::error::db;

/// The lease's name: one reconcile loop per database.
pub(crate) const LEASE: &str = "reconciler";

/// What one attempt to take or renew the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now (taken or renewed), in the term of this number.
    Held(u64),
    /// Another replica holds it.
    HeldByOther,
    /// The database did not answer (in time).
    Failed,
}

/// The decision logic of one replica: whether it leads, and when to try next.
#[derive(Debug, Clone)]
pub struct Election {
    duration: Duration,
    renew: Duration,
    /// The term this replica leads in, while it may: until its `until`.
    term: Option<Term>,
}

impl Election {
    /// A replica that does not lead yet, with a lease of `duration` renewed every `renew`
    /// (`renew` is at most a third of `duration`, as the configuration checks).
    pub fn new(duration: Duration, renew: Duration) -> Self {
        Self { duration, renew, term: None }
    }

    /// Takes in the outcome of an attempt sent at `sent`.
    pub fn observe(&mut self, sent: Instant, attempt: Attempt) {
        match attempt {
            // The database's lease ends at its own now + duration, later than `sent` +
            // duration: stopping `renew` before that leaves a margin for clock rates.
            Attempt::Held(number) => self.term = Some(Term { number, until: sent + self.duration.saturating_sub(self.renew) }),
            Attempt::HeldByOther => self.term = None,
            // Leading goes on while the last renewal lasts; the next attempts may renew it.
            Attempt::Failed => {}
        }
    }

    /// Whether this replica leads at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.term(now).is_some()
    }

    /// The term this replica leads in at `now`, if it does.
    pub fn term(&self, now: Instant) -> Option<Term> {
        self.term.filter(|term| term.lasts(now))
    }

    /// How long an attempt sent at `sent` may take: at most `renew`, and never past the
    /// end of this replica's leadership (so that it stops on time even when the database
    /// hangs). A replica whose leadership has ended, renewed in time or not, campaigns
    /// again like any other: with a full `renew`.
    pub fn budget(&self, sent: Instant) -> Duration {
        match self.term {
            Some(term) if term.lasts(sent) => self.renew.min(term.until - sent),
            _ => self.renew,
        }
    }

    /// When to wake after an attempt sent at `sent`, at `now`: for the next attempt, or
    /// sooner when leadership ends before it.
    pub fn next_wake(&self, sent: Instant, now: Instant) -> Instant {
        let next = (sent + self.renew).max(now);
        match self.term {
            Some(term) if term.lasts(now) => next.min(term.until),
            _ => next,
        }
    }
}

/// The database's clock, in milliseconds since the Unix epoch, as an SQL expression.
pub(crate) fn database_now(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        _ => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The condition, for a write in the same statement, that the term `number` of the lease
/// is its current one and has not expired on the database's clock. Binds one value: the
/// term's number.
pub(crate) fn term_lasts(backend: DatabaseBackend) -> String {
    let now = database_now(backend);
    format!("EXISTS (SELECT 1 FROM leader_lease WHERE name = '{LEASE}' AND generation = ? AND expires_millis > {now})")
}

/// This replica's candidacy for the lease.
#[derive(Clone)]
pub struct SqlLease {
    db: DatabaseConnection,
    holder: String,
    duration: Duration,
    /// Whether the lease's row is known to exist (it is never deleted): then an attempt is
    /// one statement, one commit, not two.
    created: Arc<AtomicBool>,
}

impl SqlStore {
    /// The candidacy of the replica named `holder` (unique per process) for the lease of
    /// the reconcile loop.
    pub fn lease(&self, holder: impl Into<String>, duration: Duration) -> SqlLease {
        SqlLease { db: self.db.clone(), holder: holder.into(), duration, created: Arc::new(AtomicBool::new(false)) }
    }
}

impl SqlLease {
    /// Takes the lease when it is free, past its end or this replica's already; renews it
    /// then. The number of the term this replica holds it in now (the lease's generation:
    /// one more than before when it was taken, the same when renewed), `None` when
    /// another holds it.
    ///
    /// # Errors
    /// [`nexus_ports::Error::Unavailable`] when the database cannot be reached.
    pub async fn try_hold(&self) -> Result<Option<u64>> {
        let backend = self.db.get_database_backend();
        if !self.created.load(Ordering::Relaxed) {
            let create =
                statement(backend, "INSERT INTO leader_lease (name, holder, expires_millis) VALUES (?, '', 0) ON CONFLICT (name) DO NOTHING", [LEASE.into()]);
            self.db.execute_raw(create).await.map_err(db)?;
            self.created.store(true, Ordering::Relaxed);
        }
        let now = database_now(backend);
        // Every right-hand side reads the row as it was before the update.
        let take = statement(
            backend,
            &format!(
                "UPDATE leader_lease SET generation = CASE WHEN holder = ? AND expires_millis >= {now} THEN generation ELSE generation + 1 END, \
                 holder = ?, expires_millis = {now} + ? WHERE name = ? AND (holder = ? OR expires_millis < {now}) RETURNING generation"
            ),
            [self.holder.clone().into(), self.holder.clone().into(), millis(self.duration).into(), LEASE.into(), self.holder.clone().into()],
        );
        let Some(row) = self.db.query_one_raw(take).await.map_err(db)? else { return Ok(None) };
        let generation: i64 = row.try_get("", "generation").map_err(db)?;
        Ok(Some(u64::try_from(generation).unwrap_or_default()))
    }

    /// Gives the lease up when this replica holds it, so that another takes over at once.
    ///
    /// # Errors
    /// [`nexus_ports::Error::Unavailable`] when the database cannot be reached (the lease then ends by
    /// itself).
    pub async fn release(&self) -> Result<()> {
        let release = statement(
            self.db.get_database_backend(),
            "UPDATE leader_lease SET expires_millis = 0 WHERE name = ? AND holder = ?",
            [LEASE.into(), self.holder.clone().into()],
        );
        self.db.execute_raw(release).await.map(drop).map_err(db)
    }

    /// Campaigns for the lease every `renew`, telling `tell`'s receivers the term this
    /// replica leads in (`None`: it follows), until they are all gone. Run it in the background; abort it, then
    /// [`SqlLease::release`], to stop.
    pub async fn campaign(self, renew: Duration, tell: watch::Sender<Option<Term>>) {
        let mut election = Election::new(self.duration, renew);
        loop {
            let sent = Instant::now();
            let attempt = match tokio::time::timeout(election.budget(sent), self.try_hold()).await {
                Ok(Ok(Some(number))) => Attempt::Held(number),
                Ok(Ok(None)) => Attempt::HeldByOther,
                Ok(Err(_)) => Attempt::Failed,
                Err(_) => {
                    tracing::warn!("the database did not answer the leader lease in time");
                    Attempt::Failed
                }
            };
            election.observe(sent, attempt);
            let now = Instant::now();
            let term = election.term(now);
            let mut was = None;
            tell.send_if_modified(|current| {
                was = Some(std::mem::replace(current, term));
                was != Some(term)
            });
            if was.is_some_and(|was| was.map(|t| t.number) != term.map(|t| t.number)) {
                match term {
                    Some(term) => tracing::info!(holder = %self.holder, term = term.number, "leader lease taken"),
                    None => tracing::info!(holder = %self.holder, "leader lease lost"),
                }
            }
            if tell.is_closed() {
                return;
            }
            tokio::time::sleep_until(election.next_wake(sent, now)).await;
            // Leadership that ended while asleep is told before the next attempt.
            let now = Instant::now();
            if tell.borrow().is_some() && !election.leading(now) {
                tell.send_replace(None);
                tracing::warn!(holder = %self.holder, "leader lease not renewed in time: no longer leading");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(10);
    const RENEW: Duration = Duration::from_secs(2);

    fn at(base: Instant, secs: f64) -> Instant {
        base + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_held_lease_leads_until_its_renewal_lapses_short_of_the_database_end() {
        let base = Instant::now();
        let mut election = Election::new(DURATION, RENEW);
        assert!(!election.leading(base), "nobody leads before an attempt");
        election.observe(base, Attempt::Held(1));
        assert!(election.leading(at(base, 7.9)));
        assert!(!election.leading(at(base, 8.0)), "it stops at sent + duration - renew, before the database's end at sent + duration");
        election.observe(at(base, 2.0), Attempt::Held(1));
        assert!(election.leading(at(base, 9.9)), "a renewal extends it");
    }

    #[test]
    fn failed_renewals_keep_leading_only_while_the_last_one_lasts() {
        let base = Instant::now();
        let mut election = Election::new(DURATION, RENEW);
        election.observe(base, Attempt::Held(1));
        for sent in [2.0, 4.0, 6.0] {
            election.observe(at(base, sent), Attempt::Failed);
            assert!(election.leading(at(base, sent + 0.5)));
        }
        assert!(!election.leading(at(base, 8.0)), "the database unreachable: it steps down on its own");
        assert_eq!(election.budget(at(base, 7.5)), Duration::from_millis(500), "an attempt never outlasts the leadership");
        assert_eq!(election.next_wake(at(base, 7.0), at(base, 7.2)), at(base, 8.0), "it wakes to step down on time");
    }

    #[test]
    fn another_holder_ends_leadership_at_once_and_a_follower_tries_every_renewal() {
        let base = Instant::now();
        let mut election = Election::new(DURATION, RENEW);
        election.observe(base, Attempt::Held(1));
        election.observe(at(base, 2.0), Attempt::HeldByOther);
        assert!(!election.leading(at(base, 2.1)));
        assert_eq!(election.budget(at(base, 3.0)), RENEW);
        assert_eq!(election.next_wake(at(base, 3.0), at(base, 3.1)), at(base, 5.0));
        assert_eq!(election.next_wake(at(base, 3.0), at(base, 6.0)), at(base, 6.0), "a slow attempt tries again at once");
        election.observe(at(base, 5.0), Attempt::Failed);
        assert!(!election.leading(at(base, 5.1)), "a failure never makes a follower lead");
    }
    #[test]
    fn a_leader_that_missed_its_renewals_campaigns_again() {
        let base = Instant::now();
        let mut election = Election::new(DURATION, RENEW);
        election.observe(base, Attempt::Held(1));
        for sent in [2.0, 4.0, 6.0] {
            election.observe(at(base, sent), Attempt::Failed);
        }
        assert!(!election.leading(at(base, 8.5)), "stepped down");
        assert_eq!(election.budget(at(base, 8.5)), RENEW, "after stepping down it tries again, with a full attempt");
        election.observe(at(base, 8.5), Attempt::Failed);
        assert_eq!(election.budget(at(base, 20.0)), RENEW, "however long the database was away");
        election.observe(at(base, 20.0), Attempt::Held(2));
        assert_eq!(election.term(at(base, 20.1)).map(|t| t.number), Some(2), "the database answering again, it leads again, in a new term");
    }

    /// The lease row as the database holds it, on the test's clock.
    struct Row {
        holder: Option<usize>,
        expires: Instant,
        generation: u64,
    }

    /// Replicas campaigning as `SqlLease::campaign` does, against one lease row, while the
    /// database is away during `outages`: never two leaders at once, and exactly one within
    /// duration + renew of the database answering again, after every outage.
    fn simulate(replicas: usize, outages: &[(f64, f64)], end: f64) {
        let base = Instant::now();
        let step = Duration::from_millis(100);
        let mut row = Row { holder: None, expires: base, generation: 0 };
        let mut last_term = 0;
        let mut elections: Vec<Election> = (0..replicas).map(|_| Election::new(DURATION, RENEW)).collect();
        let mut wakes: Vec<Instant> = (0..replicas).map(|i| base + Duration::from_millis(37 * i as u64)).collect();
        let mut now = base;
        while now < at(base, end) {
            let secs = (now - base).as_secs_f64();
            let down = outages.iter().any(|(from, to)| secs >= *from && secs < *to);
            for i in 0..replicas {
                if now < wakes[i] {
                    continue;
                }
                let attempt = if down {
                    Attempt::Failed
                } else if row.holder == Some(i) || row.expires < now {
                    let renewal = row.holder == Some(i) && row.expires >= now;
                    row = Row { holder: Some(i), expires: now + DURATION, generation: row.generation + u64::from(!renewal) };
                    Attempt::Held(row.generation)
                } else {
                    Attempt::HeldByOther
                };
                elections[i].observe(now, attempt);
                wakes[i] = elections[i].next_wake(now, now);
            }
            let terms: Vec<u64> = elections.iter().filter_map(|e| e.term(now)).map(|t| t.number).collect();
            let leaders = terms.len();
            assert!(leaders <= 1, "{leaders} leaders at {secs:.1} s");
            if let Some(&term) = terms.first() {
                assert!(term >= last_term, "terms only move forward");
                last_term = term;
            }
            let settled = outages.iter().all(|(from, to)| secs < *from || secs >= to + (DURATION + RENEW).as_secs_f64());
            if settled && secs >= (DURATION + RENEW).as_secs_f64() {
                assert_eq!(leaders, 1, "nobody leads at {secs:.1} s, after outages {outages:?}");
            }
            now += step;
        }
    }

    #[test]
    fn one_replica_leads_again_after_every_outage() {
        simulate(1, &[(20.0, 32.0), (50.0, 62.0), (80.0, 81.0)], 120.0);
    }

    #[test]
    fn any_number_of_outages_in_a_row_leaves_exactly_one_leader() {
        let outages: Vec<(f64, f64)> = (0..8).map(|i| (20.0 + 30.0 * f64::from(i), 32.0 + 30.0 * f64::from(i))).collect();
        for replicas in [2, 3] {
            simulate(replicas, &outages, 280.0);
        }
    }
}
