//! The agent's Prometheus metrics (prometheus-client, OpenMetrics text on
//! `/metrics`, loopback by default), named the way Cilium and Hubble users
//! know them: `hubble_flows_processed_total`, `hubble_lost_events_total`,
//! `weir_drop_count_total{reason,direction}`, per-pod bytes, the TCP
//! handshake histogram by destination workload, workload-to-workload
//! connections (the edges of a service map), conntrack occupancy and CNI
//! operation latency.
//!
//! Cardinality stays bounded: labels are namespaces, pods and workloads of
//! the cluster (per-pod series can be turned off), reasons and directions;
//! a deleted pod's series go when its name does (after the grace period).

pub mod context;
pub mod hubble;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use weir_datapath::events::{Event, EventKind, Tuple};
use weir_proto::flow::Endpoint;

use weir_flows::enrich::Named;
use weir_flows::names::FlowNames;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    r#type: String,
    subtype: String,
    verdict: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodBytesLabels {
    namespace: String,
    pod: String,
    protocol: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    destination_namespace: String,
    destination_workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    source_namespace: String,
    source_workload: String,
    destination_namespace: String,
    destination_workload: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

/// Hubble's `hubble_policy_verdicts_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: String,
    r#match: String,
    action: String,
}

/// Per policy: bounded by the policies that exist (a deleted policy's
/// series go with it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    kind: String,
    namespace: String,
    policy: String,
    direction: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyStateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabels {
    exporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportDropLabels {
    exporter: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Per connection direction, the byte count last reported: events carry
/// running totals, counters want increments.
#[derive(Default)]
struct ByteTotals {
    last: HashMap<Tuple, (u64, u64)>,
}

/// At most this many connection directions are remembered for byte deltas;
/// beyond it the table starts over (a few increments are then counted in
/// full again, which only overstates: said in the note).
const BYTE_TOTALS_MAX: usize = 65536;

pub struct Metrics {
    registry: Registry,
    per_pod: bool,
    /// `hubble_flows_processed_total` read from the event alone (the
    /// `flow` metric with no context or filters, the default); off when
    /// the configured `flow` metric is one of [`Self::hubble`]'s, or none.
    plain_flows: bool,
    flows: Family<FlowLabels, Counter>,
    hubble: hubble::FlowMetrics,
    drops: Family<DropLabels, Counter>,
    drop_bytes: Family<DropLabels, Counter>,
    forwarded: Family<DirectionLabels, Counter>,
    forwarded_bytes: Family<DirectionLabels, Counter>,
    lost: Family<LostLabels, Counter>,
    lost_seen: AtomicU64,
    rate_limited_seen: AtomicU64,
    pod_bytes: Family<PodBytesLabels, Counter>,
    handshake: HistogramFamily<WorkloadLabels>,
    edges: Family<EdgeLabels, Counter>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    cni: HistogramFamily<OperationLabels>,
    cni_add_phases: HistogramFamily<PhaseLabels>,
    verdicts: Family<VerdictLabels, Counter>,
    policy_verdicts: Family<PolicyLabels, Counter>,
    policies: Family<PolicyStateLabels, Gauge>,
    policy_slots: Gauge,
    policy_compile: Histogram,
    network_programming: Histogram,
    services_sync: Histogram,
    refused_pod_cidrs: Gauge,
    refused_frontends: Gauge,
    over_budget: Gauge,
    kube_objects: Family<KindLabels, Gauge>,
    kube_unreadable: Family<KindLabels, Counter>,
    kube_errors: Family<KindLabels, Counter>,
    kube_relists: Family<KindLabels, Counter>,
    export_flows: Family<ExporterLabels, Counter>,
    export_dropped: Family<ExportDropLabels, Counter>,
    export_reloads: Family<ResultLabels, Counter>,
    export_config_ok: Gauge,
    exporters: Gauge,
    controller_up: Family<ControllerLabels, Gauge>,
    controller_failures: Family<ControllerLabels, Counter>,
    policy_series: Mutex<HashSet<PolicyLabels>>,
    byte_totals: Mutex<ByteTotals>,
    pods_with_series: Mutex<HashSet<(String, String)>>,
    /// The workload series made (edges, handshake latency), so those of
    /// workloads that are gone can be removed: without it every Job run,
    /// every bare pod ever seen would keep its series for the agent's life.
    workload_series: Mutex<(HashSet<EdgeLabels>, HashSet<WorkloadLabels>)>,
}

/// 100 µs to 6.5 s: a burst of ADDs queues for seconds.
fn phase_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn latency_buckets() -> Histogram {
    // 50 µs to ~3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn workload(e: &Endpoint) -> String {
    if let Some(w) = e.workloads.first() {
        return w.name.clone();
    }
    if !e.pod_name.is_empty() {
        return e.pod_name.clone();
    }
    // A reserved entity: its label says which.
    e.labels
        .first()
        .and_then(|l| l.strip_prefix("reserved:"))
        .unwrap_or("unknown")
        .to_owned()
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        1 => "ICMPv4",
        58 => "ICMPv6",
        _ => "unknown",
    }
}

fn verdict_name(e: &Event) -> &'static str {
    match e.kind {
        EventKind::Drop => "DROPPED",
        EventKind::Trace => "TRACED",
        _ => "FORWARDED",
    }
}

