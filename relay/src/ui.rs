//! The service map in the browser, served by the relay on its UI port
//! (`--ui-listen`, off unless given): the page and its script (embedded,
//! no outside fetch), the map as JSON and as a live stream
//! (server-sent events), and the flow table's live stream, selected with
//! `weir observe`'s own filter flags ([`weir_proto::flags`]).
//!
//! Every client is bounded: the map stream carries only the newest map (a
//! slow client skips maps, never queues them), a flow stream has the
//! relay's own bounded queue and reports what it dropped, and each kind of
//! stream has a fixed number of places.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use weir_proto::flags::{FLAGS, Occurrence};
use weir_proto::flow::{Endpoint, Flow, Verdict};
use weir_proto::observer::{GetFlowsRequest, get_flows_response::ResponseTypes};

use crate::Relay;
use crate::map::{MapLimits, ServiceMap};
use crate::whatif::PolicySource;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const MAP_JS: &str = include_str!("../ui/map.js");
const MAP_CSS: &str = include_str!("../ui/map.css");

/// Sizes of the UI.
#[derive(Debug, Clone)]
pub struct UiLimits {
    /// Flows read from the nodes' history when the relay starts.
    pub history: u64,
    /// Open map streams and flow streams, each.
    pub streams: usize,
    /// Rows a flow table starts with.
    pub table_rows: u64,
    /// How often the map is recomputed and sent.
    pub tick: Duration,
    pub map: MapLimits,
}

impl Default for UiLimits {
    fn default() -> Self {
        Self {
            history: 20_000,
            streams: 64,
            table_rows: 100,
            tick: Duration::from_secs(1),
            map: MapLimits::default(),
        }
    }
}

