//! Filter flags into the Observer API's allow and deny lists, as
//! `hubble observe` makes them, so the same flags select the same flows
//! from either CLI (`cli/tests/hubble_parity.rs` holds this to the stock
//! binary's `--print-raw-filters`). `weir observe` parses them from its
//! command line, the relay's service map from the flow table's query.
//!
//! The model: every list is built from two candidate filters, left and
//! right, which the server ORs. A flag that names one end (`--from-ip`,
//! `--to-pod`, ...) or none (`--verdict`, `--protocol`, ...) adds its value
//! to the same field of both; an unprefixed flag that may match either end
//! (`--ip`, `--pod`, `--label`, ...) adds it to the source field of left and
//! the destination field of right, so `--ip A --label L` means (source A
//! and source L) or (destination A and destination L). Namespaces are
//! applied last: a pod or service without one gets each namespace given;
//! a side with neither gets the namespace alone (`ns/`). Identical left
//! and right make one filter. `--not` sends the next filter flag to the
//! deny list, built the same way. Values of one flag are ORed (one field),
//! different flags ANDed (one filter).

use std::collections::BTreeSet;

use crate::flow::{self, FlowFilter, Verdict};

/// A filter flag or value `hubble observe` would refuse, with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

type Result<T> = std::result::Result<T, FlagError>;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(FlagError(format!($($t)*)))
    };
}

/// One filter flag as it appeared on the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The flag's long name (`from-ip`), or `not`.
    pub flag: &'static str,
    pub value: String,
}

/// The filter flags, by long name.
pub const FLAGS: &[&str] = &[
    "ip",
    "from-ip",
    "to-ip",
    "pod",
    "from-pod",
    "to-pod",
    "label",
    "from-label",
    "to-label",
    "service",
    "from-service",
    "to-service",
    "port",
    "from-port",
    "to-port",
    "identity",
    "from-identity",
    "to-identity",
    "workload",
    "from-workload",
    "to-workload",
    "namespace",
    "from-namespace",
    "to-namespace",
    "all-namespaces",
    "from-all-namespaces",
    "to-all-namespaces",
    "fqdn",
    "from-fqdn",
    "to-fqdn",
    "cluster",
    "from-cluster",
    "to-cluster",
    "verdict",
    "protocol",
    "type",
    "node-name",
    "node-label",
    "tcp-flags",
    "traffic-direction",
    "ip-version",
    "ipv4",
    "ipv6",
    "snat-ip",
    "drop-reason-desc",
    "interface",
    "uuid",
    "trace-id",
    "http-status",
    "http-method",
    "http-path",
    "http-url",
];

/// Flags that may not be used together in one list (hubble's table):
/// each group's members conflict with each other.
const CONFLICTS: &[&[&str]] = &[
    &[
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ],
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    &[
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-all-namespaces",
        "all-namespaces",
    ],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    &["to-pod", "namespace", "all-namespaces"],
    &["from-pod", "namespace", "all-namespaces"],
    &["to-service", "namespace", "all-namespaces"],
    &["from-service", "namespace", "all-namespaces"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
];

/// Reserved identities by name (Cilium's numbering, which weir's share).
const RESERVED_IDENTITIES: &[(&str, u32)] = &[
    ("host", 1),
    ("world", 2),
    ("unmanaged", 3),
    ("health", 4),
    ("init", 5),
    ("remote-node", 6),
    ("kube-apiserver", 7),
    ("ingress", 8),
    ("world-ipv4", 9),
    ("world-ipv6", 10),
];

/// Monitor event types by name (`--type`); `packet` is weir's name for a
/// traced pod's every packet (`weir lab trace`), which Hubble calls capture.
const EVENT_TYPES: &[(&str, i32)] = &[
    ("drop", 1),
    ("debug", 2),
    ("capture", 3),
    ("packet", 3),
    ("trace", 4),
    ("policy-verdict", 5),
    ("l7", 129),
    ("agent", 130),
];

/// Trace observation points by name (`--type trace:to-endpoint`).
const TRACE_POINTS: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
    ("to-crypto", 12),
    ("from-crypto", 13),
];

