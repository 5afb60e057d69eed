//! Hubble's metric options, read the way Hubble reads them: which flow
//! metrics exist (`flow`, `drop`, `port-distribution`,
//! `flows-to-world`), with which source and destination context
//! (`sourceContext=namespace|pod`, `labelsContext=source_namespace,...`),
//! and for which flows (`includeFilters` / `excludeFilters`, to keep a
//! namespace's pods out of the series: cilium#30788). Given as Hubble's
//! flag syntax (`flow:sourceContext=workload;destinationContext=pod drop`)
//! or its YAML (`metrics: [{name, contextOptions, includeFilters,
//! excludeFilters}]`). Pure: parsing, and a flow's label values.

use std::net::Ipv4Addr;

use serde::Deserialize;
use weir_proto::filter::FlowFilters;
use weir_proto::flow::{Endpoint, Flow, TrafficDirection};

/// What contexts read of a flow: its two ends, their addresses and its
/// direction, as its Hubble flow has them. The agent makes it from the
/// event and its names without building the flow.
pub struct Ends<'a> {
    pub src: &'a Endpoint,
    pub dst: &'a Endpoint,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub direction: TrafficDirection,
}

impl<'a> Ends<'a> {
    pub fn of_flow(f: &'a Flow, none: &'a Endpoint) -> Self {
        let ip = |s: Option<&String>| s.and_then(|s| s.parse().ok()).unwrap_or(Ipv4Addr::UNSPECIFIED);
        Self {
            src: f.source.as_ref().unwrap_or(none),
            dst: f.destination.as_ref().unwrap_or(none),
            src_ip: ip(f.ip.as_ref().map(|i| &i.source)),
            dst_ip: ip(f.ip.as_ref().map(|i| &i.destination)),
            direction: TrafficDirection::try_from(f.traffic_direction).unwrap_or(TrafficDirection::Unknown),
        }
    }
}

fn ip_label(ip: Ipv4Addr) -> String {
    if ip.is_unspecified() {
        String::new()
    } else {
        ip.to_string()
    }
}

/// One context identifier (Hubble's `ContextIdentifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identifier {
    Identity,
    Namespace,
    Pod,
    PodName,
    Ip,
    ReservedIdentity,
    Workload,
    WorkloadName,
    App,
}

impl Identifier {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "identity" => Self::Identity,
            "namespace" => Self::Namespace,
            "pod" => Self::Pod,
            "pod-name" | "pod-short" => Self::PodName,
            "ip" => Self::Ip,
            "reserved-identity" => Self::ReservedIdentity,
            "workload" => Self::Workload,
            "workload-name" => Self::WorkloadName,
            "app" => Self::App,
            "dns" => return Err("dns: weir records no DNS names".into()),
            other => {
                return Err(format!(
                    "{other:?} is no context (identity, namespace, pod, pod-name, ip, reserved-identity, workload, \
                     workload-name, app)"
                ));
            }
        })
    }

    /// Whether a series with this context names a pod (its series go
    /// with the pod).
    fn names_pods(self) -> bool {
        matches!(self, Self::Pod | Self::PodName | Self::Ip)
    }
}

/// The labels `labelsContext` may add, in Hubble's order.
pub const LABELS: [&str; 13] = [
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_workload_kind",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_workload_kind",
    "destination_app",
    "traffic_direction",
];

/// Where a flow's source and destination are named in its series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextOptions {
    source: Vec<Identifier>,
    source_ingress: Vec<Identifier>,
    source_egress: Vec<Identifier>,
    destination: Vec<Identifier>,
    destination_ingress: Vec<Identifier>,
    destination_egress: Vec<Identifier>,
    /// Indexes into [`LABELS`], in its order.
    labels: Vec<usize>,
}

impl ContextOptions {
    pub fn parse(options: &[(String, Vec<String>)]) -> Result<Self, String> {
        let mut o = Self::default();
        for (name, values) in options {
            let ids = || -> Result<Vec<Identifier>, String> { values.iter().map(|v| Identifier::parse(v)).collect() };
            match name.to_ascii_lowercase().as_str() {
                "sourcecontext" => o.source = ids()?,
                "sourceingresscontext" => o.source_ingress = ids()?,
                "sourceegresscontext" => o.source_egress = ids()?,
                "destinationcontext" => o.destination = ids()?,
                "destinationingresscontext" => o.destination_ingress = ids()?,
                "destinationegresscontext" => o.destination_egress = ids()?,
                "labelscontext" => {
                    let mut idx = Vec::new();
                    for v in values {
                        let i = LABELS
                            .iter()
                            .position(|l| l == v)
                            .ok_or_else(|| format!("labelsContext: {v:?} is no label ({})", LABELS.join(", ")))?;
                        idx.push(i);
                    }
                    idx.sort_unstable();
                    idx.dedup();
                    o.labels = idx;
                }
                other => return Err(format!("{other:?} is no context option")),
            }
        }
        let has_ctx = o.has_source() || o.has_destination();
        if has_ctx && !o.labels.is_empty() {
            return Err("labelsContext cannot be combined with sourceContext or destinationContext".into());
        }
        Ok(o)
    }

