//! Hubble's flow metrics with the context and filters users give them
//! ([`super::context`]): `hubble_flows_processed_total`,
//! `hubble_drop_total`, `hubble_port_distribution_total` and
//! `hubble_flows_to_world_total`, their label names fixed at start.
//! Their contexts read the flow's ends as its names have them
//! ([`Ends`], made from the event), so no flow is built for them; only
//! include/exclude filters, which match whole flows, build it.
//!
//! Series that name pods (a `pod`, `pod-name` or `ip` context, or such a
//! label) go when the pod does, as the per-pod byte series do.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use weir_datapath::events::{Event, EventKind};
use weir_proto::flow::Flow;

use super::context::{Ends, Kind, MetricSpec};

type Labels = Vec<(&'static str, String)>;
/// A flow's two ends, (namespace, pod) each.
type Pods = [(String, String); 2];

struct Handler {
    spec: MetricSpec,
    family: Family<Labels, Counter>,
    /// Series naming pods, with the (namespace, pod) of each end.
    pods: Option<Mutex<HashMap<Labels, Pods>>>,
}

/// What the caller already knows of the event, in the fixed labels'
/// words.
pub struct Fixed<'a> {
    pub r#type: &'a str,
    pub subtype: &'a str,
    pub verdict: &'a str,
    pub protocol: &'a str,
}

pub struct FlowMetrics {
    handlers: Vec<Handler>,
}

