//! Flows: the datapath's events read from the ring buffer, named with
//! Kubernetes context, kept in a bounded store and served over Hubble's
//! Observer API; exported to files and OTLP. The agent runs it (its
//! metrics implement [`FlowMetrics`]); `weir-bench` drives it directly.
//!
//! ```text
//! weir_events (ring buffer) ─ reader thread: decode → enrich → store ─┬─ GetFlows (snapshot, follow)
//!                              (names from the cluster model)          ├─ metrics
//!                                                                      └─ export (files, OTLP)
//! ```

pub mod enrich;
pub mod export;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod policy_names;
pub mod server;
pub mod store;

pub use metrics::FlowMetrics;
pub use pipeline::{FlowStats, Pipeline};
pub use policy_names::{PolicyName, PolicyNames};
