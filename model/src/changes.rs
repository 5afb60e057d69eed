//! What changed between two snapshots of the model, kind by kind and object
//! by object, so a controller's pass costs what a change touches rather
//! than the whole cluster.
//!
//! Snapshots share their objects (`Arc`): an object a source did not
//! touch is the same allocation in both, so most of a comparison is a
//! pointer test. Objects that are new allocations (standalone mode parses
//! a changed file again) are compared by value, so a rewrite that changes
//! nothing is no change.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::identity::IdentityKey;
use crate::object::Kind;
use crate::objects::Objects;
use crate::state::{ClusterState, ObjectKey};

/// The changes a source made, snapshot by snapshot, shared by its
/// snapshots (`ClusterState::log`): a consumer that last saw generation
/// `g` gets what changed up to the current one without comparing the
/// two models, even when it skipped the snapshots in between. Bounded:
/// one that fell further behind compares (or starts over).
#[derive(Debug, Default)]
pub struct ChangeLog {
    entries: std::sync::Mutex<std::collections::VecDeque<(u64, Changes)>>,
}

/// How many snapshots' changes the log keeps.
const LOG_LEN: usize = 256;

impl ChangeLog {
    /// What changed from the snapshot before `generation` to it.
    pub fn record(&self, generation: u64, changes: Changes) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.push_back((generation, changes));
        while e.len() > LOG_LEN {
            e.pop_front();
        }
    }

    /// What changed after snapshot `from` up to snapshot `to`, if the log
    /// still holds all of it.
    pub fn between(&self, from: u64, to: u64) -> Option<Changes> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Changes::default();
        let mut next = from + 1;
        for (g, c) in e.iter().filter(|(g, _)| *g > from && *g <= to) {
            if *g != next {
                return None;
            }
            out.merge(c);
            next += 1;
        }
        (next == to + 1).then_some(out)
    }
}

/// The objects that differ between two snapshots: added, changed or
/// removed, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    kinds: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    /// The policies the source holds but cannot read changed.
    pub unreadable_policies: bool,
    /// When the source saw the first of these changes (its watch event),
    /// if it says: how long a change takes to reach the datapath.
    pub first_seen: Option<std::time::Instant>,
}

impl Changes {
    /// What differs from `old` to `new`.
    pub fn between(old: &ClusterState, new: &ClusterState) -> Self {
        let mut c = Changes {
            unreadable_policies: old.unreadable_policies != new.unreadable_policies,
            ..Default::default()
        };
        c.add(Kind::Namespace, changed(&old.namespaces, &new.namespaces));
        c.add(Kind::Node, changed(&old.nodes, &new.nodes));
        c.add(Kind::Pod, changed(&old.pods, &new.pods));
        c.add(Kind::Service, changed(&old.services, &new.services));
        c.add(Kind::EndpointSlice, changed(&old.endpoint_slices, &new.endpoint_slices));
        c.add(
            Kind::NetworkPolicy,
            changed(&old.network_policies, &new.network_policies),
        );
        c.add(Kind::WeirIdentity, changed(&old.identities, &new.identities));
        c.add(
            Kind::WeirNetworkPolicy,
            changed(&old.weir_network_policies, &new.weir_network_policies),
        );
        c.add(
            Kind::WeirClusterNetworkPolicy,
            changed(&old.weir_cluster_network_policies, &new.weir_cluster_network_policies),
        );
        c.add(
            Kind::ClusterNetworkPolicy,
            changed(&old.cluster_network_policies, &new.cluster_network_policies),
        );
        c
    }

    /// What changed from `old` to `new`: read from their source's log
    /// when both come from it and it still reaches back, else compared.
    pub fn since(old: &ClusterState, new: &ClusterState) -> Self {
        if let (Some(a), Some(b)) = (&old.log, &new.log)
            && Arc::ptr_eq(a, b)
            && old.generation <= new.generation
            && let Some(c) = b.between(old.generation, new.generation)
        {
            return c;
        }
        Self::between(old, new)
    }

