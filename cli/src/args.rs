//! The command line: every verb, its flags, and an example in its help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Options every verb takes. Flags win over environment variables, which win over the
/// current context.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The Nexus server's URL [env: NEXUS_SERVER; default: the context's]
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// The tenant agents and keys belong to [env: NEXUS_TENANT; default: the context's]
    #[arg(long, global = true, value_name = "TENANT_ID")]
    pub tenant: Option<String>,
    /// The context to use instead of the current one [env: NEXUS_CONTEXT]
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// The nexus command-line client: log in once, apply a folder of agent manifests, watch
/// them run.
///
/// Credentials and contexts are kept in the user's config folder ($NEXUS_CONFIG_DIR, or
/// $XDG_CONFIG_HOME/nexus, or ~/.config/nexus), readable by the owner only. In CI no
/// file is needed: NEXUS_SERVER, NEXUS_API_KEY and NEXUS_TENANT are enough.
#[derive(Debug, Parser)]
#[command(name = "nexus", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Log in to a server and keep the session in a context.
    #[command(
        after_help = "Examples:\n  nexus login --server http://localhost:8080 --email admin@example.com\n  echo \"$PASSWORD\" | nexus login --server https://nexus.example --email ci@example.com --password-stdin --context prod\n\nThe session is kept in the context --context names (created when new; by default one\nnamed after the server's host and port), which becomes the current one."
    )]
    Login(LoginArgs),
    /// Create an account on a server, then log in with it.
    #[command(after_help = "Example:\n  nexus register --server http://localhost:8080 --email admin@example.com --display-name Admin")]
    Register(RegisterArgs),
    /// End the current context's session on the server and forget its tokens.
    #[command(after_help = "Example:\n  nexus logout")]
    Logout,
    /// Show who the credentials in use belong to, and the tenant they act on.
    #[command(after_help = "Example:\n  nexus whoami")]
    Whoami(OutputArgs),
    /// Named contexts: a server, a login and a tenant each.
    #[command(subcommand, after_help = "Examples:\n  nexus context list\n  nexus context use prod\n  nexus context set-tenant t_0123456789abcdef")]
    Context(ContextVerb),
    /// Create, list and delete tenants (a user's login is needed).
    #[command(subcommand, after_help = "Examples:\n  nexus tenants create \"My Organisation\" --use\n  nexus tenants list")]
    Tenants(TenantsVerb),
    /// Create, list and revoke a tenant's API keys (a user's login is needed).
    #[command(subcommand, after_help = "Examples:\n  nexus keys create --label ci\n  export NEXUS_API_KEY=$(nexus keys create --label ci -o name)")]
    Keys(KeysVerb),
    /// Bring agent manifests (a file, a folder, or - for standard input) to the server.
    #[command(
        after_help = "Each agent is created when new, updated when its manifest differs (sent with If-Match\nof the version it was compared with), and left alone when equal; one line per agent.\n\nExamples:\n  nexus apply -f examples/\n  nexus apply -f support-bot.yaml --dry-run\n  nexus apply -f agents/ --prune --yes\n  cat agents.yaml | nexus apply -f -"
    )]
    Apply(ApplyArgs),
    /// List agents, or show one.
    #[command(after_help = "Examples:\n  nexus get agents\n  nexus get agents -o wide\n  nexus get agents support-bot -o yaml")]
    Get(GetArgs),
    /// Show an agent in detail: its spec summary, status, node name and recent versions.
    #[command(after_help = "Example:\n  nexus describe agent support-bot")]
    Describe(DescribeArgs),
    /// Delete an agent.
    #[command(after_help = "Example:\n  nexus delete agent support-bot")]
    Delete(DeleteArgs),
    /// Print an agent's execution traces from its node, newest first.
    #[command(after_help = "Example:\n  nexus logs support-bot --since 1h --lines 20")]
    Logs(LogsArgs),
    /// Follow an agent's status changes until interrupted (or the agent is deleted).
    #[command(after_help = "Example:\n  nexus events support-bot")]
    Events(EventsArgs),
    /// Run an agent once with a query and print its answer.
    #[command(after_help = "Example:\n  nexus run support-bot \"Where is my order?\" --session customer-42")]
    Run(RunArgs),
    /// List an agent's kept versions, oldest first.
    #[command(after_help = "Example:\n  nexus versions support-bot")]
    Versions(VersionsArgs),
    /// Publish a kept version's manifest again, as a new version.
    #[command(after_help = "Example:\n  nexus rollback support-bot --to 1")]
    Rollback(RollbackArgs),
    /// Wait until an agent meets a condition (for pipelines); exit 1 on timeout.
    #[command(after_help = "Example:\n  nexus wait agent support-bot --for phase=Running --timeout 60s")]
    Wait(WaitArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  nexus completion bash > /etc/bash_completion.d/nexus\n  nexus completion zsh > \"${fpath[1]}/_nexus\"\n  nexus completion fish > ~/.config/fish/completions/nexus.fish"
    )]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The account's email (asked when omitted).
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of standard input instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub login: LoginArgs,
    /// The name shown for the account.
    #[arg(long)]
    pub display_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ContextVerb {
    /// List the contexts; the current one is marked with *.
    #[command(after_help = "Example:\n  nexus context list")]
    List(OutputArgs),
    /// Make a context the current one.
    #[command(after_help = "Example:\n  nexus context use prod")]
    Use {
        /// The context's name.
        name: String,
    },
    /// Print the current context's name.
    #[command(after_help = "Example:\n  nexus context current")]
    Current,
    /// Set the tenant of the current context (or of --context).
    #[command(after_help = "Example:\n  nexus context set-tenant t_0123456789abcdef")]
    SetTenant {
        /// The tenant's id.
        tenant: String,
    },
    /// Create a context sharing the current one's login, for another tenant.
    #[command(after_help = "Example:\n  nexus context create staging --tenant t_0123456789abcdef")]
    Create {
        /// The new context's name.
        name: String,
    },
    /// Forget a context (its session stays while other contexts use it).
    #[command(after_help = "Example:\n  nexus context delete old")]
    Delete {
        /// The context's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsVerb {
    /// Create a tenant.
    #[command(after_help = "Example:\n  nexus tenants create \"My Organisation\" --profile full --use")]
    Create {
        /// The tenant's display name.
        display_name: String,
        /// The node profile (full, gateway, inference).
        #[arg(long)]
        profile: Option<String>,
        /// Make it the current context's tenant.
        #[arg(long = "use")]
        use_it: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the caller's tenants, oldest first.
    #[command(after_help = "Example:\n  nexus tenants list -o json")]
    List(OutputArgs),
    /// Delete a tenant, its keys and its agents.
    #[command(after_help = "Example:\n  nexus tenants delete t_0123456789abcdef")]
    Delete {
        /// The tenant's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysVerb {
    /// Create an API key of the tenant; the raw key is printed this once.
    #[command(
        after_help = "Examples:\n  nexus keys create --label ci\n  nexus keys create --label dashboard --scope read --expires 2027-01-01T00:00:00Z\n  export NEXUS_API_KEY=$(nexus keys create --label ci -o name)"
    )]
    Create {
        /// What the key is for.
        #[arg(long)]
        label: String,
        /// write (the default) or read (GET requests only).
        #[arg(long)]
        scope: Option<KeyScope>,
        /// When the key stops working (RFC 3339).
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the tenant's keys (never a raw key).
    #[command(after_help = "Example:\n  nexus keys list")]
    List(OutputArgs),
    /// Revoke a key: it stops working at once.
    #[command(after_help = "Example:\n  nexus keys revoke 3f2a...   # the hash nexus keys list shows")]
    Revoke {
        /// The key's hash.
        hash: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyScope {
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns with more of them.
    Wide,
    /// The API's objects as JSON.
    Json,
    /// The API's objects as YAML.
    Yaml,
    /// `kind/name` per line (the raw key for nexus keys create).
    Name,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format [default: a table for people]
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Option<Output>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a folder (searched recursively for *.yaml, *.yml, *.json), or - for
    /// standard input. Files may hold several YAML documents.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Print what would change, with a diff of each manifest, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the tenant's agents that are not in PATH (listed first, and asked unless --yes).
    #[arg(long)]
    pub prune: bool,
    /// Do not ask before pruning.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    #[value(alias = "agent")]
    Agents,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SingleKind {
    #[value(alias = "agents")]
    Agent,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to get.
    pub kind: Kind,
    /// One agent's name (all of the tenant's agents when omitted).
    pub name: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    pub kind: SingleKind,
    /// The agent's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub kind: SingleKind,
    /// The agent's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The agent's name.
    pub name: String,
    /// Only traces newer than this (a duration such as 90s, 15m, 1h; or an RFC 3339 time).
    #[arg(long)]
    pub since: Option<String>,
    /// How many traces at most (1 to 1000).
    #[arg(long)]
    pub lines: Option<u32>,
    /// Only traces of this level.
    #[arg(long)]
    pub level: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The agent's name.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent's name.
    pub name: String,
    /// What to ask it.
    pub query: String,
    /// A session id, so the node keeps the conversation.
    #[arg(long)]
    pub session: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The agent's name.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The agent's name.
    pub name: String,
    /// The version number to publish again (as nexus versions lists them).
    #[arg(long)]
    pub to: u64,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    pub kind: SingleKind,
    /// The agent's name.
    pub name: String,
    /// The condition: phase=PHASE (Pending, Deploying, Running, Failed), or delete.
    #[arg(long = "for", value_name = "CONDITION")]
    pub condition: String,
    /// How long to wait at most (30s, 5m...).
    #[arg(long, default_value = "60s")]
    pub timeout: humantime::Duration,
}
