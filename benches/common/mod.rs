//! What the process benchmarks share: a `nexus` process of their own, started on free
//! loopback ports with a configuration of the benchmark's choosing, and its CPU time and
//! resident memory read from `/proc` (Linux only).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK` on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// The process's user and system CPU time so far.
#[allow(dead_code, reason = "not every benchmark reads CPU time")]
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    Duration::from_secs_f64(ticks / TICKS_PER_SECOND)
}

/// The process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("VmRSS");
    kib / 1024.0
}

/// Registers `email` on the server at `base`; returns its access token.
#[allow(dead_code, reason = "not every benchmark registers")]
pub async fn register(client: &reqwest::Client, base: &str, email: &str) -> String {
    let session: Value = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": "a-strong-password"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("session");
    session["accessToken"].as_str().expect("token").to_owned()
}

/// Creates a tenant named `name` as the holder of `token`; returns its id.
#[allow(dead_code, reason = "not every benchmark creates tenants")]
pub async fn create_tenant(client: &reqwest::Client, base: &str, token: &str, name: &str) -> String {
    let tenant: Value = client
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth(token)
        .json(&json!({"displayName": name}))
        .send()
        .await
        .expect("create a tenant")
        .json()
        .await
        .expect("a tenant");
    tenant["id"].as_str().expect("tenant id").to_owned()
}

/// A `nexus` process on a SQLite file of its own (in-memory cluster, stub node), killed and
/// its database removed when dropped, however the benchmark ends.
pub struct Server {
    child: Child,
    db: std::path::PathBuf,
    /// `http://127.0.0.1:<port>` of its API.
    pub base: String,
    /// The URL of its Prometheus scrape.
    #[allow(dead_code, reason = "not every benchmark scrapes")]
    pub metrics: String,
}

impl Server {
    /// Starts `NEXUS_SCALE_BINARY` (another build, for before/after figures) or this build's
    /// `nexus` with only `env` set (and the addresses, database and a fixed secret), and
    /// waits until it answers. It logs errors only, unless `NEXUS_BENCH_LOG` says what to
    /// log (`warn`, say, to see why a request failed).
    pub async fn start(binary: &str, name: &str, env: &[(&str, String)]) -> Self {
        let db = std::env::temp_dir().join(format!("nexus-{name}-{}.db", std::process::id()));
        let (port, metrics_port) = (free_port(), free_port());
        let mut command = Command::new(std::env::var("NEXUS_SCALE_BINARY").unwrap_or_else(|_| binary.to_owned()));
        command
            .env_clear()
            .env("NEXUS_LISTEN", format!("127.0.0.1:{port}"))
            .env("NEXUS_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("NEXUS_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("NEXUS_JWT_SECRET", "a-benchmark-secret-of-at-least-32-bytes")
            .env("NEXUS_LOG", std::env::var("NEXUS_BENCH_LOG").unwrap_or_else(|_| "error".to_owned()));
        for (key, value) in env {
            command.env(key, value);
        }
        // Its log (on its standard output) is shown only when asked for.
        let log = if std::env::var_os("NEXUS_BENCH_LOG").is_some() { Stdio::inherit() } else { Stdio::null() };
        let child = command.stdout(log).spawn().expect("nexus starts");
        let server = Self { child, db, base: format!("http://127.0.0.1:{port}"), metrics: format!("http://127.0.0.1:{metrics_port}/metrics") };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if client.get(format!("{}/healthz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nexus did not answer");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
    }
}
