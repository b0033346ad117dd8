//! The Kubernetes cluster backend: tenants and agents as `NexusTenant` and `NexusAgent`
//! custom resources (group `nexus.astromesh.io`, version `v1alpha1`), the same core
//! reconcile loop driving them as drives the in-memory backend, watchers waking it, and
//! leader election so that one replica of many reconciles.
#![forbid(unsafe_code)]

mod cluster;
#[cfg(test)]
#[path = "cluster_tests.rs"]
mod cluster_tests;
pub mod crd;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
mod resources;
mod runtime;

pub use cluster::{FIELD_MANAGER, KubeCluster, KubeSettings};
pub use resources::NODE_PORT;
pub use runtime::LEASE_NAME;
