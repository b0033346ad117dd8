//! Agents: `astromesh/v1` manifests, validated on construction, and the phases an agent
//! goes through on its way to its tenant's node.
//!
//! A manifest is kept as the JSON document it was sent as, unknown fields included: it
//! passes through to the node. Only what Nexus relies on is checked.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::tenancy::TenantId;
use crate::{Error, FieldError, Result};

/// The only manifest `apiVersion` accepted.
pub const API_VERSION: &str = "astromesh/v1";
/// The only manifest `kind` accepted.
pub const KIND: &str = "Agent";

/// An agent's name: a DNS-1123 label (it becomes a cluster resource name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

const NAME_RULE: &str = "must be a DNS-1123 label: at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit";

impl AgentName {
    /// Validates a DNS-1123 label.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] otherwise.
    pub fn parse(raw: &str) -> Result<Self> {
        let bytes = raw.as_bytes();
        let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = raw.len() <= 63
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok { Ok(Self(raw.to_owned())) } else { Err(Error::invalid(format!("agent name {NAME_RULE}"))) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated `astromesh/v1` Agent manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentManifest {
    document: Value,
    name: AgentName,
    version: Option<String>,
}

/// Collects the problems of one document.
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// The string at `field` of `object`, noting a problem when it is missing or not a string.
    fn string<'a>(&mut self, object: &'a Map<String, Value>, key: &str, path: &str) -> Option<&'a str> {
        match object.get(key) {
            Some(Value::String(text)) if !text.trim().is_empty() => Some(text),
            Some(Value::String(_)) => {
                self.add(path, "must not be empty");
                None
            }
            Some(_) => {
                self.add(path, "must be a string");
                None
            }
            None => {
                self.add(path, "is required");
                None
            }
        }
    }

    /// The mapping at `field`, noting a problem when it is missing or not a mapping.
    fn mapping<'a>(&mut self, value: Option<&'a Value>, path: &str) -> Option<&'a Map<String, Value>> {
        match value {
            Some(Value::Object(object)) => Some(object),
            Some(_) => {
                self.add(path, "must be a mapping");
                None
            }
            None => {
                self.add(path, "is required");
                None
            }
        }
    }

    /// A legacy model block: `provider` and `model`.
    fn legacy_block(&mut self, block: &Value, path: &str) {
        if let Some(block) = self.mapping(Some(block), path) {
            self.string(block, "provider", &format!("{path}.provider"));
            self.string(block, "model", &format!("{path}.model"));
        }
    }

    /// A role-schema block: `candidates`, a non-empty list of `source` + `model`.
    fn role_block(&mut self, block: &Value, path: &str) {
        let Some(block) = self.mapping(Some(block), path) else { return };
        match block.get("candidates") {
            Some(Value::Array(candidates)) if !candidates.is_empty() => {
                for (i, candidate) in candidates.iter().enumerate() {
                    let path = format!("{path}.candidates[{i}]");
                    if let Some(candidate) = self.mapping(Some(candidate), &path) {
                        self.string(candidate, "source", &format!("{path}.source"));
                        self.string(candidate, "model", &format!("{path}.model"));
                    }
                }
            }
            Some(Value::Array(_)) => self.add(&format!("{path}.candidates"), "must name at least one candidate"),
            Some(_) => self.add(&format!("{path}.candidates"), "must be a list"),
            None => self.add(&format!("{path}.candidates"), "is required"),
        }
    }

    /// `spec.model`: the legacy blocks (`primary`, `fallback`) or the role schema
    /// (`default`, `roles.<role>`), naming at least one model.
    fn model(&mut self, model: &Map<String, Value>) {
        let path = "spec.model";
        for key in ["primary", "fallback"] {
            if let Some(block) = model.get(key) {
                self.legacy_block(block, &format!("{path}.{key}"));
            }
        }
        if let Some(block) = model.get("default") {
            self.role_block(block, &format!("{path}.default"));
        }
        if let Some(roles) = model.get("roles")
            && let Some(roles) = self.mapping(Some(roles), &format!("{path}.roles"))
        {
            for (role, block) in roles {
                self.role_block(block, &format!("{path}.roles.{role}"));
            }
        }
        let names_a_model = ["primary", "fallback", "default"].iter().any(|k| model.contains_key(*k))
            || model.get("roles").and_then(Value::as_object).is_some_and(|roles| !roles.is_empty());
        if !names_a_model {
            self.add(path, "must name at least one model: `primary`/`fallback` (provider + model) or `default`/`roles` (candidates of source + model)");
        }
    }
}

