//! weir-relay: one Observer API for the whole cluster. It keeps a
//! connection to every node's agent (a static list; Kubernetes discovery
//! comes with the Kubernetes issue), merges their `GetFlows` streams in
//! time order, and answers ServerStatus, GetNodes and GetNamespaces for all
//! of them.
//!
//! Failure is the normal case here: a node that goes away is reported
//! (`NodeStatusEvent` in the stream, `ServerStatus` counts, `GetNodes`
//! state) and rejoined when it comes back while the others keep
//! streaming; every call to an agent has a deadline, so a hung agent costs
//! a timeout, not a stuck client; and a slow client never slows the
//! agents: each client has a bounded queue, and what does not fit is
//! dropped and reported to it as lost.
//!
//! Agents reached over TCP are reached with mutual TLS ([`AgentTls`]): the
//! relay presents its client certificate and checks each agent's for a
//! name made from the node's ([`AgentTls::server_name_for`]).

pub mod discover;
pub mod map;
pub mod ui;
pub mod whatif;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use weir_proto::client::{Server, Tls, connect_with};
use weir_proto::flow::{LostEvent, LostEventSource};
use weir_proto::observer::observer_client::ObserverClient;
use weir_proto::observer::observer_server::{Observer, ObserverServer};
use weir_proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Namespace, Node, ServerStatusRequest, ServerStatusResponse, Tls as NodeTls, get_flows_response,
};
use weir_proto::relay::{NodeState, NodeStatusEvent};
use weir_proto::time::{timestamp_nanos, to_timestamp};
use weir_proto::tls::ClientTls;

/// Deadlines and sizes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connecting to an agent, and every unary call to it.
    pub call_timeout: Duration,
    /// How often a connected agent is asked whether it still answers.
    pub health_interval: Duration,
    /// A non-following stream that sends nothing for this long is given up.
    pub idle_timeout: Duration,
    /// Responses queued for one client before new ones are dropped.
    pub client_buffer: usize,
    /// How long flows wait to be put in time order across nodes.
    pub sort_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(3),
            health_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            client_buffer: 4096,
            sort_window: Duration::from_millis(200),
        }
    }
}

/// The name an agent's certificate is checked against by default:
/// `{node}` is the node's name with its dots made dashes (one DNS label),
/// so one wildcard certificate (`*.weir-agent.weir.dev`) serves every
/// agent, and per-node certificates work too.
pub const AGENT_SERVER_NAME: &str = "{node}.weir-agent.weir.dev";

/// How the relay reaches agents over TCP: its client certificate and the
/// CA of the agents' (followed as the files change), and the name each
/// agent's certificate must carry.
#[derive(Debug, Clone)]
pub struct AgentTls {
    pub config: ClientTls,
    /// A DNS name, `{node}` standing for the node's name
    /// ([`AGENT_SERVER_NAME`]).
    pub server_name: String,
}

impl AgentTls {
    /// The name `node`'s agent must present: agents are reached by node IP,
    /// which changes and is rarely in a certificate; the node's name under
    /// a fixed domain is what one certificate for every agent can carry.
    pub fn server_name_for(&self, node: &str) -> String {
        self.server_name.replace("{node}", &node.replace('.', "-"))
    }

    fn for_peer(&self, peer: &Peer) -> Option<Tls> {
        match peer.server {
            // Local, guarded by the socket's mode: no TLS.
            Server::Unix(_) => None,
            Server::Tcp(_) => Some(Tls {
                config: self.config.clone(),
                server_name: self.server_name_for(&peer.name),
            }),
        }
    }
}

/// One node's agent as the relay sees it.
pub struct Peer {
    pub name: String,
    pub server: Server,
    /// The channel while the agent answers, `None` while it does not.
    conn: watch::Sender<Option<Channel>>,
    last_error: Mutex<String>,
    /// Set when the peer leaves the relay's list: its health task ends.
    gone: std::sync::atomic::AtomicBool,
}

impl Peer {
    fn state(&self) -> NodeState {
        if self.conn.borrow().is_some() {
            NodeState::NodeConnected
        } else {
            NodeState::NodeUnavailable
        }
    }

