//! The store ports against real databases: every case runs on a fresh SQLite file and on a
//! fresh PostgreSQL database (skipped when PostgreSQL is unreachable, unless `CI` is set).
//! One binary, so the suite links once.

use nexus_store_sea_orm::testing::TestDatabase;

mod agents;
mod audit;
mod changes;
mod cluster;
mod identity;
mod tenancy;
mod tls;

/// Runs `case` once on SQLite and once on PostgreSQL, each on a database of its own.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::run(nexus_store_sea_orm::testing::fresh_sqlite(), super::$case).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = nexus_store_sea_orm::testing::fresh_postgres().await {
                    $crate::run(db, super::$case).await;
                }
            }
        }
    )*};
}

/// Now, to the microsecond, as the service's clock gives it (PostgreSQL keeps no more).
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::TimeDelta::microseconds(1)).unwrap()
}

/// An event to record with a change, by a user, of the request the test is not serving.
pub(crate) fn audit(action: nexus_ports::audit::AuditAction) -> nexus_ports::audit::AuditEvent {
    nexus_ports::audit::AuditEvent::now(now(), "usr_test", action, "target")
}

async fn run<F: AsyncFnOnce(&str)>(db: TestDatabase, case: F) {
    case(&db.url).await;
    db.drop_database().await;
}
