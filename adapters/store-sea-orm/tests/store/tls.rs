//! PostgreSQL over TLS, as managed databases require: `sslmode=require` in the URL. Skipped
//! when PostgreSQL is unreachable (unless `CI` is set) or serves no TLS.

use nexus_ports::ports::HealthCheck;
use nexus_store_sea_orm::SqlStore;
use nexus_store_sea_orm::testing::fresh_postgres;
use sea_orm::{ConnectionTrait, Database, Statement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_runs_on_postgresql_over_tls() {
    let Some(db) = fresh_postgres().await else { return };
    let plain = Database::connect(db.url.as_str()).await.expect("connect");
    let backend = plain.get_database_backend();
    let offered = plain.query_one_raw(Statement::from_string(backend, "SHOW ssl")).await.unwrap().unwrap().try_get_by_index::<String>(0).unwrap();
    let _ = plain.close().await;
    if offered != "on" {
        eprintln!("skipping: this PostgreSQL serves no TLS (ssl = {offered})");
        db.drop_database().await;
        return;
    }

    let url = format!("{}?sslmode=require", db.url);
    let secured = Database::connect(url.as_str()).await.expect("a TLS connection (the driver is built with TLS)");
    let encrypted = secured
        .query_one_raw(Statement::from_string(backend, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<bool>(0)
        .unwrap();
    assert!(encrypted, "the session is encrypted");
    let _ = secured.close().await;
    let store = SqlStore::connect(&url).await.expect("migrations over TLS");
    store.check().await.expect("the store answers over TLS");
    db.drop_database().await;
}