/// Which end a field names.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// One list being built: the candidate pair and the namespaces given.
#[derive(Default)]
struct Tracker {
    pair: Option<(FlowFilter, FlowFilter)>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: BTreeSet<&'static str>,
}

impl Tracker {
    fn pair(&mut self) -> &mut (FlowFilter, FlowFilter) {
        self.pair.get_or_insert_with(Default::default)
    }

    fn set(&mut self, flag: &'static str, value: &str) -> Result<()> {
        for group in CONFLICTS.iter().filter(|g| g.contains(&flag)) {
            if let Some(other) = group.iter().find(|o| **o != flag && self.changed.contains(*o)) {
                bail!("filters --{flag} and --{other} cannot be combined");
            }
        }
        self.changed.insert(flag);
        let v = value.to_owned();
        match flag {
            "namespace" => self.ns.push(v),
            "from-namespace" => self.src_ns.push(v),
            "to-namespace" => self.dst_ns.push(v),
            "all-namespaces" => self.ns.push(String::new()),
            "from-all-namespaces" => self.src_ns.push(String::new()),
            "to-all-namespaces" => self.dst_ns.push(String::new()),
            _ => self.set_field(flag, value)?,
        }
        self.check_namespaces()
    }

    fn set_field(&mut self, flag: &'static str, value: &str) -> Result<()> {
        let (left, right) = self.pair();
        let (name, side) = match flag.split_once('-') {
            Some(("from", name)) => (name, Some(Side::Source)),
            Some(("to", name)) => (name, Some(Side::Destination)),
            _ => (flag, None),
        };
        const ENDS: &[&str] = &[
            "ip", "pod", "label", "service", "port", "identity", "workload", "fqdn", "cluster",
        ];
        match (name, side) {
            (n, Some(side)) if ENDS.contains(&n) => {
                add(left, name, side, value)?;
                add(right, name, side, value)?;
            }
            (n, None) if ENDS.contains(&n) => {
                add(left, name, Side::Source, value)?;
                add(right, name, Side::Destination, value)?;
            }
            (_, None) if both(left, flag, value)? => {
                both(right, flag, value)?;
            }
            ("verdict", None) => {
                let v = verdict(value)?;
                left.verdict.push(v);
                right.verdict.push(v);
            }
            ("protocol", None) => {
                left.protocol.push(value.to_owned());
                right.protocol.push(value.to_owned());
            }
            ("type", None) => {
                let t = event_type(value)?;
                left.event_type.push(t);
                right.event_type.push(t);
            }
            _ => bail!("--{flag} is not a filter"),
        }
        Ok(())
    }

    /// A pod or service that names its namespace must name one given.
    fn check_namespaces(&self) -> Result<()> {
        let Some((left, right)) = &self.pair else {
            return Ok(());
        };
        let check = |nss: &[String], values: &[&String]| -> Result<()> {
            if nss.is_empty() {
                return Ok(());
            }
            for v in values {
                if let Some((ns, _)) = v.split_once('/')
                    && !nss.iter().any(|n| n == ns)
                {
                    bail!("namespace conflict: {:?} does not contain {v:?}", nss.join(","));
                }
            }
            Ok(())
        };
        for f in [left, right] {
            let src: Vec<&String> = f.source_pod.iter().chain(&f.source_service).collect();
            let dst: Vec<&String> = f.destination_pod.iter().chain(&f.destination_service).collect();
            let all: Vec<&String> = src.iter().chain(&dst).copied().collect();
            check(&self.ns, &all)?;
            check(&self.src_ns, &src)?;
            check(&self.dst_ns, &dst)?;
        }
        Ok(())
    }

    fn filters(self) -> Vec<FlowFilter> {
        if self.pair.is_none() && self.ns.is_empty() && self.src_ns.is_empty() && self.dst_ns.is_empty() {
            return Vec::new();
        }
        let (mut left, mut right) = self.pair.unwrap_or_default();
        for f in [&mut left, &mut right] {
            namespaces(f, Side::Destination, &self.dst_ns);
            namespaces(f, Side::Source, &self.src_ns);
        }
        namespaces(&mut left, Side::Source, &self.ns);
        namespaces(&mut right, Side::Destination, &self.ns);
        if left == right { vec![left] } else { vec![left, right] }
    }
}

