//! What kube-apiserver does to a Service on create and update: defaults, a
//! ClusterIP from the service CIDR, NodePorts from 30000-32767 and (when the
//! topology has a `loadBalancerCIDR`) a LoadBalancer ingress IP.
//!
//! Pure: the Services the lab already holds are the allocation record (as
//! etcd is for the apiserver's repair loop), so nothing can drift from them,
//! and deleting a Service releases what it held.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The default `--service-node-port-range` of kube-apiserver.
pub const NODE_PORT_RANGE: RangeInclusive<i32> = 30000..=32767;

/// Why a Service cannot be admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// `spec.type` is not one of the four Kubernetes types.
    #[error("spec.type {0:?}: must be ClusterIP, NodePort, LoadBalancer or ExternalName")]
    BadType(String),
    /// `spec.clusterIP` is neither an IPv4 address nor `None`.
    #[error("spec.clusterIP {0:?}: not an IPv4 address or \"None\"")]
    BadIp(String),
    /// A requested address is outside the range it must come from.
    #[error("{field} {ip}: not a usable address of {cidr}")]
    OutOfRange {
        field: &'static str,
        ip: Ipv4Addr,
        cidr: Ipv4Net,
    },
    /// A requested address belongs to another Service.
    #[error("{field} {ip}: already allocated to service {owner}")]
    IpTaken {
        field: &'static str,
        ip: Ipv4Addr,
        owner: String,
    },
    /// An existing Service's ClusterIP cannot change.
    #[error("spec.clusterIP: field is immutable (is {old}, requested {new})")]
    Immutable { old: String, new: String },
    /// Headless makes no sense for a Service reached on node ports.
    #[error("spec.clusterIP: may not be \"None\" for type {0}")]
    HeadlessNodePort(String),
    /// No free address left.
    #[error("{0} is full")]
    Exhausted(String),
    /// A requested node port is outside 30000-32767.
    #[error("spec.ports[{index}].nodePort {port}: outside 30000-32767")]
    NodePortOutOfRange { index: usize, port: i32 },
    /// A requested node port belongs to another Service (or port).
    #[error("spec.ports[{index}].nodePort {port}: already allocated to {owner}")]
    NodePortTaken { index: usize, port: i32, owner: String },
    /// `nodePort` on a type that has none.
    #[error("spec.ports[{index}].nodePort: may not be used when type is {type_}")]
    NodePortNotAllowed { index: usize, type_: String },
    /// A port number outside 1-65535.
    #[error("spec.ports[{index}].port {port}: must be 1-65535")]
    BadPort { index: usize, port: i32 },
    /// Services other than ExternalName and headless need ports.
    #[error("spec.ports: required for type {0}")]
    NoPorts(String),
}

/// The address ranges Services draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub service_cidr: Ipv4Net,
    pub load_balancer_cidr: Option<Ipv4Net>,
}

/// Everything held by the Services of the lab, with the owner of each item.
#[derive(Debug, Default, Clone)]
pub struct Allocations {
    cluster_ips: BTreeMap<Ipv4Addr, String>,
    node_ports: BTreeMap<i32, String>,
    lb_ips: BTreeMap<Ipv4Addr, String>,
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Allocations {
    /// What `services` hold, leaving out the Service `skip` (`ns/name`), which is being re-admitted.
    pub fn from_services<'a>(services: impl IntoIterator<Item = &'a Service>, skip: Option<&str>) -> Self {
        let mut a = Allocations::default();
        for svc in services {
            if skip != Some(key(svc).as_str()) {
                a.hold(svc);
            }
        }
        a
    }

    /// Records what `svc` holds.
    pub fn hold(&mut self, svc: &Service) {
        let owner = key(svc);
        for item in held_by(svc) {
            match item {
                Held::ClusterIp(ip) => self.cluster_ips.insert(ip, owner.clone()),
                Held::NodePort(np) => self.node_ports.insert(np, owner.clone()),
                Held::LbIp(ip) => self.lb_ips.insert(ip, owner.clone()),
            };
        }
    }

    /// Releases what `svc` holds (only items it owns), e.g. before re-admitting it.
    pub fn release(&mut self, svc: &Service) {
        let owner = key(svc);
        for item in held_by(svc) {
            let owned_by = match item {
                Held::ClusterIp(ip) => self.cluster_ips.get(&ip),
                Held::NodePort(np) => self.node_ports.get(&np),
                Held::LbIp(ip) => self.lb_ips.get(&ip),
            };
            if owned_by == Some(&owner) {
                match item {
                    Held::ClusterIp(ip) => self.cluster_ips.remove(&ip),
                    Held::NodePort(np) => self.node_ports.remove(&np),
                    Held::LbIp(ip) => self.lb_ips.remove(&ip),
                };
            }
        }
    }
}

