//! gRPC definitions for weir's Observer API (wire-compatible with Hubble's).
//!
//! Empty until the flow-observability issue: the foundation defines no gRPC
//! surface yet, and the agent's local API lives in `weir-agent-api`.