    fn channel(&self) -> Option<Channel> {
        self.conn.borrow().clone()
    }
}

/// `name=address` (or just an address, then the address is the name).
pub fn parse_peer(s: &str) -> Result<(String, Server), String> {
    let (name, addr) = match s.split_once('=') {
        Some((n, a)) if !n.is_empty() => (n.to_owned(), a),
        _ => (s.to_owned(), s),
    };
    let server = Server::parse(addr).map_err(|e| e.to_string())?;
    Ok((name, server))
}

pub struct Relay {
    /// The current peers: fixed (`--peer`) or followed (discovery).
    peers: std::sync::RwLock<Vec<Arc<Peer>>>,
    limits: Limits,
    started: Instant,
    /// Whether health tasks run (new peers get one at once).
    health: std::sync::atomic::AtomicBool,
    /// TLS to agents over TCP; plaintext without.
    agent_tls: Option<AgentTls>,
}

fn new_peer(name: String, server: Server) -> Arc<Peer> {
    Arc::new(Peer {
        name,
        server,
        conn: watch::channel(None).0,
        last_error: Mutex::new("not connected yet".into()),
        gone: std::sync::atomic::AtomicBool::new(false),
    })
}

impl Relay {
    /// A relay over these peers; call [`Relay::spawn_health`] to start
    /// connecting.
    pub fn new(peers: Vec<(String, Server)>, limits: Limits) -> Arc<Self> {
        Self::with_agent_tls(peers, limits, None)
    }

    /// [`Relay::new`], reaching agents over TCP with `agent_tls` (plaintext
    /// when `None`; Unix sockets never use TLS).
    pub fn with_agent_tls(peers: Vec<(String, Server)>, limits: Limits, agent_tls: Option<AgentTls>) -> Arc<Self> {
        Arc::new(Self {
            peers: std::sync::RwLock::new(peers.into_iter().map(|(n, s)| new_peer(n, s)).collect()),
            limits,
            started: Instant::now(),
            health: std::sync::atomic::AtomicBool::new(false),
            agent_tls,
        })
    }

