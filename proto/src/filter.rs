//! Hubble's flow filters, as the agent and the relay apply them: a
//! `GetFlowsRequest`'s whitelist and blacklist compiled once
//! ([`FlowFilters::compile`], which rejects what it cannot honour with the
//! reason, for INVALID_ARGUMENT) and then matched against each flow.
//!
//! Semantics are Hubble's: inside one `FlowFilter` every field that is set
//! must match and any one of a field's values may; a flow passes when it
//! matches some whitelist filter (or there is none) and no blacklist one.
//! L7 fields (HTTP, DNS, FQDNs) and trace ids are refused: weir has no L7
//! visibility, and a filter silently ignored would show flows the user
//! excluded.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::flow::{self, Flow, FlowFilter, TcpFlags};

/// At most this many filters in a whitelist or blacklist.
pub const MAX_FILTERS: usize = 64;
/// At most this many bytes of filters (encoded) in one request: every
/// flow is matched against all of them, on the serving agent, so their
/// size bounds what one request costs per flow. Hubble's CLI sends a few
/// hundred bytes for a long command line.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{what}: at most {limit}")]
    TooLarge { what: &'static str, limit: usize },
    #[error("filter field {field} is not supported by weir: {why}")]
    Unsupported { field: &'static str, why: &'static str },
    #[error("filter field {field}: {value:?}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
}

fn invalid(field: &'static str, value: &str, why: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        field,
        value: value.to_owned(),
        why: why.into(),
    }
}

/// A compiled whitelist and blacklist.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FlowFilters {
    pub fn compile(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        if whitelist.len() > MAX_FILTERS || blacklist.len() > MAX_FILTERS {
            return Err(FilterError::TooLarge {
                what: "filters in a whitelist or blacklist",
                limit: MAX_FILTERS,
            });
        }
        let bytes: usize = whitelist.iter().chain(blacklist).map(prost::Message::encoded_len).sum();
        if bytes > MAX_FILTER_BYTES {
            return Err(FilterError::TooLarge {
                what: "bytes of filters in one request",
                limit: MAX_FILTER_BYTES,
            });
        }
        Ok(Self {
            whitelist: whitelist.iter().map(Compiled::new).collect::<Result<_, _>>()?,
            blacklist: blacklist.iter().map(Compiled::new).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, f: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.matches(f)))
            && !self.blacklist.iter().any(|c| c.matches(f))
    }

    /// No filter at all: everything passes.
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }
}

/// A pod or service as Hubble's servers read one: `ns/prefix`, `ns/` (the
/// whole namespace), `prefix` (in the `default` namespace), `/prefix` or
/// `/` (any namespace: what `hubble observe -A` sends).
#[derive(Debug)]
struct NamePattern {
    namespace: Option<String>,
    prefix: String,
}

impl NamePattern {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let (namespace, prefix) = match s.split_once('/') {
            Some(("", name)) => (None, name.to_owned()),
            Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
            None if s.is_empty() => {
                return Err(invalid(field, s, "expected [namespace/]name-prefix or namespace/"));
            }
            None => (Some("default".to_owned()), s.to_owned()),
        };
        Ok(Self { namespace, prefix })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if name.is_empty() && namespace.is_empty() {
            return false;
        }
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && name.starts_with(&self.prefix)
    }
}

/// One requirement of a label selector (Kubernetes syntax).
#[derive(Debug)]
enum Requirement {
    Equals(LabelKey, String),
    NotEquals(LabelKey, String),
    In(LabelKey, Vec<String>),
    NotIn(LabelKey, Vec<String>),
    Exists(LabelKey),
    DoesNotExist(LabelKey),
}

/// A selector key, optionally with a Cilium label source (`k8s:app`);
/// without one (or with `any:`) it matches a label of any source.
#[derive(Debug)]
struct LabelKey {
    source: Option<String>,
    key: String,
}

impl LabelKey {
    fn parse(s: &str) -> Self {
        match s.split_once(':') {
            Some(("any", k)) => Self {
                source: None,
                key: k.to_owned(),
            },
            Some((src, k)) => Self {
                source: Some(src.to_owned()),
                key: k.to_owned(),
            },
            None => Self {
                source: None,
                key: s.to_owned(),
            },
        }
    }

