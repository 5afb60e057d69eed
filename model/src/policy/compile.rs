//! The policy compiler: every policy of the cluster, the local endpoints,
//! the identities and namespaces in, the datapath's policy tables out
//! (`bpf/lib/policy.h` reads them; abi.h has the key's layout).
//!
//! For each local endpoint and direction there is one table per peer class:
//! an identity, a policy CIDR (the most specific one containing the
//! address, see [`Compiled::cidrs`]) and "any peer". The datapath looks up
//! the three that apply and takes the highest action of each layer, so:
//! - each table holds, per protocol, disjoint port ranges (as prefixes),
//!   each with the combined verdict of the rules of that peer class that
//!   cover it: deny beats allow, whatever their specificity;
//! - the "any peer" table also holds the default deny of an isolated
//!   endpoint, as its least specific entry, folded into its port ranges;
//! - the audit layer is the same with audit-mode policies counted too;
//! - ClusterNetworkPolicy's two tiers are two more layers, each holding
//!   the first of its rules that covers the slot (see [`tier`]): the
//!   datapath judges the Admin layer first, then NetworkPolicy's, then
//!   the Baseline layer.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::parse::{
    Action, Direction, Entity, L4, MatchType, Namespaces, Peer, PolicyId, PortSpec, Protocol, Tier, Tiered,
};
use super::{Numbering, Policy, Rejected};
use crate::identity::{self, IdentityKey};
use crate::selector::selector_matches;
use crate::state::{ClusterState, ObjectKey};

/// The tables' ABI, from abi.h: the peer "any", where CIDR ids start
/// (above identities), the largest rule reference, the actions by
/// precedence, and the slot and verdicts the compiler produces (the
/// datapath crate writes them as they are).
pub use weir_abi::policy::{CIDR_MIN, PEER_ANY, REF_MAX, Slot, VerdictKind, Verdicts, action};

/// ICMP's protocol number: L3-only rules cover it (echo, any "port").
pub const ICMP: u8 = 1;

/// A tier layer's value (abi.h `WEIR_PT_*`): the rule's rank above two
/// bits of its action. Ranks count down from the first rule judged (the
/// lowest priority, then the name, then the rule's position), so the
/// highest value among the rules that match a connection, which is what
/// the datapath takes over its lookups as for actions, is the first rule
/// of the tier that matches: ClusterNetworkPolicy's semantics.
pub mod tier {
    pub use weir_abi::policy::tier::*;
    /// Rank room per policy: rules of one direction are at most 25, two
    /// ranks each.
    pub const RULES_PER_POLICY: u32 = 64;
    /// Ranks stay below 2^30, so value = rank << 2 fits a u32.
    pub const RANK_MAX: u32 = (1 << 30) - 1;
}

/// What a rule reference names, for flows and metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    /// The policy; `None` for weir's own implicit rules.
    pub policy: Option<PolicyId>,
    pub direction: Direction,
    pub what: RuleWhat,
    /// The policy is in audit mode.
    pub audit: bool,
}

impl RuleRef {
    /// The rule within its policy, for people: `ingress[0]`,
    /// `default deny (ingress isolated)`, `ingress[1] "untrusted" (Deny)`.
    pub fn what_text(&self) -> String {
        let list = |deny: bool| match (self.direction, deny) {
            (Direction::Ingress, false) => "ingress",
            (Direction::Ingress, true) => "ingressDeny",
            (Direction::Egress, false) => "egress",
            (Direction::Egress, true) => "egressDeny",
        };
        match &self.what {
            RuleWhat::Allow { index, .. } => format!("{}[{index}]", list(false)),
            RuleWhat::Deny { index, .. } => format!("{}[{index}]", list(true)),
            RuleWhat::DefaultDeny => format!("default deny ({} isolated)", self.direction.name()),
            RuleWhat::Invalid => "invalid policy: isolates, allows nothing".into(),
            RuleWhat::HostAllowed => "the node reaches its pods".into(),
            RuleWhat::UnknownPod => "pod not known yet: denied".into(),
            RuleWhat::OverBudget => format!(
                "policy too large for the datapath ({} isolated until it shrinks)",
                self.direction.name()
            ),
            RuleWhat::Unreadable { index, name } => {
                let list = self.direction.name();
                match name.is_empty() {
                    true => format!("{list}[{index}] unreadable: denies"),
                    false => format!("{list}[{index}] {name:?} unreadable: denies"),
                }
            }
            RuleWhat::Tiered {
                action, index, name, ..
            } => {
                let action = match action {
                    super::parse::Action::Allow => "Accept",
                    super::parse::Action::Deny => "Deny",
                    super::parse::Action::Pass => "Pass",
                };
                let list = self.direction.name();
                match name.is_empty() {
                    true => format!("{list}[{index}] ({action})"),
                    false => format!("{list}[{index}] {name:?} ({action})"),
                }
            }
        }
    }

    /// The rule with its policy, as flows and `weir policy check` name it:
    /// `NetworkPolicy a/web-from-client default deny (ingress isolated)`.
    pub fn text(&self) -> String {
        let audit = if self.audit { " (audit)" } else { "" };
        match &self.policy {
            Some(p) => format!("{p} {}{audit}", self.what_text()),
            None => self.what_text(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleWhat {
    /// Rule `index` of the policy's allow list (`ingress` / `egress`).
    Allow { index: usize, match_type: MatchType },
    /// Rule `index` of its deny list (`ingressDeny` / `egressDeny`).
    Deny { index: usize, match_type: MatchType },
    /// Nothing allows it and the policy isolates the endpoint.
    DefaultDeny,
    /// The policy was rejected (its reason is in [`Compiled::rejected`]):
    /// it isolates what it selects and allows nothing.
    Invalid,
    /// The node reaching its own pods, which Kubernetes requires.
    HostAllowed,
    /// Rule `index` of a ClusterNetworkPolicy's `ingress` or `egress`
    /// (Accept is [`Action::Allow`]), with its `name`.
    Tiered {
        action: Action,
        index: usize,
        match_type: MatchType,
        name: String,
    },
    /// The endpoint's pod is not in the cluster state yet while policies
    /// of its namespace exist: denied until it is known.
    UnknownPod,
    /// The policies selecting the endpoint need more table slots than its
    /// [`Budget`]: isolated until they shrink.
    OverBudget,
    /// Rule `index` of a ClusterNetworkPolicy's `ingress` or `egress`, with
    /// its `name`, that could not be read: it denies everything in its
    /// place (an Accept matches nothing, so it never shows in a verdict).
    Unreadable { index: usize, name: String },
}

impl RuleWhat {
    pub fn match_type(&self) -> MatchType {
        match self {
            RuleWhat::Allow { match_type, .. }
            | RuleWhat::Deny { match_type, .. }
            | RuleWhat::Tiered { match_type, .. } => *match_type,
            RuleWhat::HostAllowed => MatchType::L3Only,
            RuleWhat::Unreadable { .. } => MatchType::All,
            _ => MatchType::None,
        }
    }
}

/// A local endpoint, as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub endpoint_id: u32,
    pub pod: ObjectKey,
}

/// Per endpoint: which policies select it and whether it is isolated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    pub policies: Vec<PolicyId>,
    /// Enforced isolation per direction (ingress, egress).
    pub isolated: [bool; 2],
    pub audited: [bool; 2],
}

/// The compiler's output.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub slots: BTreeMap<Slot, Verdicts>,
    /// Every CIDR (and `except`) of the rules that apply here, by id.
    pub cidrs: BTreeMap<Ipv4Net, u32>,
    /// Every reference the slots use.
    pub rules: BTreeMap<u32, RuleRef>,
    pub rejected: Vec<Rejected>,
    pub endpoints: BTreeMap<u32, EndpointPolicy>,
    /// Endpoints whose policy did not fit the [`Budget`], with the slots
    /// it needed: each is isolated instead (the node still reaches it).
    pub over_budget: BTreeMap<u32, usize>,
}

/// How many table slots the policy may take: per endpoint (as Cilium gives
/// each endpoint a policy map of its own, so one namespace's policies
/// cannot take another's room) and in all (the datapath's table). An
/// endpoint over its share, or the largest ones while the whole does not
/// fit, get [`RuleWhat::OverBudget`]: isolated in both directions, the
/// node's probes let in, every other endpoint untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub per_endpoint: usize,
    pub total: usize,
}

impl Budget {
    /// No bound (what the compiler's own tests judge).
    pub const UNLIMITED: Budget = Budget {
        per_endpoint: usize::MAX,
        total: usize::MAX,
    };
}

/// Numbers the compiler keeps from one run to the next, so a rule keeps
/// its reference (conntrack entries hold them) and a CIDR its id.
#[derive(Debug, Clone)]
pub struct Numbers {
    pub rules: Numbering<RuleRef>,
    pub cidrs: Numbering<Ipv4Net>,
}

impl Default for Numbers {
    fn default() -> Self {
        Self {
            rules: Numbering::new(1, REF_MAX),
            cidrs: Numbering::new(CIDR_MIN, u32::MAX),
        }
    }
}

