//! Sessions end: logout revokes one session, `DELETE /api/v1/me/sessions` and a password
//! change end them all (refusing every older access token on every replica), and a
//! session ends for good at its absolute lifetime.

use chrono::{DateTime, Utc};
use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{
    Answer, Backend, PASSWORD, Server, config, database, on_both_backends, on_postgres, with_configured_server, with_server, within_a_second,
};

on_both_backends!(
    logout_revokes_that_session_only,
    logout_and_reuse_end_the_sessions_access_tokens,
    token_answers_are_never_stored,
    a_password_change_ends_every_session,
    a_session_ends_at_its_absolute_lifetime
);
// Several replicas share PostgreSQL only: SQLite serves one process.
on_postgres!(ending_every_session_holds_on_every_replica, a_logged_out_session_is_refused_on_every_replica);

async fn refresh(server: &Server, token: &str) -> Answer {
    server.post("/auth/refresh", &json!({"refreshToken": token})).await
}

fn bearer(token: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {token}"))]
}

async fn with_bearer(server: &Server, method: Method, path: &str, token: &str, body: Option<&serde_json::Value>) -> Answer {
    let [(name, value)] = bearer(token);
    server.call(method, path, &[(name, &value)], body).await
}

async fn logout_revokes_that_session_only(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let first = server.register("ada@example.com").await;
        let other = server.login("ada@example.com", PASSWORD).await;
        let rotated = refresh(server, &first.str("refreshToken")).await;
        assert_eq!(rotated.status, StatusCode::OK);

        // Logging out with the current token ends its whole family...
        let out = server.post("/auth/logout", &json!({"refreshToken": rotated.str("refreshToken")})).await;
        assert_eq!((out.status, &out.body), (StatusCode::NO_CONTENT, &serde_json::Value::Null));
        assert_eq!(refresh(server, &rotated.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        // ...the older token of the family with it, but not the other login's session.
        assert_eq!(refresh(server, &first.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refresh(server, &other.str("refreshToken")).await.status, StatusCode::OK);

        // Unknown, repeated or garbage tokens reveal nothing.
        for token in ["nxr_unknown", "", rotated.str("refreshToken").as_str()] {
            assert_eq!(server.post("/auth/logout", &json!({"refreshToken": token})).await.status, StatusCode::NO_CONTENT, "{token:?}");
        }
        for body in [json!({}), json!({"refreshToken": 7})] {
            let bad = server.post("/auth/logout", &body).await;
            assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{body}");
            bad.error();
        }
    })
    .await;
}

/// The access tokens of a session (its first one and those its rotations issued) end with
/// it: at logout, and when a rotated refresh token presented again revokes it. Other
/// sessions of the same user go on.
async fn logout_and_reuse_end_the_sessions_access_tokens(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let first = server.register("ada@example.com").await;
        let other = server.login("ada@example.com", PASSWORD).await;
        let rotated = refresh(server, &first.str("refreshToken")).await;
        assert_eq!(rotated.status, StatusCode::OK);
        for token in [first.str("accessToken"), rotated.str("accessToken"), other.str("accessToken")] {
            assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::OK);
        }
        let out = server.post("/auth/logout", &json!({"refreshToken": rotated.str("refreshToken")})).await;
        assert_eq!(out.status, StatusCode::NO_CONTENT);
        for token in [first.str("accessToken"), rotated.str("accessToken")] {
            let me = server.get("/api/v1/me", Some(&token)).await;
            assert_eq!(me.status, StatusCode::UNAUTHORIZED, "an access token of the logged-out session: {me:?}");
            assert_eq!(me.error(), "this session has ended; log in again");
        }
        assert_eq!(server.get("/api/v1/me", Some(&other.str("accessToken"))).await.status, StatusCode::OK, "the other session goes on");

        // A replayed refresh token revokes its session, access tokens included.
        let stolen = other.str("refreshToken");
        let renewed = refresh(server, &stolen).await;
        assert_eq!(renewed.status, StatusCode::OK);
        assert_eq!(server.get("/api/v1/me", Some(&renewed.str("accessToken"))).await.status, StatusCode::OK);
        assert_eq!(refresh(server, &stolen).await.status, StatusCode::UNAUTHORIZED, "the replay");
        for token in [other.str("accessToken"), renewed.str("accessToken")] {
            assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::UNAUTHORIZED, "revoked by reuse detection");
        }
        let again = server.login("ada@example.com", PASSWORD).await;
        assert_eq!(server.get("/api/v1/me", Some(&again.str("accessToken"))).await.status, StatusCode::OK, "a new login works");
    })
    .await;
}

