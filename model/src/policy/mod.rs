//! Network policy, as pure logic: weir's own policy kinds ([`crd`]), the
//! validation of every policy into one normalised form ([`parse`]) and the
//! compiler that turns the cluster's policies into the datapath's policy
//! tables for one node's endpoints ([`compile`]); the status the operator
//! reports on weir's policies ([`status`]), judged by the same parser. The agent's policy
//! controller runs the compiler and writes its output; flows name verdicts
//! with [`compile::RuleRef`].
//!
//! Kubernetes NetworkPolicy semantics throughout: a pod is isolated in a
//! direction once a policy selecting it has that policy type; then only
//! what some rule allows passes; policies add up. weir's CRDs add deny
//! rules (which win over any allow), entities, and audit mode (two layers:
//! enforced, and enforced plus audit; what only the second denies is
//! forwarded as an AUDIT verdict). `policy.networking.k8s.io`'s
//! ClusterNetworkPolicy ([`cnp`]) adds two tiers around all of that: Admin
//! rules judged first, Baseline rules where nothing else decides, the
//! first matching rule of a tier deciding (Accept, Deny, or Pass on).
use std::collections::BTreeMap;

pub mod cnp;
pub mod compile;
pub mod crd;
pub mod parse;
pub mod status;
pub mod whatif;

pub use compile::{
    Budget, Compiled, EndpointPolicy, LocalEndpoint, Numbers, PeerSelectors, RuleRef, RuleWhat, Slot, Verdicts,
    compile, compile_within, pod_change_matters,
};
pub use parse::{Direction, MatchType, Policy, PolicyId, PolicyKind, Rejected, Tier, Tiered};

/// Stable numbers for keys: a key keeps its number while it is in use, a
/// new key gets the next free one after the last handed out (so a number
/// just released is not reused at once: conntrack entries may still name
/// it), wrapping within `[min, max]`.
#[derive(Debug, Clone)]
pub struct Numbering<K: Ord> {
    ids: BTreeMap<K, u32>,
    used: std::collections::BTreeSet<u32>,
    next: u32,
    min: u32,
    max: u32,
}

impl<K: Ord + Clone> Numbering<K> {
    pub fn new(min: u32, max: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            used: Default::default(),
            next: min,
            min,
            max,
        }
    }

    /// The number of `key`, given one if it has none. Should every number
    /// be taken, the key shares `max` (never reached in practice: 8M rules).
    pub fn id(&mut self, key: K) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let span = u64::from(self.max - self.min) + 1;
        let mut id = self.max;
        for _ in 0..span.min(u64::from(u32::MAX)) {
            let candidate = self.next;
            self.next = if self.next >= self.max { self.min } else { self.next + 1 };
            if !self.used.contains(&candidate) {
                id = candidate;
                break;
            }
        }
        self.used.insert(id);
        self.ids.insert(key, id);
        id
    }

    /// Keeps the keys `keep` says yes to; the others' numbers are free.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let used = &mut self.used;
        self.ids.retain(|k, id| {
            let k_ = keep(k);
            if !k_ {
                used.remove(id);
            }
            k_
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.ids.iter().map(|(k, v)| (k, *v))
    }
}
