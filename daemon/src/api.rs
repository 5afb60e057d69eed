//! The local API: one JSON request and one JSON reply per line over a Unix
//! socket that only root can open.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use weir_agent_api::{API_VERSION, ApiError, Envelope, ErrorCode, Reply, Request, Response};
use weir_proto::socket::{OwnSocket, SocketError};

use crate::cluster::ClusterState;
use crate::dataplane::Dataplane;
use crate::endpoints::Shared;
use crate::sync::SyncStatus;

/// Requests larger than this are not CNI calls.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the socket, mode 0600: a stale socket of an earlier run is
/// replaced, nothing else is (a live agent's socket, a file that is not a
/// socket, a directory others could swap it in: see [`weir_proto::socket`]).
/// Returns the listener and the record that lets the agent remove its own
/// socket, and only its own, on exit.
pub fn bind(path: &Path) -> Result<(UnixListener, OwnSocket), SocketError> {
    weir_proto::socket::bind(path)
}

/// At most this many API connections are served at once; more wait in
/// the socket's backlog. CNI calls are short: a node with more callers at
/// once than this is being hammered.
const MAX_CONNECTIONS: usize = 64;

/// A connection that has not sent its request by then is closed: idle
/// connections must not hold the agent's descriptors and slots.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Out of descriptors (or memory): accepting again at once would spin.
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

pub async fn serve<D: Dataplane + 'static>(
    listener: UnixListener,
    endpoints: Shared<D>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<SyncStatus>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Accept errors are logged at most once a second, with how many there were.
    let mut pause = std::time::Duration::from_millis(10);
    let (mut errors, mut last_log) = (0u64, None::<tokio::time::Instant>);
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.accept().await {
            Ok((stream, _)) => {
                pause = std::time::Duration::from_millis(10);
                let endpoints = endpoints.clone();
                let cluster = cluster.clone();
                let sync = sync.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, endpoints, cluster, sync, metrics).await {
                        tracing::debug!(error = %weir_error::Report(&e), "api connection");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                drop(slot);
                errors += 1;
                if last_log.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    tracing::warn!(error = %weir_error::Report(&e), errors, "accept on api socket failed");
                    (errors, last_log) = (0, Some(tokio::time::Instant::now()));
                }
                if is_resource_exhaustion(&e) {
                    // Let connections finish and free descriptors.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
            }
        }
    }
}

async fn handle<D: Dataplane + 'static>(
    stream: UnixStream,
    endpoints: Shared<D>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<SyncStatus>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Ok(r) => {
            r?;
        }
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the timeout",
            ));
        }
    }
    let reply = match std::str::from_utf8(&line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("request is not UTF-8: {e}")))
        .and_then(decode)
    {
        Ok(request) => {
            let op = op_name(&request);
            let span = tracing::info_span!("api", op);
            let cluster = cluster.borrow().clone();
            let started = std::time::Instant::now();
            let (eps, sync_) = (endpoints.clone(), sync.clone());
            let mut phases = AddPhases::default();
            let result = tokio::task::spawn_blocking(move || {
                let _enter = span.enter();
                let queued = started.elapsed();
                let (r, locked) = dispatch(request, &eps, &cluster, &sync_);
                let work = started.elapsed() - queued - locked;
                let generation = eps.lock().unwrap_or_else(|p| p.into_inner()).generation();
                r.map(|r| (r, generation, (queued, locked, work)))
            })
            .await
            .unwrap_or_else(|e| Err(ApiError::new(ErrorCode::Internal, format!("handler panicked: {e}"))))
            .map(|(r, generation, (queued, lock, work))| {
                phases = AddPhases {
                    queued,
                    lock,
                    work,
                    policy: std::time::Duration::ZERO,
                };
                (r, generation)
            });
            // A new pod answers only once the policy that selects it is in
            // the datapath (once the controller runs at all: before the
            // source synced there is no policy to wait for).
            let result = match result {
                Ok((r, generation)) if op == "endpoint_add" && sync.policy().is_some() => {
                    let t0 = std::time::Instant::now();
                    let programmed = sync.wait_policy(generation, POLICY_WAIT).await;
                    phases.policy = t0.elapsed();
                    if programmed {
                        Ok(r)
                    } else {
                        Err(ApiError::new(
                            ErrorCode::Datapath,
                            format!(
                                "the pod's network policy was not programmed within {}s",
                                POLICY_WAIT.as_secs()
                            ),
                        ))
                    }
                }
                other => other.map(|(r, _)| r),
            };
            if let Some(m) = &metrics
                && !matches!(op, "status" | "endpoint_trace" | "endpoint_list")
            {
                m.observe_cni(op, started.elapsed());
                if op == "endpoint_add" && result.is_ok() {
                    for (phase, took) in [
                        ("queued", phases.queued),
                        ("lock", phases.lock),
                        ("datapath", phases.work),
                        ("policy", phases.policy),
                    ] {
                        m.observe_cni_add_phase(phase, took);
                    }
                }
            }
            match result {
                Ok(r) => Reply::Ok(r),
                Err(e) => Reply::Error(e),
            }
        }
        Err(e) => Reply::Error(e),
    };
    let mut out = serde_json::to_vec(&reply).expect("replies serialize");
    out.push(b'\n');
    write.write_all(&out).await
}

