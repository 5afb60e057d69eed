//! ClusterIP services: from Services and EndpointSlices in the cluster model
//! to the datapath's service maps (kube-proxy's job, done in eBPF).
//!
//! [`desired`] is a pure function of the model; [`run`] applies its result
//! through `weir_datapath::lb::ServiceMaps`, removes services that are no
//! longer wanted (including ones left in the pinned maps by an earlier agent),
//! and collects expired conntrack and masquerade (SNAT) entries every
//! [`GC_INTERVAL`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use weir_datapath::lb::{
    Algorithm, Backend, Protocol, ServiceMaps, ServiceSpec, TrafficPolicy, addr_of, monotonic_now_ns,
};

use crate::cluster::{ClusterState, ObjectKey};
use crate::reconcile::{Action, Pass, Reconciler, blocking};
use weir_model::{Changes, Kind};

/// How often expired conntrack and SNAT entries are collected.
pub const GC_INTERVAL: Duration = Duration::from_secs(10);

/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// When the change an EndpointSlice carries was triggered (a pod's or a
/// Service's change), set by the EndpointSlice controller.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One service port as the datapath keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl std::fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{:?}", self.vip, self.port, self.proto)
    }
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// This node, as external frontends need it: NodePorts are keyed by its IP,
/// and `externalTrafficPolicy: Local` keeps the endpoints whose `nodeName`
/// is its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The uplink's address; `None` (no uplink) means no NodePorts.
    pub ip: Option<Ipv4Addr>,
}

/// One endpoint address of a service port before the table is built.
struct Candidate<'a> {
    backend: Backend,
    serving: bool,
    node: Option<&'a str>,
}

/// Backends in table form. When none is ready, terminating-but-serving ones
/// take new connections, as kube-proxy does (KEP-1669), rather than failing
/// every connection during a rollout.
fn backends_of<'a>(candidates: impl Iterator<Item = &'a Candidate<'a>>) -> Vec<Backend> {
    let mut list: Vec<(Backend, bool)> = candidates.map(|c| (c.backend, c.serving)).collect();
    if !list.iter().any(|(b, _)| !b.terminating) {
        for (b, serving) in &mut list {
            if *serving {
                b.terminating = false;
            }
        }
    }
    let mut out: Vec<Backend> = list.into_iter().map(|(b, _)| b).collect();
    out.sort();
    out.dedup();
    out
}

/// The service table the datapath should hold: every port of every
/// ClusterIP service (IPv4, not headless, not ExternalName) with its
/// backends from the EndpointSlices labelled with the service's name, plus
/// the external frontends of each port:
///
/// - its `nodePort` on this node's IP (services of type NodePort and
///   LoadBalancer),
/// - its `port` on each `spec.externalIPs` and `status.loadBalancer.ingress[].ip`
///   it holds ([`weir_model::frontends`]: a claim on a ClusterIP, a node's
///   address or an older Service's frontend is refused),
///
/// each with the service's `externalTrafficPolicy`: `Cluster` (default)
/// keeps every backend, `Local` only those whose EndpointSlice `nodeName` is
/// this node (possibly none: the datapath then drops, counted).
///
/// Backends: an endpoint takes new connections unless `ready` is false or it
/// is `terminating`; terminating endpoints are listed as terminating (their
/// established connections live on in conntrack). See [`backends_of`] for
/// services with no ready endpoint.
///
/// SCTP ports whose target port differs are skipped with a warning: the
/// datapath cannot rewrite SCTP ports (its CRC32c covers them); for the
/// same reason SCTP gets no external frontends (a nodePort is a rewrite).
pub fn desired(state: &ClusterState, algorithm: Algorithm, node: &NodeInfo) -> BTreeMap<ServicePortKey, ServiceSpec> {
    desired_with(
        state,
        algorithm,
        node,
        &weir_model::frontends::external_frontends(state),
    )
}

/// [`desired`] with the judgement on external frontends made already (the
/// controller reports its refusals too).
fn desired_with(
    state: &ClusterState,
    algorithm: Algorithm,
    node: &NodeInfo,
    claims: &weir_model::frontends::ExternalFrontends,
) -> BTreeMap<ServicePortKey, ServiceSpec> {
    let mut slices: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for (key, slice) in &state.endpoint_slices {
        if let Some(service) = service_of_slice(key, slice) {
            slices.entry(service).or_default().push(slice);
        }
    }
    let mut out = BTreeMap::new();
    for (key, svc) in &state.services {
        let svc_slices = slices.get(key).map(Vec::as_slice).unwrap_or_default();
        // A later Service's frontend takes the place of an earlier one's
        // (the API server lets no two have one address and port).
        out.extend(service_entries(key, svc, svc_slices, algorithm, node, claims));
    }
    for (key, spec) in host_ports(state, algorithm, node) {
        // A Service's frontend keeps its address: a pod's hostPort never
        // takes over a NodePort or an external IP.
        out.entry(key).or_insert(spec);
    }
    out
}

/// The Service an EndpointSlice belongs to (IPv4 slices only: the
/// datapath is IPv4).
fn service_of_slice(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ns = if key.namespace.is_empty() {
        "default"
    } else {
        &key.namespace
    };
    Some(ObjectKey::new(ns, name.clone()))
}

