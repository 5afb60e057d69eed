//! Real nodes (`kubelet: real`): containerd and the real kubelet in each lab
//! node's netns and in a mount namespace of the node's own, so two nodes on
//! one host are two hosts to what runs on them: each sees its own
//! `/opt/cni/bin`, `/etc/cni/net.d`, `/run/weir` and `/var/lib/weir`
//! (bind mounts of `<lab>/nodes/<node>/host/...`), which is where weir's
//! DaemonSet (install/weir.yaml) puts its plugin, conflist, socket and
//! state, as on any node. The node's directory is a shared mount, so what
//! containerd and the kubelet mount under it (rootfs, pod netns, volumes)
//! is seen from the host too; nothing else of the node's mounts is.
//! Everything else is the node's own as well: root, state and socket of
//! containerd, the kubelet's root, pod logs, a cgroup parent
//! (`/weir-<lab>-<node>` in every hierarchy, which the pods and
//! containerd's shims live under) and a runc root. containerd's pod netns
//! are mounted under its state dir.
//!
//! A node starts with an empty CNI config dir: the kubelet reports it
//! NotReady ("cni plugin not initialized") until weir is installed: by the
//! lab ([`install_cni`], as weir's installer would: `weir-cni` into the
//! node's CNI bin dir, then the conflist, atomically, last) or by
//! `kubectl apply -f install/weir.yaml`.
//!
//! Teardown ([`teardown`]) is what a machine's reboot would do: every
//! process in the node's cgroups killed, every mount under its directory
//! and its mount namespace unmounted, the cgroups removed depth-first. It
//! keeps going on errors.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::state::{LabDir, LabState};
use super::{Lab, netns, procs, signals};

/// The cgroup v1 hierarchies and the (empty) cgroup v2 one of this host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The runtime's CNI directories, as on any node.
const CNI_BIN: &str = "/opt/cni/bin";
const CNI_CONF: &str = "/etc/cni/net.d";
/// What each node has of its own at the standard paths: the CNI dirs,
/// what weir's DaemonSet keeps on the host (install/helm/weir values), and
/// `/run/containerd`, where containerd's shims put their sockets whatever
/// its `state` says.
const NODE_PATHS: [&str; 5] = [CNI_BIN, CNI_CONF, "/run/weir", "/var/lib/weir", "/run/containerd"];

/// Where weir's DaemonSet pins (`--bpffs-root` in install/helm/weir): the
/// agent adds the node's name.
pub const INSTALLED_BPFFS_ROOT: &str = "/sys/fs/bpf/weir";

/// The agent's socket on a node where weir's DaemonSet runs, as the host
/// sees it (the chart's `agent.runDir`, `/var/run/weir` = `/run/weir`).
pub fn installed_agent_socket(dir: &LabDir, node: &str) -> PathBuf {
    NodeDirs::new(dir, node).host("/run/weir").join("agent.sock")
}

/// Where a node's files live.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    pub root: PathBuf,
}

impl NodeDirs {
    pub fn new(dir: &LabDir, node: &str) -> Self {
        Self {
            root: dir.root.join("nodes").join(node),
        }
    }
    fn containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd().join("containerd.sock")
    }
    /// The host-side directory behind the node's `path`.
    pub fn host(&self, path: &str) -> PathBuf {
        self.root.join("host").join(path.trim_start_matches('/'))
    }
    pub fn cni_bin(&self) -> PathBuf {
        self.host(CNI_BIN)
    }
    pub fn cni_conf(&self) -> PathBuf {
        self.host(CNI_CONF)
    }
    /// The node's mount namespace, bound to a file beside its directory.
    pub fn mount_ns(&self) -> PathBuf {
        self.root.with_extension("mnt")
    }
    fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    fn registry_hosts(&self) -> PathBuf {
        self.containerd().join("certs.d")
    }
}

/// The cgroup parent of a node's pods and runtime, relative to each hierarchy.
pub fn cgroup_parent(lab: &str, node: &str) -> String {
    format!("weir-{lab}-{node}")
}

