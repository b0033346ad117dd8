//! Throw-away databases for tests: a SQLite file in the temp folder, or a fresh PostgreSQL
//! database on the server named by `NEXUS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! When PostgreSQL cannot be reached, [`fresh_postgres`] returns `None` so that tests can
//! skip, unless `CI` is set: then a missing server is a failure, not a skip.

use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

/// The administrative URL used to create and drop test databases.
pub fn postgres_admin_url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test; call [`TestDatabase::drop_database`] at the end.
pub struct TestDatabase {
    pub url: String,
    name: Option<String>,
}

/// A new empty SQLite file under the temp folder.
pub fn fresh_sqlite() -> TestDatabase {
    let path = std::env::temp_dir().join(format!("nexus-test-{}.db", Uuid::new_v4().simple()));
    TestDatabase { url: format!("sqlite://{}?mode=rwc", path.display()), name: None }
}

/// A new empty PostgreSQL database, or `None` when the server is unreachable and `CI` is unset.
///
/// # Panics
/// When the server is unreachable and `CI` is set.
pub async fn fresh_postgres() -> Option<TestDatabase> {
    let admin_url = postgres_admin_url();
    let admin = match Database::connect(admin_url.as_str()).await {
        Ok(admin) => admin,
        Err(err) => {
            assert!(std::env::var_os("CI").is_none(), "PostgreSQL at {admin_url} is unreachable and CI is set: {err}");
            eprintln!("skipping PostgreSQL test: {admin_url} is unreachable ({err})");
            return None;
        }
    };
    let name = format!("nexus_test_{}", Uuid::new_v4().simple());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    let _ = admin.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
    Some(TestDatabase { url: format!("{base}/{name}"), name: Some(name) })
}

impl TestDatabase {
    /// Removes the database (PostgreSQL) or its files (SQLite).
    pub async fn drop_database(self) {
        match self.name {
            Some(name) => {
                if let Ok(admin) = Database::connect(postgres_admin_url().as_str()).await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    let _ = admin.close().await;
                }
            }
            None => {
                let path = self.url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
                for suffix in ["", "-wal", "-shm", ".lock"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}

/// Runs `sql` on the database at `url` as it is, behind the store's back: to corrupt a row
/// by hand, as an operator or a faulty version could.
///
/// # Panics
/// When the database cannot be reached or refuses the statement.
pub async fn execute_sql(url: &str, sql: &str) {
    let db = Database::connect(url).await.expect("connect to the test database");
    db.execute_unprepared(sql).await.expect("the statement runs");
    let _ = db.close().await;
}

impl crate::SqlStore {
    /// Open read transactions on every connection a SQLite file reads through (as many on
    /// PostgreSQL), held until dropped: what long reads in progress hold.
    pub async fn hold_reads(&self) -> Vec<sea_orm::DatabaseTransaction> {
        use sea_orm::TransactionTrait;
        let mut held = Vec::new();
        for _ in 0..crate::SQLITE_READERS {
            let txn = self.reads.begin().await.expect("a read transaction");
            txn.execute_unprepared("SELECT COUNT(*) FROM agents").await.expect("a read");
            held.push(txn);
        }
        held
    }

    /// A PostgreSQL setting as the store's connections have it (`SHOW name`).
    pub async fn setting(&self, name: &str) -> String {
        let row = self.db.query_one_raw(sea_orm::Statement::from_string(self.db.get_database_backend(), format!("SHOW {name}"))).await.expect("SHOW runs");
        row.expect("a row").try_get_by_index::<String>(0).expect("a text setting")
    }
}
