//! Command line and environment configuration. Every flag has an environment variable;
//! the flag wins when both are given.

use std::net::SocketAddr;

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Nexus: the multi-tenant control plane for Astromesh AI agents.
#[derive(Debug, Parser)]
#[command(name = "nexus", version, about)]
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

    /// How many password hashes may run at once (default: the number of CPUs).
    #[arg(long, env = "NEXUS_HASH_CONCURRENCY", global = true)]
    pub hash_concurrency: Option<usize>,

    /// Where tenants' nodes and agents run. `memory`: in this process, for local
    /// development and tests; `kube`: a Kubernetes cluster (in-cluster configuration or
    /// KUBECONFIG), with NexusTenant and NexusAgent resources.
    #[arg(long, env = "NEXUS_CLUSTER", value_enum, default_value = "memory", global = true)]
    pub cluster: ClusterKind,

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

    /// How often running agents are resynced with their node (and the loop runs without events).
    #[arg(long, env = "NEXUS_RESYNC", default_value = "60s", global = true)]
    pub resync: humantime::Duration,

    /// The astromesh-node every tenant uses with the in-memory cluster.
    #[arg(long, env = "NEXUS_NODE_URL", default_value = "http://127.0.0.1:8000", global = true)]
    pub node_url: String,

    /// How many agents a new tenant may run.
    #[arg(long, env = "NEXUS_MAX_AGENTS", default_value_t = 50, global = true)]
    pub max_agents: u32,

    /// Log filter, in `tracing` syntax (`info`, `nexus=debug,info`...).
    #[arg(long, env = "NEXUS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "NEXUS_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

impl ServeConfig {
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

/// Which cluster backend runs tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterKind {
    Memory,
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