enum Held {
    ClusterIp(Ipv4Addr),
    NodePort(i32),
    LbIp(Ipv4Addr),
}

fn held_by(svc: &Service) -> Vec<Held> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for ip in spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()) {
        if let Ok(ip) = ip.parse() {
            out.push(Held::ClusterIp(ip));
        }
    }
    for p in spec.ports.iter().flatten() {
        if let Some(np) = p.node_port.filter(|n| *n != 0) {
            out.push(Held::NodePort(np));
        }
    }
    for ing in lb_ingress(svc) {
        if let Some(ip) = ing.ip.as_deref().and_then(|i| i.parse().ok()) {
            out.push(Held::LbIp(ip));
        }
    }
    out
}

fn lb_ingress(svc: &Service) -> impl Iterator<Item = &LoadBalancerIngress> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
}

/// Usable addresses of a range: without network and broadcast, and (for the
/// service CIDR) without `.1`, which by convention is the `kubernetes` Service.
fn usable(cidr: Ipv4Net, skip_first: bool) -> RangeInclusive<u32> {
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    if cidr.prefix_len() >= 31 {
        return net..=bcast;
    }
    net + if skip_first { 2 } else { 1 }..=bcast - 1
}

fn in_cidr(cidr: Ipv4Net, ip: Ipv4Addr) -> bool {
    let u = u32::from(ip);
    cidr.contains(&ip)
        && (cidr.prefix_len() >= 31 || (u != u32::from(cidr.network()) && u != u32::from(cidr.broadcast())))
}

fn next_free(range: RangeInclusive<u32>, used: &BTreeMap<Ipv4Addr, String>) -> Option<Ipv4Addr> {
    range.map(Ipv4Addr::from).find(|ip| !used.contains_key(ip))
}

/// Default, validate and allocate: turn a Service as applied into the
/// Service as the API server stores it. `old` is the stored version when
/// this is an update; what it was allocated is kept.
pub fn admit(svc: &mut Service, old: Option<&Service>, ranges: &Ranges, held: &Allocations) -> Result<(), AllocError> {
    let old_spec = old.and_then(|o| o.spec.clone()).unwrap_or_default();
    let spec = svc.spec.get_or_insert_with(Default::default);
    let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    if !matches!(
        type_.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(AllocError::BadType(type_));
    }
    let node_ports = matches!(type_.as_str(), "NodePort" | "LoadBalancer");

    // Ports: defaults as the apiserver fills them.
    for (index, p) in spec.ports.iter_mut().flatten().enumerate() {
        if !(1..=65535).contains(&p.port) {
            return Err(AllocError::BadPort { index, port: p.port });
        }
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() || p.target_port == Some(IntOrString::Int(0)) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
        if !node_ports && p.node_port.is_some_and(|n| n != 0) {
            return Err(AllocError::NodePortNotAllowed {
                index,
                type_: type_.clone(),
            });
        }
    }
    spec.session_affinity.get_or_insert_with(|| "None".into());

    if type_ == "ExternalName" {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        svc.status.get_or_insert_with(empty_status);
        return Ok(());
    }
    spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
    if node_ports {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
    } else {
        spec.external_traffic_policy = None;
    }
    if type_ == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }

    // ClusterIP.
    let requested = spec
        .cluster_ip
        .clone()
        .or_else(|| spec.cluster_ips.as_ref().and_then(|v| v.first().cloned()))
        .filter(|s| !s.is_empty());
    let previous = old_spec.cluster_ip.clone().filter(|s| !s.is_empty());
    let ip = match (requested, previous) {
        (None, Some(prev)) => prev,
        (Some(req), Some(prev)) if req != prev => return Err(AllocError::Immutable { old: prev, new: req }),
        (Some(req), _) if req == "None" => req,
        (Some(req), _) => {
            let ip: Ipv4Addr = req.parse().map_err(|_| AllocError::BadIp(req.clone()))?;
            if !in_cidr(ranges.service_cidr, ip) {
                return Err(AllocError::OutOfRange {
                    field: "spec.clusterIP",
                    ip,
                    cidr: ranges.service_cidr,
                });
            }
            if let Some(owner) = held.cluster_ips.get(&ip) {
                return Err(AllocError::IpTaken {
                    field: "spec.clusterIP",
                    ip,
                    owner: owner.clone(),
                });
            }
            req
        }
        (None, None) => next_free(usable(ranges.service_cidr, true), &held.cluster_ips)
            .ok_or_else(|| AllocError::Exhausted(format!("serviceCIDR {}", ranges.service_cidr)))?
            .to_string(),
    };
    if ip == "None" && node_ports {
        return Err(AllocError::HeadlessNodePort(type_));
    }
    if ip != "None" && spec.ports.as_ref().is_none_or(Vec::is_empty) {
        return Err(AllocError::NoPorts(type_));
    }
    spec.cluster_ips = Some(vec![ip.clone()]);
    spec.cluster_ip = Some(ip);
    spec.ip_families = Some(vec!["IPv4".into()]);
    spec.ip_family_policy = Some("SingleStack".into());

    // NodePorts: requested ones checked, the previous ones kept, ports with the
    // same number (TCP and UDP 53, say) share one, the rest get the lowest free.
    if node_ports {
        assign_node_ports(spec, &old_spec, held)?;
    }

    // LoadBalancer ingress.
    let mut status = empty_status();
    if type_ == "LoadBalancer"
        && let Some(cidr) = ranges.load_balancer_cidr
    {
        let previous = old
            .into_iter()
            .flat_map(lb_ingress)
            .find_map(|i| i.ip.as_deref()?.parse().ok());
        let requested = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty());
        let ip = match (requested, previous) {
            (Some(req), _) => {
                let ip: Ipv4Addr = req.parse().map_err(|_| AllocError::BadIp(req.into()))?;
                if !in_cidr(cidr, ip) {
                    return Err(AllocError::OutOfRange {
                        field: "spec.loadBalancerIP",
                        ip,
                        cidr,
                    });
                }
                if let Some(owner) = held.lb_ips.get(&ip) {
                    return Err(AllocError::IpTaken {
                        field: "spec.loadBalancerIP",
                        ip,
                        owner: owner.clone(),
                    });
                }
                ip
            }
            (None, Some(prev)) => prev,
            (None, None) => next_free(usable(cidr, false), &held.lb_ips)
                .ok_or_else(|| AllocError::Exhausted(format!("loadBalancerCIDR {cidr}")))?,
        };
        status.load_balancer = Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            }]),
        });
    }
    svc.status = Some(status);
    Ok(())
}

