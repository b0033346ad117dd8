//! The fault-injection suite: three `nexus` processes on one PostgreSQL database (a
//! private server this test starts and stops, on a free port of its own) driving one real
//! astromesh-node, under a steady workload of creates, updates and deletes through every
//! replica, while faults are injected one after the other: the database stopped for 12 s
//! and started again (twice), the leader frozen with SIGSTOP for 20 s then resumed, the
//! leader killed with SIGKILL (and started again), a replica's database connections
//! terminated, and clients dropping requests half-way. During the faults no answer may be
//! anything but a success or the expected 503. Once they stop, within 30 s: every
//! acknowledged create and update is visible through every replica, every acknowledged
//! delete is gone from every replica and from the node, the node holds exactly the
//! registry's agents (checked through its own API), and exactly one replica leads. It
//! prints what it injected and what it checked. Without PostgreSQL's server programs or
//! the node it skips, unless `CI` is set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::agents::SUPPORT_BOT;
use crate::node_e2e::{Node, free_port, venv};
use crate::support::Server;

/// How long the workload and the checks wait for one answer before counting it lost.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// How long after the faults stop everything must be right.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

fn say(what: &str) {
    eprintln!("[faults {:>6.1}s] {what}", started().elapsed().as_secs_f64());
}

fn started() -> Instant {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// A PostgreSQL server of this test's own (initdb in a temporary folder), so that stopping
/// it hurts nobody else. Run as the `postgres` user when this test runs as root (initdb
/// refuses root). Stopped and removed when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    /// The newest installed server programs (the Debian layout), if any.
    fn programs() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|version| version.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
            .collect();
        found.sort_by_key(|bin| bin.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
        found.pop()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|err| panic!("{program} runs: {err}"));
        assert!(output.status.success(), "{program} {args:?} failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }

    /// A new server, started; `None` (a skip) when PostgreSQL is not installed, outside CI.
    fn start_new() -> Option<Self> {
        let Some(bin) = Self::programs() else {
            assert!(std::env::var_os("CI").is_none(), "no PostgreSQL server programs under /usr/lib/postgresql: .ci/run installs them");
            eprintln!("skipping the fault-injection suite: no PostgreSQL server programs");
            return None;
        };
        let root = Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let port = free_port();
        let data = std::env::temp_dir().join(format!("nexus-faults-pg-{port}"));
        let _ = std::fs::remove_dir_all(&data);
        let server = Self { bin, data, port, as_postgres: root };
        let data = server.data.to_str().expect("a UTF-8 path").to_owned();
        server.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        server.start();
        Some(server)
    }

    fn start(&self) {
        let data = self.data.to_str().expect("a UTF-8 path");
        let options =
            format!("-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c log_lock_waits=on -c deadlock_timeout=1s", self.port);
        let log = format!("{data}/server.log");
        self.run("pg_ctl", &["-D", data, "-o", &options, "-l", &log, "-w", "-t", "60", "start"]);
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data.to_str().expect("a UTF-8 path"), "-m", "fast", "-w", "-t", "60", "stop"]);
    }

    /// The database URL for a client that names itself `application` to the server.
    fn url(&self, application: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?application_name={application}", self.port)
    }

    /// Terminates every connection of `application` (`pg_terminate_backend`); how many.
    async fn terminate(&self, application: &str) -> u64 {
        let sql = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{application}'");
        let output =
            self.command("psql").args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-At", "-c", &sql]).output().expect("psql runs");
        assert!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().filter(|line| line.trim() == "t").count() as u64
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "-w", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if std::thread::panicking() {
            eprintln!("the private PostgreSQL server's log is {data}/server.log");
        } else {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// A `nexus` process, killed when dropped. Its log is kept when the test fails.
struct Replica {
    name: String,
    child: Child,
    base: String,
    metrics: String,
    log: PathBuf,
}

impl Replica {
    async fn start(name: &str, database_url: &str, args: &[&str]) -> Self {
        let (port, metrics) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("nexus-faults-{name}-{port}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
        for (variable, _) in std::env::vars().filter(|(variable, _)| variable.starts_with("NEXUS_")) {
            command.env_remove(variable);
        }
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--database-url", database_url, "--auth-rate", "0"])
            .args(args)
            .env("NEXUS_LOG", "info")
            .stdout(Stdio::from(file.try_clone().expect("the log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("nexus starts");
        let replica =
            Self { name: name.to_owned(), child, base: format!("http://127.0.0.1:{port}"), metrics: format!("http://127.0.0.1:{metrics}/metrics"), log };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.get(format!("{}/healthz", replica.base)).send().await.is_ok_and(|answer| answer.status().is_success()) {
            assert!(Instant::now() < deadline, "{name} did not come up; see {}", replica.log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        replica
    }

    /// Whether it says it leads (`nexus_reconcile_leader`); `None` when it does not answer.
    async fn leads(&self) -> Option<bool> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        let text = client.get(&self.metrics).send().await.ok()?.text().await.ok()?;
        let line = text.lines().find(|line| line.starts_with("nexus_reconcile_leader "))?;
        Some(line.split_whitespace().nth(1)? == "1")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        self.kill();
        if std::thread::panicking() {
            eprintln!("the log of {} is {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// What the workload was told of an agent; what the checks hold the replicas to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Acknowledged as created or updated, at this manifest version.
    Present(String),
    /// Acknowledged as deleted.
    Absent,
    /// The last request about it went unanswered (dropped, lost, 503): either outcome,
    /// but every replica and the node must agree.
    Unknown,
}

/// Where the replicas are and which of them a fault is holding (whose lost answers are
/// expected), shared with the workload.
struct Targets {
    bases: Mutex<Vec<String>>,
    held: Vec<AtomicBool>,
    /// The database is stopped: 503 is the expected answer.
    outage: AtomicBool,
}

/// What the workload saw.
#[derive(Default)]
struct Tally {
    ledger: Mutex<BTreeMap<String, Expect>>,
    violations: Mutex<Vec<String>>,
    acknowledged: AtomicU64,
    unavailable: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
}

impl Tally {
    fn expect(&self, name: &str, expect: Expect) {
        self.ledger.lock().unwrap().insert(name.to_owned(), expect);
    }

    fn violation(&self, what: String) {
        say(&format!("VIOLATION: {what}"));
        self.violations.lock().unwrap().push(what);
    }
}

fn manifest(name: &str, version: &str) -> String {
    SUPPORT_BOT.replace("name: support-bot", &format!("name: {name}")).replace("version: \"1.0.0\"", &format!("version: \"{version}\""))
}

/// The outcome of one workload request.
enum Outcome {
    Acknowledged,
    /// Unanswered or 503: unknown whether it took effect.
    Unknown,
}

struct Workload {
    client: reqwest::Client,
    key: String,
    targets: Arc<Targets>,
    tally: Arc<Tally>,
}

impl Workload {
    /// Sends one request to replica `index`, classifying its answer.
    async fn send(&self, index: usize, method: Method, path: &str, body: Option<String>, what: &str) -> Outcome {
        let base = self.targets.bases.lock().unwrap()[index].clone();
        let mut request = self.client.request(method, format!("{base}{path}")).header("x-api-key", &self.key).timeout(ANSWER_WITHIN);
        if let Some(body) = body {
            request = request.header("content-type", "application/yaml").body(body);
        }
        let held = || self.targets.held[index].load(Ordering::SeqCst);
        match request.send().await {
            Ok(answer) if answer.status().is_success() => {
                self.tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                Outcome::Acknowledged
            }
            Ok(answer) if answer.status() == StatusCode::SERVICE_UNAVAILABLE => {
                self.tally.unavailable.fetch_add(1, Ordering::Relaxed);
                Outcome::Unknown
            }
            Ok(answer) => {
                let status = answer.status();
                let body = answer.text().await.unwrap_or_default();
                self.tally.violation(format!("{what} through replica {index} answered {status}: {body}"));
                Outcome::Unknown
            }
            Err(err) => {
                self.tally.lost.fetch_add(1, Ordering::Relaxed);
                if !held() {
                    let during = if self.targets.outage.load(Ordering::SeqCst) { " during the database outage" } else { "" };
                    self.tally.violation(format!("{what} through replica {index}, which no fault holds, got no answer{during}: {err}"));
                }
                Outcome::Unknown
            }
        }
    }

    /// Creates, updates and deletes agents through replica `index` until `stop`: each agent
    /// is created, updated, and two in three deleted.
    async fn run(self: Arc<Self>, index: usize, stop: Arc<AtomicBool>) {
        let mut n = 0u32;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let name = format!("r{index}-a{n}");
            let created = self.send(index, Method::POST, "/api/v1/agents", Some(manifest(&name, "1.0.0")), &format!("create {name}")).await;
            self.tally.expect(&name, if matches!(created, Outcome::Acknowledged) { Expect::Present("1.0.0".into()) } else { Expect::Unknown });
            if matches!(created, Outcome::Acknowledged) {
                let path = format!("/api/v1/agents/{name}");
                let updated = self.send(index, Method::PUT, &path, Some(manifest(&name, "2.0.0")), &format!("update {name}")).await;
                self.tally.expect(&name, if matches!(updated, Outcome::Acknowledged) { Expect::Present("2.0.0".into()) } else { Expect::Unknown });
                if matches!(updated, Outcome::Acknowledged) && !n.is_multiple_of(3) {
                    let deleted = self.send(index, Method::DELETE, &path, None, &format!("delete {name}")).await;
                    self.tally.expect(&name, if matches!(deleted, Outcome::Acknowledged) { Expect::Absent } else { Expect::Unknown });
                }
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }

    /// Sends creates and deletes that the client drops half-way (after a few
    /// milliseconds), `rounds` times through each replica in turn.
    async fn drop_requests(&self, rounds: u32) {
        let replicas = self.targets.bases.lock().unwrap().len();
        for n in 0..rounds {
            let index = n as usize % replicas;
            let base = self.targets.bases.lock().unwrap()[index].clone();
            let name = format!("dropped-{n}");
            // A create dropped half-way: either outcome, but the same everywhere.
            self.tally.expect(&name, Expect::Unknown);
            let create = self.client.post(format!("{base}/api/v1/agents")).header("x-api-key", &self.key).header("content-type", "application/yaml");
            let wait = Duration::from_millis(u64::from(n % 7) * 3 + 1);
            let _ = tokio::time::timeout(wait, create.body(manifest(&name, "1.0.0")).send()).await;
            // A delete of an acknowledged agent dropped half-way.
            let acknowledged = format!("kept-{n}");
            let created = self.send(index, Method::POST, "/api/v1/agents", Some(manifest(&acknowledged, "1.0.0")), &format!("create {acknowledged}")).await;
            if matches!(created, Outcome::Acknowledged) {
                self.tally.expect(&acknowledged, Expect::Unknown);
                let delete = self.client.delete(format!("{base}/api/v1/agents/{acknowledged}")).header("x-api-key", &self.key);
                let _ = tokio::time::timeout(wait, delete.send()).await;
            } else {
                self.tally.expect(&acknowledged, Expect::Unknown);
            }
            self.tally.dropped.fetch_add(2, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `GET` with the key; the status and body, `None` when unanswered.
async fn read(client: &reqwest::Client, base: &str, path: &str, key: &str) -> Option<(StatusCode, Value)> {
    let answer = client.get(format!("{base}{path}")).header("x-api-key", key).timeout(Duration::from_secs(5)).send().await.ok()?;
    let status = answer.status();
    Some((status, answer.json().await.unwrap_or(Value::Null)))
}

/// The node's own list of agent names.
async fn node_agents(client: &reqwest::Client, node: &str) -> Option<BTreeSet<String>> {
    let body: Value = client.get(format!("{node}/v1/agents")).timeout(Duration::from_secs(5)).send().await.ok()?.json().await.ok()?;
    Some(body["agents"].as_array()?.iter().filter_map(|agent| agent["name"].as_str().map(str::to_owned)).collect())
}

/// Every violation of the state the faults must leave, once they stopped (empty: all
/// holds).
async fn check(client: &reqwest::Client, replicas: &[Replica], node: &str, key: &str, ledger: &BTreeMap<String, Expect>) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut leaders = Vec::new();
    for replica in replicas {
        match replica.leads().await {
            Some(true) => leaders.push(replica.name.clone()),
            Some(false) => {}
            None => wrong.push(format!("{} does not answer its metrics", replica.name)),
        }
    }
    if leaders.len() != 1 {
        wrong.push(format!("{} replicas lead ({leaders:?}); exactly one must", leaders.len()));
    }
    // The registry as each replica lists it, and the node-side names of its agents.
    let mut registry: Option<BTreeSet<String>> = None;
    for replica in replicas {
        let Some((StatusCode::OK, listed)) = read(client, &replica.base, "/api/v1/agents", key).await else {
            wrong.push(format!("{} does not list the agents", replica.name));
            continue;
        };
        let names: BTreeSet<String> = listed.as_array().into_iter().flatten().filter_map(|agent| agent["name"].as_str().map(str::to_owned)).collect();
        match &registry {
            Some(first) if *first != names => {
                wrong.push(format!(
                    "{} lists other agents than {}: {:?}",
                    replica.name,
                    replicas[0].name,
                    first.symmetric_difference(&names).collect::<Vec<_>>()
                ));
            }
            Some(_) => {}
            None => registry = Some(names),
        }
    }
    let registry = registry.unwrap_or_default();
    for (name, expect) in ledger {
        let mut seen = Vec::new();
        for replica in replicas {
            let Some((status, body)) = read(client, &replica.base, &format!("/api/v1/agents/{name}"), key).await else {
                wrong.push(format!("{} does not answer for {name}", replica.name));
                continue;
            };
            seen.push((status, body["agentSpec"]["metadata"]["version"].as_str().map(str::to_owned)));
        }
        match expect {
            Expect::Present(version) => {
                if let Some(other) = seen.iter().find(|(status, seen)| *status != StatusCode::OK || seen.as_deref() != Some(version)) {
                    wrong.push(format!("{name}, acknowledged at {version}, reads {other:?} through some replica"));
                }
            }
            Expect::Absent => {
                if seen.iter().any(|(status, _)| *status != StatusCode::NOT_FOUND) {
                    wrong.push(format!("{name}, acknowledged as deleted, reads {seen:?}"));
                }
            }
            Expect::Unknown => {
                if seen.windows(2).any(|pair| pair[0] != pair[1]) {
                    wrong.push(format!("the replicas disagree on {name}: {seen:?}"));
                }
            }
        }
    }
    // The node holds exactly the registry's agents, Running.
    let mut expected_on_node = BTreeSet::new();
    for name in &registry {
        match read(client, &replicas[0].base, &format!("/api/v1/agents/{name}"), key).await {
            Some((StatusCode::OK, body)) => {
                if body["status"]["phase"] != "Running" {
                    wrong.push(format!("{name} is {} ({}), not Running", body["status"]["phase"], body["status"]["message"]));
                }
                if let Some(on_node) = body["status"]["nodeAgentName"].as_str() {
                    expected_on_node.insert(on_node.to_owned());
                }
            }
            other => wrong.push(format!("{name} is listed but reads {other:?}")),
        }
    }
    match node_agents(client, node).await {
        Some(on_node) => {
            let orphans: Vec<&String> = on_node.difference(&expected_on_node).collect();
            let missing: Vec<&String> = expected_on_node.difference(&on_node).collect();
            if !orphans.is_empty() {
                wrong.push(format!("the node holds agents the registry does not: {orphans:?}"));
            }
            if !missing.is_empty() {
                wrong.push(format!("the node lacks agents of the registry: {missing:?}"));
            }
        }
        None => wrong.push("the node does not list its agents".to_owned()),
    }
    wrong
}

/// The index of the replica that leads, once exactly one does (within 30 s); otherwise a
/// violation, and the first replica stands in for the leader so that the faults go on.
async fn leader(replicas: &[Replica], tally: &Tally) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for (index, replica) in replicas.iter().enumerate() {
            if replica.leads().await == Some(true) {
                leaders.push(index);
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        if Instant::now() >= deadline {
            let named: Vec<&str> = leaders.iter().map(|index| replicas[*index].name.as_str()).collect();
            tally.violation(format!("not exactly one leader within 30 s: {named:?}"));
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until every replica refuses `key`; how long it took (`None`: not within `bound`).
async fn refused_everywhere(client: &reqwest::Client, replicas: &[Replica], key: &str, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        let mut refused = 0;
        for replica in replicas {
            if read(client, &replica.base, "/api/v1/agents", key).await.is_some_and(|(status, _)| status == StatusCode::UNAUTHORIZED) {
                refused += 1;
            }
        }
        if refused == replicas.len() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_database_outages_frozen_and_killed_leaders_and_dropped_requests() {
    let Some(venv) = venv() else { return };
    let Some(postgres) = Postgres::start_new() else { return };
    started();
    say(&format!("private PostgreSQL on port {}", postgres.port));
    let node = Node::start(venv, free_port()).await;
    let node_url = node.url();
    let args = ["--node", "http", "--node-url", &node_url, "--resync", "2s", "--lease-duration", "3s", "--lease-renew", "1s", "--max-agents", "100000"];
    let names = ["replica-0", "replica-1", "replica-2"];
    let mut replicas = Vec::new();
    for name in names {
        replicas.push(Replica::start(name, &postgres.url(name), &args).await);
    }
    say("three replicas and the node are up");

    // A user, a tenant and its keys, through one replica.
    let setup = Server::at(replicas[0].base.clone());
    let token = setup.user("faults@example.com").await;
    let tenant = setup.tenant(&token, "faults").await.str("id");
    let key = setup.key(&token, &tenant, "workload").await.str("rawKey");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read(&client, &replicas[2].base, "/api/v1/agents", &key).await.map(|(status, _)| status) != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "the key works through every replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let targets = Arc::new(Targets {
        bases: Mutex::new(replicas.iter().map(|replica| replica.base.clone()).collect()),
        held: names.iter().map(|_| AtomicBool::new(false)).collect(),
        outage: AtomicBool::new(false),
    });
    let tally = Arc::new(Tally::default());
    let workload = Arc::new(Workload { client: reqwest::Client::new(), key: key.clone(), targets: targets.clone(), tally: tally.clone() });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..replicas.len()).map(|index| tokio::spawn(workload.clone().run(index, stop.clone()))).collect();
    say("workload started: creates, updates and deletes through every replica");
    tokio::time::sleep(Duration::from_secs(4)).await;

    for round in 1..=2 {
        say(&format!("INJECT: PostgreSQL stopped for 12 s (outage {round} of 2)"));
        targets.outage.store(true, Ordering::SeqCst);
        postgres.stop();
        tokio::time::sleep(Duration::from_secs(12)).await;
        postgres.start();
        targets.outage.store(false, Ordering::SeqCst);
        say("PostgreSQL started again");
        tokio::time::sleep(Duration::from_secs(8)).await;
    }

    let frozen = leader(&replicas, &tally).await;
    say(&format!("INJECT: the leader, {}, frozen with SIGSTOP for 20 s", replicas[frozen].name));
    targets.held[frozen].store(true, Ordering::SeqCst);
    replicas[frozen].signal("-STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    replicas[frozen].signal("-CONT");
    say(&format!("{} resumed", replicas[frozen].name));
    tokio::time::sleep(Duration::from_secs(6)).await;
    targets.held[frozen].store(false, Ordering::SeqCst);

    let killed = leader(&replicas, &tally).await;
    say(&format!("INJECT: the leader, {}, killed with SIGKILL", replicas[killed].name));
    targets.held[killed].store(true, Ordering::SeqCst);
    replicas[killed].kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let name = names[killed];
    replicas[killed] = Replica::start(name, &postgres.url(name), &args).await;
    targets.bases.lock().unwrap()[killed] = replicas[killed].base.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    targets.held[killed].store(false, Ordering::SeqCst);
    say(&format!("{name} started again"));

    let victim = leader(&replicas, &tally).await;
    let terminated = postgres.terminate(names[victim]).await;
    say(&format!("INJECT: the database connections of {} (the leader) terminated: {terminated} of them", names[victim]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A key revoked through another replica is refused by the one whose connections
    // (its change feed's among them) were cut, once its feed listens again.
    // The first replica may have been the one killed and started again, on a new port.
    let setup = Server::at(replicas[(victim + 2) % replicas.len()].base.clone());
    let created = setup.key(&token, &tenant, "revoked").await;
    let (doomed, hash) = (created.str("rawKey"), created.str("hash"));
    for replica in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&client, &replica.base, "/api/v1/agents", &doomed).await.map(|(status, _)| status) != Some(StatusCode::OK) {
            assert!(Instant::now() < deadline, "the new key works through {}", replica.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let other = Server::at(replicas[(victim + 1) % replicas.len()].base.clone());
    let revoked = other.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}/keys/{hash}"), &[("authorization", &format!("Bearer {token}"))], None).await;
    assert!(revoked.status.is_success(), "{revoked:?}");
    match refused_everywhere(&client, &replicas, &doomed, Duration::from_secs(8)).await {
        Some(took) => say(&format!("CHECK: a key revoked through {} was refused by every replica after {took:?}", names[(victim + 1) % replicas.len()])),
        None => tally.violation("a revoked key still worked through some replica 8 s after its revocation".to_owned()),
    }

    say("INJECT: clients dropping creates and deletes half-way, through every replica");
    workload.drop_requests(30).await;

    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("a workload task");
    }
    say(&format!(
        "faults over; workload: {} acknowledged, {} answered 503, {} unanswered (held replicas), {} dropped by the client",
        tally.acknowledged.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.dropped.load(Ordering::Relaxed)
    ));

    let ledger = tally.ledger.lock().unwrap().clone();
    let counts = |kind: fn(&Expect) -> bool| ledger.values().filter(|expect| kind(expect)).count();
    say(&format!(
        "CHECK within {SETTLE_WITHIN:?}: {} agents acknowledged present, {} acknowledged deleted, {} unknown; exactly one leader; the node holds exactly the registry",
        counts(|e| matches!(e, Expect::Present(_))),
        counts(|e| matches!(e, Expect::Absent)),
        counts(|e| matches!(e, Expect::Unknown)),
    ));
    let settling = Instant::now();
    let mut wrong = check(&client, &replicas, &node_url, &key, &ledger).await;
    while !wrong.is_empty() && settling.elapsed() < SETTLE_WITHIN {
        tokio::time::sleep(Duration::from_secs(1)).await;
        wrong = check(&client, &replicas, &node_url, &key, &ledger).await;
    }
    for what in &wrong {
        tally.violation(format!("after {SETTLE_WITHIN:?}: {what}"));
    }
    if wrong.is_empty() {
        say(&format!("CHECK: all held {:?} after the faults stopped", settling.elapsed()));
    }
    let violations = tally.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    say("no violation");
    drop(replicas);
    drop(node);
    drop(postgres);
}
