//! weir-operator: the cluster-wide controllers that need one writer. Today
//! the identity allocator ([`identities`]); policy status is next.
pub mod identities;