/// One Service's entries, with its slices' endpoints as backends (see
/// [`desired`]); a later entry for the same key takes the place of an
/// earlier one.
fn service_entries(
    key: &ObjectKey,
    svc: &Service,
    svc_slices: &[&EndpointSlice],
    algorithm: Algorithm,
    node: &NodeInfo,
    claims: &weir_model::frontends::ExternalFrontends,
) -> BTreeMap<ServicePortKey, ServiceSpec> {
    let mut out = BTreeMap::new();
    let Some(vip) = cluster_ip(svc) else { return out };
    let Some(spec) = svc.spec.as_ref() else { return out };
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .filter(|s| *s > 0)
            .map_or(DEFAULT_AFFINITY_TIMEOUT, |s| Duration::from_secs(s as u64))
    });
    let policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let has_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let external_ips: Vec<Ipv4Addr> = weir_model::service_external_ips(svc);
    for sp in spec.ports.iter().flatten() {
        let Some(proto) = protocol(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else { continue };
        let pkey = ServicePortKey { vip, port, proto };
        let port_name = sp.name.as_deref().unwrap_or("");
        let mut candidates = Vec::new();
        for slice in svc_slices {
            let Some(target) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name && protocol(p.protocol.as_deref()) == Some(proto)
            }) else {
                continue;
            };
            let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if proto == Protocol::Sctp && target_port != port {
                tracing::warn!(service = %key.name, namespace = %key.namespace, %pkey, target_port,
                    "SCTP service with a different target port is not supported: skipped");
                continue;
            }
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready) != Some(false);
                let serving = c.and_then(|c| c.serving.or(c.ready)) != Some(false);
                let terminating = c.and_then(|c| c.terminating) == Some(true);
                if !(ready || terminating && serving) {
                    continue;
                }
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                        candidates.push(Candidate {
                            backend: Backend {
                                ip,
                                port: target_port,
                                terminating: terminating || !ready,
                            },
                            serving,
                            node: ep.node_name.as_deref(),
                        });
                    }
                }
            }
        }
        let all = backends_of(candidates.iter());
        if proto != Protocol::Sctp {
            let external_backends = match policy {
                TrafficPolicy::Cluster => all.clone(),
                TrafficPolicy::Local => backends_of(candidates.iter().filter(|c| c.node == Some(node.name.as_str()))),
            };
            let node_port = sp
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|_| has_node_ports);
            // External addresses this Service holds (never another's
            // ClusterIP, a node's address or an older Service's claim).
            let wire = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let held = external_ips
                .iter()
                .filter(|ip| claims.holds(key, &(**ip, port, wire.clone())));
            let frontends = node.ip.zip(node_port).into_iter().chain(held.map(|ip| (*ip, port)));
            for (ip, fport) in frontends {
                out.insert(
                    ServicePortKey {
                        vip: ip,
                        port: fport,
                        proto,
                    },
                    ServiceSpec {
                        backends: external_backends.clone(),
                        algorithm,
                        affinity_timeout,
                        external: Some(policy),
                    },
                );
            }
        }
        out.insert(
            pkey,
            ServiceSpec {
                backends: all,
                algorithm,
                affinity_timeout,
                external: None,
            },
        );
    }
    out
}

/// The hostPorts of this node's pods (`containers[].ports[].hostPort`), as
/// kube-proxy-less CNIs serve them: a frontend on `hostIP` (unset or
/// `0.0.0.0`: the node's IP) and the host port, with the pod's address and
/// container port as its one backend. They are external frontends with
/// the `Local` policy: reached from outside on the uplink (the client's
/// address kept, the backend on this node), and from the node's own
/// sockets at connect time (socket-level services), which is also what
/// serves a hostIP of `127.0.0.1`, never seen by a packet program. A
/// pod's hostPort starts once its IP is known (its status) and ends with
/// the pod, or when it has finished (Succeeded, Failed).
pub fn host_ports(state: &ClusterState, algorithm: Algorithm, node: &NodeInfo) -> Vec<(ServicePortKey, ServiceSpec)> {
    state
        .pods
        .values()
        .flat_map(|pod| pod_host_ports(pod, algorithm, node))
        .collect()
}

/// One pod's hostPorts (see [`host_ports`]).
fn pod_host_ports(pod: &Pod, algorithm: Algorithm, node: &NodeInfo) -> Vec<(ServicePortKey, ServiceSpec)> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return out };
    if spec.node_name.as_deref() != Some(node.name.as_str()) || spec.host_network == Some(true) {
        return out;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return out;
    }
    let Some(pod_ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return out;
    };
    for port in spec.containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        let (Some(host_port), Ok(container_port)) = (
            port.host_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
            u16::try_from(port.container_port),
        ) else {
            continue;
        };
        let Some(proto) = protocol(port.protocol.as_deref()) else {
            continue;
        };
        // The datapath cannot rewrite SCTP ports (its CRC32c covers them).
        if proto == Protocol::Sctp && host_port != container_port {
            continue;
        }
        let vip = match port.host_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "0.0.0.0") {
            None => match node.ip {
                Some(ip) => ip,
                None => continue,
            },
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => ip,
                Err(_) => continue,
            },
        };
        out.push((
            ServicePortKey {
                vip,
                port: host_port,
                proto,
            },
            ServiceSpec {
                backends: vec![Backend {
                    ip: pod_ip,
                    port: container_port,
                    terminating: false,
                }],
                algorithm,
                affinity_timeout: None,
                external: Some(TrafficPolicy::Local),
            },
        ));
    }
    out
}

fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    // "None" (headless) and IPv6 addresses do not parse as IPv4.
    spec.cluster_ip.as_deref()?.parse().ok()
}

/// What changes between the applied table and the desired one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub upsert: Vec<(ServicePortKey, ServiceSpec)>,
    pub remove: Vec<ServicePortKey>,
}

/// The changes that take `applied` to `desired`.
pub fn plan(applied: &BTreeMap<ServicePortKey, ServiceSpec>, desired: &BTreeMap<ServicePortKey, ServiceSpec>) -> Plan {
    Plan {
        upsert: desired
            .iter()
            .filter(|(k, s)| applied.get(k) != Some(s))
            .map(|(k, s)| (*k, s.clone()))
            .collect(),
        remove: applied.keys().filter(|k| !desired.contains_key(k)).copied().collect(),
    }
}

/// The changes for some keys only, each with what it should be (`None`:
/// not wanted).
pub fn plan_for<'a>(
    applied: &BTreeMap<ServicePortKey, ServiceSpec>,
    keys: impl Iterator<Item = (ServicePortKey, Option<&'a ServiceSpec>)>,
) -> Plan {
    let mut plan = Plan::default();
    for (key, want) in keys {
        match want {
            Some(spec) if applied.get(&key) != Some(spec) => plan.upsert.push((key, spec.clone())),
            None if applied.contains_key(&key) => plan.remove.push(key),
            _ => {}
        }
    }
    plan
}

/// The desired table, kept per source (each Service's entries, each of
/// this node's pods' hostPorts) with the EndpointSlices indexed by their
/// Service, so a change costs the Services and pods it touches.
#[derive(Debug, Default)]
pub struct Table {
    algorithm: Option<Algorithm>,
    node: NodeInfo,
    services: BTreeMap<ObjectKey, BTreeMap<ServicePortKey, ServiceSpec>>,
    host_ports: BTreeMap<ObjectKey, Vec<(ServicePortKey, ServiceSpec)>>,
    /// Key → the sources with an entry for it.
    by_key: BTreeMap<ServicePortKey, BTreeSet<Source>>,
    /// EndpointSlice → its Service, as last seen.
    slice_service: BTreeMap<ObjectKey, ObjectKey>,
    /// Service → its EndpointSlices.
    slices_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    claims: weir_model::frontends::ExternalFrontends,
}

/// Where an entry comes from. Services first: a Service's frontend is
/// never taken by a hostPort.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Service(ObjectKey),
    HostPort(ObjectKey),
}

impl Table {
    /// The table for `state`, from nothing.
    pub fn full(state: &ClusterState, algorithm: Algorithm, node: &NodeInfo) -> Self {
        let mut t = Table {
            algorithm: Some(algorithm),
            node: node.clone(),
            claims: weir_model::frontends::external_frontends(state),
            ..Default::default()
        };
        for (key, slice) in &state.endpoint_slices {
            t.index_slice(key, service_of_slice(key, slice));
        }
        for key in state.services.keys() {
            t.set_service(state, key);
        }
        for key in state.pods.keys() {
            t.set_host_ports(state, key);
        }
        t
    }

    fn algorithm(&self) -> Algorithm {
        self.algorithm.unwrap_or(Algorithm::Random)
    }

