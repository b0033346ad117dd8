//! The custom resources, as Rust types. `crds_yaml` renders both definitions; the
//! committed copies under `deploy/` are checked against it. The group and version live
//! only in the `#[kube]` attributes: code asks the types (`NexusTenant::api_version(&())`).

use chrono::{DateTime, Utc};
use kube::CustomResource;
use kube::CustomResourceExt;
use nexus_ports::agents::AgentPhase;
use nexus_ports::tenancy::TenantPhase;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Finalizer of tenants: deleting one deletes its namespace first.
pub const TENANT_FINALIZER: &str = "nexus.astromesh.io/tenant-cleanup";
/// Finalizer of agents: deleting one removes it from its node first.
pub const AGENT_FINALIZER: &str = "nexus.astromesh.io/agent-cleanup";
/// Label of every namespace Nexus manages.
pub const MANAGED_LABEL: &str = "nexus.astromesh.io/managed";

/// A tenant: its namespace, its astromesh-node and its quota.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.astromesh.io",
    version = "v1alpha1",
    kind = "NexusTenant",
    doc = "A Nexus tenant: a namespace with its own astromesh-node, and a quota.",
    namespaced,
    status = "NexusTenantStatus",
    shortname = "ntenant",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NexusTenantSpec {
    pub display_name: String,
    /// Passed to the node as `ASTROMESH_ROLE` (e.g. `full`).
    pub node_profile: String,
    #[serde(default)]
    pub resource_quota: ResourceQuota,
    /// The Secret in the tenant's namespace whose keys become its node's environment
    /// (model-provider credentials such as `OPENAI_API_KEY`); `astromesh-node-credentials`
    /// when unset. Set by the cluster's operator, never by Nexus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_secret: Option<String>,
}

