//! register -> login -> refresh -> me, and every failure of each, over HTTP.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backend, PASSWORD, Server, config, database, on_both_backends, with_server};

on_both_backends!(
    walk_register_login_refresh_me,
    emails_are_unique_ignoring_case,
    login_failures_look_alike,
    refresh_reuse_revokes_that_session_only,
    me_refuses_anything_but_a_live_access_token,
    expired_access_tokens_are_refused
);

async fn walk_register_login_refresh_me(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let registered = server.post("/auth/register", &json!({"email": "Admin@Example.com", "password": PASSWORD, "displayName": "Admin"})).await;
        assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
        let user = &registered.body["user"];
        assert!(user["id"].as_str().unwrap().starts_with("usr_"));
        assert_eq!(user["email"], "admin@example.com");
        assert_eq!(user["displayName"], "Admin");
        assert_eq!(registered.str("accessToken").split('.').count(), 3, "a JWT");
        assert!(registered.str("refreshToken").starts_with("nxr_"));
        assert_eq!(registered.body["tokenType"], "Bearer");
        assert_eq!(registered.body["expiresIn"], 900);
        assert!(registered.body.get("passwordHash").is_none() && user.get("passwordHash").is_none());

        let login = server.post("/auth/login", &json!({"email": "ADMIN@example.com", "password": PASSWORD})).await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        assert_eq!(login.body["user"], registered.body["user"]);
        assert_ne!(login.str("refreshToken"), registered.str("refreshToken"));

        let me = server.get("/api/v1/me", Some(&login.str("accessToken"))).await;
        assert_eq!(me.status, StatusCode::OK, "{me:?}");
        assert_eq!(me.body["kind"], "user");
        assert_eq!(me.body["user"], registered.body["user"]);

        let refreshed = server.post("/auth/refresh", &json!({"refreshToken": login.str("refreshToken")})).await;
        assert_eq!(refreshed.status, StatusCode::OK, "{refreshed:?}");
        assert_ne!(refreshed.str("refreshToken"), login.str("refreshToken"));
        assert_eq!(server.get("/api/v1/me", Some(&refreshed.str("accessToken"))).await.status, StatusCode::OK);
        // The rotated token rotates again; the chain goes on.
        let again = server.post("/auth/refresh", &json!({"refreshToken": refreshed.str("refreshToken")})).await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");

        // displayName is optional: it defaults to the email's local part.
        let unnamed = server.post("/auth/register", &json!({"email": "grace@example.com", "password": PASSWORD})).await;
        assert_eq!(unnamed.status, StatusCode::CREATED);
        assert_eq!(unnamed.body["user"]["displayName"], "grace");
    })
    .await;
}

async fn emails_are_unique_ignoring_case(backend: Backend) {
    with_server(backend, async |server: &Server| {
        server.register("ada@example.com").await;
        for email in ["ada@example.com", "ADA@Example.Com", "  ada@example.com "] {
            let again = server.post("/auth/register", &json!({"email": email, "password": "another-password"})).await;
            assert_eq!(again.status, StatusCode::CONFLICT, "{email}: {again:?}");
            assert_eq!(again.error(), "a user with this email already exists");
        }
        // The first account is untouched: its password still works.
        assert_eq!(server.post("/auth/login", &json!({"email": "ada@example.com", "password": PASSWORD})).await.status, StatusCode::OK);
    })
    .await;
}

async fn login_failures_look_alike(backend: Backend) {
    with_server(backend, async |server: &Server| {
        server.register("ada@example.com").await;
        let wrong_password = server.post("/auth/login", &json!({"email": "ada@example.com", "password": "not-the-password"})).await;
        let unknown_email = server.post("/auth/login", &json!({"email": "nobody@example.com", "password": PASSWORD})).await;
        let malformed_email = server.post("/auth/login", &json!({"email": "nobody", "password": PASSWORD})).await;
        for answer in [&wrong_password, &unknown_email, &malformed_email] {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
            assert_eq!(answer.error(), "invalid email or password");
        }
    })
    .await;
}

async fn refresh_reuse_revokes_that_session_only(backend: Backend) {
    with_server(backend, async |server: &Server| {
        server.register("ada@example.com").await;
        let login = async || server.post("/auth/login", &json!({"email": "ada@example.com", "password": PASSWORD})).await.str("refreshToken");
        let refresh = async |token: &str| server.post("/auth/refresh", &json!({"refreshToken": token})).await;
        let (first, other_session) = (login().await, login().await);

        let second = refresh(&first).await;
        assert_eq!(second.status, StatusCode::OK);
        let replay = refresh(&first).await;
        assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
        assert!(replay.error().contains("already been used"), "{replay:?}");
        // The replay revoked the token that replaced it...
        assert_eq!(refresh(&second.str("refreshToken")).await.status, StatusCode::UNAUTHORIZED);
        // ...but not another login's session.
        assert_eq!(refresh(&other_session).await.status, StatusCode::OK);
        // Unknown tokens.
        for garbage in ["", "nxr_nope", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
            let answer = refresh(garbage).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{garbage:?}");
            assert_eq!(answer.error(), "invalid refresh token");
        }
    })
    .await;
}

async fn me_refuses_anything_but_a_live_access_token(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let session = server.register("ada@example.com").await;
        let missing = server.get("/api/v1/me", None).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(missing.error().contains("missing credentials"));
        let refresh_as_bearer = session.str("refreshToken");
        let mut tampered = session.str("accessToken");
        tampered.push('x');
        for token in ["garbage", "a.b.c", refresh_as_bearer.as_str(), tampered.as_str()] {
            let answer = server.get("/api/v1/me", Some(token)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}: {answer:?}");
            assert_eq!(answer.error(), "invalid or expired access token");
        }
        let basic = server.send(reqwest::Method::GET, "/api/v1/me", None, None, None).await;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

async fn expired_access_tokens_are_refused(backend: Backend) {
    let Some(db) = database(backend).await else { return };
    // Two seconds, not one: the renewed token below must still be live when it is used,
    // however long a loaded machine takes between issuing and checking it.
    let server = Server::start(nexus::config::ServeConfig { access_ttl: std::time::Duration::from_secs(2).into(), ..config(&db.url) }).await;
    let session = server.register("ada@example.com").await;
    assert_eq!(session.body["expiresIn"], 2);
    // `exp` is rounded up to the whole second: the token lives at most three seconds.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let answer = server.get("/api/v1/me", Some(&session.str("accessToken"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    // The refresh token still renews the session.
    let renewed = server.post("/auth/refresh", &json!({"refreshToken": session.str("refreshToken")})).await;
    assert_eq!(renewed.status, StatusCode::OK);
    assert_eq!(server.get("/api/v1/me", Some(&renewed.str("accessToken"))).await.status, StatusCode::OK);
    server.stop().await;
    db.drop_database().await;
}