    /// Moves a slice under its (new) Service; returns its old one.
    fn index_slice(&mut self, key: &ObjectKey, service: Option<ObjectKey>) -> Option<ObjectKey> {
        let old = self.slice_service.remove(key);
        if let Some(o) = &old
            && let Some(set) = self.slices_of.get_mut(o)
        {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(o);
            }
        }
        if let Some(svc) = service {
            self.slices_of.entry(svc.clone()).or_default().insert(key.clone());
            self.slice_service.insert(key.clone(), svc);
        }
        old
    }

    /// Replaces a source's entries; returns the keys it had or has.
    fn set_source(
        &mut self,
        source: Source,
        old: Vec<ServicePortKey>,
        new: Vec<ServicePortKey>,
    ) -> Vec<ServicePortKey> {
        for k in &old {
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(&source);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        for k in &new {
            self.by_key.entry(*k).or_default().insert(source.clone());
        }
        old.into_iter().chain(new).collect()
    }

    fn set_service(&mut self, state: &ClusterState, key: &ObjectKey) -> Vec<ServicePortKey> {
        let entries = match state.services.get(key) {
            Some(svc) => {
                let slices: Vec<&EndpointSlice> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| state.endpoint_slices.get(k).map(|s| &**s))
                    .collect();
                service_entries(key, svc, &slices, self.algorithm(), &self.node, &self.claims)
            }
            None => BTreeMap::new(),
        };
        let old = self
            .services
            .remove(key)
            .map(|e| e.into_keys().collect())
            .unwrap_or_default();
        let new = entries.keys().copied().collect();
        if !entries.is_empty() {
            self.services.insert(key.clone(), entries);
        }
        self.set_source(Source::Service(key.clone()), old, new)
    }

    fn set_host_ports(&mut self, state: &ClusterState, key: &ObjectKey) -> Vec<ServicePortKey> {
        let entries = state
            .pods
            .get(key)
            .map(|p| pod_host_ports(p, self.algorithm(), &self.node))
            .unwrap_or_default();
        let old = self
            .host_ports
            .remove(key)
            .map(|e| e.into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        let new = entries.iter().map(|(k, _)| *k).collect();
        if !entries.is_empty() {
            self.host_ports.insert(key.clone(), entries);
        }
        self.set_source(Source::HostPort(key.clone()), old, new)
    }

    /// Takes the table to `state`, `changes` being what differs from the
    /// state it was made for; returns the keys whose entry may have
    /// changed.
    pub fn update(&mut self, state: &ClusterState, changes: &Changes) -> BTreeSet<ServicePortKey> {
        let mut services: BTreeSet<ObjectKey> = changes.of(Kind::Service).cloned().collect();
        for key in changes.of(Kind::EndpointSlice) {
            let new = state.endpoint_slices.get(key).and_then(|s| service_of_slice(key, s));
            services.extend(new.clone());
            services.extend(self.index_slice(key, new));
        }
        // Which Service holds an external address is judged over all of
        // them: whose judgement changed is rebuilt too.
        if changes.touches(Kind::Service) || changes.touches(Kind::Node) {
            let claims = weir_model::frontends::external_frontends(state);
            if claims != self.claims {
                let claimants = |c: &weir_model::frontends::ExternalFrontends| -> BTreeSet<ObjectKey> {
                    c.held
                        .values()
                        .cloned()
                        .chain(c.refused.iter().map(|r| r.service.clone()))
                        .collect()
                };
                services.extend(claimants(&self.claims));
                services.extend(claimants(&claims));
                self.claims = claims;
            }
        }
        let mut touched = BTreeSet::new();
        for key in &services {
            touched.extend(self.set_service(state, key));
        }
        for key in changes.of(Kind::Pod) {
            touched.extend(self.set_host_ports(state, key));
        }
        touched
    }

    /// The entry for `key`: the last Service's (in the model's order) with
    /// one, else the first hostPort's.
    pub fn get(&self, key: &ServicePortKey) -> Option<&ServiceSpec> {
        let sources = self.by_key.get(key)?;
        let service = sources.iter().rev().find_map(|s| match s {
            Source::Service(k) => self.services.get(k)?.get(key),
            Source::HostPort(_) => None,
        });
        service.or_else(|| {
            sources.iter().find_map(|s| match s {
                Source::HostPort(k) => self.host_ports.get(k)?.iter().find(|(k2, _)| k2 == key).map(|(_, s)| s),
                Source::Service(_) => None,
            })
        })
    }

    /// The whole table.
    pub fn desired(&self) -> BTreeMap<ServicePortKey, ServiceSpec> {
        self.by_key
            .keys()
            .filter_map(|k| Some((*k, self.get(k)?.clone())))
            .collect()
    }

    /// The external frontends refused.
    pub fn refused(&self) -> &[weir_model::frontends::Refused] {
        &self.claims.refused
    }
}

/// The service maps and what the controller made of them, shared by
/// every run of the controller (the supervisor may start it again).
pub type Shared = Arc<std::sync::Mutex<Owned>>;

/// The controller's state around `maps`, before its first run.
pub fn shared(maps: ServiceMaps) -> Shared {
    Arc::new(std::sync::Mutex::new(Owned {
        maps,
        applied: BTreeMap::new(),
        refused: Vec::new(),
    }))
}

