//! Liveness and readiness.

use reqwest::StatusCode;

use crate::support::{Backend, Server, config, database, on_both_backends, with_server};

on_both_backends!(probes_answer_while_the_database_is_up);

async fn probes_answer_while_the_database_is_up(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let live = server.get("/healthz", None).await;
        assert_eq!((live.status, live.body["status"].as_str()), (StatusCode::OK, Some("ok")));
        let ready = server.get("/readyz", None).await;
        assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
        assert_eq!(ready.body["status"], "ready");
        assert_eq!(ready.body["checks"]["database"], "ok");
    })
    .await;
}

/// PostgreSQL only: its database can be taken away from under a running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_database_is_gone_and_liveness_does_not() {
    let Some(db) = database(Backend::Postgres).await else { return };
    let url = db.url.clone();
    let server = Server::start(config(&url)).await;
    db.drop_database().await;

    let ready = server.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(ready.body["status"], "unavailable");
    assert_eq!(ready.body["checks"]["database"], "the database is unavailable");
    assert_eq!(server.get("/healthz", None).await.status, StatusCode::OK);
    // Requests that need the database say so with 503, not 500.
    let login = server.post("/auth/login", &serde_json::json!({"email": "a@example.com", "password": "whatever1"})).await;
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE, "{login:?}");
    login.error();
    server.stop().await;
}
