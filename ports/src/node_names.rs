//! Agents as their node knows them. A node that tenants share sees only bare agent names,
//! so each agent is pushed there under a node-side name derived from its tenant and its
//! name, which no other tenant can produce; the references a manifest makes to other
//! agents are rewritten to the same tenant's node-side names, so they resolve inside the
//! tenant. What the node answers is turned back into the tenant's own names before a
//! client sees it. A node of the tenant's own keeps the agents' names.
//!
//! Every document pushed carries a stamp in `metadata.version`: the manifest's own version
//! with build metadata `nexus.` and 16 hex digits of a digest of the document pushed. The
//! node's list of agents shows each agent's version, so the stamp tells, from one list, an
//! agent that is there as Nexus pushed it from one that changed, and the names Nexus owns
//! from any other. The stamp is taken off what the node answers before a client sees it.
//!
//! The places an astromesh/v1 manifest names another agent (astromesh-node 0.74.1):
//! `spec.tools[]` entries of `type: agent` (their `agent`, the agent the tool invokes; their
//! `name` is the tool's name) and `spec.chain.on_complete[].agent` (the agents a chain
//! hands its output to).

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::agents::{AgentManifest, AgentName};
use crate::tenancy::TenantId;

/// Whether the node a tenant's agents run on is shared with other tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSharing {
    /// One node for every tenant: agents get node-side names.
    Shared,
    /// A node per tenant: agents keep their names.
    PerTenant,
}

/// How much of an agent's name a shared node's name keeps, for people reading the node.
const READABLE_PREFIX: usize = 30;
/// Hex digits of the digest in a shared node's name: 128 bits.
const DIGEST_HEX: usize = 32;

/// What marks a version Nexus stamped: it follows `+` (or `.`, after build metadata of
/// the manifest's own), then [`STAMP_HEX`] hex digits.
const STAMP: &str = "nexus.";
/// Hex digits of the document's digest in the stamp: 64 bits.
const STAMP_HEX: usize = 16;
/// The version astromesh-node 0.74.1 lists for an agent whose manifest has none.
const NODE_DEFAULT_VERSION: &str = "0.1.0";

/// An agent as its node lists it (astromesh-node 0.74.1 `GET /v1/agents`: `name`,
/// `version`, `namespace`, `status`, and `error` for a draft that failed to build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    /// Its name on the node (not necessarily a valid agent name: the node holds others).
    pub name: String,
    /// Its `metadata.version` as the node holds it; the stamp of the document Nexus pushed.
    pub version: Option<String>,
    /// `deployed`, `draft`, `paused`...
    pub status: String,
}

impl NodeAgent {
    /// Whether the node runs it.
    pub fn is_deployed(&self) -> bool {
        self.status == "deployed"
    }

    /// Whether Nexus pushed it (its version carries a stamp): only such agents are removed
    /// from a node when nothing should be there under their name.
    pub fn is_stamped(&self) -> bool {
        self.version.as_deref().is_some_and(|version| unstamped(version).is_some())
    }
}

/// The manifest's own version of a stamped one; `None` when `version` carries no stamp.
pub fn unstamped(version: &str) -> Option<&str> {
    let digits = version.len().checked_sub(STAMP_HEX)?;
    let (head, hex) = version.split_at_checked(digits)?;
    let own = head.strip_suffix(STAMP)?;
    let own = own.strip_suffix('+').or_else(|| own.strip_suffix('.').filter(|own| own.contains('+')))?;
    hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)).then_some(own)
}

/// `document` with its `metadata.version` stamped with a digest of the document.
fn stamp(mut document: Value) -> Value {
    let digest = Sha256::digest(document.to_string().as_bytes());
    let hash = &hex::encode(digest)[..STAMP_HEX];
    if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
        let own = metadata.get("version").and_then(Value::as_str).unwrap_or(NODE_DEFAULT_VERSION);
        let separator = if own.contains('+') { '.' } else { '+' };
        let stamped = format!("{own}{separator}{STAMP}{hash}");
        metadata.insert("version".to_owned(), Value::String(stamped));
    }
    document
}

/// The node-side names of one tenant's agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNames {
    tenant: TenantId,
    sharing: NodeSharing,
}

impl NodeNames {
    /// The names of `tenant`'s agents on a node shared or not.
    pub fn new(tenant: TenantId, sharing: NodeSharing) -> Self {
        Self { tenant, sharing }
    }

    /// The name `name` is pushed under. On a shared node: up to 30 characters of the name,
    /// `-`, then 32 hex digits of SHA-256 over the tenant's id and the name; a DNS-1123
    /// label of at most 63 characters, distinct for every (tenant, name).
    pub fn node_name(&self, name: &AgentName) -> AgentName {
        match self.sharing {
            NodeSharing::PerTenant => name.clone(),
            NodeSharing::Shared => AgentName::parse(&self.shared_name(name.as_str())).unwrap_or_else(|_| unreachable!("a hex digest is a DNS-1123 label")),
        }
    }

