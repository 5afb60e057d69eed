//! What the Kubernetes source knows, kind by kind, built from watch events
//! (pure: no client, no runtime). Each kind's objects are replaced whole
//! only when a (re)list completes, so a watch that restarts, after a `410
//! Gone` or an API server that was away, never empties the model halfway:
//! the old objects stay until the new list is complete, then what changed
//! meanwhile is what differs.
//!
//! An object the agent cannot read into its type is reported with its name
//! and reason. A policy is kept as unreadable (the compiler denies in its
//! place); any other object keeps its last readable version, or is left
//! out if it never had one.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use weir_model::policy::{PolicyId, PolicyKind};
use weir_model::{ChangeLog, Changes, ClusterState, Kind, Object, ObjectKey, Unreadable};

/// One watch event, the object as the API server sent it.
#[derive(Debug, Clone)]
pub enum Event {
    Apply(Value),
    Delete(Value),
    /// A (re)list starts.
    Init,
    InitApply(Value),
    /// The (re)list is complete.
    InitDone,
    /// The kind is not served (a CRD not installed): known to be empty.
    Absent,
}

/// An object that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub key: ObjectKey,
    pub reason: String,
}

/// Every watched kind's objects, kept as the model itself: a snapshot is
/// a clone of its maps, the objects shared with it.
#[derive(Debug)]
pub struct Stores {
    current: ClusterState,
    kinds: BTreeMap<Kind, KindStore>,
    /// What changed since the last snapshot: objects by their events,
    /// kinds listed again (compared at the snapshot).
    pending: Changes,
    relisted: BTreeSet<Kind>,
    log: Arc<ChangeLog>,
    generation: u64,
    published: Option<Arc<ClusterState>>,
}

#[derive(Debug, Default)]
struct KindStore {
    /// Filled while a list runs; replaces the kind's objects when it
    /// completes.
    listing: Option<Vec<Listed>>,
    synced: bool,
    len: usize,
}

#[derive(Debug)]
enum Listed {
    Read(Box<Object>),
    Unreadable(ObjectKey, Unreadable),
}

/// What one event did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The model (what a snapshot would hold) changed.
    pub changed: bool,
    pub problem: Option<Problem>,
    /// A relist completed (not the first list).
    pub relisted: bool,
}

fn policy_kind(kind: Kind) -> Option<PolicyKind> {
    Some(match kind {
        Kind::NetworkPolicy => PolicyKind::NetworkPolicy,
        Kind::WeirNetworkPolicy => PolicyKind::WeirNetworkPolicy,
        Kind::WeirClusterNetworkPolicy => PolicyKind::WeirClusterNetworkPolicy,
        Kind::ClusterNetworkPolicy => PolicyKind::ClusterNetworkPolicy,
        _ => return None,
    })
}

