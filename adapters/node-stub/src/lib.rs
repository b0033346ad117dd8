//! An in-process stand-in for astromesh-nodes: it remembers what it was told per node
//! endpoint, acknowledges everything, and can be told to fail every call (as an
//! unreachable node would), for tests and local runs without a node. It counts the calls
//! it receives, writes apart, so that tests and benchmarks can tell what reached a node.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use nexus_ports::agents::AgentName;
use nexus_ports::node_names::NodeAgent;
use nexus_ports::ports::NodeProxy;
use nexus_ports::{Error, Result};
use serde_json::{Value, json};

/// An agent as the stub node holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StubAgent {
    pub manifest: Value,
    pub deployed: bool,
}

/// An agent as the stub keeps it: its manifest as compact JSON text, parsed when looked at,
/// so that a stub standing in for a node holding large manifests costs little memory.
#[derive(Debug, Clone)]
struct Held {
    manifest: String,
    deployed: bool,
}

impl Held {
    fn view(&self) -> StubAgent {
        StubAgent { manifest: serde_json::from_str(&self.manifest).unwrap_or(Value::Null), deployed: self.deployed }
    }
}

/// How many calls a stub received, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Registrations, deployments and removals: what changes a node.
    pub writes: u64,
    /// Lists of a node's agents.
    pub lists: u64,
    /// Every other call (views, traces, runs).
    pub reads: u64,
}

impl Requests {
    /// Every call.
    pub fn total(&self) -> u64 {
        self.writes + self.lists + self.reads
    }
}

/// [`NodeProxy`] in memory.
#[derive(Default)]
pub struct StubNode {
    failing: AtomicBool,
    agents: Mutex<BTreeMap<(String, String), Held>>,
    writes: AtomicU64,
    lists: AtomicU64,
    reads: AtomicU64,
}

impl StubNode {
    /// A stub that acknowledges everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, fail every call (`true`) or acknowledge again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// What the node at `node` holds of `name`.
    pub fn agent(&self, node: &str, name: &str) -> Option<StubAgent> {
        self.agents().get(&(node.to_owned(), name.to_owned())).map(Held::view)
    }

    /// The calls received so far (failed ones included).
    pub fn requests(&self) -> Requests {
        Requests { writes: self.writes.load(Ordering::SeqCst), lists: self.lists.load(Ordering::SeqCst), reads: self.reads.load(Ordering::SeqCst) }
    }

    /// Forgets everything the node at `node` holds, as a node restarted empty would.
    pub fn restart(&self, node: &str) {
        self.agents().retain(|(at, _), _| at != node);
    }

    /// Makes the node at `node` hold `agent` under `name`, as if someone else had put it
    /// there (not counted as a call).
    pub fn put(&self, node: &str, name: &str, agent: StubAgent) {
        self.agents().insert((node.to_owned(), name.to_owned()), Held { manifest: agent.manifest.to_string(), deployed: agent.deployed });
    }

    fn agents(&self) -> MutexGuard<'_, BTreeMap<(String, String), Held>> {
        self.agents.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a call of that kind, then fails it when told to.
    fn call(&self, counter: &AtomicU64) -> Result<()> {
        counter.fetch_add(1, Ordering::SeqCst);
        self.reachable()
    }

    fn reachable(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) { Err(Error::Upstream("the agent's node cannot be reached (stub told to fail)".to_owned())) } else { Ok(()) }
    }
}