struct Ui {
    relay: Arc<Relay>,
    map: Arc<Mutex<ServiceMap>>,
    /// The newest map as JSON, made once per tick for every client.
    latest: watch::Receiver<Arc<str>>,
    map_streams: Arc<Semaphore>,
    flow_streams: Arc<Semaphore>,
    limits: UiLimits,
    /// Where policy checks read the cluster; none: not offered.
    policy: Option<PolicySource>,
    /// One policy check at a time: each reads every node's flows.
    checks: Arc<Semaphore>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Starts folding the relay's flows into the map, and returns the UI's
/// routes.
pub fn router(relay: Arc<Relay>, limits: UiLimits, policy: Option<PolicySource>) -> Router {
    let map = Arc::new(Mutex::new(ServiceMap::new(limits.map.clone())));
    tokio::spawn(feed(relay.clone(), map.clone(), limits.history));
    let (tx, latest) = watch::channel(Arc::<str>::from("{}"));
    tokio::spawn(publish(map.clone(), tx, limits.tick));
    let ui = Arc::new(Ui {
        relay,
        map,
        latest,
        map_streams: Arc::new(Semaphore::new(limits.streams)),
        flow_streams: Arc::new(Semaphore::new(limits.streams)),
        limits,
        policy,
        checks: Arc::new(Semaphore::new(1)),
    });
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/map.js",
            get(|| async { asset("text/javascript; charset=utf-8", MAP_JS) }),
        )
        .route("/map.css", get(|| async { asset("text/css; charset=utf-8", MAP_CSS) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/map", get(map_now))
        .route("/api/map/events", get(map_events))
        .route("/api/flows/events", get(flow_events))
        .route("/api/policy/check", post(policy_check))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(ui)
}

/// Serves the UI on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page loads nothing from anywhere else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Folds every flow the relay merges into the map; when the stream ends
/// (it follows, so only if the relay has no peers to follow), reopens it
/// from where it left.
async fn feed(relay: Arc<Relay>, map: Arc<Mutex<ServiceMap>>, history: u64) {
    let mut req = GetFlowsRequest {
        number: history,
        follow: true,
        ..Default::default()
    };
    loop {
        if let Ok(mut rx) = relay.flows(req.clone()) {
            while let Some(Ok(r)) = rx.recv().await {
                if let Some(ResponseTypes::Flow(f)) = r.response_types {
                    map.lock().unwrap_or_else(|p| p.into_inner()).add(&f);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        req.number = 0;
        req.since = Some(weir_proto::time::to_timestamp(SystemTime::now()));
    }
}

async fn publish(map: Arc<Mutex<ServiceMap>>, tx: watch::Sender<Arc<str>>, tick: Duration) {
    let mut every = tokio::time::interval(tick);
    let mut n = 0u64;
    loop {
        every.tick().await;
        let now = now_secs();
        let snapshot = {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            n += 1;
            if n.is_multiple_of(10) {
                m.expire(now);
            }
            m.snapshot(now, &[])
        };
        match serde_json::to_string(&snapshot) {
            Ok(json) => {
                tx.send_replace(Arc::from(json));
            }
            Err(e) => tracing::warn!(error = %weir_error::Report(&e), "service map not encoded"),
        }
        if tx.is_closed() && Arc::strong_count(&map) == 1 {
            return;
        }
    }
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn map_now(State(ui): State<Arc<Ui>>, RawQuery(q): RawQuery) -> Response {
    let namespaces: Vec<String> = query_pairs(q.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "namespace")
        .map(|(_, v)| v)
        .collect();
    let snapshot = ui
        .map
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshot(now_secs(), &namespaces);
    match serde_json::to_string(&snapshot) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// POST a change (the manifests as they would be applied): the recorded
/// connections whose verdict it would change, as `weir policy check -o
/// json` gives them, in one JSON object.
async fn policy_check(State(ui): State<Arc<Ui>>, body: String) -> Response {
    let json = |status: StatusCode, v: serde_json::Value| {
        (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
    };
    let Some(source) = &ui.policy else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "policy checks are off: start weir-relay with --policy-check (the API server) or --policy-check-manifests DIR"}),
        );
    };
    let Ok(_permit) = ui.checks.clone().try_acquire_owned() else {
        return busy();
    };
    match crate::whatif::check(&ui.relay, source, &body).await {
        Ok((report, warnings)) => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["changed"] = report.changed().into();
            v["warnings"] = warnings.into();
            json(StatusCode::OK, v)
        }
        Err(e @ crate::whatif::CheckError::Change(_)) => {
            json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => json(StatusCode::BAD_GATEWAY, serde_json::json!({"error": e.to_string()})),
    }
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        "too many open streams\n",
    )
        .into_response()
}

/// Ends with the stream: the place it held is free again.
fn holding<S: Stream>(s: S, permit: OwnedSemaphorePermit) -> impl Stream<Item = S::Item> {
    s.map(move |x| {
        let _held = &permit;
        x
    })
}

async fn map_events(State(ui): State<Arc<Ui>>) -> Response {
    let Ok(permit) = ui.map_streams.clone().try_acquire_owned() else {
        return busy();
    };
    let maps = WatchStream::new(ui.latest.clone())
        .map(|json| Ok::<_, Infallible>(Event::default().event("map").data(json.as_ref())));
    Sse::new(holding(maps, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The flow table of a node or an edge: `weir observe`'s filter flags as
/// the query (`?from-namespace=demo&from-workload=client&to-label=app=web`),
/// the newest rows first, then live.
async fn flow_events(State(ui): State<Arc<Ui>>, RawQuery(q): RawQuery) -> Response {
    let mut occurrences = Vec::new();
    for (key, value) in query_pairs(q.as_deref()) {
        let Some(flag) = FLAGS.iter().chain(&["not"]).find(|f| **f == key) else {
            return (StatusCode::BAD_REQUEST, format!("--{key} is not a filter flag\n")).into_response();
        };
        occurrences.push(Occurrence { flag, value });
    }
    let (whitelist, blacklist) = match weir_proto::flags::build(&occurrences) {
        Ok(lists) => lists,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Ok(permit) = ui.flow_streams.clone().try_acquire_owned() else {
        return busy();
    };
    let req = GetFlowsRequest {
        number: ui.limits.table_rows,
        follow: true,
        whitelist,
        blacklist,
        ..Default::default()
    };
    let rx = match ui.relay.flows(req) {
        Ok(rx) => rx,
        Err(s) => return (StatusCode::BAD_REQUEST, format!("{}\n", s.message())).into_response(),
    };
    let rows = ReceiverStream::new(rx).filter_map(|r| {
        let event = match r.ok()?.response_types? {
            ResponseTypes::Flow(f) => Event::default().event("flow").data(row(&f).to_string()),
            ResponseTypes::LostEvents(l) => Event::default().event("lost").data(l.num_events_lost.to_string()),
            _ => return None,
        };
        Some(Ok::<_, Infallible>(event))
    });
    Sse::new(holding(rows, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn endpoint_name(e: Option<&Endpoint>) -> String {
    let Some(e) = e else { return String::new() };
    if !e.pod_name.is_empty() {
        return format!("{}/{}", e.namespace, e.pod_name);
    }
    e.labels
        .iter()
        .find(|l| l.starts_with("reserved:"))
        .cloned()
        .unwrap_or_default()
}

/// One row of the flow table.
#[expect(
    deprecated,
    reason = "Summary is Hubble's one-line text, still what the table's tooltip shows"
)]
fn row(f: &Flow) -> serde_json::Value {
    use weir_proto::flow::layer4::Protocol;
    let (proto, sport, dport) = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => ("TCP", t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => ("UDP", u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => ("SCTP", s.source_port, s.destination_port),
        Some(Protocol::IcmPv4(_)) => ("ICMP", 0, 0),
        _ => ("", 0, 0),
    };
    let ip = f.ip.clone().unwrap_or_default();
    let d = f.weir.clone().unwrap_or_default();
    let verdict = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
    serde_json::json!({
        "time": f.time.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9),
        "node": f.node_name,
        "source": endpoint_name(f.source.as_ref()),
        "source_ip": ip.source,
        "source_port": sport,
        "destination": endpoint_name(f.destination.as_ref()),
        "destination_ip": ip.destination,
        "destination_port": dport,
        "protocol": proto,
        "verdict": verdict.as_str_name(),
        "event": d.event,
        "is_reply": f.is_reply,
        "drop_reason": d.drop_reason,
        "drop_reason_text": d.drop_reason_text,
        "policy": d.policy,
        "summary": f.summary,
    })
}