    fn has_source(&self) -> bool {
        !(self.source.is_empty() && self.source_ingress.is_empty() && self.source_egress.is_empty())
    }

    fn has_destination(&self) -> bool {
        !(self.destination.is_empty() && self.destination_ingress.is_empty() && self.destination_egress.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        !self.has_source() && !self.has_destination() && self.labels.is_empty()
    }

    /// Whether its series name pods (so they go when the pod does).
    pub fn names_pods(&self) -> bool {
        [
            &self.source,
            &self.source_ingress,
            &self.source_egress,
            &self.destination,
            &self.destination_ingress,
            &self.destination_egress,
        ]
        .iter()
        .any(|ids| ids.iter().any(|i| i.names_pods()))
            || self.labels.iter().any(|&i| {
                matches!(
                    LABELS[i],
                    "source_pod" | "destination_pod" | "source_ip" | "destination_ip"
                )
            })
    }

    /// The labels this adds, in order, with their values for a flow.
    pub fn labels(&self, f: &Ends) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for &i in &self.labels {
            let name = LABELS[i];
            let (end, ip) = match name.starts_with("source_") {
                true => (f.src, f.src_ip),
                false => (f.dst, f.dst_ip),
            };
            let value = match name.split_once('_').map_or(name, |(_, field)| field) {
                "ip" => ip_label(ip),
                "pod" => end.pod_name.clone(),
                "namespace" => end.namespace.clone(),
                "workload" => end.workloads.first().map(|w| w.name.clone()).unwrap_or_default(),
                "workload_kind" => end.workloads.first().map(|w| w.kind.clone()).unwrap_or_default(),
                "app" => app(end),
                _ => match f.direction {
                    TrafficDirection::Ingress => "ingress".into(),
                    TrafficDirection::Egress => "egress".into(),
                    _ => "unknown".into(),
                },
            };
            out.push((name, value));
        }
        let ingress = f.direction == TrafficDirection::Ingress;
        let egress = f.direction == TrafficDirection::Egress;
        fn pick<'a>(
            ingress: bool,
            egress: bool,
            all: &'a [Identifier],
            i: &'a [Identifier],
            e: &'a [Identifier],
        ) -> &'a [Identifier] {
            match () {
                _ if ingress && !i.is_empty() => i,
                _ if egress && !e.is_empty() => e,
                _ => all,
            }
        }
        if self.has_source() {
            let ids = pick(ingress, egress, &self.source, &self.source_ingress, &self.source_egress);
            out.push(("source", value(ids, f.src, f.src_ip)));
        }
        if self.has_destination() {
            let ids = pick(
                ingress,
                egress,
                &self.destination,
                &self.destination_ingress,
                &self.destination_egress,
            );
            out.push(("destination", value(ids, f.dst, f.dst_ip)));
        }
        out
    }
}

/// The first of `ids` that gives a value (Hubble's fallback order).
fn value(ids: &[Identifier], e: &Endpoint, ip: Ipv4Addr) -> String {
    for id in ids {
        let v = match id {
            Identifier::Namespace => e.namespace.clone(),
            Identifier::Identity => e.labels.join(","),
            Identifier::Pod if e.pod_name.is_empty() => String::new(),
            Identifier::Pod if e.namespace.is_empty() => e.pod_name.clone(),
            Identifier::Pod => format!("{}/{}", e.namespace, e.pod_name),
            Identifier::PodName => e.pod_name.clone(),
            Identifier::Ip => ip_label(ip),
            Identifier::ReservedIdentity => reserved(&e.labels),
            Identifier::Workload => match e.workloads.first() {
                Some(w) if e.namespace.is_empty() => w.name.clone(),
                Some(w) => format!("{}/{}", e.namespace, w.name),
                None => String::new(),
            },
            Identifier::WorkloadName => e.workloads.first().map(|w| w.name.clone()).unwrap_or_default(),
            Identifier::App => app(e),
        };
        if !v.is_empty() {
            return v;
        }
    }
    String::new()
}

