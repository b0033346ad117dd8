//! `nexus` with `NEXUS_CLUSTER=kube` against a real control plane: runs when
//! `NEXUS_TEST_KUBECONFIG` names an admin kubeconfig of a cluster `scripts/kube-cluster up`
//! started (with `NEXUS_KUBE_AUDIT=1`; `NEXUS_TEST_KUBE_RUN` its run directory, for the
//! API server's audit log), skipped otherwise. `.ci/run` starts one and runs these.
//!
//! `deploy/` is applied with `kubectl apply -k deploy/`, as the docs say; its Nexus
//! Deployment runs in kwok's simulated pods (admitted by the `restricted` profile of
//! `nexus-system`), while the `nexus` processes under test run here, each as the deployed
//! ServiceAccount with a token from the TokenRequest API (`kubectl create token`) in its
//! kubeconfig: no admin rights, so a permission missing from `deploy/rbac.yaml` fails.
//! kwok's pods run nothing, so agents' node calls go to the stub node (`--node stub`).
//! What each replica wrote is read from the API server's own audit log, where every
//! request carries the id of the token it was made with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::agents::{SUPPORT_BOT, get, running, send};
use crate::replica_processes::{Replica, bearer, leader, tenant_phase, within};
use nexus_store_sea_orm::testing::fresh_postgres;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const SERVICE_ACCOUNT: &str = "system:serviceaccount:nexus-system:nexus";

/// The cluster under test: its admin kubeconfig and run directory.
struct Kube {
    admin: PathBuf,
    run: PathBuf,
}

fn kube() -> Option<Kube> {
    let Some(admin) = std::env::var_os("NEXUS_TEST_KUBECONFIG") else {
        eprintln!("skipping: NEXUS_TEST_KUBECONFIG is not set (scripts/kube-cluster up starts a cluster)");
        return None;
    };
    let admin = PathBuf::from(admin);
    let run = std::env::var_os("NEXUS_TEST_KUBE_RUN").map_or_else(|| admin.parent().unwrap().to_owned(), PathBuf::from);
    Some(Kube { admin, run })
}

impl Kube {
    /// `kubectl` as the admin; panics with its output when it fails.
    fn kubectl(&self, args: &[&str]) -> String {
        let output = Command::new("kubectl").arg("--kubeconfig").arg(&self.admin).args(args).output().expect("kubectl runs");
        let (out, err) = (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "kubectl {args:?}: {out}{err}");
        out
    }

    /// Whether `kubectl get` finds the object.
    fn exists(&self, args: &[&str]) -> bool {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--ignore-not-found", "-o", "name"]);
        !self.kubectl(&all).trim().is_empty()
    }

    /// `deploy/` applied as the docs say, its Nexus Deployment available: its pods admitted
    /// by the `restricted` profile `nexus-system` enforces (kwok runs them).
    fn deploy(&self) {
        self.kubectl(&["apply", "-k", DEPLOY]);
        for crd in ["nexustenants.nexus.astromesh.io", "nexusagents.nexus.astromesh.io"] {
            self.kubectl(&["wait", "--for", "condition=Established", &format!("crd/{crd}"), "--timeout", "60s"]);
        }
        self.kubectl(&["-n", "nexus-system", "rollout", "status", "deployment/nexus", "--timeout", "180s"]);
    }

