//! The ports: what the core needs from the outside world, named by capability.
//!
//! Stores return [`Error::Unavailable`] when their backend cannot be reached and
//! [`Error::Internal`] for anything unexpected; the further variants each method may return
//! are listed under its `# Errors`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[allow(unused_imports)] // named in the docs
use crate::Error;
use crate::Result;
use serde_json::Value;

use crate::agents::{Agent, AgentManifest, AgentName, AgentObject, AgentQuota, AgentStatus, AgentSummary, AgentVersion, PublishedVersion, UpdateLimits};
use crate::audit::{AuditCursor, AuditEvent, AuditPage};
use crate::changes::Change;
use crate::identity::{AttemptWindow, Email, NewUser, Password, PasswordHash, User, UserCredentials, UserId};
use crate::leadership::Fence;
use crate::node_names::{NodeAgent, NodeSharing};
use crate::tenancy::{ApiKey, KeyLabel, Tenant, TenantId, TenantStatus};
use crate::tokens::{AccessClaims, AccessToken, FamilyId, OpaqueSecret, RefreshTokenRecord, Replacement, Rotation, SecretDigest};

/// Users and their credentials.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores a new user, and `audit` with it.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a user with the same (normalised) email exists.
    async fn insert_user(&self, user: &NewUser, audit: &AuditEvent) -> Result<()>;

    /// The user with this email and its password hash, if any.
    async fn find_credentials(&self, email: &Email) -> Result<Option<UserCredentials>>;

    /// The user with this id, if any.
    async fn find_user(&self, id: &UserId) -> Result<Option<User>>;

    /// Replaces the user's password hash and, in the same step, ends every session of the
    /// user at `at` as [`UserStore::end_sessions`] does; records `audit` in the same step.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such user.
    async fn change_password(&self, user: &UserId, hash: &PasswordHash, at: DateTime<Utc>, audit: &AuditEvent) -> Result<()>;

    /// Ends every session of the user at `at`, in one step: each of its live refresh tokens
    /// is revoked, and `at` becomes the moment before which its access tokens are refused
    /// (by every process sharing the store). Records `audit` in the same step.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such user.
    async fn end_sessions(&self, user: &UserId, at: DateTime<Utc>, audit: &AuditEvent) -> Result<()>;

    /// The moment before which the user's access tokens are refused: when its sessions
    /// were last ended. `None` when they never were (or there is no such user).
    async fn sessions_valid_after(&self, user: &UserId) -> Result<Option<DateTime<Utc>>>;
}

/// Login attempts per account, counted in fixed windows, shared by every process using
/// the store so that guesses spread over replicas add up. Accounts are named by email,
/// registered or not (so that the limit says nothing about which emails have accounts),
/// and stored only as digests.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait LoginAttemptStore: Send + Sync + 'static {
    /// Counts one attempt for `account`, atomically, and returns its window after counting.
    /// A window that began before `window_from` is over: the attempt begins a new one at
    /// `now`, counted as 1.
    async fn count_login_attempt(&self, account: &Email, now: DateTime<Utc>, window_from: DateTime<Utc>) -> Result<AttemptWindow>;

    /// Forgets the account's attempts (after a successful login).
    async fn clear_login_attempts(&self, account: &Email) -> Result<()>;

    /// Deletes the windows that began before `window_from`; returns how many.
    async fn prune_login_attempts(&self, window_from: DateTime<Utc>) -> Result<u64>;
}