fn reserved(labels: &[String]) -> String {
    if let Some(api) = labels.iter().find(|l| *l == "reserved:kube-apiserver") {
        return api.clone();
    }
    labels
        .iter()
        .find(|l| l.starts_with("reserved:"))
        .cloned()
        .unwrap_or_default()
}

/// The app label Hubble looks for: app.kubernetes.io/name, then k8s-app,
/// then app.
fn app(e: &Endpoint) -> String {
    for key in ["app.kubernetes.io/name", "k8s-app", "app"] {
        let prefix = format!("k8s:{key}=");
        if let Some(v) = e.labels.iter().find_map(|l| l.strip_prefix(&prefix))
            && !v.is_empty()
        {
            return v.to_owned();
        }
    }
    String::new()
}

/// The flow metrics weir has of Hubble's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `hubble_flows_processed_total{protocol,type,subtype,verdict}`
    Flow,
    /// `hubble_drop_total{reason,protocol}`
    Drop,
    /// `hubble_port_distribution_total{protocol,port}`: destination ports
    /// of forwarded connections.
    PortDistribution,
    /// `hubble_flows_to_world_total{protocol,verdict}`: flows leaving
    /// the cluster.
    FlowsToWorld,
}

impl Kind {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "flow" => Self::Flow,
            "drop" => Self::Drop,
            "port-distribution" => Self::PortDistribution,
            "flows-to-world" => Self::FlowsToWorld,
            other => {
                return Err(format!(
                    "{other:?} is no flow metric weir has (flow, drop, port-distribution, flows-to-world)"
                ));
            }
        })
    }
}

/// One flow metric as configured.
#[derive(Debug)]
pub struct MetricSpec {
    pub kind: Kind,
    pub context: ContextOptions,
    pub filters: FlowFilters,
}

/// Hubble's flag syntax: metrics separated by spaces or commas, each
/// `name[:option=value|value;option=value,value]`.
pub fn parse_flag(flag: &str) -> Result<Vec<MetricSpec>, String> {
    // labelsContext's values are comma-separated too: split metrics on
    // spaces, and on commas only where a new metric name follows.
    let mut specs = Vec::new();
    for word in split_metrics(flag) {
        let (name, opts) = word.split_once(':').unwrap_or((word.as_str(), ""));
        let mut options = Vec::new();
        for opt in opts.split(';').filter(|o| !o.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let sep = if k.eq_ignore_ascii_case("labelsContext") {
                ','
            } else {
                '|'
            };
            options.push((
                k.to_owned(),
                v.split(sep).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            ));
        }
        specs.push(spec(name, &options, &[], &[]).map_err(|e| format!("{name}: {e}"))?);
    }
    check_unique(&specs)?;
    Ok(specs)
}