    /// A kubeconfig holding a fresh token of the deployed ServiceAccount (TokenRequest
    /// API), and the token's id as the audit log records it.
    fn service_account_kubeconfig(&self, dir: &Path, name: &str) -> (PathBuf, String) {
        let token = self.kubectl(&["-n", "nexus-system", "create", "token", "nexus", "--duration", "2h"]).trim().to_owned();
        let server = self.kubectl(&["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.server}"]);
        let ca = self.kubectl(&["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority}"]);
        let path = dir.join(format!("{name}.kubeconfig"));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: {name}\ncurrent-context: c\n"
        );
        std::fs::write(&path, config).unwrap();
        let claims: Value = serde_json::from_slice(&base64url(token.split('.').nth(1).expect("a JWT"))).expect("JWT claims");
        (path, format!("JTI={}", claims["jti"].as_str().expect("the token has an id")))
    }

    /// Every completed write of the ServiceAccount the audit log holds: (credential id,
    /// verb, resource, namespace, name, code).
    fn writes(&self) -> Vec<Write> {
        let log = std::fs::read_to_string(self.run.join("audit.log")).expect("the API server's audit log (NEXUS_KUBE_AUDIT=1)");
        log.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == SERVICE_ACCOUNT)
            .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete")))
            .map(|e| Write {
                credential: e["user"]["extra"]["authentication.kubernetes.io/credential-id"][0].as_str().unwrap_or_default().to_owned(),
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                resource: format!(
                    "{}{}",
                    e["objectRef"]["resource"].as_str().unwrap_or_default(),
                    e["objectRef"]["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default()
                ),
                namespace: e["objectRef"]["namespace"].as_str().unwrap_or_default().to_owned(),
                name: e["objectRef"]["name"].as_str().unwrap_or_default().to_owned(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0),
                at: e["stageTimestamp"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Write {
    credential: String,
    verb: String,
    resource: String,
    namespace: String,
    name: String,
    code: u64,
    at: String,
}

impl Write {
    /// Whether it touched the tenant whose namespace is `ns`: its resource, its namespace
    /// or anything in it.
    fn of_tenant(&self, ns: &str) -> bool {
        self.namespace == ns || (self.name == ns && (self.resource.starts_with("namespaces") || self.resource.starts_with("nexustenants")))
    }
}

fn base64url(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' | b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        buffer = (buffer << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).unwrap());
        }
    }
    out
}

fn kube_args() -> Vec<&'static str> {
    vec!["--cluster", "kube", "--node", "stub"]
}

async fn start(database_url: &str, kubeconfig: &Path, extra: &[&str]) -> Replica {
    let mut args = kube_args();
    args.extend_from_slice(extra);
    Replica::start_with(database_url, &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]).await
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nexus-kube-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The README walk on Kubernetes, as the deployed ServiceAccount: a tenant is Ready once
/// its node Deployment is available; an agent is Running (the stub node answers); the
/// agent deleted goes; the tenant deleted: its namespace terminated by the namespace
/// controller, then Nexus's finalizer released and the NexusTenant gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexus_as_its_service_account_walks_the_readme_on_a_real_cluster() {
    let Some(kube) = kube() else { return };
    kube.deploy();
    let dir = scratch();
    let (kubeconfig, _) = kube.service_account_kubeconfig(&dir, "nexus");
    let database = format!("sqlite://{}", dir.join("nexus.db").display());
    let nexus = start(&database, &kubeconfig, &["--resync", "5s"]).await;
    let server = &nexus.server;

    let token = server.user("ada@example.com").await;
    let created = server.tenant(&token, "kube walk").await;
    let (tenant, ns) = (created.str("id"), created.str("crName"));
    within("the tenant is Ready", Duration::from_secs(120), async || tenant_phase(server, &token, &tenant).await == "Ready").await;
    let available = kube.kubectl(&["-n", &ns, "get", "deployment", "astromesh-node", "-o", "jsonpath={.status.availableReplicas}"]);
    assert_eq!(available, "1", "Ready only once the node Deployment is available");
    let enforced = kube.kubectl(&["get", "namespace", &ns, "-o", "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}"]);
    assert_eq!(enforced, "restricted", "and its pod was admitted by the restricted profile");
    assert_eq!(kube.kubectl(&["-n", "nexus-system", "get", "ntenant", &ns, "-o", "jsonpath={.status.phase}"]), "Ready");

    let key = server.key(&token, &tenant, "ci").await.str("rawKey");
    let created = send(server, Method::POST, "/api/v1/agents", &key, "application/yaml", SUPPORT_BOT).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    within("the agent is Running (on the stub node)", Duration::from_secs(60), async || running(&get(server, "/api/v1/agents/support-bot", &key).await.body))
        .await;
    assert_eq!(kube.kubectl(&["-n", &ns, "get", "nagent", "support-bot", "-o", "jsonpath={.status.phase}"]), "Running");
    let kept = kube.kubectl(&["-n", &ns, "get", "nagent", "support-bot", "-o", "jsonpath={.spec.agentSpec.spec.x-extension.kept}"]);
    assert_eq!(kept, "[1,2]", "the API server kept the manifest's unknown fields");

    let deleted = server.call(Method::DELETE, "/api/v1/agents/support-bot", &[("x-api-key", &key)], None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    within("the NexusAgent goes once its finalizer is released", Duration::from_secs(60), async || !kube.exists(&["-n", &ns, "nagent", "support-bot"])).await;

    let auth = bearer(&token);
    let gone = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}"), &[(auth.0, &auth.1)], None).await;
    assert_eq!(gone.status, StatusCode::OK, "{gone:?}");
    let mut namespace_gone_at = None;
    within("the namespace is terminated, then the NexusTenant released", Duration::from_secs(180), async || {
        let namespace = kube.exists(&["namespace", &ns]);
        let resource = kube.exists(&["-n", "nexus-system", "ntenant", &ns]);
        if !namespace && namespace_gone_at.is_none() {
            namespace_gone_at = Some(Instant::now());
        }
        assert!(namespace || !resource || namespace_gone_at.is_some(), "the NexusTenant went before its namespace");
        !namespace && !resource
    })
    .await;
    drop(nexus);
    let _ = std::fs::remove_dir_all(dir);
}

