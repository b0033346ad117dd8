//! The composition root: builds the adapters the configuration names and wires them into
//! the use cases ([`wire`]), then brings the service up ([`start`]). The only module that
//! sees every adapter.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures_util::StreamExt;
use nexus_cluster_kube::{KubeCluster, KubeSettings};
use nexus_cluster_memory::MemoryCluster;
use nexus_crypto::{Argon2Hasher, JwtAccessTokens, OsSecrets};
use nexus_node_http::HttpNode;
use nexus_node_stub::StubNode;
use nexus_ports::audit::CursorKey;
use nexus_ports::ports::{AccessTokens, ChangeFeed, Clock, ClusterBackend, HealthCheck, NodeProxy, SecretGenerator, SettingsStore};
use nexus_ports::{Error, Result};
use nexus_store_sea_orm::{SqlChangeFeed, SqlLease, SqlStore, SqliteLock};

use crate::app::housekeeping::PRUNE_EVERY;
use crate::app::key_usage::FLUSH_EVERY;
use crate::app::{
    AccessPorts, AccessService, AgentLimits, AgentPorts, AgentService, AuthThrottle, Changes, EventSettings, Housekeeping, IdentityPorts, IdentityService,
    KeyUsage, LoginLimit, Nexus, Quotas, Readiness, ReconcilePorts, Reconciler, Refusals, SessionPolicy, SharedNexus, TenancyPorts, TenancyService,
};
use crate::config::{ClusterKind, NodeKind, ServeConfig};

/// Settings key of the generated JWT secret.
const JWT_SECRET_KEY: &str = "jwt_secret";

/// The wall clock, to the microsecond: the precision PostgreSQL keeps, so a timestamp
/// reads back as it was written.
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        now.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(now)
    }
}

/// The configured signing secret, or the one generated once and kept in the database.
async fn jwt_secret(config: &ServeConfig, store: &SqlStore) -> Result<String> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.clone());
    }
    tracing::warn!("NEXUS_JWT_SECRET is not set: signing tokens with a generated secret kept in the database");
    let candidate = OsSecrets.generate("")?;
    store.get_or_insert_setting(JWT_SECRET_KEY, candidate.expose()).await
}

/// A duration [`ServeConfig::check`] has bounded, for date arithmetic.
fn lifetime(value: humantime::Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(*value).map_err(Error::internal)
}

/// The service wired from its configuration but not started: no background task runs and
/// nothing has been written to the cluster. [`start`] brings it up.
pub struct Wiring {
    nexus: SharedNexus,
    reconciler: Arc<Reconciler>,
    housekeeping: Housekeeping,
    election: Election,
    feed: Arc<SqlChangeFeed>,
    changes: Arc<Changes>,
}

/// How the replica that reconciles is chosen.
enum Election {
    /// One process: it reconciles.
    Alone,
    /// The replica holding the database's lease, renewed this often.
    Database { lease: SqlLease, renew: std::time::Duration },
    /// The replica holding the Kubernetes Lease, with its timing.
    Kube(Box<KubeCluster>, nexus_cluster_kube::LeaseTiming),
}

/// The Kubernetes Lease's timing from the configuration: lasting `--lease-duration`,
/// renewed (and looked at by followers) every `--lease-renew`; the leader stops leading a
/// renewal period before its lease could expire unrenewed.
fn kube_lease_timing(config: &ServeConfig) -> nexus_cluster_kube::LeaseTiming {
    let (duration, renew) = (*config.lease_duration, *config.lease_renew);
    nexus_cluster_kube::LeaseTiming { duration, grace: renew, renew_every: renew, retry_every: renew }
}

/// A name for this process among the replicas: unique per process, so that a restarted
/// container waits for its predecessor's lease.
fn replica_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "nexus".to_owned());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Wires the service from its configuration ([`wire`]) and starts it ([`start`]).
///
/// # Errors
/// Those of [`wire`] and [`start`].
pub async fn build(config: &ServeConfig) -> Result<SharedNexus> {
    start(wire(config).await?).await
}

