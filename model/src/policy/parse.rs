//! From what users write (Kubernetes NetworkPolicy, weir's CRDs) to one
//! normalised, validated form the compiler reads. Validation is here and
//! only here: a policy either parses completely or is rejected with a
//! reason (and then still isolates what it selects: an error never widens
//! access, see [`Rejected`]).
use std::collections::BTreeMap;
use std::fmt;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cnp::{self, ClusterNetworkPolicy};
use super::crd::{self, Enforcement, WeirClusterNetworkPolicy, WeirNetworkPolicy};

/// Which kind of object a policy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    WeirNetworkPolicy,
    WeirClusterNetworkPolicy,
    /// `policy.networking.k8s.io`'s, tiered (cnp.rs).
    ClusterNetworkPolicy,
}

impl PolicyKind {
    /// The object kind this policy kind is.
    pub fn kind(self) -> crate::Kind {
        match self {
            PolicyKind::NetworkPolicy => crate::Kind::NetworkPolicy,
            PolicyKind::WeirNetworkPolicy => crate::Kind::WeirNetworkPolicy,
            PolicyKind::WeirClusterNetworkPolicy => crate::Kind::WeirClusterNetworkPolicy,
            PolicyKind::ClusterNetworkPolicy => crate::Kind::ClusterNetworkPolicy,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::WeirNetworkPolicy => "WeirNetworkPolicy",
            PolicyKind::WeirClusterNetworkPolicy => "WeirClusterNetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// Cluster-wide: no namespace in its id.
    pub fn cluster_wide(self) -> bool {
        matches!(
            self,
            PolicyKind::WeirClusterNetworkPolicy | PolicyKind::ClusterNetworkPolicy
        )
    }
}

/// A policy by kind, namespace ("" when cluster-wide) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allow (NetworkPolicy, weir's kinds), Accept (ClusterNetworkPolicy).
    Allow,
    Deny,
    /// ClusterNetworkPolicy only: the next tier decides.
    Pass,
}

/// A ClusterNetworkPolicy's tier: Admin rules are judged before
/// NetworkPolicy, Baseline ones after it (only where no NetworkPolicy
/// isolates the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// Where a tiered policy stands: its tier and priority (lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tiered {
    pub tier: Tier,
    pub priority: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// A container port's protocol (Kubernetes' default is TCP).
    pub fn of_container(s: Option<&str>) -> Option<Protocol> {
        Protocol::parse(s.unwrap_or("TCP"))
    }
}

/// Which port(s) of the protocols of an [`L4`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    Any,
    Range(u16, u16),
    /// A container port's name: resolved per destination pod.
    Named(String),
}

/// What traffic a rule's port entry covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    /// Every protocol and port, ICMP included: a rule without ports.
    All,
    Ports {
        protocols: Vec<Protocol>,
        port: PortSpec,
    },
}

/// Namespaces a selector is scoped to.
#[derive(Debug, Clone, PartialEq)]
pub enum Namespaces {
    /// Just this one.
    Named(String),
    Selector(LabelSelector),
    All,
}

/// Reserved peers of weir's CRDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    World,
    Cluster,
    Host,
    RemoteNode,
    All,
}

impl Entity {
    fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "all" => Entity::All,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    Any,
    Pods {
        namespaces: Namespaces,
        /// `None`: every pod of those namespaces.
        pods: Option<LabelSelector>,
    },
    Cidr {
        net: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    Entity(Entity),
}

/// One rule of a policy, in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub direction: Direction,
    pub action: Action,
    /// Its position in its list (`ingress`, `egress`, `ingressDeny`, ...).
    pub index: usize,
    /// Its `name` (ClusterNetworkPolicy's rules have one; "" otherwise).
    pub name: String,
    pub peers: Vec<Peer>,
    pub l4: Vec<L4>,
    /// It stands in for a rule that could not be read, failing closed
    /// ([`Rule::unreadable`]).
    pub unreadable: bool,
}

