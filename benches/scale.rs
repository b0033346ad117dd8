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
//! With `NEXUS_SCALE_DATABASE=postgres` it runs the production default instead: two
//! replicas (`NEXUS_SCALE_REPLICAS`) of `nexus` on one fresh PostgreSQL database (the
//! server `NEXUS_TEST_POSTGRES_URL` names, default the local one), so the database cluster
//! and its leader lease, and the stub node; agents are created through the first replica.
//! The idle CPU is then that of every replica and of the PostgreSQL backends serving the
//! benchmark's database together, and it also reports the database's commits at rest
//! (`pg_stat_database.xact_commit`, per second over the window) and the node calls at rest
//! (`nexus_node_requests_total` of every replica, by operation); resident memory per
//! replica.
//!
//! `cargo bench --bench scale`; `NEXUS_SCALE_TENANTS`, `NEXUS_SCALE_AGENTS`,
//! `NEXUS_SCALE_RESYNC_SECONDS` (default 60, the default `NEXUS_RESYNC`) change the
//! defaults; `NEXUS_SCALE_BINARY` runs another build of `nexus` (an older one, for
//! before/after figures). Linux only (`/proc`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, cpu_time, create_tenant, env_or, register, rss_mib};
use futures_util::StreamExt;
use nexus_store_sea_orm::testing::{TestDatabase, fresh_postgres, postgres_admin_url};
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

/// Every node call the replica made so far, by operation (`nexus_node_requests_total`).
async fn node_calls(client: &reqwest::Client, metrics: &str) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    let Ok(response) = client.get(metrics).send().await else { return calls };
    for line in response.text().await.unwrap_or_default().lines().filter(|l| l.starts_with("nexus_node_requests_total{")) {
        let operation = line.split("operation=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("?").to_owned();
        let value: f64 = line.split_whitespace().last().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *calls.entry(operation).or_default() += value;
    }
    calls
}