/// Adds the value of a flag that names no end to its field; false for
/// any other flag.
fn both(f: &mut FlowFilter, flag: &str, value: &str) -> Result<bool> {
    let s = value.to_owned();
    match flag {
        "node-name" => f.node_name.push(s),
        "node-label" => f.node_labels.push(s),
        "snat-ip" => f.source_ip_xlated.push(s),
        "uuid" => f.uuid.push(s),
        "trace-id" => f.trace_id.push(s),
        "http-status" => f.http_status_code.push(s),
        "http-method" => f.http_method.push(s),
        "http-path" => f.http_path.push(s),
        "http-url" => f.http_url.push(s),
        "interface" => f.interface.push(flow::NetworkInterface {
            name: s,
            ..Default::default()
        }),
        "tcp-flags" => f.tcp_flags.push(tcp_flags(value)?),
        "traffic-direction" => f.traffic_direction.push(match value.to_ascii_lowercase().as_str() {
            "ingress" => flow::TrafficDirection::Ingress as i32,
            "egress" => flow::TrafficDirection::Egress as i32,
            _ => bail!("invalid traffic direction, expected ingress or egress"),
        }),
        "ip-version" | "ipv4" | "ipv6" => {
            let v = match (flag, value) {
                ("ipv4", "") | (_, "v4" | "4" | "ipv4" | "ip4") => flow::IpVersion::IPv4,
                ("ipv6", "") | (_, "v6" | "6" | "ipv6" | "ip6") => flow::IpVersion::IPv6,
                _ => flow::IpVersion::IpNotUsed,
            };
            f.ip_version.push(v as i32);
        }
        "drop-reason-desc" => match flow::DropReason::from_str_name(value) {
            Some(r) => f.drop_reason_desc.push(r as i32),
            None => bail!("invalid drop reason description {value:?}"),
        },
        _ => return Ok(false),
    }
    Ok(true)
}

/// `syn,ack`: one set of flags that must all be on (several sets: any).
fn tcp_flags(value: &str) -> Result<flow::TcpFlags> {
    let mut out = flow::TcpFlags::default();
    for name in value.split(',') {
        let bit = match name.to_ascii_uppercase().as_str() {
            "SYN" => &mut out.syn,
            "FIN" => &mut out.fin,
            "RST" => &mut out.rst,
            "PSH" => &mut out.psh,
            "ACK" => &mut out.ack,
            "URG" => &mut out.urg,
            "ECE" => &mut out.ece,
            "CWR" => &mut out.cwr,
            "NS" => &mut out.ns,
            _ => bail!("unknown TCP flag {name:?}: SYN, FIN, RST, PSH, ACK, URG, ECE, CWR or NS"),
        };
        *bit = true;
    }
    Ok(out)
}

/// Adds `value` to the field `name` of one end.
fn add(f: &mut FlowFilter, name: &str, side: Side, value: &str) -> Result<()> {
    let s = value.to_owned();
    match (name, side) {
        ("ip", Side::Source) => f.source_ip.push(s),
        ("ip", Side::Destination) => f.destination_ip.push(s),
        ("pod", Side::Source) => f.source_pod.push(s),
        ("pod", Side::Destination) => f.destination_pod.push(s),
        ("label", Side::Source) => f.source_label.push(s),
        ("label", Side::Destination) => f.destination_label.push(s),
        ("service", Side::Source) => f.source_service.push(s),
        ("service", Side::Destination) => f.destination_service.push(s),
        ("port", Side::Source) => f.source_port.push(s),
        ("port", Side::Destination) => f.destination_port.push(s),
        ("identity", Side::Source) => f.source_identity.push(identity(value)?),
        ("identity", Side::Destination) => f.destination_identity.push(identity(value)?),
        ("workload", Side::Source) => f.source_workload.push(workload(value)),
        ("workload", Side::Destination) => f.destination_workload.push(workload(value)),
        ("fqdn", Side::Source) => f.source_fqdn.push(s),
        ("fqdn", Side::Destination) => f.destination_fqdn.push(s),
        ("cluster", Side::Source) => f.source_cluster_name.push(s),
        ("cluster", Side::Destination) => f.destination_cluster_name.push(s),
        _ => bail!("--{name} is not a filter"),
    }
    Ok(())
}

