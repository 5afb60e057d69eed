//! Who an address is, for naming flows: every pod of the cluster (with its
//! namespace, labels, workload and identity), every node (this one as the
//! host, the others as remote nodes), anything else as the world; and which
//! service a VIP, external IP or NodePort is. Built from the cluster model
//! (pure), and kept across updates for pods deleted a moment ago, so the
//! late flows of a pod that just went are still named.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use weir_model::{Changes, ClusterState, IdentityKey, Kind, ObjectKey, PodsByLabels};
use weir_proto::flow::{Endpoint, Service, Workload};

/// Reserved identities, as the datapath numbers them.
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
pub const ID_REMOTE_NODE: u32 = 6;

/// Where a service frontend is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

/// What [`FlowNames`] holds, comparable (the agent's tests of
/// incremental updates hold names kept by changes equal to a full pass).
#[derive(Debug, PartialEq)]
pub struct Contents {
    live: Vec<(Ipv4Addr, Endpoint)>,
    deleted: Vec<Ipv4Addr>,
    services: Vec<((Ipv4Addr, u16, u8), Service)>,
}

/// The names of one snapshot of the cluster, plus the pods deleted within
/// the grace period.
#[derive(Debug)]
pub struct FlowNames {
    by_ip: HashMap<Ipv4Addr, Arc<Endpoint>>,
    /// Each pod's endpoint and addresses, and the pods claiming each
    /// address (the first in the model's order names it), so a change of
    /// some pods renames their addresses only.
    pods: HashMap<ObjectKey, (Arc<Endpoint>, Vec<Ipv4Addr>, IdentityKey)>,
    claims: HashMap<Ipv4Addr, BTreeSet<ObjectKey>>,
    /// Pods by label set: an identity made or gone renames the pods of
    /// its set only.
    by_labels: PodsByLabels,
    /// Node addresses (nodes name their addresses before any pod).
    nodes: HashMap<Ipv4Addr, Arc<Endpoint>>,
    services: HashMap<Frontend, Arc<Service>>,
    /// Address → (the pod that had it, when it went).
    deleted: HashMap<Ipv4Addr, (Arc<Endpoint>, Instant)>,
    grace: Duration,
    world: Arc<Endpoint>,
}

fn reserved(identity: u32, label: &str) -> Endpoint {
    Endpoint {
        identity,
        labels: vec![format!("reserved:{label}")],
        ..Default::default()
    }
}

/// A pod's workload: its controller, with a ReplicaSet named
/// `<deployment>-<pod-template-hash>` read as that Deployment (what users
/// think of as the workload).
pub fn workload_of(pod: &Pod) -> Option<Workload> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller.unwrap_or(true))?;
    if owner.kind == "ReplicaSet" {
        let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return Some(Workload {
                name: deployment.to_owned(),
                kind: "Deployment".into(),
            });
        }
    }
    Some(Workload {
        name: owner.name.clone(),
        kind: owner.kind.clone(),
    })
}

fn pod_endpoint(state: &ClusterState, pod: &Pod) -> Endpoint {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut labels: Vec<String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("k8s:{k}={v}"))
        .collect();
    labels.push(format!("k8s:io.kubernetes.pod.namespace={namespace}"));
    labels.sort();
    Endpoint {
        identity: state.pod_identity(pod),
        namespace,
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        labels,
        workloads: workload_of(pod).into_iter().collect(),
        ..Default::default()
    }
}

fn pod_ips(pod: &Pod) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.and_then(|s| s.pod_ip.as_deref()))
        .filter_map(|s| s.parse().ok())
}

