//! `weir lab apply` / `weir lab delete` / `weir lab scale`: the API server,
//! the Deployment and EndpointSlice controllers and the kubelet of the lab.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::cni::{self, Invocation};
use super::deployments::{self, ScalePlan};
use super::ipalloc::{self, Allocations, Ranges};
use super::manifests::{self, Kind, Object, Store};
use super::signals::Interrupt;
use super::state::{LabState, PodState, Proc};
use super::topology::Topology;
use super::{Lab, controller, identities, netns, procs, serve, validate};

/// A pod whose sandbox is made and which waits for CNI ADD.
struct Pending {
    key: String,
    pod: Pod,
    inv: Invocation,
}

pub fn apply(lab: &Lab, text: &str, grace: Duration) -> Result<()> {
    // Signals first: no other thread may exist yet.
    let interrupt = Interrupt::catch().context("blocking SIGINT/SIGTERM")?;
    let objects = manifests::parse_documents(text)?;
    let _lock = lab.dir.lock()?;
    let mut state = lab.dir.require()?;
    apply_objects(lab, &mut state, objects, grace, &interrupt)
}

/// `weir lab scale deployment/NAME --replicas N`: re-apply the stored Deployment with a new count.
pub fn scale(lab: &Lab, target: &str, namespace: &str, replicas: i32, grace: Duration) -> Result<()> {
    let name = match target.split_once('/') {
        Some((kind, name)) if Kind::parse(kind) == Some(Kind::Deployment) => name,
        _ => bail!("scale: expected deployment/NAME, got {target:?}"),
    };
    let interrupt = Interrupt::catch().context("blocking SIGINT/SIGTERM")?;
    let _lock = lab.dir.lock()?;
    let mut state = lab.dir.require()?;
    let store = Store::new(lab.dir.manifests());
    let Some(Object::Deployment(mut d)) = store.get(Kind::Deployment, Some(namespace), name)? else {
        bail!("deployment {namespace}/{name} not found");
    };
    d.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    apply_objects(lab, &mut state, vec![Object::Deployment(d)], grace, &interrupt)
}