/// Runs `sql` on the PostgreSQL admin database with `psql`; its rows, one a line.
fn psql(sql: &str) -> Vec<String> {
    let output = Command::new("psql").args(["-At", "-d", &postgres_admin_url(), "-c", sql]).output().expect("psql runs");
    assert!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// The benchmark database's committed transactions so far.
fn commits(database: &str) -> f64 {
    psql(&format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'")).first().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The PostgreSQL backends connected to the benchmark database, with their CPU time so far.
fn backends(database: &str) -> BTreeMap<u32, Duration> {
    psql(&format!("SELECT pid FROM pg_stat_activity WHERE datname = '{database}'"))
        .iter()
        .filter_map(|pid| pid.parse().ok())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists())
        .map(|pid| (pid, cpu_time(pid)))
        .collect()
}

/// CPU the backends used between two readings (a backend that came meanwhile: all of its).
fn backends_cpu(before: &BTreeMap<u32, Duration>, after: &BTreeMap<u32, Duration>) -> Duration {
    after.iter().map(|(pid, cpu)| cpu.saturating_sub(before.get(pid).copied().unwrap_or_default())).sum()
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
    let (tenants, per_tenant, resync) = (env_or("NEXUS_SCALE_TENANTS", 1000), env_or("NEXUS_SCALE_AGENTS", 10), env_or("NEXUS_SCALE_RESYNC_SECONDS", 60));
    let total = usize::try_from(tenants * per_tenant).expect("a count");
    let window = 1000.min(total / 2).max(1);
    let postgres = std::env::var("NEXUS_SCALE_DATABASE").is_ok_and(|d| d == "postgres");
    let mut env = vec![
        ("NEXUS_ACCESS_TTL", "1h".to_owned()),
        ("NEXUS_AUTH_RATE", "0".to_owned()),
        ("NEXUS_MAX_TENANTS", tenants.to_string()),
        ("NEXUS_MAX_AGENTS", per_tenant.to_string()),
        ("NEXUS_RESYNC", format!("{resync}s")),
    ];
    let database: Option<(TestDatabase, String)> = if postgres {
        let db = fresh_postgres().await.expect("PostgreSQL for the production default");
        let name = db.url.rsplit('/').next().expect("a database name").to_owned();
        env.push(("NEXUS_DATABASE_URL", db.url.clone()));
        Some((db, name))
    } else {
        None
    };
    let replicas = if postgres { env_or("NEXUS_SCALE_REPLICAS", 2) } else { 1 };
    let mut servers = Vec::new();
    for n in 0..replicas {
        servers.push(Server::start(env!("CARGO_BIN_EXE_nexus"), &format!("scale-{n}"), &env).await);
    }
    let server = &servers[0];
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let base = server.base.clone();
    let all_metrics: Vec<String> = servers.iter().map(|s| s.metrics.clone()).collect();
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
        let mut most = 0;
        for metrics in &all_metrics {
            most = most.max(running(&client, metrics).await);
        }
        if most >= total {
            all_running = Some(last_created.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list_at_end = list_rate(&client, &base, token, &tenant_ids[0]).await;

    // Idle: no API traffic, one whole resync period (after the first period since the
    // tenants were created, so that every node has been listed once before).
    let settle = Duration::from_secs(resync).saturating_sub(started.elapsed()).max(Duration::from_secs(2));
    tokio::time::sleep(settle).await;
    let replicas_cpu = || pids.iter().map(|pid| cpu_time(*pid)).sum::<Duration>();
    let database_name = database.as_ref().map(|(_, name)| name.clone());
    let (commits_before, backends_before) = database_name.as_deref().map(|name| (commits(name), backends(name))).unwrap_or_default();
    let mut calls_before = BTreeMap::new();
    for metrics in &all_metrics {
        for (operation, count) in node_calls(&client, metrics).await {
            *calls_before.entry(operation).or_insert(0.0) += count;
        }
    }
    let (cpu_before, idle_started) = (replicas_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(resync)).await;
    let idle = idle_started.elapsed().as_secs_f64();
    let replicas_idle = (replicas_cpu() - cpu_before).as_secs_f64() / idle;
    let (commits_at_rest, database_idle) = match database_name.as_deref() {
        Some(name) => ((commits(name) - commits_before) / idle, backends_cpu(&backends_before, &backends(name)).as_secs_f64() / idle),
        None => (f64::NAN, 0.0),
    };
    let mut calls_after = BTreeMap::new();
    for metrics in &all_metrics {
        for (operation, count) in node_calls(&client, metrics).await {
            *calls_after.entry(operation).or_insert(0.0) += count;
        }
    }
    let calls_at_rest: Vec<(String, f64)> = calls_after
        .iter()
        .map(|(operation, count)| (operation.clone(), count - calls_before.get(operation).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let rss: Vec<f64> = pids.iter().map(|pid| rss_mib(*pid)).collect();
    drop(servers);
    if let Some((db, _)) = database {
        db.drop_database().await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let setting =
        if postgres { format!("{replicas} replicas on PostgreSQL (database cluster)") } else { "one process on SQLite (in-memory cluster)".to_owned() };
    println!("{tenants} tenants x {per_tenant} agents on the stub node, {setting}, resync {resync} s, {CREATORS} creating connections");
    println!("load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("{:<52} {:>12}", "measure", "value");
    println!("{:<52} {:>12.0}", format!("creates/s, first {window} agents"), first_rate);
    println!("{:<52} {:>12.0}", format!("creates/s, last {window} agents"), last_rate);
    println!("{:<52} {:>12.2}", "  ratio last/first (target >= 0.7)", last_rate / first_rate);
    match all_running {
        Some(after) => println!("{:<52} {:>12.2?}", "all Running after the last create (target < 10 s)", after),
        None => println!("{:<52} {:>12}", "all Running after the last create (target < 10 s)", "> 120 s"),
    }
    println!("{:<52} {:>11.1}%", "idle CPU over one resync, share of a core (< 5%)", (replicas_idle + database_idle) * 100.0);
    if postgres {
        println!("{:<52} {:>11.1}%", "  of which the replicas", replicas_idle * 100.0);
        println!("{:<52} {:>11.1}%", "  of which the PostgreSQL backends", database_idle * 100.0);
        println!("{:<52} {:>12.2}", "database commits/s at rest (target < 1)", commits_at_rest);
    }
    let calls: f64 = calls_at_rest.iter().map(|(_, n)| n).sum();
    let by_operation: Vec<String> = calls_at_rest.iter().map(|(operation, n)| format!("{operation} {n}")).collect();
    println!("{:<52} {:>12.0}", "node calls at rest over the resync period", calls);
    if !by_operation.is_empty() {
        println!("  by operation: {}", by_operation.join(", "));
    }
    for (n, rss) in rss.iter().enumerate() {
        println!("{:<52} {:>8.0} MiB", format!("resident memory, replica {n} (target < 160 MiB)"), rss);
    }
    let at_100 = list_at_100.unwrap_or(f64::NAN);
    println!("{:<52} {:>12.0}", "GET /api/v1/agents (one tenant) req/s at 100 agents", at_100);
    println!("{:<52} {:>12.0}", format!("GET /api/v1/agents (one tenant) req/s at {total} agents"), list_at_end);
    println!("{:<52} {:>12.2}", "  ratio (target ~1)", list_at_end / at_100);
}
