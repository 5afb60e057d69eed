//! Finding the agents through Kubernetes: every Node object is a node
//! whose agent serves the Observer API on its InternalIP at a port the
//! cluster agrees on (Hubble's is 4244, the agents' `--hubble-listen`). A
//! kube-runtime reflector follows the Nodes, so nodes that join or leave
//! join or leave the relay's peers.
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use weir_k8s::kube;
use weir_proto::client::Server;

use crate::Relay;

/// The peers the Nodes say: name, `InternalIP:port`. A Node without an
/// InternalIP has no agent the relay can reach yet.
pub fn peers_of(nodes: &[Arc<Node>], port: u16) -> Vec<(String, Server)> {
    let mut out: Vec<(String, Server)> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .clone();
            let addr = match ip.contains(':') {
                true => format!("[{ip}]:{port}"),
                false => format!("{ip}:{port}"),
            };
            Some((name, Server::parse(&addr).ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Follows the Nodes for ever, setting the relay's peers after each change.
pub async fn follow_nodes(relay: Arc<Relay>, client: kube::Client, port: u16) {
    let (store, writer) = reflector::store::<Node>();
    let stream = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures_util::pin_mut!(stream);
    let (mut last, mut listed) = (Vec::new(), false);
    while let Some(e) = stream.next().await {
        match e {
            Err(e) => {
                tracing::warn!(error = %weir_error::Report(&e), "watching Nodes failed; the peers stay as they are, retrying");
                continue;
            }
            // The store is whole once the first list is.
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) => {}
        }
        if !listed {
            continue;
        }
        let peers = peers_of(&store.state(), port);
        let names: Vec<String> = peers.iter().map(|(n, s)| format!("{n}={s}")).collect();
        if names != last {
            relay.set_peers(peers);
            last = names;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(name: &str, ip: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    ip.into_iter()
                        .map(|ip| NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn every_node_with_an_internal_ip_is_a_peer_at_the_port() {
        let peers = peers_of(
            &[
                node("b", Some("10.0.0.2")),
                node("a", Some("10.0.0.1")),
                node("c", None),
            ],
            4244,
        );
        let got: Vec<String> = peers.iter().map(|(n, s)| format!("{n}={s}")).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("a=") && got[0].contains("10.0.0.1:4244"), "{got:?}");
    }
}