/// Applies `objects`. Interrupted (Ctrl-C, SIGTERM), it makes no more pods
/// and takes back the ones this apply made, so no pod is left half-made
/// (recorded without an address); CNI children in the terminal's process
/// group are interrupted too, and their pods rolled back like failed ADDs.
fn apply_objects(
    lab: &Lab,
    state: &mut LabState,
    objects: Vec<Object>,
    grace: Duration,
    interrupt: &Interrupt,
) -> Result<()> {
    // The API server's validation, for the whole text before any change: as
    // with a document that does not parse, one invalid object and nothing
    // is applied (what is already in the lab stays as it is).
    let invalid: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let e = validate::object(o).err()?;
            Some(format!("{}: {e}", o.describe().replacen(' ', "/", 1)))
        })
        .collect();
    if !invalid.is_empty() {
        for f in &invalid {
            eprintln!("apply: {f}");
        }
        bail!("{} object(s) invalid; nothing was applied", invalid.len());
    }
    let store = Store::new(lab.dir.manifests());
    let cni_bin = lab.binary("weir-cni")?;
    let mut failures = Vec::new();
    let mut new_pods = Vec::new();
    // Pods to take down before any is created (scale-down, replacement).
    let mut doomed = Vec::new();
    let mut namespaces = BTreeSet::new();
    let mut deployments = Vec::new();
    let mut book: Option<ServiceBook> = None;

    for obj in objects {
        if let Some(ns) = obj.namespace() {
            namespaces.insert(ns.to_owned());
        }
        match obj {
            Object::Node(n) => failures.push(format!(
                "node {}: nodes come from the topology file, not apply",
                n.metadata.name.unwrap_or_default()
            )),
            Object::Pod(mut pod) => {
                let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = pod.metadata.name.clone().unwrap_or_default();
                let key = format!("{ns}/{name}");
                match state.pods.get(&key) {
                    Some(ps) if ps.ip.is_some() => {
                        // Running: update the object, leave the network alone.
                        let ip = ps.ip.clone().unwrap_or_default();
                        let spec = pod.spec.get_or_insert_with(Default::default);
                        spec.node_name = Some(ps.node.clone());
                        pod.metadata.uid = Some(ps.uid.clone());
                        manifests::set_running(&mut pod, &ip);
                        store.put(&Object::Pod(pod))?;
                        println!("pod/{key} configured (running; network unchanged)");
                    }
                    Some(_) => {
                        // Half-made by an earlier, failed apply: start over.
                        for e in delete_pod(lab, state, &store, &key) {
                            eprintln!("pod/{key}: cleaning up earlier attempt: {e}");
                        }
                        new_pods.push(pod);
                    }
                    None => new_pods.push(pod),
                }
            }
            Object::Service(svc) => {
                let what = format!(
                    "service/{}/{}",
                    svc.metadata.namespace.as_deref().unwrap_or("default"),
                    svc.metadata.name.as_deref().unwrap_or_default()
                );
                if book.is_none() {
                    book = Some(ServiceBook::load(&store)?);
                }
                let book = book.as_mut().expect("loaded above");
                match admit_service(&store, book, &state.topology, svc) {
                    Ok(svc) => println!("{what} configured ({})", describe_service(&svc)),
                    Err(e) => failures.push(format!("{what}: {e:#}")),
                }
            }
            Object::Deployment(d) => {
                let ns = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = d.metadata.name.clone().unwrap_or_default();
                match admit_deployment(&store, state, d) {
                    Ok(plan) => {
                        println!("deployment.apps/{ns}/{name} configured");
                        doomed.extend(plan.delete.iter().map(|p| format!("{ns}/{p}")));
                        new_pods.extend(plan.create);
                        deployments.push((ns, name));
                    }
                    Err(e) => failures.push(format!("deployment.apps/{ns}/{name}: {e:#}")),
                }
            }
            other => {
                store.put(&other)?;
                println!("{} configured", other.describe().replacen(' ', "/", 1));
            }
        }
    }

    if !doomed.is_empty() {
        failures.extend(terminate_pods(lab, state, &store, &doomed, grace));
    }

    // Schedule and make sandboxes one by one (recording each), then wire them concurrently.
    let node_order: Vec<String> = state.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in state.pods.values() {
        *per_node.entry(p.node.clone()).or_default() += 1;
    }
    let mut pending = Vec::new();
    for pod in new_pods {
        if interrupt.check().is_err() {
            break;
        }
        match prepare(lab, state, &store, &cni_bin, pod, &node_order, &mut per_node) {
            Ok(p) => pending.push(p),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }

    // Interrupted while making sandboxes: none of them gets wired.
    if interrupt.check().is_err() {
        for p in pending.drain(..) {
            for e in delete_pod(lab, state, &store, &p.key) {
                eprintln!("pod/{}: rolling back: {e}", p.key);
            }
        }
    }

    // Identities for the new pods' label sets before their CNI ADD, so an
    // agent that has read them already starts the pod with its number.
    if !pending.is_empty()
        && let Err(e) = identities::sync(&store)
    {
        failures.push(format!("identities: {e:#}"));
    }

    let mut created = Vec::new();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pending.iter().map(|p| s.spawn(|| cni::add(&p.inv))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
            .collect()
    });

    for (mut p, result) in pending.into_iter().zip(results) {
        let outcome = result.map_err(anyhow::Error::from).and_then(|ip| {
            manifests::set_running(&mut p.pod, &ip);
            store.put(&Object::Pod(p.pod.clone()))?;
            if let Some(ps) = state.pods.get_mut(&p.key) {
                ps.ip = Some(ip.clone());
            }
            lab.dir.save(state)?;
            let servers = start_servers(lab, &p)?;
            if let Some(ps) = state.pods.get_mut(&p.key) {
                ps.servers = servers;
            }
            lab.dir.save(state)?;
            Ok(ip)
        });
        match outcome {
            Ok(ip) => {
                let node = state.pods.get(&p.key).map(|ps| ps.node.as_str()).unwrap_or_default();
                println!("pod/{} created on {node}: {ip}", p.key);
                created.push(p.key.clone());
            }
            Err(e) => {
                failures.push(format!("pod/{}: {e:#}", p.key));
                for err in delete_pod(lab, state, &store, &p.key) {
                    eprintln!("pod/{}: cleanup: {err}", p.key);
                }
            }
        }
    }

    if interrupt.check().is_err() {
        let made: Vec<String> = created
            .iter()
            .filter(|k| state.pods.contains_key(*k))
            .cloned()
            .collect();
        for key in &made {
            for e in delete_pod(lab, state, &store, key) {
                eprintln!("pod/{key}: rolling back: {e}");
            }
        }
        failures.extend(run_controllers(&store, &namespaces, &deployments));
        for f in &failures {
            eprintln!("apply: {f}");
        }
        bail!("interrupted: rolled back the {} pod(s) this apply made", made.len());
    }
    failures.extend(run_controllers(&store, &namespaces, &deployments));
    // Back only once every agent holds what was applied (services, and the
    // pods' addresses its flows are named with): `apply` then `probe` must
    // not race the agents' next look at the store.
    failures.extend(wait_for_agents(lab, state));
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        eprintln!("apply: {f}");
    }
    bail!("{} object(s) failed", failures.len())
}

