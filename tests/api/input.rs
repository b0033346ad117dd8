//! Bad input: every malformed or invalid request gets its 4xx and a JSON error, never a
//! 500, and leaves stored data as it was.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backend, PASSWORD, Server, on_both_backends, with_server};

on_both_backends!(bad_requests_get_their_4xx);

/// (what, path, content type, body, expected status)
type Case = (&'static str, &'static str, Option<&'static str>, Vec<u8>, StatusCode);

fn cases() -> Vec<Case> {
    let json = |value: serde_json::Value| value.to_string().into_bytes();
    let register = "/auth/register";
    let bad = StatusCode::BAD_REQUEST;
    vec![
        ("bad email", register, Some("application/json"), json(json!({"email": "not-an-email", "password": PASSWORD})), bad),
        ("email with a space", register, Some("application/json"), json(json!({"email": "a b@example.com", "password": PASSWORD})), bad),
        ("blank email", register, Some("application/json"), json(json!({"email": "  ", "password": PASSWORD})), bad),
        ("over-long email", register, Some("application/json"), json(json!({"email": format!("{}@example.com", "a".repeat(250)), "password": PASSWORD})), bad),
        ("short password", register, Some("application/json"), json(json!({"email": "new@example.com", "password": "1234567"})), bad),
        ("over-long password", register, Some("application/json"), json(json!({"email": "new@example.com", "password": "x".repeat(1025)})), bad),
        ("blank display name", register, Some("application/json"), json(json!({"email": "new@example.com", "password": PASSWORD, "displayName": " "})), bad),
        ("over-long display name", register, Some("application/json"), json(json!({"email": "new@example.com", "password": PASSWORD, "displayName": "x".repeat(101)})), bad),
        ("missing password", register, Some("application/json"), json(json!({"email": "new@example.com"})), bad),
        ("missing email", register, Some("application/json"), json(json!({"password": PASSWORD})), bad),
        ("email of the wrong type", register, Some("application/json"), json(json!({"email": 42, "password": PASSWORD})), bad),
        ("array body", register, Some("application/json"), json(json!([1, 2])), bad),
        ("malformed JSON", register, Some("application/json"), b"{\"email\":".to_vec(), bad),
        ("empty body", register, Some("application/json"), Vec::new(), bad),
        ("not UTF-8", register, Some("application/json"), vec![0xff, 0xfe, 0x00], bad),
        ("form body", register, Some("application/x-www-form-urlencoded"), b"email=a%40b.co&password=12345678".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("no content type", register, None, json(json!({"email": "new@example.com", "password": PASSWORD})), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("oversized body", register, Some("application/json"), vec![b' '; 2 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
        ("login over-long password", "/auth/login", Some("application/json"), json(json!({"email": "ada@example.com", "password": "x".repeat(1025)})), bad),
        ("login missing password", "/auth/login", Some("application/json"), json(json!({"email": "ada@example.com"})), bad),
        ("refresh missing token", "/auth/refresh", Some("application/json"), json(json!({})), bad),
        ("refresh token of the wrong type", "/auth/refresh", Some("application/json"), json(json!({"refreshToken": ["x"]})), bad),
    ]
}

async fn bad_requests_get_their_4xx(backend: Backend) {
    with_server(backend, async |server: &Server| {
        server.register("ada@example.com").await;
        for (what, path, content_type, body, expected) in cases() {
            let answer = server.send(Method::POST, path, None, content_type, Some(body)).await;
            assert_eq!(answer.status, expected, "{what}: {answer:?}");
            answer.error();
        }
        // Routing and method errors are JSON too.
        let unknown = server.get("/no/such/route", None).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        unknown.error();
        let wrong_method = server.send(Method::DELETE, "/auth/login", None, None, None).await;
        assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
        wrong_method.error();
        // Nothing of the above touched the stored account, nor created one.
        assert_eq!(server.post("/auth/login", &json!({"email": "ada@example.com", "password": PASSWORD})).await.status, StatusCode::OK);
        assert_eq!(server.post("/auth/login", &json!({"email": "new@example.com", "password": PASSWORD})).await.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}
