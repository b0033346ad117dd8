//! Load benchmark: requests per second and latency of routes of one Nexus on loopback,
//! each reported as a ratio to `GET /healthz` (the cost of HTTP alone) on the same server.
//! The API-key row is the cost of tenant authentication: one indexed lookup by digest,
//! usage noted in memory, no password hash.
//!
//! Bounded: every scenario runs for a fixed time with a fixed number of keep-alive
//! connections, against 127.0.0.1 only. `cargo bench --bench load`; set
//! `NEXUS_BENCH_SECONDS` and `NEXUS_BENCH_CONNECTIONS` to change the defaults (3 s, 16).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nexus::config::ServeConfig;
use poem::listener::{Acceptor, Listener, TcpListener};
use serde_json::{Value, json};

const PASSWORD: &str = "a-strong-password";

struct Scenario {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    bearer: Option<String>,
    api_key: Option<String>,
    body: Option<Value>,
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
    let workers = (0..connections).map(|_| async move {
        let (mut latencies, mut failures) = (Vec::new(), 0usize);
        while Instant::now() < deadline {
            let mut request = client.request(scenario.method.clone(), format!("{base}{}", scenario.path));
            if let Some(token) = &scenario.bearer {
                request = request.bearer_auth(token);
            }
            if let Some(key) = &scenario.api_key {
                request = request.header("x-api-key", key);
            }
            if let Some(body) = &scenario.body {
                request = request.json(body);
            }
            let started = Instant::now();
            match request.send().await {
                Ok(response) if response.status().is_success() => {
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

fn report(name: &str, outcome: &Outcome, baseline: f64) {
    println!("{name:<32} {:>10.0} {:>10.2?} {:>10.2?} {:>9} {:>9.4}", outcome.rps, outcome.p50, outcome.p99, outcome.failures, outcome.rps / baseline);
}

#[tokio::main]
async fn main() {
    let (seconds, connections) = (env_or("NEXUS_BENCH_SECONDS", 3), env_or("NEXUS_BENCH_CONNECTIONS", 16));
    let db = std::env::temp_dir().join(format!("nexus-bench-{}.db", std::process::id()));
    let config = ServeConfig {
        access_ttl: Duration::from_secs(3600).into(),
        refresh_ttl: Duration::from_secs(86400).into(),
        log: "error".into(),
        ..ServeConfig::local(&format!("sqlite://{}", db.display()))
    };
    let nexus = nexus::bootstrap::build(&config).await.expect("nexus starts");
    let acceptor = TcpListener::bind(config.listen).into_acceptor().await.expect("bind");
    let base = format!("http://127.0.0.1:{}", acceptor.local_addr()[0].as_socket_addr().expect("tcp").port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus::http::serve(acceptor, nexus, async move {
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

    let scenarios = [
        Scenario { name: "GET /healthz (no auth)", method: reqwest::Method::GET, path: "/healthz", bearer: None, api_key: None, body: None },
        Scenario { name: "GET /api/v1/me (API key)", method: reqwest::Method::GET, path: "/api/v1/me", bearer: None, api_key: Some(api_key), body: None },
        Scenario { name: "GET /api/v1/me (JWT)", method: reqwest::Method::GET, path: "/api/v1/me", bearer: Some(token.clone()), api_key: None, body: None },
        Scenario {
            name: "POST /auth/login (argon2id)",
            method: reqwest::Method::POST,
            path: "/auth/login",
            bearer: None,
            api_key: None,
            body: Some(json!({"email": "bench@example.com", "password": PASSWORD})),
        },
    ];
    println!("{} cores, {connections} connections, {seconds} s per scenario", std::thread::available_parallelism().map_or(1, usize::from));
    println!("{:<32} {:>10} {:>10} {:>10} {:>9} {:>9}", "scenario", "req/s", "p50", "p99", "failures", "ratio");
    let mut baseline = None;
    for scenario in &scenarios {
        let outcome = run(&client, &base, scenario, connections, seconds).await;
        report(scenario.name, &outcome, *baseline.get_or_insert(outcome.rps));
    }
    // The hasher is bounded and off the async workers: other requests keep flowing while
    // logins saturate it.
    let (healthz, login) = (&scenarios[0], &scenarios[3]);
    let (during, flood) = tokio::join!(run(&client, &base, healthz, connections, seconds), run(&client, &base, login, connections, seconds));
    let baseline = baseline.unwrap_or(1.0);
    report("GET /healthz during login flood", &during, baseline);
    report("  (the flood itself)", &flood, baseline);
    let _ = stop.send(());
    let _ = server.await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
