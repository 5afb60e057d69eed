//! The ipcache controller: every pod of the cluster (this node's and the
//! others') and every node, by address, with its identity, kept in the
//! datapath's `weir_ipcache` so the next stages (policy, flows) can judge
//! and name traffic from anywhere.
//!
//! The desired table ([`Table`], pure) is kept per pod: a change of some
//! pods rewrites their addresses only; a full pass ([`desired`]) rebuilds
//! it and syncs the whole map. A failed write is retried, fully, with
//! backoff (the runner, [`crate::reconcile`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use weir_datapath::ipcache::{ID_HOST, ID_REMOTE_NODE, IpCache};
use weir_model::{Changes, IdentityKey, Kind, ObjectKey, PodsByLabels};

use crate::cluster::ClusterState;
use crate::reconcile::{Action, Pass, Reconciler, blocking};

/// Address → identity for the cluster as the model has it: pods with an
/// IPv4 address (host-network pods have their node's, which is the node's
/// entry), nodes by InternalIP (this node as the host).
pub fn desired(state: &ClusterState, self_node: &str) -> BTreeMap<Ipv4Addr, u32> {
    Table::full(state, self_node).desired()
}

/// Which of several pods with one address owns it: one not being deleted
/// before one that is, then the newest (its address was handed out last).
/// Ties keep the first in the model's order (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OwnerRank {
    live: bool,
    created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// What one pod claims: its addresses, its rank among pods claiming the
/// same, its label set (for identity changes) and its identity.
#[derive(Debug, Clone)]
struct Claim {
    ips: Vec<Ipv4Addr>,
    rank: OwnerRank,
    labels: IdentityKey,
    identity: u32,
}

fn claim(state: &ClusterState, pod: &Pod) -> Option<Claim> {
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<Ipv4Addr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    let labels = IdentityKey::of_pod(pod);
    Some(Claim {
        ips,
        rank: OwnerRank {
            live: pod.metadata.deletion_timestamp.is_none(),
            created: pod.metadata.creation_timestamp.clone(),
        },
        identity: state.identity_of(&labels).unwrap_or(weir_model::identity::INIT),
        labels,
    })
}

/// The desired table, kept per pod and per node so that a change costs
/// the objects it touches.
#[derive(Debug, Default)]
pub struct Table {
    self_node: String,
    nodes: BTreeMap<Ipv4Addr, u32>,
    pods: BTreeMap<ObjectKey, Claim>,
    /// Address → the pods claiming it.
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<ObjectKey>>,
    /// Pods by label set, for identities that come and go.
    by_labels: PodsByLabels,
}

impl Table {
    /// The table for `state`, from nothing.
    pub fn full(state: &ClusterState, self_node: &str) -> Self {
        let mut t = Table {
            self_node: self_node.to_owned(),
            by_labels: PodsByLabels::new(state),
            ..Default::default()
        };
        t.nodes = node_entries(state, self_node);
        for (key, pod) in &state.pods {
            t.set_pod(key, claim(state, pod));
        }
        t
    }

    fn set_pod(&mut self, key: &ObjectKey, claim: Option<Claim>) -> Vec<Ipv4Addr> {
        let mut touched = Vec::new();
        if let Some(old) = self.pods.remove(key) {
            for ip in &old.ips {
                if let Some(set) = self.by_ip.get_mut(ip) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_ip.remove(ip);
                    }
                }
            }
            self.by_labels.remove(&old.labels, key);
            touched.extend(old.ips);
        }
        if let Some(c) = claim {
            for ip in &c.ips {
                self.by_ip.entry(*ip).or_default().insert(key.clone());
            }
            self.by_labels.insert(&c.labels, key);
            touched.extend(c.ips.iter().copied());
            self.pods.insert(key.clone(), c);
        }
        touched
    }

    /// Takes the table to `state`, `changes` being what differs from the
    /// state it was made for; returns the addresses whose entry may have
    /// changed.
    pub fn update(&mut self, state: &ClusterState, changes: &Changes) -> BTreeSet<Ipv4Addr> {
        let mut touched = BTreeSet::new();
        if changes.touches(Kind::Node) {
            let nodes = node_entries(state, &self.self_node);
            touched.extend(self.nodes.keys().chain(nodes.keys()).copied());
            self.nodes = nodes;
        }
        let mut pods: BTreeSet<ObjectKey> = changes.of(Kind::Pod).cloned().collect();
        pods.extend(self.by_labels.renumbered(state, changes));
        for key in &pods {
            let c = state.pods.get(key).and_then(|p| claim(state, p));
            touched.extend(self.set_pod(key, c));
        }
        touched
    }

    /// The identity of `ip`: a node's address is the node's (host-network
    /// pods have it), else the owning pod's.
    pub fn get(&self, ip: &Ipv4Addr) -> Option<u32> {
        if let Some(id) = self.nodes.get(ip) {
            return Some(*id);
        }
        let mut best: Option<&Claim> = None;
        for key in self.by_ip.get(ip)? {
            let c = &self.pods[key];
            if best.is_none_or(|b| c.rank > b.rank) {
                best = Some(c);
            }
        }
        best.map(|c| c.identity)
    }

    /// The whole table.
    pub fn desired(&self) -> BTreeMap<Ipv4Addr, u32> {
        let ips: BTreeSet<&Ipv4Addr> = self.nodes.keys().chain(self.by_ip.keys()).collect();
        ips.into_iter().filter_map(|ip| Some((*ip, self.get(ip)?))).collect()
    }
}