impl Rule {
    /// What a tiered policy enforces in place of its rule `index` that
    /// could not be read: a Deny of everything (the node's own traffic to
    /// its pods excepted, see the compiler), or for an Accept, nothing at
    /// all; never more open than the rule meant. An unknown action is
    /// taken for a Deny.
    pub fn unreadable(direction: Direction, index: usize, name: &str, action: Action) -> Rule {
        let accept = action == Action::Allow;
        Rule {
            direction,
            action: if accept { Action::Allow } else { Action::Deny },
            index,
            name: name.to_string(),
            peers: if accept { Vec::new() } else { vec![Peer::Any] },
            l4: vec![L4::All],
            unreadable: true,
        }
    }

    /// Hubble's match type: what the rule names.
    pub fn match_type(&self) -> MatchType {
        let l3 = !self.peers.iter().all(|p| matches!(p, Peer::Any));
        let l4 = !self.l4.iter().all(|p| matches!(p, L4::All));
        match (l3, l4) {
            (true, true) => MatchType::L3L4,
            (true, false) => MatchType::L3Only,
            (false, true) => MatchType::L4Only,
            (false, false) => MatchType::All,
        }
    }
}

/// Hubble's `policy_match_type` (Cilium's monitor numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchType {
    None = 0,
    L3Only = 1,
    L3L4 = 2,
    L4Only = 3,
    All = 4,
}

impl MatchType {
    pub fn name(self) -> &'static str {
        match self {
            MatchType::None => "none",
            MatchType::L3Only => "l3-only",
            MatchType::L3L4 => "l3-l4",
            MatchType::L4Only => "l4-only",
            MatchType::All => "all",
        }
    }
}

/// The pods a policy applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub namespaces: Namespaces,
    pub pods: LabelSelector,
}

/// A valid policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: PolicyId,
    pub audit: bool,
    pub subject: Subject,
    /// Isolates the pods it selects, per [`Direction::index`].
    pub isolates: [bool; 2],
    pub rules: Vec<Rule>,
    /// A ClusterNetworkPolicy's tier; `None`: the NetworkPolicy tier.
    pub tier: Option<Tiered>,
}

/// A policy that cannot be used, and what it still does: it isolates what
/// it selects in the directions it names (every pod of its scope when its
/// own selector is the problem, both directions when its types are), so a
/// typo denies rather than opens. An audit-mode policy never denies, so a
/// rejected one does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: PolicyId,
    pub reason: String,
    pub audit: bool,
    pub subject: Subject,
    pub isolates: [bool; 2],
    /// A tiered policy denies, at its place in its tier, every connection
    /// of its subject in the directions of `isolates`, rather than
    /// isolating it (which is NetworkPolicy's business).
    pub tier: Option<Tiered>,
    /// A tiered policy whose only problems are in some of its rules: the
    /// policy with those in their fail-closed form ([`Rule::unreadable`]),
    /// enforced in its place, so one bad rule does not take the others
    /// with it. `None`: the policy itself (tier, subject, priority) is
    /// what is wrong, and the whole-policy deny above stands.
    pub usable: Option<Box<Policy>>,
}

fn selector_errors(sel: &LabelSelector, what: &str) -> Result<(), String> {
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("{what}: operator {} on {:?} needs values", e.operator, e.key));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "{what}: operator {} on {:?} takes no values",
                    e.operator, e.key
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("{what}: unknown operator {other:?} on {:?}", e.key)),
        }
    }
    Ok(())
}

