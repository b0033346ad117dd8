//! Chains on a node that tenants share. astromesh-node 0.74.1 compiles the `spec.chain` of
//! every agent it holds, deployed or not, whenever any agent is deployed; one chain that
//! does not compile (a malformed block, a target it does not hold, a cycle, a path longer
//! than `max_depth`) fails every deploy on that node. On a shared node one tenant's chain
//! would so stop every other tenant's deploys. An agent therefore goes to a shared node
//! only when every chain it takes part in compiles with what its tenant has running
//! there; an agent whose chain stops compiling (its target is being deleted) is taken off
//! the node; and an agent leaves the node only after the agents whose chains hand over to
//! it did. Pure functions over one tenant's agent objects, mirroring the node's rules.

use std::collections::HashMap;

use nexus_ports::agents::{AgentObject, AgentPhase};
use nexus_ports::node_names::NodeNames;
use serde_json::Value;

/// The most steps the chains one agent takes part in may expand to (the node compiles a
/// step per link of every path).
const MAX_EXPANDED_STEPS: usize = 10_000;

/// What the chains of an agent's tenant allow for it on a shared node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCheck {
    /// Nothing stands in the way.
    Clear,
    /// It must not be on the node, for this reason (for its status).
    Blocked(String),
    /// Being deleted, it is still the target of a chain of an agent that may be on the node.
    Needed,
}

/// One link of a chain: the agent it hands over to and its `when`.
struct Link<'a> {
    agent: &'a str,
    when: Option<&'a str>,
}

/// A chain that the node can parse.
struct Chain<'a> {
    max_depth: usize,
    /// The conditional and plain links first, the default one last (the node's order).
    links: Vec<Link<'a>>,
}

/// The agent's chain as the node parses it: `None` without one, an error the node would
/// raise otherwise.
fn chain_of<'a>(document: &'a Value, names: &NodeNames) -> Result<Option<Chain<'a>>, String> {
    let raw = &document["spec"]["chain"];
    if !truthy(raw) {
        return Ok(None);
    }
    let Value::Object(chain) = raw else { return Err("spec.chain must be a mapping".to_owned()) };
    match chain.get("mode") {
        None => {}
        Some(Value::String(mode)) if mode == "sequential" || mode == "parallel" => {}
        Some(_) => return Err("spec.chain.mode must be sequential or parallel".to_owned()),
    }
    let max_depth = match chain.get("max_depth") {
        None => 5,
        Some(Value::Number(n)) => n.as_u64().filter(|d| *d >= 1).ok_or("spec.chain.max_depth must be a whole number of at least 1")?,
        Some(_) => return Err("spec.chain.max_depth must be a whole number of at least 1".to_owned()),
    };
    let links = match chain.get("on_complete") {
        Some(Value::Array(links)) if !links.is_empty() => links,
        _ => return Err("spec.chain.on_complete must list at least one link".to_owned()),
    };
    let (mut plain, mut defaults) = (Vec::new(), Vec::new());
    for (i, link) in links.iter().enumerate() {
        let at = format!("spec.chain.on_complete[{i}]");
        let Value::Object(link) = link else { return Err(format!("{at} must be a mapping")) };
        let Some(Value::String(agent)) = link.get("agent").filter(|a| a.as_str().is_some_and(|a| !a.is_empty())) else {
            return Err(format!("{at}.agent must name an agent of this tenant"));
        };
        let text = |key: &str| match link.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(value) if !truthy(value) => Ok(None),
            Some(_) => Err(format!("{at}.{key} must be a template string")),
        };
        let (when, _input) = (text("when")?, text("input")?);
        let is_default = link.get("default").is_some_and(truthy);
        if is_default && link.get("when").is_some_and(|w| !w.is_null()) {
            return Err(format!("{at} cannot be the default and have a when"));
        }
        match link.get("retry") {
            Some(retry) if truthy(retry) => {
                let Value::Object(retry) = retry else { return Err(format!("{at}.retry must be a mapping")) };
                if let Some(key) = retry.keys().find(|k| !["max_attempts", "backoff", "initial_delay_seconds"].contains(&k.as_str())) {
                    return Err(format!("{at}.retry has an unknown key {key}"));
                }
            }
            _ => {}
        }
        let link = Link { agent, when };
        if is_default { defaults.push(link) } else { plain.push(link) }
    }
    if defaults.len() > 1 {
        return Err("spec.chain.on_complete has more than one default link".to_owned());
    }
    if chain.get("mode").and_then(Value::as_str) == Some("parallel") {
        let siblings: Vec<String> = plain.iter().chain(&defaults).map(|l| format!("steps.{}", names.node_reference(l.agent))).collect();
        if plain.iter().chain(&defaults).any(|l| l.when.is_some_and(|w| siblings.iter().any(|s| w.contains(s.as_str())))) {
            return Err("a when of a parallel chain refers to a sibling link".to_owned());
        }
    }
    plain.extend(defaults);
    Ok(Some(Chain { max_depth: usize::try_from(max_depth).unwrap_or(usize::MAX), links: plain }))
}

