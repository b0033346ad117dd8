//! Command line and environment configuration. Every flag has an environment variable;
//! the flag wins when both are given. [`ServeConfig::check`] refuses values out of any
//! sensible range before anything starts, naming the option and its range.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Nexus: the multi-tenant control plane for Astromesh AI agents.
#[derive(Debug, Parser)]
#[command(
    name = "nexus",
    version,
    about,
    after_help = "Client commands (nexus <command> --help for each): login, register, logout, whoami, context, tenants, keys, apply, get, describe, delete, logs, events, run, versions, rollback, wait, completion.\n\nExample:\n  nexus serve &\n  nexus login --server http://localhost:8080 --email admin@example.com\n  nexus apply -f examples/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document (JSON, or YAML with --yaml) and exit.
    Openapi {
        /// Print YAML instead of JSON.
        #[arg(long)]
        yaml: bool,
    },
    /// Print the NexusTenant and NexusAgent custom resource definitions as YAML and exit.
    Crds,
}

/// How to serve.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "NEXUS_LISTEN", default_value = "0.0.0.0:8080", global = true)]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics listener (`GET /metrics`), never the API's.
    #[arg(long, env = "NEXUS_METRICS_LISTEN", default_value = "127.0.0.1:9090", global = true)]
    pub metrics_listen: SocketAddr,

    /// The longest a client may take to send a request head; a connection that trickles one
    /// in is closed.
    #[arg(long, env = "NEXUS_HEADER_READ_TIMEOUT", default_value = "10s", global = true)]
    pub header_read_timeout: humantime::Duration,

    /// The longest a connection may carry no traffic before it is closed.
    #[arg(long, env = "NEXUS_IDLE_TIMEOUT", default_value = "60s", global = true)]
    pub idle_timeout: humantime::Duration,

    /// The longest a request may wait for its answer (503 after); keep it above
    /// NEXUS_RUN_TIMEOUT. A streamed answer (the status stream) may then last longer.
    #[arg(long, env = "NEXUS_REQUEST_TIMEOUT", default_value = "180s", global = true)]
    pub request_timeout: humantime::Duration,

    /// How many connections are served at once; more wait to be accepted. Keep it below the
    /// process's descriptor limit. Each may hold about 100 KiB of buffers (see the README's
    /// memory budget).
    #[arg(long, env = "NEXUS_MAX_CONNECTIONS", default_value_t = 1024, global = true)]
    pub max_connections: u32,

    /// How many streams one HTTP/2 connection may have open at once; more are refused
    /// (`REFUSED_STREAM`) for the client to retry.
    #[arg(long, env = "NEXUS_HTTP2_MAX_STREAMS", default_value_t = 100, global = true)]
    pub http2_max_streams: u32,

    /// How many requests are answered at once, all connections together; past it a request
    /// is answered 503 with `Retry-After` at once.
    #[arg(long, env = "NEXUS_MAX_REQUESTS", default_value_t = 512, global = true)]
    pub max_requests: u32,

    /// How many bytes of request bodies are buffered at once, all requests together; a body
    /// that does not fit waits up to a second, then is answered 503 with `Retry-After`.
    #[arg(long, env = "NEXUS_BODY_BUDGET", default_value_t = 32 * 1024 * 1024, global = true)]
    pub body_budget: u64,

    /// Database URL: `sqlite://file.db` (created when missing) or `postgres://...`.
    #[arg(long, env = "NEXUS_DATABASE_URL", default_value = "sqlite://nexus.db", global = true)]
    pub database_url: String,

    /// Secret that signs access tokens (at least 32 bytes). Without it a random secret is
    /// generated once and kept in the database, so tokens survive restarts.
    #[arg(long, env = "NEXUS_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of access tokens.
    #[arg(long, env = "NEXUS_ACCESS_TTL", default_value = "15m", global = true)]
    pub access_ttl: humantime::Duration,

    /// Lifetime of refresh tokens.
    #[arg(long, env = "NEXUS_REFRESH_TTL", default_value = "30d", global = true)]
    pub refresh_ttl: humantime::Duration,

    /// Absolute lifetime of a session (a refresh-token family): past it, refreshing stops
    /// and the user logs in again.
    #[arg(long, env = "NEXUS_SESSION_MAX", default_value = "90d", global = true)]
    pub session_max: humantime::Duration,

    /// How many password hashes may run at once (default: one less than the number of
    /// CPUs, at least one).
    #[arg(long, env = "NEXUS_HASH_CONCURRENCY", global = true)]
    pub hash_concurrency: Option<usize>,

    /// How many password hashes may wait for their turn; past that, register, login and
    /// password changes answer 503 at once.
    #[arg(long, env = "NEXUS_HASH_QUEUE", default_value_t = 32, global = true)]
    pub hash_queue: usize,

    /// Requests per minute to `/auth/*` allowed per client address (per replica); 0 turns
    /// the limit off.
    #[arg(long, env = "NEXUS_AUTH_RATE", default_value_t = 60, global = true)]
    pub auth_rate: u32,

    /// Failed logins an account may see within `--login-window` before its logins are
    /// refused until the window ends; 0 turns the limit off.
    #[arg(long, env = "NEXUS_LOGIN_FAILURES", default_value_t = 10, global = true)]
    pub login_failures: u32,

    /// The window failed logins are counted in.
    #[arg(long, env = "NEXUS_LOGIN_WINDOW", default_value = "15m", global = true)]
    pub login_window: humantime::Duration,

    /// How long audit events are kept; older ones are pruned hourly.
    #[arg(long, env = "NEXUS_AUDIT_RETENTION", default_value = "90d", global = true)]
    pub audit_retention: humantime::Duration,

    /// Proxies whose `X-Forwarded-For` is believed, as comma-separated CIDRs or addresses
    /// (`10.0.0.0/8,192.0.2.7`). From any other peer the header is ignored.
    #[arg(long, env = "NEXUS_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net, global = true)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where tenants' nodes and agents run. `memory`: in this process, for one process
    /// (local development, tests); `database`: held in the database, so that several
    /// replicas on one PostgreSQL database agree, one of them (elected through the
    /// database) reconciling; `kube`: a Kubernetes cluster (in-cluster configuration or
    /// KUBECONFIG), with NexusTenant and NexusAgent resources. Default: `database` on
    /// PostgreSQL, `memory` on SQLite.
    #[arg(long, env = "NEXUS_CLUSTER", value_enum, global = true)]
    pub cluster: Option<ClusterKind>,

    /// (database and kube clusters) How long the leader's lease lasts unrenewed (the
    /// Kubernetes Lease's whole seconds): a leader that dies
    /// without a word is replaced within this plus `--lease-renew`.
    #[arg(long, env = "NEXUS_LEASE_DURATION", default_value = "8s", global = true)]
    pub lease_duration: humantime::Duration,

    /// (database and kube clusters) How often the leader renews its lease, and followers
    /// try to take it; at most a third of `--lease-duration`.
    #[arg(long, env = "NEXUS_LEASE_RENEW", default_value = "2s", global = true)]
    pub lease_renew: humantime::Duration,

    /// Namespace of the NexusTenant resources and of the leader-election lease (kube).
    #[arg(long, env = "NEXUS_SYSTEM_NAMESPACE", default_value = "nexus-system", global = true)]
    pub system_namespace: String,

    /// Image of tenants' astromesh-nodes (kube): the one deploy/node-image builds.
    #[arg(long, env = "NEXUS_NODE_IMAGE", default_value = "astromesh-node:0.74.1", global = true)]
    pub node_image: String,

    /// How Nexus talks to nodes: `stub` acknowledges everything in process (local
    /// development without a node); `http` speaks the astromesh-node API.
    #[arg(long, env = "NEXUS_NODE", value_enum, default_value = "stub", global = true)]
    pub node: NodeKind,

    /// How often running agents are resynced with their node (and the loop sweeps its lists).
    #[arg(long, env = "NEXUS_RESYNC", default_value = "60s", global = true)]
    pub resync: humantime::Duration,

    /// How many running agents may be pushed again per second at most, so that resyncs of
    /// many agents never reach their nodes at once (0: no limit).
    #[arg(long, env = "NEXUS_RESYNC_RATE", default_value_t = 200, global = true)]
    pub resync_rate: u32,

    /// The astromesh-node every tenant uses with the in-memory cluster.
    #[arg(long, env = "NEXUS_NODE_URL", default_value = "http://127.0.0.1:8000", global = true)]
    pub node_url: String,

    /// How long a run through `POST /api/v1/agents/{name}/run` may wait for its node.
    #[arg(long, env = "NEXUS_RUN_TIMEOUT", default_value = "120s", global = true)]
    pub run_timeout: humantime::Duration,

    /// How often an agent's live status stream (`GET /api/v1/agents/{name}/events`) looks
    /// for a change.
    #[arg(long, env = "NEXUS_EVENTS_POLL", default_value = "1s", global = true)]
    pub events_poll: humantime::Duration,

    /// How often an idle status stream sends a heartbeat (an SSE comment).
    #[arg(long, env = "NEXUS_EVENTS_HEARTBEAT", default_value = "15s", global = true)]
    pub events_heartbeat: humantime::Duration,

    /// How many status streams a tenant may hold open at once (per replica).
    #[arg(long, env = "NEXUS_EVENTS_MAX_STREAMS", default_value_t = 10, global = true)]
    pub events_max_streams: u32,

    /// How long one status stream lasts before it ends (clients reconnect).
    #[arg(long, env = "NEXUS_EVENTS_MAX_DURATION", default_value = "1h", global = true)]
    pub events_max_duration: humantime::Duration,

    /// How many agents a new tenant may run.
    #[arg(long, env = "NEXUS_MAX_AGENTS", default_value_t = 50, global = true)]
    pub max_agents: u32,

    /// How many bytes of manifests one tenant may hold, all its agents' together (each
    /// counted as its compact JSON).
    #[arg(long, env = "NEXUS_MAX_TENANT_MANIFEST_BYTES", default_value_t = 16 * 1024 * 1024, global = true)]
    pub max_tenant_manifest_bytes: u64,

    /// How many tenants a user may own.
    #[arg(long, env = "NEXUS_MAX_TENANTS", default_value_t = 10, global = true)]
    pub max_tenants: u32,

    /// How many API keys a tenant may have.
    #[arg(long, env = "NEXUS_MAX_KEYS", default_value_t = 20, global = true)]
    pub max_keys: u32,

    /// How many versions are kept per agent; older ones are pruned, the newest always kept.
    #[arg(long, env = "NEXUS_MAX_VERSIONS", default_value_t = 100, global = true)]
    pub max_versions: u32,

    /// Log filter, in `tracing` syntax (`info`, `nexus=debug,info`...).
    #[arg(long, env = "NEXUS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "NEXUS_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// What one client can hold of the server.
    pub fn connection_limits(&self) -> crate::http::ConnectionLimits {
        crate::http::ConnectionLimits {
            header_read_timeout: self.header_read_timeout.into(),
            idle_timeout: self.idle_timeout.into(),
            request_timeout: self.request_timeout.into(),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            http2_max_streams: self.http2_max_streams,
            max_requests: usize::try_from(self.max_requests).unwrap_or(usize::MAX),
            body_budget: usize::try_from(self.body_budget).unwrap_or(usize::MAX),
        }
    }

    /// The most memory what clients send can make the process hold at once, beyond its
    /// idle footprint and the password hashes: every buffered body (`NEXUS_BODY_BUDGET`),
    /// every connection's buffers and every request's head and state. The README's memory
    /// budget is this formula.
    #[must_use]
    pub fn in_flight_memory_bound(&self) -> u64 {
        self.body_budget + u64::from(self.max_connections) * crate::http::CONNECTION_MEMORY + u64::from(self.max_requests) * crate::http::REQUEST_MEMORY
    }

    /// The defaults every flag declares, listening on a free loopback port with logging at
    /// `warn`, on `database_url`; no `NEXUS_*` variable is read. What tests and benchmarks
    /// start from, so a new option needs its default written once, in its `#[arg]`.
    ///
    /// # Panics
    /// Never for the declared defaults (a default that does not parse fails every test).
    #[must_use]
    pub fn local(database_url: &str) -> Self {
        let command = Self::augment_args(clap::Command::new("nexus")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["nexus"]).expect("the declared defaults parse");
        let mut config = Self::from_arg_matches(&matches).expect("the declared defaults are complete");
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url.to_owned();
        config.log = "warn".to_owned();
        config
    }
}

