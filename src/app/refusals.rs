//! Who the actors of audit events are, and the refusals an owner needs to see (a tenant
//! reached for by someone else, a read-only key writing, an expired or revoked key used, a
//! refresh token replayed), recorded in the trail they targeted without letting a flood
//! of them flood the trail: refusals are counted in memory, one count per trail, actor,
//! cause and minute, and written off the request path every [`FLUSH_EVERY`] as one event
//! per count (replicas add to the same event). A request that is refused costs no write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nexus_ports::audit::{AuditAction, AuditEvent, user_actor};
use nexus_ports::identity::UserId;
use nexus_ports::ports::{AuditStore, Clock, UserStore};
use nexus_ports::tenancy::TenantId;
use nexus_ports::{Error, Result};

use super::changes::Changes;

/// How often counted refusals are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The most counts kept between two writes; refusals beyond them (a flood from very many
/// actors at once) are counted in the `nexus_audit_refusals_dropped_total` metric only.
pub const MAX_PENDING: usize = 10_000;

/// The user named `id` as an actor ([`user_actor`]: its id with its email), from memory
/// when kept there.
///
/// # Errors
/// [`Error::Unauthorized`] when the user no longer exists; what the store answered.
pub async fn actor_of_user(users: &dyn UserStore, changes: &Changes, id: &UserId) -> Result<String> {
    let load = || async { users.find_user(id).await?.ok_or_else(|| Error::unauthorized("the user of this token no longer exists")) };
    let user = changes.caches().users.get_or_load(id, load).await?;
    Ok(user_actor(&user.id, &user.email))
}

/// Who was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Refused {
    /// A user, named as an actor when written.
    User(UserId),
    /// An API key, as [`nexus_ports::audit::key_actor`] names it.
    Key(String),
}

/// Whose trail shows a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trail {
    Tenant(TenantId),
    User(UserId),
}

struct Pending {
    who: Refused,
    /// The first refusal of its minute (its request, time and target).
    event: AuditEvent,
    count: u32,
}

/// Refusals counted and not yet written.
pub struct Refusals {
    audit: Arc<dyn AuditStore>,
    users: Arc<dyn UserStore>,
    changes: Arc<Changes>,
    clock: Arc<dyn Clock>,
    pending: Mutex<HashMap<(Trail, Refused, AuditAction, i64), Pending>>,
}