/// Which layers a [`Part`] counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// Enforced and audit (an enforced NetworkPolicy-tier rule).
    Enforced,
    /// An audit-mode policy's rule.
    AuditOnly,
    Admin,
    Baseline,
}

/// One contribution to a table: a port range of a protocol, an action
/// (`action::*`, or a [`tier`] value in the tier layers), its reference
/// and its layer.
#[derive(Debug, Clone, Copy)]
struct Part {
    proto: u8,
    lo: u16,
    hi: u16,
    action: u32,
    reference: u32,
    layer: Layer,
}

/// The labels a namespace is selected by: its own and the name label
/// Kubernetes sets on every namespace.
fn namespace_labels(state: &ClusterState, ns: &str) -> BTreeMap<String, String> {
    let mut labels = state
        .namespaces
        .get(&ObjectKey::new("", ns))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
    labels
}

fn in_namespaces(state: &ClusterState, scope: &Namespaces, ns: &str) -> bool {
    match scope {
        Namespaces::Named(n) => n == ns,
        Namespaces::Selector(s) => selector_matches(s, &namespace_labels(state, ns)),
        Namespaces::All => true,
    }
}

fn selects(state: &ClusterState, namespaces: &Namespaces, pods: Option<&LabelSelector>, key: &IdentityKey) -> bool {
    in_namespaces(state, namespaces, &key.namespace) && pods.is_none_or(|s| selector_matches(s, &key.labels))
}

/// Container ports by (name, protocol) of a pod.
fn named_ports(pod: &Pod) -> Vec<(String, Protocol, u16)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let (Some(name), Some(proto)) = (&p.name, Protocol::of_container(p.protocol.as_deref())) else {
                continue;
            };
            if (1..=65535).contains(&p.container_port) {
                out.push((name.clone(), proto, p.container_port as u16));
            }
        }
    }
    out
}

/// Whether the compiled tables can differ between two versions of a pod
/// that is no local endpoint (`None`: absent). Of such a pod the compiler
/// reads its named ports, by its label set's identity; a pod without any
/// changes nothing. (A local endpoint's pod is read whole: the caller
/// checks those.)
pub fn pod_change_matters(old: Option<&Pod>, new: Option<&Pod>) -> bool {
    let read = |p: Option<&Pod>| {
        p.map(|p| (named_ports(p), IdentityKey::of_pod(p)))
            .filter(|(ports, _)| !ports.is_empty())
    };
    read(old) != read(new)
}

/// The peers of every policy that select identities, so that whether an
/// identity made or gone can change the tables is known without
/// compiling: only if some peer selects its label set (a new pod
/// elsewhere of a workload no policy names changes nothing here).
#[derive(Debug, Default)]
pub struct PeerSelectors {
    pods: Vec<(Namespaces, Option<LabelSelector>)>,
    /// Some peer is the whole cluster: every identity is in it.
    cluster: bool,
}

impl PeerSelectors {
    /// The peers of the policies of `state` (a rejected policy's usable
    /// part included).
    pub fn of(state: &ClusterState) -> Self {
        let (policies, _) = super::parse::all(state);
        let mut out = PeerSelectors::default();
        for peer in policies.iter().flat_map(|p| &p.rules).flat_map(|r| &r.peers) {
            match peer {
                Peer::Pods { namespaces, pods } => out.pods.push((namespaces.clone(), pods.clone())),
                Peer::Entity(Entity::Cluster) => out.cluster = true,
                _ => {}
            }
        }
        out
    }

    /// Whether a peer selects the label set `key` (namespaces as `state`
    /// labels them).
    pub fn select(&self, state: &ClusterState, key: &IdentityKey) -> bool {
        self.cluster
            || self
                .pods
                .iter()
                .any(|(namespaces, pods)| selects(state, namespaces, pods.as_ref(), key))
    }
}

/// What the compiler knows of the cluster, computed once per run.
struct Universe<'a> {
    state: &'a ClusterState,
    identities: &'a BTreeMap<u32, &'a IdentityKey>,
    /// Named ports of every pod, by its identity.
    ports_by_identity: BTreeMap<u32, Vec<(String, Protocol, u16)>>,
    all_ports: Vec<(String, Protocol, u16)>,
    /// Every CIDR prefix in play.
    prefixes: BTreeSet<Ipv4Net>,
    /// Identities by each of their labels (`key=value`), so a selector
    /// with matchLabels looks at the identities that carry them rather
    /// than at every identity of the cluster.
    by_label: BTreeMap<(&'a str, &'a str), Vec<u32>>,
    /// The identities each pod peer selects, once per pass: every
    /// endpoint a policy selects reads its peers again.
    selected: std::cell::RefCell<std::collections::HashMap<*const Peer, std::rc::Rc<Vec<u32>>>>,
}

impl<'a> Universe<'a> {
    /// The allocated identities `namespaces` and `pods` select.
    fn select(&self, namespaces: &Namespaces, pods: Option<&LabelSelector>) -> Vec<u32> {
        let hit = |(id, k): (&u32, &IdentityKey)| selects(self.state, namespaces, pods, k).then_some(*id);
        // The rarest of the selector's labels narrows the candidates; the
        // full match is still judged on each.
        let narrowest = pods
            .and_then(|s| s.match_labels.as_ref())
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                self.by_label
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|ids| ids.len());
        match narrowest {
            Some(ids) => ids
                .iter()
                .filter_map(|id| hit((id, self.identities.get(id)?)))
                .collect(),
            None => self.identities.iter().filter_map(|(id, k)| hit((id, k))).collect(),
        }
    }
}

/// A peer class: a table's `peer`.
fn peer_classes(u: &Universe<'_>, numbers: &mut Numbers, peer: &Peer) -> Vec<u32> {
    match peer {
        Peer::Any | Peer::Entity(Entity::All) => vec![PEER_ANY],
        Peer::Entity(Entity::World) => vec![identity::WORLD],
        Peer::Entity(Entity::Host) => vec![identity::HOST],
        Peer::Entity(Entity::RemoteNode) => vec![identity::REMOTE_NODE],
        Peer::Entity(Entity::Cluster) => {
            let mut v: Vec<u32> = u.identities.keys().copied().collect();
            v.extend([identity::HOST, identity::REMOTE_NODE, identity::INIT]);
            v
        }
        Peer::Pods { namespaces, pods } => {
            let known = u.selected.borrow().get(&(peer as *const Peer)).cloned();
            let ids = known.unwrap_or_else(|| {
                let ids = std::rc::Rc::new(u.select(namespaces, pods.as_ref()));
                u.selected.borrow_mut().insert(peer as *const Peer, ids.clone());
                ids
            });
            ids.to_vec()
        }
        // Only the prefixes whose address lies in `net` can be in it: a
        // range of the sorted set (by address first), not all of it for
        // every peer of every endpoint.
        Peer::Cidr { net, except } => u
            .prefixes
            .range(in_net(net))
            .filter(|p| net.contains(*p) && !except.iter().any(|e| e.contains(*p)))
            .map(|p| numbers.cidrs.id(*p))
            .collect(),
    }
}

/// The prefixes, in `Ipv4Net`'s order (address, then length), whose
/// address is in `net`: a superset of those `net` contains.
fn in_net(net: &Ipv4Net) -> std::ops::RangeInclusive<Ipv4Net> {
    let at = |addr, len| Ipv4Net::new(addr, len).expect("a length of 0 or 32");
    at(net.network(), 0)..=at(net.broadcast(), 32)
}

/// The (protocol, lo, hi) ranges an L4 entry covers for a peer class.
/// Named ports: the destination pod's (ingress: the endpoint itself;
/// egress: the pods of the peer identity, or every pod for other peers).
fn ranges(l4: &L4, named: &[(String, Protocol, u16)]) -> Vec<(u8, u16, u16)> {
    match l4 {
        L4::All => {
            let mut v: Vec<(u8, u16, u16)> = Protocol::ALL.iter().map(|p| (p.number(), 0, u16::MAX)).collect();
            v.push((ICMP, 0, u16::MAX));
            v
        }
        L4::Ports { protocols, port } => {
            let mut v = Vec::new();
            for p in protocols {
                match port {
                    PortSpec::Any => v.push((p.number(), 0, u16::MAX)),
                    PortSpec::Range(lo, hi) => v.push((p.number(), *lo, *hi)),
                    PortSpec::Named(name) => {
                        for (n, proto, num) in named {
                            if n == name && proto == p {
                                v.push((p.number(), *num, *num));
                            }
                        }
                    }
                }
            }
            v
        }
    }
}

/// The aligned power-of-two blocks that make up [lo, hi]: (start, bits).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        let mut size = if lo == 0 { 1 << 16 } else { lo & lo.wrapping_neg() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