/// The services controller: the model's Services, EndpointSlices and
/// hostPorts to the service maps.
pub struct Controller {
    owned: Shared,
    algorithm: Algorithm,
    node: NodeInfo,
    sync: Arc<crate::sync::SyncStatus>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    table: Option<Table>,
    /// The first pass reads what the maps hold.
    read_maps: bool,
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "services"
    }

    async fn reconcile(&mut self, pass: Pass) -> Action {
        let (work, node, sync, m, table, algorithm) = (
            self.owned.clone(),
            self.node.clone(),
            self.sync.clone(),
            self.metrics.clone(),
            self.table.take(),
            self.algorithm,
        );
        let read_maps = std::mem::take(&mut self.read_maps);
        // Every map syscall blocks: the maps live with a blocking thread's
        // work, never on an async worker.
        let (table, failed) = blocking(move || {
            let Pass { state, changes } = pass;
            let mut o = work.lock().unwrap_or_else(|p| p.into_inner());
            let o = &mut *o;
            if read_maps {
                // Start from what the pinned maps hold, so services an
                // earlier agent (or an earlier run of this controller)
                // programmed and that are gone now get removed.
                o.applied = programmed(&o.maps, algorithm);
                o.refused.clear();
            }
            // When the changed slices' endpoints changed, for the
            // network programming SLI.
            let triggers: Vec<k8s_openapi::jiff::Timestamp> = changes
                .iter()
                .flat_map(|c| c.of(Kind::EndpointSlice))
                .filter_map(|k| state.endpoint_slices.get(k))
                .filter_map(|s| {
                    s.metadata
                        .annotations
                        .as_ref()?
                        .get(TRIGGER_TIME_ANNOTATION)?
                        .parse()
                        .ok()
                })
                .collect();
            // How long the change took from the source to here.
            let seen = changes
                .as_ref()
                .filter(|c| c.touches(Kind::EndpointSlice) || c.touches(Kind::Service))
                .and_then(|c| c.first_seen);
            let (table, plan) = match (table, changes) {
                (Some(mut t), Some(c)) => {
                    let touched = t.update(&state, &c);
                    let plan = plan_for(&o.applied, touched.iter().map(|k| (*k, t.get(k))));
                    (t, plan)
                }
                _ => {
                    let t = Table::full(&state, algorithm, &node);
                    let plan = plan(&o.applied, &t.desired());
                    (t, plan)
                }
            };
            let refused = table.refused().to_vec();
            for r in refused.iter().filter(|r| !o.refused.contains(r)) {
                let (ip, port, protocol) = &r.frontend;
                tracing::warn!(service = %format!("{}/{}", r.service.namespace, r.service.name),
                    frontend = %format!("{ip}:{port}/{protocol}"), reason = %r.reason,
                    "external frontend of a Service refused");
            }
            if let Some(m) = &m {
                m.refused_frontends(refused.len());
            }
            o.refused = refused;
            let failed = apply(&mut o.maps, &mut o.applied, plan);
            sync.services_applied(state.revision);
            if let Some(m) = m.as_ref().filter(|_| failed == 0) {
                if let Some(seen) = seen {
                    m.services_synced(seen.elapsed());
                }
                let now = k8s_openapi::jiff::Timestamp::now();
                for t in triggers {
                    let took = now.duration_since(t);
                    m.network_programmed(Duration::try_from(took).unwrap_or_default());
                }
            }
            (table, failed)
        })
        .await;
        self.table = Some(table);
        match failed {
            0 => Action::Done,
            n => Action::Retry(format!("{n} services left to program")),
        }
    }
}

/// Keeps the datapath's services in step with the cluster model until the
/// model's sender goes away; collects conntrack garbage meanwhile.
pub async fn run(
    owned: Shared,
    algorithm: Algorithm,
    node: NodeInfo,
    rx: watch::Receiver<Arc<ClusterState>>,
    sync: Arc<crate::sync::SyncStatus>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    let controller = Controller {
        owned: owned.clone(),
        algorithm,
        node,
        sync,
        metrics: metrics.clone(),
        table: None,
        read_maps: true,
    };
    let gc = async move {
        let mut gc = tokio::time::interval(GC_INTERVAL);
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            gc.tick().await;
            let (work, metrics) = (owned.clone(), metrics.clone());
            blocking(move || {
                let mut o = work.lock().unwrap_or_else(|p| p.into_inner());
                collect_garbage(&mut o, metrics.as_deref());
            })
            .await;
        }
    };
    // The table follows the model; GC goes on when no source is left.
    tokio::join!(crate::reconcile::run(controller, rx, Default::default()), gc);
}

/// What the services controller owns: the service maps, the one conntrack
/// table (masqueraded flows included) it collects, and what it last
/// programmed.
pub struct Owned {
    maps: ServiceMaps,
    applied: BTreeMap<ServicePortKey, ServiceSpec>,
    /// The external frontends refused at the last pass (each logged once).
    refused: Vec<weir_model::frontends::Refused>,
}

/// The services the pinned maps hold, each with an impossible spec so that
/// one still desired is rewritten and one no longer desired is removed.
fn programmed(maps: &ServiceMaps, algorithm: Algorithm) -> BTreeMap<ServicePortKey, ServiceSpec> {
    match maps.services() {
        Ok(s) => s
            .keys()
            .filter_map(|k| {
                let proto = match k.proto {
                    6 => Protocol::Tcp,
                    17 => Protocol::Udp,
                    132 => Protocol::Sctp,
                    _ => return None,
                };
                let stale = ServiceSpec {
                    backends: vec![],
                    algorithm,
                    affinity_timeout: Some(Duration::ZERO),
                    external: None,
                };
                Some((
                    ServicePortKey {
                        vip: addr_of(k.vip),
                        port: u16::from_be(k.dport),
                        proto,
                    },
                    stale,
                ))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %weir_error::Report(&e), "reading programmed services");
            BTreeMap::new()
        }
    }
}

/// Expired connections go, of every kind (plain, service, masqueraded), in
/// batched map calls.
fn collect_garbage(o: &mut Owned, metrics: Option<&crate::metrics::Metrics>) {
    let _span = tracing::debug_span!("conntrack.gc").entered();
    match o.maps.gc_conntrack(monotonic_now_ns()) {
        Ok(0) => {}
        Ok(removed) => tracing::debug!(removed, "conntrack entries expired"),
        Err(e) => tracing::warn!(error = %weir_error::Report(&e), "conntrack gc"),
    }
    if let Some(m) = metrics {
        let o = o.maps.conntrack_occupancy();
        let cap = u64::from(weir_datapath::conntrack::CT_MAX_ENTRIES);
        m.set_map("conntrack", o.entries as u64, cap);
        m.set_map("nat", o.translated as u64, cap);
        m.set_map(
            "conntrack_node",
            o.node as u64,
            u64::from(weir_datapath::conntrack::CT_NODE_MAX_DEFAULT),
        );
    }
}

