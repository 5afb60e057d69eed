//! Whether the uplink gets native XDP for NodePorts (pure: the decision
//! only; the agent attaches what it says).
//!
//! XDP pays on a physical NIC: NodePort traffic is translated and bounced
//! before the kernel builds an skb. On veth it costs: with an XDP program
//! attached, veth sends every frame (pod traffic too) through its XDP path
//! and copies GSO frames, so cross-node pod-to-pod throughput fell to
//! 17-30% of bare veth in the lab (docs/benchmarks.md). Software devices
//! report a link kind over netlink (`veth`, `bridge`, `vxlan`, ...);
//! physical NICs report none.

use crate::config::NodePortXdp;

/// What to attach to the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Native XDP, and `from_netdev` in TC for what XDP passes on.
    Native,
    /// `from_netdev` in TC alone.
    Tc,
}

/// The choice for an uplink whose netlink link kind is `kind` (`None` for a
/// physical device), and why, for the log.
pub fn decide(mode: NodePortXdp, kind: Option<&str>) -> (Choice, &'static str) {
    match (mode, kind) {
        (NodePortXdp::On, _) => (Choice::Native, "--nodeport-xdp=on"),
        (NodePortXdp::Off, _) => (Choice::Tc, "--nodeport-xdp=off"),
        (NodePortXdp::Auto, None) => (Choice::Native, "physical uplink"),
        (NodePortXdp::Auto, Some(_)) => (
            Choice::Tc,
            "virtual uplink: XDP would send all its traffic through the XDP path",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_xdp_on_physical_uplinks_only_and_overrides_win() {
        assert_eq!(decide(NodePortXdp::Auto, None).0, Choice::Native);
        assert_eq!(decide(NodePortXdp::Auto, Some("veth")).0, Choice::Tc);
        assert_eq!(decide(NodePortXdp::Auto, Some("bond")).0, Choice::Tc);
        assert_eq!(decide(NodePortXdp::On, Some("veth")).0, Choice::Native);
        assert_eq!(decide(NodePortXdp::Off, None).0, Choice::Tc);
    }
}