fn empty_status() -> ServiceStatus {
    ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..Default::default()
    }
}

fn assign_node_ports(
    spec: &mut k8s_openapi::api::core::v1::ServiceSpec,
    old_spec: &k8s_openapi::api::core::v1::ServiceSpec,
    held: &Allocations,
) -> Result<(), AllocError> {
    let ports = spec.ports.get_or_insert_with(Vec::new);
    // Pass 1: explicit ones.
    let mut mine: BTreeMap<i32, (i32, String)> = BTreeMap::new(); // nodePort -> (port, protocol)
    for (index, p) in ports.iter().enumerate() {
        let Some(np) = p.node_port.filter(|n| *n != 0) else {
            continue;
        };
        if !NODE_PORT_RANGE.contains(&np) {
            return Err(AllocError::NodePortOutOfRange { index, port: np });
        }
        if let Some(owner) = held.node_ports.get(&np) {
            return Err(AllocError::NodePortTaken {
                index,
                port: np,
                owner: format!("service {owner}"),
            });
        }
        let proto = p.protocol.clone().unwrap_or_default();
        if let Some((_, other)) = mine.get(&np).filter(|(_, pr)| *pr == proto) {
            return Err(AllocError::NodePortTaken {
                index,
                port: np,
                owner: format!("another {other} port of this service"),
            });
        }
        mine.insert(np, (p.port, proto));
    }
    // Pass 2: keep previous ones, share by port number, allocate.
    let previous: Vec<(Option<String>, i32, String, i32)> = old_spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
                p.node_port.filter(|n| *n != 0)?,
            ))
        })
        .collect();
    let mut by_port: BTreeMap<i32, i32> = ports
        .iter()
        .filter_map(|p| Some((p.port, p.node_port.filter(|n| *n != 0)?)))
        .collect();
    let mut taken: BTreeSet<i32> = held.node_ports.keys().copied().chain(mine.keys().copied()).collect();
    for p in ports.iter_mut().filter(|p| p.node_port.is_none_or(|n| n == 0)) {
        let proto = p.protocol.clone().unwrap_or_default();
        let kept = previous
            .iter()
            .find(|(_, port, pr, _)| *port == p.port && *pr == proto)
            .or_else(|| {
                previous
                    .iter()
                    .find(|(name, _, pr, _)| name.is_some() && *name == p.name && *pr == proto)
            })
            .map(|(_, _, _, np)| *np)
            .filter(|np| !held.node_ports.contains_key(np));
        let np = match kept.or_else(|| by_port.get(&p.port).copied()) {
            Some(np) => np,
            None => NODE_PORT_RANGE
                .clone()
                .find(|n| !taken.contains(n))
                .ok_or_else(|| AllocError::Exhausted("the node port range 30000-32767".into()))?,
        };
        taken.insert(np);
        by_port.entry(p.port).or_insert(np);
        p.node_port = Some(np);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Ranges {
        Ranges {
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            load_balancer_cidr: Some("172.31.0.0/30".parse().unwrap()),
        }
    }

    fn svc(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn admitted(yaml: &str, held: &[Service]) -> Result<Service, AllocError> {
        let mut s = svc(yaml);
        let k = key(&s);
        let old = held.iter().find(|o| key(o) == k);
        admit(&mut s, old, &ranges(), &Allocations::from_services(held, Some(&k)))?;
        Ok(s)
    }

    const WEB: &str = "metadata: {name: web, namespace: demo}\nspec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]}";

    #[test]
    fn allocates_the_next_free_cluster_ip_skipping_dot_one() {
        let a = admitted(WEB, &[]).unwrap();
        let spec = a.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.2"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.96.0.2".to_string()]));
        assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        let ports = spec.ports.as_ref().unwrap();
        assert_eq!(
            ports[1].target_port,
            Some(IntOrString::Int(53)),
            "targetPort defaults to port"
        );
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(ports[0].node_port, None);
        let b = admitted(
            "metadata: {name: b, namespace: demo}\nspec: {ports: [{port: 1}]}",
            std::slice::from_ref(&a),
        )
        .unwrap();
        assert_eq!(b.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.3"));
    }

    #[test]
    fn honours_explicit_ips_and_keeps_them_on_reapply() {
        let a = admitted(
            "metadata: {name: a}\nspec: {clusterIP: 10.96.7.7, ports: [{port: 80}]}",
            &[],
        )
        .unwrap();
        assert_eq!(a.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.7.7"));
        let clash = admitted(
            "metadata: {name: b}\nspec: {clusterIP: 10.96.7.7, ports: [{port: 80}]}",
            std::slice::from_ref(&a),
        );
        assert!(
            matches!(clash, Err(AllocError::IpTaken { ref owner, .. }) if owner == "default/a"),
            "{clash:?}"
        );
        let out = admitted(
            "metadata: {name: b}\nspec: {clusterIP: 10.97.0.5, ports: [{port: 80}]}",
            std::slice::from_ref(&a),
        );
        assert!(matches!(out, Err(AllocError::OutOfRange { .. })), "{out:?}");
        let net = admitted(
            "metadata: {name: b}\nspec: {clusterIP: 10.96.0.0, ports: [{port: 80}]}",
            &[],
        );
        assert!(matches!(net, Err(AllocError::OutOfRange { .. })), "{net:?}");
        // Re-applying without clusterIP keeps it; asking for another is refused.
        let again = admitted(
            "metadata: {name: a}\nspec: {ports: [{port: 81}]}",
            std::slice::from_ref(&a),
        )
        .unwrap();
        assert_eq!(again.spec.unwrap().cluster_ip.as_deref(), Some("10.96.7.7"));
        let moved = admitted(
            "metadata: {name: a}\nspec: {clusterIP: 10.96.7.8, ports: [{port: 80}]}",
            &[a],
        );
        assert!(matches!(moved, Err(AllocError::Immutable { .. })), "{moved:?}");
    }

    #[test]
    fn headless_gets_no_address() {
        let h = admitted("metadata: {name: h}\nspec: {clusterIP: None, selector: {app: x}}", &[]).unwrap();
        let spec = h.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.cluster_ips, Some(vec!["None".to_string()]));
        let np = admitted(
            "metadata: {name: h}\nspec: {type: NodePort, clusterIP: None, ports: [{port: 80}]}",
            &[],
        );
        assert!(matches!(np, Err(AllocError::HeadlessNodePort(_))), "{np:?}");
        // Another service still gets .2: "None" holds nothing.
        let next = admitted("metadata: {name: n}\nspec: {ports: [{port: 80}]}", &[h]).unwrap();
        assert_eq!(next.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.2"));
    }

    #[test]
    fn released_when_the_service_is_gone() {
        let a = admitted(WEB, &[]).unwrap();
        let b = admitted("metadata: {name: b}\nspec: {ports: [{port: 80}]}", &[a]).unwrap();
        assert_eq!(b.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.3"));
        let c = admitted("metadata: {name: c}\nspec: {ports: [{port: 80}]}", &[]).unwrap();
        assert_eq!(c.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.2"));
    }

    #[test]
    fn node_ports_unique_explicit_honoured_and_kept() {
        let a = admitted(
            "metadata: {name: a}\nspec: {type: NodePort, ports: [{name: http, port: 80}, {name: dns-tcp, port: 53}, {name: dns, port: 53, protocol: UDP}]}",
            &[],
        )
        .unwrap();
        let nps: Vec<_> = a
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port.unwrap())
            .collect();
        assert_eq!(nps, [30000, 30001, 30001], "53/TCP and 53/UDP share one node port");
        assert_eq!(
            a.spec.as_ref().unwrap().external_traffic_policy.as_deref(),
            Some("Cluster")
        );
        let b = admitted(
            "metadata: {name: b}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 31000}, {port: 81}]}",
            std::slice::from_ref(&a),
        )
        .unwrap();
        let nps: Vec<_> = b
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port.unwrap())
            .collect();
        assert_eq!(nps, [31000, 30002]);
        let held = [a.clone(), b.clone()];
        let clash = admitted(
            "metadata: {name: c}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30001}]}",
            &held,
        );
        assert!(matches!(clash, Err(AllocError::NodePortTaken { .. })), "{clash:?}");
        let out = admitted(
            "metadata: {name: c}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}",
            &held,
        );
        assert!(matches!(out, Err(AllocError::NodePortOutOfRange { .. })), "{out:?}");
        let cip = admitted(
            "metadata: {name: c}\nspec: {ports: [{port: 80, nodePort: 30500}]}",
            &held,
        );
        assert!(matches!(cip, Err(AllocError::NodePortNotAllowed { .. })), "{cip:?}");
        // Re-apply of b with the ports reordered and no nodePorts: same ones kept.
        let again = admitted(
            "metadata: {name: b}\nspec: {type: NodePort, ports: [{port: 81}, {port: 80}]}",
            &held,
        )
        .unwrap();
        let nps: Vec<_> = again
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.node_port.unwrap())
            .collect();
        assert_eq!(nps, [30002, 31000]);
        assert_eq!(again.spec.unwrap().cluster_ip, b.spec.unwrap().cluster_ip);
    }

    #[test]
    fn load_balancer_ingress_from_the_pool() {
        let a = admitted(
            "metadata: {name: a}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
            &[],
        )
        .unwrap();
        let ing = &a
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0];
        assert_eq!(ing.ip.as_deref(), Some("172.31.0.1"));
        assert!(a.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port.is_some());
        let b = admitted(
            "metadata: {name: b}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
            std::slice::from_ref(&a),
        )
        .unwrap();
        let ing = &b
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0];
        assert_eq!(ing.ip.as_deref(), Some("172.31.0.2"));
        let full = admitted(
            "metadata: {name: c}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
            &[a.clone(), b],
        );
        assert!(matches!(full, Err(AllocError::Exhausted(_))), "{full:?}");
        let again = admitted(
            "metadata: {name: a}\nspec: {type: LoadBalancer, ports: [{port: 80}]}",
            std::slice::from_ref(&a),
        )
        .unwrap();
        assert_eq!(again.status, a.status);
        // Without a pool the service stays pending.
        let mut p = svc("metadata: {name: p}\nspec: {type: LoadBalancer, ports: [{port: 80}]}");
        let r = Ranges {
            load_balancer_cidr: None,
            ..ranges()
        };
        admit(&mut p, None, &r, &Allocations::default()).unwrap();
        assert_eq!(p.status.unwrap().load_balancer, Some(LoadBalancerStatus::default()));
    }

    #[test]
    fn exhausted_service_cidr() {
        let r = Ranges {
            service_cidr: "10.96.0.0/30".parse().unwrap(),
            load_balancer_cidr: None,
        };
        let mut a = svc("metadata: {name: a}\nspec: {ports: [{port: 80}]}");
        admit(&mut a, None, &r, &Allocations::default()).unwrap();
        assert_eq!(a.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.2"));
        let mut b = svc("metadata: {name: b}\nspec: {ports: [{port: 80}]}");
        let err = admit(&mut b, None, &r, &Allocations::from_services([&a], None));
        assert!(matches!(err, Err(AllocError::Exhausted(_))), "{err:?}");
    }
}