    /// The shared node's name of any referenced name (a reference need not be a valid agent
    /// name; it still must not reach outside the tenant).
    fn shared_name(&self, raw: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(b"nexus node agent name\0");
        digest.update(self.tenant.as_uuid().as_bytes());
        digest.update(raw.as_bytes());
        let hash = &hex::encode(digest.finalize())[..DIGEST_HEX];
        let readable: String = raw.chars().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').take(READABLE_PREFIX).collect();
        let readable = readable.trim_matches('-');
        if readable.is_empty() { hash.to_owned() } else { format!("{readable}-{hash}") }
    }

    /// The node-side name a reference to `raw` is rewritten to.
    pub fn node_reference(&self, raw: &str) -> String {
        match self.sharing {
            NodeSharing::PerTenant => raw.to_owned(),
            NodeSharing::Shared => self.shared_name(raw),
        }
    }

    /// The document to push: `metadata.name` is the node-side name, every reference to
    /// another agent names that agent's node-side name in the same tenant, and
    /// `metadata.version` carries the stamp of the document.
    ///
    /// # Errors
    /// Those of [`AgentManifest::document`] (a stored manifest that cannot be read).
    pub fn to_node(&self, manifest: &AgentManifest) -> crate::Result<Value> {
        self.unstamped_document(manifest).map(stamp)
    }

    /// The version the node lists for the agent when it holds what [`Self::to_node`]
    /// pushes, stamp included.
    ///
    /// # Errors
    /// Those of [`AgentManifest::document`].
    pub fn node_version(&self, manifest: &AgentManifest) -> crate::Result<String> {
        let document = self.to_node(manifest)?;
        Ok(document["metadata"]["version"].as_str().unwrap_or_default().to_owned())
    }

    fn unstamped_document(&self, manifest: &AgentManifest) -> crate::Result<Value> {
        let mut document = manifest.document()?;
        if self.sharing == NodeSharing::PerTenant {
            return Ok(document);
        }
        if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("name".to_owned(), Value::String(self.node_name(manifest.name()).as_str().to_owned()));
        }
        for reference in references_mut(&mut document) {
            if let Value::String(name) = reference {
                *name = self.shared_name(name);
            }
        }
        Ok(document)
    }

    /// Turns what the node answered about `manifest`'s agent (its view, its manifest, its
    /// traces) back into the tenant's names: every string that is the node-side name of
    /// the agent or of an agent its manifest references becomes that agent's own name, and
    /// every stamped version the manifest's own.
    pub fn restore(&self, manifest: &AgentManifest, mut answer: Value) -> Value {
        if manifest.version().is_none() {
            // The stamp gave the pushed document a version the manifest does not have.
            let drop_stamped = |document: &mut Value| {
                if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut)
                    && metadata.get("version").and_then(Value::as_str).is_some_and(|version| unstamped(version).is_some())
                {
                    metadata.remove("version");
                }
            };
            drop_stamped(&mut answer);
            if let Some(document) = answer.get_mut("manifest") {
                drop_stamped(document);
            }
        }
        let mut names = HashMap::new();
        if self.sharing == NodeSharing::PerTenant {
            return replace_strings(answer, &names);
        }
        names.insert(self.node_name(manifest.name()).as_str().to_owned(), manifest.name().as_str().to_owned());
        for reference in references(manifest.links()) {
            names.insert(self.node_reference(reference), reference.to_owned());
        }
        replace_strings(answer, &names)
    }
}

/// The names `document` references other agents by (string values only).
pub fn references(document: &Value) -> Vec<&str> {
    let spec = &document["spec"];
    let tools = spec["tools"].as_array().into_iter().flatten().filter(|tool| tool["type"] == "agent").map(|tool| &tool["agent"]);
    let chain = spec["chain"]["on_complete"].as_array().into_iter().flatten().map(|link| &link["agent"]);
    tools.chain(chain).filter_map(Value::as_str).collect()
}

/// The values of the reference fields of `document`, to rewrite.
fn references_mut(document: &mut Value) -> Vec<&mut Value> {
    let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) else { return Vec::new() };
    let mut found = Vec::new();
    let (mut tools, mut chain) = (None, None);
    for (key, value) in spec.iter_mut() {
        match key.as_str() {
            "tools" => tools = value.as_array_mut(),
            "chain" => chain = value.get_mut("on_complete").and_then(Value::as_array_mut),
            _ => {}
        }
    }
    for tool in tools.into_iter().flatten() {
        if tool["type"] == "agent"
            && let Some(agent) = tool.get_mut("agent")
        {
            found.push(agent);
        }
    }
    for link in chain.into_iter().flatten() {
        if let Some(agent) = link.get_mut("agent") {
            found.push(agent);
        }
    }
    found
}

/// `value` with every string that is a key of `names` replaced by its value, and every
/// stamped version by the version it stamps.
fn replace_strings(value: Value, names: &HashMap<String, String>) -> Value {
    match value {
        Value::String(text) => Value::String(match (names.get(&text), unstamped(&text).map(str::to_owned)) {
            (Some(name), _) => name.clone(),
            (None, Some(own)) => own,
            (None, None) => text,
        }),
        Value::Array(items) => Value::Array(items.into_iter().map(|item| replace_strings(item, names)).collect()),
        Value::Object(fields) => Value::Object(fields.into_iter().map(|(key, item)| (key, replace_strings(item, names))).collect()),
        other => other,
    }
}

#[cfg(test)]
#[path = "node_names_tests.rs"]
mod tests;
