//! Scale benchmark on a real Kubernetes API server: `NEXUS_SCALE_TENANTS` tenants (200) x
//! `NEXUS_SCALE_AGENTS` agents (10) through Nexus's API, with `NEXUS_CLUSTER=kube`, the stub
//! node, on the control plane `scripts/kube-cluster up` starts (with `NEXUS_KUBE_AUDIT=1`;
//! kwok makes the 200 node Deployments available). Needs `NEXUS_TEST_KUBECONFIG` (the admin
//! kubeconfig) and `NEXUS_TEST_KUBE_RUN` (its run directory, for the audit log). Reports
//!
//! - the time from the last create to every tenant `Ready` and every agent `Running`
//!   (target 60 s);
//! - Nexus's requests to the API server per second once idle, writes and reads apart, from
//!   the API server's own audit log, over `NEXUS_SCALE_IDLE_SECONDS` (30) after it settled
//!   (target: no writes, and no polling: watches only; the leader lease's renewals aside);
//! - Nexus's resident memory (target 200 MiB).
//!
//! `cargo bench --bench kube_scale`; `NEXUS_SCALE_BINARY` runs another build (before/after).
//! It works on tenants of its own and deletes them at the end. Linux only (`/proc`).

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_tenant, env_or, register, rss_mib};
use futures_util::StreamExt;
use serde_json::{Value, json};

const CREATORS: usize = 8;

/// The gauge `name{phase="phase"}` from the metrics listener.
async fn gauge(client: &reqwest::Client, metrics: &str, name: &str, phase: &str) -> usize {
    let Ok(response) = client.get(metrics).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("phase=\"{phase}\"")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

/// How many of `tenants` the API lists `Ready`.
async fn ready(client: &reqwest::Client, base: &str, token: &str) -> usize {
    let Ok(response) = client.get(format!("{base}/api/v1/tenants")).bearer_auth(token).send().await else { return 0 };
    let listed: Value = response.json().await.unwrap_or_default();
    listed.as_array().map_or(0, |tenants| tenants.iter().filter(|t| t["phase"] == "Ready").count())
}

/// The audit log's requests by `user` since line `from`: (writes, reads other than the
/// lease and watches, watches, lease requests), and the number of lines.
fn requests(log: &std::path::Path, user: &str, from: usize) -> (usize, usize, usize, usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let (mut writes, mut reads, mut watches, mut lease) = (0, 0, 0, 0);
    for line in lines.iter().skip(from) {
        let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
        if event["user"]["username"] != user || event["stage"] != "ResponseComplete" {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or_default();
        if event["objectRef"]["resource"] == "leases" {
            lease += 1;
        } else if verb == "watch" {
            watches += 1;
        } else if matches!(verb, "get" | "list") {
            reads += 1;
        } else {
            writes += 1;
        }
    }
    (writes, reads, watches, lease, lines.len())
}

#[tokio::main]
async fn main() {
    let (Some(kubeconfig), Some(run)) = (std::env::var_os("NEXUS_TEST_KUBECONFIG"), std::env::var_os("NEXUS_TEST_KUBE_RUN")) else {
        eprintln!("NEXUS_TEST_KUBECONFIG and NEXUS_TEST_KUBE_RUN are needed: scripts/kube-cluster up starts a cluster");
        return;
    };
    let audit = std::path::PathBuf::from(run).join("audit.log");
    let (tenants, per_tenant, idle) = (env_or("NEXUS_SCALE_TENANTS", 200), env_or("NEXUS_SCALE_AGENTS", 10), env_or("NEXUS_SCALE_IDLE_SECONDS", 30));
    let total = usize::try_from(tenants * per_tenant).expect("a count");
    let server = Server::start(
        env!("CARGO_BIN_EXE_nexus"),
        "kube-scale",
        &[
            ("NEXUS_CLUSTER", "kube".to_owned()),
            ("NEXUS_NODE", "stub".to_owned()),
            ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
            ("NEXUS_ACCESS_TTL", "1h".to_owned()),
            ("NEXUS_AUTH_RATE", "0".to_owned()),
            ("NEXUS_MAX_TENANTS", tenants.to_string()),
            ("NEXUS_MAX_AGENTS", per_tenant.to_string()),
        ],
    )
    .await;
    let pid = server.pid();
    let (base, metrics) = (server.base.clone(), server.metrics.clone());
    let client = reqwest::Client::new();
    let email = format!("kube-scale-{}@example.com", std::process::id());
    let token = register(&client, &base, &email).await;
    let token = token.as_str();

    let started = Instant::now();
    let mut tenant_ids = Vec::new();
    for n in 0..tenants {
        tenant_ids.push(create_tenant(&client, &base, token, &format!("t{n}")).await);
    }
    let jobs: Vec<(usize, &str)> = tenant_ids.iter().flat_map(|t| (0..per_tenant).map(move |_| t.as_str())).enumerate().collect();
    futures_util::stream::iter(jobs)
        .map(|(n, tenant)| {
            let (client, base) = (&client, &base);
            async move {
                let manifest = json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": format!("agent-{n}")},
                    "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}});
                let response =
                    client.post(format!("{base}/api/v1/agents")).bearer_auth(token).header("x-tenant-id", tenant).json(&manifest).send().await.expect("create");
                assert_eq!(response.status(), reqwest::StatusCode::CREATED, "creating agent {n}: {}", response.text().await.unwrap_or_default());
            }
        })
        .buffer_unordered(CREATORS)
        .collect::<Vec<()>>()
        .await;
    let last_created = Instant::now();
    eprintln!("{tenants} tenants and {total} agents created in {:.1?}", last_created - started);

    let mut settled = None;
    while last_created.elapsed() < Duration::from_secs(600) {
        let all_ready = ready(&client, &base, token).await >= usize::try_from(tenants).unwrap();
        if all_ready && gauge(&client, &metrics, "nexus_agents", "Running").await >= total {
            settled = Some(last_created.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    let user = "kubernetes-admin";
    let (.., from) = requests(&audit, user, 0);
    tokio::time::sleep(Duration::from_secs(idle)).await;
    // The audit log is written in batches: let the last one land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (writes, reads, watches, lease, _) = requests(&audit, user, from);
    let rss = rss_mib(pid);
    let per_second = |n: usize| n as f64 / idle as f64;

    println!("{tenants} tenants x {per_tenant} agents on a real API server (kwok nodes, stub node)");
    println!("{:<60} {:>12}", "measure", "value");
    match settled {
        Some(after) => println!("{:<60} {:>12.1?}", "all Ready and Running after the last create (target 60 s)", after),
        None => println!("{:<60} {:>12}", "all Ready and Running after the last create (target 60 s)", "> 600 s"),
    }
    println!("{:<60} {:>12.2}", format!("idle writes/s over {idle} s (target 0)"), per_second(writes));
    println!("{:<60} {:>12.2}", "idle gets and lists/s (target 0: watches only)", per_second(reads));
    println!("{:<60} {:>12.2}", "idle watch requests/s (re-established watches)", per_second(watches));
    println!("{:<60} {:>12.2}", "idle leader-lease requests/s", per_second(lease));
    println!("{:<60} {:>8.0} MiB", "resident memory (target 200 MiB)", rss);

    // Clean up: the tenants' namespaces go through the namespace controller.
    for tenant in &tenant_ids {
        let _ = client.delete(format!("{base}/api/v1/tenants/{tenant}")).bearer_auth(token).send().await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline && ready(&client, &base, token).await > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(server);
}
