//! The ipcache controller: every pod of the cluster (this node's and the
//! others') and every node, by address, with its identity, kept in the
//! datapath's `weir_ipcache` so the next stages (policy, flows) can judge
//! and name traffic from anywhere.
//!
//! Desired state from the cluster model ([`desired`], pure), then one sync
//! of the map; a failed sync is retried with backoff. Nothing is written
//! before the source has synced once: an empty first snapshot would
//! otherwise wipe what a previous agent left.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::watch;
use weir_datapath::ipcache::{ID_HOST, ID_REMOTE_NODE, IpCache};

use crate::cluster::ClusterState;

/// Address → identity for the cluster as the model has it: pods with an
/// IPv4 address (host-network pods have their node's, which is the node's
/// entry), nodes by InternalIP (this node as the host).
pub fn desired(state: &ClusterState, self_node: &str) -> BTreeMap<Ipv4Addr, u32> {
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
    // One address, several pods (a finished pod keeps its podIP in its
    // status while IPAM hands the address to a new one; a deleted pod
    // lingers in its grace period): the live one owns it, so a dead pod
    // never lends its identity to the traffic of the pod after it.
    let mut owner: BTreeMap<Ipv4Addr, (OwnerRank, u32)> = BTreeMap::new();
    for pod in state.pods.values() {
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            continue;
        }
        let Some(status) = pod.status.as_ref() else { continue };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ips = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.pod_ip.as_deref());
        let rank = OwnerRank {
            live: pod.metadata.deletion_timestamp.is_none(),
            created: pod.metadata.creation_timestamp.clone(),
        };
        let identity = state.pod_identity(pod);
        for ip in ips.filter_map(|s| s.parse::<Ipv4Addr>().ok()) {
            match owner.get(&ip) {
                Some((best, _)) if *best >= rank => {}
                _ => {
                    owner.insert(ip, (rank.clone(), identity));
                }
            }
        }
    }
    for (ip, (_, identity)) in owner {
        // A node's address is the node's (host-network pods have it).
        out.entry(ip).or_insert(identity);
    }
    out
}

/// Which of several pods with one address owns it: one not being deleted
/// before one that is, then the newest (its address was handed out last).
/// Ties keep the first in the model's order (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OwnerRank {
    live: bool,
    created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Keeps the ipcache in step with the model until the model's sender goes.
pub async fn run(
    map: Arc<std::sync::Mutex<IpCache>>,
    node: String,
    mut rx: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<crate::sync::SyncStatus>,
) {
    let mut backoff = crate::backoff::Backoff::controller();
    loop {
        let state = rx.borrow_and_update().clone();
        let retry = if state.revision.is_some() {
            let (map, node, sync) = (map.clone(), node.clone(), sync.clone());
            let done = tokio::task::spawn_blocking(move || {
                let want = desired(&state, &node);
                let r = map.lock().unwrap_or_else(|p| p.into_inner()).sync(&want);
                if r.is_ok() {
                    sync.ipcache_applied(state.revision);
                }
                r
            })
            .await;
            match done {
                Ok(Ok(stats)) => {
                    if stats != Default::default() {
                        tracing::debug!(written = stats.written, removed = stats.removed, "ipcache synced");
                    }
                    backoff.succeeded();
                    None
                }
                Ok(Err(e)) => {
                    let wait = backoff.failed();
                    tracing::warn!(error = %crate::dataplane::report(&e), retry_in = ?wait, "ipcache sync failed");
                    Some(wait)
                }
                Err(e) => {
                    tracing::error!(error = %e, "ipcache sync panicked");
                    Some(backoff.failed())
                }
            }
        } else {
            None
        };
        match retry {
            Some(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
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
