//! The Kubernetes source: one kube-runtime watcher per kind the agent acts
//! on (all Pods, Namespaces, Services, EndpointSlices, NetworkPolicies,
//! Nodes, weir's identities and policy kinds), folded into [`Stores`] and
//! published as whole snapshots, like the standalone source.
//!
//! Watch semantics are kube-runtime's: an initial list, watches with
//! bookmarks, a relist after `410 Gone`, exponential backoff on errors.
//! Objects arrive untyped and are read one by one, so one object the agent
//! cannot read is reported (log with its name and reason, a counter) instead
//! of failing its kind's whole list. While the API server is away nothing
//! is published: the datapath keeps the last snapshot; when it is back, the
//! relist's snapshot differs only by what changed meanwhile, and the
//! controllers write only differences.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use weir_k8s::kube;

use weir_k8s::resource;
use weir_model::Kind;

use super::stores::{Event, Stores};
use super::{ClusterSource, ClusterState};
use crate::metrics::Metrics;

/// The kinds the agent watches: every kind of the model but Deployments
/// (their pods are what counts).
fn watched() -> Vec<Kind> {
    Kind::ALL.into_iter().filter(|k| *k != Kind::Deployment).collect()
}

/// Changes closer together than this make one snapshot. Short: a pass
/// costs what a change touches, so batching buys little, and one change
/// alone (a policy) waits this long.
const QUIET: Duration = Duration::from_millis(10);
/// ... but a snapshot is at most this late under a stream of changes.
const LATEST: Duration = Duration::from_millis(250);

/// This node's pod CIDR from its Node object (`spec.podCIDR`, set by
/// kube-controller-manager's allocator or by whoever made the node); waits
/// until the Node exists and has one.
pub async fn node_pod_cidr(client: &kube::Client, node: &str) -> anyhow::Result<Ipv4Net> {
    from_node(client, node, "pod CIDR", |n| {
        let spec = n.spec.clone().unwrap_or_default();
        let cidrs = spec.pod_cidr.into_iter().chain(spec.pod_cidrs.into_iter().flatten());
        cidrs
            .filter_map(|c| c.parse::<Ipv4Net>().ok())
            .next()
            .ok_or_else(|| format!("Node {node} has no IPv4 spec.podCIDR yet"))
    })
    .await
}

/// The Node's InternalIP (`--uplink auto`), waiting until it has one.
pub async fn node_internal_ip(client: &kube::Client, node: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    from_node(client, node, "InternalIP", |n| {
        n.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse().ok())
            .ok_or_else(|| format!("Node {node} has no IPv4 InternalIP yet"))
    })
    .await
}

