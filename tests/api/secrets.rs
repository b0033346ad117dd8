//! Secrets never reach the log: a whole walk runs with every log line captured at debug
//! level, and no password, password hash, token or key may appear in them.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backend, Server, with_server};

/// Everything logged by this test binary from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let installed = tracing_subscriber::fmt().with_env_filter("debug").with_ansi(false).with_writer(move || Capture(sink.clone())).try_init();
        assert!(installed.is_ok(), "the log capture must be the first subscriber of this test binary");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_ever_logged() {
    let logs = captured_logs();
    let mut secrets = vec!["Sup3r-Secret-Passw0rd".to_owned(), "Wr0ng-Secret-Passw0rd".to_owned(), "N3w-Secret-Passw0rd".to_owned()];
    with_server(Backend::Sqlite, async |server: &Server| {
        let registered = server.post("/auth/register", &json!({"email": "secret@example.com", "password": secrets[0]})).await;
        assert_eq!(registered.status, StatusCode::CREATED);
        let failed = server.post("/auth/login", &json!({"email": "secret@example.com", "password": secrets[1]})).await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
        let login = server.post("/auth/login", &json!({"email": "secret@example.com", "password": secrets[0]})).await;
        let refreshed = server.post("/auth/refresh", &json!({"refreshToken": login.str("refreshToken")})).await;
        let replay = server.post("/auth/refresh", &json!({"refreshToken": login.str("refreshToken")})).await;
        assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "a replay is logged as a warning");
        // The replay revoked the login's session, access tokens included: go on with the
        // registration's.
        assert_eq!(server.get("/api/v1/me", Some(&refreshed.str("accessToken"))).await.status, StatusCode::UNAUTHORIZED);
        let token = registered.str("accessToken");
        let tenant = server.tenant(&token, "secretive").await.str("id");
        let key = server.key(&token, &tenant, "ci").await;
        assert_eq!(server.call(Method::GET, "/api/v1/me", &[("x-api-key", &key.str("rawKey"))], None).await.status, StatusCode::OK);
        assert_eq!(server.call(Method::GET, "/api/v1/me", &[("x-api-key", "nxk_wrong-key-value")], None).await.status, StatusCode::UNAUTHORIZED);
        let logout = server.post("/auth/logout", &json!({"refreshToken": refreshed.str("refreshToken")})).await;
        assert_eq!(logout.status, StatusCode::NO_CONTENT);
        let auth = ("authorization", format!("Bearer {token}"));
        let change = json!({"currentPassword": secrets[0], "newPassword": secrets[2]});
        assert_eq!(server.call(Method::PUT, "/api/v1/me/password", &[(auth.0, &auth.1)], Some(&change)).await.status, StatusCode::NO_CONTENT);
        assert_eq!(server.get("/api/v1/me", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
        secrets.extend([registered.str("accessToken"), registered.str("refreshToken"), login.str("accessToken"), login.str("refreshToken")]);
        secrets.extend([token, refreshed.str("accessToken"), refreshed.str("refreshToken"), key.str("rawKey"), "nxk_wrong-key-value".to_owned()]);
    })
    .await;
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logged.contains("user registered") && logged.contains("refresh token presented after rotation"), "the capture works");
    assert!(logged.contains("logged out") && logged.contains("password changed"), "the session routes log too");
    for secret in &secrets {
        assert!(!logged.contains(secret.as_str()), "a secret was logged: {secret}");
    }
    assert!(!logged.contains("$argon2id$"), "a password hash was logged");
}
