//! Readiness: every dependency's health check, run concurrently. `/readyz` answers anyone,
//! so a failed check shows only the client-facing message of its error.

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
        let outcomes = join_all(self.checks.iter().map(|check| async move { (check.name(), check.check().await.err().map(|e| e.public_message())) })).await;
        let ready = outcomes.iter().all(|(_, outcome)| outcome.is_none());
        (ready, outcomes.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use nexus_ports::Error;
    use nexus_ports::ports::MockHealthCheck;

    use super::*;

    #[tokio::test]
    async fn a_failed_check_shows_no_internal_detail() {
        let check = |name: &'static str, result: fn() -> nexus_ports::Result<()>| {
            let mut check = MockHealthCheck::new();
            check.expect_name().return_const(name);
            check.expect_check().returning(result);
            Arc::new(check) as Arc<dyn HealthCheck>
        };
        let readiness = Readiness::new(vec![
            check("database", || Err(Error::internal("connection to 10.0.0.7:5432 refused"))),
            check("cluster", || Err(Error::Unavailable("the cluster is unavailable; retry later".into()))),
            check("other", || Ok(())),
        ]);
        let (ready, outcomes) = readiness.check().await;
        assert!(!ready);
        assert_eq!(outcomes["database"].as_deref(), Some("internal error"));
        assert_eq!(outcomes["cluster"].as_deref(), Some("the cluster is unavailable; retry later"));
        assert_eq!(outcomes["other"], None);
    }
}
