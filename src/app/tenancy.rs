//! Tenancy use cases: tenants (provisioned on the cluster as they are created) and their
//! API keys. Every use case acts for a user and checks that it owns the tenant; a tenant
//! that does not exist is refused like another user's, so ids cannot be probed. Anyone
//! can register, so both are bounded: tenants per user and keys per tenant, each checked
//! by the store in the same step as the insert.

use std::sync::Arc;

use chrono::{DateTime, DurationRound, Utc};
use nexus_ports::agents::Change;
use nexus_ports::audit::{AuditAction, AuditCursor, AuditEvent, AuditPage, CursorKey, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
use nexus_ports::identity::{DisplayName, UserId};
use nexus_ports::ports::{ApiKeyStore, AuditStore, Clock, ClusterBackend, SecretGenerator, TenantStore, UserStore};
use nexus_ports::tenancy::{ApiKey, KeyLabel, KeyScope, NodeProfile, Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::tokens::{OpaqueSecret, SecretDigest};
use nexus_ports::{Error, Result};

use super::changes::Changes;
use super::key_usage::KeyUsage;
use super::reconcile::Waker;
use super::refusals::{Refusals, Refused, Trail, actor_of_user};

/// Prefix of API keys, so a leaked one is recognisable.
const KEY_PREFIX: &str = "nxk_";

/// A tenant with what the cluster reports of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub tenant: Tenant,
    pub status: TenantStatus,
}

/// A key just created: its value, shown once, and what is stored of it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub raw: OpaqueSecret,
    pub key: ApiKey,
}

/// What a new key may do, and until when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyGrant {
    pub scope: KeyScope,
    /// When it stops working; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Provisions a tenant on the cluster; a failure is logged and reported as phase `Error`
/// with its reason (the reconcile loop tries again).
pub(crate) async fn provision(cluster: &dyn ClusterBackend, tenant: &Tenant) -> TenantStatus {
    cluster.provision_tenant(tenant).await.unwrap_or_else(|err| {
        tracing::warn!(tenant = %tenant.id, error = %err, "provisioning failed; will retry");
        TenantStatus { phase: TenantPhase::Error, message: Some(err.public_message()), ..TenantStatus::pending() }
    })
}

/// What a user may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Tenants per user.
    pub max_tenants: u32,
    /// API keys per tenant.
    pub max_keys: u32,
    /// Agents per new tenant (kept on the tenant).
    pub max_agents: u32,
}

/// The tenancy use cases.
pub struct TenancyService {
    tenants: Arc<dyn TenantStore>,
    keys: Arc<dyn ApiKeyStore>,
    cluster: Arc<dyn ClusterBackend>,
    secrets: Arc<dyn SecretGenerator>,
    clock: Arc<dyn Clock>,
    usage: Arc<KeyUsage>,
    audit: Arc<dyn AuditStore>,
    users: Arc<dyn UserStore>,
    changes: Arc<Changes>,
    quotas: Quotas,
    /// Tells the reconcile loop which tenant changed.
    waker: Option<Waker>,
    /// Whether a new tenant is provisioned by the replica serving its creation; when not,
    /// the leader's loop provisions it (woken through the change feed).
    provision_on_create: bool,
    /// Where refusals are counted for the audit trails (none: not recorded).
    refusals: Option<Arc<Refusals>>,
    /// Seals the audit trails' cursors.
    cursors: CursorKey,
}

/// The ports the tenancy use cases need, by name.
pub struct TenancyPorts {
    pub tenants: Arc<dyn TenantStore>,
    pub keys: Arc<dyn ApiKeyStore>,
    pub cluster: Arc<dyn ClusterBackend>,
    pub secrets: Arc<dyn SecretGenerator>,
    pub clock: Arc<dyn Clock>,
    /// Key use noted but not yet written, forgotten when a key goes.
    pub usage: Arc<KeyUsage>,
    pub audit: Arc<dyn AuditStore>,
    /// Who users are, to name them in the trails.
    pub users: Arc<dyn UserStore>,
    /// Where deleted tenants and revoked keys are announced.
    pub changes: Arc<Changes>,
}

impl TenancyService {
    /// Wires the use cases, bounded by `quotas`.
    pub fn new(ports: TenancyPorts, quotas: Quotas) -> Self {
        let TenancyPorts { tenants, keys, cluster, secrets, clock, usage, audit, users, changes } = ports;
        Self {
            tenants,
            keys,
            cluster,
            secrets,
            clock,
            usage,
            audit,
            users,
            changes,
            quotas,
            waker: None,
            provision_on_create: true,
            refusals: None,
            cursors: CursorKey::random(),
        }
    }

    /// The same use cases, leaving a new tenant to the leader's loop rather than
    /// provisioning it from the replica serving the request: with several replicas on one
    /// cluster, only the leader writes tenants' resources.
    #[must_use]
    pub fn leaving_provisioning_to_the_leader(self) -> Self {
        Self { provision_on_create: false, ..self }
    }

    /// The same use cases, counting refusals in `refusals` for the audit trails.
    #[must_use]
    pub fn with_refusals(self, refusals: Arc<Refusals>) -> Self {
        Self { refusals: Some(refusals), ..self }
    }

