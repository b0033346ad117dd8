//! A mocked API server for the adapter's tests, in the kube-rs way: the client talks to one
//! end of `tower_test::mock::pair`, and a scenario on the other end asserts each request's
//! method, path and body in order, answering each.

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::{KubeCluster, KubeSettings};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the answer to give.
pub struct Expect {
    pub method: Method,
    /// The path and query, as the client sends it.
    pub uri: String,
    /// Asserted of the request's JSON body (`Null` when it has none).
    pub body: fn(&Value),
    /// The status and JSON body to answer.
    pub answer: (u16, Value),
}

/// A backend on a mocked API server that expects `script`, in order; await the handle to
/// see the scenario through.
pub fn mocked(script: Vec<Expect>) -> (KubeCluster, JoinHandle<()>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = KubeSettings { system_namespace: "nexus-system".to_owned(), node_image: "astromesh:0.74.1".to_owned() };
    let verifier = tokio::spawn(async move {
        for (step, expect) in script.into_iter().enumerate() {
            let (request, respond) = handle.next_request().await.unwrap_or_else(|| panic!("step {step}: no request came"));
            assert_eq!(request.method(), expect.method, "step {step}: method of {}", request.uri());
            assert_eq!(request.uri().to_string(), expect.uri, "step {step}: path");
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            (expect.body)(&body);
            let (status, answer) = expect.answer;
            respond.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
        }
    });
    (KubeCluster::new(client, settings), verifier)
}

/// A Kubernetes `Status` error answer.
pub fn status_error(code: u16, reason: &str) -> (u16, Value) {
    (code, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code}))
}

/// Any body.
pub fn anything(_: &Value) {}