/// What the apiserver does to a Service: defaults, ClusterIP, NodePorts,
/// LoadBalancer ingress; a uid. Stores and returns it.
/// The stored Services and what they hold, read once per apply: admitting
/// thousands of Services must not re-read every stored one each time.
struct ServiceBook {
    services: BTreeMap<String, Service>,
    held: Allocations,
}

impl ServiceBook {
    fn load(store: &Store) -> Result<Self> {
        let services: BTreeMap<String, Service> = store
            .list(Kind::Service, None)?
            .into_iter()
            .filter_map(|o| {
                if let Object::Service(s) = o {
                    Some((service_key(&s), s))
                } else {
                    None
                }
            })
            .collect();
        let held = Allocations::from_services(services.values(), None);
        Ok(Self { services, held })
    }
}

fn service_key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or("default"),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

fn admit_service(store: &Store, book: &mut ServiceBook, topo: &Topology, mut svc: Service) -> Result<Service> {
    let me = service_key(&svc);
    let old = book.services.get(&me).cloned();
    if let Some(old) = &old {
        book.held.release(old);
    }
    let ranges = Ranges {
        service_cidr: topo.service_cidr,
        load_balancer_cidr: topo.load_balancer_cidr,
    };
    let admitted = ipalloc::admit(&mut svc, old.as_ref(), &ranges, &book.held)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            svc.metadata.uid = match old.as_ref().and_then(|o| o.metadata.uid.clone()) {
                Some(uid) => Some(uid),
                None => Some(manifests::new_uid()?),
            };
            store.put(&Object::Service(svc.clone()))?;
            Ok(())
        });
    match admitted {
        Ok(()) => {
            book.held.hold(&svc);
            book.services.insert(me, svc.clone());
            Ok(svc)
        }
        Err(e) => {
            if let Some(old) = &old {
                book.held.hold(old);
            }
            Err(e)
        }
    }
}

/// A Service's ports as `port[:nodePort]/PROTO`, e.g. `80/TCP`, `53:30001/UDP`.
pub fn service_ports(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<String> {
    spec.ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect()
}

/// `clusterIP 10.96.0.2, ports 80/TCP 53:30001/UDP`.
pub fn describe_service(svc: &Service) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = service_ports(&spec);
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    format!(
        "clusterIP {}, ports {ports}",
        spec.cluster_ip.as_deref().unwrap_or("<none>")
    )
}

/// Default and store a Deployment; the pods to delete and create.
fn admit_deployment(store: &Store, state: &LabState, mut d: Deployment) -> Result<ScalePlan> {
    let ns = d.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = d.metadata.name.clone().unwrap_or_default();
    let old = match store.get(Kind::Deployment, Some(&ns), &name)? {
        Some(Object::Deployment(o)) => Some(o),
        _ => None,
    };
    deployments::admit(&mut d, old.as_ref())?;
    if d.metadata.uid.as_deref().is_none_or(str::is_empty) {
        d.metadata.uid = Some(manifests::new_uid()?);
    }
    let plan = deployments::plan(&d, &pods_in(store, &ns)?);
    for p in &plan.create {
        let pod_name = p.metadata.name.as_deref().unwrap_or_default();
        if state.pods.contains_key(&format!("{ns}/{pod_name}")) && !plan.delete.iter().any(|n| n == pod_name) {
            bail!("pod {ns}/{pod_name} exists and does not belong to deployment {name}");
        }
    }
    store.put(&Object::Deployment(d))?;
    Ok(plan)
}

