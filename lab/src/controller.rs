//! The lab's EndpointSlice controller: for every Service with a selector, the
//! EndpointSlices kube-controller-manager would write, computed from the
//! Services and Pods of one namespace. `desired` and `plan` are pure;
//! `sync_namespace` reads the store, plans and writes what changed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifests::{Kind, ManifestError, Object, Store};

/// Label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`]; slices without it are left alone.
pub const MANAGED_BY: &str = "weir-lab";
/// Set (empty) on the slices of headless Services, as Kubernetes does.
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// kube-controller-manager's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether a pod counts as ready: the lab writes `Ready: True` once it runs,
/// so only an explicit `False` makes it unready.
pub fn pod_ready(pod: &Pod) -> bool {
    !pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "False")
}

/// The pod's IPv4 address, if it has one.
fn pod_ipv4(pod: &Pod) -> Option<String> {
    let s = pod.status.as_ref()?;
    s.pod_ip
        .iter()
        .chain(s.pod_ips.iter().flatten().map(|p| &p.ip))
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .cloned()
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// A service port's target on one pod: the number, or the named container
/// port of the same protocol; `None` when the pod has no such port.
pub fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let proto = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|cp| {
                    (cp.name.as_deref() == Some(name.as_str()) && cp.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(cp.container_port)
                })
        }
    }
}

/// A resolved port set, the key endpoints are grouped by.
type PortSet = Vec<(String, i32, String)>;