/// Puts the namespaces on one end: each pod and service without one gets
/// each namespace; an end with neither gets the namespaces alone.
fn namespaces(f: &mut FlowFilter, side: Side, nss: &[String]) {
    if nss.is_empty() {
        return;
    }
    let (pods, services) = match side {
        Side::Source => (&mut f.source_pod, &mut f.source_service),
        Side::Destination => (&mut f.destination_pod, &mut f.destination_service),
    };
    if pods.is_empty() && services.is_empty() {
        pods.push(String::new());
    }
    for values in [pods, services] {
        *values = values
            .iter()
            .flat_map(|v| {
                if v.contains('/') {
                    vec![v.clone()]
                } else {
                    nss.iter().map(|ns| format!("{ns}/{v}")).collect()
                }
            })
            .collect();
    }
}

fn verdict(v: &str) -> Result<i32> {
    // hubble takes the exact name; any case is taken here too.
    match Verdict::from_str_name(&v.to_ascii_uppercase()) {
        Some(v) => Ok(v as i32),
        None => bail!("invalid --verdict value: {v}"),
    }
}

fn identity(v: &str) -> Result<u32> {
    if let Some((_, id)) = RESERVED_IDENTITIES.iter().find(|(name, _)| *name == v) {
        return Ok(*id);
    }
    v.parse().map_err(|_| {
        let names: Vec<&str> = RESERVED_IDENTITIES.iter().map(|(n, _)| *n).collect();
        FlagError(format!(
            "invalid security identity {v:?}, expected one of {} or a numeric value",
            names.join(", ")
        ))
    })
}

/// `name`, `Kind/name` or `Kind/`.
fn workload(v: &str) -> flow::Workload {
    match v.split_once('/') {
        Some((kind, name)) => flow::Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
        },
        None => flow::Workload {
            name: v.to_owned(),
            ..Default::default()
        },
    }
}

/// `TYPE[:SUBTYPE]`: a name or a number each (`trace:to-endpoint`, `drop`, `4:5`).
fn event_type(v: &str) -> Result<flow::EventTypeFilter> {
    let (t, sub) = match v.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (v, None),
    };
    let r#type = match EVENT_TYPES.iter().find(|(n, _)| *n == t) {
        Some((_, n)) => *n,
        None => t.parse().map_err(|_| {
            FlagError(format!(
                "unable to parse type '{t}', not a known type name and unable to parse as numeric value"
            ))
        })?,
    };
    let mut out = flow::EventTypeFilter {
        r#type,
        ..Default::default()
    };
    if let Some(s) = sub {
        let named = if r#type == 4 {
            TRACE_POINTS.iter().find(|(n, _)| *n == s).map(|(_, n)| *n)
        } else {
            None
        };
        out.sub_type = match named {
            Some(n) => n,
            None => s
                .parse()
                .map_err(|_| FlagError(format!("unable to parse event sub-type '{s}' of type '{t}'")))?,
        };
        out.match_sub_type = true;
    }
    Ok(out)
}

/// The allow and deny lists for the filter flags, in command-line order.
pub fn build(occurrences: &[Occurrence]) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>)> {
    let (mut allow, mut deny) = (Tracker::default(), Tracker::default());
    let mut negate = false;
    for o in occurrences {
        if o.flag == "not" {
            if negate {
                bail!("consecutive --not statements");
            }
            negate = true;
            continue;
        }
        let tracker = if std::mem::take(&mut negate) {
            &mut deny
        } else {
            &mut allow
        };
        tracker
            .set(o.flag, &o.value)
            .map_err(|e| FlagError(format!("invalid argument {:?} for \"--{}\" flag: {e}", o.value, o.flag)))?;
    }
    if negate {
        bail!("trailing --not found in the arguments");
    }
    Ok((allow.filters(), deny.filters()))
}

