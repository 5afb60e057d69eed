//! The snapshot of the cluster the agent's controllers read: the objects of
//! the kinds the agent acts on, keyed by namespace and name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::identity::{IdentityKey, WeirIdentity};
use crate::object::{Object, parse_each};
use crate::policy::crd::{WeirClusterNetworkPolicy, WeirNetworkPolicy};

/// namespace ("" for cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

/// The parts of the cluster the agent acts on.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Which state of its source this snapshot is (opaque, source-defined;
    /// standalone mode: the manifest directory's revision), so a writer
    /// can tell when the agent has applied what it wrote. `None` until the
    /// source has synced once.
    pub revision: Option<u64>,
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
    pub nodes: BTreeMap<ObjectKey, Node>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    pub identities: BTreeMap<ObjectKey, WeirIdentity>,
    pub weir_network_policies: BTreeMap<ObjectKey, WeirNetworkPolicy>,
    pub weir_cluster_network_policies: BTreeMap<ObjectKey, WeirClusterNetworkPolicy>,
    /// Label set → number, kept in step with `identities` by [`Self::insert`]
    /// (the lowest number, should two stand for one set).
    identity_ids: BTreeMap<IdentityKey, u32>,
}

impl ClusterState {
    /// Adds (or replaces) one object; kinds the agent does not act on
    /// (Deployments: their pods are what counts) are left out.
    pub fn insert(&mut self, obj: Object) {
        let key = ObjectKey::of(obj.meta());
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(key, o);
            }
            Object::Node(o) => {
                self.nodes.insert(key, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key, o);
            }
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::NetworkPolicy(o) => {
                self.network_policies.insert(key, o);
            }
            Object::WeirIdentity(o) => {
                if let Some(id) = o.id() {
                    let slot = self.identity_ids.entry(o.spec.clone()).or_insert(id);
                    *slot = (*slot).min(id);
                    self.identities.insert(key, o);
                }
            }
            Object::WeirNetworkPolicy(o) => {
                self.weir_network_policies.insert(key, o);
            }
            Object::WeirClusterNetworkPolicy(o) => {
                self.weir_cluster_network_policies.insert(key, o);
            }
            Object::Deployment(_) => {}
        }
    }

    /// The identity of a label set, if the allocator has made one.
    pub fn identity_of(&self, key: &IdentityKey) -> Option<u32> {
        self.identity_ids.get(key).copied()
    }

    /// Every allocated identity by number.
    pub fn identity_table(&self) -> BTreeMap<u32, IdentityKey> {
        self.identities
            .values()
            .filter_map(|o| Some((o.id()?, o.spec.clone())))
            .collect()
    }

    /// The identity of a pod of the model: [`crate::identity::INIT`] until
    /// its label set has one.
    pub fn pod_identity(&self, pod: &Pod) -> u32 {
        self.identity_of(&IdentityKey::of_pod(pod))
            .unwrap_or(crate::identity::INIT)
    }

    /// Labels of a pod, if the model knows it.
    pub fn pod_labels(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.pods
            .get(&ObjectKey::new(namespace, name))
            .map(|p| p.metadata.labels.clone().unwrap_or_default())
    }
}

/// Parses a multi-document YAML text into the model; returns one error per
/// bad document and keeps every good one. Unknown kinds are ignored.
/// The addresses a Service is reached at from outside the cluster besides
/// node ports: `spec.externalIPs` and the LoadBalancer ingress IPs
/// (IPv4; anything else is skipped).
pub fn service_external_ips(svc: &Service) -> Vec<std::net::Ipv4Addr> {
    let spec_ips = svc.spec.iter().flat_map(|s| s.external_ips.iter().flatten());
    let lb_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref());
    spec_ips.chain(lb_ips).filter_map(|ip| ip.parse().ok()).collect()
}

pub fn parse_manifests(state: &mut ClusterState, text: &str) -> Vec<String> {
    let (objects, errors) = parse_each(text);
    for o in objects {
        state.insert(o);
    }
    errors.into_iter().map(|e| e.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_manifests_and_keeps_good_documents() {
        let mut s = ClusterState::default();
        let errors = parse_manifests(
            &mut s,
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
spec:
  containers:
    - name: web
      image: nginx
      ports: [{name: http, containerPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec: {containers: "not a list"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: ignored}
"#,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("document 3") && errors[0].contains("invalid Pod"),
            "{errors:?}"
        );
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(
            s.pod_labels("demo", "web-0").unwrap().get("app").map(String::as_str),
            Some("web")
        );
        assert!(
            s.services.contains_key(&ObjectKey::new("default", "web")),
            "namespace defaults to default"
        );
    }

    #[test]
    fn identities_are_read_from_manifests_and_resolve_pods() {
        let mut s = ClusterState::default();
        let errors = parse_manifests(
            &mut s,
            r#"
apiVersion: weir.dev/v1alpha1
kind: WeirIdentity
metadata: {name: "300"}
spec: {namespace: demo, labels: {app: web}}
---
apiVersion: weir.dev/v1alpha1
kind: WeirIdentity
metadata: {name: "3"}
spec: {namespace: demo, labels: {app: reserved-number}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {app: web, pod-template-hash: abc}}
spec: {containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: demo, labels: {app: db}}
spec: {containers: []}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            s.identity_table().len(),
            1,
            "a reserved number is no allocated identity"
        );
        let web = &s.pods[&ObjectKey::new("demo", "web-1")];
        assert_eq!(s.pod_identity(web), 300);
        let db = &s.pods[&ObjectKey::new("demo", "db-1")];
        assert_eq!(s.pod_identity(db), crate::identity::INIT, "not allocated yet");
    }
}
