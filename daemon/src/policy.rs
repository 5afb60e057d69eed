//! The policy controller: the one owner of the datapath's policy tables.
//! On every cluster snapshot and every change of the local endpoints it
//! runs the model crate's compiler ([`weir_model::policy::compile`]) and
//! writes the difference; it also keeps [`PolicyNames`] (`weir-flows`), which the flow
//! pipeline names verdicts with, and reports rejected policies (log, once
//! per policy and reason, and metrics).
//!
//! Fail closed: when the tables cannot be written (the map full, say), the
//! endpoints with policies keep only their isolation entries, as a default
//! deny naming the failure, rather than some mix of old and new entries.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use weir_datapath::policy::PolicyMaps;
use weir_flows::PolicyNames;
use weir_model::policy::{Budget, Compiled, Direction, LocalEndpoint, Numbers, Slot, Verdicts, compile_within};
use weir_model::{Changes, ClusterState, Kind};

use crate::metrics::Metrics;
use crate::reconcile::{Action, Pass, blocking};
use crate::sync::SyncStatus;

/// The table room one endpoint's policy may take: the size of the policy
/// map Cilium gives each endpoint.
pub const SLOTS_PER_ENDPOINT: usize = 16_384;

/// What the compiler may use of the datapath's table.
pub fn budget() -> Budget {
    Budget {
        per_endpoint: SLOTS_PER_ENDPOINT,
        total: weir_datapath::policy::MAX_ENTRIES as usize,
    }
}

/// Fail closed: only the isolation entries of endpoints that have any,
/// each a default deny (the enforced layer's reference when it had one),
/// and the node's way in to them (kubelet's probes), which Kubernetes
/// requires whatever isolates a pod.
pub fn fallback(c: &Compiled) -> BTreeMap<Slot, Verdicts> {
    let mut out = BTreeMap::new();
    let eps: BTreeSet<u32> = c.slots.keys().map(|s| s.endpoint_id).collect();
    for ep in eps {
        out.insert(
            Slot {
                endpoint_id: ep,
                direction: Direction::Ingress.index() as u8,
                peer: weir_datapath::ipcache::ID_HOST,
                proto: 0,
                port: 0,
                port_bits: 0,
            },
            Verdicts {
                action: weir_datapath::policy::action::ALLOW,
                reference: 0,
                audit_action: weir_datapath::policy::action::ALLOW,
                audit_reference: 0,
                ..Default::default()
            },
        );
        for d in Direction::BOTH {
            let slot = Slot {
                endpoint_id: ep,
                direction: d.index() as u8,
                peer: weir_datapath::policy::PEER_ANY,
                proto: 0,
                port: 0,
                port_bits: 0,
            };
            out.insert(
                slot,
                Verdicts {
                    action: weir_datapath::policy::action::DEFAULT_DENY,
                    reference: 0,
                    audit_action: weir_datapath::policy::action::DEFAULT_DENY,
                    audit_reference: 0,
                    ..Default::default()
                },
            );
        }
    }
    out
}

/// What the controller owns.
pub struct Controller {
    pub maps: PolicyMaps,
    pub numbers: Numbers,
    pub names: Arc<PolicyNames>,
    pub metrics: Option<Arc<Metrics>>,
    /// Rejected policies already logged, with their reasons.
    reported: BTreeMap<String, String>,
    /// Endpoints over their budget already logged, with their sizes.
    over_budget: BTreeMap<u32, usize>,
}