    /// The same use cases, sealing cursors with `cursors` (the same on every replica).
    #[must_use]
    pub fn with_cursor_key(self, cursors: CursorKey) -> Self {
        Self { cursors, ..self }
    }

    async fn actor(&self, user: &UserId) -> Result<String> {
        actor_of_user(self.users.as_ref(), &self.changes, user).await
    }

    /// The same use cases, waking the reconcile loop for every tenant they create or delete.
    #[must_use]
    pub fn with_waker(self, waker: Waker) -> Self {
        Self { waker: Some(waker), ..self }
    }

    fn changed(&self, tenant: TenantId) {
        if let Some(waker) = &self.waker {
            waker.wake(Change::Tenant(tenant));
        }
    }

    /// Creates a tenant owned by `owner` and provisions it (or, with
    /// [`Self::leaving_provisioning_to_the_leader`], has the leader's loop provision it: it
    /// answers `Pending`). A cluster that fails leaves the tenant stored in phase `Error`;
    /// the reconcile loop provisions it again.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a bad display name or node profile; [`Error::Conflict`]
    /// when the owner has reached its tenant quota.
    pub async fn create_tenant(&self, owner: UserId, display_name: &str, node_profile: Option<&str>) -> Result<TenantState> {
        let tenant = Tenant {
            id: TenantId::generate(),
            owner,
            display_name: DisplayName::parse(display_name)?,
            node_profile: node_profile.map(NodeProfile::parse).transpose()?.unwrap_or_default(),
            max_agents: self.quotas.max_agents,
            created_at: self.clock.now(),
        };
        let audit =
            AuditEvent::now(tenant.created_at, self.actor(&owner).await?, AuditAction::TenantCreate, tenant.id.to_string()).in_tenant(tenant.id).of_user(owner);
        self.tenants.insert_tenant(&tenant, self.quotas.max_tenants, &audit).await.map_err(|err| match err {
            Error::NotFound(_) => Error::unauthorized("the user of this token no longer exists"),
            other => other,
        })?;
        tracing::info!(tenant = %tenant.id, owner = %owner, "tenant created");
        let status = if self.provision_on_create { provision(self.cluster.as_ref(), &tenant).await } else { TenantStatus::pending() };
        // The replica that reconciles (maybe another) starts tracking it.
        self.changes.committed(&nexus_ports::changes::Change::TenantChanged { tenant: tenant.id });
        self.changed(tenant.id);
        Ok(TenantState { tenant, status })
    }

    /// The tenants `owner` owns, oldest first.
    pub async fn list_tenants(&self, owner: &UserId) -> Result<Vec<TenantState>> {
        let mut states = Vec::new();
        for tenant in self.tenants.list_tenants_of(owner).await? {
            let status = self.cluster.tenant_status(&tenant.id).await?;
            states.push(TenantState { tenant, status });
        }
        Ok(states)
    }

    /// Deprovisions a tenant, then deletes it with its keys.
    ///
    /// # Errors
    /// [`Error::Forbidden`] unless `owner` owns it; [`Error::Unavailable`] when the cluster
    /// cannot deprovision it now (the tenant is kept; retry).
    pub async fn delete_tenant(&self, owner: &UserId, id: &str) -> Result<TenantId> {
        let tenant = self.owned(owner, id).await?;
        self.cluster.deprovision_tenant(&tenant.id).await?;
        for key in self.keys.list_keys(&tenant.id).await? {
            self.usage.forget(&key.digest);
        }
        let audit =
            AuditEvent::now(self.clock.now(), self.actor(owner).await?, AuditAction::TenantDelete, tenant.id.to_string()).in_tenant(tenant.id).of_user(*owner);
        self.tenants.delete_tenant(&tenant.id, &audit).await?;
        self.changes.committed(&nexus_ports::changes::Change::TenantDeleted { tenant: tenant.id });
        tracing::info!(tenant = %tenant.id, "tenant deleted");
        self.changed(tenant.id);
        Ok(tenant.id)
    }

    /// Creates an API key for a tenant, with the scope and expiry of `grant`; its value is
    /// returned once and stored only as a digest.
    ///
    /// # Errors
    /// [`Error::Forbidden`] unless `owner` owns the tenant; [`Error::InvalidRequest`] for a
    /// bad label or an expiry that is not in the future; [`Error::Conflict`] when the
    /// tenant has reached its key quota.
    pub async fn create_key(&self, owner: &UserId, tenant: &str, label: &str, grant: KeyGrant) -> Result<NewKey> {
        let label = KeyLabel::parse(label)?;
        let now = self.clock.now();
        // To the microsecond, the precision every store keeps.
        let expires_at = grant.expires_at.map(|end| end.duration_trunc(chrono::TimeDelta::microseconds(1)).unwrap_or(end));
        if grant.expires_at.is_some_and(|end| end <= now) {
            return Err(Error::invalid("expiresAt must be in the future"));
        }
        let tenant = self.owned(owner, tenant).await?;
        let raw = self.secrets.generate(KEY_PREFIX)?;
        let key = ApiKey { digest: raw.digest(), tenant_id: tenant.id, label, scope: grant.scope, created_at: now, expires_at, last_used_at: None };
        let audit = AuditEvent::now(key.created_at, self.actor(owner).await?, AuditAction::KeyCreate, key.digest.to_hex()).in_tenant(tenant.id);
        self.keys.insert_key(&key, self.quotas.max_keys, &audit).await?;
        tracing::info!(tenant = %tenant.id, key = %key.digest, "API key created");
        Ok(NewKey { raw, key })
    }

