//! Node calls counted and timed: a decorator around whichever [`NodeProxy`] is wired, so
//! every adapter is measured the same way. Labels are the operation and its outcome only
//! (never a node, tenant or agent), so the label set stays bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_ports::agents::AgentName;
use nexus_ports::ports::NodeProxy;
use nexus_ports::{Error, Result};
use serde_json::Value;

/// A [`NodeProxy`] that records `nexus_node_requests_total{operation,outcome}` and
/// `nexus_node_request_duration_seconds{operation}` for every call of `inner`.
pub struct MeteredNode {
    inner: Arc<dyn NodeProxy>,
}

impl MeteredNode {
    /// Measures the calls made to `inner`.
    pub fn new(inner: Arc<dyn NodeProxy>) -> Self {
        Self { inner }
    }
}

/// How a call ended, as a label: `ok`; `upstream_error` (the node could not be reached,
/// did not answer in time, or answered with an error); `unavailable`; or `error`.
fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Error::Upstream(_)) => "upstream_error",
        Err(Error::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    }
}

async fn measured<T>(operation: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let result = call.await;
    metrics::counter!("nexus_node_requests_total", "operation" => operation, "outcome" => outcome(&result)).increment(1);
    metrics::histogram!("nexus_node_request_duration_seconds", "operation" => operation).record(started.elapsed().as_secs_f64());
    result
}

#[async_trait]
impl NodeProxy for MeteredNode {
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
        measured("register_agent", self.inner.register_agent(node, manifest)).await
    }

    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        measured("deploy_agent", self.inner.deploy_agent(node, name)).await
    }

    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        measured("remove_agent", self.inner.remove_agent(node, name)).await
    }

    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
        measured("agent_view", self.inner.agent_view(node, name)).await
    }

    async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value> {
        measured("agent_traces", self.inner.agent_traces(node, name, limit)).await
    }

    async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, timeout: Duration) -> Result<Value> {
        measured("run_agent", self.inner.run_agent(node, name, request, timeout)).await
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
        assert_eq!(outcome::<()>(&Err(Error::Unavailable("x".into()))), "unavailable");
    }
}
