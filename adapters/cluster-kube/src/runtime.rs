//! What the controllers need besides the port: watches that say what changed. The leader
//! lease is in `lease.rs`.

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::watcher::{Config, Event};
use kube::runtime::{WatchStreamExt, watcher};
use nexus_ports::agents::{AgentName, Change};
use nexus_ports::tenancy::TenantId;

use crate::KubeCluster;
use crate::crd::{NexusAgent, NexusTenant};
use crate::resources::MANAGED_BY;

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
    /// One item per change of a `NexusAgent` (that agent), a `NexusTenant` or a managed
    /// node Deployment (that tenant): the controllers' watches. A relist after a watch was
    /// interrupted reports every object it lists. Watch errors are logged and the watches
    /// resume.
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        let client = self.watch_client();
        let managed = Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        // Each watch backs off on errors rather than spinning while the API server is away.
        let agents = watcher(Api::<NexusAgent>::all(client.clone()), Config::default())
            .default_backoff()
            .map(|event| event.map(|event| touched(event).as_ref().and_then(agent_change)));
        let tenants = watcher(Api::<NexusTenant>::namespaced(client.clone(), &self.settings().system_namespace), Config::default())
            .default_backoff()
            .map(|event| event.map(|event| touched(event).and_then(|tenant| TenantId::from_cr_name(&tenant.name_any())).map(Change::Tenant)));
        let nodes = watcher(Api::<Deployment>::all(client), managed)
            .default_backoff()
            .map(|event| event.map(|event| touched(event).as_ref().and_then(tenant_of).map(Change::Tenant)));
        futures_util::stream::select(futures_util::stream::select(agents, tenants), nodes).filter_map(|event| async move {
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
