//! The node proxy over HTTP: the astromesh-node API (`/v1/agents`, `/v1/traces/`) with
//! connect and request timeouts and pooled keep-alive connections.
//!
//! A node is not trusted to steer Nexus: redirects are never followed (a redirect is an
//! error answer), and its answers are read up to [`MAX_ANSWER_BYTES`]. Every failure to
//! reach a node, or an error answer from it, is [`Error::Upstream`] with a stable sentence
//! naming what failed and the status; the node's address and its own text (which may
//! name other tenants' agents, or be a Python exception) go to the log only.
//!
//! Every call carries `X-Request-ID`: the id of the request it is made for (from
//! [`nexus_ports::context`]), or a fresh one for work no request asked for (the reconcile
//! loop), so that the node's log lines can be tied to ours.
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use nexus_ports::agents::AgentName;
use nexus_ports::node_names::NodeAgent;
use nexus_ports::ports::NodeProxy;
use nexus_ports::{Error, Result};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// How long to wait for a node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a whole call to a node may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a node.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// The most traces astromesh-node 0.74.1 answers at once (it refuses a larger `limit`).
const MAX_TRACES: u32 = 100;
/// The header that carries the request id to the node.
const REQUEST_ID: &str = "x-request-id";
/// What a client reads when the node cannot be reached.
const UNREACHABLE: &str = "the agent's node cannot be reached";

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
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::internal)?;
        Ok(Self { client })
    }

    fn request(&self, method: Method, node: &str, path: &str) -> RequestBuilder {
        let request_id = nexus_ports::context::request_id().map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), |id| id.to_string());
        self.client.request(method, format!("{}{path}", node.trim_end_matches('/'))).header(REQUEST_ID, request_id)
    }

    /// Sends and returns the status and JSON body (`Null` when the body is not JSON).
    async fn call(&self, node: &str, request: RequestBuilder) -> Result<(StatusCode, Value)> {
        let response = request.send().await.map_err(|err| unreachable(node, &err))?;
        Self::read(node, response).await
    }

    /// Reads an answer's status and JSON body (`Null` when the body is not JSON), up to
    /// [`MAX_ANSWER_BYTES`].
    async fn read(node: &str, mut response: reqwest::Response) -> Result<(StatusCode, Value)> {
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER_BYTES => body.extend_from_slice(&chunk),
                Ok(Some(_)) => {
                    tracing::warn!(%node, %status, limit = MAX_ANSWER_BYTES, "the node's answer is too large");
                    return Err(Error::Upstream("the agent's node answered more than Nexus reads".to_owned()));
                }
                Ok(None) => break,
                Err(err) if err.is_timeout() => return Err(timed_out(node, &err)),
                Err(err) => {
                    tracing::warn!(%node, error = %err, "the node broke off its answer");
                    return Err(Error::Upstream("the agent's node broke off its answer".to_owned()));
                }
            }
        }
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Like [`HttpNode::call`], but an error status is an error.
    async fn expect_success(&self, node: &str, what: &str, request: RequestBuilder) -> Result<Value> {
        match self.call(node, request).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(refusal(node, what, status, &body)),
        }
    }
}

/// The error for a node that cannot be reached; the detail is for the log.
fn unreachable(node: &str, err: &reqwest::Error) -> Error {
    tracing::warn!(%node, error = %err, "node unreachable");
    Error::Upstream(UNREACHABLE.to_owned())
}

/// The error for a node that did not answer within the call's timeout.
fn timed_out(node: &str, err: &reqwest::Error) -> Error {
    tracing::warn!(%node, error = %err, "the node did not answer in time");
    Error::Upstream("the agent's node did not answer in time".to_owned())
}

/// The most of a node's reason passed on to a client, in characters.
const MAX_REASON_CHARS: usize = 300;

/// What a client may read of the node's refusal of a run: only the refusals the node
/// explains on purpose (astromesh-node 0.74.1: a model provider failure, 502, as
/// `{"error": code, "message": text}`; its own run timeout, 504), never the text of an
/// unexpected failure (a Python exception). Control characters are dropped and the text
/// is bounded.
fn run_refusal_reason(status: StatusCode, body: &Value) -> Option<String> {
    let detail = &body["detail"];
    let reason = match status {
        StatusCode::BAD_GATEWAY => {
            let code = detail["error"].as_str()?;
            detail["message"].as_str().map_or_else(|| code.to_owned(), |message| format!("{code}: {message}"))
        }
        StatusCode::GATEWAY_TIMEOUT => match detail["timeout_seconds"].as_f64() {
            Some(seconds) => format!("the run took longer than the node's own limit of {seconds}s"),
            None => "the run took longer than the node's own limit".to_owned(),
        },
        StatusCode::NOT_FOUND => "the agent is not deployed there yet".to_owned(),
        _ => return None,
    };
    Some(reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect())
}