/// Builds the adapters the configuration names and wires every use case to them. It
/// connects (the store runs its migrations; the Kubernetes client checks the cluster) but
/// starts nothing.
///
/// # Errors
/// [`Error::InvalidRequest`] for configuration out of range ([`ServeConfig::check`],
/// before anything is touched); [`Error::Unavailable`] when the database or the cluster
/// cannot be reached.
pub async fn wire(config: &ServeConfig) -> Result<Wiring> {
    config.check().map_err(Error::InvalidRequest)?;
    let (access_ttl, refresh_ttl, session_max) = (lifetime(config.access_ttl)?, lifetime(config.refresh_ttl)?, lifetime(config.session_max)?);
    let login_limit = LoginLimit { max_failures: config.login_failures, window: lifetime(config.login_window)? };
    // Before anything touches a SQLite file: another process serving it is refused.
    let sqlite_lock: Option<SqliteLock> = nexus_store_sea_orm::lock_sqlite(&config.database_url).await?;
    let store = Arc::new(SqlStore::connect(&config.database_url).await?);
    let feed = Arc::new(store.change_feed().await?);
    let changes = Arc::new(Changes::new(feed.clone()));
    let secret = jwt_secret(config, &store).await?;
    let access_tokens: Arc<dyn AccessTokens> = Arc::new(JwtAccessTokens::new(secret.as_bytes(), access_ttl)?);
    // Audit cursors are sealed with a key every replica derives alike.
    let cursors = CursorKey::derive(secret.as_bytes());
    // By default one core is left to everything else, so that a login flood cannot take
    // every core from the other requests.
    let hash_concurrency = config.hash_concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from).saturating_sub(1).max(1));
    let (cluster, cluster_health, election): (Arc<dyn ClusterBackend>, Arc<dyn HealthCheck>, Election) = match config.cluster_kind() {
        ClusterKind::Memory => {
            let memory = Arc::new(MemoryCluster::new(config.node_url.clone()));
            (memory.clone(), memory, Election::Alone)
        }
        ClusterKind::Database => {
            let held = Arc::new(store.cluster(config.node_url.clone()));
            let lease = store.lease(replica_identity(), *config.lease_duration);
            (held.clone(), held, Election::Database { lease, renew: *config.lease_renew })
        }
        ClusterKind::Kube => {
            let settings = KubeSettings { system_namespace: config.system_namespace.clone(), node_image: config.node_image.clone() };
            let kube = KubeCluster::connect(settings).await?;
            let shared = Arc::new(kube.clone());
            (shared.clone(), shared, Election::Kube(Box::new(kube), kube_lease_timing(config)))
        }
    };
    let node: Arc<dyn NodeProxy> = match config.node {
        NodeKind::Stub => Arc::new(StubNode::new()),
        NodeKind::Http => Arc::new(HttpNode::new()?),
    };
    let node: Arc<dyn NodeProxy> = Arc::new(crate::metered_node::MeteredNode::new(node));
    let resync = *config.resync;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let secrets: Arc<dyn SecretGenerator> = Arc::new(OsSecrets);
    let key_usage = Arc::new(KeyUsage::new(store.clone()));
    let refusals = Arc::new(Refusals::new(store.clone(), store.clone(), changes.clone(), clock.clone()));
    let hasher = Arc::new(Argon2Hasher::new(hash_concurrency, config.hash_queue)?);

    let identity = IdentityService::new(
        IdentityPorts {
            users: store.clone(),
            refresh_tokens: store.clone(),
            login_attempts: store.clone(),
            hasher,
            access_tokens: access_tokens.clone(),
            secrets: secrets.clone(),
            clock: clock.clone(),
            audit: store.clone(),
            changes: changes.clone(),
        },
        SessionPolicy { refresh_ttl, session_max, login_limit },
    )
    .with_refusals(refusals.clone())
    .with_cursor_key(cursors.clone());
    let access = AccessService::new(AccessPorts {
        tokens: access_tokens,
        users: store.clone(),
        sessions: store.clone(),
        keys: store.clone(),
        tenants: store.clone(),
        clock: clock.clone(),
        usage: key_usage.clone(),
        changes: changes.clone(),
    })
    .with_refusals(refusals.clone());
    let quotas = Quotas { max_tenants: config.max_tenants, max_keys: config.max_keys, max_agents: config.max_agents };
    let reconciler = Arc::new(
        Reconciler::new(
            ReconcilePorts { cluster: cluster.clone(), node: node.clone(), agents: store.clone(), tenants: store.clone(), clock: clock.clone() },
            resync,
        )
        .with_resync_rate(config.resync_rate),
    );
    let tenancy = TenancyService::new(
        TenancyPorts {
            tenants: store.clone(),
            keys: store.clone(),
            cluster: cluster.clone(),
            secrets,
            clock: clock.clone(),
            usage: key_usage.clone(),
            audit: store.clone(),
            users: store.clone(),
            changes: changes.clone(),
        },
        quotas,
    )
    .with_waker(reconciler.waker())
    .with_refusals(refusals.clone())
    .with_cursor_key(cursors);
    // On Kubernetes only the leader writes tenants' resources: a tenant created through any
    // replica is provisioned by the leader's loop, which the change feed wakes.
    let tenancy = if matches!(election, Election::Kube(..)) { tenancy.leaving_provisioning_to_the_leader() } else { tenancy };
    let housekeeping = Housekeeping {
        refresh_tokens: store.clone(),
        login_attempts: store.clone(),
        audit: store.clone(),
        clock: clock.clone(),
        login_window: login_limit.window,
        audit_retention: lifetime(config.audit_retention)?,
    };
    let agents = AgentService::new(
        AgentPorts { agents: store.clone(), cluster, node, clock, changes: changes.clone() },
        reconciler.clone(),
        AgentLimits { max_versions: config.max_versions, max_manifest_bytes: config.max_tenant_manifest_bytes },
    )
    .with_run_timeout(*config.run_timeout)
    .with_events(EventSettings {
        poll: *config.events_poll,
        heartbeat: *config.events_heartbeat,
        max_streams: config.events_max_streams,
        max_duration: *config.events_max_duration,
    });
    let readiness = Readiness::new(vec![store as Arc<dyn HealthCheck>, cluster_health]);
    let auth_throttle = AuthThrottle::new(config.auth_rate, config.trusted_proxies.clone());
    // The file stays locked until the service has stopped.
    let on_shutdown: Vec<futures_util::future::BoxFuture<'static, ()>> = match sqlite_lock {
        Some(lock) => vec![Box::pin(async move { drop(lock) })],
        None => vec![],
    };
    let nexus = Arc::new(Nexus {
        identity,
        access,
        tenancy,
        agents,
        readiness,
        key_usage,
        refusals,
        auth_throttle,
        background: Mutex::default(),
        on_shutdown: Mutex::new(on_shutdown),
    });
    Ok(Wiring { nexus, reconciler, housekeeping, election, feed, changes })
}

