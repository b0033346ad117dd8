//! Nexus stores on sea-orm, for SQLite (the embedded default) and PostgreSQL. Migrations
//! run when a [`SqlStore`] connects; driver errors become core errors inside this crate.
#![forbid(unsafe_code)]

mod agents;
mod api_keys;
mod audit;
mod changes;
mod cluster;
mod entity;
mod error;
mod lease;
mod login_attempts;
mod migration;
mod refresh_tokens;
mod settings;
mod tenants;
#[cfg(feature = "testing")]
pub mod testing;
mod users;

use std::time::Duration;

pub use changes::{CHANNEL, HEARTBEAT_EVERY, SILENCE_LIMIT, SqlChangeFeed};
pub use cluster::SqlCluster;
pub use lease::{Attempt, Election, SqlLease};

use async_trait::async_trait;
use nexus_ports::ports::HealthCheck;
use nexus_ports::{Error, Result};
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{ConnectOptions, ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;

/// How long to wait for a connection before answering "unavailable".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long PostgreSQL lets a transaction sit idle (its client frozen or gone) before it
/// ends the session, releasing its locks. Nexus's transactions never wait on anything but
/// the database between their statements.
const IDLE_IN_TRANSACTION: &str = "10s";
/// How long a SQLite writer waits for another writer's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of a SQLite file for reads outside write transactions.
const SQLITE_READERS: u32 = 4;

/// Connection pools to the database, implementing every store port.
///
/// On a SQLite file, writes and reads have pools of their own: every write (and every
/// read inside a write transaction) goes through one connection, so that this process's
/// writers queue for it in order rather than in SQLite's busy handler, and reads outside
/// transactions go through a few others, which WAL lets read while the writer writes. A
/// read, however long (a sweep listing every agent), never holds a write up: with one
/// connection for everything, writes queued behind such reads past the pool's wait and
/// were answered "unavailable" under load. On PostgreSQL (and an in-memory SQLite, whose
/// connections would each be a database of their own) both are the same pool.
#[derive(Clone)]
pub struct SqlStore {
    /// Writes, and the reads of write transactions.
    db: DatabaseConnection,
    /// Reads outside transactions.
    reads: DatabaseConnection,
}

/// The exclusive lock of a SQLite database file, held while this value lives (and let go
/// by the operating system when the process ends, however it ends).
#[derive(Debug)]
pub struct SqliteLock {
    _file: std::fs::File,
}

/// Takes the exclusive lock of the SQLite file `url` names, so that no other process can
/// serve it; `None` for PostgreSQL and in-memory SQLite, which need none. A process that
/// is stopping may still hold it: this waits a few seconds for it before refusing.
///
/// # Errors
/// [`Error::Conflict`] when another process holds it, saying so; [`Error::Unavailable`]
/// when the lock file cannot be opened; [`Error::InvalidRequest`] for an unsupported URL.
pub async fn lock_sqlite(url: &str) -> Result<Option<SqliteLock>> {
    match sqlite_file(&normalise_url(url)?) {
        Some(path) => Ok(Some(SqliteLock { _file: lock_exclusively(&path).await? })),
        None => Ok(None),
    }
}

impl SqlStore {
    /// Connects to `url` (`sqlite://file.db`, `sqlite::memory:` or `postgres://...`) and
    /// brings the schema up to date. A SQLite file is created when missing.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the database cannot be reached, [`Error::InvalidRequest`]
    /// for a URL of an unsupported kind, [`Error::Internal`] when a migration fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let url = normalise_url(url)?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let sqlite = url.starts_with("sqlite:");
        let options = |connections: Option<u32>| {
            let mut options = ConnectOptions::new(url.clone());
            options
                .connect_timeout(CONNECT_TIMEOUT)
                .acquire_timeout(CONNECT_TIMEOUT)
                .sqlx_logging(false)
                .map_sqlx_sqlite_opts(|o| o.journal_mode(SqliteJournalMode::Wal).busy_timeout(SQLITE_BUSY_TIMEOUT).foreign_keys(true))
                // A transaction whose process froze (a GC pause, SIGSTOP) is ended by the
                // server, so that the rows it locked hold other replicas up no longer.
                .map_sqlx_postgres_opts(|o| o.options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION)]));
            if let Some(connections) = connections {
                options.max_connections(connections);
            }
            if in_memory {
                // Every connection to an in-memory database is a database of its own.
                options.max_connections(1).min_connections(1);
            }
            options
        };
        let connect = |options| async {
            sea_orm::Database::connect(options).await.map_err(|err| {
                tracing::warn!(error = %err, "cannot connect to the database");
                Error::Unavailable(format!("cannot connect to the database: {err}"))
            })
        };
        let db = connect(options(sqlite.then_some(1))).await?;
        migration::Migrator::up(&db, None).await.map_err(|err| Error::Internal(format!("database migration failed: {err}")))?;
        let reads = if sqlite && !in_memory { connect(options(Some(SQLITE_READERS))).await? } else { db.clone() };
        Ok(Self { db, reads })
    }

    /// Closes the pools.
    pub async fn close(self) {
        let _ = self.reads.close().await;
        let _ = self.db.close().await;
    }
}

