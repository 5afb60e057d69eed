//! What a policy change would do to the traffic the cluster really had.
//! Every connection a relay recorded (its first packet: forwarded,
//! audited, or dropped by policy) is judged twice with the compiler and
//! judge the datapath is held to (`weir_model::policy::whatif`), under the
//! policies as they are and as the change would leave them; every
//! connection whose verdict would change is reported, grouped by workload
//! pair and port, with the rule that decides it. `weir policy check` and
//! the relay's service map both ask it.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use weir_model::ClusterState;
use weir_model::policy::whatif::{Connection, Decision, End, Judge};
use weir_model::state::ObjectKey;
use weir_proto::flow::{Endpoint, Flow, Verdict, layer4::Protocol};
use weir_proto::workload::WorkloadRef;

/// The cluster's objects from a directory of manifests (a standalone
/// agent's, or the lab's); unreadable objects are warnings in `warnings`.
pub fn read_manifests(dir: &Path, warnings: &mut Vec<String>) -> Result<ClusterState> {
    let mut state = ClusterState::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                for e in weir_model::parse_manifests(&mut state, &text) {
                    warnings.push(format!("{}: {e}", path.display()));
                }
                files += 1;
            }
        }
    }
    if files == 0 {
        bail!("{}: no manifests", dir.display());
    }
    Ok(state)
}

/// The kinds a verdict depends on, as the API server holds them now.
pub async fn read_cluster(client: &weir_k8s::kube::Client, warnings: &mut Vec<String>) -> Result<ClusterState> {
    use weir_k8s::kube::api::{Api, DynamicObject, ListParams, TypeMeta};
    use weir_model::Kind;
    let mut state = ClusterState::default();
    for kind in [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::WeirNetworkPolicy,
        Kind::WeirClusterNetworkPolicy,
        Kind::ClusterNetworkPolicy,
        // The numbers the operator gave label sets, as flows carry them.
        Kind::WeirIdentity,
    ] {
        let ar = weir_k8s::resource(kind);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            // A kind whose CRD is not installed has no objects.
            Err(weir_k8s::kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", ar.plural)),
        };
        for mut obj in list.items {
            // List items come without their kind.
            obj.types = Some(TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            });
            let text = serde_json::to_string(&obj)?;
            for e in weir_model::parse_manifests(&mut state, &text) {
                warnings.push(format!(
                    "{} {}: {e}",
                    ar.kind,
                    obj.metadata.name.as_deref().unwrap_or("")
                ));
            }
        }
    }
    Ok(state)
}

/// `state` with the change's objects applied; a malformed change is an
/// error naming its problems.
pub fn apply_change(state: &ClusterState, text: &str) -> Result<ClusterState, String> {
    let mut after = state.clone();
    let errors = weir_model::parse_manifests(&mut after, text);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(after)
}

/// The pod an endpoint of a flow is, if the state knows it.
fn end(e: &Endpoint, ip: &str, state: &ClusterState) -> Option<End> {
    let key = ObjectKey::new(e.namespace.clone(), e.pod_name.clone());
    let pod = (!e.pod_name.is_empty() && state.pods.contains_key(&key)).then_some(key);
    Some(End {
        pod,
        identity: e.identity,
        addr: ip.parse::<Ipv4Addr>().ok()?,
    })
}

/// A connection's first packet, as a flow recorded it.
struct Opening<'a> {
    /// Addresses, ports and protocol: one connection, whichever nodes
    /// reported it.
    key: (String, String, u32, u32, u8),
    client: &'a Endpoint,
    server: &'a Endpoint,
    proto: u8,
    port: u16,
}

/// A flow's connection, when the flow is a connection's first packet: the
/// one the client's node let out (or audited), or the one policy dropped.
fn opening(f: &Flow) -> Option<Opening<'_>> {
    if f.is_reply == Some(true) {
        return None;
    }
    let d = f.weir.as_ref()?;
    let verdict = Verdict::try_from(f.verdict).ok()?;
    let opens = match verdict {
        Verdict::Forwarded | Verdict::Audit => d.event == "flow-start",
        Verdict::Dropped => d.drop_reason.starts_with("policy_"),
        _ => false,
    };
    if !opens {
        return None;
    }
    let (proto, sport, dport) = match f.l4.as_ref()?.protocol.as_ref()? {
        Protocol::Tcp(t) => (6, t.source_port, t.destination_port),
        Protocol::Udp(u) => (17, u.source_port, u.destination_port),
        Protocol::Sctp(s) => (132, s.source_port, s.destination_port),
        Protocol::IcmPv4(_) => (1, 0, 0),
        _ => return None,
    };
    let ip = f.ip.as_ref()?;
    let key = (ip.source.clone(), ip.destination.clone(), sport, dport, proto);
    Some(Opening {
        key,
        client: f.source.as_ref()?,
        server: f.destination.as_ref()?,
        proto,
        port: dport as u16,
    })
}

