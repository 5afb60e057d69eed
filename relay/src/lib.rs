//! `weir-relay`: aggregates flows from every node's agent. Filled in by the
//! observability issue; present so the workspace layout is complete.
