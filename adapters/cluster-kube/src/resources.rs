//! The resources of a tenant's namespace, as server-side-apply bodies: Deployment and
//! Service `astromesh-node`, and NetworkPolicy `astromesh-node` that admits the node's
//! port from Nexus's pods only. Pure functions: the adapter applies what they build.

use serde_json::{Value, json};

use crate::crd::NexusTenant;

/// The node's port.
pub const NODE_PORT: u16 = 8000;
/// Name of the node's Deployment, Service and NetworkPolicy in every tenant namespace.
pub(crate) const NODE_NAME: &str = "astromesh-node";
/// The Secret a tenant's node takes its environment from (model-provider credentials),
/// unless its `NexusTenant` names another in `spec.providerSecret`. Optional: a node
/// without one starts all the same.
pub const PROVIDER_SECRET: &str = "astromesh-node-credentials";
/// Where the node keeps its configuration (an empty volume: agents come from Nexus).
const CONFIG_DIR: &str = "/var/lib/astromesh/config";
/// The uid the node runs as, the one its image declares.
const NODE_UID: u32 = 10001;
/// Label of every resource Nexus makes.
pub(crate) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "nexus");

/// Where the node of the tenant in `namespace` answers.
pub(crate) fn node_endpoint(namespace: &str) -> String {
    format!("http://{NODE_NAME}.{namespace}.svc:{NODE_PORT}")
}

/// CPU and memory of a node: what it is guaranteed and what it may not exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// The resources of a node of `profile`: a small default, more for profiles that serve
/// models; a limit the tenant's quota sets wins, and a request never exceeds its limit.
pub(crate) fn node_resources(profile: &str, quota_cpu: Option<&str>, quota_memory: Option<&str>) -> NodeResources {
    let (cpu_request, memory_request, cpu_limit, memory_limit) = match profile {
        "gateway" | "mesh-gateway" => ("50m", "128Mi", "500m", "512Mi"),
        "inference" | "mesh-inference" => ("250m", "512Mi", "2", "2Gi"),
        _ => ("100m", "256Mi", "1", "1Gi"),
    };
    let cpu_limit = quota_cpu.unwrap_or(cpu_limit).to_owned();
    let memory_limit = quota_memory.unwrap_or(memory_limit).to_owned();
    NodeResources { cpu_request: at_most(cpu_request, &cpu_limit), memory_request: at_most(memory_request, &memory_limit), cpu_limit, memory_limit }
}

/// `request`, or `limit` when that is smaller (or cannot be compared).
fn at_most(request: &str, limit: &str) -> String {
    match (quantity(request), quantity(limit)) {
        (Some(r), Some(l)) if r <= l => request.to_owned(),
        _ => limit.to_owned(),
    }
}

/// A Kubernetes quantity (`250m`, `2`, `512Mi`, `1G`) as a number, for comparisons.
fn quantity(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Namespace `name`, labelled managed, enforcing the `restricted` Pod Security profile.
pub(crate) fn tenant_namespace(name: &str, managed_label: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            managed_label: "true",
            MANAGED_BY.0: MANAGED_BY.1,
            "pod-security.kubernetes.io/enforce": "restricted",
        }}
    })
}

