//! Which Service may serve on which external address. A Service's
//! `spec.externalIPs` and `status.loadBalancer.ingress[].ip` are claims
//! any user who can write a Service (or its status) makes: left unchecked,
//! one listing another Service's ClusterIP, or a node's address, takes that
//! address's traffic (CVE-2020-8554). Agents (which program the frontends)
//! and the operator (which reports the refusals on the Services) judge the
//! claims with this one function, so they agree.
//!
//! The rules: an external address is never a ClusterIP or a node's address
//! (those are what the cluster serves itself); two Services claiming the
//! same address, port and protocol resolve to the older (creation time,
//! then namespace and name: deterministic on every node).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::state::{ClusterState, ObjectKey};

/// An external frontend: address, port and protocol (`TCP`, `UDP`, `SCTP`).
pub type Frontend = (Ipv4Addr, u16, String);

/// The judgement on every external frontend of the cluster.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExternalFrontends {
    /// Who holds each frontend claimed and not refused.
    pub held: BTreeMap<Frontend, ObjectKey>,
    /// The claims refused, in the order of the Services that made them.
    pub refused: Vec<Refused>,
}

/// A Service's claim that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub service: ObjectKey,
    pub frontend: Frontend,
    pub reason: String,
}

impl ExternalFrontends {
    /// Whether `service` serves on `frontend`.
    pub fn holds(&self, service: &ObjectKey, frontend: &Frontend) -> bool {
        self.held.get(frontend) == Some(service)
    }
}

/// Judges every Service's external addresses (see the module's rules).
pub fn external_frontends(state: &ClusterState) -> ExternalFrontends {
    // Only Services with external addresses claim anything; most have
    // none, and this runs whenever a Service changes: the rest of the
    // cluster is read only for the addresses claimed.
    let mut services: Vec<_> = state
        .services
        .iter()
        .filter(|(_, svc)| {
            svc.spec
                .as_ref()
                .is_some_and(|s| s.type_.as_deref() != Some("ExternalName"))
        })
        .map(|(key, svc)| (key, svc, crate::service_external_ips(svc)))
        .filter(|(_, _, ips)| !ips.is_empty())
        .collect();
    if services.is_empty() {
        return ExternalFrontends::default();
    }
    let claimed: std::collections::BTreeSet<Ipv4Addr> =
        services.iter().flat_map(|(_, _, ips)| ips.iter().copied()).collect();
    let mut reserved: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (key, node) in &state.nodes {
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addresses.into_iter().flatten() {
            if let Ok(ip) = a.address.parse::<Ipv4Addr>()
                && claimed.contains(&ip)
            {
                reserved.insert(ip, format!("is the address of node {}", key.name));
            }
        }
    }
    for (key, svc) in &state.services {
        let spec = svc.spec.as_ref();
        let ips = spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.and_then(|s| s.cluster_ip.as_ref()));
        for ip in ips.filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
            if claimed.contains(&ip) {
                reserved.insert(
                    ip,
                    format!("is the ClusterIP of Service {}/{}", key.namespace, key.name),
                );
            }
        }
    }
    // Oldest first: the first claim of a frontend keeps it.
    services.sort_by(|(ka, a, _), (kb, b, _)| {
        (&a.metadata.creation_timestamp, ka).cmp(&(&b.metadata.creation_timestamp, kb))
    });
    let mut out = ExternalFrontends::default();
    for (key, svc, ips) in services {
        let Some(spec) = svc.spec.as_ref() else { continue };
        for sp in spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(sp.port) else { continue };
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            for ip in &ips {
                let frontend = (*ip, port, protocol.clone());
                let reason = if let Some(why) = reserved.get(ip) {
                    Some(why.clone())
                } else {
                    match out.held.get(&frontend) {
                        Some(holder) if holder != key => Some(format!(
                            "is held by the older Service {}/{}",
                            holder.namespace, holder.name
                        )),
                        _ => None,
                    }
                };
                match reason {
                    Some(reason) => {
                        let refused = Refused {
                            service: key.clone(),
                            frontend,
                            reason,
                        };
                        if !out.refused.contains(&refused) {
                            out.refused.push(refused);
                        }
                    }
                    None => {
                        out.held.insert(frontend, key.clone());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_manifests;

    fn service(name: &str, ns: &str, created: &str, cluster_ip: &str, external: &str) -> String {
        format!(
            "kind: Service\napiVersion: v1\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec: {{clusterIP: {cluster_ip}, ports: [{{port: 53, protocol: UDP}}, {{port: 80}}], externalIPs: [{external}]}}\n---\n"
        )
    }

    #[test]
    fn a_service_cannot_take_a_cluster_ip_a_node_address_or_an_older_claim() {
        let mut s = ClusterState::default();
        let text = [
            "kind: Node\napiVersion: v1\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 172.30.0.11}]}\n---\n".to_string(),
            service("dns", "kube-system", "2026-01-01T00:00:00Z", "10.96.0.10", ""),
            service("web", "shop", "2026-01-02T00:00:00Z", "10.96.0.20", "192.0.2.10"),
            // Later: the DNS ClusterIP, a node's address, web's address.
            service("evil", "tenant", "2026-01-03T00:00:00Z", "10.96.0.30", "10.96.0.10, 172.30.0.11, 192.0.2.10, 192.0.2.99"),
        ]
        .concat();
        let errors = parse_manifests(&mut s, &text);
        assert!(errors.is_empty(), "{errors:?}");
        let f = external_frontends(&s);
        let web = ObjectKey::new("shop", "web");
        let evil = ObjectKey::new("tenant", "evil");
        let tcp = |ip: [u8; 4]| (Ipv4Addr::from(ip), 80, "TCP".to_string());
        assert!(f.holds(&web, &tcp([192, 0, 2, 10])), "the older claim keeps it");
        assert!(!f.holds(&evil, &tcp([192, 0, 2, 10])));
        assert!(
            f.holds(&evil, &tcp([192, 0, 2, 99])),
            "an address nobody else has is served"
        );
        let why: Vec<(u16, &str)> = f
            .refused
            .iter()
            .filter(|r| r.frontend.0 != Ipv4Addr::new(192, 0, 2, 99))
            .map(|r| (r.frontend.1, r.reason.as_str()))
            .collect();
        assert_eq!(
            why,
            vec![
                (53, "is the ClusterIP of Service kube-system/dns"),
                (53, "is the address of node n1"),
                (53, "is held by the older Service shop/web"),
                (80, "is the ClusterIP of Service kube-system/dns"),
                (80, "is the address of node n1"),
                (80, "is held by the older Service shop/web"),
            ]
        );
        assert!(f.refused.iter().all(|r| r.service == evil));
    }
}
