//! `weir lab up`: nodes, agents, and their Node objects.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir_agent_api::{Client, Request};

use super::manifests::{Object, Store};
use super::serve::{self, Proto};
use super::signals::{self, Interrupt};
use super::state::{LabState, NodeState};
use super::{Lab, down, netns, procs, topology};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What the external host serves; each answer is `external <peer-ip>`, so a
/// test sees the source address a pod's traffic arrived with.
pub const EXTERNAL_PORTS: [(u16, Proto); 2] = [(8080, Proto::Tcp), (5353, Proto::Udp)];

pub fn up(lab: &Lab, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let topo = topology::parse(&text).with_context(|| format!("{}", file.display()))?;
    let agent = lab.binary("weir-agent")?;
    lab.binary("weir-cni")?;
    // Signals first: no other thread may exist yet.
    let interrupt = Interrupt::catch().context("blocking SIGINT/SIGTERM")?;
    let _lock = lab.dir.lock()?;
    if let Some(existing) = lab.dir.load()? {
        bail!(
            "lab {:?} is already up in {} (run `weir lab down` first)",
            existing.name,
            lab.dir.root.display()
        );
    }
    let taken: Vec<String> = topo
        .nodes
        .iter()
        .map(|n| topo.node_netns(&n.name))
        .chain([topo.fabric_netns(), topo.external_netns()])
        .filter(|n| netns::exists(n))
        .collect();
    if !taken.is_empty() {
        bail!(
            "netns already exist: {} (a leftover lab? `ip netns delete` them)",
            taken.join(", ")
        );
    }
    // weir's DaemonSet pins by node name: another lab's node of the same
    // name would share its maps.
    if topo.install == topology::Install::None {
        let pinned: Vec<String> = topo
            .nodes
            .iter()
            .map(|n| Path::new(super::realnode::INSTALLED_BPFFS_ROOT).join(&n.name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !pinned.is_empty() {
            bail!(
                "pins of nodes of the same names exist: {} (another lab with install: none? name the nodes apart)",
                pinned.join(", ")
            );
        }
    }
    let mut state = LabState {
        name: topo.name.clone(),
        topology: topo.clone(),
        bpffs_root: format!("/sys/fs/bpf/weir/{}", topo.name).into(),
        netns: Vec::new(),
        nodes: BTreeMap::new(),
        pods: BTreeMap::new(),
        servers: Vec::new(),
        kube: None,
    };
    lab.dir.save(&state)?;
    match bring_up(lab, &topo, &agent, &mut state, &interrupt) {
        Ok(()) => {
            println!(
                "lab {} is up ({} node(s)); lab dir {}",
                topo.name,
                topo.nodes.len(),
                lab.dir.root.display()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("lab up failed: {e:#}\ntearing down what was created");
            for err in down::teardown(&lab.dir, Some(&state)) {
                eprintln!("  teardown: {err}");
            }
            Err(e)
        }
    }
}

fn bring_up(
    lab: &Lab,
    topo: &topology::Topology,
    agent: &Path,
    state: &mut LabState,
    interrupt: &Interrupt,
) -> Result<()> {
    for d in [lab.dir.logs(), lab.dir.manifests()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let store = Store::new(lab.dir.manifests());
    let prefix = topo.node_cidr.prefix_len();
    for ns in [topo.fabric_netns(), topo.external_netns()] {
        state.netns.push(ns);
    }
    lab.dir.save(state)?;
    netns::create_fabric(&topo.fabric_netns())?;
    netns::create(&topo.external_netns())?;
    netns::attach_to_fabric(
        &topo.fabric_netns(),
        "external",
        &topo.external_netns(),
        &format!("{}/{prefix}", topo.external_ip()),
        true,
    )?;
    let exe = std::env::current_exe().context("locating the weir binary")?;
    let server = serve::start(
        signals::spawn_in(None, exe)?,
        &netns::path(&topo.external_netns()).to_string_lossy(),
        "external",
        &EXTERNAL_PORTS,
        true,
        "serve external".into(),
        &lab.dir.logs().join("serve-external.log"),
    )?;
    state.servers.push(server);
    lab.dir.save(state)?;
    println!(
        "external host: netns {}, address {}, serving 8080/TCP and 5353/UDP",
        topo.external_netns(),
        topo.external_ip()
    );
    // For the nodes' XDP (NodePorts): see netns::xdp_pass_on.
    let xdp_pass = lab.dir.root.join("run").join("xdp_pass.o");
    std::fs::create_dir_all(lab.dir.root.join("run")).context("creating the lab's run dir")?;
    std::fs::write(&xdp_pass, weir_datapath::BPF_XDP_PASS)
        .with_context(|| format!("writing {}", xdp_pass.display()))?;
    // Only when nodes run XDP: an XDP program on a veth sends every frame
    // through the XDP path (GSO frames copied), which costs throughput.
    if topo.node_port_xdp.nodes_run_xdp() {
        netns::xdp_pass_on(&topo.fabric_netns(), "external", &xdp_pass)?;
    }
    let kubernetes = topo.control_plane == topology::ControlPlane::Kubernetes;
    let real = topo.kubelet == topology::Kubelet::Real;
    // weir is installed into the cluster by its user, not by the lab.
    let installed = topo.install == topology::Install::None;
    for (index, node) in topo.nodes.iter().enumerate() {
        interrupt.check()?;
        let node_ip = topo.node_ip(index);
        let ns = topo.node_netns(&node.name);
        // weir's DaemonSet keeps its socket in the node's own /run/weir.
        let socket = match installed {
            true => super::realnode::installed_agent_socket(&lab.dir, &node.name),
            false => lab.dir.node_socket(&node.name),
        };
        // Record before creating: `down` treats a missing netns as done.
        state.netns.push(ns.clone());
        state.nodes.insert(
            node.name.clone(),
            NodeState {
                netns: ns.clone(),
                pod_cidr: node.pod_cidr.to_string(),
                socket: socket.clone(),
                agent: None,
            },
        );
        lab.dir.save(state)?;
        netns::create(&ns)?;
        netns::attach_to_fabric(
            &topo.fabric_netns(),
            &format!("node{index}"),
            &ns,
            &format!("{node_ip}/{prefix}"),
            false,
        )?;
        if topo.node_port_xdp.nodes_run_xdp() {
            netns::xdp_pass_on(&topo.fabric_netns(), &format!("node{index}"), &xdp_pass)?;
        }

        if kubernetes {
            continue;
        }
        store.put(&Object::Node(Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some([("kubernetes.io/hostname".to_string(), node.name.clone())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(node.pod_cidr.to_string()),
                pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: node_ip.to_string(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: node.name.clone(),
                    },
                ]),
                ..Default::default()
            }),
        }))?;
    }

    // The real control plane, in the first node's netns, before any agent.
    let mut source: Vec<std::ffi::OsString> = vec!["--manifests".into(), lab.dir.manifests().into()];
    if kubernetes {
        interrupt.check()?;
        let kube = super::kube::start(lab, topo, state)?;
        state.kube = Some(kube.clone());
        lab.dir.save(state)?;
        for (index, node) in topo.nodes.iter().enumerate() {
            super::kube::create_node(
                &kube,
                &node.name,
                &node.pod_cidr.to_string(),
                topo.node_ip(index),
                !real,
            )?;
        }
        if real {
            start_real_nodes(lab, topo, &kube, state, interrupt)?;
        }
        if installed {
            return prepare_for_install(lab, topo, &kube, state);
        }
        let agent_kc = super::kube::service_account_kubeconfig(lab, &kube, "weir-agent", &kube.server)?;
        let operator_kc = super::kube::service_account_kubeconfig(lab, &kube, "weir-operator", &kube.server)?;
        let operator = lab.binary("weir-operator")?;
        let log = File::create(lab.dir.logs().join("operator.log")).context("creating the operator's log")?;
        let child = signals::spawn_in(Some(&netns::path(&kube.netns)), &operator)?
            .arg("--kubeconfig")
            .arg(&operator_kc)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", operator.display()))?;
        state
            .servers
            .push(procs::record(child.id(), "weir-operator".to_owned()));
        lab.dir.save(state)?;
        source = vec!["--kubeconfig".into(), agent_kc.into()];
    }

    let mut children: Vec<(String, Child)> = Vec::new();
    for (index, node) in topo.nodes.iter().enumerate() {
        interrupt.check()?;
        // On a real control plane the relay finds the agents from the Node
        // objects and reaches them at their node address, Hubble's port:
        // in plaintext, said so explicitly (the lab's segment exists only
        // in its namespaces; certificates for it are not made yet).
        let hubble_listen: Vec<String> = match kubernetes {
            true => vec![
                "--hubble-listen".into(),
                format!("{}:4244", topo.node_ip(index)),
                "--hubble-insecure".into(),
            ],
            false => Vec::new(),
        };
        let ns = topo.node_netns(&node.name);
        let socket = lab.dir.node_socket(&node.name);
        let state_dir = lab.dir.node_state(&node.name);
        let run_dir = socket.parent().context("socket has no dir")?.to_owned();
        for d in [&state_dir, &run_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let _ = std::fs::remove_file(&socket);
        let log_path = lab.dir.logs().join(format!("agent-{}.log", node.name));
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = signals::spawn_in(Some(&netns::path(&ns)), agent)?
            .arg("--node")
            .arg(&node.name)
            .arg("--pod-cidr")
            .arg(node.pod_cidr.to_string())
            .arg("--bpffs-root")
            .arg(&state.bpffs_root)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--flow-export-config")
            .arg(lab.dir.node_flow_export(&node.name))
            .args(&source)
            .args(&hubble_listen)
            .args(&topo.agent_args)
            .args(["--uplink", "eth0", "--routing", topo.routing.as_flag()])
            .arg(format!("--nodeport-xdp={}", topo.node_port_xdp.as_flag()))
            // Pods reach the external host (and other nodes) as their node.
            .arg("--cluster-cidr")
            .arg(topo.cluster_cidr.to_string())
            // Two malloc arenas: standalone mode parses every manifest on
            // each change from a blocking-pool thread, and glibc's default
            // (an arena per thread, up to 8 per core) keeps each thread's
            // peak (docs/benchmarks.md, policy memory).
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", agent.display()))?;
        let proc_ = procs::record(child.id(), format!("weir-agent {}", node.name));
        println!("node {}: netns {ns}, agent pid {}", node.name, proc_.pid);
        if let Some(n) = state.nodes.get_mut(&node.name) {
            n.agent = Some(proc_);
        }
        lab.dir.save(state)?;
        children.push((node.name.clone(), child));
    }

    // Wait for every agent to answer Status.
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pending = children;
    while !pending.is_empty() {
        interrupt.check()?;
        let mut still = Vec::new();
        for (name, mut child) in pending {
            let socket = lab.dir.node_socket(&name);
            if let Some(status) = child.try_wait()? {
                bail!(
                    "agent on node {name} exited with {status}; its log ends:\n{}",
                    log_tail(lab, &name)
                );
            }
            if Client::new(&socket, Duration::from_secs(2))
                .call(Request::Status)
                .is_ok()
            {
                println!("node {name}: agent ready");
            } else {
                still.push((name, child));
            }
        }
        pending = still;
        if !pending.is_empty() {
            if Instant::now() > deadline {
                let names: Vec<_> = pending.iter().map(|(n, _)| n.as_str()).collect();
                let tails: Vec<_> = names
                    .iter()
                    .map(|n| format!("--- {n}:\n{}", log_tail(lab, n)))
                    .collect();
                bail!(
                    "agents not ready after {READY_TIMEOUT:?}: {}\n{}",
                    names.join(", "),
                    tails.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let (true, Some(kube)) = (real, state.kube.clone()) {
        install_weir_cni(lab, topo, &kube, interrupt)?;
    } else if let Some(kube) = state.kube.clone() {
        let exe = std::env::current_exe().context("locating the weir binary")?;
        let log = File::create(lab.dir.logs().join("kubelet.log")).context("creating the kubelet's log")?;
        let child = signals::spawn_in(Some(&netns::path(&kube.netns)), &exe)?
            .arg("--lab-dir")
            .arg(&lab.dir.root)
            .arg("kubelet")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the lab's kubelet")?;
        state
            .servers
            .push(procs::record(child.id(), "weir-lab kubelet".to_owned()));
        lab.dir.save(state)?;
        println!("kubelet: pods bound to the lab's nodes are wired by weir-cni");
    }
    start_relay(lab, topo, state)
}

/// The registry, then containerd and the kubelet on every node; returns
/// once every node has registered and reports NotReady for want of a CNI,
/// as a fresh cluster's nodes do.
fn start_real_nodes(
    lab: &Lab,
    topo: &topology::Topology,
    kube: &super::state::KubeState,
    state: &mut LabState,
    interrupt: &Interrupt,
) -> Result<()> {
    let registry = super::registry::start(lab, state)?;
    let sandbox = super::registry::images()?
        .into_iter()
        .find(|i| i.path().starts_with("pause:"))
        .context("the tools cache has no pause image (scripts/tools.sh builds it)")?
        .reference;
    let dns = cluster_dns(topo);
    for (index, node) in topo.nodes.iter().enumerate() {
        interrupt.check()?;
        let kubeconfig = weir_control_plane::node_kubeconfig(&lab.dir.kube(), &node.name, &kube.server)?;
        super::realnode::start(
            lab,
            state,
            &node.name,
            topo.node_ip(index),
            &kubeconfig,
            &registry,
            &sandbox,
            dns,
        )?;
        println!("node {}: containerd and kubelet started", node.name);
    }
    wait_nodes(lab, kube, topo, interrupt, |ready, reason| {
        !ready && reason.contains("cni plugin not initialized")
    })?;
    // The cluster DNS, as kubeadm deploys it: Pending until a CNI runs.
    let coredns = super::registry::images()?
        .into_iter()
        .find(|i| i.path().starts_with("coredns/coredns:"))
        .context("the tools cache has no CoreDNS image (scripts/tools.sh builds it)")?;
    let version = coredns.reference.rsplit_once(':').map(|(_, v)| v).unwrap_or_default();
    let manifest = include_str!("../cluster/coredns.yaml")
        .replace("COREDNS_VERSION", version)
        .replace("CLUSTER_DNS", &dns.to_string());
    super::kube::kubectl_ok(kube, &["apply", "-f", "-"], Some(&manifest))?;
    println!("cluster DNS: CoreDNS {version} at {dns} (kube-system/kube-dns)");
    for node in &topo.nodes {
        println!("node {}: NotReady (no CNI configured yet)", node.name);
    }
    Ok(())
}

/// `install: none`: the nodes as a CNI's installer expects them (IPv4
/// forwarding on, as kubeadm requires), weir's image in the registry
/// under the tag install/weir.yaml names, and what to do next.
fn prepare_for_install(
    lab: &Lab,
    topo: &topology::Topology,
    kube: &super::state::KubeState,
    state: &LabState,
) -> Result<()> {
    for node in &topo.nodes {
        let ns = topo.node_netns(&node.name);
        netns::run_in(&netns::path(&ns).to_string_lossy(), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })?
        .with_context(|| format!("enabling IPv4 forwarding on node {}", node.name))?;
    }
    let t0 = Instant::now();
    let tag = env!("CARGO_PKG_VERSION");
    let size = super::registry::push_weir(lab, state, &lab.bin_dir()?, tag)?;
    println!(
        "weir image: {}:{tag} in the registry ({} MiB, built and pushed in {:.1}s)",
        super::registry::WEIR_IMAGE,
        size >> 20,
        t0.elapsed().as_secs_f64()
    );
    let (host, port) = kube
        .server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .context("the API server's address")?;
    println!(
        "weir is not installed: the nodes wait for a CNI. Install it as on any cluster:\n  \
         weir lab kubectl -- -n kube-system create configmap weir-kube-api \\\n    \
         --from-literal=KUBERNETES_SERVICE_HOST={host} --from-literal=KUBERNETES_SERVICE_PORT={port}\n  \
         weir lab kubectl -- apply -f install/weir.yaml"
    );
    Ok(())
}

/// The cluster DNS Service's address: the service range's tenth, as
/// kubeadm picks it.
fn cluster_dns(topo: &topology::Topology) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(topo.service_cidr.network()) + 10)
}

/// weir's install step on real nodes, once every agent serves: the CNI
/// plugin and conflist onto each node; returns when every node is Ready.
fn install_weir_cni(
    lab: &Lab,
    topo: &topology::Topology,
    kube: &super::state::KubeState,
    interrupt: &Interrupt,
) -> Result<()> {
    let plugin = lab.binary("weir-cni")?;
    for node in &topo.nodes {
        super::realnode::install_cni(lab, &node.name, &plugin, &lab.dir.node_socket(&node.name))?;
    }
    let t0 = Instant::now();
    wait_nodes(lab, kube, topo, interrupt, |ready, _| ready)?;
    println!(
        "weir installed as the CNI: every node Ready {:.1}s later",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Until every lab node's Ready condition passes `ok(ready, message)`.
fn wait_nodes(
    lab: &Lab,
    kube: &super::state::KubeState,
    topo: &topology::Topology,
    interrupt: &Interrupt,
    ok: impl Fn(bool, &str) -> bool,
) -> Result<()> {
    let limit = Duration::from_secs(120);
    let t0 = Instant::now();
    loop {
        interrupt.check()?;
        let nodes: Vec<Node> = super::kube::list(kube, "nodes")?;
        let pending: Vec<String> = topo
            .nodes
            .iter()
            .filter(|want| {
                let cond = nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(want.name.as_str()))
                    .and_then(|n| {
                        n.status
                            .as_ref()?
                            .conditions
                            .as_ref()?
                            .iter()
                            .find(|c| c.type_ == "Ready")
                            .cloned()
                    });
                !cond.is_some_and(|c| ok(c.status == "True", c.message.as_deref().unwrap_or_default()))
            })
            .map(|n| n.name.clone())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!(
                "nodes {} not as expected within {limit:?}; see {}",
                pending.join(", "),
                lab.dir.logs().display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The relay, on the host (it reaches every agent's Unix socket; no netns
/// needed), serving the lab's Observer API on `run/relay.sock`:
/// `weir lab observe` and `weir observe` use it without flags.
fn start_relay(lab: &Lab, topo: &topology::Topology, state: &mut LabState) -> Result<()> {
    let relay = lab.binary("weir-relay")?;
    let log_path = lab.dir.logs().join("relay.log");
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = match state.kube.clone() {
        // In the control plane's netns: it reaches the API server and,
        // over the lab segment, every agent.
        Some(kube) => {
            let kc = super::kube::service_account_kubeconfig(lab, &kube, "weir-relay", &kube.server)?;
            let mut cmd = signals::spawn_in(Some(&netns::path(&kube.netns)), &relay)?;
            cmd.arg("--discover")
                .arg("--insecure-agents")
                .arg("--kubeconfig")
                .arg(kc);
            cmd
        }
        None => {
            let mut cmd = signals::spawn_in(None, &relay)?;
            for node in &topo.nodes {
                let sock = lab.dir.node_hubble_socket(&node.name);
                cmd.arg("--peer")
                    .arg(format!("{}=unix://{}", node.name, sock.display()));
            }
            // The map's policy check reads the lab's manifests.
            cmd.arg("--policy-check-manifests").arg(lab.dir.manifests());
            cmd
        }
    };
    cmd.arg("--socket").arg(lab.dir.relay_socket());
    // The service map, on loopback: a free port, told back in a file.
    let _ = std::fs::remove_file(lab.dir.ui_address_file());
    cmd.arg("--ui-listen")
        .arg("127.0.0.1:0")
        .arg("--ui-address-file")
        .arg(lab.dir.ui_address_file());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", relay.display()))?;
    state.servers.push(procs::record(child.id(), "weir-relay".to_owned()));
    lab.dir.save(state)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !lab.dir.relay_socket().exists() || !lab.dir.ui_address_file().exists() {
        if Instant::now() > deadline {
            bail!("weir-relay did not come up; {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("relay: {} (weir lab observe)", lab.dir.relay_socket().display());
    if let Some(url) = lab.dir.ui_url() {
        match &state.kube {
            Some(kube) => println!("service map: {url} (in netns {})", kube.netns),
            None => println!("service map: {url} (weir lab ui)"),
        }
    }
    Ok(())
}

fn log_tail(lab: &Lab, node: &str) -> String {
    let path = lab.dir.logs().join(format!("agent-{node}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
