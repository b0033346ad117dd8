//! Several `nexus` processes on one database, as a user runs them behind a load balancer,
//! each with the default cluster setting. On PostgreSQL that is the database-held cluster:
//! every replica answers the same statuses, one replica (elected through the database)
//! reconciles, and a survivor takes over when the leader is killed without warning. They
//! drive one real astromesh-node (see `node_e2e`), checked through its own API. On SQLite a
//! second process is refused. Without PostgreSQL or the node these skip, unless `CI` is set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::agents::{SUPPORT_BOT, get, running, send};
use crate::node_e2e::{Node, free_port, venv};
use crate::support::Server;
use nexus_store_sea_orm::testing::fresh_postgres;

/// A `nexus` process, killed when dropped. Its log is kept when the test fails.
pub(crate) struct Replica {
    child: Child,
    pub(crate) server: Server,
    metrics: String,
    log: PathBuf,
}

fn command(database_url: &str, port: u16, metrics: u16, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("NEXUS_")) {
        command.env_remove(name);
    }
    command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--database-url", database_url, "--auth-rate", "0"])
        .args(args)
        .env("NEXUS_LOG", "info");
    command
}

impl Replica {
    /// Starts `nexus` on `database_url` with `args`; returns once it answers.
    async fn start(database_url: &str, args: &[&str]) -> Self {
        Self::start_with(database_url, args, &[]).await
    }

