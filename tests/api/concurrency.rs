//! Races: one email registered by many at once, one refresh token rotated by many at once,
//! also by two Nexus processes sharing one database.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backend, PASSWORD, Server, config, database, on_both_backends, on_postgres, with_server};

on_both_backends!(racing_registrations_of_one_email_make_one_account, racing_refreshes_have_one_winner);
// Several replicas share PostgreSQL only: SQLite serves one process.
on_postgres!(racing_refreshes_across_two_processes_have_one_winner);

fn count(statuses: &[StatusCode], wanted: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == wanted).count()
}

async fn racing_registrations_of_one_email_make_one_account(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let body = json!({"email": "race@example.com", "password": PASSWORD});
        let statuses: Vec<StatusCode> = join_all((0..16).map(|_| server.post("/auth/register", &body))).await.into_iter().map(|a| a.status).collect();
        assert_eq!((count(&statuses, StatusCode::CREATED), count(&statuses, StatusCode::CONFLICT)), (1, 15), "{statuses:?}");
    })
    .await;
}

async fn racing_refreshes_have_one_winner(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let token = server.register("race@example.com").await.str("refreshToken");
        let body = json!({"refreshToken": token});
        let statuses: Vec<StatusCode> = join_all((0..16).map(|_| server.post("/auth/refresh", &body))).await.into_iter().map(|a| a.status).collect();
        assert_eq!((count(&statuses, StatusCode::OK), count(&statuses, StatusCode::UNAUTHORIZED)), (1, 15), "{statuses:?}");
    })
    .await;
}

async fn racing_refreshes_across_two_processes_have_one_winner(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    // Two servers, two pools: what two Nexus processes on one database look like.
    let (a, b) = (Server::start(config(&db.url)).await, Server::start(config(&db.url)).await);
    let token = a.register("race@example.com").await.str("refreshToken");
    let body = json!({"refreshToken": token});
    let racers = (0..16).map(|i| if i % 2 == 0 { a.post("/auth/refresh", &body) } else { b.post("/auth/refresh", &body) });
    let statuses: Vec<StatusCode> = join_all(racers).await.into_iter().map(|a| a.status).collect();
    assert_eq!((count(&statuses, StatusCode::OK), count(&statuses, StatusCode::UNAUTHORIZED)), (1, 15), "{statuses:?}");
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}
