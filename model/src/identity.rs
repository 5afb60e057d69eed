//! Security identities: the numbers the datapath (and later policy and
//! flows) know a pod by. An identity stands for a label set, a pod's
//! namespace and its labels, so every pod with the same labels in the same
//! namespace has the same identity, on every node.
//!
//! **Allocation.** Identities are cluster objects, `WeirIdentity`
//! (cluster-scoped, named by the number, the label set in its spec), written
//! by one allocator and read by every agent: the lab in standalone mode
//! (it plays the API server), the operator against a real API server (the
//! Kubernetes issue). One writer means no two numbers for one label set and
//! no number for two. [`plan`] is the allocator's whole logic: a label set
//! keeps its number as long as any pod has it; a new one gets the next free
//! number after the highest in use, so a number just released is not handed
//! to another label set while agents may still hold it.
//!
//! **Release.** A `WeirIdentity` whose label set no pod has any more is
//! deleted by the allocator's next pass (after the pods are gone).
//!
//! **Agents** resolve a pod's identity by its label set in the identities
//! they have read ([`crate::ClusterState::identity_of`]); a pod whose
//! identity has not reached the agent yet runs as [`INIT`] until it does.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The reserved identities and the first number for label sets, as the
/// datapath's abi.h has them.
pub use weir_abi::identity::{HOST, INIT, MIN, REMOTE_NODE, UNKNOWN, WORLD};
/// The last: 24 bits, so an identity fits a VXLAN VNI.
pub const MAX: u32 = 0x00ff_ffff;

/// `apiVersion` of weir's own kinds.
pub const API_VERSION: &str = "weir.dev/v1alpha1";

/// Pod labels that differ per rollout and say nothing a policy selects
/// on: leaving them out keeps one identity per workload instead of one
/// per ReplicaSet or revision. Per-pod labels (a StatefulSet's
/// `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`, an
/// indexed Job's completion index) stay in: policies do select one pod of
/// a StatefulSet by name (network-policy-api's conformance suite does), and
/// a selector on a label identities leave out could never match. The cost
/// is an identity per such pod.
///
/// A Job's pods carry its UID (`controller-uid`, and since 1.27
/// `batch.kubernetes.io/controller-uid`): unique per Job, so a CronJob
/// would mint an identity (an object in the API server) every run, and no
/// policy can name a UID before the Job exists. Left out too; the Job's
/// name (`job-name`) stays, as policies do select on it.
pub const EXCLUDED_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