/// Disjoint segments of one (table, protocol) from its parts, each with
/// both layers' winning action and reference (the lowest reference among
/// equals, for a stable result). `default` is folded in where nothing else
/// decides (the "any peer" table of an isolated endpoint).
fn segments(parts: &[Part], default: (Verdicts, bool, bool)) -> Vec<(u16, u16, Verdicts)> {
    #[derive(Default)]
    struct Active {
        // (action, reference) -> count, per layer
        enforced: BTreeMap<(u32, u32), usize>,
        audit: BTreeMap<(u32, u32), usize>,
        admin: BTreeMap<(u32, u32), usize>,
        baseline: BTreeMap<(u32, u32), usize>,
    }
    fn best(m: &BTreeMap<(u32, u32), usize>) -> (u32, u32) {
        // Highest action, then lowest reference.
        let mut out = (0, 0);
        for (a, r) in m.keys() {
            if *a > out.0 || (*a == out.0 && *r < out.1) {
                out = (*a, *r);
            }
        }
        out
    }
    let mut points: BTreeMap<u32, Vec<(bool, Part)>> = BTreeMap::new();
    for p in parts {
        points.entry(u32::from(p.lo)).or_default().push((true, *p));
        points.entry(u32::from(p.hi) + 1).or_default().push((false, *p));
    }
    let (dflt, iso_e, iso_a) = default;
    let mut act = Active::default();
    let mut out: Vec<(u16, u16, Verdicts)> = Vec::new();
    let keys: Vec<u32> = points.keys().copied().collect();
    for (i, at) in keys.iter().enumerate() {
        for (start, p) in &points[at] {
            let layers: &mut [&mut BTreeMap<(u32, u32), usize>] = match p.layer {
                Layer::AuditOnly => &mut [&mut act.audit],
                Layer::Enforced => &mut [&mut act.enforced, &mut act.audit],
                Layer::Admin => &mut [&mut act.admin],
                Layer::Baseline => &mut [&mut act.baseline],
            };
            for m in layers.iter_mut() {
                let k = (p.action, p.reference);
                if *start {
                    *m.entry(k).or_default() += 1;
                } else if let Some(c) = m.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        m.remove(&k);
                    }
                }
            }
        }
        let Some(next) = keys.get(i + 1) else { break };
        if act.enforced.is_empty() && act.audit.is_empty() && act.admin.is_empty() && act.baseline.is_empty() {
            continue;
        }
        let (a, r) = best(&act.enforced);
        let (mut a, mut r) = (a as u8, r);
        if a == action::NONE && iso_e {
            (a, r) = (dflt.action, dflt.reference);
        }
        let (aa, ar) = best(&act.audit);
        let (mut aa, mut ar) = (aa as u8, ar);
        if aa == action::NONE && iso_a {
            (aa, ar) = (dflt.audit_action, dflt.audit_reference);
        }
        let (admin, admin_reference) = best(&act.admin);
        let (baseline, baseline_reference) = best(&act.baseline);
        let v = Verdicts {
            action: a,
            reference: r,
            audit_action: aa,
            audit_reference: ar,
            admin,
            admin_reference,
            baseline,
            baseline_reference,
        };
        let (lo, hi) = (*at as u16, (*next - 1) as u16);
        match out.last_mut() {
            Some(last) if last.2 == v && u32::from(last.1) + 1 == *at => last.1 = hi,
            _ => out.push((lo, hi, v)),
        }
    }
    out
}

/// Compiles the policy tables of this node's endpoints.
pub fn compile(state: &ClusterState, endpoints: &[LocalEndpoint], numbers: &mut Numbers) -> Compiled {
    compile_within(state, endpoints, numbers, Budget::UNLIMITED)
}