/// containerd's config (version 3): its own root, state, sockets and runc
/// root; cgroupfs (no systemd here); the CRI plugin's CNI dirs (the
/// standard ones, the node's own in its mount namespace), the
/// sandbox image and the registry mirror. containerd's own loopback setup
/// (`use_internal_loopback`) stands in for the `loopback` CNI plugin.
/// `restrict_oom_score_adj`: root here lacks CAP_SYS_RESOURCE, so no
/// process may lower its OOM score below its parent's; the kubelet asks
/// -998 for sandboxes, which runc would fail to set.
pub fn containerd_config(dirs: &NodeDirs, sandbox_image: &str, runc: &Path) -> String {
    let c = dirs.containerd();
    let d = |p: PathBuf| p.display().to_string();
    // `WEIR_LAB_CONTAINERD_LOG=debug`: the CRI plugin logs when each CNI
    // setup begins and ends (`weir-bench --real-nodes` times ADDs so).
    let level = std::env::var("WEIR_LAB_CONTAINERD_LOG").unwrap_or_else(|_| "info".into());
    let level = if level == "debug" { "debug" } else { "info" };
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[debug]
  level = "{level}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{opt}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{hosts}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  enable_cdi = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{CNI_CONF}"
    max_conf_num = 1
    use_internal_loopback = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc_bin}"
      Root = "{runc}"
      SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        root = d(c.join("root")),
        state = d(c.join("state")),
        sock = d(dirs.containerd_socket()),
        opt = d(c.join("opt")),
        hosts = d(dirs.registry_hosts()),
        runc = d(c.join("runc")),
        runc_bin = runc.display(),
    )
}

/// `hosts.toml` for one public registry name: every pull goes to the lab's
/// registry, and only there (`server` is the lab's too, so nothing falls
/// back to the public host).
pub fn registry_hosts_toml(registry: &str) -> String {
    format!(
        "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
    )
}

/// The kubelet's configuration for a lab node.
pub struct KubeletSettings<'a> {
    pub dirs: &'a NodeDirs,
    pub cgroup_parent: &'a str,
    pub node_ip: Ipv4Addr,
    pub cluster_dns: Ipv4Addr,
}

/// KubeletConfiguration: cgroup v1 accepted (`failCgroupV1: false`, this
/// host mounts v1), cgroupfs, the node's own cgroup parent, containerd's
/// socket, the API served on the node address only, eviction thresholds
/// low enough for a shared disk, no static pods. Anonymous access with
/// AlwaysAllow: the kubelet's port is on the lab segment, inside the
/// lab's namespaces only (the API server's exec and logs reach it there).
pub fn kubelet_config(s: &KubeletSettings) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
failSwapOn: false
oomScoreAdj: 0
containerRuntimeEndpoint: unix://{sock}
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
podLogsDir: {logs}
staticPodPath: ""
clusterDomain: cluster.local
clusterDNS: [{dns}]
resolvConf: ""
registerNode: true
serializeImagePulls: false
localStorageCapacityIsolation: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
"#,
        cgroup = s.cgroup_parent,
        sock = s.dirs.containerd_socket().display(),
        ip = s.node_ip,
        logs = s.dirs.root.join("pod-logs").display(),
        dns = s.cluster_dns,
    )
}

/// Every cgroup hierarchy mounted here (v1 controllers and the v2 one).
fn hierarchies() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(CGROUP_ROOT))
        .map(PathBuf::from)
        .collect()
}

