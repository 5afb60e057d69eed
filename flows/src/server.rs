//! The agent's Observer API (Hubble's `observer.Observer`, weir_proto):
//! GetFlows over the flow store with Hubble's filters and windows,
//! ServerStatus, GetNodes (this node) and GetNamespaces, plus the gRPC
//! health service `hubble status` checks and reflection for grpcurl.
//! Served on a root-only Unix socket, and on TCP only when configured
//! (mutual TLS, or plaintext on loopback or with `--hubble-insecure`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weir_proto::encoded::EncodedResponse;
use weir_proto::encoded::observer_server::{Observer, ObserverServer};
use weir_proto::filter::FlowFilters;
use weir_proto::flow::{LostEvent, LostEventSource};
use weir_proto::mask::Mask;
use weir_proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Namespace, Node, ServerStatusRequest, ServerStatusResponse, get_flows_response,
};
use weir_proto::relay::NodeState;
use weir_proto::time::{timestamp_nanos, to_timestamp};

use crate::store::{FlowRecord, FlowStore};

/// How many responses may wait for a slow client before the sender waits
/// (a follower then lags in the broadcast, which counts what it loses).
const STREAM_BUFFER: usize = 1024;

/// Which flows a request wants, compiled once.
pub struct Query {
    pub filters: FlowFilters,
    pub number: u64,
    pub first: bool,
    pub follow: bool,
    pub since: Option<i128>,
    pub until: Option<i128>,
}

impl Query {
    pub fn new(r: &GetFlowsRequest) -> Result<Self, Status> {
        let filters =
            FlowFilters::compile(&r.whitelist, &r.blacklist).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let since = r.since.as_ref().map(timestamp_nanos);
        let until = r.until.as_ref().map(timestamp_nanos);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Status::invalid_argument("since is after until"));
        }
        if r.first && r.follow {
            return Err(Status::invalid_argument("first and follow cannot be combined"));
        }
        Ok(Self {
            filters,
            number: r.number,
            first: r.first,
            follow: r.follow,
            since,
            until,
        })
    }

    /// In the window and through the filters (the flow is built only when
    /// there is a filter to look at it).
    pub fn wants(&self, r: &FlowRecord) -> bool {
        let t = r.time_nanos();
        self.since.is_none_or(|s| t >= s)
            && self.until.is_none_or(|u| t <= u)
            && (self.filters.is_empty() || self.filters.matches(r.flow()))
    }

    /// What of the stored flows (oldest first) to send: the last `number`
    /// (the first with `first`), all of the window when no number is given
    /// with a window, none of the past when following with no number.
    pub fn select<'a>(&self, stored: &'a [Arc<FlowRecord>]) -> Vec<&'a Arc<FlowRecord>> {
        let mut matching = stored.iter().filter(|f| self.wants(f));
        let number = match self.number {
            0 if self.since.is_some() || self.until.is_some() || self.first => usize::MAX,
            0 if self.follow => 0,
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if self.first {
            return matching.take(number).collect();
        }
        let all: Vec<_> = matching.by_ref().collect();
        let skip = all.len().saturating_sub(number);
        all.into_iter().skip(skip).collect()
    }
}

pub struct ObserverService {
    pub store: Arc<FlowStore>,
    pub stats: Arc<super::FlowStats>,
    pub node: String,
    pub address: String,
    pub started: Instant,
    pub streams: Arc<Streams>,
}

/// At most this many GetFlows streams at once, from all clients...
pub const MAX_STREAMS: usize = 64;
/// ...and from one client (a TCP peer's address; every local client of the
/// unix socket counts as one).
pub const MAX_STREAMS_PER_CLIENT: usize = 16;

/// Requests matching the stored flows at once. The agent has two blocking
/// threads, shared with the CNI calls and the controllers' map and netlink
/// work: matching may hold one of them, never both, so an ADD never queues
/// behind GetFlows (it did: about 1 s per ADD under six hammering clients,
/// 20 ms without them).
const MATCHING_AT_ONCE: usize = 1;

/// The GetFlows streams open, per client: a client cannot hold the agent's
/// workers and memory with more than its share of followers.
#[derive(Debug)]
pub struct Streams {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    matching: tokio::sync::Semaphore,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            open: Default::default(),
            matching: tokio::sync::Semaphore::new(MATCHING_AT_ONCE),
        }
    }
}

/// One open stream, counted until dropped (its task ends).
pub struct StreamPermit {
    streams: Arc<Streams>,
    client: String,
}

