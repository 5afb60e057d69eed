//! Who an address is, for naming flows: every pod of the cluster (with its
//! namespace, labels, workload and identity), every node (this one as the
//! host, the others as remote nodes), anything else as the world; and which
//! service a VIP, external IP or NodePort is. Built from the cluster model
//! (pure), and kept across updates for pods deleted a moment ago, so the
//! late flows of a pod that just went are still named.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use weir_model::ClusterState;
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

/// The names of one snapshot of the cluster, plus the pods deleted within
/// the grace period.
#[derive(Debug)]
pub struct FlowNames {
    by_ip: HashMap<Ipv4Addr, Arc<Endpoint>>,
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
            services: HashMap::new(),
            deleted: HashMap::new(),
            grace,
            world: Arc::new(reserved(ID_WORLD, "world")),
        }
    }

    /// Takes a new snapshot of the cluster; pods that were named before and
    /// are gone now are kept for the grace period from `now`.
    pub fn update(&mut self, state: &ClusterState, self_node: &str, now: Instant) {
        let mut by_ip = HashMap::new();
        let mut node_ips = Vec::new();
        for (key, node) in &state.nodes {
            let ep = Arc::new(if key.name == self_node {
                reserved(ID_HOST, "host")
            } else {
                reserved(ID_REMOTE_NODE, "remote-node")
            });
            let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
            for a in addrs.into_iter().flatten().filter(|a| a.type_ == "InternalIP") {
                if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
                    by_ip.insert(ip, ep.clone());
                    node_ips.push(ip);
                }
            }
        }
        for pod in state.pods.values() {
            if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
                continue;
            }
            let ep = Arc::new(pod_endpoint(state, pod));
            for ip in pod_ips(pod) {
                by_ip.entry(ip).or_insert_with(|| ep.clone());
            }
        }
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
        // What went since the last snapshot stays named for a while.
        for (ip, ep) in self.by_ip.drain() {
            if !by_ip.contains_key(&ip) && !ep.pod_name.is_empty() {
                self.deleted.insert(ip, (ep, now));
            }
        }
        let grace = self.grace;
        self.deleted
            .retain(|ip, (_, since)| !by_ip.contains_key(ip) && now.duration_since(*since) < grace);
        self.by_ip = by_ip;
        self.services = services;
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