    fn lookup<'a>(&self, labels: &'a BTreeMap<(String, String), String>) -> Option<&'a str> {
        labels
            .iter()
            .find(|((src, key), _)| *key == self.key && self.source.as_deref().is_none_or(|s| s == src))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(invalid(field, s, "empty requirement"));
            }
            let valid_key =
                |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
            let req = if let Some(k) = part.strip_prefix('!') {
                let k = k.trim();
                if !valid_key(k) {
                    return Err(invalid(field, s, format!("bad label key {k:?}")));
                }
                Requirement::DoesNotExist(LabelKey::parse(k))
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(LabelKey::parse(k.trim()), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                if !valid_key(k.trim()) {
                    return Err(invalid(field, s, format!("bad label key {:?}", k.trim())));
                }
                Requirement::Equals(LabelKey::parse(k.trim()), v.trim().to_owned())
            } else if let Some((k, rest)) = split_set_op(part, " notin ") {
                Requirement::NotIn(LabelKey::parse(k), parse_set(field, s, rest)?)
            } else if let Some((k, rest)) = split_set_op(part, " in ") {
                Requirement::In(LabelKey::parse(k), parse_set(field, s, rest)?)
            } else if valid_key(part) {
                Requirement::Exists(LabelKey::parse(part))
            } else {
                return Err(invalid(field, s, format!("cannot parse requirement {part:?}")));
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    fn matches(&self, labels: &[String]) -> bool {
        let parsed: BTreeMap<(String, String), String> = labels
            .iter()
            .map(|l| {
                let (src, rest) = l.split_once(':').unwrap_or(("unspec", l));
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                ((src.to_owned(), k.to_owned()), v.to_owned())
            })
            .collect();
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => k.lookup(&parsed) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => k.lookup(&parsed) != Some(v.as_str()),
            Requirement::In(k, vs) => k.lookup(&parsed).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => k.lookup(&parsed).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => k.lookup(&parsed).is_some(),
            Requirement::DoesNotExist(k) => k.lookup(&parsed).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn split_set_op<'a>(part: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    part.find(op).map(|i| (part[..i].trim(), part[i + op.len()..].trim()))
}

fn parse_set(field: &'static str, whole: &str, s: &str) -> Result<Vec<String>, FilterError> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| invalid(field, whole, "a set is written (a, b)"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_cidr(field: &'static str, s: &str) -> Result<IpNet, FilterError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| invalid(field, s, "not an IP address or CIDR"))
}

fn parse_port(field: &'static str, s: &str) -> Result<u16, FilterError> {
    s.parse::<u16>()
        .map_err(|_| invalid(field, s, "not a port number (0-65535)"))
}

/// A glob with `*` (any run of characters), Hubble's node-name patterns;
/// a `cluster/` prefix is accepted and must name the only cluster (any).
fn glob_match(pattern: &str, s: &str) -> bool {
    let pattern = pattern.split_once('/').map_or(pattern, |(_, node)| node);
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else { return false };
            rest = &rest[pos + part.len()..];
        }
    }
    rest.is_empty()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp4,
    Icmp6,
    Sctp,
}

/// One compiled `FlowFilter`.
#[derive(Debug, Default)]
struct Compiled {
    source_ip: Vec<IpNet>,
    source_ip_xlated: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<NamePattern>,
    destination_pod: Vec<NamePattern>,
    source_label: Vec<Selector>,
    destination_label: Vec<Selector>,
    source_service: Vec<NamePattern>,
    destination_service: Vec<NamePattern>,
    source_workload: Vec<flow::Workload>,
    destination_workload: Vec<flow::Workload>,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    drop_reason: Vec<i32>,
    interface: Vec<flow::NetworkInterface>,
    event_type: Vec<flow::EventTypeFilter>,
    protocol: Vec<Proto>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    reply: Vec<bool>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    tcp_flags: Vec<TcpFlags>,
    node_name: Vec<String>,
    ip_version: Vec<i32>,
    uuid: Vec<String>,
    encrypted: Vec<bool>,
    cluster: Vec<String>,
}

