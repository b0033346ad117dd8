//! Agents: `astromesh/v1` manifests, validated on construction, and the phases an agent
//! goes through on its way to its tenant's node.
//!
//! A manifest is kept as the JSON document it was sent as, unknown fields included: it
//! passes through to the node. Only what Nexus relies on is checked, when it is received;
//! once accepted it is held compactly, as its serialized JSON text, and parsed only where
//! its content is needed (what it references of other agents is extracted once).
//! A manifest read back from storage is trusted: it is not checked again with today's
//! rules, and one that cannot be parsed any more is reported for that agent alone.

use std::fmt;
use std::sync::{Arc, OnceLock};

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

    /// A name as it was stored, trusted as it is (stored data is not checked again with
    /// today's rules).
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
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

/// The deepest a manifest may nest (the root mapping is level 1): within what every
/// format, the store, the cluster's objects and its watch events can carry (serde_json
/// reads at most 128 levels, and a cluster object wraps the manifest a few levels down).
pub const MAX_DEPTH: usize = 64;

/// The largest a manifest may be as it is held and stored: compact JSON, in bytes. However
/// it was sent (YAML aliases included), a manifest expanding beyond this is refused.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// An `astromesh/v1` Agent manifest: validated when received ([`AgentManifest::parse`]),
/// trusted when read back ([`AgentManifest::from_stored`]). Held as its JSON text behind a
/// shared pointer: clones are cheap and share it.
#[derive(Clone)]
pub struct AgentManifest(Arc<Held>);

struct Held {
    /// The document as compact JSON, keys sorted.
    json: Box<str>,
    name: AgentName,
    version: Option<String>,
    /// What the document says of other agents, extracted on first use (see [`AgentManifest::links`]).
    links: OnceLock<Value>,
}

impl PartialEq for AgentManifest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.name == other.0.name && self.0.version == other.0.version && self.0.json == other.0.json)
    }
}

impl Eq for AgentManifest {}

impl fmt::Debug for AgentManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentManifest").field("name", &self.0.name).field("version", &self.0.version).field("bytes", &self.0.json.len()).finish()
    }
}

