//! Reaching pods on other nodes: which node owns which pod CIDR, from the
//! Node objects, applied as kernel routes (native) or datapath routes (vxlan).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::cluster::ClusterState;
use crate::config::Routing;
use crate::netdev::Netdev;
use crate::reconcile::{Action, Pass, Reconciler, blocking};
use weir_model::Kind;

/// What the Node objects ask for: routes to every other node's pod CIDRs
/// (with its InternalIP), sorted, and the CIDRs refused with why.
#[derive(Debug, Default, PartialEq)]
pub struct Routes {
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub refused: Vec<Refused>,
}

/// A pod CIDR of a Node object that is not installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub node: String,
    pub cidr: String,
    pub reason: String,
}

/// What a pod CIDR must respect to become a route on this node.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// This node's own pod CIDR: never routed away.
    pub own: Ipv4Net,
    /// The cluster's pod CIDR, when configured: every route lies in it.
    pub cluster: Option<Ipv4Net>,
}

/// Every other node's pod CIDRs, as routes via its InternalIP. A Node
/// object is written by kubelets and anyone the API server lets, so a pod
/// CIDR is a claim, checked before it becomes a kernel route: it must be
/// IPv4, lie in the cluster CIDR (when one is configured), hold no node's
/// address, not overlap this node's own pod CIDR, and not overlap a CIDR
/// an older node holds (oldest by creation, then name, keeps it). A
/// `podCIDR: 0.0.0.0/0` would otherwise replace the default route. Nodes
/// without an address or CIDR are skipped: they cannot be reached yet.
pub fn remote_routes(state: &ClusterState, self_node: &str, bounds: Bounds) -> Routes {
    let address = |node: &k8s_openapi::api::core::v1::Node| {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok())
    };
    let node_ips: Vec<Ipv4Addr> = state.nodes.values().filter_map(|n| address(n)).collect();
    // Oldest first: the first claim of an address range keeps it.
    let mut nodes: Vec<_> = state.nodes.iter().collect();
    nodes.sort_by_key(|(key, n)| (n.metadata.creation_timestamp.clone(), key.name.clone()));
    let mut out = Routes::default();
    let mut claimed: Vec<(Ipv4Net, String)> = vec![(bounds.own, self_node.to_owned())];
    for (key, node) in nodes {
        if key.name == self_node {
            continue;
        }
        let Some(ip) = address(node) else { continue };
        let spec = node.spec.as_ref();
        let cidrs: BTreeSet<String> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidr.clone()))
            .collect();
        for text in cidrs {
            let cidr = match text.parse::<Ipv4Net>() {
                Ok(c) => c.trunc(),
                // An IPv6 CIDR of a dual-stack node: not weir's to route.
                Err(_) if text.contains(':') => continue,
                Err(e) => {
                    out.refused.push(Refused {
                        node: key.name.clone(),
                        cidr: text,
                        reason: format!("not a CIDR: {e}"),
                    });
                    continue;
                }
            };
            let overlap = |other: &Ipv4Net| other.contains(&cidr.network()) || cidr.contains(&other.network());
            let reason = if let Some(cluster) = bounds.cluster.filter(|c| !c.contains(&cidr)) {
                Some(format!("outside the cluster CIDR {cluster}"))
            } else if let Some(ip) = node_ips.iter().find(|ip| cidr.contains(*ip)) {
                Some(format!("holds node address {ip}"))
            } else {
                claimed
                    .iter()
                    .find(|(other, _)| overlap(other))
                    .map(|(other, owner)| format!("overlaps {other} of node {owner}"))
            };
            match reason {
                Some(reason) => out.refused.push(Refused {
                    node: key.name.clone(),
                    cidr: cidr.to_string(),
                    reason,
                }),
                None => {
                    claimed.push((cidr, key.name.clone()));
                    out.routes.push((cidr, ip));
                }
            }
        }
    }
    out.routes.sort();
    out.routes.dedup();
    out
}