impl FlowMetrics {
    /// Registers every configured metric (none: an empty set).
    pub fn new(specs: Vec<MetricSpec>, registry: &mut Registry) -> Self {
        let handlers = specs
            .into_iter()
            .map(|spec| {
                let family = Family::<Labels, Counter>::default();
                let (name, help) = match spec.kind {
                    Kind::Flow => (
                        "hubble_flows_processed",
                        "Flows the agent processed, by type, subtype, verdict and protocol (and the configured context)",
                    ),
                    Kind::Drop => ("hubble_drop", "Packets dropped, by reason and protocol (and the configured context)"),
                    Kind::PortDistribution => (
                        "hubble_port_distribution",
                        "New connections forwarded, by protocol and destination port (and the configured context)",
                    ),
                    Kind::FlowsToWorld => (
                        "hubble_flows_to_world",
                        "New connections and drops to outside the cluster, by protocol and verdict (and the \
                         configured context)",
                    ),
                };
                registry.register(name, help, family.clone());
                let pods = spec.context.names_pods().then(|| Mutex::new(HashMap::new()));
                Handler { spec, family, pods }
            })
            .collect();
        Self { handlers }
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Counts one event with ends `ends`; `flow` builds its flow (once,
    /// on first need: only filters need it).
    pub fn observe<'f>(&self, e: &Event, fixed: &Fixed, ends: &Ends, flow: impl Fn() -> &'f Flow) {
        let new_connection = e.kind == EventKind::FlowStart && !e.is_reply();
        for h in &self.handlers {
            let wanted = match h.spec.kind {
                Kind::Flow => true,
                Kind::Drop => e.kind == EventKind::Drop,
                Kind::PortDistribution => new_connection && e.tuple.dport != 0,
                Kind::FlowsToWorld => new_connection || e.kind == EventKind::Drop,
            };
            if !wanted {
                continue;
            }
            if !h.spec.filters.is_empty() && !h.spec.filters.matches(flow()) {
                continue;
            }
            let mut labels: Labels = match h.spec.kind {
                Kind::Flow => vec![
                    ("type", fixed.r#type.into()),
                    ("subtype", fixed.subtype.into()),
                    ("verdict", fixed.verdict.into()),
                    ("protocol", fixed.protocol.into()),
                ],
                Kind::Drop => vec![("reason", drop_reason(e)), ("protocol", fixed.protocol.into())],
                Kind::PortDistribution => {
                    vec![("protocol", fixed.protocol.into()), ("port", e.tuple.dport.to_string())]
                }
                Kind::FlowsToWorld => {
                    if !ends.dst.labels.iter().any(|l| l == "reserved:world") {
                        continue;
                    }
                    vec![("protocol", fixed.protocol.into()), ("verdict", fixed.verdict.into())]
                }
            };
            labels.extend(h.spec.context.labels(ends));
            if let Some(pods) = &h.pods {
                let end = |e: &weir_proto::flow::Endpoint| (e.namespace.clone(), e.pod_name.clone());
                let mut pods = pods.lock().unwrap_or_else(|p| p.into_inner());
                if !pods.contains_key(&labels) {
                    pods.insert(labels.clone(), [end(ends.src), end(ends.dst)]);
                }
            }
            h.family.get_or_create(&labels).inc();
        }
    }

    /// Removes the series naming pods that are no longer named.
    pub fn retain_pods(&self, known: &HashSet<(String, String)>) {
        for h in &self.handlers {
            let Some(pods) = &h.pods else { continue };
            pods.lock().unwrap_or_else(|p| p.into_inner()).retain(|labels, ends| {
                let keep = ends
                    .iter()
                    .all(|(ns, pod)| pod.is_empty() || known.contains(&(ns.clone(), pod.clone())));
                if !keep {
                    h.family.remove(labels);
                }
                keep
            });
        }
    }
}

/// Hubble's name for the drop's reason, as its flow's `drop_reason_desc`.
fn drop_reason(e: &Event) -> String {
    e.drop_reason
        .map_or(
            weir_proto::flow::DropReason::Unknown,
            weir_flows::enrich::hubble_drop_code,
        )
        .as_str_name()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::context::{parse_file, parse_flag};
    use weir_datapath::drop::DropReason as Why;
    use weir_proto::flow::{Endpoint, Verdict};

    fn flow(src: (&str, &str), dst: (&str, &str), verdict: Verdict) -> Flow {
        let end = |(ns, pod): (&str, &str)| {
            Some(Endpoint {
                namespace: ns.into(),
                pod_name: pod.into(),
                labels: if pod.is_empty() {
                    vec!["reserved:world".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            })
        };
        Flow {
            source: end(src),
            destination: end(dst),
            verdict: verdict as i32,
            ..Default::default()
        }
    }

    fn event(kind: EventKind, dport: u16) -> Event {
        let mut e = Event::placeholder();
        e.kind = kind;
        e.drop_reason = (kind == EventKind::Drop).then_some(Why::PolicyDenied);
        e.tuple.dport = dport;
        e.tuple.proto = 6;
        e
    }

    const FIXED: Fixed = Fixed {
        r#type: "L3_L4",
        subtype: "to-pod",
        verdict: "DROPPED",
        protocol: "TCP",
    };

    fn exposition(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn contexts_name_each_end_and_excluded_namespaces_make_no_series() {
        let specs = parse_file(
            "metrics:\n\
             - name: drop\n  contextOptions: [{name: sourceContext, values: [pod]}, {name: destinationContext, values: [namespace]}]\n  \
               excludeFilters: [{source_pod: [kube-system/]}]\n\
             - name: port-distribution\n\
             - name: flows-to-world\n  contextOptions: [{name: sourceContext, values: [namespace]}]\n",
        )
        .unwrap();
        let mut registry = Registry::default();
        let m = FlowMetrics::new(specs, &mut registry);
        let denied = flow(("demo", "intruder"), ("demo", "web-1"), Verdict::Dropped);
        let system = flow(("kube-system", "coredns-1"), ("demo", "web-1"), Verdict::Dropped);
        let out = flow(("demo", "client"), ("", ""), Verdict::Forwarded);
        let none = Endpoint::default();
        let observe = |e: Event, fixed: &Fixed, f: &Flow| m.observe(&e, fixed, &Ends::of_flow(f, &none), || f);
        observe(event(EventKind::Drop, 80), &FIXED, &denied);
        observe(event(EventKind::Drop, 80), &FIXED, &system);
        let fwd = Fixed {
            verdict: "FORWARDED",
            ..FIXED
        };
        observe(event(EventKind::FlowStart, 443), &fwd, &out);
        let text = exposition(&registry);
        assert!(
            text.contains(r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP",source="demo/intruder",destination="demo"} 1"#),
            "{text}"
        );
        assert!(!text.contains("coredns"), "kube-system is excluded: {text}");
        assert!(
            text.contains(r#"hubble_port_distribution_total{protocol="TCP",port="443"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hubble_flows_to_world_total{protocol="TCP",verdict="FORWARDED",source="demo"} 1"#),
            "{text}"
        );
        // A deleted pod's series go with it.
        m.retain_pods(&HashSet::from([("demo".to_owned(), "web-1".to_owned())]));
        let text = exposition(&registry);
        assert!(!text.contains("intruder"), "{text}");
        assert!(
            text.contains("hubble_flows_to_world_total{"),
            "namespace series stay: {text}"
        );
    }

    #[test]
    fn a_flow_metric_with_labels_context() {
        let mut registry = Registry::default();
        let m = FlowMetrics::new(
            parse_flag("flow:labelsContext=source_namespace,destination_namespace").unwrap(),
            &mut registry,
        );
        let f = flow(("demo", "client"), ("demo", "web-1"), Verdict::Forwarded);
        let none = Endpoint::default();
        let fwd = Fixed {
            verdict: "FORWARDED",
            ..FIXED
        };
        m.observe(&event(EventKind::FlowStart, 80), &fwd, &Ends::of_flow(&f, &none), || &f);
        let text = exposition(&registry);
        assert!(
            text.contains(
                r#"hubble_flows_processed_total{type="L3_L4",subtype="to-pod",verdict="FORWARDED",protocol="TCP",source_namespace="demo",destination_namespace="demo"} 1"#
            ),
            "{text}"
        );
    }
}
