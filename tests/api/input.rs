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
        (
            "over-long display name",
            register,
            Some("application/json"),
            json(json!({"email": "new@example.com", "password": PASSWORD, "displayName": "x".repeat(101)})),
            bad,
        ),
        ("missing password", register, Some("application/json"), json(json!({"email": "new@example.com"})), bad),
        ("missing email", register, Some("application/json"), json(json!({"password": PASSWORD})), bad),
        ("email of the wrong type", register, Some("application/json"), json(json!({"email": 42, "password": PASSWORD})), bad),
        ("password that is a number", register, Some("application/json"), json(json!({"email": "new@example.com", "password": 12345678})), bad),
        (
            "display name that is a boolean",
            register,
            Some("application/json"),
            json(json!({"email": "new@example.com", "password": PASSWORD, "displayName": true})),
            bad,
        ),
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

/// Writes a raw HTTP/1.1 request and reads until the server has answered and closed.
async fn raw_exchange(server: &Server, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await; // the server may stop reading early
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn huge_declared_bodies_are_refused_at_once_and_chunked_ones_past_the_limit() {
    with_server(Backend::Sqlite, async |server: &Server| {
        let huge = "POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n";
        let answer = raw_exchange(server, huge, b"{\"email\":").await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        assert!(answer.contains("request body exceeds 8192 bytes"), "{answer}");

        let chunked = "POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let mut body = Vec::new();
        for _ in 0..20 {
            body.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
            body.extend(std::iter::repeat_n(b' ', 100_000));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let answer = raw_exchange(server, chunked, &body).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        // A small chunked body within the limit is read as usual.
        let json = br#"{"email":"chunky@example.com","password":"a-strong-password"}"#;
        let small = format!("{:x}\r\n{}\r\n0\r\n\r\n", json.len(), String::from_utf8_lossy(json));
        let answer = raw_exchange(server, chunked, small.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    })
    .await;
}

on_both_backends!(method_not_allowed_names_the_allowed_methods);

/// A 405 carries `Allow` with the path's methods (RFC 9110), on public and authenticated
/// routes and on paths with parameters.
async fn method_not_allowed_names_the_allowed_methods(backend: Backend) {
    with_server(backend, async |server: &Server| {
        let client = reqwest::Client::new();
        let cases = [
            (Method::DELETE, "/readyz", "GET"),
            (Method::PATCH, "/api/v1/tenants", "POST, GET"),
            (Method::PUT, "/auth/login", "POST"),
            (Method::POST, "/api/v1/agents/support-bot/status", "GET"),
        ];
        for (method, path, allowed) in cases {
            let response = client.request(method.clone(), format!("{}{path}", server.base)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let allow = response.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut got: Vec<String> = allow.unwrap_or_default().split(", ").map(str::to_owned).collect();
            let mut want: Vec<String> = allowed.split(", ").map(str::to_owned).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{method} {path}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"].is_string(), "{method} {path}: {body}");
        }
    })
    .await;
}