/// The label set an identity stands for; also the spec of `kind:
/// WeirIdentity` (kube's derive makes the object type and its CRD).
#[derive(
    CustomResource, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "WeirIdentity",
    shortname = "wid",
    derive = "PartialEq",
    derive = "Default"
)]
pub struct IdentityKey {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl IdentityKey {
    /// A pod's label set: its namespace and its labels but the excluded ones.
    pub fn of(namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .filter(|(k, _)| !EXCLUDED_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn of_pod(pod: &Pod) -> Self {
        Self::of(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            &pod.metadata.labels.clone().unwrap_or_default(),
        )
    }
}

// `kind: WeirIdentity` (the derive above): one allocated identity.
// Cluster-scoped, `metadata.name` is the number.
impl WeirIdentity {
    /// The identity numbered `id` for the label set `key`.
    pub fn numbered(id: u32, key: IdentityKey) -> Self {
        Self::new(&id.to_string(), key)
    }

    /// The number, if the name is one in the allocatable range.
    pub fn id(&self) -> Option<u32> {
        let id: u32 = self.metadata.name.as_deref()?.parse().ok()?;
        (MIN..=MAX).contains(&id).then_some(id)
    }
}

/// What the allocator writes: identities to create, numbers to release.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub create: Vec<(u32, IdentityKey)>,
    pub release: Vec<u32>,
}

/// Every allocatable number is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free identity: all {} numbers from {MIN} to {MAX} are in use", MAX - MIN + 1)]
pub struct Exhausted;

/// The allocator's pass: `existing` identities, the label sets the cluster's
/// pods have now (`wanted`). A label set with a number keeps it (the lowest,
/// should two numbers ever stand for one set: the other is released); a
/// new one gets the next free number after the highest existing, wrapping
/// to [`MIN`]; a number whose set no pod has is released.
pub fn plan(existing: &BTreeMap<u32, IdentityKey>, wanted: &BTreeSet<IdentityKey>) -> Result<Plan, Exhausted> {
    let mut out = Plan::default();
    let mut kept: BTreeMap<&IdentityKey, u32> = BTreeMap::new();
    for (id, key) in existing {
        if wanted.contains(key) && !kept.contains_key(key) {
            kept.insert(key, *id);
        } else {
            out.release.push(*id);
        }
    }
    let mut used: BTreeSet<u32> = kept.values().copied().collect();
    let mut next = existing.keys().next_back().map_or(MIN, |last| last + 1);
    for key in wanted.iter().filter(|k| !kept.contains_key(k)) {
        if used.len() as u32 > MAX - MIN {
            return Err(Exhausted);
        }
        loop {
            if !(MIN..=MAX).contains(&next) {
                next = MIN;
            }
            if used.insert(next) {
                break;
            }
            next += 1;
        }
        out.create.push((next, key.clone()));
        next += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, app: &str) -> IdentityKey {
        IdentityKey::of(ns, &[("app".to_string(), app.to_string())].into())
    }

    #[test]
    fn same_labels_share_one_identity_and_rollout_hashes_do_not_count() {
        let a = IdentityKey::of(
            "demo",
            &[
                ("app".to_string(), "web".to_string()),
                ("pod-template-hash".to_string(), "5d4f".to_string()),
            ]
            .into(),
        );
        assert_eq!(a, key("demo", "web"));
        assert_ne!(key("demo", "web"), key("other", "web"), "the namespace counts");
        let run = |uid: &str| {
            IdentityKey::of(
                "demo",
                &[
                    ("job-name".to_string(), "backup".to_string()),
                    ("controller-uid".to_string(), uid.to_string()),
                    ("batch.kubernetes.io/controller-uid".to_string(), uid.to_string()),
                ]
                .into(),
            )
        };
        assert_eq!(run("0b6f-11"), run("94c2-12"), "two runs of a Job share one identity");
        assert!(run("0b6f-11").labels.contains_key("job-name"), "its name stays");
        let db0 = IdentityKey::of(
            "demo",
            &[
                ("app".to_string(), "db".to_string()),
                ("statefulset.kubernetes.io/pod-name".to_string(), "db-0".to_string()),
            ]
            .into(),
        );
        assert_ne!(
            db0,
            key("demo", "db"),
            "a StatefulSet pod's name is selectable: it counts"
        );
    }

    #[test]
    fn new_sets_get_fresh_numbers_and_kept_sets_keep_theirs() {
        let existing: BTreeMap<u32, IdentityKey> = [(256, key("d", "web")), (300, key("d", "db"))].into();
        let wanted: BTreeSet<IdentityKey> = [key("d", "web"), key("d", "api"), key("d", "cache")].into();
        let p = plan(&existing, &wanted).unwrap();
        assert_eq!(p.release, vec![300], "db has no pod any more");
        assert_eq!(
            p.create,
            vec![(301, key("d", "api")), (302, key("d", "cache"))],
            "after the highest existing, even the one just released"
        );
        let none = plan(&existing, &[key("d", "web"), key("d", "db")].into()).unwrap();
        assert_eq!(none, Plan::default(), "nothing changes when nothing did");
    }

    #[test]
    fn a_duplicate_keeps_the_lowest_number_and_numbers_wrap() {
        let existing: BTreeMap<u32, IdentityKey> = [(260, key("d", "x")), (MAX, key("d", "x"))].into();
        let p = plan(&existing, &[key("d", "x"), key("d", "y")].into()).unwrap();
        assert_eq!(p.release, vec![MAX]);
        assert_eq!(p.create, vec![(MIN, key("d", "y"))], "wrapped past MAX");
    }

    #[test]
    fn the_object_round_trips_and_only_allocatable_names_are_identities() {
        let id = WeirIdentity::numbered(4242, key("d", "web"));
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["kind"], "WeirIdentity");
        assert_eq!(json["metadata"]["name"], "4242");
        assert_eq!(json["spec"]["labels"]["app"], "web");
        let back: WeirIdentity = serde_json::from_value(json).unwrap();
        assert_eq!(back.id(), Some(4242));
        assert_eq!(WeirIdentity::numbered(7, key("d", "web")).id(), None, "reserved range");
    }
}