/// Refresh tokens, by digest.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Stores a new token (the first of a family, at login or registration), and `audit`
    /// with it when given.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the digest is already stored.
    async fn insert_refresh_token<'a>(&self, token: &RefreshTokenRecord, audit: Option<&'a AuditEvent>) -> Result<()>;

    /// Rotates the token with digest `presented` as one atomic step: when it is live (not
    /// revoked, not expired at `now`, its session not over) it is revoked and
    /// `replacement` joins its family, expiring no later than the session. Of any number
    /// of concurrent rotations of one token, across processes sharing the store, exactly
    /// one sees [`Rotation::Rotated`].
    async fn rotate_refresh_token(&self, presented: &SecretDigest, replacement: &Replacement, now: DateTime<Utc>) -> Result<Rotation>;

    /// Revokes every live token of a family, recording `audit` in the same step when
    /// given; returns how many it revoked.
    async fn revoke_family<'a>(&self, family: &FamilyId, now: DateTime<Utc>, audit: Option<&'a AuditEvent>) -> Result<u64>;

    /// Whether the session `family` goes on: some token of it is not revoked. A family that
    /// was logged out, revoked by reuse detection, ended with every session of its user, or
    /// pruned, does not.
    async fn session_is_live(&self, family: &FamilyId) -> Result<bool>;

    /// The family of the stored token with this digest (live or not), and its user, if any.
    async fn family_of(&self, digest: &SecretDigest) -> Result<Option<(FamilyId, UserId)>>;

    /// Deletes the tokens no one can use any more: those expired at `now`, and every token
    /// of a family with no live token left. Returns how many it deleted. Rotated tokens of
    /// a live family are kept, so that presenting one still revokes its family.
    async fn prune_refresh_tokens(&self, now: DateTime<Utc>) -> Result<u64>;
}

/// Tenants and who owns them.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Stores a new tenant, unless its owner already owns `max_tenants`. The count and the
    /// insert are one atomic step: racing inserts never exceed the quota. Records `audit`
    /// in the same step.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the id is taken; [`Error::NotFound`] when its owner
    /// does not exist; [`Error::Conflict`] when the quota is reached.
    async fn insert_tenant(&self, tenant: &Tenant, max_tenants: u32, audit: &AuditEvent) -> Result<()>;

    /// The tenant with this id, if any.
    async fn find_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;

    /// The tenants a user owns, oldest first.
    async fn list_tenants_of(&self, owner: &UserId) -> Result<Vec<Tenant>>;

    /// Every tenant, oldest first (to re-apply them to the cluster at start-up).
    async fn list_all_tenants(&self) -> Result<Vec<Tenant>>;

    /// Deletes a tenant and, in the same step, its API keys and agents, recording `audit`
    /// when it existed; whether it did.
    async fn delete_tenant(&self, id: &TenantId, audit: &AuditEvent) -> Result<bool>;
}

/// Tenant-scoped API keys, by digest.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a new key, unless its tenant already has `max_keys`. The count and the insert
    /// are one atomic step: racing inserts never exceed the quota. Records `audit` in the
    /// same step.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the digest is stored already; [`Error::NotFound`] when
    /// its tenant does not exist; [`Error::Conflict`] when the quota is reached.
    async fn insert_key(&self, key: &ApiKey, max_keys: u32, audit: &AuditEvent) -> Result<()>;

    /// The key with this digest and its tenant, in one indexed lookup.
    async fn find_key(&self, digest: &SecretDigest) -> Result<Option<(ApiKey, Tenant)>>;

    /// A tenant's keys, oldest first.
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>>;

    /// Deletes a key of the tenant, recording `audit` when it existed there, and
    /// remembering its digest, tenant and label (see [`Self::find_revoked_key`]); whether
    /// it existed.
    async fn delete_key(&self, tenant: &TenantId, digest: &SecretDigest, audit: &AuditEvent) -> Result<bool>;

    /// The tenant and label of a revoked key, while the audit trail's retention keeps them.
    async fn find_revoked_key(&self, digest: &SecretDigest) -> Result<Option<(TenantId, KeyLabel)>>;

    /// Records when keys were last used, keeping the later time where one is stored already.
    /// Keys that no longer exist are passed over.
    async fn record_key_usage(&self, usage: &[(SecretDigest, DateTime<Utc>)]) -> Result<()>;
}