/// Brings a wired service up: on the in-memory cluster, stored tenants are provisioned
/// and the registry's agents applied before serving; then the background tasks start (the
/// key-usage writer; the pruning of spent refresh tokens and login attempts; the change
/// feed's relay and what follows it; the reconcile loop). With several replicas (the
/// database-held cluster, or Kubernetes) nothing is written to the cluster before
/// leadership is known: the loop runs only while this replica holds the lease, and its
/// first pass provisions the tenants and applies the registry; changes made through any
/// replica wake it (through the change feed, and on Kubernetes the watches).
///
/// Start-up never fails on what is stored: an agent that cannot be applied is left to
/// the loop (which reports it on that agent), and a registry that cannot be read now is
/// applied by the loop's next timed pass.
///
/// # Errors
/// None today; kept for what starting may need to refuse.
pub async fn start(wiring: Wiring) -> Result<SharedNexus> {
    let Wiring { nexus, reconciler, housekeeping, election, feed, changes } = wiring;
    crate::http::metrics::install();
    if matches!(election, Election::Alone) {
        let tenants = reconciler.reconcile_tenants().await.len();
        match reconciler.apply_registry().await {
            Ok(agents) => tracing::info!(tenants, agents, "stored tenants and agents applied to the cluster"),
            Err(err) => tracing::warn!(tenants, error = %err, "cannot read the agent registry yet; the reconcile loop applies it"),
        }
    }
    let mut background = vec![
        tokio::spawn(nexus.key_usage.clone().run(FLUSH_EVERY)),
        tokio::spawn(nexus.refusals.clone().run(crate::app::refusals::FLUSH_EVERY)),
        tokio::spawn(housekeeping.run(PRUNE_EVERY)),
        tokio::spawn(crate::app::leadership::wake_on_changes(reconciler.clone(), feed.subscribe())),
        tokio::spawn(feed.relay()),
        tokio::spawn(changes.follow()),
    ];
    match election {
        Election::Alone => background.push(tokio::spawn(reconciler.run())),
        // Every replica serves the API and wakes on changes; the one holding the lease reconciles.
        Election::Database { lease, renew } => {
            let (tell, leading) = tokio::sync::watch::channel(None);
            background.push(tokio::spawn(lease.clone().campaign(renew, tell)));
            background.push(tokio::spawn(crate::app::leadership::reconcile_while_leading(reconciler, leading)));
            // A replica that stops cleanly lets another take over at once.
            nexus.on_shutdown.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Box::pin(async move {
                if let Err(err) = lease.release().await {
                    tracing::warn!(error = %err, "could not give the leader lease up; it ends by itself");
                }
            }));
        }
        Election::Kube(kube, timing) => {
            let leading = kube.leadership_with(&replica_identity(), timing);
            let waker = reconciler.waker();
            background.push(tokio::spawn(kube.changes().for_each(move |change| {
                waker.wake(change);
                async {}
            })));
            background.push(tokio::spawn(crate::app::leadership::reconcile_while_leading(reconciler, leading)));
        }
    }
    nexus.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(background);
    Ok(nexus)
}
