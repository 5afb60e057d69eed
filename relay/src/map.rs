//! The service map: the cluster's flows folded into workloads and the
//! edges between them. Pure: flows in, a [`Snapshot`] out; the relay feeds
//! it from its own merged stream and the UI reads the snapshots.
//!
//! A connection is seen by up to two nodes (the client's and the
//! backend's), each counting it from its own conntrack entry, so bytes and
//! handshakes are taken per connection (the largest counter either node
//! reported), never summed across nodes. Rates are over the last
//! [`RATE_WINDOW_SECS`] seconds of flow time, so the same flows always give
//! the same map.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;
use weir_proto::connections::Connections;
use weir_proto::flow::{Endpoint, Flow, Verdict};
use weir_proto::workload::WorkloadRef;

/// Rates are sums over this many seconds, divided by it.
pub const RATE_WINDOW_SECS: i64 = 10;
/// Handshake samples kept per edge for its percentiles.
const LATENCY_SAMPLES: usize = 256;

/// Bounds: the map never grows without limit, whatever the flows say.
#[derive(Debug, Clone)]
pub struct MapLimits {
    /// An edge (and a node with no edge left) unseen this long is forgotten.
    pub idle_secs: i64,
    pub max_edges: usize,
    /// Connections tracked for their counters.
    pub max_connections: usize,
}

impl Default for MapLimits {
    fn default() -> Self {
        Self {
            idle_secs: 15 * 60,
            max_edges: 20_000,
            max_connections: 100_000,
        }
    }
}

/// One end of an edge as `weir observe` selects it: the flags, without
/// their `--from-`/`--to-` prefix, each with its value.
pub type Selector = Vec<(String, String)>;

/// A node of the map: a workload, a pod without one, the world, a node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapNode {
    pub id: String,
    /// workload, pod, world, host, remote-node or unknown.
    pub kind: &'static str,
    /// Empty outside namespaces.
    pub namespace: String,
    pub name: String,
    /// The `weir observe` flags that select this node's flows.
    pub select: Selector,
}

/// Traffic between two nodes of the map, client to server.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Edge {
    pub id: String,
    pub from: String,
    pub to: String,
    /// `80/TCP`, as dialled at the backend.
    pub ports: BTreeSet<String>,
    /// The Services the client dialled, `namespace/name`.
    pub services: BTreeSet<String>,
    pub flows: u64,
    /// Connections opened (their first packet forwarded where it was
    /// seen), and those the server answered: a connection forwarded by
    /// the client's node and dropped at the server's is opened, never
    /// answered.
    pub connections: u64,
    pub answered: u64,
    pub connections_per_s: f64,
    pub bytes_per_s: f64,
    pub reply_bytes_per_s: f64,
    pub bytes: u64,
    pub reply_bytes: u64,
    pub handshake_p50_ms: Option<f64>,
    pub handshake_p99_ms: Option<f64>,
    pub forwarded: u64,
    pub dropped: u64,
    pub drops_per_s: f64,
    /// Drops by weir's reason.
    pub drops: BTreeMap<String, u64>,
    /// The policies (and rules) that denied traffic here.
    pub denied_by: BTreeSet<String>,
    pub audited: u64,
    pub audited_by: BTreeSet<String>,
    /// Seconds since the epoch of the last flow.
    pub last_seen: i64,
}

/// What the UI draws.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    /// Seconds since the epoch the rates are taken at.
    pub at: i64,
    pub nodes: Vec<MapNode>,
    pub edges: Vec<Edge>,
    pub namespaces: Vec<String>,
    /// Flows folded in since the relay started.
    pub flows_seen: u64,
    /// Edges and connections let go because a bound was reached.
    pub evicted: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    sec: i64,
    connections: u64,
    bytes: u64,
    reply_bytes: u64,
    drops: u64,
}

#[derive(Debug, Default)]
struct EdgeState {
    edge: Edge,
    buckets: VecDeque<Bucket>,
    handshakes: VecDeque<u64>,
}

impl EdgeState {
    fn bucket(&mut self, sec: i64) -> &mut Bucket {
        // Flows arrive in time order (the relay sorts them), so a late one
        // lands in the newest bucket rather than reopening an old one.
        let newest = self.buckets.back().map_or(i64::MIN, |b| b.sec);
        if sec > newest {
            self.buckets.push_back(Bucket {
                sec,
                ..Default::default()
            });
            while self.buckets.len() > RATE_WINDOW_SECS as usize {
                self.buckets.pop_front();
            }
        }
        self.buckets.back_mut().expect("pushed above")
    }
}