/// Deployment `astromesh-node`: one replica of the node image on port 8000, run as the
/// README's node command runs it (an empty config dir, no persistence), non-root with no
/// privilege and no service-account token, started, live and ready on `/v1/health`, sized
/// by [`node_resources`], its environment completed by the tenant's provider Secret.
pub(crate) fn node_deployment(tenant: &NexusTenant, image: &str) -> Value {
    let spec = &tenant.spec;
    let quota = &spec.resource_quota;
    let resources = node_resources(&spec.node_profile, quota.cpu.as_deref(), quota.memory.as_deref());
    let secret = spec.provider_secret.as_deref().unwrap_or(PROVIDER_SECRET);
    let health = json!({"path": "/v1/health", "port": "http"});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NODE_NAME, "labels": {"app.kubernetes.io/name": NODE_NAME, MANAGED_BY.0: MANAGED_BY.1}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": NODE_NAME}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": NODE_NAME}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": NODE_UID,
                        "runAsGroup": NODE_UID,
                        "fsGroup": NODE_UID,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "containers": [{
                        "name": NODE_NAME,
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": NODE_PORT, "protocol": "TCP"}],
                        "env": [
                            {"name": "ASTROMESH_ROLE", "value": spec.node_profile},
                            {"name": "ASTROMESH_CONFIG_DIR", "value": CONFIG_DIR},
                            {"name": "ASTROMESH_PERSIST_AGENTS", "value": "0"},
                            {"name": "HOME", "value": "/tmp"}
                        ],
                        "envFrom": [{"secretRef": {"name": secret, "optional": true}}],
                        "startupProbe": {"httpGet": health, "periodSeconds": 2, "failureThreshold": 60},
                        "livenessProbe": {"httpGet": health, "periodSeconds": 10, "failureThreshold": 3},
                        "readinessProbe": {"httpGet": health, "periodSeconds": 5},
                        "resources": {
                            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
                            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit}
                        },
                        "securityContext": {
                            "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}
                        },
                        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
                    }],
                    "volumes": [{"name": "config", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
                }
            }
        }
    })
}

/// Service `astromesh-node` on port 8000.
pub(crate) fn node_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NODE_NAME, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        "spec": {"selector": {"app.kubernetes.io/name": NODE_NAME}, "ports": [{"name": "http", "port": NODE_PORT, "targetPort": NODE_PORT}]}
    })
}

/// NetworkPolicy `astromesh-node`: every pod of the tenant's namespace admits traffic only
/// on the node's port, and only from Nexus's pods (label `app.kubernetes.io/name: nexus`
/// in `system_namespace`). Other tenants' nodes cannot reach it. Egress stays open: the
/// node calls its model providers.
pub(crate) fn node_network_policy(system_namespace: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NODE_NAME, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": system_namespace}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nexus"}}
                }],
                "ports": [{"protocol": "TCP", "port": NODE_PORT}]
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(request: (&str, &str), limit: (&str, &str)) -> NodeResources {
        NodeResources { cpu_request: request.0.into(), memory_request: request.1.into(), cpu_limit: limit.0.into(), memory_limit: limit.1.into() }
    }

    #[test]
    fn nodes_get_a_small_default_and_more_for_inference() {
        assert_eq!(node_resources("full", None, None), resources(("100m", "256Mi"), ("1", "1Gi")));
        assert_eq!(node_resources("some-profile", None, None), resources(("100m", "256Mi"), ("1", "1Gi")));
        assert_eq!(node_resources("gateway", None, None), resources(("50m", "128Mi"), ("500m", "512Mi")));
        assert_eq!(node_resources("inference", None, None), resources(("250m", "512Mi"), ("2", "2Gi")));
    }

    #[test]
    fn the_quota_sets_the_limits_and_requests_never_exceed_them() {
        assert_eq!(node_resources("full", Some("4"), Some("8Gi")), resources(("100m", "256Mi"), ("4", "8Gi")));
        assert_eq!(node_resources("full", Some("50m"), Some("100M")), resources(("50m", "100M"), ("50m", "100M")));
        assert_eq!(node_resources("full", Some("0.5"), Some("1G")), resources(("100m", "256Mi"), ("0.5", "1G")));
        assert_eq!(node_resources("full", Some("lots"), None).cpu_request, "lots", "what cannot be compared is requested as limited");
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Ki"), Some(1024.0));
        assert!(quantity("256Mi").unwrap() > quantity("256M").unwrap());
        assert_eq!(quantity("12x"), None);
        assert_eq!(quantity("Mi"), None);
    }

    #[test]
    fn the_policy_admits_only_nexus_pods_on_the_node_port() {
        let policy = node_network_policy("nexus-system");
        assert_eq!(policy["spec"]["podSelector"], json!({}), "every pod of the namespace");
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        let rule = &policy["spec"]["ingress"][0];
        assert_eq!(policy["spec"]["ingress"].as_array().unwrap().len(), 1);
        assert_eq!(rule["ports"], json!([{"protocol": "TCP", "port": 8000}]));
        assert_eq!(
            rule["from"],
            json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nexus-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nexus"}}
            }]),
            "one peer: Nexus's pods in its own namespace (both selectors at once)"
        );
    }
}
