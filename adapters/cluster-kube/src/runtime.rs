//! What the controllers need besides the port: watches that say what changed, and keep
//! the stores reads are served from (see `reflector.rs`). The leader lease is in
//! `lease.rs`.

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::watcher::{Config, Event};
use kube::runtime::{WatchStreamExt, watcher};
use nexus_ports::agents::{AgentName, Change};
use nexus_ports::tenancy::TenantId;

use crate::KubeCluster;
use crate::agents::AgentEntry;
use crate::cluster::{Owned, Stores};
use crate::crd::{MANAGED_LABEL, NexusAgent, NexusTenant};
use crate::reflector::{Reflector, key_of, version_of};
use crate::resources::MANAGED_BY;

/// Brings `store` up to date with a watch's `event`, keeping `keep` of each object.
pub(crate) fn reflect<K: ResourceExt, V>(store: &Reflector<V>, event: &Event<K>, keep: impl Fn(&K) -> V) {
    match event {
        Event::Apply(object) => store.observed(&key_of(object), version_of(object), keep(object)),
        Event::Delete(object) => store.deleted(&key_of(object), version_of(object)),
        Event::Init => store.relisting(),
        Event::InitApply(object) => store.listed(&key_of(object), version_of(object), keep(object)),
        Event::InitDone => store.relisted(),
    }
}

/// Stops serving reads from the stores when the watches feeding them are dropped.
struct StopWhenDropped(std::sync::Arc<Stores>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The object an event is about; `None` for the markers of a (re)list.
fn touched<K>(event: Event<K>) -> Option<K> {
    match event {
        Event::Apply(object) | Event::Delete(object) | Event::InitApply(object) => Some(object),
        Event::Init | Event::InitDone => None,
    }
}

/// The tenant whose namespace `object` is in.
fn tenant_of<K: ResourceExt>(object: &K) -> Option<TenantId> {
    TenantId::from_cr_name(&object.namespace()?)
}

fn agent_change(agent: &NexusAgent) -> Option<Change> {
    Some(Change::Agent(tenant_of(agent)?, AgentName::parse(&agent.name_any()).ok()?))
}

impl KubeCluster {
    /// One item per change of a `NexusAgent` (that agent), a `NexusTenant`, or what Nexus
    /// made for a tenant (its namespace, the node's Deployment, Service or NetworkPolicy:
    /// that tenant): the controllers' watches. A relist after a watch was
    /// interrupted reports every object it lists. Watch errors are logged and the watches
    /// resume. While the stream is polled, the agents' and tenants' watches keep the
    /// stores this backend reads from; once it is dropped, reads go to the API server.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        let client = self.watch_client();
        let managed = Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let (stores, guard) = (self.stores().clone(), StopWhenDropped(self.stores().clone()));
        let tenant_stores = stores.clone();
        // Each watch backs off on errors rather than spinning while the API server is away.
        let agents = watcher(Api::<NexusAgent>::all(client.clone()), Config::default()).default_backoff().map(move |event| {
            event.map(|event| {
                reflect(&stores.agents, &event, AgentEntry::of);
                touched(event).as_ref().and_then(agent_change)
            })
        });
        let tenants =
            watcher(Api::<NexusTenant>::namespaced(client.clone(), &self.settings().system_namespace), Config::default()).default_backoff().map(move |event| {
                event.map(|event| {
                    let _held = &guard;
                    reflect(&tenant_stores.tenants, &event, NexusTenant::clone);
                    touched(event).and_then(|tenant| TenantId::from_cr_name(&tenant.name_any())).map(Change::Tenant)
                })
            });
        // What Nexus made for tenants: each change (by anyone) wakes its tenant, whose
        // provisioning then sees from these stores whether it drifted.
        let owned_stores = self.stores().clone();
        let nodes = watcher(Api::<Deployment>::all(client.clone()), managed.clone()).default_backoff().map(move |event| {
            event.map(|event| {
                reflect(&owned_stores.deployments, &event, Owned::of_deployment);
                touched(event).as_ref().and_then(tenant_of).map(Change::Tenant)
            })
        });
        let owned_stores = self.stores().clone();
        let services = watcher(Api::<Service>::all(client.clone()), managed.clone()).default_backoff().map(move |event| {
            event.map(|event| {
                reflect(&owned_stores.services, &event, Owned::of);
                touched(event).as_ref().and_then(tenant_of).map(Change::Tenant)
            })
        });
        let owned_stores = self.stores().clone();
        let policies = watcher(Api::<NetworkPolicy>::all(client.clone()), managed).default_backoff().map(move |event| {
            event.map(|event| {
                reflect(&owned_stores.policies, &event, Owned::of);
                touched(event).as_ref().and_then(tenant_of).map(Change::Tenant)
            })
        });
        let owned_stores = self.stores().clone();
        let labelled = Config::default().labels(&format!("{MANAGED_LABEL}=true"));
        let namespaces = watcher(Api::<Namespace>::all(client), labelled).default_backoff().map(move |event| {
            event.map(|event| {
                reflect(&owned_stores.namespaces, &event, Owned::of);
                touched(event).and_then(|namespace| TenantId::from_cr_name(&namespace.name_any())).map(Change::Tenant)
            })
        });
        let owned = futures_util::stream::select(futures_util::stream::select(nodes, services), futures_util::stream::select(policies, namespaces));
        futures_util::stream::select(futures_util::stream::select(agents, tenants), owned).filter_map(|event| async move {
            match event {
                Ok(change) => change,
                Err(err) => {
                    tracing::warn!(error = %err, "watch interrupted; resuming");
                    None
                }
            }
        })
    }
}

#[cfg(any(test, feature = "testing"))]
impl KubeCluster {
    /// The stores as the watches leave them once they listed `agents` and `tenants` (for
    /// tests: see `fixtures::listed`).
    pub(crate) fn listed(&self, agents: &[NexusAgent], tenants: &[NexusTenant]) {
        let stores = self.stores();
        reflect(&stores.agents, &Event::Init, AgentEntry::of);
        for agent in agents {
            reflect(&stores.agents, &Event::InitApply(agent.clone()), AgentEntry::of);
        }
        reflect(&stores.agents, &Event::InitDone, AgentEntry::of);
        reflect(&stores.tenants, &Event::Init, NexusTenant::clone);
        for tenant in tenants {
            reflect(&stores.tenants, &Event::InitApply(tenant.clone()), NexusTenant::clone);
        }
        reflect(&stores.tenants, &Event::InitDone, NexusTenant::clone);
    }

    /// What the agents' watch reports after the list.
    #[cfg(test)]
    pub(crate) fn watched(&self, event: Event<NexusAgent>) {
        reflect(&self.stores().agents, &event, AgentEntry::of);
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