    /// Starts `nexus` on `database_url` with `args` and environment `envs`; returns once
    /// it answers.
    pub(crate) async fn start_with(database_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let (port, metrics) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("nexus-replica-{port}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = command(database_url, port, metrics, args)
            .envs(envs.iter().copied())
            .stdout(Stdio::from(file.try_clone().expect("the log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("nexus starts");
        let replica = Self { child, server: Server::at(format!("http://127.0.0.1:{port}")), metrics: format!("http://127.0.0.1:{metrics}/metrics"), log };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.get(format!("{}/healthz", replica.server.base)).send().await.is_ok_and(|answer| answer.status().is_success()) {
            assert!(Instant::now() < deadline, "nexus did not come up; see {}", replica.log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        replica
    }

    /// Whether it says it leads (`nexus_reconcile_leader`); `None` when it does not answer.
    pub(crate) async fn leads(&self) -> Option<bool> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        let line = text.lines().find(|line| line.starts_with("nexus_reconcile_leader "))?;
        Some(line.split_whitespace().nth(1)? == "1")
    }

    /// Kills it without warning (SIGKILL).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("the log of the replica at {} is {}", self.server.base, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Polls until `done` holds, failing after `within`; returns how long it took.
pub(crate) async fn within<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut done: F) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// The index of the one replica of `alive` that leads, once exactly one says so.
pub(crate) async fn leader(replicas: &[Replica], alive: &[usize]) -> usize {
    let mut found = None;
    within("exactly one replica leads", Duration::from_secs(30), async || {
        let mut leaders = Vec::new();
        for &index in alive {
            if replicas[index].leads().await == Some(true) {
                leaders.push(index);
            }
        }
        found = leaders.first().copied();
        leaders.len() == 1
    })
    .await;
    found.expect("a leader")
}

pub(crate) fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// The tenant's phase as `server` lists it.
pub(crate) async fn tenant_phase(server: &Server, token: &str, tenant: &str) -> Value {
    let auth = bearer(token);
    let listed = server.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await;
    listed.body.as_array().and_then(|tenants| tenants.iter().find(|t| t["id"] == tenant)).map_or(Value::Null, |t| t["phase"].clone())
}

/// The agent's status as `server` answers it (`Null` when there is no such agent).
async fn status(server: &Server, key: &str, name: &str) -> Value {
    let agent = get(server, &format!("/api/v1/agents/{name}"), key).await;
    if agent.status == StatusCode::OK { agent.body["status"].clone() } else { Value::Null }
}

fn manifest(name: &str) -> String {
    SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}"))
}

async fn create(server: &Server, key: &str, name: &str) {
    let created = send(server, Method::POST, "/api/v1/agents", key, "application/yaml", &manifest(name)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
}

/// The replicas of `alive` all see the agent Running, with one and the same status.
async fn running_alike(replicas: &[Replica], alive: &[usize], key: &str, name: &str) -> bool {
    let mut seen = Vec::new();
    for &index in alive {
        let agent = get(&replicas[index].server, &format!("/api/v1/agents/{name}"), key).await;
        if agent.status != StatusCode::OK || !running(&agent.body) {
            return false;
        }
        seen.push(agent.body["status"].clone());
    }
    seen.windows(2).all(|pair| pair[0] == pair[1])
}

/// Deletes `name` through `server`, then checks through the node's own API that the node
/// forgets it and that no replica's resync brings it back while `watched` (several resync
/// periods) goes by.
async fn delete_for_good(server: &Server, replicas: &[Replica], alive: &[usize], node: &Node, key: &str, name: &str, watched: Duration) {
    let on_node = status(server, key, name).await["nodeAgentName"].as_str().expect("a node-side name").to_owned();
    assert!(node.agent(&on_node).await.is_some(), "the node holds {on_node} before the delete");
    let deleted = server.call(Method::DELETE, &format!("/api/v1/agents/{name}"), &[("x-api-key", key)], None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    within("the node forgets the deleted agent", Duration::from_secs(15), async || node.agent(&on_node).await.is_none()).await;
    let until = Instant::now() + watched;
    while Instant::now() < until {
        assert!(node.agent(&on_node).await.is_none(), "{on_node} came back on the node after its deletion");
        for &index in alive {
            assert_eq!(get(&replicas[index].server, &format!("/api/v1/agents/{name}"), key).await.status, StatusCode::NOT_FOUND);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Two processes on one PostgreSQL database, resyncing every second: a tenant created
/// through the follower is Ready on both; agents created through either are Running on
/// both with the same status, and their node answers through both; an agent deleted
/// through the follower leaves the node for good, over five resync periods, and so do the
/// agents of a tenant deleted through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_answer_alike_and_a_delete_through_the_follower_stays_deleted() {
    let Some(venv) = venv() else { return };
    let Some(db) = fresh_postgres().await else { return };
    let node = Node::start(venv, free_port()).await;
    let resync = Duration::from_secs(1);
    let node_url = node.url();
    let args = ["--node", "http", "--node-url", &node_url, "--resync", "1s"];
    let replicas = [Replica::start(&db.url, &args).await, Replica::start(&db.url, &args).await];
    let all = [0, 1];
    let leader = leader(&replicas, &all).await;
    let (leading, following) = (&replicas[leader].server, &replicas[1 - leader].server);

    let token = following.user("ada@example.com").await;
    let tenant = following.tenant(&token, "replicas").await.str("id");
    let key = following.key(&token, &tenant, "ci").await.str("rawKey");
    for replica in &replicas {
        within("the tenant is Ready through every replica", Duration::from_secs(10), async || tenant_phase(&replica.server, &token, &tenant).await == "Ready")
            .await;
    }

    create(leading, &key, "through-leader").await;
    create(following, &key, "through-follower").await;
    for name in ["through-leader", "through-follower"] {
        within(&format!("{name} is Running alike on both"), Duration::from_secs(15), async || running_alike(&replicas, &all, &key, name).await).await;
        for replica in &replicas {
            let live = get(&replica.server, &format!("/api/v1/agents/{name}/status"), &key).await;
            assert_eq!((live.status, live.body["node"]["status"].as_str()), (StatusCode::OK, Some("deployed")), "{live:?}");
        }
    }

    delete_for_good(following, &replicas, &all, &node, &key, "through-follower", resync * 5).await;
    let kept = status(leading, &key, "through-leader").await["nodeAgentName"].as_str().expect("a node-side name").to_owned();
    assert!(node.agent(&kept).await.is_some_and(|a| a["status"] == "deployed"), "the other agent stays deployed");

    // Deleting the tenant through the follower takes its agents off the shared node, for good.
    let auth = bearer(&token);
    assert_eq!(following.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}"), &[(auth.0, &auth.1)], None).await.status, StatusCode::OK);
    within("the node forgets the deleted tenant's agents", Duration::from_secs(15), async || node.agent(&kept).await.is_none()).await;
    let until = Instant::now() + resync * 3;
    while Instant::now() < until {
        assert!(node.agent(&kept).await.is_none(), "a deleted tenant's agent came back on the node");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    drop(replicas);
    drop(node);
    db.drop_database().await;
}

/// Three processes on one PostgreSQL database with every timing at its default (a resync
/// of a minute): exactly one leads; an agent created through a follower is Running on all
/// three within seconds (the change feed wakes the leader; the next sweep is a minute
/// away); tenant phases agree. The leader is then killed without warning: an agent
/// created through a survivor at once is Running within 15 s of the kill, one survivor
/// leads, and a delete through the other survivor leaves the node for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_elect_one_leader_and_a_survivor_takes_over_after_kill_9() {
    let Some(venv) = venv() else { return };
    let Some(db) = fresh_postgres().await else { return };
    let node = Node::start(venv, free_port()).await;
    let node_url = node.url();
    let args = ["--node", "http", "--node-url", &node_url];
    let mut replicas = [Replica::start(&db.url, &args).await, Replica::start(&db.url, &args).await, Replica::start(&db.url, &args).await];
    let all = [0, 1, 2];
    let first = leader(&replicas, &all).await;
    let followers: Vec<usize> = all.into_iter().filter(|i| *i != first).collect();

    let token = replicas[followers[0]].server.user("ada@example.com").await;
    let tenant = replicas[followers[0]].server.tenant(&token, "replicas").await.str("id");
    let key = replicas[followers[0]].server.key(&token, &tenant, "ci").await.str("rawKey");
    for replica in &replicas {
        within("the tenant is Ready through every replica", Duration::from_secs(10), async || tenant_phase(&replica.server, &token, &tenant).await == "Ready")
            .await;
    }

    create(&replicas[followers[1]].server, &key, "through-follower").await;
    let prompt = within("an agent created through a follower is Running on all three", Duration::from_secs(5), async || {
        running_alike(&replicas, &all, &key, "through-follower").await
    })
    .await;
    create(&replicas[first].server, &key, "through-leader").await;
    let direct = within("an agent created through the leader is Running on all three", Duration::from_secs(5), async || {
        running_alike(&replicas, &all, &key, "through-leader").await
    })
    .await;
    eprintln!("Running on every replica: {prompt:?} after a create through a follower, {direct:?} through the leader");

    replicas[first].kill();
    let killed = Instant::now();
    create(&replicas[followers[0]].server, &key, "after-failover").await;
    within("an agent created through a survivor is Running", Duration::from_secs(15).saturating_sub(killed.elapsed()), async || {
        running_alike(&replicas, &followers, &key, "after-failover").await
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("after kill -9 of the leader, an agent created through a survivor was Running {failover:?} after the kill");
    assert!(failover <= Duration::from_secs(15), "{failover:?}");

    let second = leader(&replicas, &followers).await;
    let other = followers.iter().copied().find(|i| *i != second).expect("two survivors");
    for index in &followers {
        assert_eq!(tenant_phase(&replicas[*index].server, &token, &tenant).await, "Ready");
    }
    delete_for_good(&replicas[other].server, &replicas, &followers, &node, &key, "through-follower", Duration::from_secs(3)).await;

    drop(replicas);
    drop(node);
    db.drop_database().await;
}

/// SQLite serves one process: a second `nexus` on the same file refuses to start, saying
/// why; the lock goes with the first process, even killed without warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_file_refuses_to_start() {
    let path = std::env::temp_dir().join(format!("nexus-exclusive-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    let mut first = Replica::start(&url, &[]).await;

    let output = command(&url, free_port(), free_port(), &[]).output().expect("nexus runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("is in use by another Nexus process") && printed.contains("PostgreSQL"), "{printed}");
    assert!(!printed.contains("panicked"), "{printed}");
    assert_eq!(first.server.get("/healthz", None).await.status, StatusCode::OK, "the first goes on serving");

    first.kill();
    let second = Replica::start(&url, &[]).await;
    assert_eq!(second.server.get("/readyz", None).await.status, StatusCode::OK, "a process starts once the first is gone");
    drop(second);
    drop(first);
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