impl Controller {
    pub fn new(maps: PolicyMaps, names: Arc<PolicyNames>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            maps,
            numbers: Numbers::default(),
            names,
            metrics,
            reported: BTreeMap::new(),
            over_budget: BTreeMap::new(),
        }
    }

    /// Bumps the tables' revision: open connections are judged again on
    /// their next packet. After a pass that changed the tables or saw a
    /// new snapshot (identities may have moved: the ipcache is written
    /// first, see [`run`]).
    pub fn bump(&mut self) {
        if let Err(e) = self.maps.bump() {
            tracing::error!(error = %weir_error::report(&e), "policy revision not bumped: open connections keep their verdicts");
        }
    }

    /// One pass: compile, name, write. Errors are logged and the tables
    /// fail closed; returns whether the write succeeded.
    pub fn apply(&mut self, state: &ClusterState, endpoints: &[LocalEndpoint]) -> bool {
        let started = Instant::now();
        let compiled = compile_within(state, endpoints, &mut self.numbers, budget());
        self.names.update(&compiled.rules);
        self.report(&compiled);
        let want = &compiled.slots;
        let ok = match self.maps.sync(want, &compiled.cidrs) {
            Ok(stats) => {
                if stats.written + stats.removed > 0 {
                    tracing::debug!(written = stats.written, removed = stats.removed, slots = want.len(),
                        took = ?started.elapsed(), "policy tables synced");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %weir_error::report(&e), slots = want.len(),
                    "policy tables cannot be written: endpoints with policies deny everything until they can");
                if let Err(e) = self.maps.sync(&fallback(&compiled), &BTreeMap::new()) {
                    tracing::error!(error = %weir_error::report(&e), "policy fallback failed too");
                }
                false
            }
        };
        if let Some(m) = &self.metrics {
            m.set_policy_state(&compiled, want.len(), ok, started.elapsed());
        }
        ok
    }

    fn report(&mut self, c: &Compiled) {
        for (ep, slots) in &c.over_budget {
            if self.over_budget.get(ep) != Some(slots) {
                tracing::warn!(
                    endpoint = ep,
                    slots,
                    budget = SLOTS_PER_ENDPOINT,
                    "the policies selecting this endpoint do not fit the datapath: it is isolated (the node still reaches it) until they shrink"
                );
            }
        }
        self.over_budget = c.over_budget.clone();
        if let Some(m) = &self.metrics {
            m.over_budget(c.over_budget.len());
        }
        let mut now = BTreeMap::new();
        for r in &c.rejected {
            let key = r.id.to_string();
            if self.reported.get(&key) != Some(&r.reason) {
                tracing::warn!(policy = %key, reason = %r.reason,
                    "policy rejected: what of it cannot be read denies (never allows) until fixed");
            }
            now.insert(key, r.reason.clone());
        }
        for key in self.reported.keys().filter(|k| !now.contains_key(*k)) {
            tracing::info!(policy = %key, "policy no longer rejected");
        }
        self.reported = now;
    }
}

/// How long a pass waits for the ipcache controller before it bumps the
/// revision anyway.
const IPCACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The local endpoints, as the endpoints table lists them now.
pub type EndpointList = Arc<dyn Fn() -> Vec<LocalEndpoint> + Send + Sync>;

/// Whether the compiled tables can differ after `changes` (from `old` to
/// `new`), for this node's `endpoints`: policies, namespaces, identities
/// some policy's peer selects (`peers`, of `old`'s policies), the local
/// endpoints' pods, other pods' named ports.
pub fn changes_matter(
    changes: &Changes,
    old: &ClusterState,
    new: &ClusterState,
    endpoints: &[LocalEndpoint],
    peers: &weir_model::policy::PeerSelectors,
) -> bool {
    if changes.touches_policies() || changes.touches(Kind::Namespace) {
        return true;
    }
    let identity_selected = changes.of(Kind::WeirIdentity).any(|key| {
        [old.identities.get(key), new.identities.get(key)]
            .into_iter()
            .flatten()
            .any(|o| peers.select(new, &o.spec))
    });
    identity_selected
        || changes.of(Kind::Pod).any(|key| {
            endpoints.iter().any(|e| &e.pod == key)
                || weir_model::policy::pod_change_matters(
                    old.pods.get(key).map(|p| &**p),
                    new.pods.get(key).map(|p| &**p),
                )
        })
}

/// The controller as the runner drives it: on every snapshot and every
/// change of the local endpoints (a full pass). A snapshot that changes
/// nothing the compiler reads (a pod elsewhere without named ports, a
/// Service) compiles nothing: it only bumps the revision, once the
/// ipcache holds it (an address may have moved to another identity).
pub struct Reconciler {
    controller: Arc<std::sync::Mutex<Controller>>,
    endpoints: EndpointList,
    /// The model, to see whether a newer snapshot ends the wait for the
    /// ipcache.
    model: watch::Receiver<Arc<ClusterState>>,
    endpoints_changed: watch::Receiver<u64>,
    sync: Arc<SyncStatus>,
    last: Option<Arc<ClusterState>>,
    /// The peers of `last`'s policies.
    peers: Option<Arc<weir_model::policy::PeerSelectors>>,
}

impl Reconciler {
    pub fn new(
        controller: Arc<std::sync::Mutex<Controller>>,
        endpoints: EndpointList,
        model: watch::Receiver<Arc<ClusterState>>,
        endpoints_changed: watch::Receiver<u64>,
        sync: Arc<SyncStatus>,
    ) -> Self {
        Self {
            controller,
            endpoints,
            model,
            endpoints_changed,
            sync,
            last: None,
            peers: None,
        }
    }
}