    /// Records that the object `key` of `kind` changed.
    pub fn insert(&mut self, kind: Kind, key: ObjectKey) {
        self.kinds.entry(kind).or_default().insert(key);
    }

    /// Adds what `other` holds.
    pub fn merge(&mut self, other: &Changes) {
        for (kind, keys) in &other.kinds {
            self.kinds.entry(*kind).or_default().extend(keys.iter().cloned());
        }
        self.unreadable_policies |= other.unreadable_policies;
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Compares one kind's objects only (a kind a source listed again).
    pub fn between_kind(&mut self, kind: Kind, old: &ClusterState, new: &ClusterState) {
        let keys = match kind {
            Kind::Namespace => changed(&old.namespaces, &new.namespaces),
            Kind::Node => changed(&old.nodes, &new.nodes),
            Kind::Pod => changed(&old.pods, &new.pods),
            Kind::Service => changed(&old.services, &new.services),
            Kind::EndpointSlice => changed(&old.endpoint_slices, &new.endpoint_slices),
            Kind::NetworkPolicy => changed(&old.network_policies, &new.network_policies),
            Kind::WeirIdentity => changed(&old.identities, &new.identities),
            Kind::WeirNetworkPolicy => changed(&old.weir_network_policies, &new.weir_network_policies),
            Kind::WeirClusterNetworkPolicy => {
                changed(&old.weir_cluster_network_policies, &new.weir_cluster_network_policies)
            }
            Kind::ClusterNetworkPolicy => changed(&old.cluster_network_policies, &new.cluster_network_policies),
            Kind::Deployment => BTreeSet::new(),
        };
        for k in keys {
            self.insert(kind, k);
        }
        self.unreadable_policies |= old.unreadable_policies != new.unreadable_policies;
    }

    fn add(&mut self, kind: Kind, keys: BTreeSet<ObjectKey>) {
        if !keys.is_empty() {
            self.kinds.insert(kind, keys);
        }
    }

    /// The changed objects of `kind`.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> {
        self.kinds.get(&kind).into_iter().flatten()
    }

    /// Whether any object of `kind` changed.
    pub fn touches(&self, kind: Kind) -> bool {
        self.kinds.contains_key(&kind)
    }

    /// Whether any policy changed, of any policy kind, readable or not.
    pub fn touches_policies(&self) -> bool {
        self.unreadable_policies
            || [
                Kind::NetworkPolicy,
                Kind::WeirNetworkPolicy,
                Kind::WeirClusterNetworkPolicy,
                Kind::ClusterNetworkPolicy,
            ]
            .iter()
            .any(|k| self.touches(*k))
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty() && !self.unreadable_policies
    }

    /// How many objects changed.
    pub fn len(&self) -> usize {
        self.kinds.values().map(BTreeSet::len).sum()
    }
}

/// Pods by label set, for tables kept by changes that hold a pod's
/// identity: an identity made or gone renumbers the pods of its label set
/// only ([`Self::renumbered`]).
#[derive(Debug, Default)]
pub struct PodsByLabels {
    pods: BTreeMap<IdentityKey, BTreeSet<ObjectKey>>,
    /// Each identity object's label set, as last seen.
    identities: BTreeMap<ObjectKey, IdentityKey>,
}

impl PodsByLabels {
    /// The identities of `state`, no pods yet.
    pub fn new(state: &ClusterState) -> Self {
        Self {
            pods: BTreeMap::new(),
            identities: state
                .identities
                .iter()
                .map(|(k, o)| (k.clone(), o.spec.clone()))
                .collect(),
        }
    }

    pub fn insert(&mut self, labels: &IdentityKey, pod: &ObjectKey) {
        self.pods.entry(labels.clone()).or_default().insert(pod.clone());
    }