    /// A tenant's keys, oldest first, with their latest use.
    ///
    /// # Errors
    /// [`Error::Forbidden`] unless `owner` owns the tenant.
    pub async fn list_keys(&self, owner: &UserId, tenant: &str) -> Result<Vec<ApiKey>> {
        let tenant = self.owned(owner, tenant).await?;
        let mut keys = self.keys.list_keys(&tenant.id).await?;
        for key in &mut keys {
            key.last_used_at = key.last_used_at.max(self.usage.noted(&key.digest));
        }
        Ok(keys)
    }

    /// Revokes a tenant's key; it stops working at once.
    ///
    /// # Errors
    /// [`Error::Forbidden`] unless `owner` owns the tenant; [`Error::InvalidRequest`] for a
    /// malformed hash; [`Error::NotFound`] when the tenant has no such key.
    pub async fn revoke_key(&self, owner: &UserId, tenant: &str, hash: &str) -> Result<SecretDigest> {
        let tenant = self.owned(owner, tenant).await?;
        let digest = SecretDigest::from_hex(hash)?;
        let audit = AuditEvent::now(self.clock.now(), self.actor(owner).await?, AuditAction::KeyRevoke, digest.to_hex()).in_tenant(tenant.id);
        if !self.keys.delete_key(&tenant.id, &digest, &audit).await? {
            return Err(Error::NotFound("this tenant has no API key with this hash".to_owned()));
        }
        self.usage.forget(&digest);
        self.changes.committed(&nexus_ports::changes::Change::KeyRevoked { tenant: tenant.id, key: digest });
        tracing::info!(tenant = %tenant.id, key = %digest, "API key revoked");
        Ok(digest)
    }

    /// A page of the tenant's audit trail, newest first: at most `limit` events (at most
    /// [`MAX_AUDIT_PAGE`]), after `cursor` when given (good on this trail, for this
    /// caller, only).
    ///
    /// # Errors
    /// [`Error::Forbidden`] unless `owner` owns the tenant; [`Error::InvalidRequest`] for
    /// a limit out of range or a cursor this server did not give for this trail and caller.
    pub async fn audit(&self, owner: &UserId, tenant: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<TrailPage> {
        let tenant = self.owned(owner, tenant).await?;
        let scope = format!("tenant:{}/{owner}", tenant.id);
        let (limit, after) = page_bounds(&self.cursors, &scope, limit, cursor)?;
        Ok(TrailPage::sealed(self.audit.tenant_events(&tenant.id, limit, after).await?, &self.cursors, &scope))
    }

    /// The tenant with this id if `owner` owns it. A tenant that does not exist is refused
    /// like one of another user's, so ids cannot be probed; the refusal is recorded in the
    /// tenant's trail (or, when there is no such tenant, the user's own).
    async fn owned(&self, owner: &UserId, id: &str) -> Result<Tenant> {
        let id = TenantId::parse(id)?;
        let found = self.tenants.find_tenant(&id).await?;
        match found {
            Some(tenant) if tenant.owner == *owner => return Ok(tenant),
            Some(_) => self.refuse(owner, &id, Trail::Tenant(id)),
            None => self.refuse(owner, &id, Trail::User(*owner)),
        }
        Err(Error::Forbidden("you do not own this tenant".to_owned()))
    }

    fn refuse(&self, user: &UserId, tenant: &TenantId, trail: Trail) {
        if let Some(refusals) = &self.refusals {
            refusals.note(Refused::User(*user), AuditAction::AccessCrossTenant, &tenant.to_string(), trail);
        }
    }
}

/// A page of a trail as a client sees it: its cursor sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailPage {
    pub events: Vec<AuditEvent>,
    /// The sealed cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

impl TrailPage {
    /// `page` with its cursor sealed for `scope`.
    pub fn sealed(page: AuditPage, key: &CursorKey, scope: &str) -> Self {
        Self { next_cursor: page.next.map(|cursor| key.seal(&cursor, scope)), events: page.events }
    }
}

/// The limit (default [`DEFAULT_AUDIT_PAGE`], 1 to [`MAX_AUDIT_PAGE`]) and the cursor of
/// an audit page request on the trail and caller `scope`.
///
/// # Errors
/// [`Error::InvalidRequest`] for a limit out of range, or a cursor not sealed by `key` for
/// `scope`.
pub fn page_bounds(key: &CursorKey, scope: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<(u32, Option<AuditCursor>)> {
    let limit = limit.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(Error::invalid(format!("limit must be between 1 and {MAX_AUDIT_PAGE}")));
    }
    Ok((limit, cursor.map(|cursor| key.open(cursor, scope)).transpose()?))
}

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tests;