impl AgentManifest {
    /// Validates a manifest: `apiVersion` is `astromesh/v1`, `kind` is `Agent`,
    /// `metadata.name` is a DNS-1123 label, `metadata.version` (if present) is semver, and
    /// `spec.model` names at least one model. Unknown fields are kept.
    ///
    /// # Errors
    /// [`Error::InvalidFields`] listing every problem found, with its field path.
    pub fn parse(document: Value) -> Result<Self> {
        let mut problems = Problems(Vec::new());
        let Value::Object(root) = &document else {
            return Err(Error::InvalidFields(vec![FieldError::new("", "the manifest must be a mapping")]));
        };
        match root.get("apiVersion") {
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(_) => problems.add("apiVersion", format!("must be {API_VERSION}")),
            None => problems.add("apiVersion", "is required"),
        }
        match root.get("kind") {
            Some(Value::String(v)) if v == KIND => {}
            Some(_) => problems.add("kind", format!("must be {KIND}")),
            None => problems.add("kind", "is required"),
        }
        let mut name = None;
        let mut version = None;
        if let Some(metadata) = problems.mapping(root.get("metadata"), "metadata") {
            if let Some(raw) = problems.string(metadata, "name", "metadata.name") {
                match AgentName::parse(raw) {
                    Ok(valid) => name = Some(valid),
                    Err(_) => problems.add("metadata.name", NAME_RULE),
                }
            }
            match metadata.get("version") {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) if semver::Version::parse(v).is_ok() => version = Some(v.clone()),
                Some(_) => problems.add("metadata.version", "must be a semantic version such as \"1.0.0\" (quote it in YAML)"),
            }
        }
        if let Some(spec) = problems.mapping(root.get("spec"), "spec")
            && let Some(model) = problems.mapping(spec.get("model"), "spec.model")
        {
            problems.model(model);
        }
        match (name, problems.0.is_empty()) {
            (Some(name), true) => Ok(Self { document, name, version }),
            _ => Err(Error::InvalidFields(problems.0)),
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &AgentName {
        &self.name
    }

    /// `metadata.version`, if given.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The whole document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The manifest with `metadata.namespace` set to `namespace`: the tenant's namespace
    /// wins over whatever the manifest said.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        if let Some(metadata) = self.document.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
        }
        self
    }

    /// SHA-256 of the document's canonical JSON (keys sorted), hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.document.to_string().as_bytes()))
    }
}

/// Where an agent stands on its tenant's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentPhase {
    Pending,
    Deploying,
    Running,
    Failed,
}

/// An agent as registered in a tenant (the durable record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub tenant_id: TenantId,
    pub manifest: AgentManifest,
    /// The number of its current version: 1 at creation, one more per publish.
    pub version_number: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One published version of an agent's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    /// 1 for the creation, then one more per update.
    pub number: u32,
    /// `metadata.version` of that manifest.
    pub version: Option<String>,
    /// [`AgentManifest::checksum`] of that manifest.
    pub checksum: String,
    /// Who published it: `usr_...`, or `key:<label>` for an API key.
    pub author: String,
    pub created_at: DateTime<Utc>,
}

/// One version with the manifest it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedVersion {
    pub version: AgentVersion,
    /// `None` for a version published before manifests were kept.
    pub manifest: Option<AgentManifest>,
}

/// What the runtime reports of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub phase: AgentPhase,
    /// Whether its node acknowledged the current manifest.
    pub node_ack: bool,
    pub last_synced_at: Option<DateTime<Utc>>,
    /// Why it is `Failed`, or what it waits for.
    pub message: Option<String>,
}

impl AgentStatus {
    /// Not deployed yet.
    pub fn pending() -> Self {
        Self { phase: AgentPhase::Pending, node_ack: false, last_synced_at: None, message: None }
    }
}

/// An agent as the cluster holds it: the desired manifest, how far it was reconciled,
/// and whether its deletion was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentObject {
    pub tenant_id: TenantId,
    pub manifest: AgentManifest,
    /// Bumped by every change of the manifest.
    pub generation: u64,
    /// The generation the status describes.
    pub observed_generation: u64,
    pub status: AgentStatus,
    /// Deletion was asked for; the object goes once its node forgot it.
    pub deleting: bool,
}

/// Something in the cluster that changed and should be looked at again: what watches and
/// the API report to the reconcile loop, which then reconciles only that object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A tenant, or its namespace or node.
    Tenant(TenantId),
    /// One agent object of a tenant.
    Agent(TenantId, AgentName),
}

#[cfg(test)]
#[path = "agents_tests.rs"]
mod tests;