/// How this node routes to the others.
#[derive(Clone)]
pub struct Setup {
    pub mode: Routing,
    /// This node's name.
    pub node: String,
    /// The device the routes go through (the uplink).
    pub route_dev: u32,
    pub bounds: Bounds,
}

/// The routing controller: Node objects to kernel routes and the
/// datapath's node maps.
struct Controller {
    setup: Setup,
    netdev: Netdev,
    maps: Arc<std::sync::Mutex<weir_datapath::RouteMaps>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The routes it installed; `None` until read from the kernel.
    installed: Option<BTreeSet<Ipv4Net>>,
    said: Vec<Refused>,
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "routing"
    }

    async fn reconcile(&mut self, pass: Pass) -> Action {
        // Routes follow Node objects only.
        if pass.changes.as_ref().is_some_and(|c| !c.touches(Kind::Node)) {
            return Action::Done;
        }
        let Setup {
            mode,
            ref node,
            route_dev,
            bounds,
        } = self.setup;
        // Routes a previous agent (or run) left for nodes that may be gone.
        let installed = match self.installed.take() {
            Some(i) => i,
            None => match self.netdev.weir_node_routes().await {
                Ok(r) => r.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %weir_error::Report(&e), "listing existing node routes");
                    BTreeSet::new()
                }
            },
        };
        let mut failed = false;
        let Routes {
            routes: wanted,
            refused,
        } = remote_routes(&pass.state, node, bounds);
        for r in refused.iter().filter(|r| !self.said.contains(r)) {
            tracing::warn!(node = %r.node, cidr = %r.cidr, reason = %r.reason,
                "pod CIDR of a Node object refused: no route to it");
        }
        self.metrics.refused_pod_cidrs(refused.len());
        self.said = refused;
        // Kernel routes in both modes: the node's own stack must reach remote
        // pods too (replies to them, probes); pods' own traffic in vxlan mode
        // goes into the tunnel from the datapath without consulting these.
        for (cidr, via) in &wanted {
            if let Err(e) = self
                .netdev
                .replace_node_route(*cidr, *via, route_dev, mode == Routing::Vxlan)
                .await
            {
                failed = true;
                tracing::warn!(error = %weir_error::Report(&e), "programming node route");
            }
        }
        let keep: BTreeSet<Ipv4Net> = wanted.iter().map(|(c, _)| *c).collect();
        for stale in installed.difference(&keep) {
            if let Err(e) = self.netdev.delete_node_route(*stale).await {
                failed = true;
                tracing::warn!(error = %weir_error::Report(&e), "removing node route");
            }
        }
        // A route that could not be removed stays ours to retry.
        self.installed = Some(if failed {
            installed.union(&keep).copied().collect()
        } else {
            keep
        });
        // The datapath's view, in both modes: node IPs (never masqueraded)
        // and which node owns which pod CIDR (vxlan mode tunnels to it;
        // both check that a pod's address comes from its node). Map
        // syscalls block: they run on a blocking thread.
        let maps = self.maps.clone();
        let routes = wanted.clone();
        let synced = blocking(move || {
            let mut datapath = maps.lock().unwrap_or_else(|p| p.into_inner());
            let mut nodes: Vec<Ipv4Addr> = routes.iter().map(|(_, ip)| *ip).collect();
            nodes.dedup();
            datapath.sync_node_ips(&nodes)?;
            datapath.sync_node_routes(&routes)
        })
        .await;
        if let Err(e) = synced {
            failed = true;
            tracing::warn!(error = %weir_error::Report(&e), "programming node routes into the datapath");
        }
        if failed {
            return Action::Retry("node routes left to program".into());
        }
        tracing::debug!(routes = wanted.len(), ?mode, "node routes in step");
        Action::Done
    }
}