/// A CIDR, or a single address (a /32 or /128).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR (10.0.0.0/8) nor an address"))
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

/// Refuses `value` unless it is within `min..=max`, naming the option.
fn within<T: PartialOrd + std::fmt::Debug>(name: &str, value: T, min: T, max: T, shown: impl Fn(&T) -> String) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{name} must be between {} and {}; got {}", shown(&min), shown(&max), shown(&value)));
    }
    Ok(())
}

/// A duration as an operator would write it: whole days as `30d`, else `15m`, `100ms`...
fn shown(duration: &Duration) -> String {
    let secs = duration.as_secs();
    if secs > 0 && secs.is_multiple_of(DAY.as_secs()) && duration.subsec_nanos() == 0 {
        format!("{}d", secs / DAY.as_secs())
    } else {
        humantime::format_duration(*duration).to_string()
    }
}

fn duration_within(name: &str, value: humantime::Duration, min: Duration, max: Duration) -> Result<(), String> {
    within(name, *value, min, max, shown)
}

fn count_within<T: PartialOrd + std::fmt::Debug + std::fmt::Display>(name: &str, value: T, min: T, max: T) -> Result<(), String> {
    within(name, value, min, max, ToString::to_string)
}

impl ServeConfig {
    /// Refuses configuration that cannot work or makes no sense (a lifetime of a million
    /// days, a resync of a year, a short secret, a zero quota), with a message naming the
    /// option and its range: checked before anything starts, so that it fails at once
    /// rather than later.
    ///
    /// # Errors
    /// The first option out of range.
    pub fn check(&self) -> Result<(), String> {
        duration_within("NEXUS_ACCESS_TTL (--access-ttl)", self.access_ttl, SECOND, DAY)?;
        duration_within("NEXUS_REFRESH_TTL (--refresh-ttl)", self.refresh_ttl, SECOND, 365 * DAY)?;
        duration_within("NEXUS_SESSION_MAX (--session-max)", self.session_max, SECOND, 365 * DAY)?;
        duration_within("NEXUS_RESYNC (--resync)", self.resync, Duration::from_millis(100), DAY)?;
        count_within("NEXUS_RESYNC_RATE (--resync-rate)", self.resync_rate, 0, 1_000_000)?;
        duration_within("NEXUS_LOGIN_WINDOW (--login-window)", self.login_window, SECOND, DAY)?;
        duration_within("NEXUS_AUDIT_RETENTION (--audit-retention)", self.audit_retention, 60 * SECOND, 3650 * DAY)?;
        duration_within("NEXUS_RUN_TIMEOUT (--run-timeout)", self.run_timeout, Duration::from_millis(100), Duration::from_secs(3600))?;
        duration_within("NEXUS_EVENTS_POLL (--events-poll)", self.events_poll, Duration::from_millis(50), Duration::from_secs(60))?;
        duration_within("NEXUS_EVENTS_HEARTBEAT (--events-heartbeat)", self.events_heartbeat, SECOND, Duration::from_secs(300))?;
        duration_within("NEXUS_EVENTS_MAX_DURATION (--events-max-duration)", self.events_max_duration, SECOND, DAY)?;
        count_within("NEXUS_EVENTS_MAX_STREAMS (--events-max-streams)", self.events_max_streams, 1, 10_000)?;
        duration_within("NEXUS_HEADER_READ_TIMEOUT (--header-read-timeout)", self.header_read_timeout, Duration::from_millis(100), Duration::from_secs(3600))?;
        duration_within("NEXUS_IDLE_TIMEOUT (--idle-timeout)", self.idle_timeout, Duration::from_millis(100), DAY)?;
        duration_within("NEXUS_REQUEST_TIMEOUT (--request-timeout)", self.request_timeout, Duration::from_millis(100), DAY)?;
        count_within("NEXUS_MAX_CONNECTIONS (--max-connections)", self.max_connections, 1, 1_000_000)?;
        count_within("NEXUS_HTTP2_MAX_STREAMS (--http2-max-streams)", self.http2_max_streams, 1, 10_000)?;
        count_within("NEXUS_MAX_REQUESTS (--max-requests)", self.max_requests, 1, 1_000_000)?;
        // At least one manifest must fit, or no agent could ever be created.
        count_within("NEXUS_BODY_BUDGET (--body-budget)", self.body_budget, crate::http::BODY_LIMIT as u64, 1 << 40)?;
        duration_within("NEXUS_LEASE_DURATION (--lease-duration)", self.lease_duration, SECOND, Duration::from_secs(300))?;
        duration_within("NEXUS_LEASE_RENEW (--lease-renew)", self.lease_renew, Duration::from_millis(100), Duration::from_secs(100))?;
        if *self.lease_renew * 3 > *self.lease_duration {
            return Err(format!(
                "NEXUS_LEASE_RENEW (--lease-renew) must be at most a third of NEXUS_LEASE_DURATION (--lease-duration), {}; got {}",
                shown(&self.lease_duration),
                shown(&self.lease_renew)
            ));
        }
        if let Some(secret) = &self.jwt_secret {
            count_within("the length in bytes of NEXUS_JWT_SECRET (--jwt-secret)", secret.len(), nexus_crypto::MIN_SECRET_BYTES, 4096)?;
        }
        if let Some(hashes) = self.hash_concurrency {
            count_within("NEXUS_HASH_CONCURRENCY (--hash-concurrency)", hashes, 1, 1024)?;
        }
        count_within("NEXUS_HASH_QUEUE (--hash-queue)", self.hash_queue, 0, 100_000)?;
        count_within("NEXUS_AUTH_RATE (--auth-rate)", self.auth_rate, 0, 1_000_000)?;
        count_within("NEXUS_LOGIN_FAILURES (--login-failures)", self.login_failures, 0, 10_000)?;
        count_within("NEXUS_MAX_AGENTS (--max-agents)", self.max_agents, 1, 100_000)?;
        count_within("NEXUS_MAX_TENANT_MANIFEST_BYTES (--max-tenant-manifest-bytes)", self.max_tenant_manifest_bytes, 1024, 1 << 40)?;
        count_within("NEXUS_MAX_TENANTS (--max-tenants)", self.max_tenants, 1, 100_000)?;
        count_within("NEXUS_MAX_KEYS (--max-keys)", self.max_keys, 1, 10_000)?;
        count_within("NEXUS_MAX_VERSIONS (--max-versions)", self.max_versions, 1, 100_000)
    }
}