impl Streams {
    /// A permit for one more stream of `client`, or RESOURCE_EXHAUSTED
    /// saying which limit it met.
    pub fn open(self: &Arc<Self>, client: &str) -> Result<StreamPermit, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(client).copied().unwrap_or(0);
        if total >= MAX_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "{total} GetFlows streams are open on this agent, the most it serves at once"
            )));
        }
        if mine >= MAX_STREAMS_PER_CLIENT {
            return Err(Status::resource_exhausted(format!(
                "{mine} GetFlows streams of this client are open, the most one client may hold"
            )));
        }
        *open.entry(client.to_owned()).or_default() += 1;
        Ok(StreamPermit {
            streams: self.clone(),
            client: client.to_owned(),
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A flow's response: encoded once, on its first read, and shared by every
/// client's stream after.
fn response(node: &str, r: &FlowRecord) -> EncodedResponse {
    r.encoded(node).clone()
}

fn lost(node: &str, n: u64) -> EncodedResponse {
    EncodedResponse::of(&GetFlowsResponse {
        time: Some(to_timestamp(SystemTime::now())),
        node_name: node.to_owned(),
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: n,
            ..Default::default()
        })),
    })
}

impl ObserverService {
    pub fn into_server(self) -> ObserverServer<Self> {
        // Flows are large only when many: let clients ask for what they want.
        ObserverServer::new(self).max_decoding_message_size(4 << 20)
    }

