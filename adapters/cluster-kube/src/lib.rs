//! The Kubernetes cluster backend: tenants and agents as `NexusTenant` and `NexusAgent`
//! custom resources (group `nexus.astromesh.io`, version `v1alpha1`), the same core
//! reconcile loop driving them as drives the in-memory backend, watchers waking it, and
//! leader election so that one replica of many reconciles.
#![forbid(unsafe_code)]

mod agents;
mod cluster;
pub mod crd;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
mod lease;
mod reflector;
mod resources;
mod runtime;
mod tenants;

pub use cluster::{FIELD_MANAGER, KubeCluster, KubeSettings, REQUEST_TIMEOUT};
pub use lease::{LEASE_NAME, LeaseTiming};
pub use resources::{NODE_PORT, PROVIDER_SECRET};
