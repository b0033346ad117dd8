//! The core: use cases written only against the ports, split by resource. Nothing here
//! knows HTTP, SQL or a framework; the HTTP layer calls these and converts the results.

pub mod health;
pub mod identity;

use std::sync::Arc;

pub use health::{CheckOutcome, Readiness};
pub use identity::{IdentityService, Registration, Session, TokenPair};

/// Every use case of the running service, shared by the HTTP handlers.
pub struct Nexus {
    pub identity: IdentityService,
    pub readiness: Readiness,
}

/// The handle handlers hold.
pub type SharedNexus = Arc<Nexus>;
