//! The Kubernetes client weir's binaries share (agent, operator, relay,
//! lab): configuration from a kubeconfig file or, without one, the pod's
//! service account (in-cluster), and the API resource of each kind weir
//! reads, for untyped watches.
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
pub use kube;
use kube::api::ApiResource;

use weir_model::Kind;
use weir_model::WeirIdentity;
use weir_model::policy::cnp::ClusterNetworkPolicy;
use weir_model::policy::crd::{WeirClusterNetworkPolicy, WeirNetworkPolicy};

/// weir's CustomResourceDefinitions (`install/crds/`), by name.
pub const CRDS: [&str; 3] = [
    "weirnetworkpolicies.weir.dev",
    "weirclusternetworkpolicies.weir.dev",
    "weiridentities.weir.dev",
];

/// kubectl's arguments that wait until weir's CRDs are established.
pub fn wait_for_crds_args() -> Vec<String> {
    let mut args: Vec<String> = ["wait", "--for=condition=Established", "--timeout=60s"]
        .map(String::from)
        .into();
    args.extend(CRDS.iter().map(|c| format!("crd/{c}")));
    args
}

/// A client from `kubeconfig`, or the in-cluster service account (token
/// and CA mounted into the pod, the API server from the environment).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("no kubeconfig given and not in a cluster")?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

/// The API resource of a kind (group, version, plural).
pub fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::WeirIdentity => ApiResource::erase::<WeirIdentity>(&()),
        Kind::WeirNetworkPolicy => ApiResource::erase::<WeirNetworkPolicy>(&()),
        Kind::WeirClusterNetworkPolicy => ApiResource::erase::<WeirClusterNetworkPolicy>(&()),
        Kind::ClusterNetworkPolicy => ApiResource::erase::<ClusterNetworkPolicy>(&()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_group_and_plural() {
        let r = resource(Kind::WeirIdentity);
        assert_eq!(
            (r.api_version.as_str(), r.plural.as_str()),
            ("weir.dev/v1alpha1", "weiridentities")
        );
        let r = resource(Kind::EndpointSlice);
        assert_eq!(
            (r.api_version.as_str(), r.plural.as_str()),
            ("discovery.k8s.io/v1", "endpointslices")
        );
        assert_eq!(resource(Kind::Pod).api_version, "v1");
    }
}
