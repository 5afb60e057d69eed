//! One event's way from ring-buffer bytes to a stored flow, and the reader
//! thread that drives it. The pipeline is its own type so the benchmark
//! can drive it with the same code the agent runs.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::enrich::{self, Clock, Context};
use crate::metrics::FlowMetrics;
use crate::names::FlowNames;
use crate::store::{FlowRecord, FlowStore};
use tokio::sync::watch;
use weir_datapath::events::{Event, EventSource};
use weir_model::ClusterState;

/// Flows go into the store in batches of this many (one lock each).
const BATCH: usize = 256;

/// How long the reader waits for the cluster source's first snapshot.
const SOURCE_WAIT: Duration = Duration::from_secs(10);

/// What the reader counts, for ServerStatus and metrics.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Records decoded and stored.
    pub events: AtomicU64,
    /// Records that were not events of this build (wrong size, version or
    /// kind): counted and skipped.
    pub undecodable: AtomicU64,
    /// Events the datapath could not write (ring full), as its per-CPU
    /// counters last said.
    pub lost: AtomicU64,
}

pub struct Pipeline {
    names: FlowNames,
    /// The snapshot the names were taken from.
    named: Option<Arc<ClusterState>>,
    node: String,
    /// The node name every record shares.
    node_arc: Arc<str>,
    stats: Arc<FlowStats>,
    metrics: Option<Arc<dyn FlowMetrics>>,
    policy: Option<Arc<crate::PolicyNames>>,
    batch: Vec<FlowRecord>,
}

impl Pipeline {
    pub fn new(node: String, grace: Duration, stats: Arc<FlowStats>, metrics: Option<Arc<dyn FlowMetrics>>) -> Self {
        Self {
            names: FlowNames::new(grace),
            named: None,
            node_arc: Arc::from(node.as_str()),
            node,
            stats,
            metrics,
            policy: None,
            batch: Vec::with_capacity(BATCH),
        }
    }

    /// Names policy verdicts with the policy controller's references.
    pub fn with_policy_names(mut self, names: Arc<crate::PolicyNames>) -> Self {
        self.policy = Some(names);
        self
    }

    pub fn update_names(&mut self, state: &Arc<ClusterState>) {
        // Only what changed since the last snapshot is renamed.
        let changes = self.named.as_ref().map(|last| weir_model::Changes::since(last, state));
        let gone = self
            .names
            .update_with(state, changes.as_ref(), &self.node, Instant::now());
        self.named = Some(state.clone());
        tracing::debug!(revision = ?state.revision, pods = state.pods.len(), "flow names updated");
        // Series of what is no longer named go; when nothing went there is
        // nothing to look for (a pod added elsewhere costs its names only).
        if let Some(m) = self.metrics.as_ref().filter(|_| gone) {
            m.retain_named(&self.names);
        }
    }

    /// Decodes, enriches and batches one record; a full batch goes to the
    /// store.
    pub fn process(&mut self, bytes: &[u8], clock: Clock, now: Instant, store: &FlowStore) {
        match Event::decode(bytes) {
            Ok(event) => {
                let cx = Context {
                    names: &self.names,
                    policy: self.policy.as_deref(),
                    node: &self.node,
                    clock,
                    now,
                };
                let named = enrich::name(&event, &cx);
                let record = FlowRecord::new(event, named, self.node_arc.clone());
                if let Some(m) = &self.metrics {
                    m.observe_record(&record);
                }
                self.batch.push(record);
                if self.batch.len() >= BATCH {
                    self.flush(store);
                }
            }
            Err(e) => {
                let n = self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                // The first, then every thousandth: garbage must not flood the log.
                if n.is_multiple_of(1000) {
                    tracing::warn!(error = %weir_error::Report(&e), skipped = n + 1, "flow event skipped");
                }
            }
        }
    }

    pub fn flush(&mut self, store: &FlowStore) {
        let n = self.batch.len() as u64;
        if n > 0 {
            store.extend(self.batch.drain(..));
            self.stats.events.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Takes everything the ring holds now through the pipeline into the
/// store; returns how many records it read.
pub fn drain(source: &mut EventSource, pipeline: &mut Pipeline, store: &FlowStore, clock: Clock) -> u64 {
    let now = Instant::now();
    let mut n = 0;
    while source
        .next(|bytes| pipeline.process(bytes, clock, now, store))
        .is_some()
    {
        n += 1;
    }
    pipeline.flush(store);
    n
}

/// Reads the ring buffer on a thread of its own until `stop` is set:
/// waits for data (or 100 ms, to notice a new cluster snapshot and the
/// stop flag), then drains everything there is.
pub fn spawn_reader(
    mut source: EventSource,
    mut pipeline: Pipeline,
    store: Arc<FlowStore>,
    mut cluster: watch::Receiver<Arc<ClusterState>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("flow-reader".into()).spawn(move || {
        // Events that waited in the pinned ring while no agent ran are
        // about pods the source has not told us of yet: wait for its first
        // snapshot (the ring holds them meanwhile), or they would be named
        // as the world. A source that never syncs costs names, not flows.
        let deadline = Instant::now() + SOURCE_WAIT;
        while cluster.borrow().revision.is_none() && !stop.load(Ordering::Relaxed) {
            if cluster.has_changed().is_err() {
                break; // no source at all
            }
            if Instant::now() > deadline {
                tracing::warn!(waited = ?SOURCE_WAIT, "cluster state not synced: flows go unnamed until it is");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = cluster.borrow_and_update().clone();
        pipeline.update_names(&state);
        while !stop.load(Ordering::Relaxed) {
            {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let mut fds = [PollFd::new(source.as_fd(), PollFlags::POLLIN)];
                if let Err(e) = poll(&mut fds, PollTimeout::from(100u16))
                    && e != nix::errno::Errno::EINTR
                {
                    tracing::error!(error = %weir_error::Report(&e), "polling the flow ring buffer failed; flows stop");
                    return;
                }
            }
            // After the wait, not before it: a pod's first packets often
            // wake the reader right after the snapshot naming the pod came.
            if cluster.has_changed().unwrap_or(false) {
                let state = cluster.borrow_and_update().clone();
                pipeline.update_names(&state);
            }
            drain(&mut source, &mut pipeline, &store, Clock::now());
            if let Ok(lost) = source.lost() {
                pipeline.stats.lost.store(lost, Ordering::Relaxed);
                if let Some(m) = &pipeline.metrics {
                    m.set_lost(lost);
                }
            }
            if let (Ok(held), Some(m)) = (source.rate_limited(), &pipeline.metrics) {
                m.set_rate_limited(held);
            }
        }
    })
}