/// Keeps routes in step with the Node objects until the process ends.
pub async fn run(
    setup: Setup,
    netdev: Netdev,
    maps: Arc<std::sync::Mutex<weir_datapath::RouteMaps>>,
    metrics: Arc<crate::metrics::Metrics>,
    cluster: watch::Receiver<Arc<ClusterState>>,
) {
    let controller = Controller {
        setup,
        netdev,
        maps,
        metrics,
        installed: None,
        said: Vec::new(),
    };
    crate::reconcile::run(controller, cluster, Default::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_every_other_node_with_an_address() {
        let mut s = ClusterState::default();
        crate::cluster::parse_manifests(
            &mut s,
            r#"
kind: Node
apiVersion: v1
metadata: {name: a}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 172.30.0.11}, {type: Hostname, address: a}]}
---
kind: Node
apiVersion: v1
metadata: {name: b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 172.30.0.12}]}
---
kind: Node
apiVersion: v1
metadata: {name: c}
spec: {podCIDR: 10.244.3.0/24}
"#,
        );
        let routes = remote_routes(&s, "a", bounds("10.244.1.0/24")).routes;
        assert_eq!(
            routes,
            vec![("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(172, 30, 0, 12))]
        );
        assert_eq!(
            remote_routes(&s, "b", bounds("10.244.2.0/24")).routes.len(),
            1,
            "b routes to a; c has no address yet"
        );
    }

    fn bounds(own: &str) -> Bounds {
        Bounds {
            own: own.parse().unwrap(),
            cluster: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    fn node(name: &str, created: &str, cidr: &str, ip: &str) -> String {
        format!(
            "kind: Node\napiVersion: v1\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec: {{podCIDR: \"{cidr}\"}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n"
        )
    }

    #[test]
    fn a_node_object_cannot_route_away_what_is_not_its_own() {
        let mut s = ClusterState::default();
        let nodes = [
            node("a", "2026-01-01T00:00:00Z", "10.244.1.0/24", "172.30.0.11"),
            node("b", "2026-01-02T00:00:00Z", "10.244.2.0/24", "172.30.0.12"),
            // The default route, the cluster's whole range and this node's
            // own pods: each would take traffic that is not the node's.
            node("evil", "2026-01-03T00:00:00Z", "0.0.0.0/0", "172.30.0.13"),
            node("wide", "2026-01-04T00:00:00Z", "10.244.0.0/16", "172.30.0.14"),
            node("mine", "2026-01-05T00:00:00Z", "10.244.1.128/25", "172.30.0.15"),
            // Newer than b and claiming b's range: b keeps it.
            node("copy", "2026-01-06T00:00:00Z", "10.244.2.0/24", "172.30.0.16"),
            node("junk", "2026-01-07T00:00:00Z", "10.244.300.0/24", "172.30.0.17"),
        ];
        crate::cluster::parse_manifests(&mut s, &nodes.concat());
        let r = remote_routes(&s, "a", bounds("10.244.1.0/24"));
        assert_eq!(
            r.routes,
            vec![("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(172, 30, 0, 12))],
            "only b's own range"
        );
        let why: Vec<(&str, &str)> = r.refused.iter().map(|r| (r.node.as_str(), r.reason.as_str())).collect();
        assert_eq!(
            why,
            vec![
                ("evil", "outside the cluster CIDR 10.244.0.0/16"),
                ("wide", "overlaps 10.244.1.0/24 of node a"),
                ("mine", "overlaps 10.244.1.0/24 of node a"),
                ("copy", "overlaps 10.244.2.0/24 of node b"),
                ("junk", "not a CIDR: invalid IP address syntax"),
            ]
        );
        // Without a cluster CIDR the node addresses still bound it: the
        // default route holds every node's address.
        let open = Bounds {
            own: "10.244.1.0/24".parse().unwrap(),
            cluster: None,
        };
        let r = remote_routes(&s, "a", open);
        assert!(
            r.refused
                .iter()
                .any(|x| x.node == "evil" && x.reason == "holds node address 172.30.0.11"),
            "{r:?}"
        );
        assert_eq!(r.routes.len(), 1, "{r:?}");
    }
}