impl Compiled {
    fn new(f: &FlowFilter) -> Result<Self, FilterError> {
        const NO_L7: &str = "weir has no L7 visibility";
        let unsupported = [
            ("source_fqdn", !f.source_fqdn.is_empty(), NO_L7),
            ("destination_fqdn", !f.destination_fqdn.is_empty(), NO_L7),
            ("http_status_code", !f.http_status_code.is_empty(), NO_L7),
            ("http_method", !f.http_method.is_empty(), NO_L7),
            ("http_path", !f.http_path.is_empty(), NO_L7),
            ("http_url", !f.http_url.is_empty(), NO_L7),
            ("dns_query", !f.dns_query.is_empty(), NO_L7),
            ("trace_id", !f.trace_id.is_empty(), "weir flows carry no trace context"),
            (
                "node_labels",
                !f.node_labels.is_empty(),
                "weir flows carry no node labels",
            ),
        ];
        if let Some((field, _, why)) = unsupported.iter().find(|(_, set, _)| *set) {
            return Err(FilterError::Unsupported { field, why });
        }
        let cidrs = |field, v: &[String]| v.iter().map(|s| parse_cidr(field, s)).collect::<Result<Vec<_>, _>>();
        let names = |field, v: &[String]| {
            v.iter()
                .map(|s| NamePattern::parse(field, s))
                .collect::<Result<Vec<_>, _>>()
        };
        let selectors = |field, v: &[String]| {
            v.iter()
                .map(|s| Selector::parse(field, s))
                .collect::<Result<Vec<_>, _>>()
        };
        let ports = |field, v: &[String]| v.iter().map(|s| parse_port(field, s)).collect::<Result<Vec<_>, _>>();
        let protocol = f
            .protocol
            .iter()
            .map(|p| match p.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Proto::Tcp),
                "udp" => Ok(Proto::Udp),
                "icmp" | "icmpv4" => Ok(Proto::Icmp4),
                "icmpv6" => Ok(Proto::Icmp6),
                "sctp" => Ok(Proto::Sctp),
                "http" | "dns" | "kafka" => Err(FilterError::Unsupported {
                    field: "protocol",
                    why: NO_L7,
                }),
                _ => Err(invalid("protocol", p, "expected tcp, udp, icmp, icmpv6 or sctp")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for v in &f.verdict {
            if flow::Verdict::try_from(*v).is_err() {
                return Err(invalid("verdict", &v.to_string(), "unknown verdict"));
            }
        }
        for v in &f.traffic_direction {
            if flow::TrafficDirection::try_from(*v).is_err() {
                return Err(invalid("traffic_direction", &v.to_string(), "unknown direction"));
            }
        }
        Ok(Self {
            source_ip: cidrs("source_ip", &f.source_ip)?,
            source_ip_xlated: cidrs("source_ip_xlated", &f.source_ip_xlated)?,
            destination_ip: cidrs("destination_ip", &f.destination_ip)?,
            source_pod: names("source_pod", &f.source_pod)?,
            destination_pod: names("destination_pod", &f.destination_pod)?,
            source_label: selectors("source_label", &f.source_label)?,
            destination_label: selectors("destination_label", &f.destination_label)?,
            source_service: names("source_service", &f.source_service)?,
            destination_service: names("destination_service", &f.destination_service)?,
            source_workload: f.source_workload.clone(),
            destination_workload: f.destination_workload.clone(),
            traffic_direction: f.traffic_direction.clone(),
            verdict: f.verdict.clone(),
            drop_reason: f.drop_reason_desc.clone(),
            interface: f.interface.clone(),
            event_type: f.event_type.clone(),
            protocol,
            source_port: ports("source_port", &f.source_port)?,
            destination_port: ports("destination_port", &f.destination_port)?,
            reply: f.reply.clone(),
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            tcp_flags: f.tcp_flags.clone(),
            node_name: f.node_name.clone(),
            ip_version: f.ip_version.clone(),
            uuid: f.uuid.clone(),
            encrypted: f.encrypted.clone(),
            cluster: f
                .source_cluster_name
                .iter()
                .chain(&f.destination_cluster_name)
                .cloned()
                .collect(),
        })
    }

    fn matches(&self, f: &Flow) -> bool {
        let ip = f.ip.as_ref();
        let parse = |s: Option<&str>| s.and_then(|s| s.parse::<IpAddr>().ok());
        let src_ip = parse(ip.map(|i| i.source.as_str()));
        let src_xlated = parse(ip.map(|i| i.source_xlated.as_str()));
        let dst_ip = parse(ip.map(|i| i.destination.as_str()));
        let in_any = |nets: &[IpNet], a: Option<IpAddr>| {
            nets.is_empty() || a.is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
        };
        let ep = |e: &Option<flow::Endpoint>| e.clone().unwrap_or_default();
        let (src, dst) = (ep(&f.source), ep(&f.destination));
        let pods = |pats: &[NamePattern], e: &flow::Endpoint| {
            pats.is_empty() || pats.iter().any(|p| p.matches(&e.namespace, &e.pod_name))
        };
        let services = |pats: &[NamePattern], s: &Option<flow::Service>| {
            pats.is_empty()
                || s.as_ref()
                    .is_some_and(|s| pats.iter().any(|p| p.matches(&s.namespace, &s.name)))
        };
        let labels =
            |sels: &[Selector], e: &flow::Endpoint| sels.is_empty() || sels.iter().any(|s| s.matches(&e.labels));
        let workloads = |ws: &[flow::Workload], e: &flow::Endpoint| {
            ws.is_empty()
                || ws.iter().any(|w| {
                    e.workloads.iter().any(|x| {
                        (w.name.is_empty() || w.name == x.name)
                            && (w.kind.is_empty() || w.kind.eq_ignore_ascii_case(&x.kind))
                    })
                })
        };
        let one_of = |vs: &[i32], v: i32| vs.is_empty() || vs.contains(&v);
        let (proto, sport, dport, flags) = l4_of(f);
        in_any(&self.source_ip, src_ip)
            && in_any(&self.source_ip_xlated, src_xlated)
            && in_any(&self.destination_ip, dst_ip)
            && pods(&self.source_pod, &src)
            && pods(&self.destination_pod, &dst)
            && labels(&self.source_label, &src)
            && labels(&self.destination_label, &dst)
            && services(&self.source_service, &f.source_service)
            && services(&self.destination_service, &f.destination_service)
            && workloads(&self.source_workload, &src)
            && workloads(&self.destination_workload, &dst)
            && one_of(&self.traffic_direction, f.traffic_direction)
            && one_of(&self.verdict, f.verdict)
            && one_of(&self.drop_reason, f.drop_reason_desc)
            && one_of(&self.ip_version, ip.map_or(0, |i| i.ip_version))
            && (self.interface.is_empty()
                || f.interface.as_ref().is_some_and(|i| {
                    self.interface
                        .iter()
                        .any(|x| (x.index == 0 || x.index == i.index) && (x.name.is_empty() || x.name == i.name))
                }))
            && (self.event_type.is_empty()
                || f.event_type.as_ref().is_some_and(|t| {
                    self.event_type
                        .iter()
                        .any(|x| x.r#type == t.r#type && (!x.match_sub_type || x.sub_type == t.sub_type))
                }))
            && (self.protocol.is_empty() || proto.is_some_and(|p| self.protocol.contains(&p)))
            && (self.source_port.is_empty() || sport.is_some_and(|p| self.source_port.contains(&p)))
            && (self.destination_port.is_empty() || dport.is_some_and(|p| self.destination_port.contains(&p)))
            && (self.reply.is_empty() || f.is_reply.is_some_and(|r| self.reply.contains(&r)))
            && (self.source_identity.is_empty() || self.source_identity.contains(&src.identity))
            && (self.destination_identity.is_empty() || self.destination_identity.contains(&dst.identity))
            && (self.tcp_flags.is_empty()
                || flags.is_some_and(|fl| self.tcp_flags.iter().any(|want| has_flags(&fl, want))))
            && (self.node_name.is_empty() || self.node_name.iter().any(|p| glob_match(p, &f.node_name)))
            && (self.uuid.is_empty() || self.uuid.contains(&f.uuid))
            && (self.encrypted.is_empty() || self.encrypted.contains(&ip.is_some_and(|i| i.encrypted)))
            && (self.cluster.is_empty() || self.cluster.iter().any(|c| c == "default" || c.is_empty()))
    }
}

fn l4_of(f: &Flow) -> (Option<Proto>, Option<u16>, Option<u16>, Option<TcpFlags>) {
    use flow::layer4::Protocol as P;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(P::Tcp(t)) => (
            Some(Proto::Tcp),
            Some(t.source_port as u16),
            Some(t.destination_port as u16),
            Some(t.flags.unwrap_or_default()),
        ),
        Some(P::Udp(u)) => (
            Some(Proto::Udp),
            Some(u.source_port as u16),
            Some(u.destination_port as u16),
            None,
        ),
        Some(P::Sctp(s)) => (
            Some(Proto::Sctp),
            Some(s.source_port as u16),
            Some(s.destination_port as u16),
            None,
        ),
        Some(P::IcmPv4(_)) => (Some(Proto::Icmp4), None, None, None),
        Some(P::IcmPv6(_)) => (Some(Proto::Icmp6), None, None, None),
        None => (None, None, None, None),
    }
}

/// Every flag set in `want` is set in `have`.
fn has_flags(have: &TcpFlags, want: &TcpFlags) -> bool {
    let pairs = [
        (have.fin, want.fin),
        (have.syn, want.syn),
        (have.rst, want.rst),
        (have.psh, want.psh),
        (have.ack, want.ack),
        (have.urg, want.urg),
        (have.ece, want.ece),
        (have.cwr, want.cwr),
        (have.ns, want.ns),
    ];
    pairs.iter().all(|(h, w)| !*w || *h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, Ip, Layer4, Tcp, layer4::Protocol};

    #[test]
    fn a_request_with_too_many_or_too_large_filters_is_refused_with_the_limit() {
        let one = FlowFilter {
            source_pod: vec!["shop/client".into()],
            ..Default::default()
        };
        assert!(FlowFilters::compile(&vec![one.clone(); MAX_FILTERS], &[]).is_ok());
        let err = FlowFilters::compile(&vec![one; MAX_FILTERS + 1], &[]).unwrap_err();
        assert_eq!(err.to_string(), "filters in a whitelist or blacklist: at most 64");
        // One filter with a selector of 100,000 labels: what stalled the
        // agent's workers, refused before anything is compiled.
        let labels: Vec<String> = (0..100_000).map(|i| format!("k8s:app{i}=x")).collect();
        let huge = FlowFilter {
            source_label: vec![labels.join(",")],
            ..Default::default()
        };
        let err = FlowFilters::compile(&[], &[huge]).unwrap_err();
        assert_eq!(err.to_string(), "bytes of filters in one request: at most 65536");
    }

    fn flow() -> Flow {
        Flow {
            node_name: "node-a".into(),
            verdict: flow::Verdict::Forwarded as i32,
            traffic_direction: flow::TrafficDirection::Egress as i32,
            is_reply: Some(false),
            ip: Some(Ip {
                source: "10.244.1.5".into(),
                destination: "10.244.2.7".into(),
                ip_version: flow::IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(Tcp {
                    source_port: 40000,
                    destination_port: 8080,
                    flags: Some(TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "client-7f".into(),
                labels: vec!["k8s:app=client".into(), "k8s:tier=front".into()],
                identity: 300,
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "shop".into(),
                pod_name: "web-1".into(),
                labels: vec!["k8s:app=web".into()],
                identity: 301,
                workloads: vec![flow::Workload {
                    name: "web".into(),
                    kind: "Deployment".into(),
                }],
                ..Default::default()
            }),
            destination_service: Some(flow::Service {
                name: "web".into(),
                namespace: "shop".into(),
            }),
            ..Default::default()
        }
    }

    fn passes(w: FlowFilter) -> bool {
        FlowFilters::compile(&[w], &[]).unwrap().matches(&flow())
    }

    #[test]
    fn each_field_matches_and_mismatches() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: Vec<(FlowFilter, bool)> = vec![
            (
                FlowFilter {
                    source_pod: s(&["shop/client"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_pod: s(&["/client"]),
                    ..Default::default()
                },
                true,
            ),
            // No namespace: `default`, as Hubble's servers read it.
            (
                FlowFilter {
                    source_pod: s(&["client"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    source_pod: s(&["shop/"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_pod: s(&["other/client"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_pod: s(&["shop/web-"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_ip: s(&["10.244.1.0/24"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_ip: s(&["10.244.2.7"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_ip: s(&["10.244.2.7"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_label: s(&["app=client"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_label: s(&["k8s:app=client,tier in (front, back)"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_label: s(&["app=web"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    source_label: s(&["!tier"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_label: s(&["app notin (client)"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    destination_service: s(&["shop/web"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_service: s(&["shop/web"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    verdict: vec![flow::Verdict::Dropped as i32],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    protocol: s(&["TCP"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    protocol: s(&["udp"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_port: s(&["8080"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    source_port: s(&["8080"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    reply: vec![true],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    node_name: s(&["node-*"]),
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    node_name: s(&["default/node-b"]),
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_identity: vec![301],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    tcp_flags: vec![TcpFlags {
                        syn: true,
                        ack: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                false,
            ),
            (
                FlowFilter {
                    destination_workload: vec![flow::Workload {
                        name: "web".into(),
                        kind: String::new(),
                    }],
                    ..Default::default()
                },
                true,
            ),
            (
                FlowFilter {
                    traffic_direction: vec![flow::TrafficDirection::Ingress as i32],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (i, (filter, want)) in cases.into_iter().enumerate() {
            assert_eq!(passes(filter.clone()), want, "case {i}: {filter:?}");
        }
    }

    #[test]
    fn whitelist_is_any_blacklist_excludes() {
        let by_pod = |p: &str| FlowFilter {
            source_pod: vec![p.into()],
            ..Default::default()
        };
        let f = flow();
        assert!(
            FlowFilters::compile(&[by_pod("x"), by_pod("/client")], &[])
                .unwrap()
                .matches(&f)
        );
        assert!(!FlowFilters::compile(&[], &[by_pod("/client")]).unwrap().matches(&f));
        // Without a namespace, Hubble's servers mean `default`.
        assert!(!FlowFilters::compile(&[by_pod("client")], &[]).unwrap().matches(&f));
        assert!(FlowFilters::compile(&[], &[]).unwrap().matches(&f));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_reason() {
        let bad = [
            FlowFilter {
                source_ip: vec!["10.0.0.0/33".into()],
                ..Default::default()
            },
            FlowFilter {
                destination_port: vec!["http".into()],
                ..Default::default()
            },
            FlowFilter {
                protocol: vec!["gopher".into()],
                ..Default::default()
            },
            FlowFilter {
                source_label: vec!["app in a,b".into()],
                ..Default::default()
            },
            FlowFilter {
                source_pod: vec!["".into()],
                ..Default::default()
            },
            FlowFilter {
                http_method: vec!["GET".into()],
                ..Default::default()
            },
            FlowFilter {
                verdict: vec![99],
                ..Default::default()
            },
        ];
        for f in bad {
            let err = FlowFilters::compile(std::slice::from_ref(&f), &[]).unwrap_err();
            assert!(!err.to_string().is_empty(), "{f:?}");
        }
        let err = FlowFilters::compile(
            &[],
            &[FlowFilter {
                dns_query: vec!["x".into()],
                ..Default::default()
            }],
        );
        assert!(matches!(err, Err(FilterError::Unsupported { field: "dns_query", .. })));
    }

    /// Property tests of the filter compiler (issue 20): a GetFlows
    /// request is outside input; whatever filters it carries are compiled
    /// or refused with a reason, and a compiled one matches any flow
    /// without panicking.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9./:=,!_-]{0,24}".prop_map(|s| s),
                "[ -~]{0,24}".prop_map(|s| s),
                (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])),
                "k8s:[a-z]{1,5}(=[a-z]{0,5})?(,[a-z]{1,5} in \\([a-z,]{0,9}\\))?".prop_map(|s| s),
            ]
        }

        fn texts() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(text(), 0..3)
        }

        fn numbers() -> impl Strategy<Value = Vec<i32>> {
            prop::collection::vec(prop_oneof![0i32..20, any::<i32>()], 0..3)
        }

        prop_compose! {
            fn filter()(
                ips in (texts(), texts()),
                pods in (texts(), texts()),
                labels in (texts(), texts()),
                services in (texts(), texts()),
                ports in (texts(), texts()),
                protocol in texts(),
                node_name in texts(),
                verdict in numbers(),
                traffic_direction in numbers(),
                ip_version in numbers(),
                drop_reason_desc in numbers(),
                reply in prop::collection::vec(any::<bool>(), 0..2),
            ) -> FlowFilter {
                FlowFilter {
                    source_ip: ips.0,
                    destination_ip: ips.1,
                    source_pod: pods.0,
                    destination_pod: pods.1,
                    source_label: labels.0,
                    destination_label: labels.1,
                    source_service: services.0,
                    destination_service: services.1,
                    source_port: ports.0,
                    destination_port: ports.1,
                    protocol,
                    node_name,
                    verdict,
                    traffic_direction,
                    ip_version,
                    drop_reason_desc,
                    reply,
                    ..Default::default()
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_filters_compile_or_are_refused_and_match_without_panic(
                white in prop::collection::vec(filter(), 0..3),
                black in prop::collection::vec(filter(), 0..3),
            ) {
                if let Ok(f) = FlowFilters::compile(&white, &black) {
                    let _ = f.matches(&flow());
                }
            }
        }
    }
}