fn parse_cidr(s: &str, what: &str) -> Result<Ipv4Net, String> {
    if s.contains(':') {
        return Err(format!("{what}: {s:?} is IPv6, which weir does not do yet"));
    }
    let net: Ipv4Net = s.parse().map_err(|_| format!("{what}: {s:?} is not a CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{what}: {s:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

fn cidr_peer(cidr: &str, except: &[String]) -> Result<Peer, String> {
    let net = parse_cidr(cidr, "cidr")?;
    let mut ex = Vec::new();
    for e in except {
        let e = parse_cidr(e, "except")?;
        if !net.contains(&e) {
            return Err(format!("except {e} is not inside cidr {net}"));
        }
        ex.push(e);
    }
    Ok(Peer::Cidr { net, except: ex })
}

/// IANA service name, as Kubernetes validates container port names.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_number(n: i32, what: &str) -> Result<u16, String> {
    if !(1..=65535).contains(&n) {
        return Err(format!("{what} {n} is out of range (1-65535)"));
    }
    Ok(n as u16)
}

/// A port entry: number or name, optional end of range.
fn port_spec(port: Option<PortRef<'_>>, end_port: Option<i32>) -> Result<PortSpec, String> {
    match (port, end_port) {
        (None, None) => Ok(PortSpec::Any),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(PortRef::Number(n)), end) => {
            let lo = port_number(n, "port")?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = port_number(e, "endPort")?;
                    if hi < lo {
                        return Err(format!("endPort {hi} is below port {lo}"));
                    }
                    hi
                }
            };
            Ok(PortSpec::Range(lo, hi))
        }
        (Some(PortRef::Name(name)), None) => {
            if !valid_port_name(name) {
                return Err(format!("port name {name:?} is not a valid port name"));
            }
            Ok(PortSpec::Named(name.to_string()))
        }
        (Some(PortRef::Name(name)), Some(_)) => Err(format!("endPort with the named port {name:?}")),
    }
}

enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

fn protocol(p: Option<&str>, default: &[Protocol]) -> Result<Vec<Protocol>, String> {
    match p {
        None => Ok(default.to_vec()),
        Some("ANY") if default.len() > 1 => Ok(default.to_vec()),
        Some(s) => Protocol::parse(s)
            .map(|p| vec![p])
            .ok_or_else(|| format!("protocol {s:?} is not TCP, UDP or SCTP")),
    }
}

fn np_port(p: &NetworkPolicyPort) -> Result<L4, String> {
    let protocols = protocol(p.protocol.as_deref(), &[Protocol::Tcp])?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(*n)),
        Some(IntOrString::String(s)) => Some(PortRef::Name(s)),
    };
    Ok(L4::Ports {
        protocols,
        port: port_spec(port, p.end_port)?,
    })
}

fn np_peer(p: &NetworkPolicyPeer, namespace: &str) -> Result<Peer, String> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => cidr_peer(&b.cidr, b.except.as_deref().unwrap_or_default()),
        (Some(_), _, _) => Err("a peer with ipBlock cannot have selectors too".into()),
        (None, None, None) => Err("a peer needs podSelector, namespaceSelector or ipBlock".into()),
        (None, pods, ns) => {
            if let Some(s) = pods {
                selector_errors(s, "podSelector")?;
            }
            if let Some(s) = ns {
                selector_errors(s, "namespaceSelector")?;
            }
            Ok(Peer::Pods {
                namespaces: match ns {
                    Some(s) => Namespaces::Selector(s.clone()),
                    None => Namespaces::Named(namespace.to_string()),
                },
                pods: pods.clone(),
            })
        }
    }
}

fn l4_list(ports: Vec<L4>) -> Vec<L4> {
    if ports.is_empty() { vec![L4::All] } else { ports }
}

fn peer_list(peers: Vec<Peer>) -> Vec<Peer> {
    if peers.is_empty() { vec![Peer::Any] } else { peers }
}

