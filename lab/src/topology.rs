//! The lab topology file: parsing and full validation, no side effects.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Longest lab name: it prefixes every netns and the bpffs directory.
pub const MAX_LAB_NAME: usize = 24;
/// Longest node name.
pub const MAX_NODE_NAME: usize = 40;

/// A lab: a cluster made of network namespaces on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    /// Prefixes every netns (`<name>-<node>`) and the bpffs dir.
    pub name: String,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    pub nodes: Vec<NodeSpec>,
    /// The lab segment joining the nodes' uplinks (and the external host).
    #[serde(rename = "nodeCIDR", default = "default_node_cidr")]
    pub node_cidr: Ipv4Net,
    /// How pods reach pods on other nodes.
    #[serde(default)]
    pub routing: Routing,
    /// NodePorts translated by XDP on the uplink (`true`), by TC alone
    /// (`false`), or as the agent decides (`auto`, the default: TC, since
    /// the lab's uplinks are veth).
    #[serde(rename = "nodePortXDP", default)]
    pub node_port_xdp: NodePortXdp,
    /// ClusterIPs of Services come from here.
    #[serde(rename = "serviceCIDR", default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    /// LoadBalancer Services get `status.loadBalancer.ingress` IPs from here;
    /// without it they stay pending.
    #[serde(rename = "loadBalancerCIDR", default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_cidr: Option<Ipv4Net>,
    /// Who holds the cluster's objects: the lab itself (`standalone`, a
    /// directory of manifests the agents read) or a real Kubernetes
    /// control plane the lab starts on the first node (`kubernetes`).
    #[serde(default)]
    pub control_plane: ControlPlane,
    /// Who runs the nodes' pods with `controlPlane: kubernetes`: the lab
    /// itself (`lab`, the default: it wires each pod with `weir-cni` and
    /// reports it running, in a fraction of a second) or, per node, the
    /// real kubelet with containerd (`real`: pods from images, pulled from
    /// the lab's registry; `weir-cni` called by containerd).
    #[serde(default)]
    pub kubelet: Kubelet,
    /// Who installs weir on the nodes: the lab (`lab`, the default: an
    /// agent per node, the operator and the relay as the lab's processes)
    /// or nobody (`none`, with `kubelet: real`): the nodes stay NotReady
    /// until weir is installed into the cluster as users do
    /// (`weir lab kubectl -- apply -f install/weir.yaml`, or helm).
    #[serde(default)]
    pub install: Install,
    /// Extra flags for every node's agent (as the chart's
    /// `agent.extraArgs`), e.g. `--hubble-metrics=...`.
    #[serde(rename = "agentArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub agent_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Install {
    #[default]
    Lab,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kubelet {
    #[default]
    Lab,
    Real,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlPlane {
    #[default]
    Standalone,
    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler in
    /// the first node's netns; the lab plays the kubelet.
    Kubernetes,
}

fn default_service_cidr() -> Ipv4Net {
    "10.96.0.0/16".parse().expect("valid literal")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Each node routes other nodes' pod CIDRs via their node IPs.
    #[default]
    Native,
    /// The datapath encapsulates in VXLAN towards the owning node.
    Vxlan,
}

impl Routing {
    pub fn as_flag(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Vxlan => "vxlan",
        }
    }
}

/// `nodePortXDP`: `auto`, or a bool forcing XDP on or off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "XdpSetting", into = "XdpSetting")]
pub enum NodePortXdp {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum XdpSetting {
    Forced(bool),
    Auto(AutoWord),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AutoWord {
    Auto,
}

impl From<XdpSetting> for NodePortXdp {
    fn from(s: XdpSetting) -> Self {
        match s {
            XdpSetting::Forced(true) => Self::On,
            XdpSetting::Forced(false) => Self::Off,
            XdpSetting::Auto(AutoWord::Auto) => Self::Auto,
        }
    }
}

impl From<NodePortXdp> for XdpSetting {
    fn from(x: NodePortXdp) -> Self {
        match x {
            NodePortXdp::On => Self::Forced(true),
            NodePortXdp::Off => Self::Forced(false),
            NodePortXdp::Auto => Self::Auto(AutoWord::Auto),
        }
    }
}

impl NodePortXdp {
    /// The agent's `--nodeport-xdp` value.
    pub fn as_flag(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }

