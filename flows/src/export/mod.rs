//! Flow export: every new flow, through each configured exporter's
//! filters and field mask, to a rotating file of JSON lines or to an
//! OpenTelemetry Collector as OTLP logs. The configuration is a file
//! (a ConfigMap in a cluster) read again whenever it changes: exporters
//! it adds start, those it removes stop, a changed one restarts, the
//! others run on untouched. A file that fails its checks changes nothing
//! and is counted.
//!
//! ```text
//! FlowStore ─ broadcast ─ per exporter: filter → mask → protojson ─ bounded queue ─ writer (file) / sender (OTLP)
//!                                          (or: filter → groups, out once per aggregateInterval)
//! ```
//!
//! Export never slows the reader: an exporter that falls behind the store
//! loses flows (`lagged`), a writer or collector that cannot keep up
//! loses whole batches (`queue_full`), an export that fails loses its
//! batch (`export_failed`, `write_failed`), a collector's partial refusal
//! its part (`rejected`); each is counted in
//! `weir_flow_export_dropped_total{exporter,reason}`.

pub mod config;
pub mod file;
pub mod otlp;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use self::config::{FlowLog, Sink, Spec};
use crate::metrics::FlowMetrics;
use crate::store::{FlowRecord, FlowStore};

/// How often the configuration file is read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Flows per batch handed to a writer or sender.
const BATCH: usize = 256;
/// A partial batch waits at most this long.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Batches that may wait for a writer or sender.
const QUEUE: usize = 16;

/// A flow (its response in protojson) or a group of flows, ready for a
/// sink, and when it was.
struct Item {
    json: Value,
    time_nanos: i128,
    group: bool,
}

/// What exporters need from the agent.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<FlowStore>,
    pub node: Arc<str>,
    pub metrics: Arc<dyn FlowMetrics>,
}

struct Running {
    spec: Spec,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The running exporters, by name.
pub struct Exporters {
    cx: Context,
    running: BTreeMap<String, Running>,
}

impl Exporters {
    pub fn new(cx: Context) -> Self {
        Self {
            cx,
            running: BTreeMap::new(),
        }
    }

    /// Runs exactly `logs`: stops the removed and changed ones (their
    /// last flows written), then starts the new and changed ones.
    pub async fn apply(&mut self, logs: Vec<FlowLog>) {
        let wanted: BTreeMap<String, FlowLog> = logs.into_iter().map(|l| (l.spec.name.clone(), l)).collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            if wanted.get(&name).is_some_and(|l| l.spec == self.running[&name].spec) {
                continue;
            }
            if let Some(r) = self.running.remove(&name) {
                let _ = r.stop.send(());
                let _ = r.task.await;
                tracing::info!(exporter = %name, "flow exporter stopped");
            }
        }
        for (name, log) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            let (stop, stopped) = oneshot::channel();
            let spec = log.spec.clone();
            tracing::info!(exporter = %name, sink = ?log.sink, "flow exporter started");
            let task = tokio::spawn(run(Arc::new(log), self.cx.clone(), stopped));
            self.running.insert(name, Running { spec, stop, task });
        }
        self.cx.metrics.set_exporters(self.running.len());
    }

    pub async fn stop_all(&mut self) {
        self.apply(Vec::new()).await;
    }
}

/// Reads `path` every [`RELOAD_INTERVAL`] and applies it when its text
/// changes, until `stop`, when every exporter writes out what it holds.
/// No file is no export (a ConfigMap may be optional).
pub fn spawn_watch(path: PathBuf, cx: Context, mut stop: oneshot::Receiver<()>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut exporters = Exporters::new(cx.clone());
        let mut last: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
                Err(e) => {
                    let e = format!("reading {}: {e}", path.display());
                    if last_error.as_ref() != Some(&e) {
                        tracing::error!(error = %e, "flow export configuration unreadable; exporters unchanged");
                        cx.metrics.export_reload(false);
                        last_error = Some(e);
                    }
                    None
                }
            };
            if let Some(text) = text
                && last.as_ref() != Some(&text)
            {
                match config::parse(&text) {
                    Ok(logs) => {
                        tracing::info!(path = %path.display(), exporters = logs.len(), "flow export configuration applied");
                        exporters.apply(logs).await;
                        cx.metrics.export_reload(true);
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %weir_error::Report(&e), "flow export configuration refused; exporters unchanged");
                        cx.metrics.export_reload(false);
                    }
                }
                last = Some(text);
                last_error = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                _ = &mut stop => break,
            }
        }
        exporters.stop_all().await;
    })
}

