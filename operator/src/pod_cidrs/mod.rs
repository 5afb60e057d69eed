//! Pod CIDRs for Nodes (`--cluster-cidr`): a Node without `spec.podCIDR`
//! gets the lowest free block of the pool ([`pool`]), written to
//! `spec.podCIDR` and `spec.podCIDRs` (which the API server lets be set
//! once); the agent on that node allocates its pods' addresses from it.
//!
//! The Nodes are the only record: every pass reads what is taken from the
//! Nodes the watch holds (a consistent list after every start, so after a
//! restart or a leader handover too), plus this process's own writes the
//! watch has not shown yet. A deleted Node's block is free again.
//!
//! Nothing else may allocate from the same pool: kube-controller-manager
//! runs with `--allocate-node-cidrs=false` when the operator allocates.
//! When the pool is exhausted the node waits (until a Node is deleted),
//! with a warning logged and a `CIDRNotAvailable` Event on the Node.
pub mod pool;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;
use weir_k8s::kube;

pub use pool::Pool;

use crate::leader::Term;

/// Changes closer together than this make one pass.
const BATCH: Duration = Duration::from_millis(50);
/// A write that failed is tried again after this.
const RETRY: Duration = Duration::from_secs(2);
/// The Event's reason (kube-controller-manager's allocator uses the same).
pub const REASON_EXHAUSTED: &str = "CIDRNotAvailable";

/// Why the allocator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Node watch ended: only when the runtime shuts down.
    #[error("the Node watch ended")]
    WatchEnded,
    /// The watch's store was dropped before it synced.
    #[error("the Node store never synced")]
    NotSynced(#[source] reflector::store::WriterDropped),
}

/// A Node as the allocator sees it.
#[derive(Debug, Clone)]
struct NodeView {
    name: String,
    uid: String,
    resource_version: Option<String>,
    cidrs: Vec<Ipv4Net>,
}

/// The IPv4 CIDRs a Node has (`podCIDR` and `podCIDRs`); IPv6 ones and
/// anything unparseable are not the pool's.
fn node_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = &node.spec else { return Vec::new() };
    let mut out: Vec<Ipv4Net> = spec
        .pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn view(node: &Node) -> NodeView {
    NodeView {
        name: node.name_any(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        resource_version: node.metadata.resource_version.clone(),
        cidrs: node_cidrs(node),
    }
}

/// Whether the Node has a pod CIDR at all: one that is not IPv4 (or not
/// the pool's) was its one chance to be set too.
fn has_pod_cidr(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|s| {
        s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty()) || s.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty())
    })
}

/// Runs until the process ends (or the task is aborted: leadership lost).
pub async fn run(client: kube::Client, pool: Pool, reporter: Reporter, term: Term) -> Result<Infallible, Error> {
    let (nodes, writer) = reflector::store::<Node>();
    let (tx, rx) = mpsc::channel(1);
    // A consistent list (quorum read) on every start: what a previous
    // leader wrote is in it.
    let config = watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    let watch = watcher(Api::<Node>::all(client.clone()), config)
        .default_backoff()
        .modify(|n: &mut Node| n.meta_mut().managed_fields = None)
        .reflect(writer);
    let drive = async move {
        futures_util::pin_mut!(watch);
        while let Some(item) = watch.next().await {
            match item {
                Ok(_) => {
                    let _ = tx.try_send(());
                }
                Err(e) => tracing::warn!(error = %weir_error::Report(&e), "Node watch failed; retrying with backoff"),
            }
        }
    };
    let recorder = Recorder::new(client.clone(), reporter);
    tokio::select! {
        () = drive => Err(Error::WatchEnded),
        r = allocate(Api::all(client), nodes, pool, recorder, rx, term).in_current_span() => r,
    }
}

