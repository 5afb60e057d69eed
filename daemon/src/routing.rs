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

/// Every other node's pod CIDRs with its InternalIP, sorted. Nodes without
/// an address or CIDR are skipped: they cannot be reached yet.
pub fn remote_routes(state: &ClusterState, self_node: &str) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut out = Vec::new();
    for (key, node) in &state.nodes {
        if key.name == self_node {
            continue;
        }
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        let Some(ip) = ip else { continue };
        let spec = node.spec.as_ref();
        let cidrs: BTreeSet<String> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidr.clone()))
            .collect();
        for cidr in cidrs.iter().filter_map(|c| c.parse::<Ipv4Net>().ok()) {
            out.push((cidr.trunc(), ip));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Keeps routes in step with the Node objects until the process ends.
pub async fn run(
    mode: Routing,
    node: String,
    route_dev: u32,
    netdev: Netdev,
    maps: weir_datapath::RouteMaps,
    mut cluster: watch::Receiver<Arc<ClusterState>>,
) {
    // Map syscalls block: they run on a blocking thread, which owns the
    // maps between rounds.
    let maps = Arc::new(std::sync::Mutex::new(maps));
    // Routes a previous agent left for nodes that may be gone.
    let mut installed: BTreeSet<Ipv4Net> = match netdev.weir_node_routes().await {
        Ok(r) => r.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing existing node routes");
            BTreeSet::new()
        }
    };
    let mut backoff = crate::backoff::Backoff::controller();
    loop {
        let state = cluster.borrow_and_update().clone();
        // Not synced once: an empty snapshot would remove the routes (and
        // node IPs) a previous agent left, cutting remote pods off until the
        // manifests load. Change nothing until the source has spoken.
        if state.revision.is_none() {
            if cluster.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut failed = false;
        let wanted = remote_routes(&state, &node);
        // Kernel routes in both modes: the node's own stack must reach remote
        // pods too (replies to them, probes); pods' own traffic in vxlan mode
        // goes into the tunnel from the datapath without consulting these.
        for (cidr, via) in &wanted {
            if let Err(e) = netdev
                .replace_node_route(*cidr, *via, route_dev, mode == Routing::Vxlan)
                .await
            {
                failed = true;
                tracing::warn!(error = %e, "programming node route");
            }
        }
        let keep: BTreeSet<Ipv4Net> = wanted.iter().map(|(c, _)| *c).collect();
        for stale in installed.difference(&keep) {
            if let Err(e) = netdev.delete_node_route(*stale).await {
                failed = true;
                tracing::warn!(error = %e, "removing node route");
            }
        }
        // A route that could not be removed stays ours to retry.
        installed = if failed {
            installed.union(&keep).copied().collect()
        } else {
            keep
        };
        // The datapath's view: node IPs (never masqueraded) in both modes,
        // and in vxlan mode which node owns which pod CIDR.
        let maps = maps.clone();
        let routes = wanted.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let mut datapath = maps.lock().unwrap_or_else(|p| p.into_inner());
            let mut nodes: Vec<Ipv4Addr> = routes.iter().map(|(_, ip)| *ip).collect();
            nodes.dedup();
            datapath.sync_node_ips(&nodes)?;
            match mode {
                Routing::Native => Ok(()),
                Routing::Vxlan => datapath.sync_node_routes(&routes),
            }
        })
        .await
        .expect("route sync panicked");
        if let Err(e) = synced {
            failed = true;
            tracing::warn!(error = %e, "programming node routes into the datapath");
        }
        if !failed {
            backoff.succeeded();
            tracing::debug!(routes = wanted.len(), ?mode, "node routes in step");
            if cluster.changed().await.is_err() {
                return;
            }
            continue;
        }
        // Requeued: a retry may fix what failed; a change retries at once.
        let wait = backoff.failed();
        tracing::info!(retry_in = ?wait, "node routes left to program: requeued");
        tokio::select! {
            changed = cluster.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
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
        let routes = remote_routes(&s, "a");
        assert_eq!(
            routes,
            vec![("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(172, 30, 0, 12))]
        );
        assert_eq!(remote_routes(&s, "b").len(), 1, "b routes to a; c has no address yet");
    }
}
