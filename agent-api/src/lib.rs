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
