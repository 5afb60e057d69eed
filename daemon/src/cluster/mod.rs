//! One model of the cluster, fed by interchangeable sources: the Kubernetes
//! API (kube-rs watchers) or, in standalone mode, a directory of Kubernetes
//! YAML. Everything else in the agent reads only this model.

pub mod kubernetes;
mod standalone;
pub mod stores;

pub use kubernetes::KubeSource;
pub use standalone::{Parsed, StandaloneSource};
pub use weir_model::{ClusterState, ObjectKey, parse_manifests};

use std::sync::Arc;

use tokio::sync::watch;

/// A source of cluster state. It publishes whole snapshots: consumers never
/// see a half-applied change.
pub trait ClusterSource: Send + 'static {
    /// Runs until the process ends, publishing each new snapshot.
    fn run(self, tx: watch::Sender<Arc<ClusterState>>) -> impl std::future::Future<Output = ()> + Send;
}