fn policy_id(kind: PolicyKind, key: &ObjectKey) -> PolicyId {
    PolicyId {
        kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn key_of(value: &Value) -> ObjectKey {
    let meta = value.get("metadata");
    let s = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ObjectKey::new(s("namespace"), s("name"))
}

/// The typed object, with what the agent never reads taken out (managed
/// fields and kubectl's last-applied copy are most of an object's size).
fn read(kind: Kind, mut value: Value) -> Result<Object, String> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    Object::from_value(kind, value).map_err(|e| e.to_string())
}

impl Stores {
    pub fn new(kinds: &[Kind]) -> Self {
        Self {
            current: ClusterState::default(),
            kinds: kinds.iter().map(|k| (*k, KindStore::default())).collect(),
            pending: Changes::default(),
            relisted: BTreeSet::new(),
            log: Arc::new(ChangeLog::default()),
            generation: 0,
            published: None,
        }
    }

    /// Whether every kind has been listed once: only then is a snapshot
    /// the cluster (before, a kind not yet listed would look empty).
    pub fn synced(&self) -> bool {
        self.kinds.values().all(|k| k.synced)
    }

    /// Kinds not listed yet.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.kinds.iter().filter(|(_, s)| !s.synced).map(|(k, _)| *k).collect()
    }

    pub fn len(&self, kind: Kind) -> usize {
        self.kinds.get(&kind).map_or(0, |s| s.len)
    }

    /// Puts one object (or its unreadable mark) into the model; false if
    /// it could not be read and nothing changed.
    fn put(current: &mut ClusterState, kind: Kind, item: Listed) -> bool {
        match item {
            Listed::Read(o) => {
                if let Some(pk) = policy_kind(kind) {
                    current
                        .unreadable_policies
                        .remove(&policy_id(pk, &ObjectKey::of(o.meta())));
                }
                current.insert(*o);
                true
            }
            Listed::Unreadable(key, u) => match policy_kind(kind) {
                Some(pk) => {
                    current.remove(kind, &key);
                    current.unreadable_policies.insert(policy_id(pk, &key), u);
                    true
                }
                // Anything else keeps its last readable version.
                None => false,
            },
        }
    }

    fn remove(current: &mut ClusterState, kind: Kind, key: &ObjectKey) -> bool {
        let mut gone = current.remove(kind, key);
        if let Some(pk) = policy_kind(kind) {
            gone |= current.unreadable_policies.remove(&policy_id(pk, key)).is_some();
        }
        gone
    }

    pub fn apply(&mut self, kind: Kind, event: Event) -> Applied {
        let mut out = Applied::default();
        let Some(store) = self.kinds.get_mut(&kind) else {
            return out;
        };
        let current = &mut self.current;
        match event {
            Event::Init => store.listing = Some(Vec::new()),
            Event::InitApply(value) => {
                let (item, problem) = listed(kind, value);
                out.problem = problem;
                if let Some(l) = store.listing.as_mut() {
                    l.push(item);
                }
            }
            Event::InitDone => {
                let listed = store.listing.take().unwrap_or_default();
                out.relisted = store.synced;
                // What could not be read keeps its last readable version
                // (policies aside) across the relist too.
                let mut kept: Vec<Object> = Vec::new();
                for item in &listed {
                    if let Listed::Unreadable(key, _) = item
                        && policy_kind(kind).is_none()
                        && let Some(o) = existing(current, kind, key)
                    {
                        kept.push(o);
                    }
                }
                current.clear(kind);
                if let Some(pk) = policy_kind(kind) {
                    current.unreadable_policies.retain(|id, _| id.kind != pk);
                }
                store.len = listed.len();
                for item in listed {
                    Self::put(current, kind, item);
                }
                for o in kept {
                    current.insert(o);
                }
                out.changed = true;
                store.synced = true;
                self.relisted.insert(kind);
            }
            Event::Absent => {
                out.changed = !store.synced || store.len > 0;
                current.clear(kind);
                if let Some(pk) = policy_kind(kind) {
                    current.unreadable_policies.retain(|id, _| id.kind != pk);
                }
                store.listing = None;
                store.synced = true;
                store.len = 0;
                self.relisted.insert(kind);
            }
            Event::Apply(value) => {
                let key = key_of(&value);
                let (item, problem) = listed(kind, value);
                out.problem = problem;
                let was = current.contains(kind, &key);
                if Self::put(current, kind, item) {
                    out.changed = store.synced;
                    if !was {
                        store.len += 1;
                    }
                    self.pending.insert(kind, key);
                }
            }
            Event::Delete(value) => {
                let key = key_of(&value);
                if Self::remove(current, kind, &key) {
                    store.len = store.len.saturating_sub(1);
                    out.changed = store.synced;
                    self.pending.insert(kind, key);
                }
            }
        }
        out
    }

    /// The model of everything listed, numbered `revision`: the maps are
    /// copied, the objects shared. What changed since the last one goes
    /// into the log its snapshots share.
    /// `first_seen`: when the first change since the last one arrived.
    pub fn snapshot(&mut self, revision: u64, first_seen: Option<std::time::Instant>) -> Arc<ClusterState> {
        let mut state = self.current.clone();
        state.revision = Some(revision);
        self.generation += 1;
        state.generation = self.generation;
        state.log = Some(self.log.clone());
        let mut changes = std::mem::take(&mut self.pending);
        changes.first_seen = first_seen;
        let relisted = std::mem::take(&mut self.relisted);
        if let Some(prev) = &self.published {
            // A relist replaced the kind's objects: what differs is what
            // changed meanwhile.
            for kind in relisted {
                changes.between_kind(kind, prev, &state);
            }
        }
        self.log.record(self.generation, changes);
        let state = Arc::new(state);
        self.published = Some(state.clone());
        state
    }
}