fn id_of(kind: PolicyKind, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> PolicyId {
    PolicyId {
        kind,
        namespace: if kind.cluster_wide() {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_else(|| "default".into())
        },
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// A Kubernetes NetworkPolicy.
pub fn network_policy(np: &NetworkPolicy) -> Result<Policy, Box<Rejected>> {
    let id = id_of(PolicyKind::NetworkPolicy, &np.metadata);
    let spec = np.spec.clone().unwrap_or_default();
    let pods = spec.pod_selector.clone().unwrap_or_default();
    let all_pods = Subject {
        namespaces: Namespaces::Named(id.namespace.clone()),
        pods: LabelSelector::default(),
    };
    let subject = Subject {
        namespaces: Namespaces::Named(id.namespace.clone()),
        pods: pods.clone(),
    };
    let reject = |reason: String, subject: Subject, isolates: [bool; 2]| {
        Box::new(Rejected {
            id: id.clone(),
            reason,
            audit: false,
            subject,
            isolates,
            tier: None,
            usable: None,
        })
    };
    if let Err(e) = selector_errors(&pods, "podSelector") {
        return Err(reject(e, all_pods, [true, true]));
    }
    // policyTypes omitted: Ingress, and Egress when there are egress rules.
    let mut isolates = [true, spec.egress.is_some()];
    if let Some(types) = &spec.policy_types {
        isolates = [false, false];
        for t in types {
            match t.as_str() {
                "Ingress" => isolates[0] = true,
                "Egress" => isolates[1] = true,
                other => {
                    return Err(reject(
                        format!("policyTypes: {other:?} is not Ingress or Egress"),
                        subject,
                        [true, true],
                    ));
                }
            }
        }
    }
    let mut rules = Vec::new();
    let parsed: Result<(), String> = (|| {
        if isolates[0] {
            for (index, r) in spec.ingress.iter().flatten().enumerate() {
                let peers = r
                    .from
                    .iter()
                    .flatten()
                    .map(|p| np_peer(p, &id.namespace))
                    .collect::<Result<_, _>>();
                let l4 = r.ports.iter().flatten().map(np_port).collect::<Result<_, _>>();
                rules.push(Rule {
                    direction: Direction::Ingress,
                    action: Action::Allow,
                    index,
                    name: String::new(),
                    peers: peer_list(peers.map_err(|e| format!("ingress[{index}]: {e}"))?),
                    l4: l4_list(l4.map_err(|e| format!("ingress[{index}]: {e}"))?),
                    unreadable: false,
                });
            }
        }
        if isolates[1] {
            for (index, r) in spec.egress.iter().flatten().enumerate() {
                let peers =
                    r.to.iter()
                        .flatten()
                        .map(|p| np_peer(p, &id.namespace))
                        .collect::<Result<_, _>>();
                let l4 = r.ports.iter().flatten().map(np_port).collect::<Result<_, _>>();
                rules.push(Rule {
                    direction: Direction::Egress,
                    action: Action::Allow,
                    index,
                    name: String::new(),
                    peers: peer_list(peers.map_err(|e| format!("egress[{index}]: {e}"))?),
                    l4: l4_list(l4.map_err(|e| format!("egress[{index}]: {e}"))?),
                    unreadable: false,
                });
            }
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => Ok(Policy {
            id,
            audit: false,
            subject,
            isolates,
            rules,
            tier: None,
        }),
        Err(e) => Err(reject(e, subject, isolates)),
    }
}

fn crd_peer(p: &crd::Peer, own: Option<&str>) -> Result<Peer, String> {
    let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
    let kinds = usize::from(selectors) + usize::from(p.cidr.is_some()) + usize::from(!p.entities.is_empty());
    if kinds != 1 {
        return Err("a peer is exactly one of: podSelector/namespaceSelector, cidr, entities".into());
    }
    if !p.except.is_empty() && p.cidr.is_none() {
        return Err("except without cidr".into());
    }
    if let Some(c) = &p.cidr {
        return cidr_peer(c, &p.except);
    }
    if !p.entities.is_empty() {
        if p.entities.len() > 1 {
            return Err("one entity per peer (list several peers)".into());
        }
        let e = &p.entities[0];
        return Entity::parse(e)
            .map(Peer::Entity)
            .ok_or_else(|| format!("entity {e:?} is not world, cluster, host, remote-node or all"));
    }
    if let Some(s) = &p.pod_selector {
        selector_errors(s, "podSelector")?;
    }
    if let Some(s) = &p.namespace_selector {
        selector_errors(s, "namespaceSelector")?;
    }
    Ok(Peer::Pods {
        namespaces: match (&p.namespace_selector, own) {
            (Some(s), _) => Namespaces::Selector(s.clone()),
            (None, Some(ns)) => Namespaces::Named(ns.to_string()),
            (None, None) => Namespaces::All,
        },
        pods: p.pod_selector.clone(),
    })
}

fn crd_port(p: &crd::PortRule) -> Result<L4, String> {
    let protocols = protocol(p.protocol.as_deref(), &Protocol::ALL)?;
    let port = match &p.port {
        None => None,
        Some(crd::PortValue::Number(n)) => Some(PortRef::Number(*n)),
        Some(crd::PortValue::Name(s)) => Some(PortRef::Name(s)),
    };
    Ok(L4::Ports {
        protocols,
        port: port_spec(port, p.end_port)?,
    })
}

fn crd_rules(rules: &crd::PolicyRules, own: Option<&str>) -> Result<Vec<Rule>, String> {
    let lists: [(&str, Direction, Action, &[crd::Rule]); 4] = [
        (
            "ingress",
            Direction::Ingress,
            Action::Allow,
            rules.ingress.as_deref().unwrap_or_default(),
        ),
        ("ingressDeny", Direction::Ingress, Action::Deny, &rules.ingress_deny),
        (
            "egress",
            Direction::Egress,
            Action::Allow,
            rules.egress.as_deref().unwrap_or_default(),
        ),
        ("egressDeny", Direction::Egress, Action::Deny, &rules.egress_deny),
    ];
    let mut out = Vec::new();
    for (list, direction, action, items) in lists {
        for (index, r) in items.iter().enumerate() {
            let at = |e: String| format!("{list}[{index}]: {e}");
            // Peers are `from` in ingress rules and `to` in egress ones;
            // the other key is a mistake, never ignored.
            let (peers, wrong, key) = match direction {
                Direction::Ingress => (&r.from, &r.to, "to"),
                Direction::Egress => (&r.to, &r.from, "from"),
            };
            if !wrong.is_empty() {
                return Err(at(format!("`{key}` in an {} rule", direction.name())));
            }
            let peers = peers
                .iter()
                .map(|p| crd_peer(p, own))
                .collect::<Result<_, _>>()
                .map_err(at)?;
            let l4 = r.ports.iter().map(crd_port).collect::<Result<_, _>>().map_err(at)?;
            out.push(Rule {
                direction,
                action,
                index,
                name: String::new(),
                peers: peer_list(peers),
                l4: l4_list(l4),
                unreadable: false,
            });
        }
    }
    Ok(out)
}

fn crd_policy(
    id: PolicyId,
    rules: &crd::PolicyRules,
    namespaces: Namespaces,
    own: Option<&str>,
) -> Result<Policy, Box<Rejected>> {
    let audit = rules.enforcement == Enforcement::Audit;
    let isolates = [rules.ingress.is_some(), rules.egress.is_some()];
    let subject = Subject {
        namespaces: namespaces.clone(),
        pods: rules.endpoint_selector.clone(),
    };
    let reject = |reason: String, subject: Subject, isolates: [bool; 2]| {
        Box::new(Rejected {
            id: id.clone(),
            reason,
            audit,
            subject,
            isolates,
            tier: None,
            usable: None,
        })
    };
    if let Err(e) = selector_errors(&rules.endpoint_selector, "endpointSelector") {
        let all = Subject {
            namespaces,
            pods: LabelSelector::default(),
        };
        return Err(reject(e, all, [true, true]));
    }
    match crd_rules(rules, own) {
        Ok(r) => Ok(Policy {
            id,
            audit,
            subject,
            isolates,
            rules: r,
            tier: None,
        }),
        // Rules that cannot be read deny in every direction the policy
        // has rules for (deny rules included: they would have denied).
        Err(e) => {
            let isolates = [
                isolates[0] || !rules.ingress_deny.is_empty(),
                isolates[1] || !rules.egress_deny.is_empty(),
            ];
            Err(reject(e, subject, isolates))
        }
    }
}

pub fn weir_network_policy(p: &WeirNetworkPolicy) -> Result<Policy, Box<Rejected>> {
    let id = id_of(PolicyKind::WeirNetworkPolicy, &p.metadata);
    let ns = id.namespace.clone();
    crd_policy(id, &p.spec.rules, Namespaces::Named(ns.clone()), Some(&ns))
}

pub fn weir_cluster_network_policy(p: &WeirClusterNetworkPolicy) -> Result<Policy, Box<Rejected>> {
    let id = id_of(PolicyKind::WeirClusterNetworkPolicy, &p.metadata);
    let namespaces = match &p.spec.namespace_selector {
        Some(s) => {
            if let Err(e) = selector_errors(s, "namespaceSelector") {
                let all = Subject {
                    namespaces: Namespaces::All,
                    pods: LabelSelector::default(),
                };
                return Err(Box::new(Rejected {
                    id,
                    reason: e,
                    audit: p.spec.rules.enforcement == Enforcement::Audit,
                    subject: all,
                    isolates: [true, true],
                    tier: None,
                    usable: None,
                }));
            }
            Namespaces::Selector(s.clone())
        }
        None => Namespaces::All,
    };
    crd_policy(id, &p.spec.rules, namespaces, None)
}

/// At most this many rules per direction, and peers or protocols per
/// rule, as the CRD allows (standalone manifests meet no API server).
const CNP_MAX_ITEMS: usize = 25;

fn cnp_pods(p: &cnp::NamespacedPod, what: &str) -> Result<Peer, String> {
    selector_errors(&p.namespace_selector, &format!("{what}.namespaceSelector"))?;
    selector_errors(&p.pod_selector, &format!("{what}.podSelector"))?;
    Ok(Peer::Pods {
        namespaces: Namespaces::Selector(p.namespace_selector.clone()),
        pods: Some(p.pod_selector.clone()),
    })
}

/// One peer of a ClusterNetworkPolicy rule, as weir's peers (a list:
/// `networks` is several CIDRs).
fn cnp_peer(p: &cnp::Peer, direction: Direction) -> Result<Vec<Peer>, String> {
    let set = usize::from(p.namespaces.is_some()) + usize::from(p.pods.is_some()) + usize::from(!p.networks.is_empty());
    if set != 1 {
        return Err("a peer is exactly one of: namespaces, pods, networks".into());
    }
    if let Some(s) = &p.namespaces {
        selector_errors(s, "namespaces")?;
        return Ok(vec![Peer::Pods {
            namespaces: Namespaces::Selector(s.clone()),
            pods: None,
        }]);
    }
    if let Some(pods) = &p.pods {
        return Ok(vec![cnp_pods(pods, "pods")?]);
    }
    if direction == Direction::Ingress {
        return Err("networks in an ingress rule (egress only)".into());
    }
    if p.networks.len() > CNP_MAX_ITEMS {
        return Err(format!("more than {CNP_MAX_ITEMS} networks"));
    }
    let mut out = Vec::new();
    for n in &p.networks {
        if n.contains(':') {
            // A valid IPv6 network names no address this IPv4 datapath
            // sees: it matches nothing here, and the rest of the policy holds.
            let net: ipnet::Ipv6Net = n.parse().map_err(|_| format!("networks: {n:?} is not a CIDR"))?;
            if net.trunc() != net {
                return Err(format!("networks: {n:?} has host bits set"));
            }
            continue;
        }
        out.push(cidr_peer(n, &[]).map_err(|e| format!("networks: {e}"))?);
    }
    Ok(out)
}

fn cnp_protocol(m: &cnp::ProtocolMatch) -> Result<L4, String> {
    let set: Vec<(Protocol, &cnp::PortMatch)> = [
        (Protocol::Tcp, &m.tcp),
        (Protocol::Udp, &m.udp),
        (Protocol::Sctp, &m.sctp),
    ]
    .into_iter()
    .filter_map(|(p, m)| m.as_ref().map(|m| (p, m)))
    .collect();
    let [(protocol, ports)] = set.as_slice() else {
        return Err("a protocol entry is exactly one of: tcp, udp, sctp".into());
    };
    let port = match &ports.destination_port {
        None => PortSpec::Any,
        Some(cnp::Port {
            number: Some(n),
            range: None,
        }) => {
            let n = port_number(*n, "destinationPort.number")?;
            PortSpec::Range(n, n)
        }
        Some(cnp::Port {
            number: None,
            range: Some(r),
        }) => {
            let (lo, hi) = (port_number(r.start, "range.start")?, port_number(r.end, "range.end")?);
            if lo >= hi {
                return Err(format!("range.start {lo} is not below range.end {hi}"));
            }
            PortSpec::Range(lo, hi)
        }
        Some(_) => return Err("destinationPort is exactly one of: number, range".into()),
    };
    Ok(L4::Ports {
        protocols: vec![*protocol],
        port,
    })
}

/// A rule of a ClusterNetworkPolicy (peers are `from` or `to`).
fn cnp_rule(
    direction: Direction,
    index: usize,
    name: &str,
    action: &str,
    peers: &[cnp::Peer],
    protocols: &[cnp::ProtocolMatch],
) -> Result<Rule, String> {
    let action = match action {
        "Accept" => Action::Allow,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => return Err(format!("action {other:?} is not Accept, Deny or Pass")),
    };
    if peers.is_empty() || peers.len() > CNP_MAX_ITEMS {
        return Err(format!("1 to {CNP_MAX_ITEMS} peers"));
    }
    if protocols.len() > CNP_MAX_ITEMS {
        return Err(format!("more than {CNP_MAX_ITEMS} protocols"));
    }
    let mut out = Vec::new();
    for p in peers {
        out.extend(cnp_peer(p, direction)?);
    }
    let l4 = protocols.iter().map(cnp_protocol).collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        direction,
        action,
        index,
        name: name.to_string(),
        // No peer left (IPv6 networks only): the rule matches nothing.
        peers: out,
        l4: l4_list(l4),
        unreadable: false,
    })
}

/// A `policy.networking.k8s.io` ClusterNetworkPolicy. Rejected for a
/// rule that cannot be read, it keeps its other rules and that one fails
/// closed ([`Rule::unreadable`]); rejected for what the policy itself says
/// (tier, subject, priority, too many rules), it denies every connection of
/// its subject (all pods when the subject is what is wrong) in the
/// directions it has rules for, at its place in its tier (Admin when the
/// tier is what is wrong). The node reaching its own pods is excepted from
/// both denies (probes). Never more open than the policy meant.
pub fn cluster_network_policy(p: &ClusterNetworkPolicy) -> Result<Policy, Box<Rejected>> {
    let id = id_of(PolicyKind::ClusterNetworkPolicy, &p.metadata);
    let spec = &p.spec;
    let priority = spec.priority.clamp(0, 1000) as u32;
    let directions = [!spec.ingress.is_empty(), !spec.egress.is_empty()];
    let everyone = Subject {
        namespaces: Namespaces::All,
        pods: LabelSelector::default(),
    };
    let reject = |reason: String, subject: Subject, tier: Tier| {
        Box::new(Rejected {
            id: id.clone(),
            reason,
            audit: false,
            subject,
            isolates: directions,
            tier: Some(Tiered { tier, priority }),
            usable: None,
        })
    };
    let tier = match spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => {
            return Err(reject(
                format!("tier {other:?} is not Admin or Baseline"),
                everyone,
                Tier::Admin,
            ));
        }
    };
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(ns), None) => selector_errors(ns, "subject.namespaces").map(|()| Subject {
            namespaces: Namespaces::Selector(ns.clone()),
            pods: LabelSelector::default(),
        }),
        (None, Some(pods)) => cnp_pods(pods, "subject.pods").map(|_| Subject {
            namespaces: Namespaces::Selector(pods.namespace_selector.clone()),
            pods: pods.pod_selector.clone(),
        }),
        _ => Err("subject is exactly one of: namespaces, pods".into()),
    };
    let subject = match subject {
        Ok(s) => s,
        Err(e) => return Err(reject(e, everyone, tier)),
    };
    if !(0..=1000).contains(&spec.priority) {
        return Err(reject(
            format!("priority {} is out of range (0-1000)", spec.priority),
            subject,
            tier,
        ));
    }
    if spec.ingress.len() > CNP_MAX_ITEMS || spec.egress.len() > CNP_MAX_ITEMS {
        return Err(reject(
            format!("more than {CNP_MAX_ITEMS} rules in a direction"),
            subject,
            tier,
        ));
    }
    // Rule by rule: one that cannot be read fails closed in its place.
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let ingress = spec
        .ingress
        .iter()
        .map(|r| (Direction::Ingress, &r.name, &r.action, &r.from, &r.protocols));
    let egress = spec
        .egress
        .iter()
        .map(|r| (Direction::Egress, &r.name, &r.action, &r.to, &r.protocols));
    let mut index = [0usize; 2];
    for (direction, name, action, peers, protocols) in ingress.chain(egress) {
        let i = index[direction.index()];
        index[direction.index()] += 1;
        match cnp_rule(direction, i, name, action, peers, protocols) {
            Ok(rule) => rules.push(rule),
            Err(e) => {
                errors.push(format!("{}[{i}]: {e}", direction.name()));
                let meant = match action.as_str() {
                    "Accept" => Action::Allow,
                    _ => Action::Deny,
                };
                rules.push(Rule::unreadable(direction, i, name, meant));
            }
        }
    }
    let policy = Policy {
        id,
        audit: false,
        subject,
        isolates: [false, false],
        rules,
        tier: Some(Tiered { tier, priority }),
    };
    if errors.is_empty() {
        return Ok(policy);
    }
    Err(Box::new(Rejected {
        id: policy.id.clone(),
        reason: errors.join("; "),
        audit: false,
        subject: policy.subject.clone(),
        isolates: directions,
        tier: policy.tier,
        usable: Some(Box::new(policy)),
    }))
}

