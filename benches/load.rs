//! Load benchmark: requests per second and latency of routes of one Nexus on loopback,
//! each reported as a ratio to a bare poem handler answering a constant, served by the
//! same process on the same runtime (the ceiling for any route: HTTP and the framework
//! alone). The API-key rows are the cost of tenant authentication and scoping; the agents
//! row lists a tenant of 10 agents.
//!
//! The flood rows show that a login flood does not starve other routes: wrong-password
//! logins for ever new emails (credential stuffing, as from many addresses: the per-address
//! limit is off, as is the per-account one it would never reach) saturate the password
//! hasher while key-authenticated and JWT-authenticated reads run beside them. Their ratio
//! column is to the same read without the flood. The flood runs on four times the
//! connections, more than the hasher runs and queues (`NEXUS_HASH_QUEUE`); its own row
//! counts as answered the checked guesses (401) and as failures what the bounded queue
//! refused at once (503).
//!
//! Bounded: every scenario runs for a fixed time with a fixed number of keep-alive
//! connections, against 127.0.0.1 only. `cargo bench --bench load`; set
//! `NEXUS_BENCH_SECONDS` and `NEXUS_BENCH_CONNECTIONS` to change the defaults (3 s, 16).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nexus::config::ServeConfig;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Route, get, handler};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "a-strong-password";

struct Scenario {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    bearer: Option<String>,
    api_key: Option<String>,
    /// The body of the n-th request.
    body: Option<fn(usize) -> Value>,
    /// The status that counts as answered.
    expected: StatusCode,
}

impl Scenario {
    fn get(name: &'static str, path: &'static str) -> Self {
        Self { name, method: reqwest::Method::GET, path, bearer: None, api_key: None, body: None, expected: StatusCode::OK }
    }

    fn post(name: &'static str, path: &'static str, body: fn(usize) -> Value, expected: StatusCode) -> Self {
        Self { name, method: reqwest::Method::POST, path, bearer: None, api_key: None, body: Some(body), expected }
    }
}

struct Outcome {
    rps: f64,
    p50: Duration,
    p99: Duration,
    failures: usize,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn run(client: &reqwest::Client, base: &str, scenario: &Scenario, connections: u64, seconds: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let sent = AtomicUsize::new(0);
    let workers = (0..connections).map(|_| async {
        let (mut latencies, mut failures) = (Vec::new(), 0usize);
        while Instant::now() < deadline {
            let mut request = client.request(scenario.method.clone(), format!("{base}{}", scenario.path));
            if let Some(token) = &scenario.bearer {
                request = request.bearer_auth(token);
            }
            if let Some(key) = &scenario.api_key {
                request = request.header("x-api-key", key);
            }
            if let Some(body) = scenario.body {
                request = request.json(&body(sent.fetch_add(1, Ordering::Relaxed)));
            }
            let started = Instant::now();
            match request.send().await {
                Ok(response) if response.status() == scenario.expected => {
                    let _ = response.bytes().await;
                    latencies.push(started.elapsed());
                }
                _ => failures += 1,
            }
        }
        (latencies, failures)
    });
    let started = Instant::now();
    let results = join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let failures = results.iter().map(|(_, f)| f).sum();
    let mut latencies: Vec<Duration> = results.into_iter().flat_map(|(l, _)| l).collect();
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
    Outcome { rps: latencies.len() as f64 / elapsed, p50: at(0.50), p99: at(0.99), failures }
}

fn report(name: &str, outcome: &Outcome, baseline: Option<f64>) {
    let ratio = baseline.map_or_else(|| "-".to_owned(), |baseline| format!("{:.4}", outcome.rps / baseline));
    println!("{name:<52} {:>10.0} {:>10.2?} {:>10.2?} {:>9} {ratio:>9}", outcome.rps, outcome.p50, outcome.p99, outcome.failures);
}

/// Runs `read` while `flood` runs beside it on four times the connections (more than the
/// hasher runs and queues together, so the queue's bound is reached), and reports both.
async fn during_flood(client: &reqwest::Client, base: &str, read: &Scenario, alone: f64, flood: &Scenario, connections: u64, seconds: u64) {
    let (during, flooding) = tokio::join!(run(client, base, read, connections, seconds), run(client, base, flood, connections * 4, seconds));
    report(&format!("{} during login flood", read.name), &during, Some(alone));
    report("  (the flood: 401 answered, 503 failed)", &flooding, None);
}

/// The ceiling: poem answering a constant, with no middleware.
#[handler]
fn constant() -> &'static str {
    "ok"
}

/// Serves [`constant`] on a loopback port of its own; its base URL.
async fn serve_bare() -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
    let base = format!("http://127.0.0.1:{}", acceptor.local_addr()[0].as_socket_addr().expect("tcp").port());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(Route::new().at("/", get(constant))));
    base
}

