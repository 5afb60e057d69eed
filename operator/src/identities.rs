//! The identity allocator against the API server: the one writer of
//! `WeirIdentity` objects. It watches every Pod and every WeirIdentity
//! (kube-runtime reflectors) and, after each change, runs the model's
//! allocation pass (`weir_model::identity::plan`, the same the lab runs in
//! standalone mode): a label set keeps its number while any pod has it, a
//! new one gets a fresh number, a number no pod's set needs is deleted.
//!
//! Its own writes are remembered until the watch shows them, so a pass
//! that runs before the reflector has caught up does not hand a second
//! number to a label set it has just numbered.
//!
//! Nothing is kept across runs: every start (a restart, a new leader)
//! lists Pods and identities afresh, and the first pass releases the
//! identities of pods that went away while no operator ran.
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use weir_k8s::kube;

use weir_model::identity::{self, IdentityKey, WeirIdentity};

use crate::leader::Term;

/// Changes closer together than this make one pass.
const BATCH: Duration = Duration::from_millis(50);
/// A write that failed is tried again after this.
const RETRY: Duration = Duration::from_secs(2);

/// Writes made and not yet seen by the watch.
#[derive(Default)]
struct Pending {
    created: BTreeMap<u32, IdentityKey>,
    deleted: BTreeSet<u32>,
}

/// Why the allocator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watch ended: only when the runtime shuts down.
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
    /// A watch's store was dropped before it synced.
    #[error("the {kind} store never synced")]
    NotSynced {
        kind: &'static str,
        #[source]
        source: reflector::store::WriterDropped,
    },
}

/// Drives a reflector's watch, signalling every event; errors are logged
/// and retried by the backoff. Ends only if the watch does. The watch
/// starts with a consistent list (quorum read): what a previous leader
/// wrote is in it.
async fn drive<K>(api: Api<K>, writer: reflector::store::Writer<K>, what: &'static str, tx: mpsc::Sender<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let config = watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    // Managed fields are most of an object's size and never read.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer);
    futures_util::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => {
                tracing::warn!(kind = what, error = %weir_error::Report(&e), "watch failed; retrying with backoff")
            }
        }
    }
}

fn existing(ids: &Store<WeirIdentity>, pending: &mut Pending) -> BTreeMap<u32, IdentityKey> {
    let mut out: BTreeMap<u32, IdentityKey> = ids
        .state()
        .iter()
        .filter_map(|i| Some((i.id()?, i.spec.clone())))
        .collect();
    pending.created.retain(|id, _| !out.contains_key(id));
    pending.deleted.retain(|id| out.contains_key(id));
    for id in &pending.deleted {
        out.remove(id);
    }
    out.extend(pending.created.iter().map(|(id, k)| (*id, k.clone())));
    out
}

/// Runs until the process ends (or the task is aborted: leadership lost).
/// Everything it starts is inside this future, so dropping it stops all.
pub async fn run(client: kube::Client, term: Term) -> Result<Infallible, Error> {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (ids, id_writer) = reflector::store::<WeirIdentity>();
    let (tx, rx) = mpsc::channel(1);
    tokio::select! {
        () = drive(Api::<Pod>::all(client.clone()), pod_writer, "Pod", tx.clone()) => Err(Error::WatchEnded("Pod")),
        () = drive(Api::<WeirIdentity>::all(client.clone()), id_writer, "WeirIdentity", tx) => Err(Error::WatchEnded("WeirIdentity")),
        r = allocate(Api::all(client), pods, ids, rx, term) => r,
    }
}

async fn allocate(
    api: Api<WeirIdentity>,
    pods: Store<Pod>,
    ids: Store<WeirIdentity>,
    mut rx: mpsc::Receiver<()>,
    term: Term,
) -> Result<Infallible, Error> {
    pods.wait_until_ready()
        .await
        .map_err(|source| Error::NotSynced { kind: "Pod", source })?;
    ids.wait_until_ready().await.map_err(|source| Error::NotSynced {
        kind: "WeirIdentity",
        source,
    })?;
    // Identities of pods that went away while no operator ran are released
    // by the first pass: it compares what exists with what the pods need.
    tracing::info!(
        pods = pods.state().len(),
        identities = ids.state().len(),
        "identity allocator synced"
    );
    let mut pending = Pending::default();
    loop {
        let mut failed = false;
        let wanted: BTreeSet<IdentityKey> = pods.state().iter().map(|p| IdentityKey::of_pod(p)).collect();
        let have = existing(&ids, &mut pending);
        match identity::plan(&have, &wanted) {
            Ok(plan) => {
                for (id, key) in plan.create {
                    if let Err(e) = term.check() {
                        failed = true;
                        tracing::warn!(error = %weir_error::Report(&e), "identity writes held");
                        break;
                    }
                    match api
                        .create(&PostParams::default(), &WeirIdentity::numbered(id, key.clone()))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(id, namespace = %key.namespace, labels = ?key.labels, "identity allocated");
                            pending.created.insert(id, key);
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(id, error = %weir_error::Report(&e), "identity not created; retried");
                        }
                    }
                }
                for id in plan.release {
                    if term.check().is_err() {
                        failed = true;
                        break;
                    }
                    match api.delete(&id.to_string(), &DeleteParams::default()).await {
                        Ok(_) => {
                            tracing::info!(id, "identity released: no pod has its labels");
                            pending.deleted.insert(id);
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            pending.deleted.insert(id);
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(id, error = %weir_error::Report(&e), "identity not released; retried");
                        }
                    }
                }
            }
            Err(e) => {
                failed = true;
                tracing::error!(error = %weir_error::Report(&e), "cannot allocate identities");
            }
        }
        // A failed write is retried after a while even if nothing changes.
        let next = match failed {
            true => tokio::time::timeout(RETRY, rx.recv()).await.unwrap_or(Some(())),
            false => rx.recv().await,
        };
        if next.is_none() {
            return Err(Error::WatchEnded("Pod and WeirIdentity"));
        }
        tokio::time::sleep(BATCH).await;
        while rx.try_recv().is_ok() {}
    }
}