fn direction_name(d: u8) -> &'static str {
    match u32::from(d) {
        weir_datapath::abi::DIR_INGRESS => "INGRESS",
        weir_datapath::abi::DIR_EGRESS => "EGRESS",
        _ => "UNKNOWN",
    }
}

impl Metrics {
    /// The default metrics: `hubble_flows_processed_total` without context.
    pub fn new(per_pod: bool) -> Self {
        let plain = context::parse_flag("flow").unwrap_or_default();
        Self::with_flow_metrics(per_pod, plain)
    }

    /// With Hubble's flow metrics as configured (`--hubble-metrics`).
    pub fn with_flow_metrics(per_pod: bool, mut specs: Vec<context::MetricSpec>) -> Self {
        let mut registry = Registry::default();
        let plain = specs
            .iter()
            .position(|s| s.kind == context::Kind::Flow && s.context.is_empty() && s.filters.is_empty());
        let plain_flows = plain.map(|i| specs.remove(i)).is_some();
        let hubble = hubble::FlowMetrics::new(specs, &mut registry);
        let m = Self {
            registry: Registry::default(),
            per_pod,
            plain_flows,
            flows: Family::default(),
            hubble,
            drops: Family::default(),
            drop_bytes: Family::default(),
            forwarded: Family::default(),
            forwarded_bytes: Family::default(),
            lost: Family::default(),
            lost_seen: AtomicU64::new(0),
            rate_limited_seen: AtomicU64::new(0),
            pod_bytes: Family::default(),
            handshake: Family::new_with_constructor(latency_buckets),
            edges: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            cni: Family::new_with_constructor(latency_buckets),
            cni_add_phases: Family::new_with_constructor(phase_buckets),
            verdicts: Family::default(),
            policy_verdicts: Family::default(),
            policies: Family::default(),
            policy_slots: Gauge::default(),
            policy_compile: latency_buckets(),
            // 1 ms to ~65 s, as kube-proxy's SLI.
            network_programming: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 ms to ~8 s.
            services_sync: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            refused_pod_cidrs: Gauge::default(),
            refused_frontends: Gauge::default(),
            over_budget: Gauge::default(),
            kube_objects: Family::default(),
            kube_unreadable: Family::default(),
            kube_errors: Family::default(),
            kube_relists: Family::default(),
            export_flows: Family::default(),
            export_dropped: Family::default(),
            export_reloads: Family::default(),
            export_config_ok: Gauge::default(),
            exporters: Gauge::default(),
            controller_up: Family::default(),
            controller_failures: Family::default(),
            policy_series: Mutex::new(HashSet::new()),
            byte_totals: Mutex::new(ByteTotals::default()),
            pods_with_series: Mutex::new(HashSet::new()),
            workload_series: Mutex::new((HashSet::new(), HashSet::new())),
        };
        if m.plain_flows {
            registry.register(
                "hubble_flows_processed",
                "Flows the agent processed, by type, subtype, verdict and protocol",
                m.flows.clone(),
            );
        }
        registry.register(
            "hubble_lost_events",
            "Flow events lost before they became flows, by where",
            m.lost.clone(),
        );
        registry.register(
            "weir_drop_count",
            "Packets the datapath dropped, by reason and direction relative to the pod",
            m.drops.clone(),
        );
        registry.register_with_unit(
            "weir_drop",
            "Bytes the datapath dropped, by reason and direction",
            Unit::Bytes,
            m.drop_bytes.clone(),
        );
        registry.register(
            "weir_forward_count",
            "Packets of pod connections forwarded, by direction relative to the pod",
            m.forwarded.clone(),
        );
        registry.register_with_unit(
            "weir_forward",
            "Bytes of pod connections forwarded, by direction relative to the pod",
            Unit::Bytes,
            m.forwarded_bytes.clone(),
        );
        registry.register_with_unit(
            "weir_pod",
            "Bytes pods sent and received over TCP, UDP and SCTP, by pod",
            Unit::Bytes,
            m.pod_bytes.clone(),
        );
        registry.register_with_unit(
            "weir_tcp_handshake",
            "SYN to SYN-ACK as the node saw it, by destination workload",
            Unit::Seconds,
            m.handshake.clone(),
        );
        registry.register(
            "weir_workload_connections",
            "Connections between workloads (the edges of a service map), by verdict",
            m.edges.clone(),
        );
        registry.register(
            "weir_bpf_map_entries",
            "Entries in the datapath's maps (conntrack; nat: the translated connections in it; conntrack_node: \
             the node's share of it, connections from outside through NodePorts and external IPs)",
            m.map_entries.clone(),
        );
        registry.register(
            "weir_bpf_map_capacity",
            "Capacity of the datapath's maps",
            m.map_capacity.clone(),
        );
        registry.register_with_unit(
            "weir_cni_operation_duration",
            "Time the agent took to answer the CNI plugin, by operation",
            Unit::Seconds,
            m.cni.clone(),
        );
        registry.register_with_unit(
            "weir_cni_add_phase_duration",
            "Where the agent's time answering a pod ADD went: queued (for a blocking thread), lock (for the \
             endpoints, one change at a time), datapath (interface, maps, routes), policy (until the pod's \
             policy is programmed)",
            Unit::Seconds,
            m.cni_add_phases.clone(),
        );
        registry.register(
            "hubble_policy_verdicts",
            "Policy verdicts of new connections, by direction, match type and action",
            m.verdicts.clone(),
        );
        registry.register(
            "weir_policy_verdicts",
            "Policy verdicts of new connections by deciding policy, direction and action",
            m.policy_verdicts.clone(),
        );
        registry.register(
            "weir_policies",
            "Policies the agent read, by state (valid, rejected)",
            m.policies.clone(),
        );
        registry.register(
            "weir_policy_map_entries",
            "Entries the policy tables hold for this node's endpoints",
            m.policy_slots.clone(),
        );
        registry.register_with_unit(
            "weir_policy_update_duration",
            "Time to compile and write the policy tables, per change",
            Unit::Seconds,
            m.policy_compile.clone(),
        );
        registry.register_with_unit(
            "weir_network_programming_duration",
            "From a change of a Service's endpoints (its EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time) until the datapath serves it, as kube-proxy's network programming SLI",
            Unit::Seconds,
            m.network_programming.clone(),
        );
        registry.register_with_unit(
            "weir_services_sync_duration",
            "From the agent's source receiving a change of Services or EndpointSlices (its watch event, or the manifest's change) until the service maps hold it",
            Unit::Seconds,
            m.services_sync.clone(),
        );
        registry.register(
            "weir_kubernetes_objects",
            "Objects the Kubernetes source holds, by kind",
            m.kube_objects.clone(),
        );
        registry.register(
            "weir_kubernetes_unreadable_objects",
            "Objects from the API server the agent could not read into their types, by kind",
            m.kube_unreadable.clone(),
        );
        registry.register(
            "weir_kubernetes_watch_errors",
            "Errors of the API server's list and watch calls, by kind (each retried with backoff)",
            m.kube_errors.clone(),
        );
        registry.register(
            "weir_node_pod_cidrs_refused",
            "Pod CIDRs of other Node objects not routed (outside the cluster CIDR, holding a node address, or overlapping another node's); the agent logs why",
            m.refused_pod_cidrs.clone(),
        );
        registry.register(
            "weir_policy_endpoints_over_budget",
            "Local endpoints whose policies need more datapath table slots than an endpoint may take: isolated (the node still reaches them); the agent logs which",
            m.over_budget.clone(),
        );
        registry.register(
            "weir_service_frontends_refused",
            "External frontends (externalIPs, load balancer IPs) of Services not served: another Service's ClusterIP, a node's address, or an older Service's claim; the agent logs which",
            m.refused_frontends.clone(),
        );
        registry.register(
            "weir_kubernetes_relists",
            "Lists after the first (a watch expired or the API server came back), by kind",
            m.kube_relists.clone(),
        );
        registry.register(
            "weir_flow_export_flows",
            "Flows exported: written to the exporter's file, or accepted by its collector",
            m.export_flows.clone(),
        );
        registry.register(
            "weir_flow_export_dropped",
            "Flows an exporter lost, by why: lagged (it fell behind the agent's flows), queue_full (its writer or \
             collector could not keep up), write_failed, export_failed (the collector was unreachable or refused the \
             batch), rejected (the collector refused part of a batch)",
            m.export_dropped.clone(),
        );
        registry.register(
            "weir_flow_export_config_reloads",
            "Flow export configurations read, by result (failure: refused, the exporters left as they were)",
            m.export_reloads.clone(),
        );
        registry.register(
            "weir_flow_export_config_last_reload_successful",
            "1 if the flow export configuration last read was applied, 0 if it was refused",
            m.export_config_ok.clone(),
        );
        registry.register("weir_flow_exporters", "Flow exporters running", m.exporters.clone());
        registry.register(
            "weir_controller_up",
            "1 while the controller runs, 0 after it failed (until it is restarted)",
            m.controller_up.clone(),
        );
        registry.register(
            "weir_controller_failures",
            "Times a controller panicked or was cancelled",
            m.controller_failures.clone(),
        );
        Self { registry, ..m }
    }

