//! Flows: the datapath's events read from the ring buffer, named with
//! Kubernetes context, kept in a bounded store and served over Hubble's
//! Observer API.
//!
//! ```text
//! weir_events (ring buffer) ─ reader thread: decode → enrich → store ─┬─ GetFlows (snapshot, follow)
//!                              (names from the cluster model)          ├─ metrics
//!                                                                      └─ export (files, OTLP)
//! ```

pub mod enrich;
pub mod export;
pub mod names;
pub mod pipeline;
pub mod server;
pub mod store;

pub use pipeline::{FlowStats, Pipeline};