impl ServeConfig {
    /// The cluster backend: the one configured, or by default the one the database
    /// allows. PostgreSQL may be shared by several replicas, which must agree on
    /// statuses and elect one reconciler: `database`. SQLite serves one process:
    /// `memory`, with nothing to elect.
    pub fn cluster_kind(&self) -> ClusterKind {
        self.cluster.unwrap_or_else(|| {
            let url = self.database_url.to_ascii_lowercase();
            if url.starts_with("postgres://") || url.starts_with("postgresql://") { ClusterKind::Database } else { ClusterKind::Memory }
        })
    }
}

/// Which cluster backend runs tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterKind {
    Memory,
    Database,
    Kube,
}

/// How nodes are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeKind {
    Stub,
    Http,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServeConfig {
        ServeConfig::local("sqlite::memory:")
    }

    #[test]
    fn the_declared_defaults_pass_the_check() {
        let config = config();
        assert_eq!(config.check(), Ok(()));
        assert_eq!((config.max_tenants, config.max_keys, config.max_versions, config.auth_rate), (10, 20, 100, 60));
        assert_eq!((*config.session_max, *config.login_window, config.login_failures), (90 * DAY, Duration::from_secs(900), 10));
        assert!(config.trusted_proxies.is_empty());
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_option() {
        let days = |n: u64| humantime::Duration::from(Duration::from_secs(n * DAY.as_secs()));
        let cases: Vec<(ServeConfig, &str)> = vec![
            (ServeConfig { refresh_ttl: days(1_000_000), ..config() }, "NEXUS_REFRESH_TTL (--refresh-ttl) must be between 1s and 365d; got 1000000d"),
            (ServeConfig { access_ttl: Duration::ZERO.into(), ..config() }, "NEXUS_ACCESS_TTL"),
            (ServeConfig { session_max: days(400), ..config() }, "NEXUS_SESSION_MAX"),
            (ServeConfig { resync: days(1000), ..config() }, "NEXUS_RESYNC (--resync) must be between 100ms and 1d; got 1000d"),
            (ServeConfig { resync: Duration::from_millis(10).into(), ..config() }, "NEXUS_RESYNC"),
            (ServeConfig { login_window: days(2), ..config() }, "NEXUS_LOGIN_WINDOW"),
            (ServeConfig { events_poll: Duration::from_millis(1).into(), ..config() }, "NEXUS_EVENTS_POLL"),
            (ServeConfig { events_max_streams: 0, ..config() }, "NEXUS_EVENTS_MAX_STREAMS"),
            (ServeConfig { events_max_duration: days(2), ..config() }, "NEXUS_EVENTS_MAX_DURATION"),
            (ServeConfig { run_timeout: days(1), ..config() }, "NEXUS_RUN_TIMEOUT (--run-timeout) must be between 100ms and 1h; got 1d"),
            (ServeConfig { jwt_secret: Some("short".into()), ..config() }, "NEXUS_JWT_SECRET (--jwt-secret) must be between 32 and 4096; got 5"),
            (ServeConfig { hash_concurrency: Some(0), ..config() }, "NEXUS_HASH_CONCURRENCY"),
            (ServeConfig { hash_queue: 1_000_000, ..config() }, "NEXUS_HASH_QUEUE"),
            (ServeConfig { max_tenants: 0, ..config() }, "NEXUS_MAX_TENANTS (--max-tenants) must be between 1 and 100000; got 0"),
            (ServeConfig { max_keys: 0, ..config() }, "NEXUS_MAX_KEYS"),
            (ServeConfig { max_versions: 0, ..config() }, "NEXUS_MAX_VERSIONS"),
            (ServeConfig { max_agents: 0, ..config() }, "NEXUS_MAX_AGENTS"),
            (ServeConfig { auth_rate: 10_000_000, ..config() }, "NEXUS_AUTH_RATE"),
            (ServeConfig { http2_max_streams: 0, ..config() }, "NEXUS_HTTP2_MAX_STREAMS (--http2-max-streams) must be between 1 and 10000; got 0"),
            (ServeConfig { max_requests: 0, ..config() }, "NEXUS_MAX_REQUESTS"),
            (ServeConfig { body_budget: 1000, ..config() }, "NEXUS_BODY_BUDGET (--body-budget) must be between 1048576 and 1099511627776; got 1000"),
            (ServeConfig { login_failures: 20_000, ..config() }, "NEXUS_LOGIN_FAILURES"),
            (
                ServeConfig { lease_duration: Duration::from_millis(500).into(), ..config() },
                "NEXUS_LEASE_DURATION (--lease-duration) must be between 1s and 5m",
            ),
            (
                ServeConfig { lease_renew: Duration::from_secs(4).into(), ..config() },
                "NEXUS_LEASE_RENEW (--lease-renew) must be at most a third of NEXUS_LEASE_DURATION (--lease-duration), 8s; got 4s",
            ),
        ];
        for (config, expected) in cases {
            let refusal = config.check().unwrap_err();
            assert!(refusal.contains(expected), "{refusal:?} should contain {expected:?}");
        }
        assert_eq!(ServeConfig { auth_rate: 0, login_failures: 0, hash_queue: 0, ..config() }.check(), Ok(()), "0 turns a limit off");
    }

    #[test]
    fn the_default_cluster_follows_the_database() {
        assert_eq!(config().cluster_kind(), ClusterKind::Memory, "SQLite serves one process");
        assert_eq!(ServeConfig::local("sqlite://nexus.db").cluster_kind(), ClusterKind::Memory);
        assert_eq!(ServeConfig::local("postgres://u@h/db").cluster_kind(), ClusterKind::Database, "replicas share PostgreSQL");
        assert_eq!(ServeConfig::local("postgresql://u@h/db").cluster_kind(), ClusterKind::Database);
        let chosen = ServeConfig { cluster: Some(ClusterKind::Memory), ..ServeConfig::local("postgres://u@h/db") };
        assert_eq!(chosen.cluster_kind(), ClusterKind::Memory, "a configured backend wins");
        let parsed = Cli::try_parse_from(["nexus", "--cluster", "database"]).unwrap().serve;
        assert_eq!((parsed.cluster, *parsed.lease_duration, *parsed.lease_renew), (Some(ClusterKind::Database), 8 * SECOND, 2 * SECOND));
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let parsed = Cli::try_parse_from(["nexus", "--trusted-proxies", "10.0.0.0/8, 192.0.2.7,2001:db8::/32"]).unwrap().serve.trusted_proxies;
        assert_eq!(parsed, vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7/32".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
        let refused = Cli::try_parse_from(["nexus", "--trusted-proxies", "10.0.0.0/33"]).unwrap_err().to_string();
        assert!(refused.contains("neither a CIDR"), "{refused}");
    }
}