    /// The Kubernetes source's counts for one kind.
    pub fn kube_objects(&self, kind: &str, n: usize) {
        self.kube_objects
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(n as i64);
    }

    /// How many local endpoints are isolated for their policy's size.
    pub fn over_budget(&self, n: usize) {
        self.over_budget.set(n as i64);
    }

    /// How many external frontends of Services are refused.
    pub fn refused_frontends(&self, n: usize) {
        self.refused_frontends.set(n as i64);
    }

    /// How many pod CIDRs of other nodes the routes leave out.
    pub fn refused_pod_cidrs(&self, n: usize) {
        self.refused_pod_cidrs.set(n as i64);
    }

    pub fn kube_unreadable(&self, kind: &str) {
        self.kube_unreadable
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn kube_error(&self, kind: &str) {
        self.kube_errors.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    pub fn kube_relisted(&self, kind: &str) {
        self.kube_relists.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    /// What a policy pass left: counts of valid and rejected policies,
    /// table size, how long it took; per-policy series of policies that
    /// no longer exist are removed.
    /// Changes of Services or EndpointSlices programmed, `took` after the
    /// source received the first of them.
    pub fn services_synced(&self, took: Duration) {
        self.services_sync.observe(took.as_secs_f64());
    }

    /// One EndpointSlice change programmed, `took` after its trigger.
    pub fn network_programmed(&self, took: Duration) {
        self.network_programming.observe(took.as_secs_f64());
    }

    pub fn set_policy_state(&self, c: &weir_model::policy::Compiled, slots: usize, ok: bool, took: Duration) {
        let named: HashSet<(String, String, String)> = c
            .rules
            .values()
            .filter_map(|r| r.policy.as_ref())
            .map(|p| (p.kind.name().to_string(), p.namespace.clone(), p.name.clone()))
            .collect();
        let valid = named.len() as i64 - c.rejected.len() as i64;
        self.policies
            .get_or_create(&PolicyStateLabels { state: "valid".into() })
            .set(valid.max(0));
        self.policies
            .get_or_create(&PolicyStateLabels {
                state: "rejected".into(),
            })
            .set(c.rejected.len() as i64);
        self.policies
            .get_or_create(&PolicyStateLabels {
                state: "unprogrammed".into(),
            })
            .set(i64::from(!ok));
        self.policy_slots.set(slots as i64);
        self.policy_compile.observe(took.as_secs_f64());
        let mut series = self.policy_series.lock().unwrap_or_else(|p| p.into_inner());
        series.retain(|l| {
            let keep = named.contains(&(l.kind.clone(), l.namespace.clone(), l.policy.clone()));
            if !keep {
                self.policy_verdicts.remove(l);
            }
            keep
        });
    }

    /// A new connection's (or a policy drop's) verdicts, per direction.
    fn count_verdicts(&self, e: &Event, named: &Named) {
        use weir_datapath::policy::VerdictKind as K;
        for (i, (v, direction)) in [(e.policy_egress, "egress"), (e.policy_ingress, "ingress")]
            .into_iter()
            .enumerate()
        {
            let action = match v.kind {
                K::None => continue,
                K::Allow => "forwarded",
                K::Audit => "audit",
                K::Denied | K::Deny => "dropped",
            };
            let name = named.policy[i].as_deref();
            self.verdicts
                .get_or_create(&VerdictLabels {
                    direction: direction.into(),
                    r#match: name.map_or("none", |n| n.rule.what.match_type().name()).into(),
                    action: action.into(),
                })
                .inc();
            if let Some(p) = name.and_then(|n| n.rule.policy.as_ref()) {
                let labels = PolicyLabels {
                    kind: p.kind.name().into(),
                    namespace: p.namespace.clone(),
                    policy: p.name.clone(),
                    direction: direction.into(),
                    action: action.into(),
                };
                self.policy_verdicts.get_or_create(&labels).inc();
                self.policy_series
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(labels);
            }
        }
    }

    /// Counts a stored flow: from its event and names, and for the
    /// configured Hubble metrics from its flow (built here if they need it).
    pub fn observe_record(&self, r: &weir_flows::store::FlowRecord) {
        self.observe(&r.event, &r.named);
        if !self.hubble.is_empty() {
            let e = &r.event;
            let fixed = hubble::Fixed {
                r#type: "L3_L4",
                subtype: weir_flows::enrich::observation(e.obs).0,
                verdict: verdict_name(e),
                protocol: protocol_name(e.tuple.proto),
            };
            let tr = weir_flows::enrich::translation(e);
            let ends = context::Ends {
                src: &r.named.src,
                dst: &r.named.dst,
                src_ip: tr.src.0,
                dst_ip: tr.dst.0,
                direction: weir_flows::enrich::traffic_direction(e),
            };
            self.hubble.observe(e, &fixed, &ends, || r.flow().as_ref());
        }
    }

    fn observe(&self, e: &Event, named: &Named) {
        let verdict = verdict_name(e);
        let proto = protocol_name(e.tuple.proto);
        if self.plain_flows {
            self.flows
                .get_or_create(&FlowLabels {
                    r#type: "L3_L4".into(),
                    subtype: weir_flows::enrich::observation(e.obs).0.into(),
                    verdict: verdict.into(),
                    protocol: proto.into(),
                })
                .inc();
        }
        let src: &Endpoint = &named.src;
        let service_end;
        // A service's VIP is no pod: the edge goes to the service (a drop
        // before any backend was chosen, say).
        let dst: &Endpoint = match &named.service {
            Some(svc) if named.dst.pod_name.is_empty() && !e.is_reply() => {
                service_end = Endpoint {
                    namespace: svc.namespace.clone(),
                    workloads: vec![weir_proto::flow::Workload {
                        name: svc.name.clone(),
                        kind: "Service".into(),
                    }],
                    ..Default::default()
                };
                &service_end
            }
            _ => &named.dst,
        };
        match e.kind {
            EventKind::Drop => {
                let labels = DropLabels {
                    reason: e.drop_reason.map_or("unknown", |r| r.name()).into(),
                    direction: direction_name(e.direction).into(),
                };
                self.drops.get_or_create(&labels).inc();
                self.drop_bytes.get_or_create(&labels).inc_by(u64::from(e.len));
                self.edge(src, dst, "DROPPED");
                self.count_verdicts(e, named);
            }
            EventKind::Trace => {}
            _ => {
                if e.kind == EventKind::FlowStart && !e.is_reply() {
                    self.edge(src, dst, "FORWARDED");
                    self.count_verdicts(e, named);
                }
                if e.handshake_ns > 0 {
                    // The SYN-ACK's sender is the server.
                    let labels = WorkloadLabels {
                        destination_namespace: src.namespace.clone(),
                        destination_workload: workload(src),
                    };
                    self.handshake
                        .get_or_create(&labels)
                        .observe(e.handshake_ns as f64 / 1e9);
                    self.workload_series
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .1
                        .insert(labels);
                }
                self.count_bytes(e, src, dst, proto);
            }
        }
    }

    fn edge(&self, src: &Endpoint, dst: &Endpoint, verdict: &str) {
        let labels = EdgeLabels {
            source_namespace: src.namespace.clone(),
            source_workload: workload(src),
            destination_namespace: dst.namespace.clone(),
            destination_workload: workload(dst),
            verdict: verdict.into(),
        };
        self.edges.get_or_create(&labels).inc();
        self.workload_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(labels);
    }

    /// The increments since this connection direction last reported.
    fn count_bytes(&self, e: &Event, src: &Endpoint, dst: &Endpoint, proto: &str) {
        let (packets_delta, bytes_delta) = {
            let mut totals = self.byte_totals.lock().unwrap_or_else(|p| p.into_inner());
            if totals.last.len() >= BYTE_TOTALS_MAX {
                totals.last.clear();
            }
            let before = if e.kind == EventKind::FlowEnd {
                totals.last.remove(&e.tuple)
            } else {
                totals.last.insert(e.tuple, (e.packets, e.bytes))
            };
            let (p0, b0) = before.unwrap_or((0, 0));
            (e.packets.saturating_sub(p0), e.bytes.saturating_sub(b0))
        };
        if bytes_delta == 0 {
            return;
        }
        let dir = direction_name(e.direction);
        self.forwarded
            .get_or_create(&DirectionLabels { direction: dir.into() })
            .inc_by(packets_delta);
        self.forwarded_bytes
            .get_or_create(&DirectionLabels { direction: dir.into() })
            .inc_by(bytes_delta);
        for (ep, direction) in [(src, "sent"), (dst, "received")] {
            if ep.pod_name.is_empty() {
                continue;
            }
            let pod = if self.per_pod {
                ep.pod_name.clone()
            } else {
                String::new()
            };
            self.pod_bytes
                .get_or_create(&PodBytesLabels {
                    namespace: ep.namespace.clone(),
                    pod: pod.clone(),
                    protocol: proto.into(),
                    direction: direction.into(),
                })
                .inc_by(bytes_delta);
            if self.per_pod {
                self.pods_with_series
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((ep.namespace.clone(), pod));
            }
        }
    }

    /// Removes the series of pods and workloads no longer named (gone
    /// past the names' grace period): per-pod bytes, workload edges and
    /// handshake latency. Reserved entities (world, host: no namespace)
    /// are few and stay.
    pub fn retain_named(&self, names: &FlowNames) {
        let known: HashSet<(String, String)> = names
            .endpoints()
            .map(|e| (e.namespace.clone(), workload(e)))
            .chain(names.services().map(|s| (s.namespace.clone(), s.name.clone())))
            .collect();
        let named = |ns: &String, w: &String| ns.is_empty() || known.contains(&(ns.clone(), w.clone()));
        let mut series = self.workload_series.lock().unwrap_or_else(|p| p.into_inner());
        series.0.retain(|l| {
            let keep = named(&l.source_namespace, &l.source_workload)
                && named(&l.destination_namespace, &l.destination_workload);
            if !keep {
                self.edges.remove(l);
            }
            keep
        });
        series.1.retain(|l| {
            let keep = named(&l.destination_namespace, &l.destination_workload);
            if !keep {
                self.handshake.remove(l);
            }
            keep
        });
        drop(series);
        self.retain_pods(names);
    }

    /// Removes the per-pod series of pods no longer named.
    fn retain_pods(&self, names: &FlowNames) {
        let known: HashSet<(String, String)> = names.pods().collect();
        self.hubble.retain_pods(&known);
        let mut with = self.pods_with_series.lock().unwrap_or_else(|p| p.into_inner());
        with.retain(|(ns, pod)| {
            if known.contains(&(ns.clone(), pod.clone())) {
                return true;
            }
            for protocol in ["TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6", "unknown"] {
                for direction in ["sent", "received"] {
                    self.pod_bytes.remove(&PodBytesLabels {
                        namespace: ns.clone(),
                        pod: pod.clone(),
                        protocol: protocol.into(),
                        direction: direction.into(),
                    });
                }
            }
            false
        });
    }

    /// The datapath's lost-event total (a running count).
    pub fn set_lost(&self, total: u64) {
        let before = self.lost_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.lost
                .get_or_create(&LostLabels {
                    source: "perf_event_ring_buffer".into(),
                })
                .inc_by(total - before);
        }
    }

    /// Drop events the datapath's per-endpoint rate held back (a running
    /// total, as [`Self::set_lost`]).
    pub fn set_rate_limited(&self, total: u64) {
        let before = self.rate_limited_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.lost
                .get_or_create(&LostLabels {
                    source: "drop_event_rate_limit".into(),
                })
                .inc_by(total - before);
        }
    }

    pub fn export_flows(&self, exporter: &str, n: u64) {
        self.export_flows
            .get_or_create(&ExporterLabels {
                exporter: exporter.into(),
            })
            .inc_by(n);
    }

    pub fn export_dropped(&self, exporter: &str, reason: &str, n: u64) {
        self.export_dropped
            .get_or_create(&ExportDropLabels {
                exporter: exporter.into(),
                reason: reason.into(),
            })
            .inc_by(n);
    }

    pub fn export_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.export_reloads
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
        self.export_config_ok.set(i64::from(ok));
    }