/// What a tenant may use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuota {
    /// How many agents it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<u32>,
    /// CPU limit of its node (e.g. "4").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory limit of its node (e.g. "8Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Where a tenant's provisioning stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NexusTenantStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = nullable_enum)]
    pub phase: Option<NexusTenantPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `http://astromesh-node.<namespace>.svc:8000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An agent: its whole `astromesh/v1` manifest.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.astromesh.io",
    version = "v1alpha1",
    kind = "NexusAgent",
    doc = "A Nexus agent: an astromesh/v1 manifest deployed to its tenant's node.",
    namespaced,
    status = "NexusAgentStatus",
    shortname = "nagent",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NexusAgentSpec {
    /// The full manifest, passed through to the node with unknown fields kept.
    #[schemars(schema_with = "preserved_object")]
    pub agent_spec: Value,
}

/// Where an agent stands on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NexusAgentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = nullable_enum)]
    pub phase: Option<NexusAgentPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub node_ack: bool,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why it is Failed, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where a tenant's provisioning stands, as the resource spells it: the schema only admits
/// these values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NexusTenantPhase {
    Pending,
    Provisioning,
    Ready,
    Error,
}

impl From<TenantPhase> for NexusTenantPhase {
    fn from(phase: TenantPhase) -> Self {
        match phase {
            TenantPhase::Pending => Self::Pending,
            TenantPhase::Provisioning => Self::Provisioning,
            TenantPhase::Ready => Self::Ready,
            TenantPhase::Error => Self::Error,
        }
    }
}

impl From<NexusTenantPhase> for TenantPhase {
    fn from(phase: NexusTenantPhase) -> Self {
        match phase {
            NexusTenantPhase::Pending => Self::Pending,
            NexusTenantPhase::Provisioning => Self::Provisioning,
            NexusTenantPhase::Ready => Self::Ready,
            NexusTenantPhase::Error => Self::Error,
        }
    }
}

/// Where an agent stands on its node, as the resource spells it: the schema only admits
/// these values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NexusAgentPhase {
    Pending,
    Deploying,
    Running,
    Failed,
}

impl From<AgentPhase> for NexusAgentPhase {
    fn from(phase: AgentPhase) -> Self {
        match phase {
            AgentPhase::Pending => Self::Pending,
            AgentPhase::Deploying => Self::Deploying,
            AgentPhase::Running => Self::Running,
            AgentPhase::Failed => Self::Failed,
        }
    }
}

impl From<NexusAgentPhase> for AgentPhase {
    fn from(phase: NexusAgentPhase) -> Self {
        match phase {
            NexusAgentPhase::Pending => Self::Pending,
            NexusAgentPhase::Deploying => Self::Deploying,
            NexusAgentPhase::Running => Self::Running,
            NexusAgentPhase::Failed => Self::Failed,
        }
    }
}

/// A status condition, as Kubernetes writes them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
}

/// `type: object` keeping unknown fields: a bare `Value` would give a schema with no type,
/// which an API server refuses as non-structural.
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// An optional enum's values without the `null` that schemars lists: `nullable: true`
/// already says it, and the API server wants the values of the field's type.
fn nullable_enum(schema: &mut schemars::Schema) {
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.retain(|value| !value.is_null());
    }
}

/// Both definitions as one YAML stream, as committed under `deploy/crds.yaml`.
///
/// # Errors
/// When a definition cannot be rendered (a bug).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}---\n{}", serde_yaml::to_string(&NexusTenant::crd())?, serde_yaml::to_string(&NexusAgent::crd())?))
}

#[cfg(test)]
mod tests {
    use kube::Resource;
    use serde_json::json;

    use super::*;

    fn schema_of(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Value {
        let version = &crd.spec.versions[0];
        serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn agent_spec_is_a_structural_object_keeping_unknown_fields() {
        let schema = schema_of(&NexusAgent::crd());
        let agent_spec = &schema["properties"]["spec"]["properties"]["agentSpec"];
        assert_eq!(agent_spec["type"], "object");
        assert_eq!(agent_spec["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(schema["properties"]["spec"]["required"], json!(["agentSpec"]));
    }

    #[test]
    fn tenant_schema_requires_its_fields_and_both_have_status_and_columns() {
        let tenant = NexusTenant::crd();
        let schema = schema_of(&tenant);
        let mut required: Vec<String> = serde_json::from_value(schema["properties"]["spec"]["required"].clone()).unwrap();
        required.sort();
        assert_eq!(required, ["displayName", "nodeProfile"]);
        for crd in [tenant, NexusAgent::crd()] {
            let version = &crd.spec.versions[0];
            assert_eq!((crd.spec.group.as_str(), version.name.as_str(), crd.spec.scope.as_str()), ("nexus.astromesh.io", "v1alpha1", "Namespaced"));
            assert!(version.subresources.as_ref().unwrap().status.is_some(), "{} has a status subresource", crd.spec.names.kind);
            let columns: Vec<&str> = version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
            assert_eq!(columns, ["Phase", "Age"]);
        }
    }

    #[test]
    fn the_schema_admits_only_known_phases() {
        let phase_of = |crd| schema_of(&crd)["properties"]["status"]["properties"]["phase"].clone();
        assert_eq!(phase_of(NexusTenant::crd())["enum"], json!(["Pending", "Provisioning", "Ready", "Error"]));
        assert_eq!(phase_of(NexusAgent::crd())["enum"], json!(["Pending", "Deploying", "Running", "Failed"]));
        for phase in [AgentPhase::Pending, AgentPhase::Deploying, AgentPhase::Running, AgentPhase::Failed] {
            assert_eq!(AgentPhase::from(NexusAgentPhase::from(phase)), phase);
        }
        for phase in [TenantPhase::Pending, TenantPhase::Provisioning, TenantPhase::Ready, TenantPhase::Error] {
            assert_eq!(TenantPhase::from(NexusTenantPhase::from(phase)), phase);
        }
    }

    #[test]
    fn finalizers_and_labels_are_in_the_resources_group() {
        assert_eq!(NexusTenant::api_version(&()), "nexus.astromesh.io/v1alpha1");
        assert_eq!(NexusAgent::group(&()), NexusTenant::group(&()));
        for name in [TENANT_FINALIZER, AGENT_FINALIZER, MANAGED_LABEL] {
            assert!(name.starts_with(&format!("{}/", NexusTenant::group(&()))), "{name}");
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let agent: NexusAgent = serde_json::from_value(json!({
            "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusAgent",
            "metadata": {"name": "bot", "namespace": "tenant-x"},
            "spec": {"agentSpec": {"apiVersion": "astromesh/v1", "spec": {"x-custom": {"deep": [1]}}}}
        }))
        .unwrap();
        assert_eq!(serde_json::to_value(&agent).unwrap()["spec"]["agentSpec"]["spec"]["x-custom"]["deep"], json!([1]));
        assert!(crds_yaml().unwrap().matches("kind: CustomResourceDefinition").count() == 2);
    }
}