#[async_trait]
impl NodeProxy for StubNode {
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
        self.call(&self.writes)?;
        let name = manifest["metadata"]["name"].as_str().ok_or_else(|| Error::Upstream("the stub node needs metadata.name".to_owned()))?;
        self.agents().insert((node.to_owned(), name.to_owned()), Held { manifest: manifest.to_string(), deployed: false });
        Ok(())
    }

    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.call(&self.writes)?;
        match self.agents().get_mut(&(node.to_owned(), name.to_string())) {
            Some(agent) => {
                agent.deployed = true;
                Ok(())
            }
            None => Err(Error::Upstream("the agent's node refused to deploy the agent (404 Not Found)".to_owned())),
        }
    }

    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.call(&self.writes)?;
        self.agents().remove(&(node.to_owned(), name.to_string()));
        Ok(())
    }

    async fn list_node_agents(&self, node: &str) -> Result<Vec<NodeAgent>> {
        self.call(&self.lists)?;
        let agents = self.agents();
        Ok(agents
            .range((node.to_owned(), String::new())..)
            .take_while(|((at, _), _)| at == node)
            .map(|((_, name), held)| {
                let version = serde_json::from_str::<Value>(&held.manifest).ok().and_then(|m| m["metadata"]["version"].as_str().map(str::to_owned));
                let status = if held.deployed { "deployed" } else { "draft" };
                NodeAgent { name: name.clone(), version: Some(version.unwrap_or_else(|| "0.1.0".to_owned())), status: status.to_owned() }
            })
            .collect())
    }

    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
        self.call(&self.reads)?;
        Ok(self.agent(node, name.as_str()).map(|agent| {
            let status = if agent.deployed { "deployed" } else { "draft" };
            json!({"name": name.as_str(), "version": agent.manifest["metadata"]["version"], "status": status, "manifest": agent.manifest})
        }))
    }

    async fn agent_traces(&self, _node: &str, _name: &AgentName, _limit: u32) -> Result<Value> {
        self.call(&self.reads)?;
        Ok(json!({"traces": []}))
    }

    /// Answers a deployed agent's run with the query echoed back, as no model is there.
    async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, _timeout: std::time::Duration) -> Result<Value> {
        self.call(&self.reads)?;
        match self.agent(node, name.as_str()) {
            Some(agent) if agent.deployed => {
                let query = request["query"].as_str().unwrap_or_default();
                Ok(json!({"answer": format!("(stub node) {query}"), "steps": [], "usage": null, "trace": null, "blocked": false}))
            }
            _ => Err(Error::Upstream("the agent's node refused the run (404 Not Found): the agent is not deployed there yet".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remembers_per_node_and_fails_on_demand() {
        let stub = StubNode::new();
        let name = AgentName::parse("bot").unwrap();
        let manifest = json!({"metadata": {"name": "bot", "version": "1.0.0"}});
        assert!(stub.deploy_agent("http://a", &name).await.is_err(), "deploying an unknown agent fails like a node's 404");
        stub.register_agent("http://a", &manifest).await.unwrap();
        stub.deploy_agent("http://a", &name).await.unwrap();
        assert_eq!(stub.agent_view("http://a", &name).await.unwrap().unwrap()["status"], "deployed");
        assert!(stub.agent_view("http://b", &name).await.unwrap().is_none());
        stub.set_failing(true);
        assert!(matches!(stub.agent_traces("http://a", &name, 5).await, Err(Error::Upstream(_))));
        stub.set_failing(false);
        stub.remove_agent("http://a", &name).await.unwrap();
        assert!(stub.agent("http://a", "bot").is_none());
    }

    #[tokio::test]
    async fn lists_a_nodes_agents_as_astromesh_node_does_and_counts_every_call() {
        let stub = StubNode::new();
        let name = AgentName::parse("bot").unwrap();
        stub.register_agent("http://a", &json!({"metadata": {"name": "bot", "version": "1.0.0+nexus.0123456789abcdef"}})).await.unwrap();
        stub.register_agent("http://a", &json!({"metadata": {"name": "plain"}})).await.unwrap();
        stub.register_agent("http://b", &json!({"metadata": {"name": "elsewhere"}})).await.unwrap();
        stub.deploy_agent("http://a", &name).await.unwrap();
        let listed = stub.list_node_agents("http://a").await.unwrap();
        assert_eq!(
            listed,
            vec![
                NodeAgent { name: "bot".into(), version: Some("1.0.0+nexus.0123456789abcdef".into()), status: "deployed".into() },
                NodeAgent { name: "plain".into(), version: Some("0.1.0".into()), status: "draft".into() },
            ]
        );
        assert_eq!(stub.requests(), Requests { writes: 4, lists: 1, reads: 0 });
        stub.agent_view("http://a", &name).await.unwrap();
        stub.restart("http://a");
        assert!(stub.list_node_agents("http://a").await.unwrap().is_empty(), "restarted empty");
        assert_eq!(stub.list_node_agents("http://b").await.unwrap().len(), 1, "other nodes keep theirs");
        stub.set_failing(true);
        assert!(stub.list_node_agents("http://b").await.is_err());
        assert_eq!(stub.requests(), Requests { writes: 4, lists: 4, reads: 1 }, "failed calls count too");
        assert_eq!(stub.requests().total(), 9);
        stub.put("http://b", "x", StubAgent { manifest: json!({"metadata": {"name": "x"}}), deployed: true });
        assert_eq!(stub.requests().total(), 9, "what is put there by hand is no call");
    }
}