/// The object of a kind at `key` in the model, if it is there (a copy).
fn existing(state: &ClusterState, kind: Kind, key: &ObjectKey) -> Option<Object> {
    fn c<T: Clone>(m: &weir_model::Objects<T>, key: &ObjectKey) -> Option<T> {
        m.get(key).map(|o| (**o).clone())
    }
    Some(match kind {
        Kind::Namespace => Object::Namespace(c(&state.namespaces, key)?),
        Kind::Node => Object::Node(c(&state.nodes, key)?),
        Kind::Pod => Object::Pod(c(&state.pods, key)?),
        Kind::Service => Object::Service(c(&state.services, key)?),
        Kind::EndpointSlice => Object::EndpointSlice(c(&state.endpoint_slices, key)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(c(&state.network_policies, key)?),
        Kind::WeirIdentity => Object::WeirIdentity(c(&state.identities, key)?),
        Kind::WeirNetworkPolicy => Object::WeirNetworkPolicy(c(&state.weir_network_policies, key)?),
        Kind::WeirClusterNetworkPolicy => {
            Object::WeirClusterNetworkPolicy(c(&state.weir_cluster_network_policies, key)?)
        }
        Kind::ClusterNetworkPolicy => Object::ClusterNetworkPolicy(c(&state.cluster_network_policies, key)?),
        Kind::Deployment => return None,
    })
}

/// The object read from `value`, or its unreadable mark and the problem.
fn listed(kind: Kind, value: Value) -> (Listed, Option<Problem>) {
    let key = key_of(&value);
    let audit = value.pointer("/spec/enforcement").and_then(Value::as_str) == Some("audit");
    match read(kind, value) {
        Ok(o) => (Listed::Read(Box::new(o)), None),
        Err(reason) => {
            let problem = Problem {
                kind,
                key: key.clone(),
                reason: reason.clone(),
            };
            (Listed::Unreadable(key, Unreadable { reason, audit }), Some(problem))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, port: i64) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "d", "resourceVersion": "1",
                            "managedFields": [{"manager": "kubectl"}]},
               "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port}]}})
    }

    fn listed(stores: &mut Stores, kind: Kind, objects: Vec<Value>) -> Applied {
        stores.apply(kind, Event::Init);
        for o in objects {
            stores.apply(kind, Event::InitApply(o));
        }
        stores.apply(kind, Event::InitDone)
    }

    #[test]
    fn a_snapshot_waits_for_every_kind_and_a_relist_replaces_only_when_complete() {
        let mut s = Stores::new(&[Kind::Service, Kind::WeirNetworkPolicy]);
        assert!(listed(&mut s, Kind::Service, vec![svc("a", 80), svc("b", 81)]).changed);
        assert!(!s.synced(), "policies not listed yet");
        assert_eq!(s.unsynced(), vec![Kind::WeirNetworkPolicy]);
        s.apply(Kind::WeirNetworkPolicy, Event::Absent);
        assert!(s.synced(), "a kind not served is known empty");
        let snap = s.snapshot(1, None);
        assert_eq!(snap.services.len(), 2);
        assert!(
            snap.services.values().all(|o| o.metadata.managed_fields.is_none()),
            "managed fields are not kept"
        );

        // A relist (the watch expired): until it completes nothing goes.
        s.apply(Kind::Service, Event::Init);
        s.apply(Kind::Service, Event::InitApply(svc("a", 80)));
        assert_eq!(s.snapshot(2, None).services.len(), 2, "b is still there mid-list");
        let done = s.apply(Kind::Service, Event::InitDone);
        assert!(done.changed && done.relisted);
        let three = s.snapshot(3, None);
        assert_eq!(three.services.len(), 1, "b was deleted while away");
        let changed = weir_model::Changes::since(&snap, &three);
        assert_eq!(
            changed.of(Kind::Service).collect::<Vec<_>>(),
            [&ObjectKey::new("d", "b")],
            "the log says what the relist changed: b went, a is the same"
        );
        s.apply(Kind::Service, Event::Delete(svc("a", 80)));
        let four = s.snapshot(4, None);
        assert_eq!(weir_model::Changes::since(&three, &four).len(), 1, "a, by its event");

        // A kind's objects are shared by the snapshots, not copied.
        s.apply(Kind::Service, Event::Apply(svc("a", 80)));
        let (one, two) = (s.snapshot(5, None), s.snapshot(6, None));
        assert!(std::sync::Arc::ptr_eq(
            &one.services[&ObjectKey::new("d", "a")],
            &two.services[&ObjectKey::new("d", "a")]
        ));
    }

    #[test]
    fn an_unreadable_object_is_reported_and_loses_nothing() {
        let mut s = Stores::new(&[Kind::Service, Kind::WeirNetworkPolicy]);
        listed(&mut s, Kind::Service, vec![svc("a", 80)]);
        listed(&mut s, Kind::WeirNetworkPolicy, vec![]);
        let bad = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "a", "namespace": "d"},
                         "spec": {"ports": "eighty"}});
        let r = s.apply(Kind::Service, Event::Apply(bad));
        let p = r.problem.expect("reported");
        assert_eq!(p.key, ObjectKey::new("d", "a"));
        assert!(p.reason.contains("invalid type"), "{}", p.reason);
        let snap = s.snapshot(1, None);
        assert_eq!(
            snap.services[&ObjectKey::new("d", "a")]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port,
            80,
            "the last readable version stays"
        );

        let policy = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "WeirNetworkPolicy",
                            "metadata": {"name": "p", "namespace": "d"},
                            "spec": {"endpointSelector": {}, "ingress": "all of it"}});
        let r = s.apply(Kind::WeirNetworkPolicy, Event::Apply(policy));
        assert!(r.problem.is_some() && r.changed);
        let snap = s.snapshot(2, None);
        assert!(snap.weir_network_policies.is_empty());
        let u = snap.unreadable_policies.values().next().expect("kept as unreadable");
        assert!(!u.audit);
        s.apply(
            Kind::WeirNetworkPolicy,
            Event::Delete(json!({"metadata": {"name": "p", "namespace": "d"}})),
        );
        assert!(s.snapshot(3, None).unreadable_policies.is_empty(), "deleted: gone");
    }
}
