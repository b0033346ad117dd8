//! argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane). Hashes run on threads of
//! their own, `max_concurrent` of them, so a login flood queues for the hasher instead of
//! starving every other request of CPU. On Linux those threads run at a lower scheduling
//! priority ([`HASHER_NICENESS`]): when the async workers have requests to serve they get
//! the CPU first, and hashing takes what is left. The queue is bounded too: past
//! `max_waiting` waiting hashes, a request is refused at once ([`Error::Overloaded`])
//! rather than left to wait behind a flood without end.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

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
/// The niceness of the hashing threads (0 is the default; 19 the least favoured). Enough
/// for the scheduler to run a waiting async worker ahead of a hash at once, not so much
/// that hashes stop while the process serves other requests flat out.
pub const HASHER_NICENESS: i32 = 10;

/// One hash or check, with its place in the queue.
type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// argon2id [`PasswordHasher`].
pub struct Argon2Hasher {
    /// One per hash running or waiting: `max_concurrent + max_waiting`.
    admitted: Arc<Semaphore>,
    /// To the hashing threads, which end when the hasher is dropped.
    jobs: Sender<Job>,
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
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..max_concurrent {
            let (queue, argon) = (queue.clone(), argon.clone());
            std::thread::Builder::new().name(format!("nexus-hasher-{n}")).spawn(move || hash_jobs(&queue, &argon)).map_err(Error::internal)?;
        }
        Ok(Self { admitted, jobs, dummy })
    }

    /// A place in the queue, or [`Error::Overloaded`] at once when there is none.
    fn admit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.admitted).try_acquire_owned().map_err(|_| overloaded())
    }

    /// Runs `work` on a hashing thread once admitted and one is free. The place moves into
    /// the job, so a cancelled request cannot free it while its hash still waits or runs.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static) -> Result<T> {
        let place = self.admit()?;
        let queued = std::time::Instant::now();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |argon| {
            metrics::histogram!("nexus_password_hash_queue_wait_seconds").record(queued.elapsed().as_secs_f64());
            let out = work(argon);
            // The place is free before the answer is: whoever reads the answer sees it free.
            drop(place);
            let _ = answer.send(out);
        });
        self.jobs.send(job).map_err(|_| Error::internal("the hashing threads are gone"))?;
        answered.await.map_err(|_| Error::internal("a password hash did not finish"))
    }
}

/// The refusal of a full queue.
fn overloaded() -> Error {
    Error::Overloaded { message: "too many password checks are waiting; retry shortly".to_owned(), retry_after_secs: RETRY_AFTER_SECS }
}

/// A hashing thread: lowers its own priority, then runs jobs until the hasher is dropped.
fn hash_jobs(queue: &Mutex<Receiver<Job>>, argon: &Argon2<'static>) {
    lower_priority();
    loop {
        let job = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panicking hash drops its answer (the request fails as internal); the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(argon)));
    }
}

/// Sets this thread's niceness to [`HASHER_NICENESS`] (on Linux, a thread's own); where
/// that cannot be done, hashing runs at the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASHER_NICENESS) {
        tracing::debug!(error = %err, "cannot lower the hashing threads' priority");
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

    fn has_room(&self) -> Result<()> {
        if self.admitted.available_permits() == 0 { Err(overloaded()) } else { Ok(()) }
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_of_lower_priority() {
        let hasher = Argon2Hasher::new(1, 0).unwrap();
        hasher.hash(&Password::presented("anything".into()).unwrap()).await.unwrap();
        // Other tests' hashers may be starting: it is enough that this one's thread is lowered.
        let niceness: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let path = task.ok()?.path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the command name's closing parenthesis; the niceness is the 19th field.
                let nice = stat[stat.rfind(')')? + 2..].split_whitespace().nth(16)?.parse().ok()?;
                name.starts_with("nexus-hasher").then_some(nice)
            })
            .collect();
        assert!(niceness.contains(&HASHER_NICENESS), "{niceness:?}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_as_hashes_finish() {
        let hasher = Argon2Hasher::new(1, 2).unwrap();
        let password = Password::presented("anything".into()).unwrap();
        // Three places: one running, two waiting. Hold them all, as a flood would.
        let held: Vec<_> = (0..3).map(|_| hasher.admit().unwrap()).collect();
        assert_eq!(hasher.has_room(), Err(overloaded()));
        for refused in [hasher.verify(&password, &hasher.dummy_hash()).await, hasher.hash(&password).await.map(|_| false)] {
            assert_eq!(refused, Err(Error::Overloaded { message: "too many password checks are waiting; retry shortly".into(), retry_after_secs: 1 }));
        }
        drop(held);
        assert_eq!(hasher.has_room(), Ok(()));
        assert!(!hasher.verify(&password, &hasher.dummy_hash()).await.unwrap(), "served again once places are free");
        assert_eq!(hasher.admitted.available_permits(), 3, "a finished hash gives its place back");
    }
}