    /// The peers now.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the peer list: a peer whose name and address stay keeps its
    /// connection; new ones start connecting, gone ones stop. Streams
    /// already open keep the peers they started with.
    pub fn set_peers(self: &Arc<Self>, wanted: Vec<(String, Server)>) {
        let mut fresh = Vec::new();
        {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            let mut next = Vec::new();
            for (name, server) in wanted {
                let same = peers
                    .iter()
                    .find(|p| p.name == name && p.server.to_string() == server.to_string());
                match same {
                    Some(p) => next.push(p.clone()),
                    None => {
                        let p = new_peer(name, server);
                        fresh.push(p.clone());
                        next.push(p);
                    }
                }
            }
            for old in peers.iter().filter(|o| !next.iter().any(|n| Arc::ptr_eq(n, o))) {
                tracing::info!(node = %old.name, "node left");
                old.gone.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            *peers = next;
        }
        for p in &fresh {
            tracing::info!(node = %p.name, address = %p.server, "node joined");
        }
        if self.health.load(std::sync::atomic::Ordering::Relaxed) {
            for p in fresh {
                self.watch_health(p);
            }
        }
    }

    /// One task per peer: connect, check it answers, and on failure mark it
    /// unavailable and reconnect with backoff (up to 5 s apart).
    pub fn spawn_health(self: &Arc<Self>) {
        self.health.store(true, std::sync::atomic::Ordering::Relaxed);
        for peer in self.peers() {
            self.watch_health(peer);
        }
    }

    fn watch_health(&self, peer: Arc<Peer>) {
        let limits = self.limits.clone();
        let tls = self.agent_tls.as_ref().and_then(|t| t.for_peer(&peer));
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !peer.gone.load(std::sync::atomic::Ordering::Relaxed) {
                let channel = peer.channel();
                let ok = match channel {
                    Some(ch) => status_of(ch, &limits).await.map(|_| ()),
                    None => match connect_with(&peer.server, limits.call_timeout, tls.as_ref()).await {
                        Ok(ch) => match status_of(ch.clone(), &limits).await {
                            Ok(_) => {
                                tracing::info!(node = %peer.name, "connected");
                                peer.conn.send_replace(Some(ch));
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(weir_error::report(&e)),
                    },
                };
                match ok {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        tokio::time::sleep(limits.health_interval).await;
                    }
                    Err(e) => {
                        let last = std::mem::replace(
                            &mut *peer.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                            e.clone(),
                        );
                        if peer.conn.borrow().is_some() {
                            tracing::warn!(node = %peer.name, error = %e, "node unavailable");
                        } else if last != e {
                            // Never reached, or for a new reason (a TLS
                            // refusal says why here): once per reason.
                            tracing::warn!(node = %peer.name, address = %peer.server, error = %e, "node not reachable");
                        }
                        peer.conn.send_replace(None);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            peer.conn.send_replace(None);
        });
    }

    /// Every node's flows for one request, merged in time order: what
    /// `GetFlows` streams, and what the UI reads.
    pub fn flows(
        self: &Arc<Self>,
        req: GetFlowsRequest,
    ) -> Result<mpsc::Receiver<Result<GetFlowsResponse, Status>>, Status> {
        // Judge the filters here too: a bad one is the client's error,
        // whichever nodes are up.
        weir_proto::filter::FlowFilters::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let relay = self.clone();
        let limits = relay.limits.clone();
        let (peer_tx, mut peer_rx) = mpsc::channel::<GetFlowsResponse>(limits.client_buffer);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peers = relay.peers();
        let unavailable: Vec<String> = peers
            .iter()
            .filter(|p| p.state() != NodeState::NodeConnected)
            .map(|p| p.name.clone())
            .collect();
        for peer in &peers {
            tokio::spawn(pump(
                peer.clone(),
                req.clone(),
                peer_tx.clone(),
                dropped.clone(),
                limits.clone(),
            ));
        }
        drop(peer_tx);
        let (tx, rx) = mpsc::channel(limits.client_buffer);
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            if !unavailable.is_empty() {
                let msg = node_status(NodeState::NodeUnavailable, unavailable, "not connected".into());
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            let mut merger = Merger::new(limits.client_buffer);
            let mut tick = tokio::time::interval(limits.sort_window / 2);
            let mut open = true;
            while open {
                tokio::select! {
                    r = peer_rx.recv() => match r {
                        Some(r) => {
                            merger.push(r);
                            // Whatever else is there, in one go.
                            loop {
                                match peer_rx.try_recv() {
                                    Ok(r) => merger.push(r),
                                    Err(mpsc::error::TryRecvError::Empty) => break,
                                    Err(mpsc::error::TryRecvError::Disconnected) => {
                                        open = false;
                                        break;
                                    }
                                }
                            }
                        }
                        None => open = false,
                    },
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                let horizon = timestamp_nanos(&to_timestamp(SystemTime::now() - limits.sort_window));
                let ready = if open { merger.ready(horizon) } else { merger.drain() };
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 && tx.send(Ok(lost_in_queue(lost))).await.is_err() {
                    return;
                }
                for r in ready {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    pub fn into_server(self: Arc<Self>) -> ObserverServer<RelayService> {
        ObserverServer::new(RelayService(self)).max_decoding_message_size(4 << 20)
    }
}

async fn status_of(ch: Channel, limits: &Limits) -> Result<ServerStatusResponse, String> {
    let mut client = ObserverClient::new(ch);
    let mut req = Request::new(ServerStatusRequest {});
    req.set_timeout(limits.call_timeout);
    match tokio::time::timeout(limits.call_timeout, client.server_status(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{}: {}", s.code(), weir_error::report(&s))),
        Err(_) => Err(format!("no answer within {:?}", limits.call_timeout)),
    }
}

fn node_status(state: NodeState, nodes: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        time: Some(to_timestamp(SystemTime::now())),
        node_name: String::new(),
        response_types: Some(get_flows_response::ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: nodes,
            message,
        })),
    }
}

fn lost_in_queue(n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        time: Some(to_timestamp(SystemTime::now())),
        node_name: String::new(),
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::ObserverEventsQueue as i32,
            num_events_lost: n,
            ..Default::default()
        })),
    }
}

fn time_of(r: &GetFlowsResponse) -> i128 {
    r.time.as_ref().map_or(0, timestamp_nanos)
}

/// A response ordered by its time (then by arrival, for equal times).
struct Timed(i128, u64, GetFlowsResponse);

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// Puts what several ordered streams send into one order: a response is
/// held until the sort window has passed (later responses from a slower
/// node may still be older), or the holding area is full.
pub struct Merger {
    heap: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    cap: usize,
}

impl Merger {
    pub fn new(cap: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, r: GetFlowsResponse) {
        self.seq += 1;
        self.heap.push(Reverse(Timed(time_of(&r), self.seq, r)));
    }

    /// What may go now: everything older than `horizon`, and the oldest
    /// beyond the cap.
    pub fn ready(&mut self, horizon: i128) -> Vec<GetFlowsResponse> {
        let mut out = Vec::new();
        while let Some(Reverse(t)) = self.heap.peek() {
            if t.0 <= horizon || self.heap.len() > self.cap {
                out.push(self.heap.pop().expect("peeked").0.2);
            } else {
                break;
            }
        }
        out
    }

    pub fn drain(&mut self) -> Vec<GetFlowsResponse> {
        self.ready(i128::MAX)
    }
}

pub struct RelayService(Arc<Relay>);

/// Streams one peer's flows for a client into `tx` (dropping what does not
/// fit, counted in `dropped`); with `follow`, rejoins the peer whenever it
/// comes back, asking for what came since.
async fn pump(
    peer: Arc<Peer>,
    mut req: GetFlowsRequest,
    tx: mpsc::Sender<GetFlowsResponse>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    limits: Limits,
) {
    use std::sync::atomic::Ordering;
    let mut conn = peer.conn.subscribe();
    let mut first = true;
    loop {
        let ch = conn.borrow_and_update().clone();
        let Some(ch) = ch else {
            if !req.follow {
                return;
            }
            if conn.changed().await.is_err() {
                return;
            }
            continue;
        };
        if !first {
            let _ = tx.try_send(node_status(
                NodeState::NodeConnected,
                vec![peer.name.clone()],
                String::new(),
            ));
        }
        first = false;
        let mut client = ObserverClient::new(ch).max_decoding_message_size(4 << 20);
        let opened = tokio::time::timeout(limits.call_timeout, client.get_flows(req.clone())).await;
        let mut stream = match opened {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                // The agents judge filters alike: the client hears it once.
                let _ = tx.try_send(node_status(
                    NodeState::NodeError,
                    vec![peer.name.clone()],
                    s.message().into(),
                ));
                return;
            }
            other => {
                let why = match other {
                    Ok(Err(s)) => s.message().to_owned(),
                    _ => "no answer in time".into(),
                };
                let _ = tx.try_send(node_status(NodeState::NodeUnavailable, vec![peer.name.clone()], why));
                if !req.follow {
                    return;
                }
                if conn.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let outcome = loop {
            let next = if req.follow {
                tokio::select! {
                    n = stream.next() => n,
                    // The health task saw the peer go: stop waiting on it.
                    changed = conn.changed() => {
                        if changed.is_err() || conn.borrow().is_none() {
                            break Some("node unavailable".to_owned());
                        }
                        continue;
                    }
                }
            } else {
                match tokio::time::timeout(limits.idle_timeout, stream.next()).await {
                    Ok(n) => n,
                    Err(_) => break Some(format!("sent nothing for {:?}", limits.idle_timeout)),
                }
            };
            match next {
                // History is finite: it waits for room (only this client's
                // stream from the agent waits; the agent's reader never
                // does). Live flows that find no room are dropped, counted.
                Some(Ok(r)) if !req.follow => {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
                Some(Ok(r)) => {
                    if tx.try_send(r).is_err() {
                        if tx.is_closed() {
                            return;
                        }
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Err(s)) => break Some(s.message().to_owned()),
                None => break None,
            }
        };
        match outcome {
            None if !req.follow => return,
            None => {}
            Some(why) => {
                let _ = tx.try_send(node_status(NodeState::NodeUnavailable, vec![peer.name.clone()], why));
                if !req.follow {
                    return;
                }
            }
        }
        // Rejoin with what comes from now on.
        req.number = 0;
        req.since = Some(to_timestamp(SystemTime::now()));
        if conn.changed().await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let rx = self.0.flows(request.into_inner())?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let relay = &self.0;
        let mut nodes = Vec::new();
        for peer in &relay.peers() {
            let tls = relay.agent_tls.as_ref().and_then(|t| t.for_peer(peer));
            let mut node = Node {
                name: peer.name.clone(),
                address: peer.server.to_string(),
                state: peer.state() as i32,
                tls: tls.map(|t| NodeTls {
                    enabled: true,
                    server_name: t.server_name,
                }),
                ..Default::default()
            };
            if let Some(ch) = peer.channel()
                && let Ok(s) = status_of(ch, &relay.limits).await
            {
                node.version = s.version;
                node.uptime_ns = s.uptime_ns;
                node.num_flows = s.num_flows;
                node.max_flows = s.max_flows;
                node.seen_flows = s.seen_flows;
            }
            nodes.push(node);
        }
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let relay = &self.0;
        let mut all: Vec<Namespace> = Vec::new();
        for ch in relay.peers().iter().filter_map(|p| p.channel()) {
            let mut client = ObserverClient::new(ch);
            let mut req = Request::new(GetNamespacesRequest {});
            req.set_timeout(relay.limits.call_timeout);
            if let Ok(Ok(r)) = tokio::time::timeout(relay.limits.call_timeout, client.get_namespaces(req)).await {
                all.extend(r.into_inner().namespaces);
            }
        }
        all.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        all.dedup_by(|a, b| a.namespace == b.namespace);
        Ok(Response::new(GetNamespacesResponse { namespaces: all }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let relay = &self.0;
        let mut out = ServerStatusResponse {
            uptime_ns: relay.started.elapsed().as_nanos() as u64,
            version: format!("weir-relay {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let (mut connected, mut unavailable) = (0u32, Vec::new());
        for peer in &relay.peers() {
            let status = match peer.channel() {
                Some(ch) => status_of(ch, &relay.limits).await.ok(),
                None => None,
            };
            match status {
                Some(s) => {
                    connected += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.flows_rate += s.flows_rate;
                    out.weir_lost_events += s.weir_lost_events;
                    out.weir_undecodable_events += s.weir_undecodable_events;
                }
                None => unavailable.push(peer.name.clone()),
            }
        }
        out.num_connected_nodes = Some(connected);
        out.num_unavailable_nodes = Some(unavailable.len() as u32);
        out.unavailable_nodes = unavailable;
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::flow::Flow;

    fn at(secs: i64, node: &str) -> GetFlowsResponse {
        GetFlowsResponse {
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            node_name: node.into(),
            response_types: Some(get_flows_response::ResponseTypes::Flow(Flow::default())),
        }
    }

    #[test]
    fn merges_in_time_order_within_the_window() {
        let mut m = Merger::new(100);
        for (t, n) in [(5, "a"), (3, "b"), (4, "a"), (9, "b")] {
            m.push(at(t, n));
        }
        let ready: Vec<i64> = m.ready(5_000_000_000).iter().map(|r| r.time.unwrap().seconds).collect();
        assert_eq!(ready, [3, 4, 5], "9 is still inside the window");
        assert_eq!(m.drain().len(), 1);
    }

    #[test]
    fn a_full_holding_area_lets_the_oldest_go() {
        let mut m = Merger::new(2);
        for t in [7, 6, 8] {
            m.push(at(t, "a"));
        }
        let ready: Vec<i64> = m.ready(0).iter().map(|r| r.time.unwrap().seconds).collect();
        assert_eq!(ready, [6]);
    }

    #[test]
    fn peers_are_name_equals_address() {
        assert_eq!(parse_peer("n1=unix:///run/a.sock").unwrap().0, "n1");
        assert_eq!(parse_peer("localhost:4244").unwrap().0, "localhost:4244");
        assert!(parse_peer("n1=nowhere").is_err());
    }
}
