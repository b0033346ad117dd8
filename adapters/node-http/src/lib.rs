//! The node proxy over HTTP: the astromesh-node API (`/v1/agents`, `/v1/traces/`) with
//! connect and request timeouts and pooled keep-alive connections.
//! Every failure to reach a node, or an error answer from it, is [`Error::Upstream`].
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use nexus_ports::agents::AgentName;
use nexus_ports::ports::NodeProxy;
use nexus_ports::{Error, Result};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// How long to wait for a node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a whole call to a node may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most traces astromesh-node 0.74.1 answers at once (it refuses a larger `limit`).
const MAX_TRACES: u32 = 100;

/// [`NodeProxy`] over HTTP.
#[derive(Clone)]
pub struct HttpNode {
    client: Client,
}

impl HttpNode {
    /// A proxy with its own connection pool.
    ///
    /// # Errors
    /// [`Error::Internal`] when the HTTP client cannot be built.
    pub fn new() -> Result<Self> {
        let client = Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(Error::internal)?;
        Ok(Self { client })
    }

    fn request(&self, method: Method, node: &str, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", node.trim_end_matches('/')))
    }

    /// Sends and returns the status and JSON body (`Null` when the body is not JSON).
    async fn call(&self, node: &str, request: RequestBuilder) -> Result<(StatusCode, Value)> {
        let response = request.send().await.map_err(|err| {
            tracing::warn!(%node, error = %err, "node unreachable");
            Error::Upstream(format!("the node at {node} cannot be reached"))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|_| Error::Upstream(format!("the node at {node} broke off its answer")))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Like [`HttpNode::call`], but an error status is an error.
    async fn expect_success(&self, node: &str, request: RequestBuilder) -> Result<Value> {
        match self.call(node, request).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(refusal(node, status, &body)),
        }
    }
}

fn refusal(node: &str, status: StatusCode, body: &Value) -> Error {
    let detail = body.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)).unwrap_or_default();
    Error::Upstream(format!("the node at {node} answered {status}{}{detail}", if detail.is_empty() { "" } else { ": " }))
}

#[async_trait]
impl NodeProxy for HttpNode {
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
        self.expect_success(node, self.request(Method::POST, node, "/v1/agents").json(manifest)).await.map(drop)
    }

    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.expect_success(node, self.request(Method::POST, node, &format!("/v1/agents/{name}/deploy"))).await.map(drop)
    }

    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        match self.call(node, self.request(Method::DELETE, node, &format!("/v1/agents/{name}"))).await? {
            (status, _) if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            (status, body) => Err(refusal(node, status, &body)),
        }
    }

    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
        let manifest = match self.call(node, self.request(Method::GET, node, &format!("/v1/agents/{name}"))).await? {
            (StatusCode::NOT_FOUND, _) => return Ok(None),
            (status, body) if status.is_success() => body,
            (status, body) => return Err(refusal(node, status, &body)),
        };
        let listed = self.expect_success(node, self.request(Method::GET, node, "/v1/agents")).await?;
        let entry = listed["agents"].as_array().and_then(|agents| agents.iter().find(|a| a["name"] == name.as_str())).cloned();
        let mut view = entry.unwrap_or_else(|| json!({"name": name.as_str()}));
        if let Value::Object(fields) = &mut view {
            fields.insert("manifest".to_owned(), manifest);
        }
        Ok(Some(view))
    }

    async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value> {
        // A DNS-1123 name and a number need no escaping.
        let limit = limit.clamp(1, MAX_TRACES);
        self.expect_success(node, self.request(Method::GET, node, &format!("/v1/traces/?agent={name}&limit={limit}"))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_node_is_an_upstream_error_fast() {
        let node = HttpNode::new().unwrap();
        let started = std::time::Instant::now();
        let name = AgentName::parse("bot").unwrap();
        let err = node.deploy_agent("http://127.0.0.1:1", &name).await.unwrap_err();
        assert!(matches!(&err, Error::Upstream(message) if message.contains("cannot be reached")), "{err:?}");
        assert!(node.agent_view("http://127.0.0.1:1/", &name).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn refusals_carry_the_nodes_detail() {
        let err = refusal("http://n", StatusCode::NOT_FOUND, &json!({"detail": "Agent 'x' not found"}));
        assert_eq!(err, Error::Upstream("the node at http://n answered 404 Not Found: Agent 'x' not found".into()));
        let err = refusal("http://n", StatusCode::UNPROCESSABLE_ENTITY, &json!({"detail": [{"loc": ["body"]}]}));
        assert!(err.to_string().contains("422"));
    }
}