    /// Whether the nodes' uplinks run XDP: only when forced, since `auto`
    /// keeps XDP off veth.
    pub fn nodes_run_xdp(self) -> bool {
        self == Self::On
    }
}

fn default_node_cidr() -> Ipv4Net {
    "172.30.0.0/24".parse().expect("valid literal")
}

/// Nodes get addresses from this host number on, the external host the last one.
const FIRST_NODE_HOST: u32 = 11;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
}

/// Why a topology file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Not YAML of the expected shape.
    #[error("topology does not parse")]
    Parse(#[from] serde_yaml_ng::Error),
    /// Parsed, but inconsistent: every problem found, one per line.
    #[error("invalid topology:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Parse and validate a topology; reports every problem at once.
pub fn parse(text: &str) -> Result<Topology, TopologyError> {
    let topo: Topology = serde_yaml_ng::from_str(text)?;
    let problems = validate(&topo);
    if problems.is_empty() {
        Ok(topo)
    } else {
        Err(TopologyError::Invalid(problems))
    }
}

/// A DNS-label-like name: lowercase letters, digits and '-', starting with a
/// letter or digit and not ending with '-'.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Every problem with a parsed topology (empty when it is usable).
pub fn validate(topo: &Topology) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_dns_label(&topo.name, MAX_LAB_NAME) {
        problems.push(format!(
            "name {:?}: must be 1-{MAX_LAB_NAME} chars of [a-z0-9-], not starting or ending with '-'",
            topo.name
        ));
    }
    if topo.cluster_cidr != topo.cluster_cidr.trunc() {
        problems.push(format!(
            "clusterCIDR {}: host bits set (did you mean {}?)",
            topo.cluster_cidr,
            topo.cluster_cidr.trunc()
        ));
    }
    if topo.nodes.is_empty() {
        problems.push("nodes: at least one node is required".into());
    }
    if topo.kubelet == Kubelet::Real && topo.control_plane != ControlPlane::Kubernetes {
        problems.push("kubelet: real needs controlPlane: kubernetes (a kubelet needs an API server)".into());
    }
    if topo.install == Install::None && topo.kubelet != Kubelet::Real {
        problems.push("install: none needs kubelet: real (weir's DaemonSet runs on real kubelets)".into());
    }
    if topo.node_cidr != topo.node_cidr.trunc() {
        problems.push(format!("nodeCIDR {}: host bits set", topo.node_cidr));
    }
    let hosts = (1u64 << (32 - topo.node_cidr.prefix_len())).saturating_sub(2);
    if hosts < u64::from(FIRST_NODE_HOST) + topo.nodes.len() as u64 + 1 {
        problems.push(format!(
            "nodeCIDR {}: too small for {} nodes and the external host",
            topo.node_cidr,
            topo.nodes.len()
        ));
    }
    if topo.node_cidr.contains(&topo.cluster_cidr) || topo.cluster_cidr.contains(&topo.node_cidr) {
        problems.push(format!(
            "nodeCIDR {} overlaps clusterCIDR {}",
            topo.node_cidr, topo.cluster_cidr
        ));
    }
    problems.extend(validate_service_ranges(topo));
    let mut names = BTreeSet::new();
    for (i, node) in topo.nodes.iter().enumerate() {
        let at = format!("nodes[{i}] ({})", node.name);
        if !is_dns_label(&node.name, MAX_NODE_NAME) {
            problems.push(format!(
                "{at}: name must be 1-{MAX_NODE_NAME} chars of [a-z0-9-], not starting or ending with '-'"
            ));
        }
        if !names.insert(node.name.as_str()) {
            problems.push(format!("{at}: duplicate node name"));
        }
        if node.pod_cidr != node.pod_cidr.trunc() {
            problems.push(format!("{at}: podCIDR {} has host bits set", node.pod_cidr));
        }
        if node.pod_cidr.prefix_len() > 30 {
            problems.push(format!("{at}: podCIDR {} is too small (at most /30)", node.pod_cidr));
        }
        if !topo.cluster_cidr.contains(&node.pod_cidr) {
            problems.push(format!(
                "{at}: podCIDR {} is not inside clusterCIDR {}",
                node.pod_cidr, topo.cluster_cidr
            ));
        }
        for (j, other) in topo.nodes.iter().enumerate().take(i) {
            if node.pod_cidr.contains(&other.pod_cidr) || other.pod_cidr.contains(&node.pod_cidr) {
                problems.push(format!(
                    "{at}: podCIDR {} overlaps nodes[{j}] ({}) {}",
                    node.pod_cidr, other.name, other.pod_cidr
                ));
            }
        }
    }
    problems
}

/// serviceCIDR and loadBalancerCIDR: well-formed, big enough, apart from the other ranges.
fn validate_service_ranges(topo: &Topology) -> Vec<String> {
    let overlap = |a: &Ipv4Net, b: &Ipv4Net| a.contains(b) || b.contains(a);
    let mut problems = Vec::new();
    let svc = topo.service_cidr;
    if svc != svc.trunc() {
        problems.push(format!(
            "serviceCIDR {svc}: host bits set (did you mean {}?)",
            svc.trunc()
        ));
    }
    if svc.prefix_len() > 29 {
        problems.push(format!("serviceCIDR {svc}: too small (at most /29)"));
    }
    for (what, other) in [("clusterCIDR", topo.cluster_cidr), ("nodeCIDR", topo.node_cidr)] {
        if overlap(&svc, &other) {
            problems.push(format!("serviceCIDR {svc} overlaps {what} {other}"));
        }
    }
    if let Some(lb) = topo.load_balancer_cidr {
        if lb != lb.trunc() {
            problems.push(format!(
                "loadBalancerCIDR {lb}: host bits set (did you mean {}?)",
                lb.trunc()
            ));
        }
        for (what, other) in [("clusterCIDR", topo.cluster_cidr), ("serviceCIDR", svc)] {
            if overlap(&lb, &other) {
                problems.push(format!("loadBalancerCIDR {lb} overlaps {what} {other}"));
            }
        }
        let taken = (0..topo.nodes.len())
            .map(|i| topo.node_ip(i))
            .chain([topo.external_ip()]);
        for ip in taken.filter(|ip| lb.contains(ip)) {
            problems.push(format!(
                "loadBalancerCIDR {lb} contains {ip}, a node or the external host"
            ));
        }
    }
    problems
}

impl Topology {
    /// Netns name of a node.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}-{}", self.name, node)
    }