/// The lists as `hubble observe --print-raw-filters` prints them: YAML with
/// one JSON filter (proto field names) per item, `{}` when both are empty.
pub fn raw(allow: &[FlowFilter], deny: &[FlowFilter]) -> String {
    if allow.is_empty() && deny.is_empty() {
        return "{}\n".to_owned();
    }
    let mut out = String::new();
    for (name, list) in [("allowlist", allow), ("denylist", deny)] {
        if list.is_empty() {
            continue;
        }
        out.push_str(name);
        out.push_str(":\n");
        for f in list {
            out.push_str(&format!("    - '{}'\n", to_json(f).to_string().replace('\'', "''")));
        }
    }
    out
}

/// A filter as protojson writes it (proto names, unset fields left out):
/// the fields these flags set.
pub fn to_json(f: &FlowFilter) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut m = Map::new();
    let mut strings = |key: &str, v: &[String]| {
        if !v.is_empty() {
            m.insert(key.into(), json!(v));
        }
    };
    strings("source_ip", &f.source_ip);
    strings("source_pod", &f.source_pod);
    strings("source_label", &f.source_label);
    strings("source_service", &f.source_service);
    strings("destination_ip", &f.destination_ip);
    strings("destination_pod", &f.destination_pod);
    strings("destination_label", &f.destination_label);
    strings("destination_service", &f.destination_service);
    strings("protocol", &f.protocol);
    strings("source_port", &f.source_port);
    strings("destination_port", &f.destination_port);
    strings("node_name", &f.node_name);
    strings("source_fqdn", &f.source_fqdn);
    strings("destination_fqdn", &f.destination_fqdn);
    strings("source_cluster_name", &f.source_cluster_name);
    strings("destination_cluster_name", &f.destination_cluster_name);
    strings("node_labels", &f.node_labels);
    strings("source_ip_xlated", &f.source_ip_xlated);
    strings("uuid", &f.uuid);
    strings("trace_id", &f.trace_id);
    strings("http_status_code", &f.http_status_code);
    strings("http_method", &f.http_method);
    strings("http_path", &f.http_path);
    strings("http_url", &f.http_url);
    let mut enums = |key: &str, names: Vec<&str>| {
        if !names.is_empty() {
            m.insert(key.into(), json!(names));
        }
    };
    enums(
        "traffic_direction",
        f.traffic_direction
            .iter()
            .map(|v| flow::TrafficDirection::try_from(*v).map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name()))
            .collect(),
    );
    enums(
        "ip_version",
        f.ip_version
            .iter()
            .map(|v| flow::IpVersion::try_from(*v).map_or("IP_NOT_USED", |d| d.as_str_name()))
            .collect(),
    );
    enums(
        "drop_reason_desc",
        f.drop_reason_desc
            .iter()
            .map(|v| flow::DropReason::try_from(*v).map_or("DROP_REASON_UNKNOWN", |d| d.as_str_name()))
            .collect(),
    );
    if !f.interface.is_empty() {
        let names: Vec<Value> = f.interface.iter().map(|i| json!({"name": i.name})).collect();
        m.insert("interface".into(), Value::Array(names));
    }
    if !f.tcp_flags.is_empty() {
        let sets: Vec<Value> = f
            .tcp_flags
            .iter()
            .map(|t| {
                let mut o = Map::new();
                for (name, on) in [
                    ("FIN", t.fin),
                    ("SYN", t.syn),
                    ("RST", t.rst),
                    ("PSH", t.psh),
                    ("ACK", t.ack),
                    ("URG", t.urg),
                    ("ECE", t.ece),
                    ("CWR", t.cwr),
                    ("NS", t.ns),
                ] {
                    if on {
                        o.insert(name.into(), json!(true));
                    }
                }
                Value::Object(o)
            })
            .collect();
        m.insert("tcp_flags".into(), Value::Array(sets));
    }
    let workloads = |v: &[flow::Workload]| -> Value {
        v.iter()
            .map(|w| {
                let mut o = Map::new();
                if !w.name.is_empty() {
                    o.insert("name".into(), json!(w.name));
                }
                if !w.kind.is_empty() {
                    o.insert("kind".into(), json!(w.kind));
                }
                Value::Object(o)
            })
            .collect()
    };
    if !f.source_workload.is_empty() {
        m.insert("source_workload".into(), workloads(&f.source_workload));
    }
    if !f.destination_workload.is_empty() {
        m.insert("destination_workload".into(), workloads(&f.destination_workload));
    }
    if !f.source_identity.is_empty() {
        m.insert("source_identity".into(), json!(f.source_identity));
    }
    if !f.destination_identity.is_empty() {
        m.insert("destination_identity".into(), json!(f.destination_identity));
    }
    if !f.verdict.is_empty() {
        let names: Vec<&str> = f
            .verdict
            .iter()
            .map(|v| Verdict::try_from(*v).map_or("VERDICT_UNKNOWN", |v| v.as_str_name()))
            .collect();
        m.insert("verdict".into(), json!(names));
    }
    if !f.event_type.is_empty() {
        let types: Vec<Value> = f
            .event_type
            .iter()
            .map(|t| {
                let mut o = Map::new();
                if t.r#type != 0 {
                    o.insert("type".into(), json!(t.r#type));
                }
                if t.match_sub_type {
                    o.insert("match_sub_type".into(), json!(true));
                }
                if t.sub_type != 0 {
                    o.insert("sub_type".into(), json!(t.sub_type));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("event_type".into(), Value::Array(types));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Occurrences from `--flag value` pairs (`--not` alone).
    fn parse(args: &[&str]) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let flag = a.trim_start_matches('-');
            let flag = FLAGS
                .iter()
                .chain(&["not"])
                .find(|f| **f == flag)
                .expect("a filter flag");
            let value = if ["not", "ipv4", "ipv6"].contains(flag) || flag.ends_with("all-namespaces") {
                String::new()
            } else {
                it.next().expect("a value").to_string()
            };
            out.push(Occurrence { flag, value });
        }
        out
    }

    fn json_of(args: &[&str]) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let (a, d) = build(&parse(args)).unwrap();
        (a.iter().map(to_json).collect(), d.iter().map(to_json).collect())
    }

    fn j(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn unprefixed_flags_split_into_a_source_and_a_destination_filter() {
        let (allow, deny) = json_of(&[
            "--ip",
            "1.2.3.4",
            "--ip",
            "5.6.7.8",
            "--verdict",
            "DROPPED",
            "--node-name",
            "k8s*",
        ]);
        assert_eq!(
            allow,
            vec![
                j(r#"{"source_ip":["1.2.3.4","5.6.7.8"],"verdict":["DROPPED"],"node_name":["k8s*"]}"#),
                j(r#"{"destination_ip":["1.2.3.4","5.6.7.8"],"verdict":["DROPPED"],"node_name":["k8s*"]}"#),
            ]
        );
        assert!(deny.is_empty());
        // Several split flags: the same end of each, never a mix.
        let (allow, _) = json_of(&["--ip", "10.0.0.1", "--label", "app=web"]);
        assert_eq!(
            allow,
            vec![
                j(r#"{"source_ip":["10.0.0.1"],"source_label":["app=web"]}"#),
                j(r#"{"destination_ip":["10.0.0.1"],"destination_label":["app=web"]}"#),
            ]
        );
    }

    #[test]
    fn not_sends_the_next_flag_to_the_deny_list() {
        let (allow, deny) = json_of(&[
            "--from-ip",
            "1.2.3.4",
            "--from-ip",
            "5.6.7.8",
            "--not",
            "--to-ip",
            "5.5.5.5",
            "--verdict",
            "DROPPED",
            "--type",
            "l7",
        ]);
        assert_eq!(
            allow,
            vec![j(
                r#"{"source_ip":["1.2.3.4","5.6.7.8"],"verdict":["DROPPED"],"event_type":[{"type":129}]}"#
            )]
        );
        assert_eq!(deny, vec![j(r#"{"destination_ip":["5.5.5.5"]}"#)]);
        assert!(build(&parse(&["--not", "--not", "--pod", "x"])).is_err());
        assert_eq!(
            build(&parse(&["--pod", "x", "--not"])).unwrap_err().to_string(),
            "trailing --not found in the arguments"
        );
    }

    #[test]
    fn namespaces_go_on_pods_and_services_or_stand_alone() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["--namespace", "cilium", "--port", "443"],
                &[
                    r#"{"source_pod":["cilium/"],"source_port":["443"]}"#,
                    r#"{"destination_pod":["cilium/"],"destination_port":["443"]}"#,
                ],
            ),
            (
                &["--from-namespace", "cilium", "--from-port", "443"],
                &[r#"{"source_pod":["cilium/"],"source_port":["443"]}"#],
            ),
            (&["--to-namespace", "cilium"], &[r#"{"destination_pod":["cilium/"]}"#]),
            (
                &["--namespace", "cilium", "--pod", "foo-x"],
                &[
                    r#"{"source_pod":["cilium/foo-x"]}"#,
                    r#"{"destination_pod":["cilium/foo-x"]}"#,
                ],
            ),
            (
                &[
                    "--namespace",
                    "cilium",
                    "--namespace",
                    "kube-system",
                    "--service",
                    "foo",
                    "--service",
                    "bar",
                ],
                &[
                    r#"{"source_service":["cilium/foo","kube-system/foo","cilium/bar","kube-system/bar"]}"#,
                    r#"{"destination_service":["cilium/foo","kube-system/foo","cilium/bar","kube-system/bar"]}"#,
                ],
            ),
            (
                &["--from-namespace", "kube-system", "--to-pod", "cilium/foo-x"],
                &[r#"{"source_pod":["kube-system/"],"destination_pod":["cilium/foo-x"]}"#],
            ),
            (
                &["--all-namespaces", "--pod", "foo"],
                &[r#"{"source_pod":["/foo"]}"#, r#"{"destination_pod":["/foo"]}"#],
            ),
        ];
        for (args, want) in cases {
            let (allow, _) = json_of(args);
            let want: Vec<_> = want.iter().map(|w| j(w)).collect();
            assert_eq!(allow, want, "{args:?}");
        }
    }

    #[test]
    fn conflicting_flags_are_refused_with_both_names() {
        let err = build(&parse(&["--namespace", "shop", "--ip", "10.0.0.1"])).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("filters --ip and --namespace cannot be combined"),
            "{err}"
        );
        assert!(build(&parse(&["--port", "80", "--to-port", "81"])).is_err());
        // In different lists they do not conflict.
        assert!(build(&parse(&["--port", "80", "--not", "--to-port", "81"])).is_ok());
        let err = build(&parse(&["--to-namespace", "a", "--to-pod", "b/x"])).unwrap_err();
        assert!(err.to_string().contains("namespace conflict"), "{err}");
    }

    #[test]
    fn identities_workloads_and_types_are_read_as_hubble_reads_them() {
        let (allow, _) = json_of(&[
            "--from-workload",
            "web",
            "--to-workload",
            "Deployment/",
            "--to-identity",
            "12345",
            "--from-identity",
            "remote-node",
            "--type",
            "trace:to-endpoint",
            "--type",
            "trace:from-network",
            "--type",
            "drop",
        ]);
        assert_eq!(
            allow,
            vec![j(
                r#"{"source_workload":[{"name":"web"}],"destination_workload":[{"kind":"Deployment"}],"source_identity":[6],"destination_identity":[12345],"event_type":[{"type":4,"match_sub_type":true},{"type":4,"match_sub_type":true,"sub_type":10},{"type":1}]}"#
            )]
        );
        assert!(build(&parse(&["--type", "parcel"])).is_err());
        assert!(build(&parse(&["--identity", "nobody"])).is_err());
        assert_eq!(raw(&[], &[]), "{}\n");
    }
}
