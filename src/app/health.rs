//! Readiness: every dependency's health check, run concurrently.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use nexus_ports::ports::HealthCheck;

/// What one check found: `None` when healthy, otherwise what is wrong.
pub type CheckOutcome = Option<String>;

/// The dependencies whose health decides whether the service is ready.
pub struct Readiness {
    checks: Vec<Arc<dyn HealthCheck>>,
}

impl Readiness {
    /// Readiness over these checks.
    pub fn new(checks: Vec<Arc<dyn HealthCheck>>) -> Self {
        Self { checks }
    }

    /// Runs every check; ready when all pass. Returns each check's outcome by name.
    pub async fn check(&self) -> (bool, BTreeMap<&'static str, CheckOutcome>) {
        let outcomes = join_all(self.checks.iter().map(|check| async move { (check.name(), check.check().await.err().map(|e| e.to_string())) })).await;
        let ready = outcomes.iter().all(|(_, outcome)| outcome.is_none());
        (ready, outcomes.into_iter().collect())
    }
}
