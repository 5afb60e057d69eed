//! `weir-operator`: the cluster-wide controller (CRDs, pod CIDR allocation,
//! policy status). Filled in by a later issue.