fn proto_number(p: Option<&str>) -> u8 {
    match p.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

impl FlowNames {
    pub fn new(grace: Duration) -> Self {
        Self {
            by_ip: HashMap::new(),
            pods: HashMap::new(),
            claims: HashMap::new(),
            by_labels: PodsByLabels::default(),
            nodes: HashMap::new(),
            services: HashMap::new(),
            deleted: HashMap::new(),
            grace,
            world: Arc::new(reserved(ID_WORLD, "world")),
        }
    }

    /// Takes a new snapshot of the cluster; pods that were named before and
    /// are gone now are kept for the grace period from `now`.
    pub fn update(&mut self, state: &ClusterState, self_node: &str, now: Instant) {
        self.update_with(state, None, self_node, now);
    }

    /// [`Self::update`] knowing what changed since the snapshot the names
    /// were last taken from (`None`: anything may have). A change of pods
    /// renames their addresses only; nodes, Services and identities
    /// (rarer) rename what depends on them all.
    ///
    /// Returns whether anything stopped being named (a pod or Service
    /// went, or everything was renamed): only then can metrics series of
    /// what is gone be dropped.
    pub fn update_with(
        &mut self,
        state: &ClusterState,
        changes: Option<&Changes>,
        self_node: &str,
        now: Instant,
    ) -> bool {
        let full = changes.is_none_or(|c| c.touches(Kind::Node));
        let mut touched: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut gone = false;
        if full {
            touched.extend(self.by_ip.keys().copied());
            self.pods.clear();
            self.claims.clear();
            self.by_labels = PodsByLabels::new(state);
            for (key, node) in &state.nodes {
                let ep = Arc::new(if key.name == self_node {
                    reserved(ID_HOST, "host")
                } else {
                    reserved(ID_REMOTE_NODE, "remote-node")
                });
                let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
                for a in addrs.into_iter().flatten().filter(|a| a.type_ == "InternalIP") {
                    if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
                        self.nodes.insert(ip, ep.clone());
                        touched.insert(ip);
                    }
                }
            }
            for key in state.pods.keys() {
                touched.extend(self.set_pod(state, key));
            }
        } else if let Some(c) = changes {
            let mut pods: BTreeSet<ObjectKey> = c.of(Kind::Pod).cloned().collect();
            pods.extend(self.by_labels.renumbered(state, c));
            for key in &pods {
                touched.extend(self.set_pod(state, key));
            }
        }
        for ip in touched {
            let named = self.nodes.get(&ip).cloned().or_else(|| {
                let key = self.claims.get(&ip)?.first()?;
                Some(self.pods.get(key)?.0.clone())
            });
            match named {
                Some(ep) => {
                    self.by_ip.insert(ip, ep);
                    self.deleted.remove(&ip);
                }
                None => {
                    // What went stays named for a while.
                    gone |= self.by_ip.contains_key(&ip);
                    if let Some(ep) = self.by_ip.remove(&ip)
                        && !ep.pod_name.is_empty()
                    {
                        self.deleted.insert(ip, (ep, now));
                    }
                }
            }
        }
        let grace = self.grace;
        let held = self.deleted.len();
        self.deleted.retain(|_, (_, since)| now.duration_since(*since) < grace);
        gone |= self.deleted.len() != held;
        if full || changes.is_some_and(|c| c.touches(Kind::Service)) {
            self.update_services(state);
            gone = true;
        }
        gone || full
    }

    /// Replaces one pod's claims; returns the addresses it had or has.
    fn set_pod(&mut self, state: &ClusterState, key: &ObjectKey) -> Vec<Ipv4Addr> {
        let mut touched = Vec::new();
        if let Some((_, ips, labels)) = self.pods.remove(key) {
            for ip in &ips {
                if let Some(set) = self.claims.get_mut(ip) {
                    set.remove(key);
                    if set.is_empty() {
                        self.claims.remove(ip);
                    }
                }
            }
            self.by_labels.remove(&labels, key);
            touched.extend(ips);
        }
        let Some(pod) = state.pods.get(key) else { return touched };
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            return touched;
        }
        let ips: Vec<Ipv4Addr> = pod_ips(pod).collect();
        if ips.is_empty() {
            return touched;
        }
        for ip in &ips {
            self.claims.entry(*ip).or_default().insert(key.clone());
        }
        touched.extend(ips.iter().copied());
        let labels = IdentityKey::of_pod(pod);
        self.by_labels.insert(&labels, key);
        self.pods
            .insert(key.clone(), (Arc::new(pod_endpoint(state, pod)), ips, labels));
        touched
    }

    /// Which Service each frontend is.
    fn update_services(&mut self, state: &ClusterState) {
        let node_ips: Vec<Ipv4Addr> = self.nodes.keys().copied().collect();
        let mut services = HashMap::new();
        // External addresses name the Service that holds them, never one
        // whose claim was refused (weir_model::frontends).
        let claims = weir_model::frontends::external_frontends(state);
        for (key, svc) in &state.services {
            let name = Arc::new(Service {
                name: svc.metadata.name.clone().unwrap_or_default(),
                namespace: svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            });
            let Some(spec) = svc.spec.as_ref() else { continue };
            let cluster_ips: Vec<Ipv4Addr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.as_ref())
                .filter_map(|s| s.parse().ok())
                .collect();
            let external_ips = weir_model::service_external_ips(svc);
            for port in spec.ports.iter().flatten() {
                let proto = proto_number(port.protocol.as_deref());
                let Ok(p) = u16::try_from(port.port) else { continue };
                let wire = port.protocol.clone().unwrap_or_else(|| "TCP".into());
                let held = external_ips
                    .iter()
                    .filter(|ip| claims.holds(key, &(**ip, p, wire.clone())));
                for ip in cluster_ips.iter().chain(held) {
                    services.insert(
                        Frontend {
                            ip: *ip,
                            port: p,
                            proto,
                        },
                        name.clone(),
                    );
                }
                if let Some(np) = port.node_port.and_then(|n| u16::try_from(n).ok()) {
                    for ip in &node_ips {
                        services.insert(
                            Frontend {
                                ip: *ip,
                                port: np,
                                proto,
                            },
                            name.clone(),
                        );
                    }
                }
            }
        }
        self.services = services;
    }

    /// Everything named, comparable: live addresses, deleted ones kept,
    /// frontends.
    pub fn contents(&self) -> Contents {
        let mut live: Vec<_> = self.by_ip.iter().map(|(ip, e)| (*ip, (**e).clone())).collect();
        live.sort_by_key(|(ip, _)| *ip);
        let mut deleted: Vec<_> = self.deleted.keys().copied().collect();
        deleted.sort();
        let mut services: Vec<_> = self
            .services
            .iter()
            .map(|(f, s)| ((f.ip, f.port, f.proto), (**s).clone()))
            .collect();
        services.sort_by_key(|(f, _)| *f);
        Contents {
            live,
            deleted,
            services,
        }
    }

    /// The endpoint an address is (the world when nobody in the cluster
    /// has it, nor had it within the grace period).
    pub fn endpoint(&self, ip: Ipv4Addr, now: Instant) -> &Arc<Endpoint> {
        if let Some(ep) = self.by_ip.get(&ip) {
            return ep;
        }
        match self.deleted.get(&ip) {
            Some((ep, since)) if now.duration_since(*since) < self.grace => ep,
            _ => &self.world,
        }
    }

    pub fn service(&self, frontend: Frontend) -> Option<&Arc<Service>> {
        self.services.get(&frontend)
    }

    /// Every pod named now (live, or deleted within the grace period), as
    /// namespace and name.
    pub fn pods(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.by_ip
            .values()
            .chain(self.deleted.values().map(|(e, _)| e))
            .filter(|e| !e.pod_name.is_empty())
            .map(|e| (e.namespace.clone(), e.pod_name.clone()))
    }

    /// Every endpoint named now (live, or deleted within the grace period).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.by_ip
            .values()
            .chain(self.deleted.values().map(|(e, _)| e))
            .map(|e| &**e)
    }

    /// Every Service named now.
    pub fn services(&self) -> impl Iterator<Item = &Service> + '_ {
        self.services.values().map(|s| &**s)
    }

    /// Every namespace a pod is in (for GetNamespaces), sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_ip
            .values()
            .filter(|e| !e.namespace.is_empty())
            .map(|e| e.namespace.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.31.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 172.31.0.2}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web, pod-template-hash: 5d8f}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8f, uid: u1, controller: true}]
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  type: NodePort
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
"#;

    fn state(text: &str) -> ClusterState {
        let mut s = ClusterState::default();
        let errors = weir_model::parse_manifests(&mut s, text);
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    #[test]
    fn names_pods_nodes_world_and_services() {
        let mut n = FlowNames::new(Duration::from_secs(120));
        let now = Instant::now();
        n.update(&state(MANIFESTS), "node-a", now);
        let web = n.endpoint("10.244.1.5".parse().unwrap(), now);
        assert_eq!((web.namespace.as_str(), web.pod_name.as_str()), ("shop", "web-1"));
        assert!(web.labels.contains(&"k8s:app=web".to_string()));
        assert_eq!(
            web.workloads,
            [Workload {
                name: "web".into(),
                kind: "Deployment".into()
            }]
        );
        assert_eq!(n.endpoint("172.31.0.1".parse().unwrap(), now).identity, ID_HOST);
        assert_eq!(n.endpoint("172.31.0.2".parse().unwrap(), now).identity, ID_REMOTE_NODE);
        assert_eq!(n.endpoint("8.8.8.8".parse().unwrap(), now).labels, ["reserved:world"]);
        let vip = Frontend {
            ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: 6,
        };
        assert_eq!(n.service(vip).unwrap().name, "web");
        let np = Frontend {
            ip: "172.31.0.2".parse().unwrap(),
            port: 30080,
            proto: 6,
        };
        assert_eq!(n.service(np).unwrap().namespace, "shop", "NodePort on every node");
    }

    #[test]
    fn a_deleted_pod_is_named_for_the_grace_period() {
        let mut n = FlowNames::new(Duration::from_secs(120));
        let t0 = Instant::now();
        n.update(&state(MANIFESTS), "node-a", t0);
        let without_pod: String = MANIFESTS
            .split("---")
            .filter(|d| !d.contains("kind: Pod"))
            .collect::<Vec<_>>()
            .join("---");
        n.update(&state(&without_pod), "node-a", t0);
        let ip = "10.244.1.5".parse().unwrap();
        assert_eq!(n.endpoint(ip, t0 + Duration::from_secs(119)).pod_name, "web-1");
        assert_eq!(n.endpoint(ip, t0 + Duration::from_secs(121)).labels, ["reserved:world"]);
        n.update(&state(&without_pod), "node-a", t0 + Duration::from_secs(121));
        assert!(n.deleted.is_empty(), "expired entries go");
    }
}