fn pods_in(store: &Store, ns: &str) -> Result<Vec<Pod>> {
    Ok(store
        .list(Kind::Pod, Some(ns))?
        .into_iter()
        .filter_map(|o| if let Object::Pod(p) = o { Some(p) } else { None })
        .collect())
}

/// Identities, EndpointSlices of every namespace touched, then the status
/// of every Deployment touched.
fn run_controllers(store: &Store, namespaces: &BTreeSet<String>, deployments: &[(String, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = identities::sync(store) {
        errors.push(format!("identities: {e:#}"));
    }
    for ns in namespaces {
        if let Err(e) = controller::sync_namespace(store, ns) {
            errors.push(format!("endpointslices in {ns}: {e}"));
        }
    }
    for (ns, name) in deployments {
        let update = || -> Result<()> {
            let Some(Object::Deployment(mut d)) = store.get(Kind::Deployment, Some(ns), name)? else {
                return Ok(());
            };
            let status = deployments::status(&d, &pods_in(store, ns)?);
            if d.status.as_ref() != Some(&status) {
                d.status = Some(status);
                store.put(&Object::Deployment(d))?;
            }
            Ok(())
        };
        if let Err(e) = update() {
            errors.push(format!("deployment.apps/{ns}/{name} status: {e:#}"));
        }
    }
    errors
}

/// How long the lab waits for the agents to apply a change to its store
/// (standalone agents poll it every 500 ms) before it reports them late.
const AGENT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until every node's agent has applied the store as it is now: the
/// agents report the revision of the manifests their service datapath has
/// applied (`services_applied`). A fixed wait was not enough on a loaded
/// machine: a pod's servers stopped while an agent still sent it UDP flows.
/// The lab is the store's one writer while it waits. Returns an error per
/// agent that did not get there in time.
fn wait_for_agents(lab: &Lab, state: &LabState) -> Vec<String> {
    use weir_agent_api::revision::{manifest_files, revision};
    let dir = lab.dir.manifests();
    let target = revision(&dir, &manifest_files(&dir));
    let deadline = std::time::Instant::now() + AGENT_SYNC_TIMEOUT;
    let mut pending: Vec<(&String, &std::path::Path)> = state
        .nodes
        .iter()
        .filter(|(_, n)| n.agent.is_some())
        .map(|(name, n)| (name, n.socket.as_path()))
        .collect();
    loop {
        pending.retain(|(_, socket)| agent_applied(socket) != Some(target));
        if pending.is_empty() {
            return Vec::new();
        }
        if std::time::Instant::now() > deadline {
            return pending
                .iter()
                .map(|(name, _)| {
                    format!(
                        "node {name}: its agent did not apply the change within {}s",
                        AGENT_SYNC_TIMEOUT.as_secs()
                    )
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The revision the agent behind `socket` has applied, if it can say.
pub(crate) fn agent_applied(socket: &std::path::Path) -> Option<u64> {
    let client = weir_agent_api::Client::new(socket, Duration::from_secs(2));
    match client.call(weir_agent_api::Request::Status) {
        // Services and policy both: what a test probes next needs both.
        Ok(weir_agent_api::Response::Status(s)) => match (s.services_applied, s.policy_applied) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        },
        _ => None,
    }
}

/// Sets the Ready condition of the pods to False, as kubelet reports once
/// their containers have stopped. Returns every error.
fn mark_unready(store: &Store, state: &LabState, keys: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for key in keys {
        let Some(ps) = state.pods.get(key) else { continue };
        match store.get(Kind::Pod, Some(&ps.namespace), &ps.name) {
            Ok(Some(Object::Pod(mut p))) => {
                let status = p.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.retain(|c| c.type_ != "Ready");
                conditions.push(PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    ..Default::default()
                });
                if let Err(e) = store.put(&Object::Pod(p)) {
                    errors.push(format!("pod/{key}: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("pod/{key}: {e}")),
        }
    }
    errors
}

/// Take pods down the way kubelet does: first mark them terminating
/// (`deletionTimestamp`), so their EndpointSlice entries turn serving but not
/// ready and agents stop sending them new connections; wait `grace` (only if
/// a slice changed) for existing ones to finish; then mark them unready (the
/// containers stopped) and give agents time to drop them; then servers, CNI
/// DEL, netns. Keeps going; returns every error.
fn terminate_pods(lab: &Lab, state: &mut LabState, store: &Store, keys: &[String], grace: Duration) -> Vec<String> {
    let mut errors = Vec::new();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or_default());
    let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let mut namespaces = BTreeSet::new();
    for key in keys {
        let Some(ps) = state.pods.get(key) else { continue };
        namespaces.insert(ps.namespace.clone());
        match store.get(Kind::Pod, Some(&ps.namespace), &ps.name) {
            Ok(Some(Object::Pod(mut p))) => {
                p.metadata.deletion_timestamp = Some(now.clone());
                p.metadata.deletion_grace_period_seconds = Some(grace_secs);
                if let Err(e) = store.put(&Object::Pod(p)) {
                    errors.push(format!("pod/{key}: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("pod/{key}: {e}")),
        }
    }
    let mut changed = false;
    for ns in &namespaces {
        match controller::sync_namespace(store, ns) {
            Ok(c) => changed |= c,
            Err(e) => errors.push(format!("endpointslices in {ns}: {e}")),
        }
    }
    if changed && !grace.is_zero() {
        std::thread::sleep(grace);
        // The containers stop: the pods turn unready, so their endpoints stop
        // serving, and agents drop them (and their UDP flows) before the pods'
        // network goes. Without this, a UDP flow pinned to a pod would be sent
        // into a deleted pod until the agent's next poll.
        errors.extend(mark_unready(store, state, keys));
        let mut unserved = false;
        for ns in &namespaces {
            match controller::sync_namespace(store, ns) {
                Ok(c) => unserved |= c,
                Err(e) => errors.push(format!("endpointslices in {ns}: {e}")),
            }
        }
        if unserved {
            errors.extend(wait_for_agents(lab, state));
        }
    }
    for key in keys {
        let errs = delete_pod(lab, state, store, key);
        if errs.is_empty() {
            println!("pod/{key} deleted");
        }
        errors.extend(errs.into_iter().map(|e| format!("pod/{key}: {e}")));
    }
    for ns in &namespaces {
        if let Err(e) = controller::sync_namespace(store, ns) {
            errors.push(format!("endpointslices in {ns}: {e}"));
        }
    }
    errors
}

fn panicked() -> cni::CniError {
    cni::CniError::Garbled {
        command: "ADD",
        status: "panic".into(),
        stdout: String::new(),
        stderr: String::new(),
    }
}

fn prepare(
    lab: &Lab,
    state: &mut LabState,
    store: &Store,
    cni_bin: &std::path::Path,
    mut pod: Pod,
    node_order: &[String],
    per_node: &mut BTreeMap<String, usize>,
) -> Result<Pending> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let spec = pod.spec.get_or_insert_with(Default::default);
    let node = match spec.node_name.clone() {
        Some(n) if state.nodes.contains_key(&n) => n,
        Some(n) => bail!("pod/{key}: spec.nodeName {n:?} is not a node of lab {}", state.name),
        None => manifests::pick_node(node_order, per_node)
            .context("lab has no nodes")?
            .clone(),
    };
    spec.node_name = Some(node.clone());
    let uid = match pod.metadata.uid.clone() {
        Some(u) if !u.is_empty() => u,
        _ => manifests::new_uid()?,
    };
    pod.metadata.uid = Some(uid.clone());
    let container_id: String = uid.chars().filter(char::is_ascii_alphanumeric).collect();
    let pod_netns = netns::pod_netns_name(&state.name, &ns, &name);
    if netns::exists(&pod_netns) {
        bail!("pod/{key}: netns {pod_netns} already exists (leftover? `ip netns delete {pod_netns}`)");
    }
    let node_state = state.nodes.get(&node).context("node vanished")?.clone();
    state.pods.insert(
        key.clone(),
        PodState {
            namespace: ns.clone(),
            name: name.clone(),
            node: node.clone(),
            netns: pod_netns.clone(),
            container_id: container_id.clone(),
            uid: uid.clone(),
            ip: None,
            servers: Vec::new(),
        },
    );
    lab.dir.save(state)?;
    *per_node.entry(node.clone()).or_default() += 1;
    if let Err(e) = netns::create(&pod_netns) {
        state.pods.remove(&key);
        let _ = netns::delete(&pod_netns);
        lab.dir.save(state)?;
        bail!("pod/{key}: {e}");
    }
    // The API server has the pod before kubelet runs CNI.
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    store.put(&Object::Pod(pod.clone()))?;
    let inv = Invocation {
        plugin: cni_bin.to_owned(),
        node_netns: node_state.netns.clone(),
        container_id,
        pod_netns_path: netns::path(&pod_netns).to_string_lossy().into_owned(),
        pod_namespace: ns,
        pod_name: name,
        pod_uid: uid,
        agent_socket: node_state.socket,
    };
    Ok(Pending { key, pod, inv })
}

/// Start `weir lab serve` for the pod's declared ports; waits until it has bound them.
fn start_servers(lab: &Lab, p: &Pending) -> Result<Vec<Proc>> {
    let ports = manifests::container_ports(&p.pod);
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let exe = std::env::current_exe().context("locating the weir binary")?;
    // A pod's name may have 253 characters: bounded, as the store's file names are.
    let log_path = lab.dir.logs().join(format!(
        "{}.log",
        manifests::bounded_stem(&format!("serve-{}-{}", p.inv.pod_namespace, p.inv.pod_name))
    ));
    let proc_ = serve::start(
        Command::new(exe),
        &p.inv.pod_netns_path,
        &p.inv.pod_name,
        &ports,
        false,
        format!("serve {}", p.key),
        &log_path,
    )?;
    Ok(vec![proc_])
}

pub(crate) fn invocation(lab: &Lab, state: &LabState, ps: &PodState) -> Result<Invocation> {
    let node = state
        .nodes
        .get(&ps.node)
        .with_context(|| format!("node {} not in lab", ps.node))?;
    Ok(Invocation {
        plugin: lab.binary("weir-cni")?,
        node_netns: node.netns.clone(),
        container_id: ps.container_id.clone(),
        pod_netns_path: netns::path(&ps.netns).to_string_lossy().into_owned(),
        pod_namespace: ps.namespace.clone(),
        pod_name: ps.name.clone(),
        pod_uid: ps.uid.clone(),
        agent_socket: node.socket.clone(),
    })
}

/// Stop servers, CNI DEL, delete the netns, remove the manifest and the record.
/// Keeps going; returns every error.
fn delete_pod(lab: &Lab, state: &mut LabState, store: &Store, key: &str) -> Vec<String> {
    let Some(ps) = state.pods.get(key).cloned() else {
        return Vec::new();
    };
    let mut errors = unwire(lab, state, key);
    if let Err(e) = store.remove(Kind::Pod, Some(&ps.namespace), &ps.name) {
        errors.push(e.to_string());
    }
    errors
}

/// The kubelet's part of a pod's end, in both modes: stop its servers,
/// CNI DEL, delete its netns, drop its record once the netns is gone.
/// Keeps going; returns every error.
pub(crate) fn unwire(lab: &Lab, state: &mut LabState, key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(ps) = state.pods.get(key).cloned() else {
        return errors;
    };
    errors.extend(procs::stop_all(&ps.servers, Duration::from_secs(3)));
    match invocation(lab, state, &ps) {
        Ok(inv) => {
            if let Err(e) = cni::del(&inv) {
                errors.push(e.to_string());
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    if let Err(e) = netns::delete(&ps.netns) {
        errors.push(e.to_string());
    }
    if !netns::exists(&ps.netns) {
        state.pods.remove(key);
        state.netns.retain(|n| n != &ps.netns);
    }
    if let Err(e) = lab.dir.save(state) {
        errors.push(format!("{e:#}"));
    }
    errors
}

/// `weir lab delete`: pods are taken down as kubelet does (see
/// [`terminate_pods`]), other objects removed. Deleting a Namespace deletes
/// everything in it first, as the API server's namespace controller does:
/// its pods (unwired with CNI DEL like any deleted pod), Services,
/// EndpointSlices, Deployments and policies; then the Namespace itself.
/// Namespaces are implicit in the lab (objects may be applied into one
/// that has no Namespace object), so a namespace with objects but no
/// Namespace object is deleted all the same.
pub fn delete(lab: &Lab, text: &str, grace: Duration) -> Result<()> {
    let objects = manifests::parse_documents(text)?;
    let _lock = lab.dir.lock()?;
    let mut state = lab.dir.require()?;
    let store = Store::new(lab.dir.manifests());
    let mut errors = Vec::new();
    let mut namespaces = BTreeSet::new();
    let mut pods = Vec::new();
    let mut rest = Vec::new();
    let mut doomed = Vec::new();
    for obj in objects {
        let ns = obj.namespace().unwrap_or("default").to_owned();
        if obj.namespace().is_some() {
            namespaces.insert(ns.clone());
        }
        let key = format!("{ns}/{}", obj.name());
        match &obj {
            Object::Namespace(_) => doomed.push(obj.name().to_owned()),
            Object::Pod(_) if state.pods.contains_key(&key) => pods.push(key),
            Object::Deployment(_) => {
                match pods_in(&store, &ns) {
                    Ok(owned) => {
                        let mut owned: Vec<String> = owned
                            .iter()
                            .filter(|p| deployments::owned_by(p, obj.name()))
                            .filter_map(|p| p.metadata.name.as_deref().map(|n| format!("{ns}/{n}")))
                            .filter(|k| state.pods.contains_key(k))
                            .collect();
                        owned.reverse();
                        pods.extend(owned);
                    }
                    Err(e) => errors.push(format!("deployment.apps/{key}: {e:#}")),
                }
                rest.push(obj);
            }
            _ => rest.push(obj),
        }
    }
    // What deleted namespaces hold goes with them.
    let mut contents = Vec::new();
    let mut held_something = BTreeSet::new();
    for ns in &doomed {
        namespaces.insert(ns.clone());
        match namespace_contents(&store, &state, ns) {
            Ok((ns_pods, objects)) => {
                if !ns_pods.is_empty() || !objects.is_empty() {
                    held_something.insert(ns.clone());
                }
                pods.extend(ns_pods);
                contents.extend(objects);
            }
            Err(e) => errors.push(format!("namespace/{ns}: {e:#}")),
        }
    }
    let mut seen = BTreeSet::new();
    pods.retain(|k| seen.insert(k.clone()));
    errors.extend(terminate_pods(lab, &mut state, &store, &pods, grace));
    let named: BTreeSet<(Kind, Option<String>, String)> = rest
        .iter()
        .map(|o| (o.kind(), o.namespace().map(str::to_owned), o.name().to_owned()))
        .collect();
    for obj in rest {
        let what = obj.describe().replacen(' ', "/", 1);
        match store.remove(obj.kind(), obj.namespace(), obj.name()) {
            Ok(true) => println!("{what} deleted"),
            Ok(false) => errors.push(format!("{what}: not found")),
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    for obj in contents {
        if named.contains(&(obj.kind(), obj.namespace().map(str::to_owned), obj.name().to_owned())) {
            continue;
        }
        let what = obj.describe().replacen(' ', "/", 1);
        match store.remove(obj.kind(), obj.namespace(), obj.name()) {
            Ok(true) => println!("{what} deleted"),
            Ok(false) => {}
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    for ns in &doomed {
        match store.remove(Kind::Namespace, None, ns) {
            Ok(true) => println!("namespace/{ns} deleted"),
            Ok(false) if held_something.contains(ns) => println!("namespace/{ns} deleted"),
            Ok(false) => errors.push(format!("namespace/{ns}: not found")),
            Err(e) => errors.push(format!("namespace/{ns}: {e}")),
        }
    }
    errors.extend(run_controllers(&store, &namespaces, &[]));
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("delete: {e}");
    }
    bail!("{} error(s)", errors.len())
}

/// Everything in namespace `ns`: the keys of its pods the lab has made
/// (wired or half-made), and every other namespaced object stored in it
/// (pods stored without a record among them).
fn namespace_contents(store: &Store, state: &LabState, ns: &str) -> Result<(Vec<String>, Vec<Object>)> {
    let pods: Vec<String> = state
        .pods
        .iter()
        .filter(|(_, p)| p.namespace == ns)
        .map(|(k, _)| k.clone())
        .collect();
    let mut objects = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
        for obj in store.list(kind, Some(ns))? {
            if kind == Kind::Pod && state.pods.contains_key(&format!("{ns}/{}", obj.name())) {
                continue;
            }
            objects.push(obj);
        }
    }
    Ok((pods, objects))
}
