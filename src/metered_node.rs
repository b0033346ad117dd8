//! Node calls counted and timed: a decorator around whichever [`NodeProxy`] is wired, so
//! every adapter is measured the same way. Labels are the operation and its outcome only
//! (never a node, tenant or agent), so the label set stays bounded.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_ports::agents::AgentName;
use nexus_ports::node_names::NodeAgent;
use nexus_ports::ports::NodeProxy;
use nexus_ports::{Error, Result};
use serde_json::Value;

/// A [`NodeProxy`] that records `nexus_node_requests_total{operation,outcome}` and
/// `nexus_node_request_duration_seconds{operation}` for every call of `inner`.
pub struct MeteredNode {
    inner: Arc<dyn NodeProxy>,
    /// Each operation's instruments, registered on the first call and kept: the reconcile
    /// loop calls the node for every resync, and registering by labels each time cost a
    /// lookup and a copy of every label.
    instruments: OnceLock<[Instruments; OPERATIONS.len()]>,
}

impl MeteredNode {
    /// Measures the calls made to `inner`.
    pub fn new(inner: Arc<dyn NodeProxy>) -> Self {
        Self { inner, instruments: OnceLock::new() }
    }

    async fn measured<T>(&self, operation: Operation, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        let instruments = &self.instruments.get_or_init(|| OPERATIONS.map(Instruments::of))[operation as usize];
        instruments.requests[outcome(&result) as usize].increment(1);
        instruments.duration.record(started.elapsed().as_secs_f64());
        result
    }
}

/// The node calls, in the order of [`OPERATIONS`].
#[derive(Debug, Clone, Copy)]
enum Operation {
    RegisterAgent,
    DeployAgent,
    RemoveAgent,
    ListNodeAgents,
    AgentView,
    AgentTraces,
    RunAgent,
}

/// Each [`Operation`]'s label.
const OPERATIONS: [&str; 7] = ["register_agent", "deploy_agent", "remove_agent", "list_node_agents", "agent_view", "agent_traces", "run_agent"];

/// How a call ended, in the order of [`OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    UpstreamError,
    Unavailable,
    Error,
}

/// Each [`Outcome`]'s label.
const OUTCOMES: [&str; 4] = ["ok", "upstream_error", "unavailable", "error"];

/// How a call ended: `ok`; `upstream_error` (the node could not be reached, did not answer
/// in time, or answered with an error); `unavailable`; or `error`.
fn outcome<T>(result: &Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Error::Upstream(_)) => Outcome::UpstreamError,
        Err(Error::Unavailable(_)) => Outcome::Unavailable,
        Err(_) => Outcome::Error,
    }
}

/// One operation's counters (one per outcome) and latency histogram.
struct Instruments {
    requests: [metrics::Counter; OUTCOMES.len()],
    duration: metrics::Histogram,
}

impl Instruments {
    fn of(operation: &'static str) -> Self {
        Self {
            requests: OUTCOMES.map(|outcome| metrics::counter!("nexus_node_requests_total", "operation" => operation, "outcome" => outcome)),
            duration: metrics::histogram!("nexus_node_request_duration_seconds", "operation" => operation),
        }
    }
}

#[async_trait]
impl NodeProxy for MeteredNode {
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
        self.measured(Operation::RegisterAgent, self.inner.register_agent(node, manifest)).await
    }

    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.measured(Operation::DeployAgent, self.inner.deploy_agent(node, name)).await
    }

    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.measured(Operation::RemoveAgent, self.inner.remove_agent(node, name)).await
    }

    async fn list_node_agents(&self, node: &str) -> Result<Vec<NodeAgent>> {
        self.measured(Operation::ListNodeAgents, self.inner.list_node_agents(node)).await
    }

    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
        self.measured(Operation::AgentView, self.inner.agent_view(node, name)).await
    }

    async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value> {
        self.measured(Operation::AgentTraces, self.inner.agent_traces(node, name, limit)).await
    }

    async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, timeout: Duration) -> Result<Value> {
        self.measured(Operation::RunAgent, self.inner.run_agent(node, name, request, timeout)).await
    }
}

#[cfg(test)]
mod tests {
    use nexus_ports::ports::MockNodeProxy;

    use super::*;

    #[tokio::test]
    async fn calls_pass_through_with_their_answers() {
        let mut inner = MockNodeProxy::new();
        inner.expect_deploy_agent().times(1).returning(|_, _| Ok(()));
        inner.expect_agent_view().times(1).returning(|_, _| Err(Error::Upstream("the agent's node cannot be reached".into())));
        let node = MeteredNode::new(Arc::new(inner));
        let name = AgentName::parse("bot").unwrap();
        node.deploy_agent("http://node", &name).await.unwrap();
        assert_eq!(node.agent_view("http://node", &name).await, Err(Error::Upstream("the agent's node cannot be reached".into())));
        assert_eq!(OUTCOMES[outcome::<()>(&Err(Error::Unavailable("x".into()))) as usize], "unavailable");
        assert_eq!(OPERATIONS[Operation::AgentView as usize], "agent_view");
        assert_eq!(OPERATIONS[Operation::RunAgent as usize], "run_agent");
    }
}