/// Python's truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The node's expansion of the chain of `root` over `graph` (the tenant's agents on the
/// node, by name): every path, each link's target present and not on the path, no path
/// longer than the root's `max_depth`. Returns the first failure and the agents on its path.
fn expand(root: &str, graph: &HashMap<&str, &Value>, names: &NodeNames) -> Result<(), (String, Vec<String>)> {
    let mut budget = MAX_EXPANDED_STEPS;
    let Some(Some(chain)) = graph.get(root).map(|doc| chain_of(doc, names).ok().flatten()) else { return Ok(()) };
    let max_depth = chain.max_depth;
    let mut stack: Vec<(String, Vec<String>)> = vec![(root.to_owned(), vec![root.to_owned()])];
    while let Some((parent, path)) = stack.pop() {
        let chain = match graph.get(parent.as_str()).map(|doc| chain_of(doc, names)) {
            Some(Ok(Some(chain))) => chain,
            Some(Ok(None)) | None => continue,
            Some(Err(problem)) => return Err((format!("the chain of {parent} cannot compile: {problem}"), path)),
        };
        if path.len() > max_depth {
            return Err((format!("the chain of {root} is longer than its max_depth of {max_depth}"), path));
        }
        for link in &chain.links {
            if !graph.contains_key(link.agent) {
                return Err((format!("the chain of {parent} hands over to {}, which this tenant has not deployed", link.agent), path));
            }
            if path.iter().any(|p| p == link.agent) {
                return Err((format!("the chain of {root} loops back to {}", link.agent), path));
            }
        }
        for link in &chain.links {
            budget = budget.checked_sub(1).ok_or_else(|| (format!("the chain of {root} expands to more than {MAX_EXPANDED_STEPS} steps"), path.clone()))?;
            let mut next = path.clone();
            next.push(link.agent.to_owned());
            stack.push((link.agent.to_owned(), next));
        }
    }
    Ok(())
}

/// Whether an agent may be on its node now: acknowledged, being pushed, or failed (perhaps
/// after it was registered). An agent held off the node is `Pending`.
pub fn may_be_on_node(object: &AgentObject) -> bool {
    object.status.node_ack || matches!(object.status.phase, AgentPhase::Deploying | AgentPhase::Failed)
}

/// Whether `object` may be on its tenant's shared node, given `tenant` (every agent object
/// of its tenant, `object` included): the chains it takes part in must compile with the
/// tenant's other agents that are acknowledged there; and being deleted, it must wait for
/// the agents whose chains hand over to it to leave.
pub fn node_check(object: &AgentObject, tenant: &[&AgentObject], names: &NodeNames) -> NodeCheck {
    let name = object.manifest.name().as_str();
    let others = || tenant.iter().filter(|o| o.manifest.name() != object.manifest.name());
    if object.deleting {
        let hands_over = |o: &AgentObject| chain_of(o.manifest.links(), names).ok().flatten().is_some_and(|c| c.links.iter().any(|l| l.agent == name));
        return if others().any(|o| may_be_on_node(o) && hands_over(o)) { NodeCheck::Needed } else { NodeCheck::Clear };
    }
    if let Err(problem) = chain_of(object.manifest.links(), names) {
        return NodeCheck::Blocked(problem);
    }
    let mut graph: HashMap<&str, &Value> =
        others().filter(|o| o.status.node_ack && !o.deleting).map(|o| (o.manifest.name().as_str(), o.manifest.links())).collect();
    graph.insert(name, object.manifest.links());
    let mut roots: Vec<&str> = graph.keys().copied().collect();
    roots.sort_unstable();
    for root in roots {
        if let Err((problem, path)) = expand(root, &graph, names)
            && (root == name || path.iter().any(|p| p == name))
        {
            return NodeCheck::Blocked(problem);
        }
    }
    NodeCheck::Clear
}

#[cfg(test)]
#[path = "chains_tests.rs"]
mod tests;
