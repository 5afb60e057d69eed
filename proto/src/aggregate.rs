//! Flows folded into groups (by workload, namespace, pod, verdict, port,
//! drop reason), each with its flows, connections opened and answered,
//! bytes each way and drops: `weir observe --aggregate-by`, and an
//! agent's aggregated flow export. Ends are the connection's: a reply
//! counts toward the client → server pair it answers, and a connection
//! two nodes reported counts once (`crate::connections`, as the service
//! map counts it).

use std::collections::BTreeMap;

use crate::connections::Connections;
use crate::flow::{Endpoint, Flow, Verdict, layer4::Protocol};
use crate::workload::WorkloadRef;
use serde_json::{Map, Value, json};

/// What flows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    SourceWorkload,
    DestinationWorkload,
    SourceNamespace,
    DestinationNamespace,
    SourcePod,
    DestinationPod,
    Verdict,
    /// The server's port and protocol (80/TCP).
    Port,
    DropReason,
    Node,
}

impl Key {
    pub const ALL: [Key; 10] = [
        Key::SourceWorkload,
        Key::DestinationWorkload,
        Key::SourceNamespace,
        Key::DestinationNamespace,
        Key::SourcePod,
        Key::DestinationPod,
        Key::Verdict,
        Key::Port,
        Key::DropReason,
        Key::Node,
    ];