    /// Netns holding the bridge that plays the lab's switch.
    pub fn fabric_netns(&self) -> String {
        format!("{}-fabric", self.name)
    }

    /// Netns of the host outside the cluster (for NodePort and egress tests).
    pub fn external_netns(&self) -> String {
        format!("{}-external", self.name)
    }

    /// The i-th node's address on the lab segment.
    pub fn node_ip(&self, index: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.node_cidr.network()) + FIRST_NODE_HOST + index as u32)
    }

    /// The external host's address: the segment's last usable one.
    pub fn external_ip(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.node_cidr.broadcast()) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "name: demo\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: node1\n    podCIDR: 10.244.1.0/24\n";

    fn invalid(text: &str) -> Vec<String> {
        match parse(text) {
            Err(TopologyError::Invalid(p)) => p,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn node_port_xdp_is_auto_or_a_bool() {
        let base = "name: demo\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - {name: n1, podCIDR: 10.244.1.0/24}\n";
        for (line, want) in [
            ("", NodePortXdp::Auto),
            ("nodePortXDP: auto\n", NodePortXdp::Auto),
            ("nodePortXDP: true\n", NodePortXdp::On),
            ("nodePortXDP: false\n", NodePortXdp::Off),
        ] {
            let t = parse(&format!("{line}{base}")).unwrap();
            assert_eq!(t.node_port_xdp, want, "{line}");
        }
        assert!(parse(&format!("nodePortXDP: maybe\n{base}")).is_err());
    }

    #[test]
    fn a_real_kubelet_needs_the_real_control_plane() {
        assert_eq!(parse(ONE).unwrap().kubelet, Kubelet::Lab);
        let real = parse(&format!("controlPlane: kubernetes\nkubelet: real\n{ONE}")).unwrap();
        assert_eq!(real.kubelet, Kubelet::Real);
        let p = invalid(&format!("kubelet: real\n{ONE}"));
        assert!(p[0].contains("needs controlPlane: kubernetes"), "{p:?}");
        let p = invalid(&format!("controlPlane: kubernetes\ninstall: none\n{ONE}"));
        assert!(p[0].contains("install: none needs kubelet: real"), "{p:?}");
    }

    #[test]
    fn parses_one_node() {
        let t = parse(ONE).unwrap();
        assert_eq!(t.name, "demo");
        assert_eq!(t.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(t.nodes[0].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(t.node_netns("node1"), "demo-node1");
        assert_eq!(t.routing, Routing::Native);
        assert_eq!(t.node_port_xdp, NodePortXdp::Auto);
        assert_eq!(t.node_ip(0).to_string(), "172.30.0.11");
        assert_eq!(t.external_ip().to_string(), "172.30.0.254");
    }

    #[test]
    fn shipped_examples_parse() {
        for f in [
            "one-node.yaml",
            "two-nodes.yaml",
            "two-nodes-vxlan.yaml",
            "two-nodes-kubernetes.yaml",
        ] {
            let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
            parse(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn reports_every_problem() {
        let p = invalid(
            "name: Demo_\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: n1\n    podCIDR: 10.245.1.0/24\n  - name: n1\n    podCIDR: 10.244.1.0/31\n  - name: n3\n    podCIDR: 10.244.1.0/25\n",
        );
        let all = p.join("\n");
        assert!(all.contains("name \"Demo_\""), "{all}");
        assert!(all.contains("not inside clusterCIDR"), "{all}");
        assert!(all.contains("duplicate node name"), "{all}");
        assert!(all.contains("too small"), "{all}");
        assert!(all.contains("overlaps"), "{all}");
    }

    #[test]
    fn node_segment_must_not_overlap_pods() {
        let p = invalid(
            "name: x\nclusterCIDR: 10.0.0.0/8\nnodeCIDR: 10.1.0.0/24\nnodes: [{name: a, podCIDR: 10.2.0.0/24}]\n",
        );
        assert!(p.join(" ").contains("overlaps clusterCIDR"), "{p:?}");
        let t = parse("name: x\nclusterCIDR: 10.0.0.0/8\nserviceCIDR: 192.168.96.0/20\nrouting: vxlan\nnodes: [{name: a, podCIDR: 10.2.0.0/24}]\n").unwrap();
        assert_eq!(t.routing, Routing::Vxlan);
    }

    #[test]
    fn service_ranges_default_and_must_stand_apart() {
        let t = parse(ONE).unwrap();
        assert_eq!(t.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(t.load_balancer_cidr, None);
        let p = invalid(
            "name: x\nclusterCIDR: 10.0.0.0/8\nserviceCIDR: 10.96.0.0/16\nloadBalancerCIDR: 172.30.0.0/28\nnodes: [{name: a, podCIDR: 10.2.0.0/24}]\n",
        );
        let all = p.join("\n");
        assert!(all.contains("serviceCIDR 10.96.0.0/16 overlaps clusterCIDR"), "{all}");
        assert!(all.contains("contains 172.30.0.11"), "{all}");
        let t = parse("name: x\nclusterCIDR: 10.244.0.0/16\nserviceCIDR: 10.100.0.0/24\nloadBalancerCIDR: 172.31.0.0/28\nnodes: [{name: a, podCIDR: 10.244.1.0/24}]\n").unwrap();
        assert_eq!(
            t.load_balancer_cidr.map(|n| n.to_string()).as_deref(),
            Some("172.31.0.0/28")
        );
    }

    #[test]
    fn rejects_host_bits_and_empty_nodes() {
        let p = invalid("name: x\nclusterCIDR: 10.244.0.1/16\nnodes: []\n");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn rejects_unknown_fields_and_bad_cidrs() {
        assert!(matches!(
            parse("name: x\nclusterCIDR: 10.0.0.0/8\nnodes: []\nextra: 1\n"),
            Err(TopologyError::Parse(_))
        ));
        assert!(matches!(
            parse("name: x\nclusterCIDR: nope\nnodes: []\n"),
            Err(TopologyError::Parse(_))
        ));
    }
}