/// How deep `document` nests: 0 for a scalar, 1 for a mapping of scalars. Iterative, so
/// that any document can be measured.
pub fn depth(document: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(document, 1usize)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(level);
                stack.extend(items.iter().map(|item| (item, level + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(level);
                stack.extend(fields.values().map(|item| (item, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The problem of a document nested deeper than [`MAX_DEPTH`].
pub fn too_deep() -> String {
    format!("the manifest nests deeper than {MAX_DEPTH} levels")
}

/// The problem of a document larger than [`MAX_MANIFEST_BYTES`] as compact JSON, with
/// what was `measured` of it (at least that many bytes: measuring stops past the bound).
pub fn too_large(measured: usize) -> String {
    format!("the manifest expands to more than {MAX_MANIFEST_BYTES} bytes of JSON (at least {measured} measured)")
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
    /// Validates a manifest: it nests at most [`MAX_DEPTH`] levels and is at most
    /// [`MAX_MANIFEST_BYTES`] as JSON, `apiVersion` is `astromesh/v1`, `kind` is `Agent`,
    /// `metadata.name` is a DNS-1123 label, `metadata.version` (if present) is semver, and
    /// `spec.model` names at least one model. Unknown fields are kept.
    ///
    /// # Errors
    /// [`Error::InvalidFields`] listing every problem found, with its field path.
    pub fn parse(document: Value) -> Result<Self> {
        Self::parse_in(document, None)
    }

    /// [`AgentManifest::parse`], with `metadata.namespace` set to `namespace` when given:
    /// the tenant's namespace wins over whatever the manifest said.
    ///
    /// # Errors
    /// Those of [`AgentManifest::parse`].
    pub fn parse_in(mut document: Value, namespace: Option<&str>) -> Result<Self> {
        if depth(&document) > MAX_DEPTH {
            return Err(Error::InvalidFields(vec![FieldError::new("", too_deep())]));
        }
        let (name, version) = validate(&document)?;
        if let Some(namespace) = namespace
            && let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut)
        {
            metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
        }
        let json = document.to_string();
        drop(document);
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidFields(vec![FieldError::new("", too_large(json.len()))]));
        }
        Ok(Self::held(json, name, version))
    }

    fn held(json: String, name: AgentName, version: Option<String>) -> Self {
        Self(Arc::new(Held { json: json.into_boxed_str(), name, version, links: OnceLock::new() }))
    }

    /// A manifest as it was stored: its name and version as recorded beside it, and its
    /// JSON text, trusted as they are (nothing is checked or parsed here; a text that does
    /// not parse any more shows when its content is needed, see [`AgentManifest::document`]).
    pub fn from_stored(name: AgentName, version: Option<String>, json: String) -> Self {
        Self::held(json, name, version)
    }

    /// The manifest as its JSON text (compact, keys sorted): what is stored.
    pub fn json(&self) -> &str {
        &self.0.json
    }

    /// How many bytes the manifest takes as JSON: what counts against a tenant's budget.
    pub fn size(&self) -> usize {
        self.0.json.len()
    }

    /// The whole document, parsed from its text (each call parses it again: keep the
    /// result rather than calling twice).
    ///
    /// # Errors
    /// [`Error::Internal`] when the text cannot be parsed (a stored manifest corrupted
    /// since, or written by a faulty version).
    pub fn document(&self) -> Result<Value> {
        serde_json::from_str(&self.0.json).map_err(|err| Error::Internal(format!("the stored manifest of agent {} cannot be read: {err}", self.0.name)))
    }

    /// What the manifest says of other agents, as a document of its own: `spec.tools` (the
    /// entries of `type: agent` only) and `spec.chain`, at the same paths as in the
    /// manifest; `Null` when the manifest cannot be read. Extracted on first use and kept.
    pub fn links(&self) -> &Value {
        self.0.links.get_or_init(|| {
            let Ok(mut document) = self.document() else { return Value::Null };
            let Some(Value::Object(mut spec)) = document.get_mut("spec").map(Value::take) else { return serde_json::json!({"spec": {}}) };
            let mut kept = Map::new();
            if let Some(Value::Array(tools)) = spec.remove("tools") {
                kept.insert("tools".to_owned(), Value::Array(tools.into_iter().filter(|tool| tool["type"] == "agent").collect()));
            }
            if let Some(chain) = spec.remove("chain") {
                kept.insert("chain".to_owned(), chain);
            }
            serde_json::json!({"spec": kept})
        })
    }
}

/// Checks a document against the manifest's rules; its name and version.
fn validate(document: &Value) -> Result<(AgentName, Option<String>)> {
    let mut problems = Problems(Vec::new());
    let Value::Object(root) = document else {
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
        (Some(name), true) => Ok((name, version)),
        _ => Err(Error::InvalidFields(problems.0)),
    }
}

impl AgentManifest {
    /// `metadata.name`.
    pub fn name(&self) -> &AgentName {
        &self.0.name
    }

    /// `metadata.version`, if given.
    pub fn version(&self) -> Option<&str> {
        self.0.version.as_deref()
    }

    /// The manifest with `metadata.namespace` set to `namespace`: the tenant's namespace
    /// wins over whatever the manifest said. (Parses the text again: when receiving a
    /// manifest, [`AgentManifest::parse_in`] does it in one go.) A manifest that cannot be
    /// read is returned as it is.
    pub fn in_namespace(self, namespace: &str) -> Self {
        let Ok(mut document) = self.document() else { return self };
        if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
        }
        Self::held(document.to_string(), self.0.name.clone(), self.0.version.clone())
    }

    /// SHA-256 of the document's canonical JSON (compact, keys sorted), hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.0.json.as_bytes()))
    }
}

/// What one tenant may hold of agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentQuota {
    /// How many agents.
    pub max_agents: u32,
    /// How many bytes of manifests, all its agents' together ([`AgentManifest::size`]).
    pub max_manifest_bytes: u64,
}

/// What an update keeps of an agent's history, and what its tenant may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateLimits {
    /// The versions kept per agent (at least the newest).
    pub keep_versions: u32,
    /// The bytes of manifests the tenant may hold, all its agents' current ones together.
    pub max_manifest_bytes: u64,
}

/// An agent as a listing shows it: what is recorded beside its manifest, without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSummary {
    pub tenant_id: TenantId,
    pub name: AgentName,
    /// `metadata.version` of its manifest.
    pub version: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an agent stands on its tenant's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentPhase {
    Pending,
    Deploying,
    Running,
    Failed,
}

impl AgentPhase {
    /// Every phase, in the order an agent goes through them.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Deploying, Self::Running, Self::Failed];

    /// Its name, as the API shows it and stores keep it: `Pending`, `Deploying`, `Running`, `Failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Deploying => "Deploying",
            Self::Running => "Running",
            Self::Failed => "Failed",
        }
    }

    /// The phase named `name` ([`AgentPhase::as_str`]); `None` for any other text.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.as_str() == name)
    }
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

    /// The status with `last_synced_at` as users read it: when Nexus last saw the agent as
    /// it should be on its node. That is its own time (its last push) or, for an agent
    /// Running the generation it describes (`current`), when its node was last seen
    /// holding every such agent as it should (`node_seen`), whichever is later: the loop
    /// records one time per node and period instead of writing every agent's status.
    #[must_use]
    pub fn seen_on_node(mut self, current: bool, node_seen: Option<DateTime<Utc>>) -> Self {
        if current && self.phase == AgentPhase::Running && self.node_ack {
            self.last_synced_at = self.last_synced_at.max(node_seen);
        }
        self
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

impl AgentObject {
    /// The object with its status's `last_synced_at` as users read it, given when its node
    /// was last seen holding every Running agent as it should ([`AgentStatus::seen_on_node`]).
    #[must_use]
    pub fn seen_on_node(mut self, node_seen: Option<DateTime<Utc>>) -> Self {
        let current = self.observed_generation == self.generation && !self.deleting;
        self.status = self.status.seen_on_node(current, node_seen);
        self
    }
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