/// Why a policy that cannot be read into its type is rejected (`reason`:
/// the reader's error).
pub fn unreadable_reason(reason: &str) -> String {
    format!("cannot be read: {reason}")
}

/// Every policy of the cluster state, parsed: the ones to enforce (the
/// valid ones, and the usable part of rejected ones: [`Rejected::usable`])
/// and the rejected ones, each in a stable order (kind, namespace, name).
pub fn all(state: &crate::ClusterState) -> (Vec<Policy>, Vec<Rejected>) {
    let mut ok = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let results = state
        .network_policies
        .values()
        .map(|p| network_policy(p))
        .chain(state.weir_network_policies.values().map(|p| weir_network_policy(p)))
        .chain(
            state
                .weir_cluster_network_policies
                .values()
                .map(|p| weir_cluster_network_policy(p)),
        )
        .chain(
            state
                .cluster_network_policies
                .values()
                .map(|p| cluster_network_policy(p)),
        );
    // What the source could not read denies everything of its scope in
    // both directions: its selector and rules are unknown.
    let unreadable = state.unreadable_policies.iter().map(|(id, u)| {
        let namespaces = match id.kind.cluster_wide() {
            true => Namespaces::All,
            false => Namespaces::Named(id.namespace.clone()),
        };
        Err(Box::new(Rejected {
            id: id.clone(),
            reason: unreadable_reason(&u.reason),
            audit: u.audit,
            subject: Subject {
                namespaces,
                pods: LabelSelector::default(),
            },
            isolates: [true, true],
            tier: None,
            usable: None,
        }))
    });
    for r in results.chain(unreadable) {
        match r {
            Ok(p) => {
                ok.insert(p.id.clone(), p);
            }
            Err(r) => {
                if let Some(usable) = &r.usable {
                    ok.insert(r.id.clone(), (**usable).clone());
                }
                bad.insert(r.id.clone(), *r);
            }
        }
    }
    (ok.into_values().collect(), bad.into_values().collect())
}
