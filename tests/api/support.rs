//! The harness: start a Nexus on a fresh database, call it, stop it.
use nexus::config::ServeConfig;
use nexus_store_sea_orm::testing::{TestDatabase, fresh_postgres, fresh_sqlite};
use poem::listener::{Acceptor, Listener, TcpListener};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database a case runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named case (an `async fn(Backend)`) once per backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(crate::support::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(crate::support::Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use on_both_backends;

/// Runs each named case on PostgreSQL only: cases with several replicas on one database,
/// which SQLite (one process) refuses.
macro_rules! on_postgres {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(crate::support::Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use on_postgres;

/// A fresh database of the backend; `None` when PostgreSQL is unreachable outside CI
/// (inside CI that panics instead).
pub async fn database(backend: Backend) -> Option<TestDatabase> {
    match backend {
        Backend::Sqlite => Some(fresh_sqlite()),
        Backend::Postgres => fresh_postgres().await,
    }
}

/// Configuration for a test server on `database_url`: every option at its default, but
/// the per-address rate of `/auth` off, since every test client is 127.0.0.1 and cases
/// register many users. The rate-limit cases set it explicitly.
pub fn config(database_url: &str) -> ServeConfig {
    ServeConfig { auth_rate: 0, ..ServeConfig::local(database_url) }
}

/// A running Nexus.
pub struct Server {
    pub base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// An answer: status, headers and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The `error` message, asserting the body has the `{"error": "..."}` shape.
    pub fn error(&self) -> &str {
        let message = self.body.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("no error message in {self:?}"));
        assert!(!message.is_empty());
        message
    }

    /// `Retry-After` in seconds, asserting it is there and a whole number of at least 1.
    pub fn retry_after(&self) -> u64 {
        let value = self.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After in {self:?}"));
        let seconds: u64 = value.to_str().unwrap().parse().unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"));
        assert!(seconds >= 1, "{self:?}");
        seconds
    }

    /// A header of the answer, when present and text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
    }

    /// A string field of the body.
    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_else(|| panic!("no string {field} in {self:?}")).to_owned()
    }
}

impl Server {
    /// Starts a Nexus with `config`.
    pub async fn start(config: ServeConfig) -> Self {
        let nexus = nexus::bootstrap::build(&config).await.expect("nexus starts");
        let acceptor = TcpListener::bind(config.listen).into_acceptor().await.expect("bind");
        let port = acceptor.local_addr()[0].as_socket_addr().expect("tcp").port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nexus::http::serve(acceptor, nexus, config.connection_limits(), async move {
            let _ = stopped.await;
        }));
        Self { base: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    /// A Nexus already serving at `base` (a process of its own), called as one started here.
    pub fn at(base: String) -> Self {
        Self { base, client: reqwest::Client::new(), stop: None, task: None }
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }

    /// Sends a raw request: an optional bearer token, content type and body bytes.
    pub async fn send(&self, method: Method, path: &str, bearer: Option<&str>, content_type: Option<&str>, body: Option<Vec<u8>>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        answer(&self.client, request).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::POST, path, None, Some("application/json"), Some(body.to_string().into_bytes())).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Answer {
        self.send(Method::GET, path, bearer, None, None).await
    }

    /// Sends a request with these headers and optional raw body bytes.
    pub async fn send_with(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        answer(&self.client, request).await
    }

    /// Sends a request with these headers and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Answer {
        let Some(body) = body else { return self.send_with(method, path, headers, None).await };
        let mut headers = headers.to_vec();
        headers.push(("content-type", "application/json"));
        self.send_with(method, path, &headers, Some(body.to_string().into_bytes())).await
    }

    /// Registers `email` and returns its access token.
    pub async fn user(&self, email: &str) -> String {
        self.register(email).await.str("accessToken")
    }

    /// Creates a tenant as the user of `token`; asserts 201 and returns its view.
    pub async fn tenant(&self, token: &str, name: &str) -> Answer {
        let answer = self.call(Method::POST, "/api/v1/tenants", &[("authorization", &format!("Bearer {token}"))], Some(&json!({"displayName": name}))).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer
    }

    /// Creates an API key of the tenant as the user of `token`; asserts 201 and returns its view.
    pub async fn key(&self, token: &str, tenant: &str, label: &str) -> Answer {
        let path = format!("/api/v1/tenants/{tenant}/keys");
        let answer = self.call(Method::POST, &path, &[("authorization", &format!("Bearer {token}"))], Some(&json!({"label": label}))).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer
    }

    /// Logs `email` in with `password`.
    pub async fn login(&self, email: &str, password: &str) -> Answer {
        self.post("/auth/login", &json!({"email": email, "password": password})).await
    }

    /// Registers `email` with a valid password; asserts 201 and returns the answer.
    pub async fn register(&self, email: &str) -> Answer {
        let answer = self.post("/auth/register", &json!({"email": email, "password": PASSWORD, "displayName": "Tester"})).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer
    }
}

/// Sends a request and reads its answer, checking it against the served OpenAPI document
/// when the request names one of its operations: the status must be declared, and the
/// content type and body must match what the document declares for that status. An
/// answer that contradicts the document fails the test that received it.
async fn answer(client: &reqwest::Client, request: reqwest::RequestBuilder) -> Answer {
    let request = request.build().expect("request built");
    let (method, path) = (request.method().clone(), request.url().path().to_owned());
    let response = client.execute(request).await.expect("request sent");
    let (status, headers) = (response.status(), response.headers().clone());
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = response.bytes().await.expect("body read");
    let answer = Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    if let Some(operation) = contract::operation(&method, &path) {
        contract::check(operation, &format!("{method} {path}"), &answer, content_type.as_deref(), bytes.is_empty());
    }
    answer
}

/// The served OpenAPI document as the contract every answer is checked against.
mod contract {
    use std::sync::OnceLock;

    use reqwest::Method;
    use serde_json::{Value, json};

    use super::Answer;

    fn document() -> &'static Value {
        static DOCUMENT: OnceLock<Value> = OnceLock::new();
        DOCUMENT.get_or_init(|| serde_json::from_str(&nexus::http::openapi_json()).expect("the document is JSON"))
    }

    /// The operation `method` `path` reaches, or `None` when none does (unknown routes,
    /// `/docs`, a method the path lacks).
    pub fn operation(method: &Method, path: &str) -> Option<&'static Value> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let (_, operations) = document()["paths"].as_object()?.iter().find(|(template, _)| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len() && parts.iter().zip(&segments).all(|(part, segment)| part.starts_with('{') || part == segment)
        })?;
        operations.get(method.as_str().to_ascii_lowercase())
    }

    /// Asserts that `answer` is one the operation declares: its status, its media type,
    /// and its body against the schema (with the document's components to resolve `$ref`s).
    pub fn check(operation: &Value, call: &str, answer: &Answer, content_type: Option<&str>, empty: bool) {
        let responses = &operation["responses"];
        let Some(declared) = responses.get(answer.status.as_str()) else {
            let statuses: Vec<&String> = responses.as_object().map(|r| r.keys().collect()).unwrap_or_default();
            panic!("{call} answered {}, which its operation does not declare ({statuses:?}): {answer:?}", answer.status);
        };
        let Some(contents) = declared.get("content").and_then(Value::as_object) else {
            assert!(empty, "{call} answered {} with a body its operation does not declare: {answer:?}", answer.status);
            return;
        };
        let essence = |media: &str| media.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let received = essence(content_type.unwrap_or_default());
        let Some((_, media)) = contents.iter().find(|(media, _)| essence(media) == received) else {
            panic!("{call} answered {} as {content_type:?}, not as declared ({:?})", answer.status, contents.keys().collect::<Vec<_>>());
        };
        if received != "application/json" {
            return;
        }
        let schema = json!({"allOf": [media["schema"]], "components": document()["components"]});
        let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&schema).expect("the document's schemas compile");
        let problems: Vec<String> = validator.iter_errors(&answer.body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(problems.is_empty(), "{call} answered {} with a body the document does not allow: {problems:#?}\n{answer:?}", answer.status);
    }
}

/// How long another replica may take to hear of a change.
pub const PROPAGATION: std::time::Duration = std::time::Duration::from_secs(1);

/// Polls `holds` until it does, failing once [`PROPAGATION`] has passed since the call.
pub async fn within_a_second<F: AsyncFnMut() -> bool>(what: &str, mut holds: F) {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while !holds().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {PROPAGATION:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The password every test user registers with.
pub const PASSWORD: &str = "a-strong-password";

/// Starts a server on a fresh database of `backend`, runs `case`, stops it and drops the
/// database. Skips (returns) when PostgreSQL is unreachable outside CI.
pub async fn with_server<F: AsyncFnOnce(&Server)>(backend: Backend, case: F) {
    with_configured_server(backend, |config| config, case).await;
}

/// As [`with_server`], with the test configuration changed by `configure` first.
pub async fn with_configured_server<F: AsyncFnOnce(&Server)>(backend: Backend, configure: impl FnOnce(ServeConfig) -> ServeConfig, case: F) {
    let Some(db) = database(backend).await else { return };
    let server = Server::start(configure(config(&db.url))).await;
    case(&server).await;
    server.stop().await;
    db.drop_database().await;
}