/// Creates the node's cgroup parent in every hierarchy (cpuset's with the
/// parent's cpus and mems, which a v1 cpuset cgroup needs before any task
/// joins it), and `<parent>/runtime` for containerd, whose shims inherit it.
fn make_cgroups(parent: &str) -> Result<()> {
    for h in hierarchies() {
        for dir in [h.join(parent), h.join(parent).join("runtime")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let up = dir.parent().map(|p| p.join(f));
                if let Some(up) = up.filter(|p| p.exists()) {
                    let v = std::fs::read_to_string(&up).unwrap_or_default();
                    std::fs::write(dir.join(f), v.trim()).with_context(|| format!("{}/{f}", dir.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves `pid` into `<parent>/runtime` in every hierarchy.
fn join_cgroups(parent: &str, pid: u32) -> Result<()> {
    for h in hierarchies() {
        let procs = h.join(parent).join("runtime").join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).with_context(|| format!("writing {}", procs.display()))?;
    }
    Ok(())
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The node's mount namespace (see the module's doc): its directory a
/// shared mount, then a persistent namespace bound to `mount_ns()` in
/// which the standard paths are the node's own.
fn make_mount_ns(dirs: &NodeDirs) -> Result<()> {
    let os = |s: &str| std::ffi::OsString::from(s);
    let root = dirs.root.as_os_str();
    run("mount", &[&os("--bind"), root, root])?;
    run("mount", &[&os("--make-shared"), root])?;
    let ns = dirs.mount_ns();
    File::create(&ns).with_context(|| format!("creating {}", ns.display()))?;
    let mut flag = os("--mount=");
    flag.push(&ns);
    run("unshare", &[&flag, &os("--propagation"), &os("unchanged"), &os("true")])?;
    // Every mount shared, as on a systemd host (this one's are private):
    // containerd refuses HostToContainer propagation from a private mount
    // (the DaemonSet's /sys/fs/bpf). New peer groups, the node's alone.
    run(
        "nsenter",
        &[&flag, &os("--"), &os("mount"), &os("--make-rshared"), &os("/")],
    )?;
    for path in NODE_PATHS {
        let own = dirs.host(path);
        std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
        // The mount point, on the host's file system (an empty directory).
        std::fs::create_dir_all(path).with_context(|| format!("creating {path}"))?;
        run(
            "nsenter",
            &[
                &flag,
                &os("--"),
                &os("mount"),
                &os("--bind"),
                own.as_os_str(),
                &os(path),
            ],
        )?;
    }
    Ok(())
}

/// Starts containerd and the kubelet of node `node` (its netns exists,
/// its agent need not). Records both processes before returning.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each value a different fact of the node"
)]
pub fn start(
    lab: &Lab,
    state: &mut LabState,
    node: &str,
    node_ip: Ipv4Addr,
    kubeconfig: &Path,
    registry: &str,
    sandbox_image: &str,
    cluster_dns: Ipv4Addr,
) -> Result<()> {
    let dirs = NodeDirs::new(&lab.dir, node);
    let ns = state.topology.node_netns(node);
    let parent = cgroup_parent(&state.name, node);
    for d in [dirs.containerd(), dirs.kubelet(), dirs.root.join("pod-logs")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    make_mount_ns(&dirs)?;
    let mut in_node = std::ffi::OsString::from("--mount=");
    in_node.push(dirs.mount_ns());
    // The public names the images go by, all served by the lab's registry.
    for host in ["registry.k8s.io", "docker.io", "ghcr.io", "quay.io"] {
        let d = dirs.registry_hosts().join(host);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), registry_hosts_toml(registry))?;
    }
    let tool = |name: &str| {
        weir_control_plane::tool(name).with_context(|| format!("{name} is not built: scripts/tools.sh builds it"))
    };
    let config = dirs.containerd().join("config.toml");
    std::fs::write(&config, containerd_config(&dirs, sandbox_image, &tool("runc")?))?;
    make_cgroups(&parent)?;

    let containerd = tool("containerd")?;
    let log = File::create(lab.dir.logs().join(format!("containerd-{node}.log")))?;
    // The shim is found on PATH: the tools' bin dir first.
    let path = format!(
        "{}:{}",
        containerd.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = signals::spawn_in(Some(&netns::path(&ns)), "nsenter")?
        .arg(&in_node)
        .arg("--")
        .arg(&containerd)
        .arg("--config")
        .arg(&config)
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting containerd")?;
    state
        .servers
        .push(procs::record(child.id(), format!("containerd {node}")));
    lab.dir.save(state)?;
    join_cgroups(&parent, child.id())?;
    wait_for(
        &dirs.containerd_socket(),
        Duration::from_secs(20),
        "containerd's socket",
    )?;

    let kubelet_config_path = dirs.kubelet().join("config.yaml");
    std::fs::write(
        &kubelet_config_path,
        kubelet_config(&KubeletSettings {
            dirs: &dirs,
            cgroup_parent: &parent,
            node_ip,
            cluster_dns,
        }),
    )?;
    let kubelet = tool("kubelet")?;
    let log = File::create(lab.dir.logs().join(format!("kubelet-{node}.log")))?;
    let child = signals::spawn_in(Some(&netns::path(&ns)), "nsenter")?
        .arg(&in_node)
        .arg("--")
        .arg(&kubelet)
        .arg(format!("--config={}", kubelet_config_path.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", dirs.kubelet().join("root").display()))
        .arg(format!("--hostname-override={node}"))
        .arg(format!("--node-ip={node_ip}"))
        .arg("--v=1")
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the kubelet")?;
    state.servers.push(procs::record(child.id(), format!("kubelet {node}")));
    lab.dir.save(state)?;
    Ok(())
}

fn wait_for(path: &Path, limit: Duration, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > limit {
            bail!("{what} ({}) did not appear within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Installs weir as the node's CNI: the plugin first, then the conflist,
/// atomically (a runtime reading the dir sees no conflist or a whole one).
pub fn install_cni(lab: &Lab, node: &str, plugin: &Path, agent_socket: &Path) -> Result<()> {
    let dirs = NodeDirs::new(&lab.dir, node);
    let bin = dirs.cni_bin().join("weir-cni");
    let tmp = dirs.cni_bin().join(".weir-cni.tmp");
    std::fs::copy(plugin, &tmp).with_context(|| format!("copying {} to {}", plugin.display(), tmp.display()))?;
    std::fs::rename(&tmp, &bin)?;
    super::state::write_atomic(
        &dirs.cni_conf().join(weir_agent_api::CONFLIST_NAME),
        weir_agent_api::conflist(agent_socket).as_bytes(),
    )
}

/// The pods real kubelets run, as their nodes' agents wired them (each
/// endpoint names its pod and the netns containerd made), in
/// `state.pods`, for the commands that reach into pods (probe, exec,
/// matrix, status). Never saved: the lab did not make these, and `down`
/// must not delete what containerd owns.
pub fn pods_from_agents(state: &mut LabState) {
    use weir_agent_api::{Client, Request, Response};
    for (node, ns) in &state.nodes {
        let Ok(Response::Endpoints { endpoints }) =
            Client::new(&ns.socket, Duration::from_secs(5)).call(Request::EndpointList)
        else {
            continue;
        };
        for ep in endpoints {
            let key = format!("{}/{}", ep.pod.namespace, ep.pod.name);
            state.pods.insert(
                key,
                super::state::PodState {
                    namespace: ep.pod.namespace,
                    name: ep.pod.name,
                    node: node.clone(),
                    netns: ep.netns,
                    container_id: ep.container_id,
                    uid: ep.pod.uid,
                    ip: Some(ep.ipv4.to_string()),
                    servers: Vec::new(),
                },
            );
        }
    }
}

/// Kills every process in the node's cgroups, unmounts everything under
/// its directory and removes its cgroups. Returns every error.
pub fn teardown(dir: &LabDir, state: &LabState) -> Vec<String> {
    let mut errors = Vec::new();
    for node in state.nodes.keys() {
        let parent = cgroup_parent(&state.name, node);
        errors.extend(kill_cgroup(&parent));
        let dirs = NodeDirs::new(dir, node);
        errors.extend(unmount_under(&dirs.root));
        let ns = dirs.mount_ns();
        if ns.exists() {
            match nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => errors.push(format!("unmounting {}: {e}", ns.display())),
            }
            if let Err(e) = std::fs::remove_file(&ns) {
                errors.push(format!("removing {}: {e}", ns.display()));
            }
        }
        errors.extend(remove_cgroups(&parent));
        // An installed agent's pins (the chart's bpffs root, by node name):
        // what a reboot would take with it.
        if state.topology.install == super::topology::Install::None {
            let pins = Path::new(INSTALLED_BPFFS_ROOT).join(node);
            match std::fs::remove_dir_all(&pins) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", pins.display())),
            }
        }
    }
    errors
}

fn pids_in(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids_in(&e.path(), out);
            }
        }
    }
}

/// SIGKILL until the cgroup tree is empty (a dying shim's children may
/// briefly move), for up to 10 s.
fn kill_cgroup(parent: &str) -> Vec<String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let t0 = Instant::now();
    loop {
        let mut pids = Vec::new();
        for h in hierarchies() {
            pids_in(&h.join(parent), &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            return Vec::new();
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return vec![format!("processes left in cgroup {parent}: {pids:?}")];
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unmounts every mount point under `root`, deepest first (lazily: a
/// process that has not died yet must not stop the teardown).
fn unmount_under(root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec!["reading /proc/self/mountinfo".into()];
    };
    let prefix = root.to_string_lossy().into_owned();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    // Later mounts first: a mount stacked on another goes before it.
    points.reverse();
    let mut errors = Vec::new();
    for p in points {
        if let Err(e) = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
            && e != nix::errno::Errno::ENOENT
        {
            errors.push(format!("unmounting {p}: {e}"));
        }
    }
    errors
}

fn remove_tree(dir: &Path, errors: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), errors);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("removing cgroup {}: {e}", dir.display())),
    }
}

fn remove_cgroups(parent: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for h in hierarchies() {
        remove_tree(&h.join(parent), &mut errors);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_is_confined_to_the_nodes_directory() {
        let dirs = NodeDirs::new(&LabDir::new("/run/lab"), "node1");
        let c = containerd_config(&dirs, "registry.k8s.io/pause:3.10.2", Path::new("/tools/runc"));
        assert!(c.contains("root = \"/run/lab/nodes/node1/containerd/root\""));
        assert!(c.contains("address = \"/run/lab/nodes/node1/containerd/containerd.sock\""));
        // The standard CNI dirs: the node's own in its mount namespace.
        assert!(c.contains("conf_dir = \"/etc/cni/net.d\""));
        assert_eq!(dirs.cni_conf(), Path::new("/run/lab/nodes/node1/host/etc/cni/net.d"));
        assert_eq!(dirs.mount_ns(), Path::new("/run/lab/nodes/node1.mnt"));
        assert!(c.contains("netns_mounts_under_state_dir = true"));
        // Top-level keys come before the first table, else TOML files them
        // under it and containerd falls back to /var/lib/containerd.
        let top = c.split("\n[").next().unwrap_or_default();
        assert!(top.contains("root = ") && top.contains("state = "), "{top}");
        assert!(c.contains("sandbox = \"registry.k8s.io/pause:3.10.2\""));
        // No path of the host's own containerd.
        assert!(!c.contains("/var/lib/containerd") && !c.contains("/run/containerd"));
    }

    #[test]
    fn the_mirror_never_falls_back_to_the_public_registry() {
        let t = registry_hosts_toml("172.30.0.254:5000");
        assert!(t.starts_with("server = \"http://172.30.0.254:5000\""));
        assert!(!t.contains("registry.k8s.io"));
    }

    #[test]
    fn the_kubelet_runs_on_cgroup_v1_under_the_nodes_parent() {
        let dirs = NodeDirs::new(&LabDir::new("/run/lab"), "node1");
        let k = kubelet_config(&KubeletSettings {
            dirs: &dirs,
            cgroup_parent: "weir-demo-node1",
            node_ip: Ipv4Addr::new(172, 30, 0, 11),
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
        });
        assert!(k.contains("failCgroupV1: false") && k.contains("cgroupRoot: /weir-demo-node1"));
        assert!(k.contains("address: 172.30.0.11") && k.contains("clusterDNS: [10.96.0.10]"));
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&k).expect("YAML");
        assert_eq!(v["kind"].as_str(), Some("KubeletConfiguration"));
    }
}