/// [`compile`] bounded by `budget`.
pub fn compile_within(
    state: &ClusterState,
    endpoints: &[LocalEndpoint],
    numbers: &mut Numbers,
    budget: Budget,
) -> Compiled {
    let (policies, rejected) = super::parse::all(state);
    let mut out = Compiled {
        rejected: rejected.clone(),
        ..Default::default()
    };
    // By reference: a copy of every label set cost a tenth of a pass.
    let identities: BTreeMap<u32, &IdentityKey> = state
        .identities
        .values()
        .filter_map(|o| Some((o.id()?, &o.spec)))
        .collect();
    let mut ports_by_identity: BTreeMap<u32, Vec<(String, Protocol, u16)>> = BTreeMap::new();
    let mut all_ports = Vec::new();
    // Only an egress rule to a named port reads other pods' ports: without
    // one, the walk over every pod (a third of a pass at 10,000 pods) is
    // skipped and the tables stay empty, which no rule would read.
    let named_egress = policies.iter().flat_map(|p| &p.rules).any(|r| {
        r.direction == Direction::Egress
            && r.l4.iter().any(|l| {
                matches!(
                    l,
                    L4::Ports {
                        port: PortSpec::Named(_),
                        ..
                    }
                )
            })
    });
    for pod in state.pods.values().filter(|_| named_egress) {
        let np = named_ports(pod);
        if np.is_empty() {
            continue;
        }
        ports_by_identity
            .entry(state.pod_identity(pod))
            .or_default()
            .extend(np.iter().cloned());
        all_ports.extend(np);
    }
    let mut used_rules: BTreeSet<RuleRef> = BTreeSet::new();
    let mut used_cidrs: BTreeSet<Ipv4Net> = BTreeSet::new();

    let ranks = tier_ranks(&policies, &rejected);

    // Which policies select which endpoint.
    struct Selected<'a> {
        ep: &'a LocalEndpoint,
        pod: Option<&'a Pod>,
        valid: Vec<&'a Policy>,
        invalid: Vec<&'a Rejected>,
    }
    let mut selected = Vec::new();
    for ep in endpoints {
        let pod = state.pods.get(&ep.pod);
        let key = pod.map(|p| IdentityKey::of_pod(p));
        let hit = |namespaces: &Namespaces, pods: &LabelSelector| match &key {
            Some(k) => selects(state, namespaces, Some(pods), k),
            None => false,
        };
        selected.push(Selected {
            ep,
            pod: pod.map(|p| &**p),
            valid: policies
                .iter()
                .filter(|p| hit(&p.subject.namespaces, &p.subject.pods))
                .collect(),
            invalid: rejected
                .iter()
                .filter(|r| !r.audit && r.usable.is_none() && hit(&r.subject.namespaces, &r.subject.pods))
                .collect(),
        });
    }
    // The CIDR prefixes of the rules in play.
    let mut prefixes = BTreeSet::new();
    for s in &selected {
        for p in &s.valid {
            for r in &p.rules {
                for peer in &r.peers {
                    if let Peer::Cidr { net, except } = peer {
                        prefixes.insert(*net);
                        prefixes.extend(except.iter().copied());
                    }
                }
            }
        }
    }
    let mut by_label: BTreeMap<(&str, &str), Vec<u32>> = BTreeMap::new();
    for (id, k) in &identities {
        for (name, value) in &k.labels {
            by_label.entry((name, value)).or_default().push(*id);
        }
    }
    let u = Universe {
        state,
        identities: &identities,
        ports_by_identity,
        all_ports,
        prefixes,
        by_label,
        selected: Default::default(),
    };

    for s in &selected {
        let ep = s.ep;
        let mut info = EndpointPolicy::default();
        for p in &s.valid {
            info.policies.push(p.id.clone());
        }
        for r in &s.invalid {
            info.policies.push(r.id.clone());
        }
        // Unknown pod: deny if any policy could apply to it.
        if s.pod.is_none() {
            let ns = &ep.pod.namespace;
            let could = policies
                .iter()
                .map(|p| &p.subject.namespaces)
                .chain(rejected.iter().map(|r| &r.subject.namespaces))
                .any(|scope| !matches!(scope, Namespaces::Named(n) if n != ns));
            if could {
                for d in Direction::BOTH {
                    let rr = RuleRef {
                        policy: None,
                        direction: d,
                        what: RuleWhat::UnknownPod,
                        audit: false,
                    };
                    let r = numbers.rules.id(rr.clone());
                    used_rules.insert(rr);
                    out.slots.insert(
                        isolation_slot(ep.endpoint_id, d),
                        Verdicts {
                            action: action::DEFAULT_DENY,
                            reference: r,
                            audit_action: action::DEFAULT_DENY,
                            audit_reference: r,
                            ..Default::default()
                        },
                    );
                    info.isolated[d.index()] = true;
                    info.audited[d.index()] = true;
                }
            }
            out.endpoints.insert(ep.endpoint_id, info);
            continue;
        }
        let own_ports = s.pod.map(named_ports).unwrap_or_default();
        for d in Direction::BOTH {
            // Isolation and its named reference, per layer: the first
            // policy (in kind, namespace, name order) that isolates.
            let mut dflt = Verdicts::default();
            let (mut iso_e, mut iso_a) = (false, false);
            let mut named_default = |rr: RuleRef, audit_only: bool, dflt: &mut Verdicts| {
                let r = numbers.rules.id(rr.clone());
                used_rules.insert(rr);
                if !audit_only && dflt.action == action::NONE {
                    dflt.action = action::DEFAULT_DENY;
                    dflt.reference = r;
                }
                if dflt.audit_action == action::NONE {
                    dflt.audit_action = action::DEFAULT_DENY;
                    dflt.audit_reference = r;
                }
            };
            for r in s.invalid.iter().filter(|r| r.tier.is_none()) {
                if r.isolates[d.index()] {
                    iso_e = true;
                    iso_a = true;
                    let rr = RuleRef {
                        policy: Some(r.id.clone()),
                        direction: d,
                        what: RuleWhat::Invalid,
                        audit: false,
                    };
                    named_default(rr, false, &mut dflt);
                }
            }
            for p in &s.valid {
                if p.isolates[d.index()] {
                    iso_a = true;
                    iso_e |= !p.audit;
                    let rr = RuleRef {
                        policy: Some(p.id.clone()),
                        direction: d,
                        what: RuleWhat::DefaultDeny,
                        audit: p.audit,
                    };
                    named_default(rr, p.audit, &mut dflt);
                }
            }
            info.isolated[d.index()] = iso_e;
            info.audited[d.index()] = iso_a;

            // Every rule's parts, by peer class.
            let mut tables: BTreeMap<u32, Vec<Part>> = BTreeMap::new();
            // A rejected tiered policy: a deny of everything, at its place.
            for r in &s.invalid {
                let (Some(t), true) = (r.tier, r.isolates[d.index()]) else {
                    continue;
                };
                let rr = RuleRef {
                    policy: Some(r.id.clone()),
                    direction: d,
                    what: RuleWhat::Invalid,
                    audit: false,
                };
                let reference = numbers.rules.id(rr.clone());
                used_rules.insert(rr);
                let rank = ranks.get(&r.id).copied().unwrap_or(0);
                if d == Direction::Ingress {
                    host_first(&mut tables, numbers, &mut used_rules, rank, tier_layer(t.tier));
                }
                for (proto, lo, hi) in ranges(&L4::All, &[]) {
                    tables.entry(PEER_ANY).or_default().push(Part {
                        proto,
                        lo,
                        hi,
                        action: rank.saturating_sub(1) << tier::RANK_SHIFT | tier::DENY,
                        reference,
                        layer: tier_layer(t.tier),
                    });
                }
            }
            for p in &s.valid {
                for rule in p.rules.iter().filter(|r| r.direction == d) {
                    let what = match (p.tier, rule.action) {
                        (Some(_), _) if rule.unreadable => RuleWhat::Unreadable {
                            index: rule.index,
                            name: rule.name.clone(),
                        },
                        (Some(_), action) => RuleWhat::Tiered {
                            action,
                            index: rule.index,
                            match_type: rule.match_type(),
                            name: rule.name.clone(),
                        },
                        (None, Action::Deny) => RuleWhat::Deny {
                            index: rule.index,
                            match_type: rule.match_type(),
                        },
                        (None, _) => RuleWhat::Allow {
                            index: rule.index,
                            match_type: rule.match_type(),
                        },
                    };
                    let rr = RuleRef {
                        policy: Some(p.id.clone()),
                        direction: d,
                        what,
                        audit: p.audit,
                    };
                    let reference = numbers.rules.id(rr.clone());
                    used_rules.insert(rr);
                    let (act, layer) = match p.tier {
                        Some(t) => {
                            // Two ranks a rule: the upper one for what must
                            // come before it (the node's probes, before an
                            // unreadable rule's deny).
                            let first = ranks.get(&p.id).copied().unwrap_or(0);
                            let above = first.saturating_sub(2 * rule.index as u32);
                            if rule.unreadable && rule.action == Action::Deny && d == Direction::Ingress {
                                host_first(&mut tables, numbers, &mut used_rules, above, tier_layer(t.tier));
                            }
                            let rank = above.saturating_sub(1);
                            let kind = match rule.action {
                                Action::Allow => tier::ACCEPT,
                                Action::Deny => tier::DENY,
                                Action::Pass => tier::PASS,
                            };
                            (rank << tier::RANK_SHIFT | kind, tier_layer(t.tier))
                        }
                        None if rule.action == Action::Deny => (u32::from(action::DENY), Layer::Enforced),
                        None => (u32::from(action::ALLOW), Layer::Enforced),
                    };
                    let layer = if p.audit { Layer::AuditOnly } else { layer };
                    for peer in &rule.peers {
                        if let Peer::Cidr { net, except } = peer {
                            used_cidrs.insert(*net);
                            used_cidrs.extend(except.iter().copied());
                        }
                        for class in peer_classes(&u, numbers, peer) {
                            let named: &[(String, Protocol, u16)] = match d {
                                Direction::Ingress => &own_ports,
                                Direction::Egress if class != PEER_ANY && class < CIDR_MIN => {
                                    u.ports_by_identity.get(&class).map_or(&[], |v| v.as_slice())
                                }
                                Direction::Egress => &u.all_ports,
                            };
                            for l4 in &rule.l4 {
                                for (proto, lo, hi) in ranges(l4, named) {
                                    tables.entry(class).or_default().push(Part {
                                        proto,
                                        lo,
                                        hi,
                                        action: act,
                                        reference,
                                        layer,
                                    });
                                }
                            }
                        }
                    }
                }
            }
            // The node reaches its pods whatever isolates them (deny
            // rules of weir's own policies can still refuse it).
            if d == Direction::Ingress && (iso_e || iso_a) {
                let allow = u32::from(action::ALLOW);
                host_allowed(&mut tables, numbers, &mut used_rules, allow, Layer::Enforced);
            }
            if iso_e || iso_a {
                out.slots.insert(
                    isolation_slot(ep.endpoint_id, d),
                    Verdicts {
                        action: if iso_e { dflt.action } else { action::NONE },
                        reference: if iso_e { dflt.reference } else { 0 },
                        audit_action: dflt.audit_action,
                        audit_reference: dflt.audit_reference,
                        ..Default::default()
                    },
                );
            }
            for (class, parts) in tables {
                let mut by_proto: BTreeMap<u8, Vec<Part>> = BTreeMap::new();
                for p in parts {
                    by_proto.entry(p.proto).or_default().push(p);
                }
                let fold = if class == PEER_ANY {
                    (dflt, iso_e, iso_a)
                } else {
                    (Verdicts::default(), false, false)
                };
                for (proto, parts) in by_proto {
                    for (lo, hi, v) in segments(&parts, fold) {
                        for (port, bits) in port_prefixes(lo, hi) {
                            let slot = Slot {
                                endpoint_id: ep.endpoint_id,
                                direction: d.index() as u8,
                                peer: class,
                                proto,
                                port: if bits == 0 { 0 } else { port },
                                port_bits: bits,
                            };
                            out.slots.insert(slot, v);
                        }
                    }
                }
            }
        }
        out.endpoints.insert(ep.endpoint_id, info);
    }
    over_budget(&mut out, numbers, &mut used_rules, budget);
    numbers.rules.retain(|r| used_rules.contains(r));
    numbers
        .cidrs
        .retain(|n| used_cidrs.contains(n) || u.prefixes.contains(n));
    out.rules = numbers.rules.iter().map(|(r, id)| (id, r.clone())).collect();
    out.cidrs = u.prefixes.iter().map(|p| (*p, numbers.cidrs.id(*p))).collect();
    out
}

/// Slots an endpoint isolated for its budget keeps: a default deny each
/// way and the node's way in.
const ISOLATED_SLOTS: usize = 3;

/// Applies the [`Budget`]: endpoints over their share, then the largest
/// while the table would not hold the rest, are isolated.
fn over_budget(out: &mut Compiled, numbers: &mut Numbers, used_rules: &mut BTreeSet<RuleRef>, budget: Budget) {
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    for slot in out.slots.keys() {
        *sizes.entry(slot.endpoint_id).or_default() += 1;
    }
    let mut over: BTreeSet<u32> = sizes
        .iter()
        .filter(|(_, n)| **n > budget.per_endpoint)
        .map(|(ep, _)| *ep)
        .collect();
    let mut total: usize = sizes
        .iter()
        .map(|(ep, n)| if over.contains(ep) { ISOLATED_SLOTS } else { *n })
        .sum();
    let mut largest: Vec<(usize, u32)> = sizes
        .iter()
        .filter(|(ep, _)| !over.contains(ep))
        .map(|(ep, n)| (*n, *ep))
        .collect();
    largest.sort_by(|a, b| b.cmp(a));
    for (n, ep) in largest {
        if total <= budget.total {
            break;
        }
        over.insert(ep);
        total = total - n + ISOLATED_SLOTS.min(n);
    }
    if over.is_empty() {
        return;
    }
    let mut reference = |rr: RuleRef| {
        let r = numbers.rules.id(rr.clone());
        used_rules.insert(rr);
        r
    };
    let host = reference(RuleRef {
        policy: None,
        direction: Direction::Ingress,
        what: RuleWhat::HostAllowed,
        audit: false,
    });
    let isolated: Vec<(Direction, u32)> = Direction::BOTH
        .iter()
        .map(|d| {
            let r = reference(RuleRef {
                policy: None,
                direction: *d,
                what: RuleWhat::OverBudget,
                audit: false,
            });
            (*d, r)
        })
        .collect();
    out.slots.retain(|s, _| !over.contains(&s.endpoint_id));
    for ep in over {
        out.over_budget.insert(ep, sizes[&ep]);
        for (d, r) in &isolated {
            out.slots.insert(
                isolation_slot(ep, *d),
                Verdicts {
                    action: action::DEFAULT_DENY,
                    reference: *r,
                    audit_action: action::DEFAULT_DENY,
                    audit_reference: *r,
                    ..Default::default()
                },
            );
        }
        out.slots.insert(
            Slot {
                endpoint_id: ep,
                direction: Direction::Ingress.index() as u8,
                peer: identity::HOST,
                proto: 0,
                port: 0,
                port_bits: 0,
            },
            Verdicts {
                action: action::ALLOW,
                reference: host,
                audit_action: action::ALLOW,
                audit_reference: host,
                ..Default::default()
            },
        );
        if let Some(info) = out.endpoints.get_mut(&ep) {
            info.isolated = [true, true];
            info.audited = [true, true];
        }
    }
}