/// Reads this node's Node object until `get` finds what it wants in it;
/// says once per new reason what it is waiting for.
async fn from_node<T>(
    client: &kube::Client,
    node: &str,
    what: &str,
    get: impl Fn(&Node) -> Result<T, String>,
) -> anyhow::Result<T> {
    let api: Api<Node> = Api::all(client.clone());
    let mut said = None::<String>;
    loop {
        let why = match api.get_opt(node).await {
            Ok(Some(n)) => match get(&n) {
                Ok(v) => return Ok(v),
                Err(why) => why,
            },
            Ok(None) => format!("no Node {node} yet"),
            Err(e) => format!("reading Node {node}: {e}"),
        };
        if said.as_deref() != Some(why.as_str()) {
            tracing::warn!(reason = %why, "waiting for this node's {what}");
            said = Some(why);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub struct KubeSource {
    client: kube::Client,
    metrics: Option<Arc<Metrics>>,
}

impl KubeSource {
    pub fn new(client: kube::Client, metrics: Option<Arc<Metrics>>) -> Self {
        Self { client, metrics }
    }
}

/// How watches retry: from 200 ms to 5 s (kube-runtime's default backoff
/// grows to 30 s, so an agent would learn of changes up to half a minute
/// after its API server is back), with up to half a second of jitter so a
/// cluster's agents do not return in step. An expired watch (410 Gone)
/// relists at once: the server answered, only the resourceVersion is too
/// old, and waiting out a backoff grown during an outage would delay
/// every change made meanwhile by seconds more.
struct WatchBackoff(crate::backoff::Backoff);

impl WatchBackoff {
    fn after_failure(&mut self) -> Duration {
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 500_000_000);
        self.0.failed() + Duration::from_nanos(jitter.into())
    }
}

/// The watch's resourceVersion is gone (410): kube-runtime relists next.
fn expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// Follows one kind for ever, sending its events (objects as JSON).
async fn follow(client: kube::Client, kind: Kind, tx: mpsc::Sender<(Kind, Event)>, metrics: Option<Arc<Metrics>>) {
    let ar = resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut backoff = WatchBackoff(crate::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
    ));
    let stream = watcher(api, watcher::Config::default());
    futures_util::pin_mut!(stream);
    let mut absent = false;
    // What the watch has been failing with: said once, and again only when
    // it changes (unreachable, then 403 once the server is back, is news).
    let mut failing: Option<String> = None;
    while let Some(item) = stream.next().await {
        let (event, pause) = match item {
            Ok(e) => {
                absent = false;
                backoff.0.succeeded();
                if failing.take().is_some() {
                    tracing::info!(kind = kind.name(), "Kubernetes watch resumed");
                }
                let v = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
                let event = match e {
                    watcher::Event::Apply(o) => Event::Apply(v(o)),
                    watcher::Event::Delete(o) => Event::Delete(v(o)),
                    watcher::Event::Init => Event::Init,
                    watcher::Event::InitApply(o) => Event::InitApply(v(o)),
                    watcher::Event::InitDone => Event::InitDone,
                };
                (Some(event), Duration::ZERO)
            }
            Err(e) if expired(&e) => {
                tracing::debug!(kind = kind.name(), error = %weir_error::Report(&e), "Kubernetes watch expired; relisting");
                (None, Duration::ZERO)
            }
            Err(e) => {
                if let Some(m) = &metrics {
                    m.kube_error(kind.name());
                }
                let pause = backoff.after_failure();
                let not_served = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                if !not_served {
                    // Once per outage and cause: the retries say nothing new.
                    let cause = failure_cause(&e);
                    match failing.replace(cause.clone()).as_deref() == Some(cause.as_str()) {
                        false => tracing::warn!(kind = kind.name(), error = %weir_error::Report(&e),
                            "Kubernetes watch failed; retrying with backoff, the datapath keeps its state"),
                        true => {
                            tracing::debug!(kind = kind.name(), error = %weir_error::Report(&e), "Kubernetes watch still failing")
                        }
                    }
                    (None, pause)
                } else if absent {
                    (None, pause)
                } else {
                    absent = true;
                    tracing::warn!(kind = kind.name(), resource = %ar.plural, "not served by the API server (CRD not installed?): none of them, until it is");
                    (Some(Event::Absent), pause)
                }
            }
        };
        if let Some(event) = event
            && tx.send((kind, event)).await.is_err()
        {
            return;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// What a watch failure is, coarsely: the API server's status code and
/// reason when it answered, "unreachable" when it did not.
fn failure_cause(e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return "unreachable".into(),
    };
    format!("{} {}", status.code, status.reason)
}

/// The resourceVersion of the object an event carries, if numeric.
fn event_version(e: &Event) -> Option<u64> {
    let v = match e {
        Event::Apply(v) | Event::Delete(v) | Event::InitApply(v) => v,
        _ => return None,
    };
    v.pointer("/metadata/resourceVersion")?.as_str()?.parse().ok()
}

impl ClusterSource for KubeSource {
    async fn run(self, tx: watch::Sender<Arc<ClusterState>>) {
        let (etx, mut erx) = mpsc::channel(4096);
        let kinds = watched();
        for kind in kinds.iter().copied() {
            tokio::spawn(follow(self.client.clone(), kind, etx.clone(), self.metrics.clone()));
        }
        drop(etx);
        let mut stores = Stores::new(&kinds);
        let mut revision = 0u64;
        let mut newest = 0u64;
        let mut dirty_since: Option<Instant> = None;
        let started = Instant::now();
        loop {
            let next = match dirty_since.filter(|_| stores.synced()) {
                Some(since) => {
                    let wait = QUIET.min(LATEST.saturating_sub(since.elapsed()));
                    match tokio::time::timeout(wait, erx.recv()).await {
                        Ok(e) => e,
                        Err(_) => {
                            // The newest resourceVersion seen, so a writer
                            // can tell its write has been applied (etcd's
                            // revisions; kube says to treat them as opaque,
                            // the lab compares them only to wait); at least
                            // one more than the last, so every snapshot has
                            // its own number.
                            revision = newest.max(revision + 1);
                            let state = stores.snapshot(revision, dirty_since);
                            if revision == 1 {
                                tracing::info!(
                                    pods = state.pods.len(),
                                    services = state.services.len(),
                                    nodes = state.nodes.len(),
                                    took_ms = started.elapsed().as_millis() as u64,
                                    "Kubernetes source synced"
                                );
                            }
                            tx.send_replace(state);
                            if let Some(m) = &self.metrics {
                                for k in kinds.iter().copied() {
                                    m.kube_objects(k.name(), stores.len(k));
                                }
                            }
                            dirty_since = None;
                            continue;
                        }
                    }
                }
                None => erx.recv().await,
            };
            let Some((kind, event)) = next else { return };
            if let Some(rv) = event_version(&event) {
                newest = newest.max(rv);
            }
            let applied = stores.apply(kind, event);
            if let Some(p) = applied.problem {
                tracing::warn!(kind = kind.name(), namespace = %p.key.namespace, name = %p.key.name, reason = %p.reason,
                    "cannot read this object from the API server: its last readable version stays (a policy denies what it may select)");
                if let Some(m) = &self.metrics {
                    m.kube_unreadable(kind.name());
                }
            }
            if applied.relisted {
                tracing::info!(kind = kind.name(), "relisted; applying what changed meanwhile");
                if let Some(m) = &self.metrics {
                    m.kube_relisted(kind.name());
                }
            }
            if applied.changed && dirty_since.is_none() {
                dirty_since = Some(Instant::now());
            }
        }
    }
}