/// The map, folded one flow at a time.
#[derive(Debug)]
pub struct ServiceMap {
    limits: MapLimits,
    nodes: HashMap<String, MapNode>,
    edges: HashMap<(String, String), EdgeState>,
    connections: Connections,
    flows_seen: u64,
    evicted: u64,
    latest: i64,
}

impl ServiceMap {
    pub fn new(limits: MapLimits) -> Self {
        Self {
            connections: Connections::new(limits.max_connections),
            limits,
            nodes: HashMap::new(),
            edges: HashMap::new(),
            flows_seen: 0,
            evicted: 0,
            latest: 0,
        }
    }

    /// Folds one flow in.
    pub fn add(&mut self, f: &Flow) {
        let (Some(src), Some(dst)) = (f.source.as_ref(), f.destination.as_ref()) else {
            return;
        };
        self.flows_seen += 1;
        let sec = f.time.as_ref().map_or(0, |t| t.seconds);
        self.latest = self.latest.max(sec);
        let reply = f.is_reply == Some(true);
        // An edge points from the connection's client to its server.
        let (client, server) = if reply { (dst, src) } else { (src, dst) };
        let from = map_node(client, &f.node_name);
        let to = map_node(server, &f.node_name);
        let key = (from.id.clone(), to.id.clone());
        for n in [from, to] {
            self.nodes.entry(n.id.clone()).or_insert(n);
        }
        let details = f.weir.clone().unwrap_or_default();
        let mut fresh = Bucket {
            sec,
            ..Default::default()
        };
        let is_new = !self.edges.contains_key(&key);
        let state = self.edges.entry(key.clone()).or_default();
        if is_new {
            state.edge.id = format!("{}>{}", key.0, key.1);
            state.edge.from = key.0.clone();
            state.edge.to = key.1.clone();
        }
        let e = &mut state.edge;
        e.flows += 1;
        e.last_seen = e.last_seen.max(sec);
        if !reply {
            if let Some(port) = server_port(f) {
                e.ports.insert(port);
            }
            if let Some(s) = f.destination_service.as_ref().filter(|s| !s.name.is_empty()) {
                e.services.insert(format!("{}/{}", s.namespace, s.name));
            }
        }
        let policies = |ps: &[weir_proto::flow::Policy]| -> Vec<String> {
            ps.iter()
                .map(|p| match p.namespace.is_empty() {
                    true => format!("{} {}", p.kind, p.name),
                    false => format!("{} {}/{}", p.kind, p.namespace, p.name),
                })
                .collect()
        };
        match Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown) {
            Verdict::Dropped => {
                e.dropped += 1;
                let reason = match details.drop_reason.as_str() {
                    "" => "unknown".to_owned(),
                    r => r.to_owned(),
                };
                *e.drops.entry(reason).or_default() += 1;
                let mut by = policies(&f.egress_denied_by);
                by.extend(policies(&f.ingress_denied_by));
                if by.is_empty() && !details.policy.is_empty() {
                    by.push(details.policy.clone());
                }
                e.denied_by.extend(by);
                fresh.drops = 1;
            }
            Verdict::Audit => {
                e.audited += 1;
                let mut by = policies(&f.egress_denied_by);
                by.extend(policies(&f.ingress_denied_by));
                if by.is_empty() && !details.policy.is_empty() {
                    by.push(details.policy.clone());
                }
                e.audited_by.extend(by);
                e.forwarded += 1;
            }
            _ => e.forwarded += 1,
        }
        if let Some(c) = self.connections.observe(f) {
            let e = &mut state.edge;
            e.connections += u64::from(c.opened);
            e.answered += u64::from(c.answered);
            e.bytes += c.bytes;
            e.reply_bytes += c.reply_bytes;
            fresh.connections = u64::from(c.opened);
            fresh.bytes = c.bytes;
            fresh.reply_bytes = c.reply_bytes;
            if let Some(ns) = c.handshake_ns {
                if state.handshakes.len() == LATENCY_SAMPLES {
                    state.handshakes.pop_front();
                }
                state.handshakes.push_back(ns);
            }
        }
        let b = state.bucket(sec);
        b.connections += fresh.connections;
        b.bytes += fresh.bytes;
        b.reply_bytes += fresh.reply_bytes;
        b.drops += fresh.drops;
        if self.edges.len() > self.limits.max_edges {
            self.evict_edges(self.edges.len() - self.limits.max_edges);
        }
    }

    fn evict_edges(&mut self, n: usize) {
        let mut by_age: Vec<(i64, (String, String))> =
            self.edges.iter().map(|(k, s)| (s.edge.last_seen, k.clone())).collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(n) {
            self.edges.remove(&k);
            self.evicted += 1;
        }
        self.drop_lonely_nodes();
    }

    fn drop_lonely_nodes(&mut self) {
        let used: BTreeSet<&String> = self.edges.keys().flat_map(|(a, b)| [a, b]).collect();
        self.nodes.retain(|id, _| used.contains(id));
    }

    /// Forgets what has been idle too long, as of `now` (seconds since the
    /// epoch).
    pub fn expire(&mut self, now: i64) {
        let idle = self.limits.idle_secs;
        self.edges.retain(|_, s| now - s.edge.last_seen <= idle);
        self.connections.expire(now, idle);
        self.drop_lonely_nodes();
    }

    /// The map as of `now` (seconds since the epoch), limited to edges
    /// with an end in one of `namespaces` (all when empty).
    pub fn snapshot(&self, now: i64, namespaces: &[String]) -> Snapshot {
        let wanted =
            |id: &str| namespaces.is_empty() || self.nodes.get(id).is_some_and(|n| namespaces.contains(&n.namespace));
        let window = (now - RATE_WINDOW_SECS, now);
        let mut edges: Vec<Edge> = self
            .edges
            .values()
            .filter(|s| wanted(&s.edge.from) || wanted(&s.edge.to))
            .map(|s| {
                let mut e = s.edge.clone();
                let recent = s.buckets.iter().filter(|b| b.sec > window.0 && b.sec <= window.1);
                let sum = recent.fold(Bucket::default(), |a, b| Bucket {
                    sec: 0,
                    connections: a.connections + b.connections,
                    bytes: a.bytes + b.bytes,
                    reply_bytes: a.reply_bytes + b.reply_bytes,
                    drops: a.drops + b.drops,
                });
                let per_s = |n: u64| n as f64 / RATE_WINDOW_SECS as f64;
                e.connections_per_s = per_s(sum.connections);
                e.bytes_per_s = per_s(sum.bytes);
                e.reply_bytes_per_s = per_s(sum.reply_bytes);
                e.drops_per_s = per_s(sum.drops);
                let mut lat: Vec<u64> = s.handshakes.iter().copied().collect();
                lat.sort_unstable();
                e.handshake_p50_ms = percentile(&lat, 50);
                e.handshake_p99_ms = percentile(&lat, 99);
                e
            })
            .collect();
        edges.sort_by(|a, b| a.id.cmp(&b.id));
        let used: BTreeSet<&str> = edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]).collect();
        let mut nodes: Vec<MapNode> = self
            .nodes
            .values()
            .filter(|n| used.contains(n.id.as_str()))
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let namespaces: BTreeSet<String> = self
            .nodes
            .values()
            .filter(|n| !n.namespace.is_empty())
            .map(|n| n.namespace.clone())
            .collect();
        Snapshot {
            at: now,
            nodes,
            edges,
            namespaces: namespaces.into_iter().collect(),
            flows_seen: self.flows_seen,
            evicted: self.evicted + self.connections.evicted,
        }
    }

    /// The newest flow time folded in (seconds since the epoch).
    pub fn latest(&self) -> i64 {
        self.latest
    }

    /// A node by its id.
    pub fn node(&self, id: &str) -> Option<&MapNode> {
        self.nodes.get(id)
    }
}