/// The node reaching its pods: `action` for the HOST identity in `layer`.
/// In the NetworkPolicy layer, an allow whatever isolates the pod (weir's
/// own deny rules can still refuse it). In a tier, an Accept at a rank
/// above a deny weir made in place of what it could not read (one
/// ClusterNetworkPolicy rule or the whole policy), so a typo does not fail
/// every probe of the pods it selects. (A written ClusterNetworkPolicy
/// cannot refuse the node: its ingress peers are namespaces and pods only.)
fn host_allowed(
    tables: &mut BTreeMap<u32, Vec<Part>>,
    numbers: &mut Numbers,
    used_rules: &mut BTreeSet<RuleRef>,
    action: u32,
    layer: Layer,
) {
    let rr = RuleRef {
        policy: None,
        direction: Direction::Ingress,
        what: RuleWhat::HostAllowed,
        audit: false,
    };
    let reference = numbers.rules.id(rr.clone());
    used_rules.insert(rr);
    for (proto, lo, hi) in ranges(&L4::All, &[]) {
        tables.entry(identity::HOST).or_default().push(Part {
            proto,
            lo,
            hi,
            action,
            reference,
            layer,
        });
    }
}

/// [`host_allowed`] at `rank` of a tier.
fn host_first(
    tables: &mut BTreeMap<u32, Vec<Part>>,
    numbers: &mut Numbers,
    used_rules: &mut BTreeSet<RuleRef>,
    rank: u32,
    layer: Layer,
) {
    host_allowed(
        tables,
        numbers,
        used_rules,
        rank << tier::RANK_SHIFT | tier::ACCEPT,
        layer,
    );
}

fn tier_layer(t: Tier) -> Layer {
    match t {
        Tier::Admin => Layer::Admin,
        Tier::Baseline => Layer::Baseline,
    }
}

/// The rank of each tiered policy's first rule ([`tier`]): policies in
/// judging order (tier, priority, then name: upstream leaves ties to the
/// implementation, and a name is stable), the first with the highest.
fn tier_ranks(policies: &[Policy], rejected: &[Rejected]) -> BTreeMap<PolicyId, u32> {
    let mut order: Vec<(Tiered, &PolicyId)> = policies
        .iter()
        .filter_map(|p| p.tier.map(|t| (t, &p.id)))
        // A rejected policy with a usable part is among `policies`.
        .chain(
            rejected
                .iter()
                .filter(|r| r.usable.is_none())
                .filter_map(|r| r.tier.map(|t| (t, &r.id))),
        )
        .collect();
    order.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    let n = order.len() as u32;
    order
        .into_iter()
        .enumerate()
        .map(|(i, (_, id))| {
            let rank = (n - i as u32)
                .saturating_mul(tier::RULES_PER_POLICY)
                .min(tier::RANK_MAX);
            (id.clone(), rank)
        })
        .collect()
}

fn isolation_slot(endpoint_id: u32, d: Direction) -> Slot {
    Slot {
        endpoint_id,
        direction: d.index() as u8,
        peer: PEER_ANY,
        proto: 0,
        port: 0,
        port_bits: 0,
    }
}