/// The slices Kubernetes would hold for `svc`, given the pods of its
/// namespace. Empty for Services without a selector (their slices are the
/// user's). Endpoints are grouped by their resolved port set; the first slice
/// is `<svc>-weir`, further ones `<svc>-weir-<n>`.
pub fn desired(svc: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let svc_name = svc.metadata.name.as_deref().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let svc_ports = spec.ports.clone().unwrap_or_default();

    let mut groups: BTreeMap<PortSet, Vec<(String, Endpoint)>> = BTreeMap::new();
    for pod in pods {
        let pod_ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod_ns != ns || !selects(selector, pod) || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let ports: PortSet = svc_ports
            .iter()
            .filter_map(|p| {
                let n = resolve_target_port(p, pod)?;
                Some((
                    p.name.clone().unwrap_or_default(),
                    n,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue; // none of the service's ports exists on this pod
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = publish_not_ready || pod_ready(pod);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready && (publish_not_ready || !terminating)),
                serving: Some(ready),
                terminating: Some(terminating),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod_name.clone()),
                namespace: Some(pod_ns.into()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        groups.entry(ports).or_default().push((pod_name, endpoint));
    }

    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.into(), svc_name.into());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    if spec.cluster_ip.as_deref() == Some("None") {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc_name.into(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let slice = |n: usize, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>| EndpointSlice {
        metadata: ObjectMeta {
            name: Some(if n == 0 {
                format!("{svc_name}-weir")
            } else {
                format!("{svc_name}-weir-{n}")
            }),
            namespace: Some(ns.into()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(ports),
    };

    if groups.is_empty() {
        // Kubernetes keeps one empty placeholder slice per selected Service.
        return vec![slice(0, Vec::new(), Vec::new())];
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, port, protocol)| {
                let app_protocol = svc_ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or_default() == name)
                    .and_then(|p| p.app_protocol.clone());
                EndpointPort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol,
                }
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(slice(
                out.len(),
                ports.clone(),
                chunk.iter().map(|(_, e)| e.clone()).collect(),
            ));
        }
    }
    out
}

/// What to write and remove to bring one namespace's slices in step.
#[derive(Debug, Default, PartialEq)]
pub struct SlicePlan {
    /// Slices to create or replace (only those that differ from what is stored).
    pub put: Vec<EndpointSlice>,
    /// Names of our slices that no Service wants any more.
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// Compare desired slices of `services` with the `existing` slices of the namespace.
/// Slices not labelled as ours are never deleted.
pub fn plan(services: &[Service], pods: &[Pod], existing: &[EndpointSlice]) -> SlicePlan {
    let desired: Vec<EndpointSlice> = services.iter().flat_map(|s| desired(s, pods)).collect();
    let by_name: BTreeMap<&str, &EndpointSlice> = existing
        .iter()
        .map(|s| (s.metadata.name.as_deref().unwrap_or_default(), s))
        .collect();
    let wanted: BTreeSet<&str> = desired
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap_or_default())
        .collect();
    let ours = |s: &EndpointSlice| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .map(String::as_str)
            == Some(MANAGED_BY)
    };
    let delete = existing
        .iter()
        .filter(|s| ours(s))
        .filter_map(|s| s.metadata.name.as_deref())
        .filter(|n| !wanted.contains(n))
        .map(str::to_owned)
        .collect();
    let put = desired
        .iter()
        .filter(|d| by_name.get(d.metadata.name.as_deref().unwrap_or_default()) != Some(d))
        .cloned()
        .collect();
    SlicePlan { put, delete }
}

/// Recompute every slice of every Service in `namespace` and write what
/// changed. Returns whether anything did.
pub fn sync_namespace(store: &Store, namespace: &str) -> Result<bool, ManifestError> {
    let services: Vec<Service> = store
        .list(Kind::Service, Some(namespace))?
        .into_iter()
        .filter_map(|o| if let Object::Service(s) = o { Some(s) } else { None })
        .collect();
    let pods: Vec<Pod> = store
        .list(Kind::Pod, Some(namespace))?
        .into_iter()
        .filter_map(|o| if let Object::Pod(p) = o { Some(p) } else { None })
        .collect();
    let existing: Vec<EndpointSlice> = store
        .list(Kind::EndpointSlice, Some(namespace))?
        .into_iter()
        .filter_map(|o| {
            if let Object::EndpointSlice(s) = o {
                Some(s)
            } else {
                None
            }
        })
        .collect();
    let plan = plan(&services, &pods, &existing);
    for s in &plan.put {
        store.put(&Object::EndpointSlice(s.clone()))?;
    }
    for name in &plan.delete {
        store.remove(Kind::EndpointSlice, Some(namespace), name)?;
    }
    Ok(!plan.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn svc(yaml: &str) -> Service {
        let mut s: Service = serde_yaml_ng::from_str(yaml).unwrap();
        s.metadata.namespace.get_or_insert_with(|| "demo".into());
        s.metadata.uid = Some("svc-uid".into());
        s
    }

    /// A running pod in `demo` on `n1` with `app: <app>` and the given named ports.
    fn pod(name: &str, app: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Pod {
        let ports: Vec<String> = ports
            .iter()
            .map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}"))
            .collect();
        let mut p: Pod = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: demo, uid: uid-{name}, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, ports: [{}]}}]}}",
            ports.join(", ")
        ))
        .unwrap();
        super::super::manifests::set_running(&mut p, ip);
        p
    }

    const WEB: &str = "metadata: {name: web, labels: {tier: front}}\nspec: {clusterIP: 10.96.0.2, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http, protocol: TCP}, {name: dns, port: 53, targetPort: dns, protocol: UDP}]}";

    fn web_pods() -> Vec<Pod> {
        vec![
            pod("web-1", "web", "10.244.1.3", &[("http", 80, "TCP"), ("dns", 53, "UDP")]),
            pod("web-0", "web", "10.244.1.2", &[("http", 80, "TCP"), ("dns", 53, "UDP")]),
            pod("other", "other", "10.244.1.4", &[("http", 80, "TCP")]),
        ]
    }

    fn conditions(e: &Endpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn one_slice_with_resolved_named_ports() {
        let slices = desired(&svc(WEB), &web_pods());
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.metadata.name.as_deref(), Some("web-weir"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("demo"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], "weir-lab");
        assert_eq!(labels["tier"], "front", "service labels are copied");
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "web", "svc-uid")
        );
        let ports: Vec<_> = s
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap(), p.protocol.clone().unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".to_string(), 80, "TCP".to_string()),
                ("dns".to_string(), 53, "UDP".to_string())
            ]
        );
        let addrs: Vec<_> = s.endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(
            addrs,
            ["10.244.1.2", "10.244.1.3"],
            "sorted by pod name, the other app left out"
        );
        let e = &s.endpoints[0];
        assert_eq!(conditions(e), (true, true, false));
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        let t = e.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                t.kind.as_deref(),
                t.name.as_deref(),
                t.namespace.as_deref(),
                t.uid.as_deref()
            ),
            (Some("Pod"), Some("web-0"), Some("demo"), Some("uid-web-0"))
        );
    }

    #[test]
    fn numeric_and_defaulted_target_ports() {
        let s = svc(
            "metadata: {name: n}\nspec: {selector: {app: web}, ports: [{name: a, port: 8080, targetPort: 80}, {name: b, port: 9000}]}",
        );
        let slices = desired(&s, &web_pods());
        let ports: Vec<_> = slices[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.port.unwrap(), p.protocol.clone().unwrap()))
            .collect();
        assert_eq!(ports, [(80, "TCP".to_string()), (9000, "TCP".to_string())]);
        assert_eq!(slices[0].endpoints.len(), 2);
    }

    #[test]
    fn pods_resolving_a_name_differently_go_to_separate_slices() {
        let pods = vec![
            pod("a", "web", "10.244.1.2", &[("http", 80, "TCP")]),
            pod("b", "web", "10.244.1.3", &[("http", 8080, "TCP")]),
            pod("c", "web", "10.244.1.4", &[("http", 80, "TCP")]),
            pod("d", "web", "10.244.1.5", &[("web", 80, "TCP")]), // no port named http
            pod("e", "web", "10.244.1.6", &[("http", 80, "UDP")]), // http, but the wrong protocol
        ];
        let s = svc(
            "metadata: {name: web}\nspec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}",
        );
        let slices = desired(&s, &pods);
        let got: Vec<_> = slices
            .iter()
            .map(|s| {
                let addrs: Vec<_> = s.endpoints.iter().map(|e| e.addresses[0].clone()).collect();
                (
                    s.metadata.name.clone().unwrap(),
                    s.ports.as_ref().unwrap()[0].port.unwrap(),
                    addrs,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "web-weir".to_string(),
                    80,
                    vec!["10.244.1.2".to_string(), "10.244.1.4".to_string()]
                ),
                ("web-weir-1".to_string(), 8080, vec!["10.244.1.3".to_string()]),
            ]
        );
    }

    #[test]
    fn readiness_terminating_and_pods_without_ip() {
        let mut pods = web_pods();
        // web-1 not ready.
        for c in pods[0].status.as_mut().unwrap().conditions.as_mut().unwrap() {
            if c.type_ == "Ready" {
                c.status = "False".into();
            }
        }
        // web-0 being deleted.
        pods[1].metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        // A pending pod: no IP yet.
        let mut pending = pod("web-2", "web", "10.244.1.9", &[("http", 80, "TCP"), ("dns", 53, "UDP")]);
        pending.status = None;
        pods.push(pending);
        // A finished pod.
        let mut done = pod(
            "web-3",
            "web",
            "10.244.1.10",
            &[("http", 80, "TCP"), ("dns", 53, "UDP")],
        );
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        pods.push(done);

        let s = &desired(&svc(WEB), &pods)[0];
        assert_eq!(s.endpoints.len(), 2, "{s:?}");
        assert_eq!(
            conditions(&s.endpoints[0]),
            (false, true, true),
            "terminating web-0: serving, not ready"
        );
        assert_eq!(conditions(&s.endpoints[1]), (false, false, false), "unready web-1");

        let mut publish = svc(WEB);
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let s = &desired(&publish, &pods)[0];
        assert_eq!(conditions(&s.endpoints[0]), (true, true, true));
        assert_eq!(conditions(&s.endpoints[1]), (true, true, false));
    }

    #[test]
    fn placeholder_for_no_endpoints_and_nothing_without_selector() {
        let empty = svc("metadata: {name: empty}\nspec: {selector: {app: nothing}, ports: [{port: 80}]}");
        let slices = desired(&empty, &web_pods());
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].metadata.name.as_deref(), Some("empty-weir"));
        assert!(slices[0].endpoints.is_empty());
        assert_eq!(slices[0].ports, Some(vec![]));
        let manual = svc("metadata: {name: manual}\nspec: {ports: [{port: 80}]}");
        assert!(desired(&manual, &web_pods()).is_empty());
        let headless = svc("metadata: {name: h}\nspec: {clusterIP: None, selector: {app: web}}");
        let s = &desired(&headless, &web_pods())[0];
        assert_eq!(s.metadata.labels.as_ref().unwrap()[LABEL_HEADLESS], "");
        assert_eq!(
            s.ports,
            Some(vec![]),
            "a headless service without ports lists its pods without ports"
        );
        assert_eq!(s.endpoints.len(), 2);
    }

    #[test]
    fn large_groups_are_split_at_one_hundred() {
        let pods: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    "web",
                    &format!("10.244.{}.{}", i / 200 + 1, i % 200 + 2),
                    &[("http", 80, "TCP"), ("dns", 53, "UDP")],
                )
            })
            .collect();
        let slices = desired(&svc(WEB), &pods);
        let sizes: Vec<_> = slices
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s.endpoints.len()))
            .collect();
        assert_eq!(sizes, [("web-weir".to_string(), 100), ("web-weir-1".to_string(), 50)]);
    }

    #[test]
    fn the_services_demo_end_to_end_without_a_kernel() {
        use super::super::{deployments, ipalloc};
        let objs = super::super::manifests::parse_documents(include_str!("../demo/services.yaml")).unwrap();
        let mut pods = Vec::new();
        let mut services: Vec<Service> = Vec::new();
        let ranges = ipalloc::Ranges {
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            load_balancer_cidr: None,
        };
        for o in objs {
            match o {
                Object::Deployment(mut d) => {
                    deployments::admit(&mut d, None).unwrap();
                    for (i, mut p) in deployments::plan(&d, &[]).create.into_iter().enumerate() {
                        super::super::manifests::set_running(&mut p, &format!("10.244.1.{}", i + 2));
                        pods.push(p);
                    }
                }
                Object::Service(mut s) => {
                    let held = ipalloc::Allocations::from_services(&services, None);
                    ipalloc::admit(&mut s, None, &ranges, &held).unwrap();
                    services.push(s);
                }
                _ => {}
            }
        }
        let ips: Vec<_> = services
            .iter()
            .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
            .collect();
        assert_eq!(ips, ["10.96.0.2", "10.96.0.3", "10.96.0.4"]);
        let p = plan(&services, &pods, &[]);
        let got: Vec<_> = p
            .put
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s.endpoints.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("web-weir".to_string(), 3),
                ("web-np-weir".to_string(), 3),
                ("empty-weir".to_string(), 0)
            ]
        );
        let ports: Vec<_> = p.put[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.unwrap())
            .collect();
        assert_eq!(ports, [80, 53]);
    }

    #[test]
    fn plan_writes_only_changes_and_deletes_only_ours() {
        let services = vec![svc(WEB)];
        let pods = web_pods();
        let first = plan(&services, &pods, &[]);
        assert_eq!(first.put.len(), 1);
        // Stored and read back through YAML, the same slice is no change.
        let stored: Vec<EndpointSlice> = first
            .put
            .iter()
            .map(|s| serde_yaml_ng::from_str(&serde_yaml_ng::to_string(s).unwrap()).unwrap())
            .collect();
        assert!(plan(&services, &pods, &stored).is_empty());
        // A pod goes away: rewrite.
        let again = plan(&services, &pods[1..], &stored);
        assert_eq!(again.put.len(), 1);
        assert_eq!(again.put[0].endpoints.len(), 1);
        // The service goes away: its slice is deleted, a user's slice is not.
        let mut user = stored[0].clone();
        user.metadata.name = Some("by-hand".into());
        user.metadata.labels = None;
        let gone = plan(&[], &pods, &[stored[0].clone(), user]);
        assert_eq!(
            gone,
            SlicePlan {
                put: vec![],
                delete: vec!["web-weir".into()]
            }
        );
    }
}
