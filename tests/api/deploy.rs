//! The deployment files: the committed CRDs are the generated ones, and the manifests
//! say what the README promises.

use serde::Deserialize;
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{DEPLOY}/{file}")).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).unwrap()).filter(|doc| !doc.is_null()).collect()
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let committed = std::fs::read_to_string(format!("{DEPLOY}/crds.yaml")).unwrap_or_default();
    assert!(
        committed == nexus_cluster_kube::crd::crds_yaml().unwrap(),
        "deploy/crds.yaml is out of date; regenerate it with:\n    cargo run --quiet -- crds > deploy/crds.yaml\n"
    );
}

#[test]
fn nexus_runs_two_probed_replicas_on_kube_with_secrets() {
    let nexus = documents("nexus.yaml");
    let deployment = nexus.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    let named = |name: &str| env.iter().find(|e| e["name"] == name).copied().unwrap_or_else(|| panic!("{name}"));
    assert_eq!(named("NEXUS_CLUSTER")["value"], "kube");
    assert_eq!(named("NEXUS_DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"], "nexus");
    assert_eq!(named("NEXUS_JWT_SECRET")["valueFrom"]["secretKeyRef"]["name"], "nexus");
    assert!(nexus.iter().any(|d| d["kind"] == "Service" && d["spec"]["ports"][0]["port"] == 8080));
}

#[test]
fn the_role_grants_what_the_controllers_use_and_no_more() {
    let rbac = documents("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let granted: Vec<String> =
        role["rules"].as_array().unwrap().iter().flat_map(|r| r["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned())).collect();
    for needed in ["nexustenants", "nexusagents", "nexusagents/status", "namespaces", "deployments", "services", "leases", "events"] {
        assert!(granted.iter().any(|g| g == needed), "{needed} is not granted");
    }
    assert!(!granted.iter().any(|g| g == "*" || g == "secrets" || g == "pods"), "{granted:?}");
    let kustomized: Vec<String> =
        serde_yaml::from_str::<Value>(&std::fs::read_to_string(format!("{DEPLOY}/kustomization.yaml")).unwrap()).unwrap()["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect();
    for file in &kustomized {
        assert!(!documents(file).is_empty(), "{file}");
    }
    assert!(kustomized.contains(&"crds.yaml".to_owned()));
}

/// `NEXUS_CLUSTER=kube` with a cluster that does not answer: the binary exits non-zero with
/// a message naming the cluster, and does not panic.
#[test]
fn an_unreachable_cluster_fails_the_start_cleanly() {
    let dir = std::env::temp_dir().join(format!("nexus-kube-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: t}}]\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nexus"))
        .current_dir(&dir)
        .env("KUBECONFIG", &kubeconfig)
        .env("NEXUS_CLUSTER", "kube")
        .env("NEXUS_LISTEN", "127.0.0.1:0")
        .env("NEXUS_DATABASE_URL", format!("sqlite://{}", dir.join("nexus.db").display()))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run nexus");
    let logged = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{logged}");
    assert!(logged.contains("the Kubernetes cluster at https://127.0.0.1:1/ cannot be reached"), "{logged}");
    assert!(!logged.contains("panicked"), "{logged}");
    let _ = std::fs::remove_dir_all(&dir);
}