/// The error for a node's error answer to `what` (a redirect included): a stable sentence
/// for the client, the node's own detail for the log.
fn refusal(node: &str, what: &str, status: StatusCode, body: &Value) -> Error {
    let detail = body.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)).unwrap_or_default();
    tracing::warn!(%node, %status, %detail, "the node refused {what}");
    Error::Upstream(format!("the agent's node refused {what} ({status})"))
}

#[async_trait]
impl NodeProxy for HttpNode {
    async fn register_agent(&self, node: &str, manifest: &Value) -> Result<()> {
        self.expect_success(node, "to register the agent", self.request(Method::POST, node, "/v1/agents").json(manifest)).await.map(drop)
    }

    async fn deploy_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        self.expect_success(node, "to deploy the agent", self.request(Method::POST, node, &format!("/v1/agents/{name}/deploy"))).await.map(drop)
    }

    async fn remove_agent(&self, node: &str, name: &AgentName) -> Result<()> {
        match self.call(node, self.request(Method::DELETE, node, &format!("/v1/agents/{name}"))).await? {
            (status, _) if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            (status, body) => Err(refusal(node, "to remove the agent", status, &body)),
        }
    }

    /// Entries without a name are passed over; a version that is not a string reads as
    /// none.
    async fn list_node_agents(&self, node: &str) -> Result<Vec<NodeAgent>> {
        let listed = self.expect_success(node, "to list its agents", self.request(Method::GET, node, "/v1/agents")).await?;
        let Some(agents) = listed.get("agents").and_then(Value::as_array) else {
            tracing::warn!(%node, "the node's list of agents has no `agents` array");
            return Err(Error::Upstream("the agent's node answered its list of agents in an unknown form".to_owned()));
        };
        Ok(agents
            .iter()
            .filter_map(|agent| {
                let name = agent.get("name")?.as_str()?.to_owned();
                let version = agent.get("version").and_then(Value::as_str).map(str::to_owned);
                let status = agent.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
                Some(NodeAgent { name, version, status })
            })
            .collect())
    }

    async fn agent_view(&self, node: &str, name: &AgentName) -> Result<Option<Value>> {
        let manifest = match self.call(node, self.request(Method::GET, node, &format!("/v1/agents/{name}"))).await? {
            (StatusCode::NOT_FOUND, _) => return Ok(None),
            (status, body) if status.is_success() => body,
            (status, body) => return Err(refusal(node, "to show the agent", status, &body)),
        };
        let listed = self.expect_success(node, "to list its agents", self.request(Method::GET, node, "/v1/agents")).await?;
        let entry = listed["agents"].as_array().and_then(|agents| agents.iter().find(|a| a["name"] == name.as_str())).cloned();
        let mut view = entry.unwrap_or_else(|| json!({"name": name.as_str()}));
        if let Value::Object(fields) = &mut view {
            fields.insert("manifest".to_owned(), manifest);
        }
        Ok(Some(view))
    }

    async fn run_agent(&self, node: &str, name: &AgentName, request: &Value, timeout: Duration) -> Result<Value> {
        let call = self.request(Method::POST, node, &format!("/v1/agents/{name}/run")).timeout(timeout).json(request);
        let (status, body) = match call.send().await {
            Err(err) if err.is_timeout() => return Err(timed_out(node, &err)),
            Err(err) => return Err(unreachable(node, &err)),
            Ok(response) => Self::read(node, response).await?,
        };
        if status.is_success() {
            return Ok(body);
        }
        let reason = run_refusal_reason(status, &body);
        tracing::warn!(%node, %status, detail = %body["detail"], "the node refused the run");
        Err(Error::Upstream(match reason {
            Some(reason) => format!("the agent's node refused the run ({status}): {reason}"),
            None => format!("the agent's node refused the run ({status})"),
        }))
    }

    async fn agent_traces(&self, node: &str, name: &AgentName, limit: u32) -> Result<Value> {
        // A DNS-1123 name and a number need no escaping.
        let limit = limit.clamp(1, MAX_TRACES);
        self.expect_success(node, "to list the agent's traces", self.request(Method::GET, node, &format!("/v1/traces/?agent={name}&limit={limit}"))).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads up to the end of a request head; `None` when the client closes before it.
    async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        Some(request)
    }

    /// A server on a loopback port answering every request with `answer`; counts requests.
    async fn serve(answer: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    if read_head(&mut socket).await.is_none() {
                        return;
                    }
                    let _ = socket.write_all(&answer).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (url, hits)
    }

    fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
    }

    /// A node on a loopback port that answers `{}` to every request and hands over the
    /// head of each request it received.
    async fn capturing() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let heads = heads.clone();
                tokio::spawn(async move {
                    let Some(request) = read_head(&mut socket).await else { return };
                    let _ = heads.send(String::from_utf8_lossy(&request).to_ascii_lowercase());
                    let _ = socket.write_all(&answer("200 OK", "Content-Type: application/json\r\n", "{}")).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (url, received)
    }

    fn request_id_of(head: &str) -> String {
        head.lines().find_map(|line| line.strip_prefix("x-request-id: ")).unwrap_or_else(|| panic!("no request id in {head}")).trim().to_owned()
    }

    #[tokio::test]
    async fn every_node_call_carries_the_request_id_or_a_fresh_one() {
        let (url, mut heads) = capturing().await;
        let node = HttpNode::new().unwrap();
        let name = AgentName::parse("bot").unwrap();
        nexus_ports::context::with_request_id("req-42".into(), async {
            node.deploy_agent(&url, &name).await.unwrap();
            node.remove_agent(&url, &name).await.unwrap();
            node.register_agent(&url, &json!({"metadata": {"name": "bot"}})).await.unwrap();
        })
        .await;
        for _ in 0..3 {
            assert_eq!(request_id_of(&heads.recv().await.unwrap()), "req-42");
        }
        // Work no request asked for (the reconcile loop) gets an id of its own per call.
        node.deploy_agent(&url, &name).await.unwrap();
        node.deploy_agent(&url, &name).await.unwrap();
        let (first, second) = (request_id_of(&heads.recv().await.unwrap()), request_id_of(&heads.recv().await.unwrap()));
        assert!(first.len() == 32 && first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_upstream_error() {
        let node = HttpNode::new().unwrap();
        let name = AgentName::parse("bot").unwrap();
        let err = node.deploy_agent("http://127.0.0.1:1", &name).await.unwrap_err();
        assert_eq!(err, Error::Upstream("the agent's node cannot be reached".into()), "the node's address is for the log");
        assert!(node.agent_view("http://127.0.0.1:1/", &name).await.is_err());
    }

    #[tokio::test]
    async fn redirects_are_never_followed() {
        let (elsewhere, visits) = serve(answer("200 OK", "Content-Type: application/json\r\n", r#"{"agents": []}"#)).await;
        let location = format!("Location: {elsewhere}/v1/agents\r\n");
        let node = HttpNode::new().unwrap();
        let name = AgentName::parse("bot").unwrap();
        for status in ["301 Moved Permanently", "302 Found", "307 Temporary Redirect", "308 Permanent Redirect"] {
            let (steering, _) = serve(answer(status, &location, "")).await;
            let err = node.register_agent(&steering, &json!({"metadata": {"name": "bot"}})).await.unwrap_err();
            assert_eq!(err, Error::Upstream(format!("the agent's node refused to register the agent ({status})")));
            assert!(node.agent_view(&steering, &name).await.is_err(), "{status}");
            assert!(node.remove_agent(&steering, &name).await.is_err(), "{status}");
            assert!(node.agent_traces(&steering, &name, 5).await.is_err(), "{status}");
        }
        assert_eq!(visits.load(Ordering::SeqCst), 0, "nothing reached the address the node pointed to");
    }

    #[tokio::test]
    async fn refusals_keep_the_nodes_text_out_of_the_message() {
        let detail = r#"{"detail": "el agente 'spy-0123', referenciado por la cadena de 'other-tenant-bot', no existe"}"#;
        let (node_url, _) = serve(answer("404 Not Found", "Content-Type: application/json\r\n", detail)).await;
        let err = HttpNode::new().unwrap().deploy_agent(&node_url, &AgentName::parse("bot").unwrap()).await.unwrap_err();
        assert_eq!(err, Error::Upstream("the agent's node refused to deploy the agent (404 Not Found)".into()));
        let (failing, _) = serve(answer("500 Internal Server Error", "", "Traceback (most recent call last): KeyError 'x'")).await;
        let err = HttpNode::new().unwrap().register_agent(&failing, &json!({})).await.unwrap_err();
        assert!(!err.to_string().contains("Traceback") && !err.to_string().contains("127.0.0.1"), "{err}");
    }

    #[tokio::test]
    async fn oversized_answers_are_not_read_whole() {
        let huge = "x".repeat(MAX_ANSWER_BYTES + 1);
        let (node_url, _) = serve(answer("200 OK", "", &huge)).await;
        let err = HttpNode::new().unwrap().agent_traces(&node_url, &AgentName::parse("bot").unwrap(), 5).await.unwrap_err();
        assert_eq!(err, Error::Upstream("the agent's node answered more than Nexus reads".into()));
    }

    #[tokio::test]
    async fn a_refused_run_carries_only_the_reason_the_node_explains() {
        let name = AgentName::parse("bot").unwrap();
        let node = HttpNode::new().unwrap();
        let request = json!({"query": "hi"});
        let provider = r#"{"detail": {"error": "model_all_providers_failed", "message": "All model providers failed.\nLast error: refused", "hint": "cand0"}}"#;
        let (failing, _) = serve(answer("502 Bad Gateway", "Content-Type: application/json\r\n", provider)).await;
        let err = node.run_agent(&failing, &name, &request, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            err,
            Error::Upstream(
                "the agent's node refused the run (502 Bad Gateway): model_all_providers_failed: All model providers failed.Last error: refused".into()
            )
        );
        let (crashing, _) = serve(answer("500 Internal Server Error", "Content-Type: application/json\r\n", r#"{"detail": "KeyError: 'secret'"}"#)).await;
        let err = node.run_agent(&crashing, &name, &request, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, Error::Upstream("the agent's node refused the run (500 Internal Server Error)".into()), "no exception text");
        let (answering, _) = serve(answer("200 OK", "Content-Type: application/json\r\n", r#"{"answer": "hello", "steps": []}"#)).await;
        assert_eq!(node.run_agent(&answering, &name, &request, Duration::from_secs(5)).await.unwrap()["answer"], "hello");
    }

    #[tokio::test]
    async fn the_nodes_list_reads_each_agents_name_version_and_status_in_one_call() {
        let listed = r#"{"agents": [
            {"name": "bot", "version": "1.0.0+nexus.0123456789abcdef", "namespace": "t", "status": "deployed"},
            {"name": "draft", "version": "0.1.0", "namespace": "default", "status": "draft", "error": "boom"},
            {"version": "2"}, {"name": "odd", "version": 3, "status": "paused"}
        ]}"#;
        let (url, hits) = serve(answer("200 OK", "Content-Type: application/json\r\n", listed)).await;
        let agents = HttpNode::new().unwrap().list_node_agents(&url).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(
            agents,
            vec![
                NodeAgent { name: "bot".into(), version: Some("1.0.0+nexus.0123456789abcdef".into()), status: "deployed".into() },
                NodeAgent { name: "draft".into(), version: Some("0.1.0".into()), status: "draft".into() },
                NodeAgent { name: "odd".into(), version: None, status: "paused".into() },
            ]
        );
        assert!(agents[0].is_stamped() && agents[0].is_deployed() && !agents[1].is_stamped());
        let (strange, _) = serve(answer("200 OK", "Content-Type: application/json\r\n", r#"{"items": []}"#)).await;
        assert!(matches!(HttpNode::new().unwrap().list_node_agents(&strange).await, Err(Error::Upstream(_))), "an unknown form is no empty node");
        let (failing, _) = serve(answer("503 Service Unavailable", "", "")).await;
        assert_eq!(
            HttpNode::new().unwrap().list_node_agents(&failing).await.unwrap_err(),
            Error::Upstream("the agent's node refused to list its agents (503 Service Unavailable)".into())
        );
    }

    #[tokio::test]
    async fn a_run_waits_no_longer_than_its_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let err = HttpNode::new().unwrap().run_agent(&url, &AgentName::parse("bot").unwrap(), &json!({"query": "hi"}), Duration::from_millis(300)).await;
        assert_eq!(err.unwrap_err(), Error::Upstream("the agent's node did not answer in time".into()));
        silent.abort();
    }
}
