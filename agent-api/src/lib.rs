//! The contract between `weir-agent` and its local callers (`weir-cni`, `weir lab`).
//!
//! One JSON object per line over a Unix stream socket: the caller writes a
//! [`Request`] wrapped in an envelope naming [`API_VERSION`], the agent answers
//! with one [`Reply`]. The agent rejects an envelope whose version it does not
//! speak, so an old plugin talking to a new agent fails loudly, not subtly.

mod client;
pub mod names;
pub mod revision;
mod types;

pub use client::{Client, ClientError};
pub use types::*;

/// The version string every request carries and the agent checks.
pub const API_VERSION: &str = "weir.agent/v1";

/// The gateway every pod routes through: a link-local address that never
/// collides with a pod or node address, answered by a static neighbour entry.
pub const POD_GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// The conflist's file name in a CNI config dir: early in the directory's
/// order, since runtimes load the first one.
pub const CONFLIST_NAME: &str = "05-weir.conflist";

/// The CNI network configuration list that installs weir on a node: one
/// plugin, `weir-cni`, talking to the agent at `agent_socket`. The agent
/// writes it (`--cni-conf-dir`) and the lab does for its nodes.
pub fn conflist(agent_socket: &std::path::Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weir",
        "plugins": [{"type": "weir-cni", "agentSocket": agent_socket}],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_conflist_names_weir_cni_and_the_agent() {
        let c: serde_json::Value =
            serde_json::from_str(&super::conflist(std::path::Path::new("/run/weir/agent.sock"))).expect("JSON");
        assert_eq!(c["plugins"][0]["type"], "weir-cni");
        assert_eq!(c["plugins"][0]["agentSocket"], "/run/weir/agent.sock");
        assert_eq!(c["cniVersion"], "1.1.0");
    }
}