/// Applies the difference; what fails stays out of `applied`. Returns how
/// many services failed for a reason a retry can fix (map errors): the
/// caller requeues those with backoff. A service the datapath cannot
/// express is retried only when it changes.
fn apply(maps: &mut ServiceMaps, applied: &mut BTreeMap<ServicePortKey, ServiceSpec>, plan: Plan) -> usize {
    let mut transient = 0;
    let Plan { upsert, remove } = plan;
    for key in remove {
        let _span = tracing::info_span!("service.remove", service = %key).entered();
        match maps.remove_service(key.vip, key.port, key.proto) {
            Ok(()) => {
                applied.remove(&key);
                tracing::info!("removed");
            }
            Err(e) => {
                transient += 1;
                tracing::warn!(error = %weir_error::Report(&e), "removing service");
            }
        }
    }
    for (key, spec) in upsert {
        let _span = tracing::info_span!("service.upsert", service = %key).entered();
        match maps.upsert_service(key.vip, key.port, key.proto, &spec) {
            Ok(id) => {
                let ready = spec.backends.iter().filter(|b| !b.terminating).count();
                tracing::debug!(
                    service_id = id,
                    backends = ready,
                    terminating = spec.backends.len() - ready,
                    "programmed"
                );
                applied.insert(key, spec);
            }
            Err(e) => {
                applied.remove(&key);
                if !matches!(e, weir_datapath::lb::LbError::Invalid { .. }) {
                    transient += 1;
                }
                tracing::warn!(error = %weir_error::Report(&e), "programming service");
            }
        }
    }
    transient
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::parse_manifests;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, protocol: TCP}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: [10.244.1.3]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: n1
  - addresses: [10.244.2.5]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.244.2.6]
    conditions: {ready: false, serving: false, terminating: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-def34
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP}
endpoints:
  - addresses: [10.244.3.9]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  sessionAffinity: ClientIP
  ports: [{port: 443, targetPort: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-1
  namespace: demo
  labels: {kubernetes.io/service-name: sticky}
addressType: IPv4
ports: [{port: 8443}]
endpoints:
  - addresses: [10.244.1.7]
    conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: timed, namespace: other}
spec:
  clusterIP: 10.96.0.12
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 3868, protocol: SCTP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec:
  clusterIP: None
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: demo}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: ["fd00::1"]
"#;

    fn model() -> ClusterState {
        let mut s = ClusterState::default();
        let errors = parse_manifests(&mut s, MANIFESTS);
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    fn key(vip: [u8; 4], port: u16, proto: Protocol) -> ServicePortKey {
        ServicePortKey {
            vip: Ipv4Addr::from(vip),
            port,
            proto,
        }
    }

    fn b(ip: [u8; 4], port: u16, terminating: bool) -> Backend {
        Backend {
            ip: Ipv4Addr::from(ip),
            port,
            terminating,
        }
    }

    #[test]
    fn services_and_endpoint_slices_make_the_table() {
        let table = desired(&model(), Algorithm::Maglev, &NodeInfo::default());
        let keys: Vec<_> = table.keys().copied().collect();
        assert_eq!(
            keys,
            vec![
                key([10, 96, 0, 10], 53, Protocol::Udp),
                key([10, 96, 0, 10], 80, Protocol::Tcp),
                key([10, 96, 0, 11], 443, Protocol::Tcp),
                key([10, 96, 0, 12], 3868, Protocol::Sctp),
            ],
            "headless and ExternalName services are left out"
        );

        let http = &table[&key([10, 96, 0, 10], 80, Protocol::Tcp)];
        assert_eq!(
            http.backends,
            vec![
                b([10, 244, 1, 3], 8080, false),
                b([10, 244, 2, 5], 8080, true),
                b([10, 244, 3, 9], 8080, false)
            ],
            "both slices merged; not-ready and not-terminating 10.244.2.6 left out; no conditions = ready"
        );
        assert_eq!((http.algorithm, http.affinity_timeout), (Algorithm::Maglev, None));

        let dns = &table[&key([10, 96, 0, 10], 53, Protocol::Udp)];
        assert_eq!(
            dns.backends,
            vec![b([10, 244, 1, 3], 5353, false), b([10, 244, 2, 5], 5353, true)]
        );

        let sticky = &table[&key([10, 96, 0, 11], 443, Protocol::Tcp)];
        assert_eq!(sticky.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(
            sticky.backends,
            vec![b([10, 244, 1, 7], 8443, false)],
            "only terminating but serving endpoints: they take new connections"
        );

        let sctp = &table[&key([10, 96, 0, 12], 3868, Protocol::Sctp)];
        assert_eq!(sctp.affinity_timeout, Some(Duration::from_secs(60)));
        assert!(
            sctp.backends.is_empty(),
            "no EndpointSlice: programmed with no backends, so connections are refused"
        );
    }

    #[test]
    fn sctp_with_another_target_port_is_skipped() {
        let mut s = model();
        let errors = parse_manifests(
            &mut s,
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: timed-1
  namespace: other
  labels: {kubernetes.io/service-name: timed}
addressType: IPv4
ports: [{port: 9999, protocol: SCTP}]
endpoints: [{addresses: [10.244.1.8]}]
"#,
        );
        assert!(errors.is_empty());
        let table = desired(&s, Algorithm::Random, &NodeInfo::default());
        assert!(table[&key([10, 96, 0, 12], 3868, Protocol::Sctp)].backends.is_empty());
    }

    #[test]
    fn plan_upserts_changes_and_removes_stale_services() {
        let table = desired(&model(), Algorithm::Random, &NodeInfo::default());
        let all = plan(&BTreeMap::new(), &table);
        assert_eq!((all.upsert.len(), all.remove.len()), (4, 0));
        assert_eq!(plan(&table, &table), Plan::default());

        let mut changed = table.clone();
        let http = key([10, 96, 0, 10], 80, Protocol::Tcp);
        changed.get_mut(&http).unwrap().backends.pop();
        let gone = key([10, 96, 0, 11], 443, Protocol::Tcp);
        changed.remove(&gone);
        let p = plan(&table, &changed);
        assert_eq!(p.upsert.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![http]);
        assert_eq!(p.remove, vec![gone]);
    }

    const EXTERNAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  externalIPs: [192.0.2.10]
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
    - {name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.21
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 31080}]
status:
  loadBalancer: {ingress: [{ip: 172.30.0.200}, {hostname: lb.example.com}]}
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: demo}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 32000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-np-1
  namespace: demo
  labels: {kubernetes.io/service-name: web-np}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
  - {addresses: [10.244.1.3], nodeName: n1}
  - {addresses: [10.244.2.3], nodeName: n2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-lb-1
  namespace: demo
  labels: {kubernetes.io/service-name: web-lb}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.244.1.4], nodeName: n1}
  - {addresses: [10.244.2.4], nodeName: n2}
  - addresses: [10.244.1.5]
    nodeName: n1
    conditions: {ready: false, serving: true, terminating: true}