    fn flows_rate(&self, stored: &[Arc<FlowRecord>]) -> f64 {
        let minute_ago = timestamp_nanos(&to_timestamp(SystemTime::now() - Duration::from_secs(60)));
        stored.iter().filter(|r| r.time_nanos() >= minute_ago).count() as f64 / 60.0
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = ReceiverStream<Result<EncodedResponse, Status>>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let client = match request.remote_addr() {
            Some(a) => a.ip().to_string(),
            None => "local".to_owned(),
        };
        let permit = self.streams.open(&client)?;
        let query = Query::new(request.get_ref())?;
        // Only the fields the client asked for go on the wire. Paths
        // Hubble's Flow has and weir's has not (the stock CLI asks for
        // `l7`) select nothing.
        let mask = match &request.get_ref().field_mask {
            Some(fm) if !fm.paths.is_empty() => Some(Mask::for_response(
                Mask::for_flow(&fm.paths, true).map_err(|e| Status::invalid_argument(e.to_string()))?,
            )),
            _ => None,
        };
        let (stored, follow) = if query.follow {
            let (s, rx) = self.store.snapshot_and_follow();
            (s, Some(rx))
        } else {
            (self.store.snapshot(), None)
        };
        // Matching the whole store is the one long computation a request
        // asks for: off the async workers, which serve CNI calls too, and
        // on one blocking thread at most (MATCHING_AT_ONCE).
        let _matching = self
            .streams
            .matching
            .acquire()
            .await
            .map_err(|e| Status::internal(format!("matching flows: {e}")))?;
        let (query, past) = tokio::task::spawn_blocking(move || {
            let past: Vec<Arc<FlowRecord>> = query.select(&stored).into_iter().cloned().collect();
            (query, past)
        })
        .await
        .map_err(|e| Status::internal(format!("matching flows: {e}")))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let node = self.node.clone();
        let shape = move |r: EncodedResponse| match &mask {
            Some(m) => r.masked(m),
            None => r,
        };
        tokio::spawn(async move {
            let _permit = permit;
            for r in past {
                if tx.send(Ok(shape(response(&node, &r)))).await.is_err() {
                    return;
                }
            }
            let Some(mut follow) = follow else { return };
            loop {
                let until_passed = async {
                    match query.until {
                        Some(u) => {
                            let now = timestamp_nanos(&to_timestamp(SystemTime::now()));
                            let wait = u64::try_from(u - now).unwrap_or(0);
                            tokio::time::sleep(Duration::from_nanos(wait)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                let next = tokio::select! {
                    next = follow.recv() => next,
                    () = until_passed => return,
                    () = tx.closed() => return,
                };
                let msg = match next {
                    Ok(r) if query.wants(&r) => shape(response(&node, &r)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => lost(&node, n),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.node.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                address: self.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: self.started.elapsed().as_nanos() as u64,
                num_flows: self.store.len() as u64,
                max_flows: self.store.capacity() as u64,
                seen_flows: self.store.seen(),
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let mut names: Vec<String> = self
            .store
            .snapshot()
            .iter()
            .flat_map(|r| [r.named.src.clone(), r.named.dst.clone()])
            .filter(|e| !e.namespace.is_empty())
            .map(|e| e.namespace.clone())
            .collect();
        names.sort();
        names.dedup();
        Ok(Response::new(GetNamespacesResponse {
            namespaces: names
                .into_iter()
                .map(|namespace| Namespace {
                    cluster: String::new(),
                    namespace,
                })
                .collect(),
        }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let stored = self.store.snapshot();
        Ok(Response::new(ServerStatusResponse {
            num_flows: stored.len() as u64,
            max_flows: self.store.capacity() as u64,
            seen_flows: self.store.seen(),
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: format!("weir {}", env!("CARGO_PKG_VERSION")),
            flows_rate: self.flows_rate(&stored),
            weir_lost_events: self.stats.lost.load(std::sync::atomic::Ordering::Relaxed),
            weir_undecodable_events: self.stats.undecodable.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }
}

/// Serves the Observer API on the Unix socket, and on `tcp` when given,
/// until the task is dropped.
pub async fn serve(unix: tokio::net::UnixListener, tcp: Option<weir_proto::server::Tcp>, service: ObserverService) {
    weir_proto::server::serve(unix, tcp, service.into_server()).await
}

/// The TCP side (`--hubble-listen`): bound, with mutual TLS from `tls`
/// (its files followed as they change). Loud, not fatal, like metrics:
/// when it cannot be set up the agent serves flows on its Unix socket
/// alone, and never falls back to plaintext.
pub async fn bind_tcp(
    addr: std::net::SocketAddr,
    tls: Option<weir_proto::tls::ServerFiles>,
) -> Option<weir_proto::server::Tcp> {
    let tls = match tls.map(|f| weir_proto::tls::ServerTls::watch(f, weir_proto::tls::RELOAD_INTERVAL)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            tracing::error!(%addr, error = %weir_error::Report(&e), "observer: TLS files do not load; no Observer API on TCP");
            return None;
        }
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Some(weir_proto::server::Tcp { listener, tls }),
        Err(e) => {
            tracing::error!(%addr, error = %weir_error::Report(&e), "observer: cannot listen; no Observer API on TCP");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::flow::Flow;

    fn stored(n: usize) -> Vec<Arc<FlowRecord>> {
        (0..n)
            .map(|i| {
                Arc::new(FlowRecord::of_flow(Flow {
                    time: Some(prost_types::Timestamp {
                        seconds: 1000 + i as i64,
                        nanos: 0,
                    }),
                    node_name: format!("{i}"),
                    ..Default::default()
                }))
            })
            .collect()
    }

    fn names(v: Vec<&Arc<FlowRecord>>) -> Vec<String> {
        v.into_iter().map(|r| r.flow().node_name.clone()).collect()
    }

    #[test]
    fn number_first_since_until_select_like_hubble() {
        let s = stored(10);
        let q = |r: GetFlowsRequest| Query::new(&r).unwrap();
        assert_eq!(
            names(
                q(GetFlowsRequest {
                    number: 3,
                    ..Default::default()
                })
                .select(&s)
            ),
            ["7", "8", "9"]
        );
        assert_eq!(
            names(
                q(GetFlowsRequest {
                    number: 2,
                    first: true,
                    ..Default::default()
                })
                .select(&s)
            ),
            ["0", "1"]
        );
        let since = Some(prost_types::Timestamp {
            seconds: 1005,
            nanos: 0,
        });
        let until = Some(prost_types::Timestamp {
            seconds: 1006,
            nanos: 0,
        });
        assert_eq!(
            names(
                q(GetFlowsRequest {
                    since,
                    until,
                    ..Default::default()
                })
                .select(&s)
            ),
            ["5", "6"]
        );
        assert!(
            q(GetFlowsRequest {
                follow: true,
                ..Default::default()
            })
            .select(&s)
            .is_empty()
        );
        assert_eq!(
            q(GetFlowsRequest {
                number: 10_000_000,
                ..Default::default()
            })
            .select(&s)
            .len(),
            10
        );
    }

    #[test]
    fn contradictions_are_invalid_arguments() {
        let since = Some(prost_types::Timestamp { seconds: 2, nanos: 0 });
        let until = Some(prost_types::Timestamp { seconds: 1, nanos: 0 });
        let err = Query::new(&GetFlowsRequest {
            since,
            until,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let bad = weir_proto::flow::FlowFilter {
            source_ip: vec!["nope".into()],
            ..Default::default()
        };
        let err = Query::new(&GetFlowsRequest {
            whitelist: vec![bad],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("source_ip"), "{}", err.message());
    }

    #[test]
    fn one_client_holds_at_most_its_share_of_streams_and_the_agent_a_bound() {
        let streams = Arc::new(Streams::default());
        let mine: Vec<StreamPermit> = (0..MAX_STREAMS_PER_CLIENT)
            .map(|_| streams.open("10.0.0.1").unwrap())
            .collect();
        let err = streams.open("10.0.0.1").err().expect("over its share");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("this client"), "{}", err.message());
        let other = streams.open("local").expect("another client is served");
        drop(other);
        drop(mine);
        let _again = streams.open("10.0.0.1").expect("closed streams count no more");
        let mut all = Vec::new();
        for i in 0..MAX_STREAMS - 1 {
            all.push(streams.open(&format!("10.1.0.{i}")).unwrap());
        }
        let err = streams.open("10.9.9.9").err().expect("the agent's bound");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("on this agent"), "{}", err.message());
    }
}