#[tokio::main]
async fn main() {
    let (seconds, connections) = (env_or("NEXUS_BENCH_SECONDS", 3), env_or("NEXUS_BENCH_CONNECTIONS", 16));
    let db = std::env::temp_dir().join(format!("nexus-bench-{}.db", std::process::id()));
    let config = ServeConfig {
        access_ttl: Duration::from_secs(3600).into(),
        refresh_ttl: Duration::from_secs(86400).into(),
        log: "error".into(),
        // One client address stands for many here: the per-address and per-account limits
        // would otherwise refuse the login rows before they reach the hasher.
        auth_rate: 0,
        login_failures: 0,
        ..ServeConfig::local(&format!("sqlite://{}", db.display()))
    };
    let nexus = nexus::bootstrap::build(&config).await.expect("nexus starts");
    let acceptor = TcpListener::bind(config.listen).into_acceptor().await.expect("bind");
    let base = format!("http://127.0.0.1:{}", acceptor.local_addr()[0].as_socket_addr().expect("tcp").port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus::http::serve(acceptor, nexus, config.connection_limits(), async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "bench@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("session");
    let token = session["accessToken"].as_str().expect("token").to_owned();
    let created = |path: String, body: Value| {
        let (client, token) = (&client, &token);
        async move { client.post(path).bearer_auth(token).json(&body).send().await.expect("create").json::<Value>().await.expect("created") }
    };
    let tenant = created(format!("{base}/api/v1/tenants"), json!({"displayName": "bench"})).await;
    let key = created(format!("{base}/api/v1/tenants/{}/keys", tenant["id"].as_str().expect("tenant id")), json!({"label": "bench"})).await;
    let api_key = key["rawKey"].as_str().expect("raw key").to_owned();
    for n in 0..10 {
        let document = nexus_ports::testing::manifest_document(&format!("agent-{n}"), "gpt-4o-mini");
        let answer = client.post(format!("{base}/api/v1/agents")).header("x-api-key", &api_key).json(&document).send().await.expect("create agent");
        assert_eq!(answer.status(), StatusCode::CREATED, "agent {n} is created");
    }
    let bare_base = serve_bare().await;

    let healthz = Scenario::get("GET /healthz (no auth)", "/healthz");
    let bare = Scenario::get("bare poem handler (the ceiling)", "/");
    let agents = Scenario { api_key: Some(api_key.clone()), ..Scenario::get("GET /api/v1/agents (API key, 10)", "/api/v1/agents") };
    let by_key = Scenario { api_key: Some(api_key), ..Scenario::get("GET /api/v1/me (API key)", "/api/v1/me") };
    let by_jwt = Scenario { bearer: Some(token.clone()), ..Scenario::get("GET /api/v1/me (JWT)", "/api/v1/me") };
    let login = Scenario::post("POST /auth/login (argon2id)", "/auth/login", |_| json!({"email": "bench@example.com", "password": PASSWORD}), StatusCode::OK);
    let flood = Scenario::post(
        "POST /auth/login flood (wrong passwords)",
        "/auth/login",
        |n| json!({"email": format!("guess{n}@example.com"), "password": "a-guessed-password"}),
        StatusCode::UNAUTHORIZED,
    );

    println!("{} cores, {connections} connections, {seconds} s per scenario", std::thread::available_parallelism().map_or(1, usize::from));
    println!("{:<52} {:>10} {:>10} {:>10} {:>9} {:>9}", "scenario", "req/s", "p50", "p99", "failures", "ratio");
    // Warm up (connections, caches, allocator) before anything is measured.
    for (base, scenario) in [(&bare_base, &bare), (&base, &healthz), (&base, &agents), (&base, &by_key), (&base, &by_jwt)] {
        run(&client, base, scenario, connections, 1).await;
    }
    let baseline = run(&client, &bare_base, &bare, connections, seconds).await;
    report(bare.name, &baseline, Some(baseline.rps));
    let healthz_alone = run(&client, &base, &healthz, connections, seconds).await;
    report(healthz.name, &healthz_alone, Some(baseline.rps));
    let agents_alone = run(&client, &base, &agents, connections, seconds).await;
    report(agents.name, &agents_alone, Some(baseline.rps));
    let key_alone = run(&client, &base, &by_key, connections, seconds).await;
    report(by_key.name, &key_alone, Some(baseline.rps));
    let jwt_alone = run(&client, &base, &by_jwt, connections, seconds).await;
    report(by_jwt.name, &jwt_alone, Some(baseline.rps));
    report(login.name, &run(&client, &base, &login, connections, seconds).await, Some(baseline.rps));
    // The hasher is bounded and off the async workers: other requests keep flowing while
    // logins saturate it. Ratios below are to the same read without the flood.
    during_flood(&client, &base, &healthz, healthz_alone.rps, &flood, connections, seconds).await;
    during_flood(&client, &base, &agents, agents_alone.rps, &flood, connections, seconds).await;
    during_flood(&client, &base, &by_key, key_alone.rps, &flood, connections, seconds).await;
    during_flood(&client, &base, &by_jwt, jwt_alone.rps, &flood, connections, seconds).await;
    let _ = stop.send(());
    let _ = server.await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