/// The agent registry: every tenant's agents with their manifests and version history,
/// the durable record the cluster is re-applied from.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Registers a new agent as version 1 (whatever its `version_number` says), unless the
    /// tenant already runs `quota.max_agents`, or its manifests would then take more than
    /// `quota.max_manifest_bytes` ([`AgentManifest::size`] summed over its agents' current
    /// manifests). The quota checks and the insert are one atomic step, which records
    /// `audit` too.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the tenant has an agent of that name;
    /// [`Error::Conflict`] when a quota is reached; [`Error::NotFound`] when the tenant
    /// does not exist.
    async fn insert_agent(&self, agent: &Agent, author: &str, quota: AgentQuota, audit: &AuditEvent) -> Result<()>;

    /// Replaces an agent's manifest and appends a version numbered one past the last
    /// (keeping the manifest with it); then keeps only the newest `limits.keep_versions`
    /// (at least the new one), in the same step. Numbers are never reused while the agent
    /// exists. With `expected`, only when the agent's current version is that number;
    /// refused when the tenant's current manifests would then take more than
    /// `limits.max_manifest_bytes` (both checked in the same step). Records `audit` in the same
    /// step. Returns the updated agent.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the tenant has no agent of that name;
    /// [`Error::PreconditionFailed`] when its current version is not `expected`;
    /// [`Error::Conflict`] when the budget would be exceeded.
    #[allow(clippy::too_many_arguments)]
    async fn update_agent(
        &self,
        tenant: &TenantId,
        manifest: &AgentManifest,
        author: &str,
        at: DateTime<Utc>,
        limits: UpdateLimits,
        expected: Option<u32>,
        audit: &AuditEvent,
    ) -> Result<Agent>;

    /// The tenant's agent of that name, if any.
    async fn find_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<Agent>>;

    /// The tenant's agents, by name, without their manifests (none is read).
    async fn list_agents(&self, tenant: &TenantId) -> Result<Vec<AgentSummary>>;

    /// Every tenant's agents (to re-apply them to the cluster at start-up).
    async fn list_all_agents(&self) -> Result<Vec<Agent>>;

    /// Deletes an agent and its history, recording `audit` when it existed; whether it did.
    /// With `expected`, only when its current version is that number (checked in the same
    /// step).
    ///
    /// # Errors
    /// [`Error::PreconditionFailed`] when its current version is not `expected`.
    async fn delete_agent(&self, tenant: &TenantId, name: &AgentName, expected: Option<u32>, audit: &AuditEvent) -> Result<bool>;

    /// An agent's versions, oldest first (empty when there is no such agent).
    async fn list_versions(&self, tenant: &TenantId, name: &AgentName) -> Result<Vec<AgentVersion>>;

    /// One version of an agent with its manifest; `None` when the agent has no such version
    /// (never had, or pruned).
    async fn find_version(&self, tenant: &TenantId, name: &AgentName, number: u32) -> Result<Option<PublishedVersion>>;
}

/// The audit trail. Changes record their events through the store methods that make them
/// (in the same transaction); this records the events that go with no change, and reads
/// and prunes the trail.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Records an event that goes with no stored change (a failed login).
    async fn record_event(&self, event: &AuditEvent) -> Result<()>;

    /// Counts `count` more refusals in the event of `event.dedup_key()`: recorded as
    /// `event` with that count when there is none yet, added to its count otherwise (by
    /// whichever replica), in one atomic step.
    async fn record_refusals(&self, event: &AuditEvent, count: u32) -> Result<()>;

    /// A tenant's events, newest first: at most `limit`, starting after `after`.
    async fn tenant_events(&self, tenant: &TenantId, limit: u32, after: Option<AuditCursor>) -> Result<AuditPage>;

    /// A user's events, newest first: at most `limit`, starting after `after`.
    async fn user_events(&self, user: &UserId, limit: u32, after: Option<AuditCursor>) -> Result<AuditPage>;

    /// Deletes the events older than `before`, and what is remembered of keys revoked
    /// before it; returns how many events.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// A tenant's astromesh-node, reached at its endpoint.
///
/// Every method answers [`Error::Upstream`] when the node cannot be reached, times out, or
/// answers with an error.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait NodeProxy: Send + Sync + 'static {
    /// Registers (or replaces) an agent: `POST {node}/v1/agents`.
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()>;

    /// Deploys a registered agent: `POST {node}/v1/agents/{name}/deploy`.
    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()>;

    /// Forgets an agent: `DELETE {node}/v1/agents/{name}`; an agent it does not know is fine.
    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()>;

    /// Every agent the node holds, as its list shows them (name, version, status), in one
    /// call: `GET {node}/v1/agents`. What the reconcile loop compares with what should be
    /// there, once per node and period.
    async fn list_node_agents(&self, node: &str) -> Result<Vec<NodeAgent>>;

    /// The node's live view of an agent (its entry in the node's list, with the manifest it
    /// stores), or `None` when the node does not know it.
    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>>;

    /// The node's execution traces of an agent, most recent first, at most `limit` (and at
    /// most what the node answers at once): `GET {node}/v1/traces/`, as `{"traces": [...]}`.
    async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value>;

    /// Runs an agent once: `POST {node}/v1/agents/{name}/run` with `request` (`query`,
    /// `session_id`, `context`), waiting at most `timeout`; the node's answer. A refusal
    /// the node explains (no model reachable, its own run timeout) is [`Error::Upstream`]
    /// carrying the node's reason, its code and message; any other failure, a stable
    /// sentence.
    async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, timeout: std::time::Duration) -> Result<Value>;
}