async fn allocate(
    api: Api<Node>,
    nodes: Store<Node>,
    pool: Pool,
    recorder: Recorder,
    mut changes: mpsc::Receiver<()>,
    term: Term,
) -> Result<Infallible, Error> {
    nodes.wait_until_ready().await.map_err(Error::NotSynced)?;
    let taken_at_start = nodes.state().iter().filter(|n| has_pod_cidr(n)).count();
    tracing::info!(cluster_cidr = %pool.cluster(), mask = pool.mask(), blocks = pool.size(),
        nodes = nodes.state().len(), taken = taken_at_start, "pod CIDR allocator synced");
    // Written, not yet seen by the watch: node name → (uid, block).
    let mut pending: BTreeMap<String, (String, Ipv4Net)> = BTreeMap::new();
    // Nodes told the pool is exhausted (told once, until they get a block).
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    loop {
        let state = nodes.state();
        let views: BTreeMap<String, NodeView> = state.iter().map(|n| (n.name_any(), view(n))).collect();
        let has_cidr: BTreeSet<&str> = state
            .iter()
            .filter(|n| has_pod_cidr(n))
            .map(|n| n.metadata.name.as_deref().unwrap_or_default())
            .collect();
        pending.retain(|name, (uid, _)| {
            views.get(name).is_some_and(|v| &v.uid == uid) && !has_cidr.contains(name.as_str())
        });
        waiting.retain(|name| views.contains_key(name) && !has_cidr.contains(name.as_str()));
        let taken: Vec<Ipv4Net> = views
            .values()
            .flat_map(|v| v.cidrs.iter().copied())
            .chain(pending.values().map(|(_, c)| *c))
            .collect();
        let needing: Vec<&NodeView> = views
            .values()
            .filter(|v| !has_cidr.contains(v.name.as_str()) && !pending.contains_key(&v.name))
            .collect();
        let mut failed = false;
        for (node, block) in pool.assign(&taken, needing) {
            if let Err(e) = term.check() {
                failed = true;
                tracing::warn!(error = %weir_error::Report(&e), "pod CIDR writes held");
                break;
            }
            let span = tracing::info_span!("pod_cidr", node = %node.name);
            match block {
                Some(cidr) => match write(&api, node, cidr).instrument(span).await {
                    Ok(()) => {
                        pending.insert(node.name.clone(), (node.uid.clone(), cidr));
                    }
                    Err(()) => failed = true,
                },
                None => {
                    if waiting.insert(node.name.clone()) {
                        exhausted(&recorder, &pool, taken.len(), &state, &node.name)
                            .instrument(span)
                            .await;
                    }
                }
            }
        }
        // A failed write is tried again after a while even if nothing changes.
        let next = match failed {
            true => tokio::time::timeout(RETRY, changes.recv()).await.unwrap_or(Some(())),
            false => changes.recv().await,
        };
        if next.is_none() {
            return Err(Error::WatchEnded);
        }
        tokio::time::sleep(BATCH).await;
        while changes.try_recv().is_ok() {}
    }
}

/// Writes `cidr` to the Node, only onto the version the allocator saw (a
/// Node replaced meanwhile, or given a CIDR by another writer, conflicts).
async fn write(api: &Api<Node>, node: &NodeView, cidr: Ipv4Net) -> Result<(), ()> {
    let patch = json!({
        "metadata": {"resourceVersion": node.resource_version},
        "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
    });
    match api
        .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(%cidr, "pod CIDR allocated");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            tracing::debug!(%cidr, reason = %s.message, "Node changed meanwhile; decided again on the next pass");
            Err(())
        }
        Err(e) => {
            tracing::warn!(%cidr, error = %weir_error::Report(&e), "pod CIDR not written; retried");
            Err(())
        }
    }
}

/// The pool has no block for `name`: said once per node, in the log and as
/// a Warning Event on the Node.
async fn exhausted(recorder: &Recorder, pool: &Pool, taken: usize, nodes: &[std::sync::Arc<Node>], name: &str) {
    let note = format!(
        "no free /{} left in {} ({} blocks, {taken} taken): the node waits until a Node is deleted or the pool grows",
        pool.mask(),
        pool.cluster(),
        pool.size()
    );
    tracing::warn!(cluster_cidr = %pool.cluster(), "pod CIDR pool exhausted: {note}");
    let Some(node) = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name)) else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: REASON_EXHAUSTED.into(),
        note: Some(note),
        action: "AllocatePodCIDR".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &node.object_ref(&())).await {
        tracing::warn!(error = %weir_error::Report(&e), "Event not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, cidrs: &[&str]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"podCIDR": cidr, "podCIDRs": cidrs},
        }))
        .unwrap()
    }

    #[test]
    fn a_nodes_cidrs_are_its_ipv4_ones() {
        let n = node("a", Some("10.244.1.0/24"), &["10.244.1.0/24", "fd00::/64"]);
        assert_eq!(node_cidrs(&n), vec!["10.244.1.0/24".parse::<Ipv4Net>().unwrap()]);
        assert!(has_pod_cidr(&n));
        let v6 = node("b", Some("fd00::/64"), &["fd00::/64"]);
        assert!(node_cidrs(&v6).is_empty());
        assert!(
            has_pod_cidr(&v6),
            "set once, even if not from the pool: it needs nothing"
        );
        assert!(!has_pod_cidr(&node("c", None, &[])));
        assert!(!has_pod_cidr(&node("d", Some(""), &[])));
    }
}
