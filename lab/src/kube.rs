//! `controlPlane: kubernetes`: the lab on a real control plane. `up` starts
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler in the
//! first node's netns (a control-plane node: the other nodes reach the API
//! server at its address, port 6443), installs weir's CRDs and RBAC, makes
//! the Node objects, and starts the operator. The agents use service-account
//! tokens of `install/rbac.yaml`'s roles. `apply`, `delete`, `scale` and
//! `get` are kubectl's, through the API server; the lab's part is the
//! kubelet's ([`crate::kubelet`]) and the waiting: a command returns once
//! every pod it made runs and every agent has applied what it wrote.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir_control_plane::{APISERVER_PORT, Options, Plan};

use super::state::{KubeState, LabState};
use super::{Lab, Output, netns, procs, signals, topology};

/// weir's own manifests, as `install/` has them.
const INSTALL: [&str; 3] = [
    include_str!("../../install/crds/weir-policies.yaml"),
    include_str!("../../install/crds/weir-identities.yaml"),
    include_str!("../../install/rbac.yaml"),
];

const READY: Duration = Duration::from_secs(90);
/// How long `apply` waits for pods, EndpointSlices and agents.
const SETTLE: Duration = Duration::from_secs(60);
/// How long `apply` retries pods of a namespace that has no service account yet.
const SA_WAIT: Duration = Duration::from_secs(20);

/// kubectl with the lab admin's credentials, in the control plane's netns.
pub fn kubectl(kube: &KubeState) -> Result<Command> {
    let bin = weir_control_plane::tool("kubectl").context("kubectl is not built: scripts/tools.sh builds it")?;
    let mut c = netns::command(&kube.netns, bin);
    c.arg(format!("--kubeconfig={}", kube.admin_kubeconfig.display()));
    Ok(c)
}

/// Runs kubectl to completion; its stdout, or its stderr as the error.
pub fn kubectl_ok(kube: &KubeState, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = kubectl(kube)?
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts the control plane in the first node's netns and records its
/// processes; returns how to reach it.
pub fn start(lab: &Lab, topo: &topology::Topology, state: &mut LabState) -> Result<KubeState> {
    let first = topo.nodes.first().context("a lab has nodes")?;
    let ns = topo.node_netns(&first.name);
    let advertise = topo.node_ip(0);
    let mask = first.pod_cidr.prefix_len();
    let plan = Plan::prepare(
        &lab.dir.kube(),
        &Options {
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            apiserver_port: APISERVER_PORT,
            advertise: Some(advertise),
            service_cidr: topo.service_cidr.to_string(),
            cluster_cidr: topo.cluster_cidr.to_string(),
            node_cidr_mask: mask,
            allocate_node_cidrs: true,
            real_kubelets: topo.kubelet == super::topology::Kubelet::Real,
        },
    )?;
    let kube = KubeState {
        netns: ns.clone(),
        admin_kubeconfig: plan.admin_kubeconfig.clone(),
        server: plan.server.clone(),
    };
    for c in &plan.components {
        let log_path = lab.dir.logs().join(format!("{}.log", c.name));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = signals::spawn_in(Some(&netns::path(&ns)), &c.program)?
            .args(&c.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", c.name))?;
        state.servers.push(procs::record(child.id(), c.name.to_owned()));
        lab.dir.save(state)?;
        if c.name == "kube-apiserver" {
            wait_ready(&kube, &log_path)?;
        }
    }
    println!("control plane: kube-apiserver {} (in netns {ns})", kube.server);
    // A bare cluster (`install: none`) gets weir from its user.
    if topo.install == super::topology::Install::Lab {
        for text in INSTALL {
            kubectl_ok(&kube, &["apply", "-f", "-"], Some(text))?;
        }
        let wait = weir_k8s::wait_for_crds_args();
        kubectl_ok(&kube, &wait.iter().map(String::as_str).collect::<Vec<_>>(), None)?;
    }
    Ok(kube)
}

fn wait_ready(kube: &KubeState, log: &Path) -> Result<()> {
    let t0 = Instant::now();
    while kubectl_ok(kube, &["get", "--raw", "/readyz"], None).is_err() {
        if t0.elapsed() > READY {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            bail!(
                "kube-apiserver not ready within {READY:?}; its log ends:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The Node object of a lab node: its pod CIDR (the allocator keeps it)
/// and, when the lab plays the kubelet (`lab_kubelet`), its address and
/// Ready; a real kubelet reports its status itself.
pub fn create_node(
    kube: &KubeState,
    name: &str,
    pod_cidr: &str,
    ip: std::net::Ipv4Addr,
    lab_kubelet: bool,
) -> Result<()> {
    kubectl_ok(
        kube,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\nspec: {{podCIDR: {pod_cidr}, podCIDRs: [{pod_cidr}]}}\n"
        )),
    )?;
    if !lab_kubelet {
        return Ok(());
    }
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "weir lab plays the kubelet"}],
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
    }});
    kubectl_ok(
        kube,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )?;
    // The API server taints a new node not-ready (TaintNodesByCondition);
    // the node lifecycle controller, which would lift it once the node is
    // Ready, does not run here.
    kubectl_ok(
        kube,
        &[
            "patch",
            "node",
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":null}}"#,
        ],
        None,
    )?;
    Ok(())
}

