//! Periodic pruning, so that tables fed by every login do not grow without end: refresh
//! tokens no one can use any more (expired, or of a family with no live token left) and
//! login-attempt windows that have ended; and audit events past their retention. Every
//! replica may run it; deleting twice is harmless.

use std::sync::Arc;
use std::time::Duration;

use nexus_ports::Result;
use nexus_ports::ports::{AuditStore, Clock, LoginAttemptStore, RefreshTokenStore};

/// How often pruning runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What pruning needs.
pub struct Housekeeping {
    pub refresh_tokens: Arc<dyn RefreshTokenStore>,
    pub login_attempts: Arc<dyn LoginAttemptStore>,
    pub audit: Arc<dyn AuditStore>,
    pub clock: Arc<dyn Clock>,
    /// The login-attempt window: windows that began longer ago than this have ended.
    pub login_window: chrono::Duration,
    /// How long audit events are kept.
    pub audit_retention: chrono::Duration,
}

impl Housekeeping {
    /// Prunes once; returns how many refresh tokens, attempt windows and audit events went.
    ///
    /// # Errors
    /// What the store answered.
    pub async fn prune(&self) -> Result<(u64, u64, u64)> {
        let now = self.clock.now();
        let tokens = self.refresh_tokens.prune_refresh_tokens(now).await?;
        let windows = self.login_attempts.prune_login_attempts(now - self.login_window).await?;
        let events = self.audit.prune_events(now - self.audit_retention).await?;
        Ok((tokens, windows, events))
    }

    /// Prunes now and then every `every`, for ever; a failure is logged and retried at
    /// the next turn.
    pub async fn run(self, every: Duration) {
        super::periodic::every(every, || async {
            match self.prune().await {
                Ok((tokens, windows, events)) => tracing::debug!(tokens, windows, events, "pruned refresh tokens, login-attempt windows and audit events"),
                Err(err) => tracing::warn!(error = %err, "pruning failed; will retry"),
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use mockall::predicate::eq;
    use nexus_ports::Error;
    use nexus_ports::ports::{MockAuditStore, MockClock, MockLoginAttemptStore, MockRefreshTokenStore};

    use super::*;

    fn now() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()
    }

    fn housekeeping(tokens: MockRefreshTokenStore, attempts: MockLoginAttemptStore) -> Housekeeping {
        let mut clock = MockClock::new();
        clock.expect_now().returning(now);
        let mut audit = MockAuditStore::new();
        audit.expect_prune_events().with(eq(now() - chrono::Duration::days(90))).returning(|_| Ok(4));
        Housekeeping {
            refresh_tokens: Arc::new(tokens),
            login_attempts: Arc::new(attempts),
            audit: Arc::new(audit),
            clock: Arc::new(clock),
            login_window: chrono::Duration::minutes(15),
            audit_retention: chrono::Duration::days(90),
        }
    }

    #[tokio::test]
    async fn pruning_asks_each_store_with_its_own_horizon() {
        let (mut tokens, mut attempts) = (MockRefreshTokenStore::new(), MockLoginAttemptStore::new());
        tokens.expect_prune_refresh_tokens().with(eq(now())).times(1).returning(|_| Ok(3));
        attempts.expect_prune_login_attempts().with(eq(now() - chrono::Duration::minutes(15))).times(1).returning(|_| Ok(2));
        assert_eq!(housekeeping(tokens, attempts).prune().await.unwrap(), (3, 2, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_prunes_at_once_and_then_every_period_despite_failures() {
        let (mut tokens, mut attempts) = (MockRefreshTokenStore::new(), MockLoginAttemptStore::new());
        let mut turns = 0;
        tokens.expect_prune_refresh_tokens().times(3).returning(move |_| {
            turns += 1;
            if turns == 1 { Err(Error::Unavailable("the database is unavailable".into())) } else { Ok(0) }
        });
        attempts.expect_prune_login_attempts().times(2).returning(|_| Ok(0));
        let task = tokio::spawn(housekeeping(tokens, attempts).run(PRUNE_EVERY));
        // Paused time: sleeping advances the clock once every task is idle.
        tokio::time::sleep(PRUNE_EVERY * 2 + Duration::from_secs(1)).await;
        task.abort();
        let _ = task.await;
    }
}