impl Refusals {
    /// Refusals written to `audit`, users named through `users` (kept in `changes`).
    pub fn new(audit: Arc<dyn AuditStore>, users: Arc<dyn UserStore>, changes: Arc<Changes>, clock: Arc<dyn Clock>) -> Self {
        Self { audit, users, changes, clock, pending: Mutex::default() }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<(Trail, Refused, AuditAction, i64), Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent: use it anyway.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one refusal of `who` for `cause`, aimed at `target`, in `trail`. Costs no
    /// I/O: it is written with the next flush.
    pub fn note(&self, who: Refused, cause: AuditAction, target: &str, trail: Trail) {
        metrics::counter!("nexus_audit_refusals_total", "cause" => cause.as_str()).increment(1);
        let at = self.clock.now();
        let key = (trail, who.clone(), cause, at.timestamp().div_euclid(60));
        let mut pending = self.pending();
        if let Some(counted) = pending.get_mut(&key) {
            counted.count = counted.count.saturating_add(1);
            return;
        }
        if pending.len() >= MAX_PENDING {
            metrics::counter!("nexus_audit_refusals_dropped_total").increment(1);
            return;
        }
        let event = AuditEvent::now(at, String::new(), cause, target.chars().take(160).collect::<String>());
        let event = match trail {
            Trail::Tenant(tenant) => event.in_tenant(tenant),
            Trail::User(user) => event.of_user(user),
        };
        pending.insert(key, Pending { who, event, count: 1 });
    }

    /// Writes every count. A count that cannot be written now is kept for the next time.
    ///
    /// # Errors
    /// The first error the store answered.
    pub async fn flush(&self) -> Result<()> {
        let batch: Vec<_> = self.pending().drain().collect();
        let mut failed = None;
        for (key, mut counted) in batch {
            let actor = match &counted.who {
                Refused::User(user) => actor_of_user(self.users.as_ref(), &self.changes, user).await,
                Refused::Key(actor) => Ok(actor.clone()),
            };
            let written = match actor {
                Ok(actor) => {
                    counted.event.actor = actor;
                    self.audit.record_refusals(&counted.event, counted.count).await
                }
                // A user gone meanwhile: its refusals have no one to name.
                Err(Error::Unauthorized(_)) => Ok(()),
                Err(err) => Err(err),
            };
            if let Err(err) = written {
                failed.get_or_insert(err);
                let mut pending = self.pending();
                match pending.get_mut(&key) {
                    Some(newer) => newer.count = newer.count.saturating_add(counted.count),
                    None => {
                        pending.insert(key, counted);
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Flushes every `every`, forever; run it as a background task.
    pub async fn run(self: Arc<Self>, every: Duration) {
        super::periodic::every(every, || async {
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "could not record refusals in the audit trail; will retry");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use nexus_ports::audit::AuditEvent;
    use nexus_ports::ports::{MockAuditStore, MockClock, MockUserStore};

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[tokio::test]
    async fn refusals_are_counted_per_trail_actor_cause_and_minute_and_kept_when_the_store_fails() {
        let now = Arc::new(Mutex::new(at(0)));
        let mut clock = MockClock::new();
        let read = now.clone();
        clock.expect_now().returning(move || *read.lock().unwrap());
        let written: Arc<Mutex<Vec<(AuditEvent, u32)>>> = Arc::default();
        let mut audit = MockAuditStore::new();
        let mut failures = 1;
        let kept = written.clone();
        audit.expect_record_refusals().returning(move |event, count| {
            if failures > 0 {
                failures -= 1;
                return Err(Error::Unavailable("down".into()));
            }
            kept.lock().unwrap().push((event.clone(), count));
            Ok(())
        });
        let refusals = Refusals::new(Arc::new(audit), Arc::new(MockUserStore::new()), Changes::local(), Arc::new(clock));
        let tenant = TenantId::generate();
        let key = || Refused::Key("key:12345678 (ci)".into());
        for _ in 0..5 {
            refusals.note(key(), AuditAction::AccessReadOnlyKey, "POST /api/v1/agents", Trail::Tenant(tenant));
        }
        assert!(refusals.flush().await.is_err(), "the store is down: kept");
        refusals.note(key(), AuditAction::AccessReadOnlyKey, "DELETE /api/v1/agents/x", Trail::Tenant(tenant));
        refusals.note(key(), AuditAction::AccessExpiredKey, "hash", Trail::Tenant(tenant));
        *now.lock().unwrap() = at(61);
        refusals.note(key(), AuditAction::AccessReadOnlyKey, "POST /api/v1/agents", Trail::Tenant(tenant));
        refusals.flush().await.unwrap();
        let mut written: Vec<_> = written.lock().unwrap().iter().map(|(event, count)| (event.action, event.at, event.target.clone(), *count)).collect();
        written.sort_by_key(|(action, at, _, _)| (action.as_str(), *at));
        assert_eq!(
            written,
            [
                (AuditAction::AccessExpiredKey, at(0), "hash".to_owned(), 1),
                (AuditAction::AccessReadOnlyKey, at(0), "POST /api/v1/agents".to_owned(), 6),
                (AuditAction::AccessReadOnlyKey, at(61), "POST /api/v1/agents".to_owned(), 1),
            ]
        );
        refusals.flush().await.unwrap();
    }

    #[test]
    fn pending_counts_stay_bounded() {
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| at(0));
        let refusals = Refusals::new(Arc::new(MockAuditStore::new()), Arc::new(MockUserStore::new()), Changes::local(), Arc::new(clock));
        for n in 0..MAX_PENDING + 10 {
            refusals.note(Refused::Key(format!("key:{n}")), AuditAction::AccessRevokedKey, "h", Trail::User(UserId::generate()));
        }
        assert_eq!(refusals.pending().len(), MAX_PENDING);
    }
}