impl Compiled {
    /// What the datapath decides for a connection of local endpoint
    /// `endpoint_id` in direction `d` with a peer of identity `peer` at
    /// `addr`, on `proto`/`port`: policy.h's policy_judge over these tables,
    /// in Rust (the reference the tests hold the tables to, and what a
    /// "why was this denied" tool can ask without a packet).
    pub fn judge(
        &self,
        endpoint_id: u32,
        d: Direction,
        peer: u32,
        addr: std::net::Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> (VerdictKind, u32) {
        let lookup = |class: u32| -> Option<Verdicts> {
            let mut best: Option<(i32, Verdicts)> = None;
            for (s, v) in self.slots.range(
                Slot {
                    endpoint_id,
                    direction: d.index() as u8,
                    peer: class,
                    proto: 0,
                    port: 0,
                    port_bits: 0,
                }..=Slot {
                    endpoint_id,
                    direction: d.index() as u8,
                    peer: class,
                    proto: u8::MAX,
                    port: u16::MAX,
                    port_bits: u8::MAX,
                },
            ) {
                let len = if s.proto == 0 {
                    0
                } else if s.proto != proto {
                    continue;
                } else {
                    let mask = if s.port_bits == 0 {
                        0
                    } else {
                        u16::MAX << (16 - u32::from(s.port_bits))
                    };
                    if port & mask != s.port {
                        continue;
                    }
                    8 + i32::from(s.port_bits)
                };
                if best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, *v));
                }
            }
            best.map(|(_, v)| v)
        };
        let cidr = self
            .cidrs
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, id)| *id);
        let mut e = (action::NONE, 0);
        let mut a = (action::NONE, 0);
        let (mut admin, mut baseline) = ((tier::NONE, 0), (tier::NONE, 0));
        for class in [Some(peer), cidr, Some(PEER_ANY)].into_iter().flatten() {
            if let Some(v) = lookup(class) {
                if v.action > e.0 {
                    e = (v.action, v.reference);
                }
                if v.audit_action > a.0 {
                    a = (v.audit_action, v.audit_reference);
                }
                if v.admin > admin.0 {
                    admin = (v.admin, v.admin_reference);
                }
                if v.baseline > baseline.0 {
                    baseline = (v.baseline, v.baseline_reference);
                }
            }
        }
        match admin.0 & tier::KIND_MASK {
            tier::ACCEPT => return (VerdictKind::Allow, admin.1),
            tier::DENY => return (VerdictKind::Deny, admin.1),
            _ => {}
        }
        let baseline_kind = baseline.0 & tier::KIND_MASK;
        match (e.0, a.0) {
            (action::DENY, _) => (VerdictKind::Deny, e.1),
            (action::DEFAULT_DENY, _) => (VerdictKind::Denied, e.1),
            (action::NONE, _) if baseline_kind == tier::DENY => (VerdictKind::Deny, baseline.1),
            (_, action::DENY | action::DEFAULT_DENY) => (VerdictKind::Audit, a.1),
            (action::ALLOW, _) => (VerdictKind::Allow, e.1),
            _ if baseline_kind == tier::ACCEPT => (VerdictKind::Allow, baseline.1),
            _ => (VerdictKind::None, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_manifests;
    use crate::policy::PolicyKind;
    use std::net::Ipv4Addr;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    /// Namespaces a (team=a) and b (team=b), pods web and db in a, client
    /// in b, identities allocated; endpoints: a/web (1), a/db (2).
    fn cluster(extra: &str) -> (ClusterState, Vec<LocalEndpoint>) {
        let mut s = ClusterState::default();
        let base = r#"
kind: Namespace
metadata: {name: a, labels: {team: a}}
---
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.1}
---
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "300"}
spec: {namespace: a, labels: {app: web}}
---
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "301"}
spec: {namespace: a, labels: {app: db}}
---
kind: WeirIdentity
apiVersion: weir.dev/v1alpha1
metadata: {name: "302"}
spec: {namespace: b, labels: {app: client}}
"#;
        let errors = parse_manifests(&mut s, &format!("{base}\n---\n{extra}"));
        assert!(errors.is_empty(), "{errors:?}");
        let eps = vec![
            LocalEndpoint {
                endpoint_id: 1,
                pod: ObjectKey::new("a", "web"),
            },
            LocalEndpoint {
                endpoint_id: 2,
                pod: ObjectKey::new("a", "db"),
            },
        ];
        (s, eps)
    }

    const WEB: u32 = 300;
    const DB: u32 = 301;
    const CLIENT: u32 = 302;
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const DB_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn run(extra: &str) -> Compiled {
        let (s, eps) = cluster(extra);
        compile(&s, &eps, &mut Numbers::default())
    }

    fn verdict(c: &Compiled, ep: u32, d: Direction, peer: u32, addr: Ipv4Addr, proto: u8, port: u16) -> VerdictKind {
        c.judge(ep, d, peer, addr, proto, port).0
    }

    use Direction::{Egress, Ingress};

    fn cnp(name: &str, tier: &str, priority: i32, rest: &str) -> String {
        format!(
            "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{rest}\n---\n"
        )
    }

    #[test]
    fn cluster_network_policy_tiers_in_order_first_rule_decides() {
        let subject = "  subject: {namespaces: {matchLabels: {team: a}}}\n";
        // Admin: priority 5 passes b's traffic on port 80, priority 10
        // denies all of b's; NetworkPolicy allows b on 80 and 81; Baseline
        // denies everything from b.
        let pass = cnp(
            "pass-80",
            "Admin",
            5,
            &format!(
                "{subject}  ingress:\n  - {{name: web, action: Pass, from: [{{namespaces: {{matchLabels: {{team: b}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}"
            ),
        );
        let deny = cnp(
            "deny-b",
            "Admin",
            10,
            &format!("{subject}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{matchLabels: {{team: b}}}}}}]}}"),
        );
        let np = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}, {port: 81}]}]\n---\n";
        let baseline = cnp(
            "default",
            "Baseline",
            1,
            &format!("{subject}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}"),
        );
        let c = run(&format!("{pass}{deny}{np}{baseline}"));
        let judged = |ep, port| c.judge(ep, Ingress, CLIENT, CLIENT_IP, TCP, port);
        let name = |r: u32| c.rules[&r].clone();
        // 80: passed by the Admin tier, allowed by the NetworkPolicy.
        let (v, r) = judged(1, 80);
        assert_eq!(v, VerdictKind::Allow);
        assert_eq!(name(r).policy.unwrap().kind, PolicyKind::NetworkPolicy);
        // 81: the Admin deny comes first (priority 10 before NetworkPolicy).
        let (v, r) = judged(1, 81);
        assert_eq!(v, VerdictKind::Deny);
        assert_eq!(name(r).policy.unwrap().name, "deny-b");
        // db is selected by no NetworkPolicy: 80 passes to Baseline's deny.
        let (v, r) = judged(2, 80);
        assert_eq!(v, VerdictKind::Deny);
        let rule = name(r);
        assert_eq!(rule.policy.unwrap().name, "default");
        assert!(matches!(
            rule.what,
            RuleWhat::Tiered {
                action: Action::Deny,
                index: 0,
                ..
            }
        ));
        // web reaching db: the Admin rules name b only; Baseline denies
        // every namespace's pods.
        assert_eq!(
            verdict(&c, 2, Ingress, WEB, Ipv4Addr::new(10, 0, 0, 1), TCP, 80),
            VerdictKind::Deny
        );
        assert_eq!(
            verdict(&c, 2, Egress, CLIENT, CLIENT_IP, TCP, 80),
            VerdictKind::None,
            "no egress rules anywhere"
        );

        // Priorities decide, not the order of names: swap them and the
        // deny (now priority 1) comes before the pass on 80 too.
        let deny_first = cnp(
            "deny-b",
            "Admin",
            1,
            &format!("{subject}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{matchLabels: {{team: b}}}}}}]}}"),
        );
        let c = run(&format!("{pass}{deny_first}{np}{baseline}"));
        assert_eq!(c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 80).0, VerdictKind::Deny);
    }

    #[test]
    fn cluster_network_policy_accepts_before_networkpolicy_and_matches_networks_and_ports() {
        let subject = "  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}\n";
        // NetworkPolicy isolates web's egress; an Admin Accept to client's
        // network on a port range goes first; an IPv6 network names nothing.
        let accept = cnp(
            "accept",
            "Admin",
            3,
            &format!(
                "{subject}  egress:\n  - {{action: Accept, to: [{{networks: [10.0.1.0/24, \"fd00::/8\"]}}], protocols: [{{udp: {{destinationPort: {{range: {{start: 5000, end: 5010}}}}}}}}]}}"
            ),
        );
        let np = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: lock, namespace: a}\nspec: {podSelector: {}, policyTypes: [Egress]}\n---\n";
        let c = run(&format!("{accept}{np}"));
        assert_eq!(verdict(&c, 1, Egress, CLIENT, CLIENT_IP, UDP, 5005), VerdictKind::Allow);
        assert_eq!(
            verdict(&c, 1, Egress, CLIENT, CLIENT_IP, UDP, 5011),
            VerdictKind::Denied
        );
        assert_eq!(
            verdict(&c, 1, Egress, CLIENT, CLIENT_IP, TCP, 5005),
            VerdictKind::Denied
        );
        assert_eq!(
            verdict(&c, 2, Egress, CLIENT, CLIENT_IP, UDP, 5005),
            VerdictKind::Denied,
            "db is not the subject"
        );
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    }

    #[test]
    fn a_cluster_network_policy_rule_that_cannot_be_read_fails_closed_alone() {
        let subject = "  subject: {namespaces: {matchLabels: {team: a}}}\n";
        let bad_from = "from: [{namespaces: {matchExpressions: [{key: team, operator: Sometimes}]}}]";
        let host = |c: &Compiled| c.judge(1, Ingress, identity::HOST, Ipv4Addr::new(172, 16, 0, 1), TCP, 10250);
        // A bad selector operator in an Accept (the API server's schema
        // lets it through): that rule matches nothing; the Deny after it
        // still denies.
        let accept = cnp(
            "typo",
            "Admin",
            2,
            &format!(
                "{subject}  ingress:\n  - {{action: Accept, {bad_from}}}\n  - {{action: Deny, from: [{{namespaces: {{matchLabels: {{team: b}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 81}}}}}}]}}"
            ),
        );
        let c = run(&accept);
        assert_eq!(c.rejected.len(), 1);
        let reason = &c.rejected[0].reason;
        assert!(
            reason.contains("ingress[0]") && reason.contains("Sometimes"),
            "{reason}"
        );
        assert_eq!(
            verdict(&c, 1, Ingress, CLIENT, CLIENT_IP, TCP, 80),
            VerdictKind::None,
            "never opens"
        );
        let (v, r) = c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 81);
        assert_eq!(v, VerdictKind::Deny, "the good rule works on");
        assert!(matches!(c.rules[&r].what, RuleWhat::Tiered { index: 1, .. }));

        // The same typo in a Deny: it denies everything in its place, the
        // node's probes excepted; the Accept after it comes too late.
        let deny = cnp(
            "typo",
            "Admin",
            2,
            &format!(
                "{subject}  ingress:\n  - {{name: no-b, action: Deny, {bad_from}}}\n  - {{action: Accept, from: [{{namespaces: {{}}}}]}}"
            ),
        );
        let c = run(&deny);
        let (v, r) = c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 80);
        assert_eq!(v, VerdictKind::Deny);
        assert_eq!(
            c.rules[&r].what,
            RuleWhat::Unreadable {
                index: 0,
                name: "no-b".into()
            }
        );
        let (v, r) = host(&c);
        assert_eq!(v, VerdictKind::Allow, "kubelet still probes the pods");
        assert_eq!(c.rules[&r].what, RuleWhat::HostAllowed);
        assert_eq!(
            verdict(&c, 1, Egress, CLIENT, CLIENT_IP, TCP, 80),
            VerdictKind::None,
            "no egress rules"
        );

        // A subject that cannot be read: every pod's ingress is denied at
        // the policy's place, the node's probes excepted.
        let subject_typo = cnp(
            "typo",
            "Admin",
            2,
            "  subject: {namespaces: {matchExpressions: [{key: team, operator: Sometimes}]}}\n  ingress:\n  - {action: Accept, from: [{namespaces: {}}]}",
        );
        let c = run(&subject_typo);
        assert_eq!(c.rejected.len(), 1);
        let (v, r) = c.judge(2, Ingress, CLIENT, CLIENT_IP, TCP, 80);
        assert_eq!(v, VerdictKind::Deny);
        assert_eq!(c.rules[&r].what, RuleWhat::Invalid);
        assert_eq!(host(&c).0, VerdictKind::Allow);
    }

    #[test]
    fn an_endpoint_over_its_budget_is_isolated_alone_and_the_node_still_reaches_it() {
        let ports: Vec<String> = (0..40).map(|i| format!("{{port: {}}}", 8000 + i * 2)).collect();
        let text = format!(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: web, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{ports: [{}]}}]\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: db, namespace: a}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{ports: [{{port: 5432}}]}}]\n",
            ports.join(", ")
        );
        let (s, eps) = cluster(&text);
        let host = |c: &Compiled, ep| c.judge(ep, Ingress, identity::HOST, Ipv4Addr::new(172, 16, 0, 1), TCP, 10250);
        let unbounded = compile(&s, &eps, &mut Numbers::default());
        let web_slots = unbounded.slots.keys().filter(|k| k.endpoint_id == 1).count();
        let db_slots = unbounded.slots.keys().filter(|k| k.endpoint_id == 2).count();
        assert!(web_slots > 40 && db_slots < 10, "{web_slots} {db_slots}");
        assert_eq!(
            verdict(&unbounded, 1, Ingress, CLIENT, CLIENT_IP, TCP, 8000),
            VerdictKind::Allow
        );

        for budget in [
            // web over its share...
            Budget {
                per_endpoint: 20,
                total: usize::MAX,
            },
            // ...or the table too small for both: the larger one goes.
            Budget {
                per_endpoint: usize::MAX,
                total: web_slots,
            },
        ] {
            let c = compile_within(&s, &eps, &mut Numbers::default(), budget);
            assert_eq!(c.over_budget, BTreeMap::from([(1, web_slots)]), "{budget:?}");
            let (v, r) = c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 8000);
            assert_eq!(v, VerdictKind::Denied, "{budget:?}");
            assert_eq!(c.rules[&r].what, RuleWhat::OverBudget);
            assert_eq!(verdict(&c, 1, Egress, CLIENT, CLIENT_IP, TCP, 53), VerdictKind::Denied);
            assert_eq!(host(&c, 1).0, VerdictKind::Allow, "kubelet still probes it");
            // db is untouched: its rule allows, the rest is denied.
            assert_eq!(
                verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 5432),
                VerdictKind::Allow
            );
            assert_eq!(verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 80), VerdictKind::Denied);
            assert!(c.slots.len() <= budget.total, "{} slots", c.slots.len());
        }
    }

    #[test]
    fn no_policy_no_verdict_and_isolation_denies_by_default() {
        let c = run("");
        assert!(c.slots.is_empty());
        let c = run(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n",
        );
        assert_eq!(verdict(&c, 1, Ingress, CLIENT, CLIENT_IP, TCP, 80), VerdictKind::Denied);
        assert_eq!(
            verdict(&c, 1, Egress, CLIENT, CLIENT_IP, TCP, 80),
            VerdictKind::None,
            "egress not isolated"
        );
        assert_eq!(
            verdict(&c, 1, Ingress, identity::HOST, Ipv4Addr::new(172, 16, 0, 1), TCP, 10250),
            VerdictKind::Allow,
            "the node reaches its pods"
        );
        let (_, r) = c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 80);
        assert_eq!(c.rules[&r].what, RuleWhat::DefaultDeny);
        assert_eq!(c.rules[&r].policy.as_ref().unwrap().name, "deny");
    }

    #[test]
    fn peers_and_ports_as_networkpolicy_means_them() {
        let c = run(r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: b}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [client]}]}
    ports: [{port: 5432}, {port: 6000, endPort: 6010, protocol: UDP}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - from: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.0/30]}}]
    ports: [{port: 7000}]
