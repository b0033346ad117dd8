//! What the controllers need besides the port: watches that say when something changed.
//! The leader lease is in `lease.rs`.

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::watcher::Config;
use kube::runtime::{WatchStreamExt, watcher};

use crate::KubeCluster;
use crate::crd::{NexusAgent, NexusTenant};
use crate::resources::MANAGED_BY;

impl KubeCluster {
    /// One item per change of any `NexusAgent`, `NexusTenant` or managed node Deployment:
    /// the controllers' watches. Watch errors are logged and the watches resume.
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let client = self.watch_client();
        let managed = Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        // Each watch backs off on errors rather than spinning while the API server is away.
        let agents = watcher(Api::<NexusAgent>::all(client.clone()), Config::default()).default_backoff().map(|event| event.map(drop));
        let tenants = watcher(Api::<NexusTenant>::namespaced(client.clone(), &self.settings().system_namespace), Config::default())
            .default_backoff()
            .map(|event| event.map(drop));
        let nodes = watcher(Api::<Deployment>::all(client), managed).default_backoff().map(|event| event.map(drop));
        futures_util::stream::select(futures_util::stream::select(agents, tenants), nodes).filter_map(|event| async move {
            match event {
                Ok(()) => Some(()),
                Err(err) => {
                    tracing::warn!(error = %err, "watch interrupted; resuming");
                    None
                }
            }
        })
    }
}
