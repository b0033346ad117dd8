//! Scale benchmark: the reconcile loop with many tenants and agents on the stub node.
//!
//! Starts the `nexus` binary (SQLite, in-memory cluster, stub node) as a process of its own,
//! so that its CPU time and resident memory can be read from `/proc`, then through the API:
//! creates `NEXUS_SCALE_TENANTS` tenants (default 1000) with `NEXUS_SCALE_AGENTS` agents
//! each (default 10), one tenant after the other, on a few connections, and reports
//!
//! - the creation rate of the last 1000 agents as a ratio to that of the first 1000 (does
//!   creating slow down as the total grows?);
//! - how long after the last create every agent was `Running` (from the
//!   `nexus_agents{phase="Running"}` gauge);
//! - the CPU the idle process burns, over a window as long as the resync period (so that
//!   one whole resync of every agent falls inside it), as a share of one core;
//! - its resident memory at the end;
//! - `GET /api/v1/agents` of the first tenant at 100 agents in all and at the end, and
//!   their ratio (listing one tenant costs the same whatever the total).
//!
//! `cargo bench --bench scale`; `NEXUS_SCALE_TENANTS`, `NEXUS_SCALE_AGENTS`,
//! `NEXUS_SCALE_RESYNC_SECONDS` (default 20) change the defaults; `NEXUS_SCALE_BINARY`
//! runs another build of `nexus` (an older one, for before/after figures). Linux only
//! (`/proc`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, cpu_time, create_tenant, env_or, register, rss_mib};
use futures_util::StreamExt;
use serde_json::json;

/// How many connections create agents at once.
const CREATORS: usize = 8;

/// How many agents the metrics listener counts as Running.
async fn running(client: &reqwest::Client, metrics: &str) -> usize {
    let Ok(response) = client.get(metrics).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("nexus_agents{") && l.contains("phase=\"Running\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

/// Requests per second of `GET /api/v1/agents` for `tenant`, on 4 connections for 2 s.
async fn list_rate(client: &reqwest::Client, base: &str, token: &str, tenant: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    let done = AtomicUsize::new(0);
    let worker = || async {
        while Instant::now() < deadline {
            let response = client.get(format!("{base}/api/v1/agents")).bearer_auth(token).header("x-tenant-id", tenant).send().await.expect("list");
            assert!(response.status().is_success(), "listing answered {}", response.status());
            let _ = response.bytes().await;
            done.fetch_add(1, Ordering::Relaxed);
        }
    };
    let started = Instant::now();
    futures_util::future::join_all((0..4).map(|_| worker())).await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let (tenants, per_tenant, resync) = (env_or("NEXUS_SCALE_TENANTS", 1000), env_or("NEXUS_SCALE_AGENTS", 10), env_or("NEXUS_SCALE_RESYNC_SECONDS", 20));
    let total = usize::try_from(tenants * per_tenant).expect("a count");
    let window = 1000.min(total / 2).max(1);
    let server = Server::start(
        env!("CARGO_BIN_EXE_nexus"),
        "scale",
        &[
            ("NEXUS_ACCESS_TTL", "1h".to_owned()),
            ("NEXUS_AUTH_RATE", "0".to_owned()),
            ("NEXUS_MAX_TENANTS", tenants.to_string()),
            ("NEXUS_MAX_AGENTS", per_tenant.to_string()),
            ("NEXUS_RESYNC", format!("{resync}s")),
        ],
    )
    .await;
    let pid = server.pid();
    let (base, metrics) = (server.base.clone(), server.metrics.clone());
    let client = reqwest::Client::new();

    let token = register(&client, &base, "scale@example.com").await;
    let token = token.as_str();
    let mut tenant_ids = Vec::new();
    for n in 0..tenants {
        tenant_ids.push(create_tenant(&client, &base, token, &format!("t{n}")).await);
    }

    // Agents, one tenant after the other; each finish time noted.
    let jobs: Vec<(usize, &str)> = tenant_ids.iter().flat_map(|t| (0..per_tenant).map(move |_| t.as_str())).enumerate().collect();
    let started = Instant::now();
    let mut finished = vec![Duration::ZERO; total];
    let mut list_at_100 = None;
    let mut created = futures_util::stream::iter(jobs)
        .map(|(n, tenant)| {
            let client = &client;
            let base = &base;
            async move {
                let manifest = json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": format!("agent-{n}")},
                    "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}});
                let response =
                    client.post(format!("{base}/api/v1/agents")).bearer_auth(token).header("x-tenant-id", tenant).json(&manifest).send().await.expect("create");
                let status = response.status();
                assert_eq!(status, reqwest::StatusCode::CREATED, "creating agent {n}: {}", response.text().await.unwrap_or_default());
                n
            }
        })
        .buffered(CREATORS);
    let mut count = 0;
    while let Some(n) = created.next().await {
        finished[n] = started.elapsed();
        count += 1;
        if count % 1000 == 0 {
            eprintln!("{count} agents created in {:.1?}", started.elapsed());
        }
        if count == 100.min(total) && list_at_100.is_none() {
            list_at_100 = Some(list_rate(&client, &base, token, &tenant_ids[0]).await);
        }
    }
    drop(created);
    let last_created = Instant::now();
    let first_rate = window as f64 / finished[window - 1].as_secs_f64();
    let last_rate = window as f64 / (finished[total - 1] - finished[total - window - 1]).as_secs_f64();

    let mut all_running = None;
    while last_created.elapsed() < Duration::from_secs(120) {
        if running(&client, &metrics).await >= total {
            all_running = Some(last_created.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list_at_end = list_rate(&client, &base, token, &tenant_ids[0]).await;

    // Idle: no API traffic, one whole resync period.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, idle_started) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(resync)).await;
    let idle_cpu = (cpu_time(pid) - cpu_before).as_secs_f64() / idle_started.elapsed().as_secs_f64();
    let rss = rss_mib(pid);
    drop(server);

    println!("{tenants} tenants x {per_tenant} agents on the stub node, resync {resync} s, {CREATORS} creating connections");
    println!("{:<52} {:>12}", "measure", "value");
    println!("{:<52} {:>12.0}", format!("creates/s, first {window} agents"), first_rate);
    println!("{:<52} {:>12.0}", format!("creates/s, last {window} agents"), last_rate);
    println!("{:<52} {:>12.2}", "  ratio last/first (target >= 0.7)", last_rate / first_rate);
    match all_running {
        Some(after) => println!("{:<52} {:>12.2?}", "all Running after the last create (target < 10 s)", after),
        None => println!("{:<52} {:>12}", "all Running after the last create (target < 10 s)", "> 120 s"),
    }
    println!("{:<52} {:>11.1}%", "idle CPU, share of one core (target < 5%)", idle_cpu * 100.0);
    println!("{:<52} {:>8.0} MiB", "resident memory (target < 160 MiB)", rss);
    let at_100 = list_at_100.unwrap_or(f64::NAN);
    println!("{:<52} {:>12.0}", "GET /api/v1/agents (one tenant) req/s at 100 agents", at_100);
    println!("{:<52} {:>12.0}", format!("GET /api/v1/agents (one tenant) req/s at {total} agents"), list_at_end);
    println!("{:<52} {:>12.2}", "  ratio (target ~1)", list_at_end / at_100);
}