"#);
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 5432),
            VerdictKind::Allow,
            "AND of both selectors"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, UDP, 5432),
            VerdictKind::Denied,
            "TCP by default"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, UDP, 6005),
            VerdictKind::Allow,
            "endPort range"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, UDP, 6011),
            VerdictKind::Denied
        );
        assert_eq!(
            verdict(&c, 2, Ingress, WEB, Ipv4Addr::new(10, 0, 0, 1), TCP, 9090),
            VerdictKind::Allow,
            "named port of the destination (db: 9090)"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, WEB, Ipv4Addr::new(10, 0, 0, 1), TCP, 8080),
            VerdictKind::Denied,
            "web's own http is not db's"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, 999, Ipv4Addr::new(10, 0, 1, 9), TCP, 7000),
            VerdictKind::Allow,
            "in the CIDR"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 7000),
            VerdictKind::Denied,
            "in the except"
        );
        assert_eq!(
            verdict(&c, 1, Ingress, CLIENT, CLIENT_IP, TCP, 5432),
            VerdictKind::None,
            "web is not selected"
        );
        let (_, r) = c.judge(2, Ingress, CLIENT, CLIENT_IP, TCP, 5432);
        assert_eq!(
            c.rules[&r].what,
            RuleWhat::Allow {
                index: 0,
                match_type: MatchType::L3L4
            }
        );
    }

    #[test]
    fn an_egress_named_port_is_each_destination_pods_number() {
        let c = run(r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
"#);
        assert_eq!(
            verdict(&c, 1, Egress, DB, DB_IP, TCP, 9090),
            VerdictKind::Allow,
            "db's http is 9090"
        );
        assert_eq!(
            verdict(&c, 1, Egress, DB, DB_IP, TCP, 8080),
            VerdictKind::Denied,
            "web's own http is not db's"
        );
    }

    #[test]
    fn separate_peers_are_or_and_empty_rules_allow_all() {
        let c = run(r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}, {podSelector: {matchLabels: {app: web}}}]}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: all, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
  egress: []
