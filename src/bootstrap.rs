//! The composition root: builds the adapters the configuration names and wires them into
//! the use cases. The only module that sees every adapter.

use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use nexus_crypto::{Argon2Hasher, JwtAccessTokens, OsSecrets};
use nexus_ports::ports::{Clock, HealthCheck, SecretGenerator, SettingsStore};
use nexus_ports::{Error, Result};
use nexus_store_sea_orm::SqlStore;

use crate::app::{IdentityService, Nexus, Readiness, SharedNexus};
use crate::config::ServeConfig;

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

/// Connects the store (running its migrations) and wires every use case.
///
/// # Errors
/// [`Error::Unavailable`] when the database cannot be reached; [`Error::InvalidRequest`]
/// for configuration that cannot work (a short JWT secret, a zero lifetime).
pub async fn build(config: &ServeConfig) -> Result<SharedNexus> {
    let store = SqlStore::connect(&config.database_url).await?;
    let secret = match &config.jwt_secret {
        Some(secret) => secret.clone(),
        None => {
            tracing::warn!("NEXUS_JWT_SECRET is not set: signing tokens with a generated secret kept in the database");
            let candidate = OsSecrets.generate("")?;
            store.get_or_insert_setting(JWT_SECRET_KEY, candidate.expose()).await?
        }
    };
    let access_ttl = chrono::Duration::from_std(*config.access_ttl).map_err(|_| Error::invalid("NEXUS_ACCESS_TTL is too long"))?;
    let refresh_ttl = chrono::Duration::from_std(*config.refresh_ttl).map_err(|_| Error::invalid("NEXUS_REFRESH_TTL is too long"))?;
    if refresh_ttl <= chrono::Duration::zero() {
        return Err(Error::invalid("NEXUS_REFRESH_TTL must be positive"));
    }
    let hash_concurrency = config.hash_concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let hasher = Argon2Hasher::new(hash_concurrency)?;
    let access_tokens = JwtAccessTokens::new(secret.as_bytes(), access_ttl)?;

    let store = Arc::new(store);
    let identity = IdentityService::new(
        store.clone(),
        store.clone(),
        Arc::new(hasher),
        Arc::new(access_tokens),
        Arc::new(OsSecrets),
        Arc::new(SystemClock),
        refresh_ttl,
    );
    let readiness = Readiness::new(vec![store as Arc<dyn HealthCheck>]);
    Ok(Arc::new(Nexus { identity, readiness }))
}
