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

fn kustomization() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(format!("{DEPLOY}/kustomization.yaml")).unwrap()).unwrap()
}

fn kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn nexus_runs_two_probed_replicas_on_kube_with_secrets() {
    let nexus = documents("nexus.yaml");
    let deployment = kind(&nexus, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    let named = |name: &str| env.iter().find(|e| e["name"] == name).copied().unwrap_or_else(|| panic!("{name}"));
    assert_eq!(named("NEXUS_CLUSTER")["value"], "kube");
    assert_eq!(named("NEXUS_DATABASE_URL")["valueFrom"]["secretKeyRef"]["name"], "nexus");
    assert_eq!(named("NEXUS_JWT_SECRET")["valueFrom"]["secretKeyRef"]["name"], "nexus");
    assert!(nexus.iter().any(|d| d["kind"] == "Service" && d["spec"]["ports"][0]["port"] == 8080));

    // Password hashes (19 MiB each) at most half the memory limit.
    let concurrency: u64 = named("NEXUS_HASH_CONCURRENCY")["value"].as_str().unwrap().parse().unwrap();
    let limit = container["resources"]["limits"]["memory"].as_str().unwrap();
    let limit_mib: u64 = limit.strip_suffix("Mi").expect("a limit in Mi").parse().unwrap();
    assert!(concurrency >= 1 && concurrency * 19 <= limit_mib / 2, "{concurrency} hashes in {limit}");

    // Stopping drains in-flight requests before the kubelet kills the pod.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > nexus::http::SHUTDOWN_GRACE.as_secs(), "{grace} s");
    let budget = kind(&nexus, "PodDisruptionBudget");
    assert_eq!((budget["apiVersion"].as_str(), budget["spec"]["minAvailable"].as_u64()), (Some("policy/v1"), Some(1)));
    assert_eq!(budget["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);
}

/// What the Pod Security `restricted` profile asks of a pod and its containers.
fn assert_restricted(pod: &Value) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    for container in pod["containers"].as_array().unwrap() {
        let context = &container["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{container}");
        assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]), "{container}");
        assert_ne!(context["privileged"], true);
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(volume.get("hostPath").is_none(), "{volume}");
    }
}

#[test]
fn nexus_fits_the_restricted_pod_security_profile_its_namespace_enforces() {
    let namespace = kind(&documents("namespace.yaml"), "Namespace").clone();
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    assert_restricted(&kind(&documents("nexus.yaml"), "Deployment")["spec"]["template"]["spec"]);
}

#[test]
fn images_are_versioned_and_the_node_image_is_built_here() {
    let images = kustomization()["images"].clone();
    let nexus = images.as_array().unwrap().iter().find(|i| i["name"] == "nexus").expect("an images entry for nexus");
    assert_eq!(nexus["newTag"], env!("CARGO_PKG_VERSION"), "the crate's version");
    let deployment = kind(&documents("nexus.yaml"), "Deployment").clone();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nexus", "the name kustomize rewrites");
    let node_image = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NEXUS_NODE_IMAGE").unwrap()["value"].as_str().unwrap().to_owned();
    assert_eq!(node_image, nexus::config::ServeConfig::local("sqlite::memory:").node_image, "the default is the deployed image");

    let dockerfile = std::fs::read_to_string(format!("{DEPLOY}/node-image/Dockerfile")).unwrap();
    let version = node_image.rsplit_once(':').expect("a tag").1;
    assert!(dockerfile.contains(&format!("ARG ASTROMESH_VERSION={version}")), "the node image installs astromesh {version}");
    assert!(dockerfile.contains("pip install \"astromesh==${ASTROMESH_VERSION}\""));
    assert!(dockerfile.contains("USER 10001"), "non-root, the uid the node Deployment runs as");
    assert!(dockerfile.contains("ASTROMESH_CONFIG_DIR=") && dockerfile.contains("ASTROMESH_PERSIST_AGENTS=0"), "as the README's node command");
    let ignored = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    for kept_out in ["target/", "**/*.db", ".venv*"] {
        assert!(ignored.lines().any(|l| l == kept_out), "{kept_out} stays out of the build context");
    }
}

/// Every rule of a role, as (api group, resource, verb) triples.
fn grants(role: &Value) -> std::collections::BTreeSet<(String, String, String)> {
    let mut grants = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    grants.insert((group.as_str().unwrap().to_owned(), resource.as_str().unwrap().to_owned(), verb.as_str().unwrap().to_owned()));
                }
            }
        }
    }
    grants
}

fn expected(table: &[(&str, &str, &[&str])]) -> std::collections::BTreeSet<(String, String, String)> {
    table.iter().flat_map(|(group, resource, verbs)| verbs.iter().map(move |verb| ((*group).to_owned(), (*resource).to_owned(), (*verb).to_owned()))).collect()
}

#[test]
fn the_roles_grant_what_the_controllers_call_and_no_more() {
    let rbac = documents("rbac.yaml");
    let crud: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    assert_eq!(
        grants(kind(&rbac, "ClusterRole")),
        expected(&[
            ("nexus.astromesh.io", "nexusagents", crud),
            ("nexus.astromesh.io", "nexusagents/status", &["patch"]),
            ("", "namespaces", crud),
            ("apps", "deployments", &["list", "watch", "create", "patch"]),
            ("", "services", &["list", "watch", "create", "patch"]),
            ("networking.k8s.io", "networkpolicies", &["list", "watch", "create", "patch"]),
        ])
    );
    let role = kind(&rbac, "Role");
    assert_eq!(role["metadata"]["namespace"], "nexus-system", "the lease and the tenants are in the system namespace only");
    assert_eq!(
        grants(role),
        expected(&[
            ("nexus.astromesh.io", "nexustenants", crud),
            ("nexus.astromesh.io", "nexustenants/status", &["patch"]),
            ("coordination.k8s.io", "leases", &["get", "create", "update"]),
            ("events.k8s.io", "events", &["create", "patch"]),
        ])
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(kind(&rbac, binding)["subjects"][0]["name"], "nexus", "{binding}");
    }
}

/// `kubectl kustomize deploy/` renders (kubectl is on the development machines and CI
/// installs it); without kubectl, outside CI, only the files are checked: each parses as
/// YAML and every resource the kustomization names exists.
#[test]
fn the_kustomization_renders() {
    let resources: Vec<String> = kustomization()["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    for file in &resources {
        assert!(!documents(file).is_empty(), "{file}");
    }
    assert!(resources.contains(&"crds.yaml".to_owned()));
    let rendered = match std::process::Command::new("kubectl").args(["kustomize", DEPLOY]).output() {
        Ok(output) => {
            assert!(output.status.success(), "kubectl kustomize deploy/: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        }
        Err(err) => {
            assert!(std::env::var_os("CI").is_none(), "kubectl is needed to render deploy/ and CI is set: {err}");
            eprintln!("skipping the rendering of deploy/: no kubectl ({err})");
            return;
        }
    };
    let kinds: Vec<String> =
        serde_yaml::Deserializer::from_str(&rendered).map(|doc| Value::deserialize(doc).unwrap()["kind"].as_str().unwrap().to_owned()).collect();
    for expected in ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.iter().any(|k| k == expected), "{expected} in {kinds:?}");
    }
    assert!(rendered.contains(&format!("image: nexus:{}", env!("CARGO_PKG_VERSION"))), "the versioned image");
    assert!(!rendered.contains(":latest"));
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