    pub fn controller_up(&self, controller: &str, up: bool) {
        self.controller_up
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .set(i64::from(up));
    }

    pub fn controller_failed(&self, controller: &str) {
        self.controller_failures
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .inc();
    }

    pub fn set_exporters(&self, n: usize) {
        self.exporters.set(n as i64);
    }

    pub fn set_map(&self, map: &str, entries: u64, capacity: u64) {
        let labels = MapLabels { map: map.into() };
        self.map_entries.get_or_create(&labels).set(entries as i64);
        self.map_capacity.get_or_create(&labels).set(capacity as i64);
    }

    pub fn observe_cni_add_phase(&self, phase: &'static str, took: Duration) {
        self.cni_add_phases
            .get_or_create(&PhaseLabels { phase: phase.into() })
            .observe(took.as_secs_f64());
    }

    pub fn observe_cni(&self, operation: &str, took: Duration) {
        self.cni
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// OpenMetrics text, what Prometheus asks for.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics (curl, promtool check metrics).
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

/// OpenMetrics text to Prometheus text 0.0.4: a counter's HELP and TYPE
/// name the `_total` series (OpenMetrics names the family without it),
/// and UNIT and EOF lines do not exist there.
pub fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(&format!("{kind}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `/metrics`, and the probes a DaemonSet's kubelet runs:
/// `/healthz` (every controller runs: 503 naming those that do not) and `/readyz` (`SyncStatus::readiness`:
/// 503 with what is pending), until the process ends.
pub async fn serve(
    metrics: Arc<Metrics>,
    sync: Arc<crate::sync::SyncStatus>,
    health: Arc<crate::supervise::Health>,
    listener: tokio::net::TcpListener,
) {
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %weir_error::Report(&e), "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let sync = sync.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let sync = sync.clone();
                let health = health.clone();
                async move {
                    let openmetrics = req
                        .headers()
                        .get("accept")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    if req.uri().path() == "/metrics" && openmetrics {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(metrics.encode())
                    } else if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(metrics.encode_classic())
                    } else if req.uri().path() == "/healthz" {
                        match health.failing() {
                            failing if failing.is_empty() => Response::builder().body("ok\n".to_owned()),
                            failing => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(format!("controllers failing: {}\n", failing.join("; "))),
                        }
                    } else if req.uri().path() == "/readyz" {
                        match sync.readiness() {
                            Ok(()) => Response::builder().body("ok\n".to_owned()),
                            Err(pending) => Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .body(format!("not ready: {}\n", pending.join(", "))),
                        }
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body("only /metrics, /healthz and /readyz here\n".to_owned())
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Binds the metrics listener; a failure is the caller's to report.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// The flow pipeline's and the exporters' counters, as `weir-flows` asks
/// for them.
impl weir_flows::FlowMetrics for Metrics {
    fn observe_record(&self, record: &weir_flows::store::FlowRecord) {
        Metrics::observe_record(self, record)
    }
    fn retain_named(&self, names: &FlowNames) {
        Metrics::retain_named(self, names)
    }
    fn set_lost(&self, total: u64) {
        Metrics::set_lost(self, total)
    }
    fn set_rate_limited(&self, total: u64) {
        Metrics::set_rate_limited(self, total)
    }
    fn set_exporters(&self, running: usize) {
        Metrics::set_exporters(self, running)
    }
    fn export_reload(&self, ok: bool) {
        Metrics::export_reload(self, ok)
    }
    fn export_flows(&self, exporter: &str, n: u64) {
        Metrics::export_flows(self, exporter, n)
    }
    fn export_dropped(&self, exporter: &str, reason: &str, n: u64) {
        Metrics::export_dropped(self, exporter, reason, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_of_a_workload_that_is_gone_go_with_it() {
        let m = Metrics::new(false);
        let ep = |ns: &str, name: &str| Endpoint {
            namespace: ns.into(),
            pod_name: format!("{name}-7f"),
            workloads: vec![weir_proto::flow::Workload {
                name: name.into(),
                kind: "Deployment".into(),
            }],
            ..Default::default()
        };
        m.edge(&ep("shop", "web"), &ep("shop", "db"), "FORWARDED");
        m.edge(&ep("shop", "cron-28312"), &ep("shop", "db"), "FORWARDED");
        let mut state = weir_model::ClusterState::default();
        let errors = weir_model::parse_manifests(
            &mut state,
            "kind: Pod\napiVersion: v1\nmetadata: {name: web-7f, namespace: shop, labels: {app: web, pod-template-hash: 5d4f}, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: u1, controller: true}]}\nspec: {containers: []}\nstatus: {podIP: 10.244.1.2}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: db-7f, namespace: shop, labels: {app: db, pod-template-hash: 77aa}, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: db-77aa, uid: u2, controller: true}]}\nspec: {containers: []}\nstatus: {podIP: 10.244.1.3}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let mut names = FlowNames::new(std::time::Duration::ZERO);
        names.update(&state, "n1", std::time::Instant::now());
        let workloads: Vec<String> = names.endpoints().map(workload).collect();
        assert!(workloads.contains(&"web".to_string()), "{workloads:?}");
        m.retain_named(&names);
        let text = m.encode();
        assert!(text.contains("source_workload=\"web\""), "{text}");
        assert!(!text.contains("cron-28312"), "the finished Job's edge is gone: {text}");
    }

    #[test]
    fn classic_text_names_counters_with_total_and_drops_openmetrics_only_lines() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\nx_bytes_total{a=\"b\"} 3\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total{a=\"b\"} 3\n# TYPE g gauge\ng 1\n"
        );
    }
}
