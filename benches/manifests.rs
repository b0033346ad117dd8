//! Memory benchmark of stored manifests: what holding large manifests costs the process.
//!
//! Starts the `nexus` binary as a process of its own (SQLite, in-memory cluster, stub node),
//! creates `NEXUS_BENCH_MANIFESTS` agents (default 64) in one tenant, each from a manifest
//! of about `NEXUS_BENCH_MANIFEST_KIB` KiB (default 950: many small keys, within the 1 MiB
//! body limit), and reports
//!
//! - the growth of resident memory (from `/proc`) as a ratio to the manifest bytes stored
//!   (the target is at most about 2);
//! - the latency of listing that tenant's agents and of reading one agent.
//!
//! `cargo bench --bench manifests`; `NEXUS_SCALE_BINARY` runs another build of `nexus`.

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_tenant, env_or, register, rss_mib};
use serde_json::{Map, Value, json};

/// A manifest of about `kib` KiB: a valid agent whose spec carries many small keys.
fn manifest(name: &str, kib: usize) -> String {
    let mut extra = Map::new();
    let mut n = 0;
    // Each entry is 29 bytes of JSON: `"key-00000000":"value-00000",`.
    while extra.len() * 29 < kib * 1024 {
        extra.insert(format!("key-{n:08}"), Value::String(format!("value-{n:05}")));
        n += 1;
    }
    json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name},
        "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}, "extra": extra}})
    .to_string()
}

/// The median of `rounds` timings of `GET path`.
async fn median(client: &reqwest::Client, url: &str, token: &str, tenant: &str, rounds: usize) -> Duration {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(token).header("x-tenant-id", tenant).send().await.expect("read");
        assert!(response.status().is_success(), "{url} answered {}", response.status());
        let _ = response.bytes().await;
        times.push(started.elapsed());
    }
    times.sort();
    times[rounds / 2]
}

#[tokio::main]
async fn main() {
    let (count, kib) = (env_or("NEXUS_BENCH_MANIFESTS", 64), env_or("NEXUS_BENCH_MANIFEST_KIB", 950));
    let kib = usize::try_from(kib).expect("a size");
    let budget = (count + 1) * u64::try_from(kib).expect("a size") * 1024 * 2;
    let server = Server::start(
        env!("CARGO_BIN_EXE_nexus"),
        "manifests",
        &[
            ("NEXUS_ACCESS_TTL", "1h".to_owned()),
            ("NEXUS_AUTH_RATE", "0".to_owned()),
            ("NEXUS_MAX_AGENTS", count.to_string()),
            ("NEXUS_MAX_TENANT_MANIFEST_BYTES", budget.to_string()),
        ],
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let token = register(&client, &base, "manifests@example.com").await;
    let tenant = create_tenant(&client, &base, &token, "big").await;

    // One small agent first, so that what the first request of each kind allocates for
    // good (pools, caches, code paths) is in the baseline.
    let small = json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": "warm-up"}, "spec": {"model": {"primary": {"provider": "ollama", "model": "m"}}}});
    let warm = client.post(format!("{base}/api/v1/agents")).bearer_auth(&token).header("x-tenant-id", &tenant).json(&small).send().await.expect("warm-up");
    assert_eq!(warm.status(), reqwest::StatusCode::CREATED);
    median(&client, &format!("{base}/api/v1/agents"), &token, &tenant, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mib(server.pid());

    let mut stored = 0_usize;
    for n in 1..count {
        let body = manifest(&format!("agent-{n}"), kib);
        stored += body.len();
        let response = client
            .post(format!("{base}/api/v1/agents"))
            .bearer_auth(&token)
            .header("x-tenant-id", &tenant)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "creating agent {n}: {}", response.text().await.unwrap_or_default());
    }
    // Let the loop push them all (to the stub node), so that its copies count too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = median(&client, &format!("{base}/api/v1/agents"), &token, &tenant, 21).await;
    let one = median(&client, &format!("{base}/api/v1/agents/agent-1"), &token, &tenant, 21).await;
    let after = rss_mib(server.pid());
    drop(server);

    let stored_mib = stored as f64 / (1024.0 * 1024.0);
    println!("{} manifests of about {kib} KiB in one tenant (in-memory cluster, stub node)", count - 1);
    println!("{:<52} {:>12}", "measure", "value");
    println!("{:<52} {:>8.1} MiB", "manifest bytes stored", stored_mib);
    println!("{:<52} {:>8.1} MiB", "resident memory before", before);
    println!("{:<52} {:>8.1} MiB", "resident memory after", after);
    println!("{:<52} {:>12.2}", "  growth / stored bytes (target <= ~2)", (after - before) / stored_mib);
    println!("{:<52} {:>12.2?}", "GET /api/v1/agents (median of 21)", list);
    println!("{:<52} {:>12.2?}", "GET /api/v1/agents/{name} (median of 21)", one);
}
