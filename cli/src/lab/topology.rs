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
}

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
    #[error("topology does not parse: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// Parsed, but inconsistent: every problem found, one per line.
    #[error("invalid topology:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Parse and validate a topology; reports every problem at once.
pub fn parse(text: &str) -> Result<Topology, TopologyError> {
    let topo: Topology = serde_yaml::from_str(text)?;
    let problems = validate(&topo);
    if problems.is_empty() { Ok(topo) } else { Err(TopologyError::Invalid(problems)) }
}

/// A DNS-label-like name: lowercase letters, digits and '-', starting with a
/// letter or digit and not ending with '-'.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
        problems.push(format!("clusterCIDR {}: host bits set (did you mean {}?)", topo.cluster_cidr, topo.cluster_cidr.trunc()));
    }
    if topo.nodes.is_empty() {
        problems.push("nodes: at least one node is required".into());
    }
    let mut names = BTreeSet::new();
    for (i, node) in topo.nodes.iter().enumerate() {
        let at = format!("nodes[{i}] ({})", node.name);
        if !is_dns_label(&node.name, MAX_NODE_NAME) {
            problems.push(format!("{at}: name must be 1-{MAX_NODE_NAME} chars of [a-z0-9-], not starting or ending with '-'"));
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
            problems.push(format!("{at}: podCIDR {} is not inside clusterCIDR {}", node.pod_cidr, topo.cluster_cidr));
        }
        for (j, other) in topo.nodes.iter().enumerate().take(i) {
            if node.pod_cidr.contains(&other.pod_cidr) || other.pod_cidr.contains(&node.pod_cidr) {
                problems.push(format!("{at}: podCIDR {} overlaps nodes[{j}] ({}) {}", node.pod_cidr, other.name, other.pod_cidr));
            }
        }
    }
    problems
}

impl Topology {
    /// Netns name of a node.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}-{}", self.name, node)
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
    fn parses_one_node() {
        let t = parse(ONE).unwrap();
        assert_eq!(t.name, "demo");
        assert_eq!(t.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(t.nodes[0].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(t.node_netns("node1"), "demo-node1");
    }

    #[test]
    fn shipped_examples_parse() {
        for f in ["one-node.yaml", "two-nodes.yaml"] {
            let path = format!("{}/../lab/{f}", env!("CARGO_MANIFEST_DIR"));
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
    fn rejects_host_bits_and_empty_nodes() {
        let p = invalid("name: x\nclusterCIDR: 10.244.0.1/16\nnodes: []\n");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn rejects_unknown_fields_and_bad_cidrs() {
        assert!(matches!(parse("name: x\nclusterCIDR: 10.0.0.0/8\nnodes: []\nextra: 1\n"), Err(TopologyError::Parse(_))));
        assert!(matches!(parse("name: x\nclusterCIDR: nope\nnodes: []\n"), Err(TopologyError::Parse(_))));
    }
}