fn percentile(sorted_ns: &[u64], p: usize) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let i = ((sorted_ns.len() * p).div_ceil(100)).clamp(1, sorted_ns.len()) - 1;
    Some(sorted_ns[i] as f64 / 1e6)
}

/// The node of the map an endpoint belongs to.
pub fn map_node(e: &Endpoint, observer: &str) -> MapNode {
    let w = WorkloadRef::of(e, observer);
    MapNode {
        id: w.id,
        kind: w.kind,
        namespace: w.namespace,
        name: w.name,
        select: w.select,
    }
}

fn server_port(f: &Flow) -> Option<String> {
    use weir_proto::flow::layer4::Protocol;
    let l4 = f.l4.as_ref()?.protocol.as_ref()?;
    Some(match l4 {
        Protocol::Tcp(t) => format!("{}/TCP", t.destination_port),
        Protocol::Udp(u) => format!("{}/UDP", u.destination_port),
        Protocol::Sctp(s) => format!("{}/SCTP", s.destination_port),
        Protocol::IcmPv4(_) => "ICMP".to_owned(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::flow::layer4::Protocol;
    use weir_proto::flow::{Ip, Layer4, Policy, Service, Tcp, Workload};
    use weir_proto::weir::flow::v1::FlowDetails;

    fn sel(flag: &str, value: &str) -> (String, String) {
        (flag.to_owned(), value.to_owned())
    }

    fn pod(ns: &str, name: &str, app: &str, ip_workload: Option<&str>) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            labels: vec![format!("k8s:app={app}")],
            workloads: ip_workload
                .map(|w| Workload {
                    name: w.into(),
                    kind: "Deployment".into(),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn world() -> Endpoint {
        Endpoint {
            labels: vec!["reserved:world".into()],
            ..Default::default()
        }
    }

    struct F {
        sec: i64,
        src: (Endpoint, &'static str, u32),
        dst: (Endpoint, &'static str, u32),
        reply: bool,
        verdict: Verdict,
        details: FlowDetails,
    }

    impl F {
        fn flow(self) -> Flow {
            Flow {
                time: Some(prost_types::Timestamp {
                    seconds: self.sec,
                    nanos: 0,
                }),
                node_name: "node1".into(),
                verdict: self.verdict as i32,
                ip: Some(Ip {
                    source: self.src.1.into(),
                    destination: self.dst.1.into(),
                    ..Default::default()
                }),
                l4: Some(Layer4 {
                    protocol: Some(Protocol::Tcp(Tcp {
                        source_port: self.src.2,
                        destination_port: self.dst.2,
                        ..Default::default()
                    })),
                }),
                is_reply: Some(self.reply),
                source: Some(self.src.0),
                destination: Some(self.dst.0),
                weir: Some(self.details),
                ..Default::default()
            }
        }
    }

    fn client() -> (Endpoint, &'static str, u32) {
        (
            pod("demo", "client-7d9-x", "client", Some("client")),
            "10.244.1.5",
            40000,
        )
    }
    fn web() -> (Endpoint, &'static str, u32) {
        (pod("demo", "web-0", "web", None), "10.244.2.7", 80)
    }

    fn event(sec: i64, reply: bool, event: &str, bytes: u64, reply_bytes: u64) -> Flow {
        let (src, dst) = if reply { (web(), client()) } else { (client(), web()) };
        F {
            sec,
            src,
            dst,
            reply,
            verdict: Verdict::Forwarded,
            details: FlowDetails {
                event: event.into(),
                bytes,
                reply_bytes,
                ..Default::default()
            },
        }
        .flow()
    }

    #[test]
    fn endpoints_become_workloads_apps_pods_world_and_nodes() {
        let n = map_node(&client().0, "node1");
        assert_eq!((n.id.as_str(), n.kind), ("demo/client", "workload"));
        assert_eq!(n.select, [sel("namespace", "demo"), sel("workload", "client")]);
        let n = map_node(&web().0, "node1");
        assert_eq!(n.id, "demo/web", "no controller: the app label names it");
        assert_eq!(n.select, [sel("namespace", "demo"), sel("label", "app=web")]);
        let mut bare = pod("demo", "lonely", "x", None);
        bare.labels.clear();
        let n = map_node(&bare, "node1");
        assert_eq!((n.id.as_str(), n.kind), ("demo/lonely", "pod"));
        assert_eq!(n.select, [sel("pod", "demo/lonely")]);
        assert_eq!(map_node(&world(), "node1").id, "world");
        let host = Endpoint {
            labels: vec!["reserved:host".into()],
            ..Default::default()
        };
        let n = map_node(&host, "node2");
        assert_eq!(
            (n.id.as_str(), n.kind, n.name.as_str()),
            ("node:node2", "host", "node2")
        );
    }

    #[test]
    fn a_connection_counts_once_whichever_nodes_report_it() {
        let mut m = ServiceMap::new(MapLimits::default());
        // The client's node and the backend's both report the start and
        // the counters; replies run the other way on the same edge.
        m.add(&event(100, false, "flow-start", 60, 0));
        m.add(&event(100, false, "flow-start", 60, 0));
        let mut synack = event(100, true, "tcp", 60, 60);
        synack.weir.as_mut().unwrap().handshake_ns = 2_000_000;
        m.add(&synack.clone());
        m.add(&synack);
        m.add(&event(101, false, "update", 1000, 5000));
        m.add(&event(101, true, "update", 5100, 1000));
        m.add(&event(102, false, "end", 1200, 9000));
        m.add(&event(102, false, "end", 1100, 8000));
        let s = m.snapshot(102, &[]);
        assert_eq!(s.edges.len(), 1, "{:?}", s.edges);
        let e = &s.edges[0];
        assert_eq!((e.from.as_str(), e.to.as_str()), ("demo/client", "demo/web"));
        assert_eq!((e.connections, e.answered), (1, 1));
        assert_eq!((e.bytes, e.reply_bytes), (1200, 9000));
        assert_eq!(e.handshake_p50_ms, Some(2.0));
        assert_eq!(e.ports.iter().collect::<Vec<_>>(), ["80/TCP"]);
        assert_eq!(e.connections_per_s, 0.1);
        assert_eq!(e.bytes_per_s, 120.0);
        assert_eq!(s.nodes.len(), 2);
        // Ten seconds on, the rates are gone and the totals stay.
        let later = m.snapshot(113, &[]);
        assert_eq!((later.edges[0].bytes_per_s, later.edges[0].bytes), (0.0, 1200));
    }

    #[test]
    fn a_denied_connection_names_its_policy_and_reason() {
        let mut m = ServiceMap::new(MapLimits::default());
        let intruder = (pod("demo", "intruder", "intruder", None), "10.244.1.9", 41000);
        let mut f = F {
            sec: 50,
            src: intruder,
            dst: web(),
            reply: false,
            verdict: Verdict::Dropped,
            details: FlowDetails {
                event: "drop".into(),
                drop_reason: "policy_denied".into(),
                ..Default::default()
            },
        }
        .flow();
        f.ingress_denied_by = vec![Policy {
            name: "web-ingress".into(),
            namespace: "demo".into(),
            kind: "NetworkPolicy".into(),
            ..Default::default()
        }];
        f.destination_service = Some(Service {
            name: "web".into(),
            namespace: "demo".into(),
        });
        m.add(&f);
        m.add(&f);
        let s = m.snapshot(50, &["demo".into()]);
        let e = &s.edges[0];
        assert_eq!(e.id, "demo/intruder>demo/web");
        assert_eq!((e.dropped, e.forwarded, e.connections, e.answered), (2, 0, 0, 0));
        assert_eq!(e.drops["policy_denied"], 2);
        assert_eq!(
            e.denied_by.iter().collect::<Vec<_>>(),
            ["NetworkPolicy demo/web-ingress"]
        );
        assert_eq!(e.services.iter().collect::<Vec<_>>(), ["demo/web"]);
        assert_eq!(e.drops_per_s, 0.2);
        assert!(m.snapshot(50, &["other".into()]).edges.is_empty());
    }

    #[test]
    fn bounds_hold_and_idle_edges_go() {
        let mut m = ServiceMap::new(MapLimits {
            idle_secs: 60,
            max_edges: 3,
            max_connections: 4,
        });
        for i in 0..10u32 {
            let mut src = client();
            src.0.workloads[0].name = format!("c{i}");
            src.2 = 40000 + i;
            let f = F {
                sec: 100 + i as i64,
                src,
                dst: web(),
                reply: false,
                verdict: Verdict::Forwarded,
                details: FlowDetails {
                    event: "flow-start".into(),
                    ..Default::default()
                },
            }
            .flow();
            m.add(&f);
        }
        let s = m.snapshot(109, &[]);
        assert_eq!(s.edges.len(), 3);
        assert_eq!(
            s.edges.iter().map(|e| e.from.as_str()).collect::<Vec<_>>(),
            ["demo/c7", "demo/c8", "demo/c9"]
        );
        assert_eq!(s.nodes.len(), 4, "the clients of forgotten edges go too");
        assert!(m.connections.len() <= 4);
        assert!(s.evicted >= 7);
        m.expire(108 + 61);
        assert_eq!(m.snapshot(170, &[]).edges.len(), 1);
    }
}