"#);
        assert_eq!(verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, UDP, 53), VerdictKind::Allow);
        assert_eq!(
            verdict(&c, 2, Ingress, WEB, Ipv4Addr::new(10, 0, 0, 1), TCP, 1),
            VerdictKind::Allow
        );
        assert_eq!(
            verdict(&c, 2, Ingress, identity::WORLD, Ipv4Addr::new(8, 8, 8, 8), TCP, 1),
            VerdictKind::Denied
        );
        assert_eq!(
            verdict(&c, 1, Ingress, identity::WORLD, Ipv4Addr::new(8, 8, 8, 8), TCP, 1),
            VerdictKind::Allow,
            "ingress: [{{}}]"
        );
        assert_eq!(
            verdict(&c, 1, Egress, DB, DB_IP, TCP, 1),
            VerdictKind::Denied,
            "policyTypes omitted, egress: [] isolates"
        );
    }

    #[test]
    fn deny_beats_allow_and_audit_only_records() {
        let c = run(r#"
kind: WeirNetworkPolicy
apiVersion: weir.dev/v1alpha1
metadata: {name: allow, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{from: [{entities: [cluster]}]}]
---
kind: WeirClusterNetworkPolicy
apiVersion: weir.dev/v1alpha1
metadata: {name: no-b}
spec:
  ingressDeny: [{from: [{namespaceSelector: {matchLabels: {team: b}}}], ports: [{port: 22}]}]
---
kind: WeirNetworkPolicy
apiVersion: weir.dev/v1alpha1
metadata: {name: stage, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enforcement: audit
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
"#);
        assert_eq!(verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 80), VerdictKind::Allow);
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, TCP, 22),
            VerdictKind::Deny,
            "deny wins"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, CLIENT, CLIENT_IP, UDP, 22),
            VerdictKind::Deny,
            "no protocol: all three"
        );
        assert_eq!(
            verdict(&c, 2, Ingress, identity::WORLD, Ipv4Addr::new(1, 1, 1, 1), TCP, 80),
            VerdictKind::Denied,
            "world is not cluster"
        );
        assert_eq!(
            verdict(&c, 1, Ingress, CLIENT, CLIENT_IP, TCP, 80),
            VerdictKind::Audit,
            "would be denied"
        );
        assert_eq!(
            verdict(&c, 1, Ingress, DB, DB_IP, TCP, 80),
            VerdictKind::None,
            "the audit policy would allow db: nothing to say"
        );
        let (_, r) = c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 80);
        assert!(c.rules[&r].audit && c.rules[&r].what == RuleWhat::DefaultDeny);
        let (_, r) = c.judge(2, Ingress, CLIENT, CLIENT_IP, TCP, 22);
        assert_eq!(
            c.rules[&r].policy.as_ref().unwrap().kind,
            PolicyKind::WeirClusterNetworkPolicy
        );
    }

    #[test]
    fn an_invalid_policy_is_rejected_with_its_reason_and_denies_what_it_selects() {
        for (spec, reason) in [
            (
                "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
                "not a CIDR",
            ),
            (
                "{podSelector: {matchExpressions: [{key: app, operator: Like}]}}",
                "unknown operator",
            ),
            ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "out of range"),
            (
                "{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
                "below port",
            ),
            (
                "{podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}",
                "named port",
            ),
        ] {
            let c = run(&format!(
                "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: bad, namespace: a}}\nspec: {spec}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: good, namespace: b}}\nspec: {{podSelector: {{}}}}\n"
            ));
            assert_eq!(c.rejected.len(), 1, "{spec}");
            assert!(
                c.rejected[0].reason.contains(reason),
                "{spec}: {}",
                c.rejected[0].reason
            );
            let (v, r) = c.judge(2, Ingress, CLIENT, CLIENT_IP, TCP, 80);
            assert_eq!(v, VerdictKind::Denied, "{spec}: never wider");
            assert_eq!(c.rules[&r].what, RuleWhat::Invalid);
        }
    }

    #[test]
    fn a_policy_the_source_could_not_read_denies_its_whole_namespace_unless_audit() {
        let (mut s, eps) = cluster("");
        let id = PolicyId {
            kind: PolicyKind::WeirNetworkPolicy,
            namespace: "a".into(),
            name: "mangled".into(),
        };
        s.unreadable_policies.insert(
            id.clone(),
            crate::Unreadable {
                reason: "spec.ingress: invalid type".into(),
                audit: false,
            },
        );
        let c = compile(&s, &eps, &mut Numbers::default());
        assert_eq!(c.rejected.len(), 1);
        assert!(c.rejected[0].reason.contains("cannot be read: spec.ingress"));
        for ep in [1, 2] {
            let (v, _) = c.judge(ep, Ingress, CLIENT, CLIENT_IP, TCP, 80);
            assert_eq!(v, VerdictKind::Denied, "endpoint {ep}: never wider");
            let (v, _) = c.judge(ep, Egress, CLIENT, CLIENT_IP, TCP, 80);
            assert_eq!(v, VerdictKind::Denied, "endpoint {ep}: egress too");
        }
        s.unreadable_policies.get_mut(&id).unwrap().audit = true;
        let c = compile(&s, &eps, &mut Numbers::default());
        assert_eq!(
            c.judge(1, Ingress, CLIENT, CLIENT_IP, TCP, 80).0,
            VerdictKind::None,
            "audit never denies"
        );
    }

    #[test]
    fn a_weir_policy_naming_peers_with_the_wrong_key_is_rejected() {
        let c = run(
            "kind: WeirNetworkPolicy\napiVersion: weir.dev/v1alpha1\nmetadata: {name: p, namespace: a}\nspec:\n  endpointSelector: {}\n  egress: [{from: [{entities: [world]}]}]\n",
        );
        assert_eq!(c.rejected.len(), 1);
        assert!(
            c.rejected[0].reason.contains("`from` in an egress rule"),
            "{}",
            c.rejected[0].reason
        );
        assert_eq!(
            verdict(&c, 1, Egress, identity::WORLD, Ipv4Addr::new(1, 1, 1, 1), TCP, 443),
            VerdictKind::Denied,
            "it isolates what it selects and allows nothing"
        );
    }

    #[test]
    fn references_and_cidr_ids_stay_across_runs() {
        let (s, eps) = cluster(
            "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}\n",
        );
        let mut n = Numbers::default();
        let one = compile(&s, &eps, &mut n);
        let two = compile(&s, &eps, &mut n);
        assert_eq!(one.slots, two.slots);
        assert_eq!(one.cidrs, two.cidrs);
    }

    #[test]
    fn port_ranges_become_aligned_prefixes() {
        assert_eq!(port_prefixes(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(8080, 8095), vec![(8080, 12)]);
        assert_eq!(port_prefixes(6000, 6010), vec![(6000, 13), (6008, 15), (6010, 16)]);
        let covered: u32 = port_prefixes(1, 65535).iter().map(|(_, b)| 1u32 << (16 - b)).sum();
        assert_eq!(covered, 65535);
    }

    /// Property tests of the policy parser and compiler (issue 20): a
    /// policy is outside input (any user who can write one in their
    /// namespace); whatever it says, the agent compiles tables or rejects
    /// it, never panics, and every verdict names a rule it knows.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Now and then a value of the wrong type: the object is then
        /// unreadable (and fails closed), so rarely, or little else is met.
        fn junk() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                prop_oneof![Just("\"\""), Just("null"), Just("[]"), Just("{}")].prop_map(String::from),
            ]
        }

        /// A port: a number (in range or not), a name, rarely junk.
        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                12 => (-5i64..70_000).prop_map(|n| n.to_string()),
                3 => "[a-z][a-z0-9-]{0,8}".prop_map(|s| s),
                1 => junk(),
            ]
        }

        /// A CIDR (valid or not), rarely junk.
        fn cidr() -> impl Strategy<Value = String> {
            prop_oneof![
                12 => (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, p)| format!("\"{}.{}.{}.{}/{p}\"", a[0], a[1], a[2], a[3])),
                2 => "[a-z0-9.:/]{0,12}".prop_map(|s| format!("\"{s}\"")),
                1 => junk(),
            ]
        }

        /// A label value or selector value.
        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![12 => "[a-z][a-z0-9-]{0,8}".prop_map(|s| s), 1 => junk()]
        }

        fn selector() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    Just("In"),
                    Just("NotIn"),
                    Just("Exists"),
                    Just("DoesNotExist"),
                    Just("Sometimes")
                ],
                prop::collection::vec(scalar(), 0..3),
                prop::bool::ANY,
            )
                .prop_map(|(op, values, labels)| match labels {
                    true => "{matchLabels: {app: web}}".to_string(),
                    false => format!(
                        "{{matchExpressions: [{{key: app, operator: {op}, values: [{}]}}]}}",
                        values.join(", ")
                    ),
                })
        }

        fn port() -> impl Strategy<Value = String> {
            (
                number(),
                number(),
                prop_oneof![Just("TCP"), Just("UDP"), Just("SCTP"), Just("ICMP"), Just("\"\"")],
            )
                .prop_map(|(p, end, proto)| format!("{{port: {p}, endPort: {end}, protocol: {proto}}}"))
        }

        fn peer() -> impl Strategy<Value = String> {
            prop_oneof![
                selector().prop_map(|s| format!("{{podSelector: {s}}}")),
                selector().prop_map(|s| format!("{{namespaceSelector: {s}}}")),
                (cidr(), prop::collection::vec(cidr(), 0..2))
                    .prop_map(|(c, e)| format!("{{ipBlock: {{cidr: {c}, except: [{}]}}}}", e.join(", "))),
            ]
        }

        fn network_policy() -> impl Strategy<Value = String> {
            (
                selector(),
                prop::collection::vec((prop::collection::vec(peer(), 0..3), prop::collection::vec(port(), 0..3)), 0..3),
                prop::collection::vec(prop_oneof![Just("Ingress"), Just("Egress"), Just("Sideways")], 0..3),
            )
                .prop_map(|(pods, rules, types)| {
                    let rules: Vec<String> = rules
                        .into_iter()
                        .map(|(from, ports)| format!("{{from: [{}], ports: [{}]}}", from.join(", "), ports.join(", ")))
                        .collect();
                    format!(
                        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: fuzz, namespace: a}}\nspec: {{podSelector: {pods}, policyTypes: [{}], ingress: [{}], egress: [{}]}}\n",
                        types.join(", "),
                        rules.join(", "),
                        rules.join(", ").replace("from:", "to:")
                    )
                })
        }

        fn cluster_network_policy() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("Admin"), Just("Baseline"), Just("Middle")],
                number(),
                selector(),
                prop::collection::vec(
                    (
                        prop_oneof![Just("Accept"), Just("Deny"), Just("Pass"), Just("Maybe")],
                        selector(),
                        prop::collection::vec(number(), 0..3),
                    ),
                    0..4,
                ),
            )
                .prop_map(|(tier, priority, subject, rules)| {
                    let rules: Vec<String> = rules
                        .into_iter()
                        .map(|(action, ns, ports)| {
                            format!(
                                "{{action: {action}, from: [{{namespaces: {ns}}}], protocols: [{}]}}",
                                ports
                                    .iter()
                                    .map(|p| format!("{{tcp: {{destinationPort: {{number: {p}}}}}}}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                        .collect();
                    format!(
                        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: fuzz}}\nspec: {{tier: {tier}, priority: {priority}, subject: {{namespaces: {subject}}}, ingress: [{}]}}\n",
                        rules.join(", ")
                    )
                })
        }

        fn compiles(doc: &str) {
            let (mut s, eps) = cluster("");
            let _ = parse_manifests(&mut s, doc);
            let c = compile_within(
                &s,
                &eps,
                &mut Numbers::default(),
                Budget {
                    per_endpoint: 4096,
                    total: 8192,
                },
            );
            for v in c.slots.values() {
                for r in [v.reference, v.audit_reference, v.admin_reference, v.baseline_reference] {
                    assert!(r == 0 || c.rules.contains_key(&r), "reference {r} names no rule");
                }
            }
            let _ = c.judge(1, Direction::Ingress, CLIENT, CLIENT_IP, TCP, 80);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn any_network_policy_compiles_or_is_rejected(doc in network_policy()) {
                compiles(&doc);
            }

            #[test]
            fn any_cluster_network_policy_compiles_or_is_rejected(doc in cluster_network_policy()) {
                compiles(&doc);
            }

            #[test]
            fn the_prefixes_a_cidr_holds_are_found_in_its_range(
                prefixes in proptest::collection::btree_set((0u32..16, 26u8..=32), 0..64),
                net in (0u32..16, 26u8..=32),
            ) {
                // Sixteen addresses and short prefixes: most sets hold a
                // prefix at each edge of `net`, and ones around it.
                let at = |(a, len): (u32, u8)| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | a), len).unwrap();
                let prefixes: BTreeSet<Ipv4Net> = prefixes.into_iter().map(at).collect();
                let net = at(net);
                let all: Vec<_> = prefixes.iter().filter(|p| net.contains(*p)).collect();
                let ranged: Vec<_> = prefixes.range(in_net(&net)).filter(|p| net.contains(*p)).collect();
                prop_assert_eq!(all, ranged);
            }

            #[test]
            fn any_text_is_read_or_refused(text in "[ -~\n]{0,300}") {
                let _ = crate::parse_each(&text);
            }
        }
    }
}
