//! weir-agent: loads the datapath, owns IPAM and endpoints, serves the local
//! API to weir-cni and keeps the cluster-state model current.

pub mod api;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod endpoints;
pub mod ipam;
pub mod store;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;

use cluster::{ClusterSource, ClusterState, StandaloneSource};
use config::Config;
use dataplane::Kernel;
use endpoints::Endpoints;
use store::Store;

/// Runs the agent until SIGTERM or SIGINT. Pinned maps and links stay behind
/// on purpose: pods keep their connectivity while the agent is away.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.pin_dir().starts_with("/sys/fs/bpf") {
        weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    }
    let datapath = weir_datapath::Datapath::load(&config.pin_dir())
        .with_context(|| format!("loading datapath pinned at {}", config.pin_dir().display()))?;
    let endpoints = Endpoints::open(config.node.clone(), config.pod_cidr, Kernel { datapath }, Store::new(&config.state_dir))
        .context("opening endpoint state")?;
    let endpoints = Arc::new(Mutex::new(endpoints));

    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    match &config.manifests {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "standalone mode: cluster state from manifests");
            tokio::spawn(StandaloneSource::new(dir.clone()).run(tx));
        }
        None => {
            // The kube-rs source arrives with the Kubernetes integration issue;
            // until then the model simply stays empty (pods get no labels).
            tracing::warn!("no --manifests given and no Kubernetes source yet: cluster state is empty");
            drop(tx);
        }
    }

    let listener = api::bind(&config.socket).with_context(|| format!("binding {}", config.socket.display()))?;
    tracing::info!(node = %config.node, pod_cidr = %config.pod_cidr, socket = %config.socket.display(), "agent ready");
    let server = tokio::spawn(api::serve(listener, endpoints, rx));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting, datapath stays in place"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting, datapath stays in place"),
    }
    server.abort();
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