use tokio::io::AsyncReadExt as _;

/// How long an ADD waits for the policy controller.
const POLICY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn decode(line: &str) -> Result<Request, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    match value.get("api").and_then(|v| v.as_str()) {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(bad(format!(
                "unsupported API version {other:?}; this agent speaks {API_VERSION:?}"
            )));
        }
        None => return Err(bad(format!("missing \"api\": this agent speaks {API_VERSION:?}"))),
    }
    serde_json::from_value::<Envelope>(value)
        .map(|e| e.request)
        .map_err(|e| bad(format!("invalid request: {e}")))
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::EndpointAdd(_) => "endpoint_add",
        Request::EndpointDel(_) => "endpoint_del",
        Request::EndpointGet(_) => "endpoint_get",
        Request::EndpointList => "endpoint_list",
        Request::Gc { .. } => "gc",
        Request::Status => "status",
        Request::EndpointTrace { .. } => "endpoint_trace",
    }
}

/// Where an ADD's time went: waiting for a blocking thread, for the
/// endpoints' lock (one request at a time changes them), in the datapath
/// (veth, maps, routes), for the policy controller to program the pod.
#[derive(Debug, Default, Clone, Copy)]
struct AddPhases {
    queued: std::time::Duration,
    lock: std::time::Duration,
    work: std::time::Duration,
    policy: std::time::Duration,
}

/// Runs `request` under the endpoints' lock; also returns how long the
/// lock was waited for.
fn dispatch<D: Dataplane>(
    request: Request,
    endpoints: &Shared<D>,
    cluster: &ClusterState,
    sync: &SyncStatus,
) -> (Result<Response, ApiError>, std::time::Duration) {
    let t0 = std::time::Instant::now();
    let mut eps = endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let locked = t0.elapsed();
    let r = match request {
        Request::EndpointAdd(add) => eps.add(add, cluster),
        Request::EndpointDel(r) => eps.delete(&r),
        Request::EndpointGet(r) => eps.get(&r),
        Request::EndpointList => eps.list(),
        Request::Gc { keep } => eps.gc(&keep),
        Request::EndpointTrace { pod, enabled } => eps.set_trace(&pod, enabled),
        Request::Status => eps.status().map(|r| match r {
            Response::Status(mut s) => {
                s.services_applied = sync.services();
                s.policy_applied = sync.policy();
                Response::Status(s)
            }
            other => other,
        }),
    };
    (r, locked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_other_versions_and_garbage_with_bad_request() {
        for line in [
            "{",
            r#"{"op":"status"}"#,
            r#"{"api":"weir.agent/v0","op":"status"}"#,
            r#"{"api":"weir.agent/v1","op":"fly"}"#,
        ] {
            assert_eq!(decode(line).unwrap_err().code, ErrorCode::BadRequest, "{line}");
        }
        assert_eq!(
            decode(r#"{"api":"weir.agent/v1","op":"status"}"#).unwrap(),
            Request::Status
        );
    }
}