/// How long a process waits for the SQLite file's lock before refusing to start: long
/// enough for a predecessor that is stopping to let it go.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The file of a SQLite URL (`None`: not SQLite, or in memory).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !url.contains(":memory:") && !url.contains("mode=memory")).then(|| std::path::PathBuf::from(path))
}

/// The lock file beside a SQLite database.
pub fn lock_file_of(database: &std::path::Path) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    std::path::PathBuf::from(name)
}

/// Takes the exclusive lock of the file beside the database, waiting [`LOCK_WAIT`] at
/// most. SQLite serves one process: a second process on the same file would run a second
/// reconcile loop and an in-memory cluster of its own, so it is refused. The operating
/// system lets the lock go when the process ends, however it ends.
async fn lock_exclusively(database: &std::path::Path) -> Result<std::fs::File> {
    let path = lock_file_of(database);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| Error::Unavailable(format!("cannot open the lock file {} beside the SQLite database: {err}", path.display())))?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Conflict(format!(
                    "the SQLite database {} is in use by another Nexus process: SQLite serves one process; \
                     to run several replicas, put them on one PostgreSQL database",
                    database.display()
                )));
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(Error::Unavailable(format!("cannot lock {} beside the SQLite database: {err}", path.display())));
            }
        }
    }
}

/// Accepts `sqlite:` and `postgres:`/`postgresql:` URLs; a SQLite URL without a `mode`
/// gets `mode=rwc` so that its file is created when missing.
fn normalise_url(url: &str) -> Result<String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_owned());
    }
    if !url.starts_with("sqlite:") {
        return Err(Error::invalid("the database URL must start with sqlite: or postgres://"));
    }
    if url.contains(":memory:") || url.contains("mode=") {
        return Ok(url.to_owned());
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}mode=rwc"))
}

#[async_trait]
impl HealthCheck for SqlStore {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<()> {
        let ping = self.db.execute_unprepared("SELECT 1");
        match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "database health check failed");
                Err(Error::Unavailable(error::UNAVAILABLE.to_owned()))
            }
            Err(_) => Err(Error::Unavailable("the database did not answer in time".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised() {
        assert_eq!(normalise_url("sqlite://nexus.db").unwrap(), "sqlite://nexus.db?mode=rwc");
        assert_eq!(normalise_url("sqlite://n.db?mode=ro").unwrap(), "sqlite://n.db?mode=ro");
        assert_eq!(normalise_url("sqlite::memory:").unwrap(), "sqlite::memory:");
        assert_eq!(normalise_url("postgres://u@h/db").unwrap(), "postgres://u@h/db");
        assert!(normalise_url("mysql://x").is_err());
    }

    #[test]
    fn only_sqlite_files_are_locked() {
        assert_eq!(sqlite_file("sqlite://dir/nexus.db?mode=rwc"), Some("dir/nexus.db".into()));
        assert_eq!(sqlite_file("sqlite:nexus.db"), Some("nexus.db".into()));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert_eq!(lock_file_of(std::path::Path::new("/d/nexus.db")), std::path::PathBuf::from("/d/nexus.db.lock"));
    }

    #[tokio::test]
    async fn a_second_lock_on_one_sqlite_file_is_refused_until_the_first_is_gone() {
        let path = std::env::temp_dir().join(format!("nexus-lock-{}.db", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}", path.display());
        let first = lock_sqlite(&url).await.unwrap().expect("a file is locked");
        let refused = lock_sqlite(&url).await.expect_err("a second lock is refused");
        assert!(matches!(&refused, Error::Conflict(m) if m.contains("in use by another Nexus process") && m.contains("PostgreSQL")), "{refused:?}");
        drop(first);
        assert!(lock_sqlite(&url).await.unwrap().is_some(), "the lock goes with the first");
        assert!(lock_sqlite("sqlite::memory:").await.unwrap().is_none() && lock_sqlite("postgres://u@h/db").await.unwrap().is_none());
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