/// One exporter: follows the store until told to stop, then hands its
/// last batch over and waits for its writer or sender to finish.
async fn run(log: Arc<FlowLog>, cx: Context, mut stop: oneshot::Receiver<()>) {
    let name = log.spec.name.clone();
    let mut flows = cx.store.follow();
    let (tx, rx) = mpsc::channel::<Vec<Item>>(QUEUE);
    let sink = match &log.sink {
        Sink::File {
            path,
            max_bytes,
            backups,
        } => {
            // A thread of its own, not the runtime's blocking pool: the
            // agent keeps two blocking threads for the API and the
            // controllers, and a writer holds its thread as long as it runs.
            let (path, max, backups, metrics, name) =
                (path.clone(), *max_bytes, *backups, cx.metrics.clone(), name.clone());
            let (done, finished) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("export-{name}"))
                .spawn(move || {
                    write_file(rx, path, max, backups, &*metrics, &name);
                    let _ = done.send(());
                });
            tokio::spawn(async move {
                match thread {
                    Ok(_) => {
                        let _ = finished.await;
                    }
                    Err(e) => tracing::error!(error = %weir_error::Report(&e), "starting a flow export writer failed"),
                }
            })
        }
        Sink::Otlp { endpoint, headers } => {
            let client = otlp::Client::new(endpoint, headers);
            let (metrics, node, name) = (cx.metrics.clone(), cx.node.clone(), name.clone());
            tokio::spawn(async move {
                match client {
                    Ok(c) => send_otlp(rx, c, &node, &*metrics, &name).await,
                    Err(e) => {
                        tracing::error!(exporter = %name, error = %weir_error::Report(&e), "OTLP endpoint unusable")
                    }
                }
            })
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(BATCH_WAIT);
    // Aggregated: groups fold here and go out once per interval.
    let mut groups = log.aggregation.as_ref().map(|a| new_groups(&a.keys));
    let mut window = tokio::time::interval(
        log.aggregation
            .as_ref()
            .map_or(Duration::from_secs(3600), |a| a.interval),
    );
    window.tick().await;
    let mut window_start = SystemTime::now();
    let hand_over = |batch: &mut Vec<Item>| {
        if batch.is_empty() {
            return;
        }
        let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
        if let Err(e) = tx.try_send(full) {
            let (reason, lost) = match e {
                mpsc::error::TrySendError::Full(b) => ("queue_full", b.len()),
                mpsc::error::TrySendError::Closed(b) => ("write_failed", b.len()),
            };
            cx.metrics.export_dropped(&name, reason, lost as u64);
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => hand_over(&mut batch),
            _ = window.tick(), if groups.is_some() => {
                if let (Some(g), Some(a)) = (groups.as_mut(), &log.aggregation) {
                    let folded = std::mem::replace(g, new_groups(&a.keys));
                    let end = SystemTime::now();
                    batch.extend(group_items(&folded, window_start, end, &cx.node));
                    window_start = end;
                    hand_over(&mut batch);
                }
            }
            got = flows.recv() => match got {
                Ok(record) => {
                    if let Some(g) = groups.as_mut() {
                        if log.filters.is_empty() || log.filters.matches(record.flow()) {
                            g.add(record.flow());
                        }
                    } else if let Some(item) = item(&log, &record, &cx.node) {
                        batch.push(item);
                        if batch.len() >= BATCH {
                            hand_over(&mut batch);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => cx.metrics.export_dropped(&name, "lagged", n),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    hand_over(&mut batch);
    drop(tx);
    let _ = sink.await;
}

/// The flow through this exporter's filters and mask, as protojson.
fn item(log: &FlowLog, record: &FlowRecord, node: &str) -> Option<Item> {
    if !log.filters.is_empty() && !log.filters.matches(record.flow()) {
        return None;
    }
    let encoded = record.encoded(node);
    let masked;
    let bytes = match &log.mask {
        Some(m) => {
            masked = encoded.masked(m);
            masked.as_bytes()
        }
        None => encoded.as_bytes(),
    };
    Some(Item {
        json: weir_proto::jsonpb::to_json(".observer.GetFlowsResponse", bytes)?,
        time_nanos: record.time_nanos(),
        group: false,
    })
}

/// Connections an exporter's groups remember per interval (to count each
/// once); past it a connection may count twice in a window.
const GROUP_CONNECTIONS: usize = 100_000;

fn new_groups(keys: &[weir_proto::aggregate::Key]) -> weir_proto::aggregate::Aggregate {
    weir_proto::aggregate::Aggregate::with_connections(keys.to_vec(), GROUP_CONNECTIONS)
}

/// One record per group: `weir observe --aggregate-by -o json`'s object,
/// with the window and the node.
fn group_items(groups: &weir_proto::aggregate::Aggregate, start: SystemTime, end: SystemTime, node: &str) -> Vec<Item> {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    };
    let stamp = |t: SystemTime| weir_proto::time::protojson(&weir_proto::time::to_timestamp(t));
    groups
        .json()
        .into_iter()
        .map(|mut g| {
            g["window_start"] = stamp(start).into();
            g["window_end"] = stamp(end).into();
            g["node_name"] = node.into();
            Item {
                json: g,
                time_nanos: nanos(end),
                group: true,
            }
        })
        .collect()
}

/// The file writer, on a thread of its own: writes each batch and flushes
/// it. A file that cannot be opened or written loses the batch (counted)
/// and is opened again for the next.
fn write_file(
    mut rx: mpsc::Receiver<Vec<Item>>,
    path: PathBuf,
    max: u64,
    backups: u32,
    metrics: &dyn FlowMetrics,
    name: &str,
) {
    let mut out: Option<file::RotatingFile> = None;
    let mut failures = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        let n = batch.len() as u64;
        let result = (|| -> std::io::Result<()> {
            if out.is_none() {
                out = Some(file::RotatingFile::open(&path, max, backups)?);
            }
            let f = out.as_mut().expect("opened above");
            for item in &batch {
                f.write_line(&serde_json::to_vec(&item.json).map_err(std::io::Error::other)?)?;
            }
            f.flush()
        })();
        match result {
            Ok(()) => metrics.export_flows(name, n),
            Err(e) => {
                out = None;
                metrics.export_dropped(name, "write_failed", n);
                if failures.is_multiple_of(100) {
                    tracing::error!(exporter = %name, path = %path.display(), error = %weir_error::Report(&e), "writing exported flows failed");
                }
                failures += 1;
            }
        }
    }
}

/// The OTLP sender: one export per batch, in order.
async fn send_otlp(
    mut rx: mpsc::Receiver<Vec<Item>>,
    mut client: otlp::Client,
    node: &str,
    metrics: &dyn FlowMetrics,
    name: &str,
) {
    let mut failures = 0u64;
    while let Some(batch) = rx.recv().await {
        let observed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let records = batch
            .iter()
            .map(|i| match i.group {
                true => otlp::group_record(&i.json, i.time_nanos, observed),
                false => otlp::record(&i.json, i.time_nanos, observed),
            })
            .collect();
        match client.export(node, records).await {
            otlp::Outcome::Sent { accepted, rejected } => {
                metrics.export_flows(name, accepted);
                if rejected > 0 {
                    metrics.export_dropped(name, "rejected", rejected);
                }
            }
            otlp::Outcome::Failed(why) => {
                metrics.export_dropped(name, "export_failed", batch.len() as u64);
                if failures.is_multiple_of(100) {
                    tracing::warn!(exporter = %name, error = %why, "exporting flows to the collector failed");
                }
                failures += 1;
            }
        }
    }
}
