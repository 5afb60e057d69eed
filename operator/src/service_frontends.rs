//! Reports the external frontends the agents refuse: a Service whose
//! `externalIPs` or load balancer IP names another Service's ClusterIP, a
//! node's address, or an address an older Service already serves there
//! (`weir_model::frontends`, the agents' own judgement) gets a Warning
//! Event saying which frontend and why, once per refusal. The agents log
//! and count the same refusals; the Event is where the Service's owner,
//! who cannot read agent logs, sees it.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;
use weir_k8s::kube;
use weir_model::frontends::{Refused, external_frontends};
use weir_model::{ClusterState, ObjectKey};

use crate::leader::Term;

/// The Event's reason.
pub const REASON_REFUSED: &str = "ExternalFrontendRefused";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a Service or Node watch ended")]
    WatchEnded,
}

/// Runs until the process ends (or the task is aborted: leadership lost).
pub async fn run(client: kube::Client, reporter: Reporter, term: Term) -> Result<Infallible, Error> {
    let (services, service_writer) = reflector::store::<Service>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let (tx, rx) = mpsc::channel(1);
    let service_watch = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|s: &mut Service| s.meta_mut().managed_fields = None)
        .reflect(service_writer);
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|n: &mut Node| n.meta_mut().managed_fields = None)
        .reflect(node_writer);
    let drive = async move {
        let events = futures_util::stream::select(service_watch.map(|r| r.map(drop)), node_watch.map(|r| r.map(drop)));
        futures_util::pin_mut!(events);
        while let Some(item) = events.next().await {
            match item {
                Ok(()) => {
                    let _ = tx.try_send(());
                }
                Err(e) => {
                    tracing::warn!(error = %weir_error::Report(&e), "Service or Node watch failed; retrying with backoff")
                }
            }
        }
    };
    tokio::select! {
        () = drive => Err(Error::WatchEnded),
        never = report(services, nodes, client, reporter, rx, term) => Ok(never),
    }
}

async fn report(
    services: Store<Service>,
    nodes: Store<Node>,
    client: kube::Client,
    reporter: Reporter,
    mut changes: mpsc::Receiver<()>,
    term: Term,
) -> Infallible {
    let _ = services.wait_until_ready().await;
    let _ = nodes.wait_until_ready().await;
    // What was reported and still stands: a refusal that ends and comes
    // back is reported again.
    let mut told: BTreeSet<(ObjectKey, String)> = BTreeSet::new();
    loop {
        let state = snapshot(&services, &nodes);
        let refused = external_frontends(&state).refused;
        let now: BTreeSet<(ObjectKey, String)> = refused.iter().map(|r| (r.service.clone(), note(r))).collect();
        for r in &refused {
            let key = (r.service.clone(), note(r));
            if told.contains(&key) || term.check().is_err() {
                continue;
            }
            let Some(svc) = state.services.get(&r.service) else {
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: REASON_REFUSED.into(),
                note: Some(key.1.clone()),
                action: "ServeExternalFrontend".into(),
                secondary: None,
            };
            // A recorder of its own per Event: kube's recorder folds Events
            // of one reason on one object into a series (a patch, keeping
            // the first note), and each refusal has its own note.
            let recorder = Recorder::new(client.clone(), reporter.clone());
            match recorder.publish(&event, &svc.object_ref(&())).await {
                Ok(()) => {
                    told.insert(key);
                }
                Err(e) => tracing::warn!(error = %weir_error::Report(&e), "Event not recorded"),
            }
        }
        told.retain(|k| now.contains(k));
        if changes.recv().await.is_none() {
            return std::future::pending().await;
        }
    }
}

fn note(r: &Refused) -> String {
    let (ip, port, protocol) = &r.frontend;
    format!("external frontend {ip}:{port}/{protocol} not served: it {}", r.reason)
}

/// The Services and Nodes as the agents' model holds them.
fn snapshot(services: &Store<Service>, nodes: &Store<Node>) -> ClusterState {
    let mut state = ClusterState::default();
    for s in services.state() {
        state.services.insert(ObjectKey::of(&s.metadata), Arc::clone(&s));
    }
    for n in nodes.state() {
        state.nodes.insert(ObjectKey::new("", n.name_any()), Arc::clone(&n));
    }
    state
}