/// A kubeconfig for service account kube-system/`account`, at `server`.
pub fn service_account_kubeconfig(
    lab: &Lab,
    kube: &KubeState,
    account: &str,
    server: &str,
) -> Result<std::path::PathBuf> {
    let token = kubectl_ok(
        kube,
        &["create", "token", "-n", "kube-system", account, "--duration=8760h"],
        None,
    )?;
    let path = lab.dir.kube().join(format!("{account}.kubeconfig"));
    let text = weir_control_plane::kubeconfig(server, &lab.dir.kube().join("ca.crt"), token.trim());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `weir lab apply` on the real control plane: kubectl apply, then wait.
/// The documents of a YAML text as one JSON `List` for kubectl. The lab
/// reads YAML 1.2 in both modes (`y` and `on` are strings, as weir's own
/// parser reads them); kubectl's YAML 1.1 would read `namespace: y` as
/// `true`.
fn as_json(text: &str) -> Result<String> {
    use serde::Deserialize;
    let mut items = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc).context("not valid YAML")?;
        if !v.is_null() {
            items.push(v);
        }
    }
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())
}

pub fn apply(lab: &Lab, state: &LabState, kube: &KubeState, text: &str) -> Result<()> {
    let json = as_json(text)?;
    let text = json.as_str();
    // A namespace's `default` service account comes from a controller
    // moments after the namespace: pods applied with it are refused until
    // then. kubectl users apply again; so does the lab, for 20 s.
    let t0 = Instant::now();
    let out = loop {
        match kubectl_ok(kube, &["apply", "-f", "-"], Some(text)) {
            Err(e) if e.to_string().contains("serviceaccount \"default\" not found") && t0.elapsed() < SA_WAIT => {
                std::thread::sleep(Duration::from_millis(200));
            }
            r => break r?,
        }
    };
    print!("{out}");
    settle(lab, state, kube)
}

pub fn delete(lab: &Lab, state: &LabState, kube: &KubeState, text: &str) -> Result<()> {
    let json = as_json(text)?;
    let out = kubectl_ok(
        kube,
        &["delete", "--ignore-not-found", "--wait=true", "-f", "-"],
        Some(&json),
    )?;
    print!("{out}");
    settle(lab, state, kube)
}

pub fn scale(
    lab: &Lab,
    state: &LabState,
    kube: &KubeState,
    target: &str,
    namespace: &str,
    replicas: i32,
) -> Result<()> {
    let out = kubectl_ok(
        kube,
        &["scale", "-n", namespace, target, &format!("--replicas={replicas}")],
        None,
    )?;
    print!("{out}");
    settle(lab, state, kube)
}

/// Every object of a resource (`services`, `endpointslices`, ...), typed.
pub fn list<T: serde::de::DeserializeOwned>(kube: &KubeState, resource: &str) -> Result<Vec<T>> {
    let text = kubectl_ok(kube, &["get", resource, "-A", "-o", "json"], None)?;
    #[derive(serde::Deserialize)]
    struct List<T> {
        items: Vec<T>,
    }
    let list: List<T> = serde_json::from_str(&text).with_context(|| format!("kubectl get {resource}"))?;
    Ok(list.items)
}

