//! The local API: one JSON request and one JSON reply per line over a Unix
//! socket that only root can open.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use weir_agent_api::{API_VERSION, ApiError, Envelope, ErrorCode, Reply, Request, Response};

use crate::cluster::ClusterState;
use crate::dataplane::Dataplane;
use crate::endpoints::Shared;
use crate::sync::SyncStatus;

/// Requests larger than this are not CNI calls.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the socket: stale socket files from a previous run are replaced,
/// the directory is root-only and the socket mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve<D: Dataplane + 'static>(
    listener: UnixListener,
    endpoints: Shared<D>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<SyncStatus>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let endpoints = endpoints.clone();
                let cluster = cluster.clone();
                let sync = sync.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, endpoints, cluster, sync).await {
                        tracing::debug!(error = %e, "api connection");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "accept on api socket"),
        }
    }
}

async fn handle<D: Dataplane + 'static>(
    stream: UnixStream,
    endpoints: Shared<D>,
    cluster: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<SyncStatus>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(MAX_REQUEST as u64)
        .read_line(&mut line)
        .await?;
    let reply = match decode(&line) {
        Ok(request) => {
            let span = tracing::info_span!("api", op = op_name(&request));
            let cluster = cluster.borrow().clone();
            let result = tokio::task::spawn_blocking(move || {
                let _enter = span.enter();
                dispatch(request, &endpoints, &cluster, &sync)
            })
            .await
            .unwrap_or_else(|e| Err(ApiError::new(ErrorCode::Internal, format!("handler panicked: {e}"))));
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
    }
}

fn dispatch<D: Dataplane>(
    request: Request,
    endpoints: &Shared<D>,
    cluster: &ClusterState,
    sync: &SyncStatus,
) -> Result<Response, ApiError> {
    let mut eps = endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match request {
        Request::EndpointAdd(add) => eps.add(add, cluster),
        Request::EndpointDel(r) => eps.delete(&r),
        Request::EndpointGet(r) => eps.get(&r),
        Request::EndpointList => eps.list(),
        Request::Gc { keep } => eps.gc(&keep),
        Request::Status => eps.status().map(|r| match r {
            Response::Status(mut s) => {
                s.services_applied = sync.services();
                Response::Status(s)
            }
            other => other,
        }),
    }
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