"#;

    const HOST_PORTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: hp}
spec:
  nodeName: n1
  containers:
  - name: c
    image: x
    ports:
    - {containerPort: 8080, hostPort: 54323, hostIP: 127.0.0.1}
    - {containerPort: 8080, hostPort: 54323}
    - {containerPort: 8081, hostPort: 54323, hostIP: 172.30.0.11, protocol: UDP}
    - {containerPort: 9090}
status: {phase: Running, podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: hp}
spec:
  nodeName: n2
  containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 8000}]}]
status: {phase: Running, podIP: 10.244.2.7}
---
apiVersion: v1
kind: Pod
metadata: {name: no-ip-yet, namespace: hp}
spec:
  nodeName: n1
  containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 8001}]}]
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: hp}
spec:
  nodeName: n1
  containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 8002}]}]
status: {phase: Succeeded, podIP: 10.244.1.9}
---
apiVersion: v1
kind: Pod
metadata: {name: steals, namespace: hp}
spec:
  nodeName: n1
  containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 30080}]}]
status: {phase: Running, podIP: 10.244.1.8}
"#;

    #[test]
    fn host_ports_of_this_nodes_pods_are_local_frontends() {
        let mut s = ClusterState::default();
        let errors = parse_manifests(&mut s, &format!("{EXTERNAL}\n---\n{HOST_PORTS}"));
        assert!(errors.is_empty(), "{errors:?}");
        let n1 = NodeInfo {
            name: "n1".into(),
            ip: Some(Ipv4Addr::new(172, 30, 0, 11)),
        };
        let ports: BTreeMap<ServicePortKey, Vec<Backend>> = host_ports(&s, Algorithm::Random, &n1)
            .into_iter()
            .inspect(|(_, spec)| assert_eq!(spec.external, Some(TrafficPolicy::Local)))
            .map(|(k, spec)| (k, spec.backends))
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([
                (
                    key([127, 0, 0, 1], 54323, Protocol::Tcp),
                    vec![b([10, 244, 1, 7], 8080, false)]
                ),
                (
                    key([172, 30, 0, 11], 54323, Protocol::Tcp),
                    vec![b([10, 244, 1, 7], 8080, false)]
                ),
                (
                    key([172, 30, 0, 11], 54323, Protocol::Udp),
                    vec![b([10, 244, 1, 7], 8081, false)]
                ),
                (
                    key([172, 30, 0, 11], 30080, Protocol::Tcp),
                    vec![b([10, 244, 1, 8], 80, false)]
                ),
            ]),
            "this node's running pods with an IP; hostIP or the node's IP"
        );
        // A Service's NodePort keeps its frontend.
        let table = desired(&s, Algorithm::Random, &n1);
        assert_eq!(table[&key([172, 30, 0, 11], 30080, Protocol::Tcp)].backends.len(), 2);
        assert_eq!(
            table[&key([127, 0, 0, 1], 54323, Protocol::Tcp)].backends,
            vec![b([10, 244, 1, 7], 8080, false)]
        );
    }

    #[test]
    fn a_service_cannot_take_over_a_cluster_ip_or_the_nodes_address() {
        let mut s = model();
        let evil = r#"
apiVersion: v1
kind: Service
metadata: {name: evil, namespace: tenant}
spec:
  clusterIP: 10.96.0.99
  ports: [{port: 80, protocol: TCP}, {port: 53, protocol: UDP}, {port: 22, protocol: TCP}]
  externalIPs: [10.96.0.10, 172.30.0.11]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: evil-1, namespace: tenant, labels: {kubernetes.io/service-name: evil}}
