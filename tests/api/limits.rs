//! Rate limits: `/auth/*` per client address (and whom `X-Forwarded-For` is believed
//! from), failed logins per account, and the hasher's bounded queue. Every refusal is a
//! JSON error with `Retry-After`; unrelated routes keep answering.

use futures_util::future::join_all;
use nexus::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Answer, Backend, PASSWORD, Server, on_both_backends, with_configured_server};

on_both_backends!(
    auth_routes_are_limited_per_address_and_other_routes_keep_answering,
    failed_logins_are_limited_per_account,
    a_wrong_current_password_counts_as_a_failed_login,
    a_saturated_hasher_refuses_at_once_with_503
);

fn assert_limited(answer: &Answer) -> u64 {
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
    answer.error();
    answer.retry_after()
}

async fn auth_routes_are_limited_per_address_and_other_routes_keep_answering(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { auth_rate: 4, ..config },
        async |server: &Server| {
            // Four requests a minute from 127.0.0.1: a registration and three logins.
            let session = server.register("ada@example.com").await;
            let token = session.str("accessToken");
            let tenant = server.tenant(&token, "org").await.str("id");
            let key = server.key(&token, &tenant, "ci").await.str("rawKey");
            for _ in 0..3 {
                assert_eq!(server.login("ada@example.com", "not the password").await.status, StatusCode::UNAUTHORIZED);
            }
            let refused = server.login("ada@example.com", PASSWORD).await;
            let wait = assert_limited(&refused);
            assert!(wait <= 15, "one request every 15 s comes back: {wait}");
            assert_eq!(refused.error(), "too many requests from this address; slow down");
            // Every /auth route shares the budget, before its body is even read.
            assert_limited(&server.post("/auth/refresh", &json!({"refreshToken": session.str("refreshToken")})).await);
            assert_limited(&server.post("/auth/logout", &json!({"refreshToken": session.str("refreshToken")})).await);
            assert_limited(&server.send(Method::POST, "/auth/register", None, Some("application/json"), Some(b"not json".to_vec())).await);
            // The rest of the API is not limited.
            assert_eq!(server.get("/healthz", None).await.status, StatusCode::OK);
            assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::OK);
            assert_eq!(server.call(Method::GET, "/api/v1/me", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
            assert_eq!(server.call(Method::GET, "/api/v1/agents", &[("x-api-key", &key)], None).await.status, StatusCode::OK);
            // X-Forwarded-For from an untrusted peer is a claim: it does not buy a fresh budget.
            let spoofed = server.send_with(Method::POST, "/auth/login", &[("content-type", "application/json"), ("x-forwarded-for", "192.0.2.1")], None).await;
            assert_limited(&spoofed);
        },
    )
    .await;

    // Behind a trusted proxy, each forwarded client has a budget of its own.
    let behind_proxy = |config| ServeConfig { auth_rate: 1, trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()], ..config };
    with_configured_server(backend, behind_proxy, async |server: &Server| {
        let login = async |client: &str| {
            let body = json!({"email": "nobody@example.com", "password": "wrong"}).to_string().into_bytes();
            server.send_with(Method::POST, "/auth/login", &[("content-type", "application/json"), ("x-forwarded-for", client)], Some(body)).await
        };
        assert_eq!(login("192.0.2.1").await.status, StatusCode::UNAUTHORIZED);
        assert_limited(&login("192.0.2.1").await);
        assert_limited(&login("203.0.113.5, 192.0.2.1").await);
        assert_eq!(login("192.0.2.2").await.status, StatusCode::UNAUTHORIZED, "another client behind the proxy");
    })
    .await;
}

async fn failed_logins_are_limited_per_account(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { login_failures: 3, ..config },
        async |server: &Server| {
            server.register("ada@example.com").await;
            server.register("bob@example.com").await;
            for _ in 0..3 {
                assert_eq!(server.login("ada@example.com", "guess").await.status, StatusCode::UNAUTHORIZED);
            }
            // The fourth is refused without a check, even with the right password.
            let refused = server.login("ADA@example.com", PASSWORD).await;
            let wait = assert_limited(&refused);
            assert!(wait > 60 && wait <= 15 * 60, "until the 15-minute window ends: {wait}");
            assert_eq!(refused.error(), "too many failed logins for this account; try again later");
            // Another account is untouched; an unknown email is limited just the same, so the
            // limit tells nothing of which emails have accounts.
            assert_eq!(server.login("bob@example.com", PASSWORD).await.status, StatusCode::OK);
            for _ in 0..3 {
                assert_eq!(server.login("ghost@example.com", "guess").await.status, StatusCode::UNAUTHORIZED);
            }
            assert_eq!(server.login("ghost@example.com", "guess").await.error(), refused.error());
            // A success clears the count: bob fails twice, succeeds, and has three again.
            for round in 0..2 {
                for _ in 0..2 {
                    assert_eq!(server.login("bob@example.com", "guess").await.status, StatusCode::UNAUTHORIZED, "round {round}");
                }
                assert_eq!(server.login("bob@example.com", PASSWORD).await.status, StatusCode::OK, "round {round}");
            }
            // Parallel guesses cannot slip past the limit.
            let guesses = join_all((0..8).map(|_| server.login("bob@example.com", "guess"))).await;
            let checked = guesses.iter().filter(|a| a.status == StatusCode::UNAUTHORIZED).count();
            assert_eq!(checked, 3, "{guesses:?}");
        },
    )
    .await;
}

async fn a_wrong_current_password_counts_as_a_failed_login(backend: Backend) {
    with_configured_server(
        backend,
        |config| ServeConfig { login_failures: 3, ..config },
        async |server: &Server| {
            let token = server.user("ada@example.com").await;
            let change = async |current: &str| {
                let body = json!({"currentPassword": current, "newPassword": "a-new-strong-password"});
                server.call(Method::PUT, "/api/v1/me/password", &[("authorization", &format!("Bearer {token}"))], Some(&body)).await
            };
            assert_eq!(server.login("ada@example.com", "guess").await.status, StatusCode::UNAUTHORIZED);
            assert_eq!(server.login("ada@example.com", "guess").await.status, StatusCode::UNAUTHORIZED);
            let wrong = change("guess").await;
            assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{wrong:?}");
            assert_eq!(wrong.error(), "the current password is wrong");
            assert_limited(&server.login("ada@example.com", PASSWORD).await);
            assert_limited(&change(PASSWORD).await);
        },
    )
    .await;
}

async fn a_saturated_hasher_refuses_at_once_with_503(backend: Backend) {
    let one_at_a_time = |config| ServeConfig { hash_concurrency: Some(1), hash_queue: 0, login_failures: 0, ..config };
    with_configured_server(backend, one_at_a_time, async |server: &Server| {
        server.register("ada@example.com").await;
        // A flood of guesses (no account limit in the way): one hash runs,
        // none may wait, the rest are refused at once.
        let flood = join_all((0..24).map(|i| async move { server.login(&format!("flood{i}@example.com"), "guess").await })).await;
        let mut refused = 0;
        for answer in &flood {
            match answer.status {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    assert_eq!(answer.error(), "too many password checks are waiting; retry shortly");
                    assert_eq!(answer.retry_after(), 1);
                }
                other => panic!("{other}: {answer:?}"),
            }
        }
        assert!(refused > 0, "24 concurrent hashes with room for one: {flood:?}");
        // Once it has passed, logins are served again.
        assert_eq!(server.login("ada@example.com", PASSWORD).await.status, StatusCode::OK);
    })
    .await;
}
