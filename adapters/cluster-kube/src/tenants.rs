//! Tenants on Kubernetes. Provisioning applies the `NexusTenant` (with its finalizer), then
//! the namespace, the NetworkPolicy, the node's Deployment and Service, every time: what
//! was deleted by hand comes back, and a new node image or quota rolls out. The tenant is
//! `Ready` once its node is available (the Deployment observed its generation and has an
//! available replica), `Provisioning` until then, `Error` when applying failed. The status
//! is written only when it changes, so a pass that changes nothing writes nothing.
//!
//! Deleting marks the tenant deleting (its finalizer holds it) and deletes its namespace;
//! [`KubeCluster::finish_tenant_deletions`] lets the tenant go once the namespace is gone,
//! removing only Nexus's finalizer.

use chrono::{DateTime, SubsecRound, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::{Resource, ResourceExt};
use nexus_ports::tenancy::{Tenant, TenantId, TenantPhase, TenantStatus};
use nexus_ports::{Error, Result};
use serde_json::json;

use crate::KubeCluster;
use crate::cluster::{Owned, absent_ok, apply, release_finalizer, translate};
use crate::crd::{Condition, MANAGED_LABEL, NexusTenant, NexusTenantPhase, NexusTenantStatus, TENANT_FINALIZER};
use crate::reflector::{key_of, version_of};
use crate::resources::{NODE_NAME, node_deployment, node_endpoint, node_network_policy, node_service, tenant_namespace};

/// What this replica last applied of a tenant, and what the API server answered (see
/// [`KubeCluster::unchanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The tenant's resource as applied, with the settings its node's resources follow.
    desired: String,
    tenant_generation: Option<i64>,
    namespace: Option<u64>,
    policy: Option<u64>,
    deployment_generation: Option<i64>,
    service: Option<u64>,
}

/// Whether the node's Deployment is available: it observed its current generation and
/// has an available replica.
pub(crate) fn node_available(deployment: &Deployment) -> bool {
    let generation = deployment.metadata.generation.unwrap_or(0);
    deployment.status.as_ref().is_some_and(|status| status.observed_generation.unwrap_or(0) >= generation && status.available_replicas.unwrap_or(0) >= 1)
}

/// The `Ready` condition: `status` with its reason and message, keeping the transition
/// time of `current` when the status did not change.
fn ready_condition(current: &NexusTenantStatus, status: bool, reason: &str, message: Option<String>, now: DateTime<Utc>) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = current.conditions.iter().find(|c| c.type_ == "Ready");
    let since = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time,
        _ => Some(now.trunc_subsecs(0)),
    };
    Condition { type_: "Ready".to_owned(), status, reason: Some(reason.to_owned()), message, last_transition_time: since }
}

/// The status of a tenant whose resources in `namespace` were applied: `Ready` when its
/// node is available, `Provisioning` until then.
pub(crate) fn applied_status(namespace: &str, available: bool, current: &NexusTenantStatus, now: DateTime<Utc>) -> NexusTenantStatus {
    let (phase, condition) = if available {
        (NexusTenantPhase::Ready, ready_condition(current, true, "NodeAvailable", None, now))
    } else {
        let waiting = Some("waiting for the tenant's node to be available".to_owned());
        (NexusTenantPhase::Provisioning, ready_condition(current, false, "NodeUnavailable", waiting, now))
    };
    NexusTenantStatus { phase: Some(phase), namespace: Some(namespace.to_owned()), node_endpoint: Some(node_endpoint(namespace)), conditions: vec![condition] }
}

/// The status of a tenant whose resources could not be applied: `Error` with the reason
/// its owner may read (it is the tenant's `message`), never an internal error's detail.
pub(crate) fn failed_status(current: &NexusTenantStatus, error: &Error, now: DateTime<Utc>) -> NexusTenantStatus {
    NexusTenantStatus {
        phase: Some(NexusTenantPhase::Error),
        conditions: vec![ready_condition(current, false, "ProvisioningFailed", Some(error.public_message()), now)],
        ..current.clone()
    }
}

/// Translates a failure to apply the tenant's `what`. A refusal by the cluster's policy (an
/// admission webhook or policy, a ResourceQuota, RBAC: a 403, or a 422 an admission policy
/// denied) is said in words the tenant's owner or the cluster's operator can act on, with
/// the API server's reason: it is the cluster's rule, not an internal detail. Anything
/// else translates as usual.
pub(crate) fn refused(what: &'static str) -> impl Fn(kube::Error) -> Error {
    move |err| match err {
        kube::Error::Api(status) if status.code == 403 || (status.code == 422 && status.message.contains("denied request")) => {
            tracing::warn!(code = status.code, reason = %status.reason, message = %status.message, "the cluster refused a tenant's {what}");
            Error::Forbidden(format!("the cluster refused to create the tenant's {what}: {}", status.message))
        }
        other => translate(other),
    }
}

