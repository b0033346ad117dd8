//! When API keys were last used, kept off the request path: authentication notes the time
//! in memory, and a background task writes the notes in one batch every few seconds.
//! Listing keys overlays the notes not yet written, so answers are never stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_ports::Result;
use nexus_ports::ports::ApiKeyStore;
use nexus_ports::tokens::SecretDigest;

/// How often noted usage is written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Usage noted since the last write.
pub struct KeyUsage {
    keys: Arc<dyn ApiKeyStore>,
    pending: Mutex<HashMap<SecretDigest, DateTime<Utc>>>,
}

impl KeyUsage {
    /// Usage to be written to `keys`.
    pub fn new(keys: Arc<dyn ApiKeyStore>) -> Self {
        Self { keys, pending: Mutex::default() }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<SecretDigest, DateTime<Utc>>> {
        // A panic while holding the lock cannot leave the map inconsistent: use it anyway.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that the key was used at `at`.
    pub fn record(&self, key: SecretDigest, at: DateTime<Utc>) {
        let mut pending = self.pending();
        let latest = pending.entry(key).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// The noted, not yet written, last use of the key.
    pub fn noted(&self, key: &SecretDigest) -> Option<DateTime<Utc>> {
        self.pending().get(key).copied()
    }

    /// Drops what was noted of a revoked key.
    pub fn forget(&self, key: &SecretDigest) {
        self.pending().remove(key);
    }

    /// Writes everything noted in one batch. On failure the notes are kept for next time.
    ///
    /// # Errors
    /// What the store answered.
    pub async fn flush(&self) -> Result<()> {
        let batch: Vec<_> = self.pending().drain().collect();
        if batch.is_empty() {
            return Ok(());
        }
        let written = self.keys.record_key_usage(&batch).await;
        if written.is_err() {
            for (key, at) in batch {
                self.record(key, at);
            }
        }
        written
    }

    /// Flushes every `every`, forever; run it as a background task.
    pub async fn run(self: Arc<Self>, every: Duration) {
        super::periodic::every(every, || async {
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "could not record API key usage; will retry");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::always;
    use nexus_ports::Error;
    use nexus_ports::ports::MockApiKeyStore;

    use super::*;

    #[tokio::test]
    async fn usage_is_coalesced_written_in_one_batch_and_kept_on_failure() {
        let (key, other) = (SecretDigest::of("a"), SecretDigest::of("b"));
        let (early, late) = (Utc::now(), Utc::now() + chrono::Duration::seconds(5));
        let mut store = MockApiKeyStore::new();
        let mut calls = 0;
        store.expect_record_key_usage().with(always()).times(2).returning(move |batch| {
            calls += 1;
            assert_eq!(batch.len(), 2);
            assert!(batch.contains(&(SecretDigest::of("a"), late)));
            if calls == 1 { Err(Error::Unavailable("down".into())) } else { Ok(()) }
        });
        let usage = KeyUsage::new(Arc::new(store));
        usage.record(key, late);
        usage.record(key, early);
        usage.record(other, early);
        assert_eq!(usage.noted(&key), Some(late));
        assert!(usage.flush().await.is_err());
        assert_eq!(usage.noted(&key), Some(late), "kept after a failed write");
        usage.flush().await.unwrap();
        assert_eq!(usage.noted(&key), None);
        usage.flush().await.unwrap(); // nothing left: no call
        usage.record(key, late);
        usage.forget(&key);
        assert_eq!(usage.noted(&key), None);
    }
}
