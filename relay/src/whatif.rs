//! The service map's "what would this change do?": a policy change (the
//! manifests a user would apply) judged against every connection the
//! nodes hold, as `weir policy check` does (`weir_whatif`), with the
//! cluster's objects from manifests or the API server.

use std::path::PathBuf;
use std::sync::Arc;

use weir_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};
use weir_whatif::Report;

use crate::Relay;

/// Where the cluster's namespaces, pods, policies and identities come from.
#[derive(Clone)]
pub enum PolicySource {
    /// A directory of manifests (a standalone cluster, the lab).
    Manifests(PathBuf),
    /// The API server, read at each check.
    Cluster(weir_k8s::kube::Client),
}

/// Why a check could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the change: {0}")]
    Change(String),
    #[error("the cluster's objects: {0:#}")]
    Cluster(anyhow::Error),
    #[error("the nodes' flows: {0}")]
    Flows(String),
}

/// Judges `change` against every flow the nodes hold now.
pub async fn check(
    relay: &Arc<Relay>,
    source: &PolicySource,
    change: &str,
) -> Result<(Report, Vec<String>), CheckError> {
    let mut warnings = Vec::new();
    let before = match source {
        PolicySource::Manifests(dir) => weir_whatif::read_manifests(dir, &mut warnings).map_err(CheckError::Cluster)?,
        PolicySource::Cluster(client) => weir_whatif::read_cluster(client, &mut warnings)
            .await
            .map_err(CheckError::Cluster)?,
    };
    let after = weir_whatif::apply_change(&before, change).map_err(CheckError::Change)?;
    let req = GetFlowsRequest {
        number: u64::MAX,
        ..Default::default()
    };
    let mut rx = relay
        .flows(req)
        .map_err(|s| CheckError::Flows(s.message().to_owned()))?;
    let mut flows = Vec::new();
    while let Some(r) = rx.recv().await {
        match r {
            Ok(resp) => {
                if let Some(ResponseTypes::Flow(f)) = resp.response_types {
                    flows.push(f);
                }
            }
            Err(s) => return Err(CheckError::Flows(s.message().to_owned())),
        }
    }
    Ok((weir_whatif::check(&before, &after, &flows), warnings))
}