fn verdict_word(d: &Decision) -> &'static str {
    match (d.allowed, d.audit) {
        (false, _) => "denied",
        (true, true) => "allowed (audit)",
        (true, false) => "allowed",
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "ICMP",
    }
}

fn rule_text(d: &Decision) -> String {
    d.rule
        .as_ref()
        .map_or_else(|| "no policy selects either end".to_owned(), |r| r.text())
}

/// Connections between one workload pair on one port whose verdict would
/// change the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Workloads as the service map names them (`namespace/name`).
    pub client: String,
    pub server: String,
    /// `80/TCP`
    pub port: String,
    /// `allowed`, `allowed (audit)` or `denied`.
    pub now: String,
    pub after: String,
    pub connections: u64,
    /// The deciding rules, now and after the change.
    pub rule_now: String,
    pub rule_after: String,
}

/// What the change would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub groups: Vec<Group>,
    /// Recorded connections judged.
    pub judged: u64,
    /// Flows looked at.
    pub flows: u64,
    /// Policies the change brings that the compiler refuses, with why (an
    /// invalid policy isolates what it selects, and is judged so).
    pub refused: Vec<(String, String)>,
}

impl Report {
    /// Connections whose verdict would change.
    pub fn changed(&self) -> u64 {
        self.groups.iter().map(|g| g.connections).sum()
    }
}

/// Judges `flows` under `before` and `after`.
pub fn check(before: &ClusterState, after: &ClusterState, flows: &[Flow]) -> Report {
    let (now, then) = (Judge::new(before), Judge::new(after));
    let was: HashSet<String> = now.rejected().map(|(p, _)| p).collect();
    let refused = then
        .rejected()
        .filter(|(p, _)| !was.contains(p))
        .map(|(p, r)| (p, r.to_owned()))
        .collect();
    let mut seen = HashSet::new();
    let mut judged = 0u64;
    type Key = (String, String, String, &'static str, &'static str);
    let mut groups: BTreeMap<Key, (u64, String, String)> = BTreeMap::new();
    for f in flows {
        let Some(Opening {
            key,
            client: src,
            server: dst,
            proto,
            port,
        }) = opening(f)
        else {
            continue;
        };
        if !seen.insert(key) {
            continue;
        }
        let ip = f.ip.clone().unwrap_or_default();
        let conn = |state: &ClusterState| -> Option<Connection> {
            Some(Connection {
                client: end(src, &ip.source, state)?,
                server: end(dst, &ip.destination, state)?,
                proto,
                port,
            })
        };
        let (Some(c0), Some(c1)) = (conn(before), conn(after)) else {
            continue;
        };
        judged += 1;
        let (d0, d1) = (now.decide(&c0), then.decide(&c1));
        if d0.allowed == d1.allowed && d0.audit == d1.audit {
            continue;
        }
        let node = f.node_name.as_str();
        let g = groups
            .entry((
                WorkloadRef::of(src, node).id,
                WorkloadRef::of(dst, node).id,
                format!("{port}/{}", proto_name(proto)),
                verdict_word(&d0),
                verdict_word(&d1),
            ))
            .or_default();
        g.0 += 1;
        g.1 = rule_text(&d0);
        g.2 = rule_text(&d1);
    }
    Report {
        groups: groups
            .into_iter()
            .map(
                |((client, server, port, now, after), (connections, rule_now, rule_after))| Group {
                    client,
                    server,
                    port,
                    now: now.into(),
                    after: after.into(),
                    connections,
                    rule_now,
                    rule_after,
                },
            )
            .collect(),
        judged,
        flows: flows.len() as u64,
        refused,
    }
}