/// `weir lab get` through the API server.
pub fn get(kube: &KubeState, kind: &str, name: Option<&str>, namespace: Option<&str>, output: Output) -> Result<()> {
    let mut args = vec!["get", kind];
    let (ns, name) = match name.and_then(|n| n.split_once('/')) {
        Some((ns, n)) => (Some(ns), Some(n)),
        None => (namespace, name),
    };
    args.extend(name);
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None if name.is_none() => args.push("-A"),
        None => {}
    }
    args.extend(match output {
        Output::Yaml => ["-o", "yaml"],
        Output::Json => ["-o", "json"],
        Output::Table => ["-o", "wide"],
    });
    print!("{}", kubectl_ok(kube, &args, None)?);
    Ok(())
}

/// Until what was written has taken effect: every workload controller has
/// made the pods it wants (a Deployment's pods come from its ReplicaSet
/// moments after `kubectl apply` returns), every pod bound to a lab node
/// runs (the kubelet wired it) or is gone, the EndpointSlice controller has
/// caught up with the pods, and every agent has applied a snapshot at least
/// as new as the newest object.
fn settle(lab: &Lab, state: &LabState, kube: &KubeState) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let why = match settled(lab, state, kube) {
            Ok(None) => return Ok(()),
            Ok(Some(w)) => w,
            Err(e) => format!("{e:#}"),
        };
        if t0.elapsed() > SETTLE {
            bail!("not settled within {}s: {why}", SETTLE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `None` when settled, else what is still pending.
fn settled(lab: &Lab, state: &LabState, kube: &KubeState) -> Result<Option<String>> {
    let text = kubectl_ok(
        kube,
        &[
            "get",
            "deployments,replicasets,statefulsets,pods,services,endpointslices,networkpolicies,namespaces,weirnetworkpolicies,weirclusternetworkpolicies,weiridentities",
            "-A",
            "-o",
            "json",
        ],
        None,
    )?;
    let list: serde_json::Value = serde_json::from_str(&text).context("kubectl get -o json")?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut newest = 0u64;
    let mut ready_ips = std::collections::BTreeSet::new();
    let mut endpoint_ips = std::collections::BTreeSet::new();
    let mut selected = std::collections::BTreeSet::new();
    let current = lab.dir.require()?;
    for o in &items {
        // The agents do not watch the workload controllers' objects: their
        // revisions are never applied.
        let watched = !matches!(o["kind"].as_str(), Some("Deployment" | "ReplicaSet" | "StatefulSet"));
        if let Some(rv) = o
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str()?.parse::<u64>().ok())
            .filter(|_| watched)
        {
            newest = newest.max(rv);
        }
        let name = o.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default();
        let ns = o
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        match o["kind"].as_str() {
            Some(kind @ ("Deployment" | "ReplicaSet" | "StatefulSet")) => {
                if let Some(why) = workload_pending(o) {
                    return Ok(Some(format!("{kind} {ns}/{name}: {why}")));
                }
            }
            Some("Pod") => {
                let node = o.pointer("/spec/nodeName").and_then(|v| v.as_str());
                let Some(node) = node.filter(|n| state.nodes.contains_key(*n)) else {
                    return Ok(Some(format!("pod {ns}/{name} not scheduled yet")));
                };
                let key = format!("{ns}/{name}");
                // A real kubelet reports readiness itself (probes
                // included); the lab's kubelet once it wired the pod.
                let running = match current.topology.kubelet {
                    super::topology::Kubelet::Real => o
                        .pointer("/status/conditions")
                        .and_then(|c| c.as_array())
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True"),
                    super::topology::Kubelet::Lab => current.pods.get(&key).is_some_and(|p| p.ip.is_some()),
                };
                let terminating = o.pointer("/metadata/deletionTimestamp").is_some();
                let phase = o.pointer("/status/phase").and_then(|v| v.as_str());
                if terminating {
                    return Ok(Some(format!("pod {key} still terminating")));
                }
                if !running || phase != Some("Running") {
                    return Ok(Some(format!("pod {key} on {node} not running yet")));
                }
                if let Some(ip) = o.pointer("/status/podIP").and_then(|v| v.as_str()) {
                    ready_ips.insert(ip.to_owned());
                    if pod_selected(&items, o) {
                        selected.insert(ip.to_owned());
                    }
                }
            }
            Some("EndpointSlice") => {
                // Pods' endpoints only (the `kubernetes` Service's is the
                // API server).
                let pods = o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.pointer("/targetRef/kind").and_then(|k| k.as_str()) == Some("Pod"));
                for e in pods {
                    for a in e["addresses"].as_array().into_iter().flatten() {
                        endpoint_ips.insert(a.as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(ip) = selected.iter().find(|ip| !endpoint_ips.contains(*ip)) {
        return Ok(Some(format!("EndpointSlices do not have {ip} yet")));
    }
    if let Some(ip) = endpoint_ips.iter().find(|ip| !ready_ips.contains(*ip)) {
        return Ok(Some(format!("EndpointSlices still have {ip}")));
    }
    for (name, node) in &state.nodes {
        match super::apply::agent_applied(&node.socket) {
            Some(r) if r >= newest => {}
            r => return Ok(Some(format!("agent of {name} has applied {r:?}, not yet {newest}"))),
        }
    }
    Ok(None)
}

/// What a Deployment, ReplicaSet or StatefulSet still waits for, as
/// `kubectl rollout status` judges it: its controller has seen its newest
/// spec and has exactly the replicas it wants, all of them ready (and, for
/// a Deployment, of the newest template). `None` once it has them.
fn workload_pending(o: &serde_json::Value) -> Option<String> {
    let int = |path: &str| o.pointer(path).and_then(|v| v.as_i64());
    let generation = int("/metadata/generation").unwrap_or(0);
    if int("/status/observedGeneration").unwrap_or(0) < generation {
        return Some("its controller has not seen the newest spec".to_owned());
    }
    // The API server defaults `replicas` to 1.
    let want = int("/spec/replicas").unwrap_or(1);
    let mut counts = vec![("replicas", int("/status/replicas").unwrap_or(0))];
    counts.push(("ready", int("/status/readyReplicas").unwrap_or(0)));
    if o["kind"] == "Deployment" {
        counts.push(("updated", int("/status/updatedReplicas").unwrap_or(0)));
    }
    counts
        .into_iter()
        .find(|(_, n)| *n != want)
        .map(|(what, n)| format!("{n} {what} of {want}"))
}

/// Whether a Service of the pod's namespace selects it.
fn pod_selected(items: &[serde_json::Value], pod: &serde_json::Value) -> bool {
    let ns = pod.pointer("/metadata/namespace");
    let labels = pod.pointer("/metadata/labels").and_then(|l| l.as_object());
    items
        .iter()
        .filter(|o| o["kind"] == "Service" && o.pointer("/metadata/namespace") == ns)
        .filter_map(|s| s.pointer("/spec/selector").and_then(|v| v.as_object()))
        .any(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)))
}

#[cfg(test)]
mod tests {
    use super::workload_pending;
    use serde_json::json;

    #[test]
    fn a_deployment_is_pending_until_its_pods_are_made_and_ready() {
        // Just applied: the controller has not looked at it yet.
        let fresh = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 3}, "status": {}});
        assert!(workload_pending(&fresh).is_some());
        // Its ReplicaSet has made one pod of three.
        let one = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}});
        assert_eq!(workload_pending(&one).as_deref(), Some("1 replicas of 3"));
        let all = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}});
        assert_eq!(workload_pending(&all), None);
        // Scaled down: pending until the extra pods are gone.
        let scaled = json!({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}});
        assert_eq!(workload_pending(&scaled).as_deref(), Some("3 replicas of 1"));
        // An old ReplicaSet scaled to zero with no pods left is done.
        let old = json!({"kind": "ReplicaSet", "metadata": {"generation": 3}, "spec": {"replicas": 0},
            "status": {"observedGeneration": 3, "replicas": 0}});
        assert_eq!(workload_pending(&old), None);
    }
}
