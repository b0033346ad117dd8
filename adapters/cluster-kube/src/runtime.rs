//! What the controllers need besides the port: watches that say when something changed,
//! and the leader-election lease.

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::watcher::Config;
use kube::runtime::{WatchStreamExt, watcher};
use kube_lease_manager::LeaseManagerBuilder;
use nexus_ports::{Error, Result};
use tokio::sync::watch;

use crate::KubeCluster;
use crate::crd::{NexusAgent, NexusTenant};

/// The lease replicas compete for; its holder reconciles.
pub const LEASE_NAME: &str = "nexus-controller";

impl KubeCluster {
    /// One item per change of any `NexusAgent`, `NexusTenant` or managed node Deployment:
    /// the controllers' watches. Watch errors are logged and the watches resume.
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let client = self.client();
        let managed = Config::default().labels("app.kubernetes.io/managed-by=nexus");
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

    /// Competes for the `coordination.k8s.io` Lease in the system namespace as `identity`
    /// (the pod name); the channel says whether this replica holds it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the lease cannot be set up.
    pub async fn leadership(&self, identity: &str) -> Result<watch::Receiver<bool>> {
        let manager = LeaseManagerBuilder::new(self.client(), LEASE_NAME)
            .with_namespace(self.settings().system_namespace.clone())
            .with_identity(identity)
            .with_field_manager(crate::FIELD_MANAGER)
            .build()
            .await
            .map_err(|err| Error::Unavailable(format!("cannot set up the leader-election lease: {err}")))?;
        let (leading, _task) = manager.watch().await;
        Ok(leading)
    }
}