/// Two replicas on one PostgreSQL database and one Lease, each with a token of its own:
/// exactly one leads; a tenant created through the follower is provisioned by the leader
/// (every write of its resources, as the API server's audit log records them, made with
/// the leader's token); once Ready and unchanged nothing re-applies it pass after pass; the
/// leader killed with SIGKILL, the other leads within 15 s and provisions the next tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_leader_provisions_and_the_other_leads_within_15_s_of_a_kill_9() {
    let Some(kube) = kube() else { return };
    let Some(db) = fresh_postgres().await else { return };
    kube.deploy();
    let dir = scratch();
    let (first_config, first_token) = kube.service_account_kubeconfig(&dir, "first");
    let (second_config, second_token) = kube.service_account_kubeconfig(&dir, "second");
    let resync = ["--resync", "2s"];
    let mut replicas = [start(&db.url, &first_config, &resync).await, start(&db.url, &second_config, &resync).await];
    let tokens = [first_token, second_token];
    let leading = leader(&replicas, &[0, 1]).await;
    let following = 1 - leading;

    let token = replicas[following].server.user("ada@example.com").await;
    let tenant = replicas[following].server.tenant(&token, "through the follower").await;
    assert_eq!(tenant.body["phase"], "Pending", "the follower leaves it to the leader: {tenant:?}");
    let (tenant, ns) = (tenant.str("id"), tenant.str("crName"));
    for replica in &replicas {
        within("the tenant is Ready through both replicas", Duration::from_secs(120), async || tenant_phase(&replica.server, &token, &tenant).await == "Ready")
            .await;
    }
    let writes: Vec<Write> = kube.writes().into_iter().filter(|w| w.of_tenant(&ns)).collect();
    assert!(!writes.is_empty(), "the audit log records the tenant's provisioning");
    let by_follower: Vec<&Write> = writes.iter().filter(|w| w.credential == tokens[following]).collect();
    assert!(by_follower.is_empty(), "the follower wrote: {by_follower:?}");
    assert!(writes.iter().all(|w| w.credential == tokens[leading]), "{writes:?}");

    // Unchanged, it is not applied again: several resync periods go by without a write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = kube.writes().into_iter().filter(|w| w.of_tenant(&ns)).count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let again: Vec<Write> = kube.writes().into_iter().filter(|w| w.of_tenant(&ns)).skip(settled).collect();
    assert!(again.is_empty(), "an unchanged Ready tenant was written again over 5 resync periods: {again:?}");

    // Drift is seen by the watches and repaired: the node's Service deleted by hand.
    kube.kubectl(&["-n", &ns, "delete", "service", "astromesh-node"]);
    within("the deleted Service comes back", Duration::from_secs(30), async || kube.exists(&["-n", &ns, "service", "astromesh-node"])).await;

    replicas[leading].kill();
    let killed = Instant::now();
    within("the survivor leads", Duration::from_secs(15), async || replicas[following].leads().await == Some(true)).await;
    let failover = killed.elapsed();
    eprintln!("after kill -9 of the leader, the other replica led {failover:?} later");
    let next = replicas[following].server.tenant(&token, "after the failover").await;
    let (next, next_ns) = (next.str("id"), next.str("crName"));
    within("the next tenant is Ready", Duration::from_secs(120), async || tenant_phase(&replicas[following].server, &token, &next).await == "Ready").await;

    for id in [&tenant, &next] {
        let auth = bearer(&token);
        let gone = replicas[following].server.call(Method::DELETE, &format!("/api/v1/tenants/{id}"), &[(auth.0, &auth.1)], None).await;
        assert_eq!(gone.status, StatusCode::OK, "{gone:?}");
    }
    within("both NexusTenants go", Duration::from_secs(180), async || {
        !kube.exists(&["-n", "nexus-system", "ntenant", &ns]) && !kube.exists(&["-n", "nexus-system", "ntenant", &next_ns])
    })
    .await;
    drop(replicas);
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A tenant whose namespace the cluster refuses (an admission policy of its operator): it
/// is retried with backoff (one attempt per backoff step, not several a second, as the
/// audit log counts them) and its message says what failed, not "internal error"; once
/// the policy is lifted it becomes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_namespace_is_retried_with_backoff_and_the_tenant_says_why() {
    let Some(kube) = kube() else { return };
    kube.deploy();
    let dir = scratch();
    let (kubeconfig, credential) = kube.service_account_kubeconfig(&dir, "nexus");
    let policy = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: freeze-tenants\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n    - apiGroups: [\"\"]\n      apiVersions: [v1]\n      operations: [CREATE]\n      resources: [namespaces]\n  validations:\n  - expression: \"!has(object.metadata.labels) || !('nexus.astromesh.io/managed' in object.metadata.labels)\"\n    message: new tenant namespaces are frozen during the migration\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: freeze-tenants\nspec:\n  policyName: freeze-tenants\n  validationActions: [Deny]\n";
    let policy_file = dir.join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    kube.kubectl(&["apply", "-f", policy_file.to_str().unwrap()]);
    // Let the policy take effect before Nexus tries.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let database = format!("sqlite://{}", dir.join("nexus.db").display());
    let nexus = start(&database, &kubeconfig, &["--resync", "60s"]).await;
    let server = &nexus.server;
    let token = server.user("ada@example.com").await;
    let created = server.tenant(&token, "frozen").await;
    let (tenant, ns) = (created.str("id"), created.str("crName"));
    let auth = bearer(&token);
    let mut message = String::new();
    within("the tenant is in Error, saying why", Duration::from_secs(30), async || {
        let listed = server.call(Method::GET, "/api/v1/tenants", &[(auth.0, &auth.1)], None).await;
        let found = listed.body.as_array().and_then(|t| t.iter().find(|t| t["id"] == tenant.as_str()).cloned()).unwrap_or_default();
        message = found["message"].as_str().unwrap_or_default().to_owned();
        found["phase"] == "Error" && !message.is_empty()
    })
    .await;
    assert!(message.contains("namespace") && message.contains("new tenant namespaces are frozen during the migration"), "{message}");
    assert_ne!(message, "internal error");

    // Attempts over 20 s: backoff 1, 2, 4, 8, 16 s gives at most 6, never several a second.
    let attempts = || {
        kube.writes()
            .into_iter()
            .filter(|w| w.credential == credential && w.resource == "namespaces" && w.verb == "patch" && w.code >= 400)
            .collect::<Vec<Write>>()
    };
    let before = attempts().len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during: Vec<Write> = attempts().into_iter().skip(before).collect();
    assert!(!during.is_empty() && during.len() <= 6, "{} refused namespace writes in 20 s: {during:?}", during.len());
    eprintln!("refused namespace writes over 20 s: {:?}", during.iter().map(|w| w.at.clone()).collect::<Vec<_>>());

    kube.kubectl(&["delete", "-f", policy_file.to_str().unwrap()]);
    within("the tenant is Ready once the policy is lifted", Duration::from_secs(120), async || tenant_phase(server, &token, &tenant).await == "Ready").await;
    let gone = server.call(Method::DELETE, &format!("/api/v1/tenants/{tenant}"), &[(auth.0, &auth.1)], None).await;
    assert_eq!(gone.status, StatusCode::OK);
    within("the NexusTenant goes", Duration::from_secs(180), async || !kube.exists(&["-n", "nexus-system", "ntenant", &ns])).await;
    drop(nexus);
    let _ = std::fs::remove_dir_all(dir);
}