fn split_metrics(flag: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in flag.split_whitespace() {
        for part in word.split(',') {
            let starts_metric = !part.is_empty() && (part.contains(':') || Kind::parse(part).is_ok());
            match out.last_mut() {
                Some(last) if !starts_metric && last.contains("labelsContext=") => {
                    last.push(',');
                    last.push_str(part);
                }
                _ if part.is_empty() => {}
                _ => out.push(part.to_owned()),
            }
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    metrics: Vec<FileMetric>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileMetric {
    name: String,
    #[serde(default)]
    context_options: Vec<FileOption>,
    #[serde(default)]
    include_filters: Vec<serde_json::Value>,
    #[serde(default)]
    exclude_filters: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOption {
    name: String,
    #[serde(default)]
    values: Vec<String>,
}

/// Hubble's YAML (`hubble.metrics.dynamic`'s config).
pub fn parse_file(text: &str) -> Result<Vec<MetricSpec>, String> {
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let mut specs = Vec::new();
    for (i, m) in file.metrics.iter().enumerate() {
        let options: Vec<(String, Vec<String>)> = m
            .context_options
            .iter()
            .map(|o| (o.name.clone(), o.values.clone()))
            .collect();
        specs.push(
            spec(&m.name, &options, &m.include_filters, &m.exclude_filters)
                .map_err(|e| format!("metrics[{i}] ({}): {e}", m.name))?,
        );
    }
    check_unique(&specs)?;
    Ok(specs)
}

fn spec(
    name: &str,
    options: &[(String, Vec<String>)],
    include: &[serde_json::Value],
    exclude: &[serde_json::Value],
) -> Result<MetricSpec, String> {
    let filters = weir_proto::jsonpb::flow_filter_values;
    let include = filters(include).map_err(|e| format!("includeFilters: {e}"))?;
    let exclude = filters(exclude).map_err(|e| format!("excludeFilters: {e}"))?;
    Ok(MetricSpec {
        kind: Kind::parse(name)?,
        context: ContextOptions::parse(options)?,
        filters: FlowFilters::compile(&include, &exclude).map_err(|e| e.to_string())?,
    })
}

fn check_unique(specs: &[MetricSpec]) -> Result<(), String> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.kind == s.kind) {
            return Err(format!("{:?} is configured twice", s.kind));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::flow::{Ip, Workload};

    fn flow() -> Flow {
        Flow {
            ip: Some(Ip {
                source: "10.0.1.5".into(),
                destination: "10.0.2.7".into(),
                ..Default::default()
            }),
            source: Some(Endpoint {
                namespace: "demo".into(),
                pod_name: "client-7f9".into(),
                labels: vec!["k8s:app=client".into()],
                workloads: vec![Workload {
                    name: "client".into(),
                    kind: "Deployment".into(),
                }],
                ..Default::default()
            }),
            destination: Some(Endpoint {
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            traffic_direction: TrafficDirection::Egress as i32,
            ..Default::default()
        }
    }

    fn labels(flag: &str) -> Vec<(&'static str, String)> {
        let (f, none) = (flow(), Endpoint::default());
        parse_flag(flag)
            .unwrap()
            .remove(0)
            .context
            .labels(&Ends::of_flow(&f, &none))
    }

    fn pairs(v: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        v.iter().map(|(a, b)| (*a, b.to_string())).collect()
    }

    #[test]
    fn contexts_fall_back_in_order_as_hubble_s_do() {
        assert_eq!(
            labels("flow:sourceContext=workload;destinationContext=pod|reserved-identity"),
            pairs(&[("source", "demo/client"), ("destination", "reserved:world")])
        );
        assert_eq!(
            labels("flow:sourceContext=pod-name;destinationContext=ip"),
            pairs(&[("source", "client-7f9"), ("destination", "10.0.2.7")])
        );
        assert_eq!(
            labels("drop:sourceContext=app;destinationContext=namespace"),
            pairs(&[("source", "client"), ("destination", "")])
        );
        // Egress-specific context wins for egress flows.
        assert_eq!(
            labels("flow:sourceContext=namespace;sourceEgressContext=workload-name"),
            pairs(&[("source", "client")])
        );
    }

    #[test]
    fn labels_context_adds_hubble_s_labels_in_hubble_s_order() {
        assert_eq!(
            labels("flow:labelsContext=traffic_direction,source_namespace,destination_ip,source_workload_kind"),
            pairs(&[
                ("source_namespace", "demo"),
                ("source_workload_kind", "Deployment"),
                ("destination_ip", "10.0.2.7"),
                ("traffic_direction", "egress"),
            ])
        );
    }

    #[test]
    fn the_flag_lists_metrics_as_hubble_s_does() {
        let specs = parse_flag("flow:sourceContext=namespace drop,port-distribution flows-to-world").unwrap();
        let kinds: Vec<_> = specs.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Flow, Kind::Drop, Kind::PortDistribution, Kind::FlowsToWorld]
        );
        let s = parse_flag("drop:labelsContext=source_namespace,source_pod,flow").unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].context.names_pods());
    }

    #[test]
    fn mistakes_are_refused_with_their_reason() {
        for (flag, why) in [
            ("http", "no flow metric"),
            ("flow:sourceContext=nodes", "is no context"),
            ("flow:sourceContext=dns", "no DNS"),
            ("flow:labelsContext=source_colour", "is no label"),
            ("flow:colour=red", "is no context option"),
            ("flow:sourceContext=pod;labelsContext=source_pod", "cannot be combined"),
            ("flow drop flow", "twice"),
        ] {
            let e = parse_flag(flag).err().unwrap_or_default();
            assert!(e.contains(why), "{flag}: {e}");
        }
    }

    #[test]
    fn the_yaml_takes_filters_to_keep_namespaces_out() {
        let specs = parse_file(
            "metrics:\n- name: flow\n  contextOptions:\n  - {name: sourceContext, values: [namespace]}\n  \
             excludeFilters: [{source_pod: [kube-system/]}, {destination_pod: [kube-system/]}]\n",
        )
        .unwrap();
        let mut f = flow();
        assert!(specs[0].filters.matches(&f));
        f.source.as_mut().unwrap().namespace = "kube-system".into();
        f.source.as_mut().unwrap().pod_name = "coredns-1".into();
        assert!(!specs[0].filters.matches(&f), "kube-system's flows are excluded");
        let e = parse_file("metrics: [{name: flow, includeFilters: [{podd: [x]}]}]").unwrap_err();
        assert!(e.contains("metrics[0] (flow): includeFilters"), "{e}");
    }
}