    /// A key by its name (`source-workload`), or why not.
    pub fn parse(s: &str) -> Result<Key, String> {
        Key::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
            format!("{s:?} is not an aggregation key ({})", names.join(", "))
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Key::SourceWorkload => "source-workload",
            Key::DestinationWorkload => "destination-workload",
            Key::SourceNamespace => "source-namespace",
            Key::DestinationNamespace => "destination-namespace",
            Key::SourcePod => "source-pod",
            Key::DestinationPod => "destination-pod",
            Key::Verdict => "verdict",
            Key::Port => "port",
            Key::DropReason => "drop-reason",
            Key::Node => "node",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub connections: u64,
    pub answered: u64,
    pub bytes: u64,
    pub reply_bytes: u64,
    pub dropped: u64,
}

/// The groups so far.
pub struct Aggregate {
    keys: Vec<Key>,
    groups: BTreeMap<Vec<String>, Totals>,
    connections: Connections,
}

fn pod(e: &Endpoint) -> String {
    match e.pod_name.is_empty() {
        true => WorkloadRef::of(e, "").id,
        false => format!("{}/{}", e.namespace, e.pod_name),
    }
}

fn port(f: &Flow, reply: bool) -> String {
    let (proto, sp, dp) = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => ("TCP", t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => ("UDP", u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => ("SCTP", s.source_port, s.destination_port),
        Some(Protocol::IcmPv4(_)) => return "ICMP".into(),
        _ => return String::new(),
    };
    format!("{}/{proto}", if reply { sp } else { dp })
}

impl Aggregate {
    pub fn new(keys: Vec<Key>) -> Self {
        Self::with_connections(keys, 1_000_000)
    }

    /// Remembering at most `connections` connections (to count each once).
    pub fn with_connections(keys: Vec<Key>, connections: usize) -> Self {
        Self {
            keys,
            groups: BTreeMap::new(),
            connections: Connections::new(connections),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn add(&mut self, f: &Flow) {
        let reply = f.is_reply == Some(true);
        let none = Endpoint::default();
        let (src, dst) = (
            f.source.as_ref().unwrap_or(&none),
            f.destination.as_ref().unwrap_or(&none),
        );
        let (client, server) = if reply { (dst, src) } else { (src, dst) };
        let node = f.node_name.as_str();
        let verdict = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
        let key: Vec<String> = self
            .keys
            .iter()
            .map(|k| match k {
                Key::SourceWorkload => WorkloadRef::of(client, node).id,
                Key::DestinationWorkload => WorkloadRef::of(server, node).id,
                Key::SourceNamespace => client.namespace.clone(),
                Key::DestinationNamespace => server.namespace.clone(),
                Key::SourcePod => pod(client),
                Key::DestinationPod => pod(server),
                Key::Verdict => verdict.as_str_name().to_owned(),
                Key::Port => port(f, reply),
                Key::DropReason => f.weir.as_ref().map(|d| d.drop_reason.clone()).unwrap_or_default(),
                Key::Node => node.to_owned(),
            })
            .collect();
        let fresh = self.connections.observe(f).unwrap_or_default();
        let t = self.groups.entry(key).or_default();
        t.flows += 1;
        t.connections += u64::from(fresh.opened);
        t.answered += u64::from(fresh.answered);
        t.bytes += fresh.bytes;
        t.reply_bytes += fresh.reply_bytes;
        t.dropped += u64::from(verdict == Verdict::Dropped);
    }

    /// The groups, most flows first.
    pub fn groups(&self) -> Vec<(&Vec<String>, &Totals)> {
        let mut out: Vec<_> = self.groups.iter().collect();
        out.sort_by(|a, b| b.1.flows.cmp(&a.1.flows).then_with(|| a.0.cmp(b.0)));
        out
    }

    /// One JSON object per group.
    pub fn json(&self) -> Vec<Value> {
        self.groups()
            .into_iter()
            .map(|(key, t)| {
                let mut m = Map::new();
                for (k, v) in self.keys.iter().zip(key) {
                    m.insert(k.name().to_owned(), json!(v));
                }
                m.insert("flows".into(), json!(t.flows));
                m.insert("connections".into(), json!(t.connections));
                m.insert("answered".into(), json!(t.answered));
                m.insert("bytes".into(), json!(t.bytes));
                m.insert("reply_bytes".into(), json!(t.reply_bytes));
                m.insert("dropped".into(), json!(t.dropped));
                Value::Object(m)
            })
            .collect()
    }

    /// A table with a header, columns as wide as their widest cell.
    pub fn table(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![
            self.keys
                .iter()
                .map(|k| k.name().to_uppercase())
                .chain(["FLOWS", "CONNECTIONS", "ANSWERED", "BYTES →", "BYTES ←", "DROPPED"].map(String::from))
                .collect(),
        ];
        for (key, t) in self.groups() {
            let mut r: Vec<String> = key
                .iter()
                .map(|k| if k.is_empty() { "-".into() } else { k.clone() })
                .collect();
            r.extend([t.flows, t.connections, t.answered, t.bytes, t.reply_bytes, t.dropped].map(|n| n.to_string()));
            rows.push(r);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in rows {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Ip, Layer4, Tcp, Workload};
    use crate::weir::flow::v1::FlowDetails;

    fn ep(ns: &str, pod: &str, workload: &str) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            pod_name: pod.into(),
            workloads: vec![Workload {
                name: workload.into(),
                kind: "Deployment".into(),
            }],
            ..Default::default()
        }
    }

    fn flow(reply: bool, verdict: Verdict, event: &str, bytes: u64, node: &str) -> Flow {
        let (c, s) = (ep("shop", "front-1", "front"), ep("shop", "cart-2", "cart"));
        let ((src, sip, sp), (dst, dip, dp)) = match reply {
            false => ((c, "10.0.0.1", 40000), (s, "10.0.0.2", 8080)),
            true => ((s, "10.0.0.2", 8080), (c, "10.0.0.1", 40000)),
        };
        Flow {
            node_name: node.into(),
            verdict: verdict as i32,
            is_reply: Some(reply),
            source: Some(src),
            destination: Some(dst),
            ip: Some(Ip {
                source: sip.into(),
                destination: dip.into(),
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(Tcp {
                    source_port: sp,
                    destination_port: dp,
                    ..Default::default()
                })),
            }),
            weir: Some(FlowDetails {
                event: event.into(),
                bytes,
                drop_reason: if verdict == Verdict::Dropped {
                    "policy_denied".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn replies_count_toward_their_connection_and_two_nodes_count_once() {
        let mut a = Aggregate::new(vec![Key::SourceWorkload, Key::DestinationWorkload, Key::Port]);
        for node in ["a", "b"] {
            a.add(&flow(false, Verdict::Forwarded, "flow-start", 60, node));
            a.add(&flow(true, Verdict::Forwarded, "tcp", 60, node));
            a.add(&flow(false, Verdict::Forwarded, "end", 500, node));
        }
        let g = a.groups();
        assert_eq!(g.len(), 1, "{:?}", a.table());
        assert_eq!(
            g[0].0,
            &vec!["shop/front".to_owned(), "shop/cart".into(), "8080/TCP".into()]
        );
        let t = g[0].1;
        assert_eq!(
            (t.flows, t.connections, t.answered, t.bytes, t.reply_bytes),
            (6, 1, 1, 500, 60)
        );
        let table = a.table();
        assert!(
            table.starts_with("SOURCE-WORKLOAD  DESTINATION-WORKLOAD  PORT"),
            "{table}"
        );
        assert!(
            table.contains("shop/front       shop/cart             8080/TCP  6"),
            "{table}"
        );
    }

    #[test]
    fn verdicts_and_drop_reasons_make_their_own_groups() {
        let mut a = Aggregate::new(vec![Key::Verdict, Key::DropReason]);
        a.add(&flow(false, Verdict::Forwarded, "flow-start", 60, "a"));
        for _ in 0..3 {
            a.add(&flow(false, Verdict::Dropped, "drop", 0, "b"));
        }
        let j = a.json();
        assert_eq!(j[0]["verdict"], "DROPPED");
        assert_eq!(j[0]["drop-reason"], "policy_denied");
        assert_eq!((j[0]["flows"].as_u64(), j[0]["dropped"].as_u64()), (Some(3), Some(3)));
        assert_eq!(j[1]["verdict"], "FORWARDED");
        assert_eq!(j[1]["connections"], 1);
    }
}