impl crate::reconcile::Reconciler for Reconciler {
    fn name(&self) -> &'static str {
        "policy"
    }

    async fn reconcile(&mut self, pass: Pass) -> Action {
        let generation = *self.endpoints_changed.borrow();
        let state = pass.state.clone();
        let (c, eps, last, peers) = (
            self.controller.clone(),
            self.endpoints.clone(),
            self.last.take(),
            self.peers.take(),
        );
        let (ok, peers) = blocking(move || {
            let list = eps();
            let (matters, peers) = match (&pass.changes, &last, peers) {
                (Some(changes), Some(old), Some(peers)) => {
                    let matters = changes_matter(changes, old, &pass.state, &list, &peers);
                    let stale = changes.touches_policies() || changes.touches(Kind::Namespace);
                    (matters, (!stale).then_some(peers))
                }
                _ => (true, None),
            };
            let peers = peers.unwrap_or_else(|| Arc::new(weir_model::policy::PeerSelectors::of(&pass.state)));
            let ok = !matters || c.lock().unwrap_or_else(|p| p.into_inner()).apply(&pass.state, &list);
            (ok, peers)
        })
        .await;
        self.peers = Some(peers);
        // Open connections are judged again once the ipcache holds this
        // snapshot's identities too (else a re-judged one could keep a
        // verdict made with a pod's old identity). Revisions are opaque
        // (standalone: a hash of the manifests): equal or not. A newer
        // snapshot ends the wait: its pass bumps again. Waited here, on
        // the async side: a blocking thread is not held for it.
        let deadline = Instant::now() + IPCACHE_WAIT;
        while self.sync.ipcache() != state.revision
            && self.model.borrow().revision == state.revision
            && Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (c, sync, revision) = (self.controller.clone(), self.sync.clone(), state.revision);
        blocking(move || {
            c.lock().unwrap_or_else(|p| p.into_inner()).bump();
            if ok {
                sync.policy_applied(revision, generation);
            }
        })
        .await;
        if ok {
            self.last = Some(state);
            Action::Done
        } else {
            Action::Retry("the policy tables could not be written".into())
        }
    }
}

/// Runs the controller until the model's sender goes.
pub async fn run(
    controller: Arc<std::sync::Mutex<Controller>>,
    endpoints: EndpointList,
    rx: watch::Receiver<Arc<ClusterState>>,
    endpoints_changed: watch::Receiver<u64>,
    sync: Arc<SyncStatus>,
) {
    let r = Reconciler::new(controller, endpoints, rx.clone(), endpoints_changed.clone(), sync);
    let opts = crate::reconcile::Options {
        extra: Some(endpoints_changed),
        ..Default::default()
    };
    crate::reconcile::run(r, rx, opts).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_isolates_endpoints_with_policies_and_lets_the_node_in() {
        let mut c = Compiled::default();
        let slot = weir_model::policy::Slot {
            endpoint_id: 7,
            direction: 0,
            peer: 300,
            proto: 6,
            port: 80,
            port_bits: 16,
        };
        c.slots.insert(slot, Default::default());
        let f = fallback(&c);
        let deny = f
            .values()
            .filter(|v| v.action == weir_datapath::policy::action::DEFAULT_DENY);
        assert_eq!(deny.count(), 2, "both directions of endpoint 7: {f:?}");
        let host = f
            .iter()
            .find(|(s, _)| s.peer == weir_datapath::ipcache::ID_HOST)
            .expect("the node's way in");
        assert_eq!((host.0.endpoint_id, host.0.direction), (7, 0));
        assert_eq!(host.1.action, weir_datapath::policy::action::ALLOW);
        assert_eq!(f.len(), 3, "nothing else");
    }

    #[test]
    fn only_changes_the_compiler_reads_compile() {
        let mut old = ClusterState::default();
        let errors = weir_model::parse_manifests(
            &mut old,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: d}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: srv, namespace: d, labels: {app: srv}}
spec: {containers: []}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let local = [LocalEndpoint {
            endpoint_id: 7,
            pod: weir_model::ObjectKey::new("d", "srv"),
        }];
        let peers = weir_model::policy::PeerSelectors::of(&old);
        let with = |yaml: &str| {
            let mut s = old.clone();
            assert!(weir_model::parse_manifests(&mut s, yaml).is_empty());
            let c = Changes::between(&old, &s);
            changes_matter(&c, &old, &s, &local, &peers)
        };
        let identity = |app: &str| {
            format!(
                "apiVersion: weir.dev/v1alpha1\nkind: WeirIdentity\nmetadata: {{name: \"300\"}}\nspec: {{namespace: d, labels: {{app: {app}}}}}\n"
            )
        };
        assert!(!with(&identity("b")), "an identity no peer selects");
        assert!(with(&identity("a")), "one a peer selects");
        let pod = |name: &str, ports: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: d, labels: {{app: b}}}}\nspec: {{containers: [{{name: c, ports: [{ports}]}}]}}\n"
            )
        };
        assert!(!with(&pod("other", "")), "a pod elsewhere without named ports");
        assert!(with(&pod("other", "{name: http, containerPort: 80}")), "named ports");
        assert!(with(&pod("srv", "")), "this node's endpoint");
        assert!(with(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: d, labels: {x: y}}\n"
        ));
    }
}