fn node_entries(state: &ClusterState, self_node: &str) -> BTreeMap<Ipv4Addr, u32> {
    let mut out = BTreeMap::new();
    for (key, node) in &state.nodes {
        let identity = if key.name == self_node { ID_HOST } else { ID_REMOTE_NODE };
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addrs.into_iter().flatten().filter(|a| a.type_ == "InternalIP") {
            if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
                out.insert(ip, identity);
            }
        }
    }
    out
}

/// The controller: the map, the table it was last brought to.
pub struct Controller {
    map: Arc<std::sync::Mutex<IpCache>>,
    node: String,
    sync: Arc<crate::sync::SyncStatus>,
    table: Option<Table>,
}

impl Controller {
    pub fn new(map: Arc<std::sync::Mutex<IpCache>>, node: String, sync: Arc<crate::sync::SyncStatus>) -> Self {
        Self {
            map,
            node,
            sync,
            table: None,
        }
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "ipcache"
    }

    async fn reconcile(&mut self, pass: Pass) -> Action {
        let (map, node, sync, table) = (
            self.map.clone(),
            self.node.clone(),
            self.sync.clone(),
            self.table.take(),
        );
        let (table, done) = blocking(move || {
            let Pass { state, changes } = pass;
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            let (table, done) = match (table, changes) {
                (Some(mut t), Some(c)) => {
                    let touched = t.update(&state, &c);
                    let entries: BTreeMap<Ipv4Addr, Option<u32>> =
                        touched.into_iter().map(|ip| (ip, t.get(&ip))).collect();
                    let done = map.update(&entries);
                    (t, done)
                }
                _ => {
                    let t = Table::full(&state, &node);
                    let done = map.sync(&t.desired());
                    (t, done)
                }
            };
            if done.is_ok() {
                sync.ipcache_applied(state.revision);
            }
            (table, done)
        })
        .await;
        match done {
            Ok(stats) => {
                if stats != Default::default() {
                    tracing::debug!(written = stats.written, removed = stats.removed, "ipcache synced");
                }
                self.table = Some(table);
                Action::Done
            }
            Err(e) => Action::Retry(format!("ipcache sync failed: {}", weir_error::report(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_and_node_of_the_cluster_by_address() {
        let mut s = ClusterState::default();
        let errors = crate::cluster::parse_manifests(
            &mut s,
            r#"
kind: Node
apiVersion: v1
metadata: {name: a}
status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}
---
kind: Node
apiVersion: v1
metadata: {name: b}
status: {addresses: [{type: InternalIP, address: 172.30.0.12}, {type: Hostname, address: b}]}
---
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "4000"}
spec: {namespace: demo, labels: {app: web}}
---
kind: Pod
apiVersion: v1
metadata: {name: web-on-b, namespace: demo, labels: {app: web}}
spec: {nodeName: b, containers: []}
status: {podIP: 10.244.2.7}
---
kind: Pod
apiVersion: v1
metadata: {name: db, namespace: demo, labels: {app: db}}
spec: {nodeName: a, containers: []}
status: {podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
---
kind: Pod
apiVersion: v1
metadata: {name: agent, namespace: kube-system}
spec: {hostNetwork: true, containers: []}
status: {podIP: 172.30.0.12}
---
kind: Pod
apiVersion: v1
metadata: {name: pending, namespace: demo, labels: {app: web}}
spec: {containers: []}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let want = desired(&s, "a");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            want,
            BTreeMap::from([
                (ip("172.30.0.11"), ID_HOST),
                (ip("172.30.0.12"), ID_REMOTE_NODE),
                (ip("10.244.2.7"), 4000),
                (ip("10.244.1.3"), weir_model::identity::INIT),
            ]),
            "the remote pod by its identity, the unallocated one as init, no host-network pod, no pod without an address"
        );
    }

    #[test]
    fn an_address_belongs_to_the_live_pod_not_a_finished_or_deleted_one() {
        let mut s = ClusterState::default();
        let errors = crate::cluster::parse_manifests(
            &mut s,
            r#"
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "4001"}
spec: {namespace: demo, labels: {app: admin}}
---
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "4002"}
spec: {namespace: demo, labels: {app: web}}
---
kind: Pod
apiVersion: v1
metadata: {name: a-job, namespace: demo, labels: {app: admin}, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {nodeName: b, containers: []}
status: {phase: Succeeded, podIP: 10.244.2.7}
---
kind: Pod
apiVersion: v1
metadata: {name: b-going, namespace: demo, labels: {app: admin}, creationTimestamp: "2026-01-03T00:00:00Z", deletionTimestamp: "2026-01-04T00:00:00Z"}
spec: {nodeName: b, containers: []}
status: {phase: Running, podIP: 10.244.2.8}
---
kind: Pod
apiVersion: v1
metadata: {name: z-web, namespace: demo, labels: {app: web}, creationTimestamp: "2026-01-02T00:00:00Z"}
spec: {nodeName: b, containers: []}
status: {phase: Running, podIPs: [{ip: 10.244.2.7}, {ip: 10.244.2.8}]}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let want = desired(&s, "a");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            want.get(&ip("10.244.2.7")),
            Some(&4002),
            "a finished pod leaves its address"
        );
        assert_eq!(
            want.get(&ip("10.244.2.8")),
            Some(&4002),
            "a pod being deleted yields it"
        );
    }
}