/// The cluster that runs tenants' nodes and agents (in memory, or Kubernetes).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ClusterBackend: Send + Sync + 'static {
    /// Whether tenants share the nodes this cluster runs (their agents then go there under
    /// node-side names, see [`crate::node_names`]).
    fn node_sharing(&self) -> NodeSharing;

    /// Whether what the cluster holds of a tenant can change behind the core's back (a
    /// cluster others edit), so that a ready tenant is provisioned again every resync
    /// period even when nothing woke it. A cluster that only Nexus writes answers `false`:
    /// its ready tenants are left alone at rest, costing no read.
    fn tenants_drift(&self) -> bool {
        true
    }

    /// Makes the tenant's namespace and node exist; applying it again changes nothing.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the cluster cannot be reached.
    async fn provision_tenant(&self, tenant: &Tenant) -> Result<TenantStatus>;

    /// What the cluster has of the tenant; [`TenantStatus::pending`] when nothing.
    async fn tenant_status(&self, id: &TenantId) -> Result<TenantStatus>;

    /// Removes the tenant's namespace and node (and its agent objects); removing an absent
    /// tenant succeeds. A cluster that takes time to remove them marks the tenant deleting
    /// and starts the removal; [`ClusterBackend::finish_deletions`] completes it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the cluster cannot be reached.
    async fn deprovision_tenant(&self, id: &TenantId) -> Result<()>;

    /// Carries on deletions that need nothing more from the core: lets a deleted tenant's
    /// object go once its namespace and node are gone. Called by every pass of the
    /// reconcile loop.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the cluster cannot be reached; [`Error::Conflict`] when
    /// an object changed meanwhile (the next pass tries again).
    async fn finish_deletions(&self) -> Result<()>;

    /// Makes the desired agent object exist with this manifest. A new or changed manifest
    /// bumps its generation, so it is reconciled again; the same one changes nothing.
    async fn apply_agent(&self, tenant: &TenantId, manifest: &AgentManifest) -> Result<()>;

    /// Asks for the agent object's deletion; it stays, marked `deleting`, until
    /// [`ClusterBackend::forget_agent`] once the node forgot the agent.
    async fn request_agent_deletion(&self, tenant: &TenantId, name: &AgentName) -> Result<()>;

    /// The agent object, if any.
    async fn agent_object(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<AgentObject>>;

    /// Every agent object of every tenant. Objects the cluster holds that the core cannot
    /// reconcile (an invalid manifest) are not listed; once their deletion was asked for,
    /// the cluster lets them go.
    async fn list_agent_objects(&self) -> Result<Vec<AgentObject>>;

    /// Every agent object of one tenant, as [`ClusterBackend::list_agent_objects`] lists
    /// them; its cost does not grow with other tenants' agents.
    async fn list_tenant_agent_objects(&self, tenant: &TenantId) -> Result<Vec<AgentObject>>;

    /// The status of every agent object of one tenant, by name, without the manifests:
    /// what a listing shows. A cluster that holds manifests apart (a database) reads none.
    async fn list_tenant_agent_statuses(&self, tenant: &TenantId) -> Result<Vec<(AgentName, AgentStatus)>> {
        Ok(self.list_tenant_agent_objects(tenant).await?.into_iter().map(|object| (object.manifest.name().clone(), object.status)).collect())
    }

    /// Records what reconciling `observed_generation` of the object found, when `fence`
    /// holds: a cluster kept in the database that holds the leader lease writes only while
    /// the fence's term is the lease's current one and unexpired, in the same statement;
    /// others rely on the loop checking its term before it writes.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the cluster cannot be reached, or when the term is over
    /// (nothing was written).
    async fn set_agent_status(&self, tenant: &TenantId, name: &AgentName, observed_generation: u64, status: &AgentStatus, fence: Fence) -> Result<()>;

    /// Removes the agent object for good (after its deletion was asked for and handled).
    async fn forget_agent(&self, tenant: &TenantId, name: &AgentName) -> Result<()>;

    /// Records that the node at `node` was seen at `at` holding, as they should be, every
    /// agent of `agents` (each with the generation it runs): what their status shows as
    /// `last_synced_at` from then on, while they stay Running that generation. The default
    /// writes each agent's status; a cluster that keeps one time per node overrides it with
    /// one write, joined with each Running agent's own time when statuses are read.
    ///
    /// Written only while `fence` holds, as [`ClusterBackend::set_agent_status`].
    async fn record_node_seen(&self, node: &str, at: DateTime<Utc>, agents: &[(TenantId, AgentName, u64)], fence: Fence) -> Result<()> {
        let _ = node;
        let running = AgentStatus { phase: crate::agents::AgentPhase::Running, node_ack: true, last_synced_at: Some(at), message: None };
        for (tenant, name, generation) in agents {
            self.set_agent_status(tenant, name, *generation, &running, fence).await?;
        }
        Ok(())
    }
}

