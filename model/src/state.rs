//! The snapshot of the cluster the agent's controllers read: the objects of
//! the kinds the agent acts on, keyed by namespace and name.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::changes::ChangeLog;
use crate::identity::{IdentityKey, WeirIdentity};
use crate::object::{Kind, Object, parse_each};
use crate::objects::{Objects, Persistent};
use crate::policy::PolicyId;
use crate::policy::cnp::ClusterNetworkPolicy;
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

/// Why a policy could not be read, and whether it was an audit-mode one
/// (which never denies, so it is not enforced in its place either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub reason: String,
    pub audit: bool,
}

/// The parts of the cluster the agent acts on.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Which state of its source this snapshot is (opaque, source-defined;
    /// standalone mode: the manifest directory's revision), so a writer
    /// can tell when the agent has applied what it wrote. `None` until the
    /// source has synced once.
    pub revision: Option<u64>,
    /// This snapshot's number in its source's [`ChangeLog`] (`log`),
    /// which says what changed between two of its snapshots.
    pub generation: u64,
    pub log: Option<Arc<ChangeLog>>,
    // Objects are shared (`Arc`) and the maps persistent: a source keeps
    // its objects and publishes snapshot after snapshot of them; a
    // snapshot costs a few pointers, not a copy of every map or object.
    pub namespaces: Objects<Namespace>,
    pub nodes: Objects<Node>,
    pub pods: Objects<Pod>,
    pub services: Objects<Service>,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub network_policies: Objects<NetworkPolicy>,
    pub identities: Objects<WeirIdentity>,
    pub weir_network_policies: Objects<WeirNetworkPolicy>,
    pub weir_cluster_network_policies: Objects<WeirClusterNetworkPolicy>,
    pub cluster_network_policies: Objects<ClusterNetworkPolicy>,
    /// Policies the source holds but could not read into their types (an
    /// API server whose schema let through what these types do not
    /// accept). They stay in the model as reasons, so the policy compiler
    /// denies in their place: a policy that cannot be read never widens
    /// access by vanishing.
    pub unreadable_policies: BTreeMap<PolicyId, Unreadable>,
    /// Label set → number, kept in step with `identities` by [`Self::insert`]
    /// (the lowest number, should two stand for one set).
    identity_ids: Persistent<IdentityKey, u32>,
}

impl ClusterState {
    /// Adds (or replaces) one object; kinds the agent does not act on
    /// (Deployments: their pods are what counts) are left out.
    pub fn insert(&mut self, obj: Object) {
        let key = ObjectKey::of(obj.meta());
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(key, Arc::new(o));
            }
            Object::Node(o) => {
                self.nodes.insert(key, Arc::new(o));
            }
            Object::Pod(o) => {
                self.pods.insert(key, Arc::new(o));
            }
            Object::Service(o) => {
                self.services.insert(key, Arc::new(o));
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, Arc::new(o));
            }
            Object::NetworkPolicy(o) => {
                self.network_policies.insert(key, Arc::new(o));
            }
            Object::WeirIdentity(o) => {
                if o.id().is_some() {
                    self.remove(Kind::WeirIdentity, &key);
                    let id = o.id().unwrap_or_default();
                    let lowest = self.identity_ids.get(&o.spec).map_or(id, |have| (*have).min(id));
                    self.identity_ids.insert(o.spec.clone(), lowest);
                    self.identities.insert(key, Arc::new(o));
                }
            }
            Object::WeirNetworkPolicy(o) => {
                self.weir_network_policies.insert(key, Arc::new(o));
            }
            Object::WeirClusterNetworkPolicy(o) => {
                self.weir_cluster_network_policies.insert(key, Arc::new(o));
            }
            Object::ClusterNetworkPolicy(o) => {
                self.cluster_network_policies.insert(key, Arc::new(o));
            }
            Object::Deployment(_) => {}
        }
    }

    /// Whether the model holds the object `key` of `kind`.
    pub fn contains(&self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Namespace => self.namespaces.contains_key(key),
            Kind::Node => self.nodes.contains_key(key),
            Kind::Pod => self.pods.contains_key(key),
            Kind::Service => self.services.contains_key(key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(key),
            Kind::NetworkPolicy => self.network_policies.contains_key(key),
            Kind::WeirNetworkPolicy => self.weir_network_policies.contains_key(key),
            Kind::WeirClusterNetworkPolicy => self.weir_cluster_network_policies.contains_key(key),
            Kind::ClusterNetworkPolicy => self.cluster_network_policies.contains_key(key),
            Kind::WeirIdentity => self.identities.contains_key(key),
            Kind::Deployment => false,
        }
    }

    /// Removes one object; true if it was there.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) -> bool {
        match kind {
            Kind::Namespace => self.namespaces.remove(key).is_some(),
            Kind::Node => self.nodes.remove(key).is_some(),
            Kind::Pod => self.pods.remove(key).is_some(),
            Kind::Service => self.services.remove(key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            Kind::NetworkPolicy => self.network_policies.remove(key).is_some(),
            Kind::WeirNetworkPolicy => self.weir_network_policies.remove(key).is_some(),
            Kind::WeirClusterNetworkPolicy => self.weir_cluster_network_policies.remove(key).is_some(),
            Kind::ClusterNetworkPolicy => self.cluster_network_policies.remove(key).is_some(),
            Kind::Deployment => false,
            Kind::WeirIdentity => {
                let Some(gone) = self.identities.remove(key) else {
                    return false;
                };
                // The set's number is the lowest of those left for it.
                let lowest = self
                    .identities
                    .values()
                    .filter(|o| o.spec == gone.spec)
                    .filter_map(|o| o.id())
                    .min();
                match lowest {
                    Some(id) => {
                        self.identity_ids.insert(gone.spec.clone(), id);
                    }
                    None => {
                        self.identity_ids.remove(&gone.spec);
                    }
                }
                true
            }
        }
    }

    /// Removes every object of a kind (a source's relist replaces them).
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::NetworkPolicy => self.network_policies.clear(),
            Kind::WeirNetworkPolicy => self.weir_network_policies.clear(),
            Kind::WeirClusterNetworkPolicy => self.weir_cluster_network_policies.clear(),
            Kind::ClusterNetworkPolicy => self.cluster_network_policies.clear(),
            Kind::Deployment => {}
            Kind::WeirIdentity => {
                self.identities.clear();
                self.identity_ids.clear();
            }
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
    fn removing_an_identity_leaves_the_lowest_number_left_for_its_set() {
        let mut s = ClusterState::default();
        let key = IdentityKey::of("d", &[("app".to_string(), "web".to_string())].into());
        for id in [300, 301] {
            s.insert(Object::WeirIdentity(WeirIdentity::numbered(id, key.clone())));
        }
        assert_eq!(s.identity_of(&key), Some(300));
        assert!(s.remove(Kind::WeirIdentity, &ObjectKey::new("", "300")));
        assert_eq!(s.identity_of(&key), Some(301));
        assert!(s.remove(Kind::WeirIdentity, &ObjectKey::new("", "301")));
        assert_eq!(s.identity_of(&key), None);
        assert!(
            !s.remove(Kind::WeirIdentity, &ObjectKey::new("", "301")),
            "already gone"
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
