//! What would the policy say about a connection: the compiler's tables for
//! one cluster state, every pod a local endpoint, judged as the datapath
//! judges (egress at the client's pod, ingress at the server's; a deny on
//! either side decides). `weir policy check` asks it of every recorded
//! connection twice, under the policies as they are and as a change would
//! make them, and reports the connections whose verdict would change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::compile::{Compiled, LocalEndpoint, Numbers, RuleRef, VerdictKind, compile};
use super::parse::Direction;
use crate::Object;
use crate::identity::{self, IdentityKey, WeirIdentity};
use crate::state::{ClusterState, ObjectKey};

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The pod, when the end is one (then its identity comes from the
    /// state judged, which a change may relabel).
    pub pod: Option<ObjectKey>,
    /// The identity when the end is not a pod (world, host, a node).
    pub identity: u32,
    pub addr: Ipv4Addr,
}

/// A connection, as its first packet reached the server (after any
/// service translation): client, server, IP protocol and server port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub client: End,
    pub server: End,
    pub proto: u8,
    pub port: u16,
}

/// What the policy decides for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Allowed only because the denying policy is in audit mode.
    pub audit: bool,
    /// The deciding rule: the one that denied it, else the one that
    /// allowed it (`None`: no policy selects either end).
    pub rule: Option<RuleRef>,
}

/// The tables of one cluster state, ready to judge.
pub struct Judge {
    compiled: Compiled,
    endpoints: BTreeMap<ObjectKey, u32>,
    identities: BTreeMap<ObjectKey, u32>,
}

/// `state` with an identity for every pod's label set, numbered as the
/// operator would number them: a change may bring labels no pod had yet.
fn with_identities(state: &ClusterState) -> ClusterState {
    let wanted: BTreeSet<IdentityKey> = state.pods.values().map(|p| IdentityKey::of_pod(p)).collect();
    let mut out = state.clone();
    if let Ok(plan) = identity::plan(&state.identity_table(), &wanted) {
        for (id, key) in plan.create {
            out.insert(Object::WeirIdentity(WeirIdentity::numbered(id, key)));
        }
    }
    out
}

impl Judge {
    pub fn new(state: &ClusterState) -> Self {
        let state = &with_identities(state);
        let mut endpoints = BTreeMap::new();
        let mut locals = Vec::new();
        let mut identities = BTreeMap::new();
        for (i, (key, pod)) in state.pods.iter().enumerate() {
            let id = i as u32 + 1;
            endpoints.insert(key.clone(), id);
            identities.insert(key.clone(), state.pod_identity(pod));
            locals.push(LocalEndpoint {
                endpoint_id: id,
                pod: key.clone(),
            });
        }
        let compiled = compile(state, &locals, &mut Numbers::default());
        Self {
            compiled,
            endpoints,
            identities,
        }
    }

    /// The policies this state holds that the compiler refused, with why.
    pub fn rejected(&self) -> impl Iterator<Item = (String, &str)> {
        self.compiled
            .rejected
            .iter()
            .map(|r| (r.id.to_string(), r.reason.as_str()))
    }

    fn identity(&self, e: &End) -> u32 {
        e.pod
            .as_ref()
            .and_then(|p| self.identities.get(p))
            .copied()
            .unwrap_or(e.identity)
    }

    fn side(&self, at: &End, d: Direction, peer: &End, c: &Connection) -> Option<(VerdictKind, Option<RuleRef>)> {
        let id = *self.endpoints.get(at.pod.as_ref()?)?;
        let (judged, reference) = self
            .compiled
            .judge(id, d, self.identity(peer), peer.addr, c.proto, c.port);
        Some((judged, self.compiled.rules.get(&reference).cloned()))
    }

    pub fn decide(&self, c: &Connection) -> Decision {
        let egress = self.side(&c.client, Direction::Egress, &c.server, c);
        let ingress = self.side(&c.server, Direction::Ingress, &c.client, c);
        let sides = [egress, ingress];
        let denied = sides
            .iter()
            .flatten()
            .find(|(j, _)| matches!(j, VerdictKind::Denied | VerdictKind::Deny));
        if let Some((_, rule)) = denied {
            return Decision {
                allowed: false,
                audit: false,
                rule: rule.clone(),
            };
        }
        let audited = sides.iter().flatten().find(|(j, _)| *j == VerdictKind::Audit);
        let allowing = sides.iter().flatten().rev().find(|(j, _)| *j == VerdictKind::Allow);
        Decision {
            allowed: true,
            audit: audited.is_some(),
            rule: audited.or(allowing).and_then(|(_, r)| r.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::parse_manifests;

    const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: front, namespace: shop, labels: {app: front}}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
status: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}
"#;

    const ONLY_FRONT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cart-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: cart}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: front}}}]
      ports: [{port: 8080}]
"#;

    fn state(docs: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for d in docs {
            assert!(parse_manifests(&mut s, d).is_empty());
        }
        s
    }

    fn pod(name: &str, addr: [u8; 4]) -> End {
        End {
            pod: Some(ObjectKey::new("shop", name)),
            identity: 0,
            addr: Ipv4Addr::from(addr),
        }
    }

    fn front_to_cart(port: u16) -> Connection {
        Connection {
            client: pod("front", [10, 0, 0, 1]),
            server: pod("cart", [10, 0, 0, 2]),
            proto: 6,
            port,
        }
    }

    #[test]
    fn no_policy_allows_and_a_policy_names_its_rule() {
        let open = Judge::new(&state(&[PODS]));
        assert_eq!(
            open.decide(&front_to_cart(8080)),
            Decision {
                allowed: true,
                audit: false,
                rule: None
            }
        );
        let guarded = Judge::new(&state(&[PODS, ONLY_FRONT]));
        let ok = guarded.decide(&front_to_cart(8080));
        assert!(ok.allowed);
        assert_eq!(
            ok.rule.map(|r| r.text()).as_deref(),
            Some("NetworkPolicy shop/cart-in ingress[0]")
        );
        let no = guarded.decide(&front_to_cart(9090));
        assert!(!no.allowed);
        assert_eq!(
            no.rule.map(|r| r.text()).as_deref(),
            Some("NetworkPolicy shop/cart-in default deny (ingress isolated)")
        );
        let world = Connection {
            client: End {
                pod: None,
                identity: crate::identity::WORLD,
                addr: Ipv4Addr::new(192, 0, 2, 1),
            },
            ..front_to_cart(8080)
        };
        assert!(!guarded.decide(&world).allowed, "only the front may reach the cart");
    }
}