/// Changes told to every replica sharing the store (this one included), so that what
/// each keeps in memory follows the store: publish a change, subscribe to them all.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Tells every replica, this one included, about `change`, after the change is stored.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the other replicas cannot be told.
    async fn publish(&self, change: &Change) -> Result<()>;

    /// Every change published from now on, by any replica, in the order received. A
    /// subscriber that falls behind, or a feed that lost its connection, receives
    /// [`Change::Missed`] (a lagging receiver's error counts as one).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;
}

/// Server-wide settings that must survive restarts and be shared by every replica.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait SettingsStore: Send + Sync + 'static {
    /// The value stored under `key`; when there is none, stores `candidate` and returns it.
    /// Replicas racing on an empty store all get the one value that was stored first.
    async fn get_or_insert_setting(&self, key: &str, candidate: &str) -> Result<String>;
}

/// A dependency whose health decides readiness.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// The name under which readiness reports this check (`database`, `cluster`...).
    fn name(&self) -> &'static str;

    /// Answers once the dependency has answered a trivial request.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it does not answer in time.
    async fn check(&self) -> Result<()>;
}

/// Password hashing, with bounded cost per call and a bounded queue: both methods answer
/// [`Error::Overloaded`] at once when too many hashes are waiting already.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    /// A salted hash of the password.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the queue is full.
    async fn hash(&self, password: &Password) -> Result<PasswordHash>;

    /// Whether `password` matches `hash`. A malformed hash does not match.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the queue is full.
    async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool>;

    /// A valid hash of no one's password, so that checking a login for an unknown user
    /// costs what checking a known one costs.
    fn dummy_hash(&self) -> PasswordHash;

    /// Refuses at once, as [`Self::hash`] and [`Self::verify`] would now, when the queue is
    /// full: a caller asks first and spends no store round trip on a request whose hash
    /// would be refused. A place is not reserved; the hash may still be refused.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the queue is full.
    fn has_room(&self) -> Result<()>;
}

/// Signs and verifies access tokens.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait AccessTokens: Send + Sync + 'static {
    /// A signed token for the user, issued at `now` in `session` (its refresh-token family),
    /// which the token names so that it ends with its session.
    fn issue(&self, user_id: &UserId, session: &FamilyId, now: DateTime<Utc>) -> Result<AccessToken>;

    /// The claims of a token that this server signed and that has not expired at `now`.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for any token that is malformed, forged, of another type or
    /// issuer, or expired.
    fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims>;
}

/// Random secrets for clients.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait SecretGenerator: Send + Sync + 'static {
    /// A new secret of at least 256 random bits, text-safe, starting with `prefix`.
    ///
    /// # Errors
    /// [`Error::Internal`] when the random source fails.
    fn generate(&self, prefix: &'static str) -> Result<OpaqueSecret>;
}

/// The time.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}