    pub fn remove(&mut self, labels: &IdentityKey, pod: &ObjectKey) {
        if let Some(set) = self.pods.get_mut(labels) {
            set.remove(pod);
            if set.is_empty() {
                self.pods.remove(labels);
            }
        }
    }

    /// The pods whose identity `changes` (taking the index to `state`)
    /// may have changed: those of the label sets of identities made,
    /// changed or gone.
    pub fn renumbered(&mut self, state: &ClusterState, changes: &Changes) -> BTreeSet<ObjectKey> {
        let mut out = BTreeSet::new();
        for key in changes.of(Kind::WeirIdentity) {
            let new = state.identities.get(key).map(|o| o.spec.clone());
            let old = match &new {
                Some(spec) => self.identities.insert(key.clone(), spec.clone()),
                None => self.identities.remove(key),
            };
            for labels in old.iter().chain(new.iter()) {
                out.extend(self.pods.get(labels).into_iter().flatten().cloned());
            }
        }
        out
    }
}

/// The keys whose objects differ: a merge of the two sorted maps (none
/// when one is the other, unwritten since).
fn changed<T: PartialEq>(old: &Objects<T>, new: &Objects<T>) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    if old.ptr_eq(new) {
        return out;
    }
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                out.insert((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.insert((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Object;

    fn pod(name: &str, app: &str) -> Object {
        Object::from_value(
            Kind::Pod,
            serde_json::json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": app}}}),
        )
        .unwrap()
    }

    #[test]
    fn added_changed_and_removed_objects_are_changes_and_equal_ones_are_not() {
        let mut old = ClusterState::default();
        for (n, app) in [("a", "x"), ("b", "x"), ("c", "x")] {
            old.insert(pod(n, app));
        }
        let mut new = old.clone();
        assert!(Changes::between(&old, &new).is_empty(), "shared objects");
        new.insert(pod("c", "x"));
        assert!(Changes::between(&old, &new).is_empty(), "a new copy, equal");
        new.insert(pod("a", "y"));
        new.remove(Kind::Pod, &ObjectKey::new("d", "b"));
        new.insert(pod("e", "x"));
        let c = Changes::between(&old, &new);
        let keys: Vec<_> = c.of(Kind::Pod).map(|k| k.name.as_str()).collect();
        assert_eq!(keys, ["a", "b", "e"]);
        assert_eq!(c.len(), 3);
        assert!(c.touches(Kind::Pod) && !c.touches(Kind::Service) && !c.touches_policies());
    }

    #[test]
    fn the_log_gives_what_changed_across_skipped_snapshots_or_nothing() {
        let log = Arc::new(ChangeLog::default());
        let key = |n: &str| ObjectKey::new("d", n);
        for (g, n) in [(1, "a"), (2, "b"), (3, "c")] {
            let mut c = Changes::default();
            c.insert(Kind::Pod, key(n));
            log.record(g, c);
        }
        let c = log.between(1, 3).expect("held");
        assert_eq!(c.of(Kind::Pod).map(|k| k.name.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert!(log.between(3, 3).expect("nothing changed").is_empty());
        assert!(log.between(0, 4).is_none(), "not there yet");
        for g in 4..(4 + LOG_LEN as u64) {
            log.record(g, Changes::default());
        }
        assert!(log.between(1, 3 + LOG_LEN as u64).is_none(), "trimmed");

        // Snapshots of one source read the log; others are compared.
        let (mut old, mut new) = (ClusterState::default(), ClusterState::default());
        new.insert(pod("z", "x"));
        old.log = Some(log.clone());
        new.log = Some(log.clone());
        (old.generation, new.generation) = (2, 3);
        assert_eq!(Changes::since(&old, &new).of(Kind::Pod).count(), 1, "c, from the log");
        new.log = None;
        assert_eq!(
            Changes::since(&old, &new).of(Kind::Pod).next().map(|k| k.name.as_str()),
            Some("z"),
            "compared"
        );
    }
}
