//! The resources of a tenant's node: Deployment and Service `astromesh-node`.

use serde_json::{Value, json};

use crate::crd::NexusTenant;

/// The node's port.
pub const NODE_PORT: u16 = 8000;

/// Where the node of the tenant in `namespace` answers.
pub(crate) fn node_endpoint(namespace: &str) -> String {
    format!("http://astromesh-node.{namespace}.svc:{NODE_PORT}")
}

/// Deployment `astromesh-node`: one replica of the node image on port 8000, probed on
/// `/v1/health`, `ASTROMESH_ROLE` from the tenant's node profile, limits from its quota.
pub(crate) fn node_deployment(tenant: &NexusTenant, image: &str) -> Value {
    let quota = &tenant.spec.resource_quota;
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &quota.cpu {
        limits.insert("cpu".to_owned(), json!(cpu));
    }
    if let Some(memory) = &quota.memory {
        limits.insert("memory".to_owned(), json!(memory));
    }
    let probe = json!({"httpGet": {"path": "/v1/health", "port": NODE_PORT}, "periodSeconds": 10});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "astromesh-node", "labels": {"app.kubernetes.io/name": "astromesh-node", "app.kubernetes.io/managed-by": "nexus"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "astromesh-node"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "astromesh-node"}},
                "spec": {"containers": [{
                    "name": "astromesh-node",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": NODE_PORT}],
                    "env": [{"name": "ASTROMESH_ROLE", "value": tenant.spec.node_profile}],
                    "livenessProbe": probe,
                    "readinessProbe": probe,
                    "resources": {"limits": limits}
                }]}
            }
        }
    })
}

/// Service `astromesh-node` on port 8000.
pub(crate) fn node_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "astromesh-node", "labels": {"app.kubernetes.io/managed-by": "nexus"}},
        "spec": {"selector": {"app.kubernetes.io/name": "astromesh-node"}, "ports": [{"name": "http", "port": NODE_PORT, "targetPort": NODE_PORT}]}
    })
}
