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
    /// The status and JSON body to answer; see [`no_answer`].
    pub answer: (u16, Value),
}

/// An answer that never comes (an API server that stopped answering): the request stays
/// pending until the client gives up.
pub fn no_answer() -> (u16, Value) {
    (0, Value::Null)
}

/// A backend on a mocked API server that expects `script`, in order, and nothing more:
/// drop the backend (and whatever holds it), then await the handle to see the scenario
/// through. A request after the script fails it.
pub fn mocked(script: Vec<Expect>) -> (KubeCluster, JoinHandle<()>) {
    serve(script, true)
}

/// [`mocked`] for clients that go on after the script (a leader election running in the
/// background): what comes after the script is not checked.
pub fn mocked_open(script: Vec<Expect>) -> (KubeCluster, JoinHandle<()>) {
    serve(script, false)
}

fn serve(script: Vec<Expect>, strict: bool) -> (KubeCluster, JoinHandle<()>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = KubeSettings { system_namespace: "nexus-system".to_owned(), node_image: "astromesh-node:0.74.1".to_owned() };
    let verifier = tokio::spawn(async move {
        let mut unanswered = Vec::new();
        for (step, expect) in script.into_iter().enumerate() {
            // A request that never comes fails the scenario instead of hanging the test.
            let next = tokio::time::timeout(std::time::Duration::from_secs(60), handle.next_request()).await;
            let (request, respond) = next.ok().flatten().unwrap_or_else(|| panic!("step {step}: no {} {} came", expect.method, expect.uri));
            assert_eq!(request.method(), expect.method, "step {step}: method of {}", request.uri());
            assert_eq!(request.uri().to_string(), expect.uri, "step {step}: path");
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            (expect.body)(&body);
            let (status, answer) = expect.answer;
            if status == 0 {
                unanswered.push(respond);
                continue;
            }
            respond.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
        }
        if strict {
            let next = tokio::time::timeout(std::time::Duration::from_secs(60), handle.next_request()).await;
            match next {
                Ok(Some((request, _))) => panic!("a request after the script: {} {}", request.method(), request.uri()),
                Ok(None) => {}
                Err(_) => panic!("the backend was not dropped after the script"),
            }
        } else if !unanswered.is_empty() {
            // Requests left unanswered stay pending until the client sends another.
            let _ = handle.next_request().await;
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

/// The query of every server-side apply Nexus makes.
pub const APPLY: &str = "?&force=true&fieldManager=nexus";

/// The path of the `NexusTenant` named `name` in `nexus-system`.
pub fn tenant_uri(name: &str) -> String {
    format!("/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants/{name}")
}

/// The status Nexus writes for the tenant named `name` once its node is available.
pub fn ready_status(name: &str) -> Value {
    json!({
        "phase": "Ready", "namespace": name, "nodeEndpoint": format!("http://astromesh-node.{name}.svc:8000"),
        "conditions": [{"type": "Ready", "status": "True", "reason": "NodeAvailable", "lastTransitionTime": "2026-11-28T12:00:00Z"}]
    })
}

/// A `NexusTenant` named `name` (display name `org`, profile `full`) with `status`.
pub fn tenant_resource(name: &str, status: Value) -> Value {
    json!({
        "apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenant",
        "metadata": {"name": name, "namespace": "nexus-system", "resourceVersion": "1", "finalizers": ["nexus.astromesh.io/tenant-cleanup"]},
        "spec": {"displayName": "org", "nodeProfile": "full", "resourceQuota": {"maxAgents": 5}},
        "status": status
    })
}

/// The node Deployment of the tenant named `name`: `available` or not yet.
pub fn node_deployment(name: &str, available: bool) -> Value {
    let replicas = i32::from(available);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "astromesh-node", "namespace": name, "generation": 1},
        "status": {"observedGeneration": 1, "availableReplicas": replicas}
    })
}

/// Provisioning the tenant named `name` whose resources are all there, whose node is
/// available and whose status says Ready already: five applies, no status write.
pub fn provisioned(name: &str) -> Vec<Expect> {
    let in_namespace = |path: &str| format!("{path}/namespaces/{name}");
    vec![
        Expect { method: Method::PATCH, uri: format!("{}{APPLY}", tenant_uri(name)), body: anything, answer: (200, tenant_resource(name, ready_status(name))) },
        Expect {
            method: Method::PATCH,
            uri: format!("{}{APPLY}", in_namespace("/api/v1")),
            body: anything,
            answer: (200, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{}/networkpolicies/astromesh-node{APPLY}", in_namespace("/apis/networking.k8s.io/v1")),
            body: anything,
            answer: (200, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "astromesh-node", "namespace": name}})),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{}/deployments/astromesh-node{APPLY}", in_namespace("/apis/apps/v1")),
            body: anything,
            answer: (200, node_deployment(name, true)),
        },
        Expect {
            method: Method::PATCH,
            uri: format!("{}/services/astromesh-node{APPLY}", in_namespace("/api/v1")),
            body: anything,
            answer: (200, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "astromesh-node", "namespace": name}})),
        },
    ]
}

/// The sweep of tenant deletions finding no tenant being deleted.
pub fn no_tenant_deletions() -> Expect {
    Expect {
        method: Method::GET,
        uri: "/apis/nexus.astromesh.io/v1alpha1/namespaces/nexus-system/nexustenants?".to_owned(),
        body: anything,
        answer: (200, json!({"apiVersion": "nexus.astromesh.io/v1alpha1", "kind": "NexusTenantList", "metadata": {}, "items": []})),
    }
}

/// Fills `cluster`'s stores as its watches would once they listed `agents` (`NexusAgent`s)
/// and `tenants` (`NexusTenant`s): reads are served from them from then on.
pub fn listed(cluster: &KubeCluster, agents: &[Value], tenants: &[Value]) {
    fn typed<K: serde::de::DeserializeOwned>(values: &[Value]) -> Vec<K> {
        values.iter().map(|value| serde_json::from_value(value.clone()).expect("a resource")).collect()
    }
    cluster.listed(&typed(agents), &typed(tenants));
}