addressType: IPv4
ports: [{port: 80, protocol: TCP}, {port: 53, protocol: UDP}, {port: 22, protocol: TCP}]
endpoints: [{addresses: [10.244.9.9]}]
---
kind: Node
apiVersion: v1
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}
"#;
        let errors = parse_manifests(&mut s, evil);
        assert!(errors.is_empty(), "{errors:?}");
        let n1 = NodeInfo {
            name: "n1".into(),
            ip: Some(Ipv4Addr::new(172, 30, 0, 11)),
        };
        let table = desired(&s, Algorithm::Random, &n1);
        let web = desired(&model(), Algorithm::Random, &n1);
        for port in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
            let k = key([10, 96, 0, 10], port.0, port.1);
            assert_eq!(table[&k], web[&k], "web's ClusterIP {port:?} keeps its backends");
        }
        for k in [
            key([172, 30, 0, 11], 22, Protocol::Tcp),
            key([172, 30, 0, 11], 80, Protocol::Tcp),
        ] {
            assert!(!table.contains_key(&k), "the node's {k} is not a frontend");
        }
        assert!(
            table.contains_key(&key([10, 96, 0, 99], 22, Protocol::Tcp)),
            "evil keeps its own ClusterIP"
        );
    }

    #[test]
    fn node_ports_external_ips_and_lb_ips_with_their_traffic_policy() {
        let mut s = ClusterState::default();
        let errors = parse_manifests(&mut s, EXTERNAL);
        assert!(errors.is_empty(), "{errors:?}");
        let n1 = NodeInfo {
            name: "n1".into(),
            ip: Some(Ipv4Addr::new(172, 30, 0, 11)),
        };
        let table = desired(&s, Algorithm::Random, &n1);
        let external: BTreeMap<ServicePortKey, Option<TrafficPolicy>> = table
            .iter()
            .filter(|(_, v)| v.external.is_some())
            .map(|(k, v)| (*k, v.external))
            .collect();
        let cluster = Some(TrafficPolicy::Cluster);
        let local = Some(TrafficPolicy::Local);
        assert_eq!(
            external,
            BTreeMap::from([
                (key([172, 30, 0, 11], 30053, Protocol::Udp), cluster),
                (key([172, 30, 0, 11], 30080, Protocol::Tcp), cluster),
                (key([172, 30, 0, 11], 31080, Protocol::Tcp), local),
                (key([172, 30, 0, 200], 80, Protocol::Tcp), local),
                (key([192, 0, 2, 10], 53, Protocol::Udp), cluster),
                (key([192, 0, 2, 10], 80, Protocol::Tcp), cluster),
            ]),
            "nodePorts on the node IP, externalIPs and LB ingress IPs on the service port; \
             a ClusterIP service's stray nodePort and an LB hostname are ignored"
        );
        let both = vec![b([10, 244, 1, 3], 8080, false), b([10, 244, 2, 3], 8080, false)];
        assert_eq!(
            table[&key([172, 30, 0, 11], 30080, Protocol::Tcp)].backends,
            both,
            "Cluster: every node's"
        );
        assert_eq!(table[&key([10, 96, 0, 20], 80, Protocol::Tcp)].backends, both);
        assert_eq!(table[&key([10, 96, 0, 20], 80, Protocol::Tcp)].external, None);
        let only_n1 = vec![b([10, 244, 1, 4], 8080, false), b([10, 244, 1, 5], 8080, true)];
        assert_eq!(
            table[&key([172, 30, 0, 11], 31080, Protocol::Tcp)].backends,
            only_n1,
            "Local: n1's alone"
        );
        assert_eq!(table[&key([172, 30, 0, 200], 80, Protocol::Tcp)].backends, only_n1);
        assert_eq!(
            table[&key([10, 96, 0, 21], 80, Protocol::Tcp)].backends.len(),
            3,
            "the ClusterIP keeps all"
        );

        // A node without local endpoints keeps the Local frontends, empty:
        // the datapath drops (counted) rather than forwarding elsewhere.
        let n3 = NodeInfo {
            name: "n3".into(),
            ip: Some(Ipv4Addr::new(172, 30, 0, 13)),
        };
        let table = desired(&s, Algorithm::Random, &n3);
        assert!(table[&key([172, 30, 0, 13], 31080, Protocol::Tcp)].backends.is_empty());
        assert_eq!(table[&key([172, 30, 0, 13], 30080, Protocol::Tcp)].backends.len(), 2);

        // No uplink, no node IP: no NodePorts, external IPs still.
        let table = desired(
            &s,
            Algorithm::Random,
            &NodeInfo {
                name: "n1".into(),
                ip: None,
            },
        );
        assert!(!table.keys().any(|k| k.vip == Ipv4Addr::new(172, 30, 0, 11)));
        assert!(table.contains_key(&key([192, 0, 2, 10], 80, Protocol::Tcp)));
    }
}
