//! The core: use cases written only against the ports, split by resource. Nothing here
//! knows HTTP, SQL or a framework; the HTTP layer calls these and converts the results.

pub mod access;
pub mod agents;
pub mod cache;
pub mod chains;
pub mod changes;
pub mod health;
pub mod housekeeping;
pub mod identity;
pub mod key_usage;
pub mod leadership;
pub mod login_limit;
pub mod periodic;
pub mod reconcile;
pub mod refusals;
pub mod tenancy;
pub mod throttle;
pub mod traces;
pub mod work_queue;

use std::sync::{Arc, Mutex};

pub use access::{AccessPorts, AccessService, Credentials, Principal};
pub use agents::{
    AgentDetail, AgentEvent, AgentLimits, AgentListing, AgentPorts, AgentService, AgentState, Condition, EventSettings, LiveStatus, LogQuery, RunRequest,
    StillAllowed, etag,
};
pub use changes::{Changes, HotCaches};
pub use health::{CheckOutcome, Readiness};
pub use housekeeping::Housekeeping;
pub use identity::{IdentityPorts, IdentityService, Registration, Session, SessionPolicy, TokenPair};
pub use key_usage::KeyUsage;
pub use login_limit::LoginLimit;
pub use reconcile::{ReconcilePorts, Reconciler, Waker};
pub use refusals::Refusals;
pub use tenancy::{KeyGrant, NewKey, Quotas, TenancyPorts, TenancyService, TenantState};
pub use throttle::{AddressLimiter, AuthThrottle};

/// Every use case of the running service, shared by the HTTP handlers.
pub struct Nexus {
    pub identity: IdentityService,
    pub access: AccessService,
    pub tenancy: TenancyService,
    pub agents: AgentService,
    pub readiness: Readiness,
    pub key_usage: Arc<KeyUsage>,
    /// Refusals counted for the audit trails, written off the request path.
    pub refusals: Arc<Refusals>,
    /// The per-address rate of the `/auth` routes.
    pub auth_throttle: AuthThrottle,
    /// Background tasks, stopped by [`Nexus::shutdown`].
    pub background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What [`Nexus::shutdown`] runs once the background tasks have stopped (giving up the
    /// leader lease, letting go of the database file's lock).
    pub on_shutdown: Mutex<Vec<futures_util::future::BoxFuture<'static, ()>>>,
}

impl Nexus {
    /// Stops the background tasks and writes what they had pending.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.background.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Err(err) = self.key_usage.flush().await {
            tracing::warn!(error = %err, "could not record API key usage at shutdown");
        }
        if let Err(err) = self.refusals.flush().await {
            tracing::warn!(error = %err, "could not record refusals in the audit trail at shutdown");
        }
        let last = std::mem::take(&mut *self.on_shutdown.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for step in last {
            step.await;
        }
    }
}

/// The handle handlers hold.
pub type SharedNexus = Arc<Nexus>;
