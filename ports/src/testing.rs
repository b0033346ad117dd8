//! Fixtures for the workspace's tests (feature `testing`): the sample manifest and a
//! tenant, defined once so every crate's tests build them the same way. Tests that need a
//! variation change one field with struct-update syntax.

use chrono::Utc;
use serde_json::{Value, json};

use crate::agents::AgentManifest;
use crate::identity::{DisplayName, UserId};
use crate::tenancy::{NodeProfile, Tenant, TenantId};

/// The document of the sample manifest: agent `name` on model `model` of provider `ollama`.
#[must_use]
pub fn manifest_document(name: &str, model: &str) -> Value {
    json!({"apiVersion": "astromesh/v1", "kind": "Agent", "metadata": {"name": name}, "spec": {"model": {"primary": {"provider": "ollama", "model": model}}}})
}

/// The sample manifest, parsed.
///
/// # Panics
/// When `name` is not a valid agent name.
#[must_use]
pub fn manifest(name: &str, model: &str) -> AgentManifest {
    AgentManifest::parse(manifest_document(name, model)).expect("the sample manifest is valid")
}

/// A tenant of `owner` with a fresh id: display name `org`, the default node profile, a
/// quota of 50 agents, created now (to the microsecond, as the databases keep it).
#[must_use]
pub fn tenant(owner: UserId) -> Tenant {
    let now = Utc::now();
    let created_at = chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::microseconds(1)).unwrap_or(now);
    Tenant {
        id: TenantId::generate(),
        owner,
        display_name: DisplayName::parse("org").expect("a valid display name"),
        node_profile: NodeProfile::default(),
        max_agents: 50,
        created_at,
    }
}