/// What the core sees of a tenant's status.
pub(crate) fn port_status(status: &NexusTenantStatus) -> TenantStatus {
    let phase = status.phase.map_or(TenantPhase::Pending, TenantPhase::from);
    let message = status.conditions.iter().find(|c| c.type_ == "Ready" && c.status != "True").and_then(|c| c.message.clone());
    TenantStatus { phase, namespace: status.namespace.clone(), node_endpoint: status.node_endpoint.clone(), message }
}

fn being_deleted() -> TenantStatus {
    TenantStatus { message: Some("the tenant is being deleted".to_owned()), ..TenantStatus::pending() }
}

impl KubeCluster {
    /// Applies the tenant and its namespace's resources, unless nothing drifted since this
    /// replica last applied them (see [`KubeCluster::unchanged`]); returns its status.
    pub(crate) async fn provision(&self, tenant: &Tenant) -> Result<TenantStatus> {
        let name = tenant.id.cr_name();
        let resource = json!({
            "apiVersion": NexusTenant::api_version(&()),
            "kind": NexusTenant::kind(&()),
            "metadata": {"name": name, "finalizers": [TENANT_FINALIZER]},
            "spec": {"displayName": tenant.display_name.as_str(), "nodeProfile": tenant.node_profile.as_str(), "resourceQuota": {"maxAgents": tenant.max_agents}}
        });
        let desired = format!("{resource} {} {}", self.settings().node_image, self.settings().system_namespace);
        if let Some((current, available)) = self.unchanged(&name, &desired) {
            let status = applied_status(&name, available, &current, Utc::now());
            self.write_status(&name, &current, &status).await?;
            return Ok(port_status(&status));
        }
        self.forget_applied(&name);
        let applied = self.tenants().patch(&name, &apply(), &Patch::Apply(&resource)).await.map_err(translate)?;
        self.keep_tenant(&applied);
        if applied.metadata.deletion_timestamp.is_some() {
            return Ok(being_deleted());
        }
        let current = applied.status.clone().unwrap_or_default();
        match self.apply_node(&name, &applied).await {
            Ok((available, record)) => {
                let record = Applied { desired, tenant_generation: applied.metadata.generation, ..record };
                self.stores().applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.clone(), record);
                let status = applied_status(&name, available, &current, Utc::now());
                self.write_status(&name, &current, &status).await?;
                Ok(port_status(&status))
            }
            Err(err) => {
                // Best effort: the resource shows why; the loop retries with backoff.
                let _ = self.write_status(&name, &current, &failed_status(&current, &err, Utc::now())).await;
                Err(err)
            }
        }
    }

    fn forget_applied(&self, name: &str) {
        self.stores().applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    /// Whether nothing drifted since this replica last applied the tenant `name` as
    /// `desired`: the watches' stores are ready and see its resource at the generation
    /// applied (not being deleted), and its namespace, NetworkPolicy and Service at the
    /// versions, its Deployment at the generation the applies answered. Then the tenant's
    /// current status and whether its node is available; `None` when anything differs,
    /// is gone, or is not known (the watches are not running): then everything is applied.
    fn unchanged(&self, name: &str, desired: &str) -> Option<(NexusTenantStatus, bool)> {
        let stores = self.stores();
        let record = stores.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()?;
        if record.desired != desired {
            return None;
        }
        let tenant = stores.tenants.get(&(self.settings().system_namespace.clone(), name.to_owned()))??;
        if tenant.metadata.deletion_timestamp.is_some() || tenant.metadata.generation != record.tenant_generation {
            return None;
        }
        let node = (name.to_owned(), NODE_NAME.to_owned());
        let namespace = stores.namespaces.get(&(String::new(), name.to_owned()))??;
        let policy = stores.policies.get(&node)??;
        let service = stores.services.get(&node)??;
        let deployment = stores.deployments.get(&node)??;
        let same = namespace.version == record.namespace
            && policy.version == record.policy
            && service.version == record.service
            && deployment.generation == record.deployment_generation;
        same.then(|| (tenant.status.clone().unwrap_or_default(), deployment.available))
    }

    /// Namespace, NetworkPolicy (before any pod runs), Deployment and Service of the node;
    /// whether the node is available, and what the API server answered. Each answer goes
    /// into the watches' stores at once.
    async fn apply_node(&self, name: &str, tenant: &NexusTenant) -> Result<(bool, Applied)> {
        let stores = self.stores();
        let namespace = tenant_namespace(name, MANAGED_LABEL);
        let namespace = Api::<Namespace>::all(self.client()).patch(name, &apply(), &Patch::Apply(&namespace)).await.map_err(refused("namespace"))?;
        stores.namespaces.written(&key_of(&namespace), version_of(&namespace), Owned::of(&namespace));
        let policy = node_network_policy(&self.settings().system_namespace);
        let policy = Api::<NetworkPolicy>::namespaced(self.client(), name)
            .patch(NODE_NAME, &apply(), &Patch::Apply(&policy))
            .await
            .map_err(refused("network policy"))?;
        stores.policies.written(&key_of(&policy), version_of(&policy), Owned::of(&policy));
        let deployment = node_deployment(tenant, &self.settings().node_image);
        let deployment = Api::<Deployment>::namespaced(self.client(), name)
            .patch(NODE_NAME, &apply(), &Patch::Apply(&deployment))
            .await
            .map_err(refused("node Deployment"))?;
        stores.deployments.written(&key_of(&deployment), version_of(&deployment), Owned::of_deployment(&deployment));
        let service = Api::<Service>::namespaced(self.client(), name)
            .patch(NODE_NAME, &apply(), &Patch::Apply(&node_service()))
            .await
            .map_err(refused("node Service"))?;
        stores.services.written(&key_of(&service), version_of(&service), Owned::of(&service));
        let record = Applied {
            desired: String::new(),
            tenant_generation: None,
            namespace: version_of(&namespace),
            policy: version_of(&policy),
            deployment_generation: deployment.metadata.generation,
            service: version_of(&service),
        };
        Ok((node_available(&deployment), record))
    }

    /// Writes `status` through the status subresource, unless it is `current`.
    async fn write_status(&self, name: &str, current: &NexusTenantStatus, status: &NexusTenantStatus) -> Result<()> {
        if status == current {
            return Ok(());
        }
        let patch = json!({"apiVersion": NexusTenant::api_version(&()), "kind": NexusTenant::kind(&()), "status": status});
        let written = self.tenants().patch_status(name, &apply(), &Patch::Apply(&patch)).await.map_err(translate)?;
        self.keep_tenant(&written);
        Ok(())
    }

    /// The tenant's resource: from the store once it is ready.
    pub(crate) async fn read_tenant(&self, id: &TenantId) -> Result<Option<NexusTenant>> {
        let name = id.cr_name();
        if let Some(kept) = self.stores().tenants.get(&(self.settings().system_namespace.clone(), name.clone())) {
            return Ok(kept.map(|tenant| (*tenant).clone()));
        }
        absent_ok(self.tenants().get(&name).await)
    }

    /// The tenant's status as its resource records it; pending when there is none. From
    /// the store once it is ready: no request per tenant per pass.
    pub(crate) async fn read_tenant_status(&self, id: &TenantId) -> Result<TenantStatus> {
        match self.read_tenant(id).await? {
            None => Ok(TenantStatus::pending()),
            Some(tenant) if tenant.metadata.deletion_timestamp.is_some() => Ok(being_deleted()),
            Some(tenant) => Ok(port_status(&tenant.status.unwrap_or_default())),
        }
    }

    /// Marks the tenant deleting (its finalizer keeps it until its namespace is gone) and
    /// deletes its namespace.
    pub(crate) async fn deprovision(&self, id: &TenantId) -> Result<()> {
        let name = id.cr_name();
        self.forget_applied(&name);
        let answer = absent_ok(self.tenants().delete(&name, &DeleteParams::default()).await)?;
        match answer.and_then(|answer| answer.left()) {
            Some(tenant) => self.keep_tenant(&tenant),
            None => self.stores().tenants.went(&(self.settings().system_namespace.clone(), name.clone()), None),
        }
        absent_ok(Api::<Namespace>::all(self.client()).delete(&name, &DeleteParams::default()).await)?;
        Ok(())
    }

    /// For every tenant being deleted (through the API or `kubectl delete`): deletes its
    /// namespace if nobody did yet, and once the namespace is gone removes Nexus's
    /// finalizer (and only it). Only namespaces labelled managed are deleted. One tenant
    /// failing does not hold the others up.
    pub(crate) async fn finish_tenant_deletions(&self) -> Result<()> {
        let tenants: Vec<NexusTenant> = match self.stores().tenants.all() {
            Some(kept) => kept.iter().filter(|t| t.metadata.deletion_timestamp.is_some()).map(|t| (**t).clone()).collect(),
            None => self.tenants().list(&ListParams::default()).await.map_err(translate)?.items,
        };
        let namespaces = Api::<Namespace>::all(self.client());
        for tenant in tenants.iter().filter(|t| t.metadata.deletion_timestamp.is_some() && t.finalizers().iter().any(|f| f == TENANT_FINALIZER)) {
            let name = tenant.name_any();
            let outcome = match absent_ok(namespaces.get(&name).await) {
                Ok(Some(namespace)) if namespace.labels().get(MANAGED_LABEL).is_some_and(|v| v == "true") => {
                    if namespace.metadata.deletion_timestamp.is_none() {
                        absent_ok(namespaces.delete(&name, &DeleteParams::default()).await).map(drop)
                    } else {
                        Ok(())
                    }
                }
                Ok(_) => release_finalizer(&self.tenants(), &name, tenant.finalizers(), tenant.resource_version().as_deref(), TENANT_FINALIZER)
                    .await
                    .map(|answer| answer.iter().for_each(|answer| self.keep_tenant(answer))),
                Err(err) => Err(err),
            };
            if let Err(err) = outcome {
                tracing::warn!(tenant = %name, error = %err, "cannot finish deleting the tenant yet");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn deployment(generation: i64, observed: i64, available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "astromesh-node", "generation": generation},
            "status": {"observedGeneration": observed, "availableReplicas": available}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_is_available_once_its_generation_is_observed_with_a_replica_available() {
        assert!(node_available(&deployment(2, 2, 1)));
        assert!(!node_available(&deployment(2, 1, 1)), "a new generation (image, quota) not yet observed");
        assert!(!node_available(&deployment(1, 1, 0)), "no replica available");
        assert!(!node_available(&serde_json::from_value(json!({"metadata": {"generation": 1}})).unwrap()), "no status yet");
    }

    #[test]
    fn ready_follows_the_node_and_keeps_its_transition_time() {
        let provisioning = applied_status("tenant-x", false, &NexusTenantStatus::default(), t0());
        assert_eq!(provisioning.phase, Some(NexusTenantPhase::Provisioning));
        assert_eq!(provisioning.node_endpoint.as_deref(), Some("http://astromesh-node.tenant-x.svc:8000"));
        assert_eq!(port_status(&provisioning).message.as_deref(), Some("waiting for the tenant's node to be available"));
        let again = applied_status("tenant-x", false, &provisioning, t0() + chrono::Duration::minutes(1));
        assert_eq!(again, provisioning, "nothing changed: nothing to write");
        let ready = applied_status("tenant-x", true, &provisioning, t0() + chrono::Duration::minutes(2));
        assert_eq!((ready.phase, ready.conditions[0].status.as_str()), (Some(NexusTenantPhase::Ready), "True"));
        assert_eq!(ready.conditions[0].last_transition_time, Some(t0() + chrono::Duration::minutes(2)));
        assert_eq!(
            port_status(&ready),
            TenantStatus { phase: TenantPhase::Ready, namespace: Some("tenant-x".into()), node_endpoint: Some(node_endpoint("tenant-x")), message: None }
        );
    }

    #[test]
    fn a_failure_keeps_where_the_tenant_was_and_says_why() {
        let ready = applied_status("tenant-x", true, &NexusTenantStatus::default(), t0());
        let failed = failed_status(&ready, &Error::Unavailable("the Kubernetes API answered 503".into()), t0());
        assert_eq!((failed.phase, failed.namespace.as_deref()), (Some(NexusTenantPhase::Error), Some("tenant-x")));
        assert_eq!(failed.conditions[0].reason.as_deref(), Some("ProvisioningFailed"));
        assert_eq!(port_status(&failed).message.as_deref(), Some("the Kubernetes API answered 503"));
        assert_eq!(
            failed_status(&failed, &Error::Unavailable("the Kubernetes API answered 503".into()), t0() + chrono::Duration::hours(1)),
            failed,
            "the same failure again writes nothing"
        );
    }

    #[test]
    fn a_tenants_message_never_carries_internal_detail() {
        let refused = Error::internal("the Kubernetes API refused a request (422): spec.replicas: Invalid value");
        let failed = failed_status(&NexusTenantStatus::default(), &refused, t0());
        assert_eq!(port_status(&failed).message.as_deref(), Some("internal error"), "the detail is for the log");
    }
}

#[cfg(test)]
#[path = "tenants_tests.rs"]
mod scenarios;
