//! A restart keeps users, and keeps issued tokens valid: the generated signing secret is
//! kept in the database, an explicit one comes from configuration.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backend, PASSWORD, Server, config, database, on_both_backends};

on_both_backends!(restart_keeps_users_and_tokens, explicit_secret_survives_restarts_and_wrong_secret_does_not);

async fn restart_keeps_users_and_tokens(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let first = Server::start(config(&db.url)).await;
    let session = first.register("ada@example.com").await;
    first.stop().await;

    let second = Server::start(config(&db.url)).await;
    let me = second.get("/api/v1/me", Some(&session.str("accessToken"))).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["user"], session.body["user"]);
    assert_eq!(second.post("/auth/refresh", &json!({"refreshToken": session.str("refreshToken")})).await.status, StatusCode::OK);
    assert_eq!(second.post("/auth/login", &json!({"email": "ada@example.com", "password": PASSWORD})).await.status, StatusCode::OK);
    second.stop().await;
    db.drop_database().await;
}

async fn explicit_secret_survives_restarts_and_wrong_secret_does_not(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let with_secret = |secret: &str| nexus::config::ServeConfig { jwt_secret: Some(secret.to_owned()), ..config(&db.url) };
    let first = Server::start(with_secret("an explicit secret of thirty-two bytes or more")).await;
    let token = first.register("ada@example.com").await.str("accessToken");
    first.stop().await;

    let same = Server::start(with_secret("an explicit secret of thirty-two bytes or more")).await;
    assert_eq!(same.get("/api/v1/me", Some(&token)).await.status, StatusCode::OK);
    same.stop().await;
    let rotated = Server::start(with_secret("a different secret, also long enough to use")).await;
    assert_eq!(rotated.get("/api/v1/me", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    rotated.stop().await;

    let short = nexus::bootstrap::build(&with_secret("too short")).await;
    assert!(matches!(short, Err(nexus_ports::Error::InvalidRequest(_))), "a short secret is refused at start-up");
    db.drop_database().await;
}
