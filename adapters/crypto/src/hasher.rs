//! argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane). Each hash runs on the
//! blocking pool, and a semaphore caps how many run at once, so a login flood queues for
//! the hasher instead of starving every other request of CPU. The queue is bounded too:
//! past `max_waiting` waiting hashes, a request is refused at once ([`Error::Overloaded`])
//! rather than left to wait behind a flood without end.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash as Phc, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use nexus_ports::identity::{Password, PasswordHash};
use nexus_ports::ports::PasswordHasher;
use nexus_ports::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory cost in KiB (19 MiB).
const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over memory.
const ITERATIONS: u32 = 2;
/// Lanes.
const PARALLELISM: u32 = 1;
/// What a refusal suggests as `Retry-After`: a queue's worth of hashes takes well under it.
const RETRY_AFTER_SECS: u64 = 1;

/// argon2id [`PasswordHasher`].
pub struct Argon2Hasher {
    argon: Argon2<'static>,
    /// One per hash running or waiting: `max_concurrent + max_waiting`.
    admitted: Arc<Semaphore>,
    /// One per hash running: `max_concurrent`.
    running: Arc<Semaphore>,
    dummy: PasswordHash,
}

impl Argon2Hasher {
    /// A hasher running at most `max_concurrent` hashes at once (at least one), with at
    /// most `max_waiting` more waiting for their turn. Computes the dummy hash for unknown
    /// users once, here.
    pub fn new(max_concurrent: usize, max_waiting: usize) -> Result<Self> {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(Error::internal)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = hash_blocking(&argon, "nexus dummy password for unknown users")?;
        let max_concurrent = max_concurrent.max(1);
        let admitted = Arc::new(Semaphore::new(max_concurrent.saturating_add(max_waiting).min(Semaphore::MAX_PERMITS)));
        Ok(Self { argon, admitted, running: Arc::new(Semaphore::new(max_concurrent)), dummy })
    }

    /// A place in the queue, or [`Error::Overloaded`] at once when there is none.
    fn admit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded { message: "too many password checks are waiting; retry shortly".to_owned(), retry_after_secs: RETRY_AFTER_SECS })
    }

    /// Runs `work` on the blocking pool once admitted and a permit is free. The permits
    /// move into the blocking task, so a cancelled request cannot free them while its hash
    /// still runs.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static) -> Result<T> {
        let place = self.admit()?;
        let queued = std::time::Instant::now();
        let permit = Arc::clone(&self.running).acquire_owned().await.map_err(Error::internal)?;
        metrics::histogram!("nexus_password_hash_queue_wait_seconds").record(queued.elapsed().as_secs_f64());
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = (place, permit);
            work(&argon)
        })
        .await
        .map_err(Error::internal)
    }
}

fn hash_blocking(argon: &Argon2<'_>, password: &str) -> Result<PasswordHash> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(Error::internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(Error::internal)?;
    let phc = argon.hash_password(password.as_bytes(), &salt).map_err(Error::internal)?;
    Ok(PasswordHash::from_phc(phc.to_string()))
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash> {
        let password = password.clone();
        self.run(move |argon| hash_blocking(argon, password.expose())).await?
    }

    async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool> {
        let (password, hash) = (password.clone(), hash.clone());
        self.run(move |argon| match Phc::new(hash.as_phc()) {
            Ok(phc) => argon.verify_password(password.expose().as_bytes(), &phc).is_ok(),
            Err(_) => false,
        })
        .await
    }

    fn dummy_hash(&self) -> PasswordHash {
        self.dummy.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = Argon2Hasher::new(2, 0).unwrap();
        let password = Password::choose("correct horse".into()).unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", hash.as_phc());
        assert!(hasher.verify(&password, &hash).await.unwrap());
        assert!(!hasher.verify(&Password::presented("wrong horse".into()).unwrap(), &hash).await.unwrap());
        assert_ne!(hasher.hash(&password).await.unwrap(), hash, "salts must differ");
    }

    #[tokio::test]
    async fn malformed_or_dummy_hashes_never_match() {
        let hasher = Argon2Hasher::new(1, 1).unwrap();
        let password = Password::presented("anything".into()).unwrap();
        assert!(!hasher.verify(&password, &PasswordHash::from_phc("not a phc".into())).await.unwrap());
        assert!(!hasher.verify(&password, &hasher.dummy_hash()).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_as_hashes_finish() {
        let hasher = Argon2Hasher::new(1, 2).unwrap();
        let password = Password::presented("anything".into()).unwrap();
        // Three places: one running, two waiting. Hold them all, as a flood would.
        let held: Vec<_> = (0..3).map(|_| hasher.admit().unwrap()).collect();
        for refused in [hasher.verify(&password, &hasher.dummy_hash()).await, hasher.hash(&password).await.map(|_| false)] {
            assert_eq!(refused, Err(Error::Overloaded { message: "too many password checks are waiting; retry shortly".into(), retry_after_secs: 1 }));
        }
        drop(held);
        assert!(!hasher.verify(&password, &hasher.dummy_hash()).await.unwrap(), "served again once places are free");
        assert_eq!(hasher.admitted.available_permits(), 3, "a finished hash gives its place back");
    }
}