/// Answers that carry tokens say `Cache-Control: no-store`, so that no cache keeps them.
async fn token_answers_are_never_stored(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let body = json!({"email": "ada@example.com", "password": PASSWORD});
        let send = async |path: &str, body: &serde_json::Value| {
            let response = reqwest::Client::new().post(format!("{}{path}", server.base)).json(body).send().await.unwrap();
            let cache = response.headers().get("cache-control").map(|value| value.to_str().unwrap().to_owned());
            let answer: serde_json::Value = response.json().await.unwrap();
            (cache, answer)
        };
        let (cache, registered) = send("/auth/register", &body).await;
        assert_eq!(cache.as_deref(), Some("no-store"), "register");
        let (cache, _) = send("/auth/login", &body).await;
        assert_eq!(cache.as_deref(), Some("no-store"), "login");
        let (cache, rotated) = send("/auth/refresh", &json!({"refreshToken": registered["refreshToken"]})).await;
        assert!(rotated["accessToken"].is_string(), "{rotated}");
        assert_eq!(cache.as_deref(), Some("no-store"), "refresh");
    })
    .await;
}

/// A session logged out (or revoked by reuse) through one replica: its access tokens are
/// refused there at once and on the other within a second, though both had them in memory.
async fn a_logged_out_session_is_refused_on_every_replica(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    let (a, b) = (Server::start(config(&db.url)).await, Server::start(config(&db.url)).await);
    let ended = a.register("ada@example.com").await;
    let replayed = b.login("ada@example.com", PASSWORD).await;
    let kept = a.login("ada@example.com", PASSWORD).await;
    for server in [&a, &b] {
        for session in [&ended, &replayed, &kept] {
            assert_eq!(server.get("/api/v1/me", Some(&session.str("accessToken"))).await.status, StatusCode::OK);
        }
    }
    assert_eq!(a.post("/auth/logout", &json!({"refreshToken": ended.str("refreshToken")})).await.status, StatusCode::NO_CONTENT);
    assert_eq!(a.get("/api/v1/me", Some(&ended.str("accessToken"))).await.status, StatusCode::UNAUTHORIZED, "at once where it was logged out");
    within_a_second("the other replica refuses the logged-out session", async || {
        b.get("/api/v1/me", Some(&ended.str("accessToken"))).await.status == StatusCode::UNAUTHORIZED
    })
    .await;

    assert_eq!(refresh(&b, &replayed.str("refreshToken")).await.status, StatusCode::OK);
    assert_eq!(refresh(&b, &replayed.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED, "the replay revokes the session");
    assert_eq!(b.get("/api/v1/me", Some(&replayed.str("accessToken"))).await.status, StatusCode::UNAUTHORIZED);
    within_a_second("the other replica refuses the revoked session", async || {
        a.get("/api/v1/me", Some(&replayed.str("accessToken"))).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    for server in [&a, &b] {
        assert_eq!(server.get("/api/v1/me", Some(&kept.str("accessToken"))).await.status, StatusCode::OK, "the user's other session goes on");
    }
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

async fn ending_every_session_holds_on_every_replica(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    // Two servers, two pools: two replicas on one database.
    let (a, b) = (Server::start(config(&db.url)).await, Server::start(config(&db.url)).await);
    let first = a.register("ada@example.com").await;
    let second = b.login("ada@example.com", PASSWORD).await;
    let bystander = a.register("bob@example.com").await;
    let tenant = a.tenant(&first.str("accessToken"), "org").await.str("id");
    let key = a.key(&first.str("accessToken"), &tenant, "ci").await.str("rawKey");
    for server in [&a, &b] {
        for session in [&first, &second] {
            assert_eq!(server.get("/api/v1/me", Some(&session.str("accessToken"))).await.status, StatusCode::OK);
        }
    }

    let ended = with_bearer(&b, Method::DELETE, "/api/v1/me/sessions", &second.str("accessToken"), None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{ended:?}");
    // At once on the replica that ended them; the other hears of it within a second.
    assert_eq!(b.get("/api/v1/me", Some(&first.str("accessToken"))).await.status, StatusCode::UNAUTHORIZED);
    within_a_second("the other replica refuses the ended sessions", async || {
        a.get("/api/v1/me", Some(&first.str("accessToken"))).await.status == StatusCode::UNAUTHORIZED
    })
    .await;

    for server in [&a, &b] {
        for session in [&first, &second] {
            let me = server.get("/api/v1/me", Some(&session.str("accessToken"))).await;
            assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{me:?}");
            assert_eq!(me.error(), "this session has ended; log in again");
            assert_eq!(refresh(server, &session.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(server.get("/api/v1/me", Some(&bystander.str("accessToken"))).await.status, StatusCode::OK, "another user's session goes on");
        // API keys are not sessions: the tenant's key keeps working.
        assert_eq!(server.call(Method::GET, "/api/v1/me", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
    }

    // A new login works everywhere, at once.
    let again = a.login("ada@example.com", PASSWORD).await;
    assert_eq!(again.status, StatusCode::OK);
    for server in [&a, &b] {
        assert_eq!(server.get("/api/v1/me", Some(&again.str("accessToken"))).await.status, StatusCode::OK);
    }
    assert_eq!(refresh(&b, &again.str("refreshToken")).await.status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

async fn a_password_change_ends_every_session(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let session = server.register("ada@example.com").await;
        let token = session.str("accessToken");
        let change = async |current: &str, new: &str| {
            with_bearer(server, Method::PUT, "/api/v1/me/password", &token, Some(&json!({"currentPassword": current, "newPassword": new}))).await
        };
        // The new password obeys the registration rules; a wrong current one is refused.
        for short in ["short", "", "ééééééé"] {
            let refused = change(PASSWORD, short).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
            refused.error();
        }
        assert_eq!(change("not-the-password", "a-new-strong-password").await.status, StatusCode::FORBIDDEN);
        let missing = with_bearer(server, Method::PUT, "/api/v1/me/password", &token, Some(&json!({"newPassword": "a-new-strong-password"}))).await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::OK, "refusals change nothing");

        assert_eq!(change(PASSWORD, "a-new-strong-password").await.status, StatusCode::NO_CONTENT);
        assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::UNAUTHORIZED, "the token it was changed with too");
        assert_eq!(refresh(server, &session.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(server.login("ada@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
        let fresh = server.login("ada@example.com", "a-new-strong-password").await;
        assert_eq!(fresh.status, StatusCode::OK);
        assert_eq!(server.get("/api/v1/me", Some(&fresh.str("accessToken"))).await.status, StatusCode::OK);
    })
    .await;
}

fn refresh_expiry(answer: &Answer) -> DateTime<Utc> {
    answer.str("refreshExpiresAt").parse().unwrap()
}

async fn a_session_ends_at_its_absolute_lifetime(backend: Backend) {
    let short_sessions = |config| ServeConfig { session_max: std::time::Duration::from_secs(2).into(), ..config };
    with_configured_server(backend, short_sessions, async |server: &Server| {
        let before = Utc::now();
        let session = server.register("ada@example.com").await;
        let end = refresh_expiry(&session);
        assert!(end > before && end <= Utc::now() + chrono::Duration::seconds(2), "the 30-day token is cut to the 2-second session: {end}");
        // Rotating does not stretch the session.
        let rotated = refresh(server, &session.str("refreshToken")).await;
        assert_eq!(rotated.status, StatusCode::OK);
        assert_eq!(refresh_expiry(&rotated), end);
        tokio::time::sleep((end - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_millis(200)).await;
        let over = refresh(server, &rotated.str("refreshToken")).await;
        assert_eq!(over.status, StatusCode::UNAUTHORIZED, "{over:?}");
        assert_eq!(over.error(), "the session has reached its maximum lifetime; log in again");
        assert_eq!(server.login("ada@example.com", PASSWORD).await.status, StatusCode::OK, "logging in again starts a new session");
    })
    .await;
}
