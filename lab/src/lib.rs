//! `weir lab`: a cluster of network namespaces on this host, with real
//! `weir-agent`s per node and the real `weir-cni` wiring every pod.
//!
//! Pure parts (topology, manifests, CNI result parsing, probe targets) are
//! unit-tested; everything touching the kernel goes through `netns` and `procs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

mod apply;
mod cni;
mod controller;
mod deployments;
mod down;
mod identities;
mod ipalloc;
mod kube;
mod kubelet;
mod manifests;
mod matrix;
mod netns;
mod probe;
mod procs;
mod realnode;
mod registry;
mod sctp;
mod serve;
mod signals;
mod state;
mod status;
mod topology;
mod ui;
mod up;
mod validate;

use state::{LabDir, LabState, PodState};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Directory holding one lab's state, manifests, sockets and logs.
    #[arg(long, global = true, env = "WEIR_LAB_DIR", default_value = "/run/weir-lab")]
    lab_dir: PathBuf,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create the nodes of a topology file and start an agent on each.
    Up { file: PathBuf },
    /// Create or update objects (Namespace, Pod, Deployment, Service, EndpointSlice, NetworkPolicy);
    /// `-` reads stdin. Services get ClusterIPs and NodePorts, Deployments their pods, and
    /// EndpointSlices follow Services and pods.
    Apply {
        file: String,
        #[command(flatten)]
        grace: Grace,
    },
    /// Delete the objects in a file; pods are unwired with CNI DEL.
    Delete {
        file: String,
        #[command(flatten)]
        grace: Grace,
    },
    /// Set the replicas of a Deployment: deployment/NAME --replicas N.
    Scale {
        target: String,
        #[arg(long)]
        replicas: u16,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        grace: Grace,
    },
    /// Nodes, pods and per-endpoint counters.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Objects as the lab holds them: KIND [NAMESPACE/]NAME.
    Get {
        kind: String,
        name: Option<String>,
        /// Namespace filter for lists (default: all namespaces).
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Run a command inside a pod's network namespace.
    Exec {
        /// NAMESPACE/POD (or POD in `default`).
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Try one connection from a pod: `probe POD TARGET`, from the lab's external
    /// host: `probe --from-external TARGET`, or from a node: `probe --from-node NODE TARGET`. TARGET is HOST:PORT/tcp, HOST:PORT/udp or
    /// HOST/icmp; HOST is an IP, a node of the lab, or a pod (NAMESPACE/POD, or POD in
    /// the prober's namespace). Exit 0 connected/reachable, 1 refused, 2 timed out, 3 other error.
    Probe {
        /// POD TARGET, or TARGET alone with --from-external or --from-node.
        #[arg(num_args = 1..=2, required = true, value_names = ["POD", "TARGET"])]
        args: Vec<String>,
        /// Probe from the external host (outside the cluster, on the nodes' segment).
        #[arg(long, conflicts_with = "from_node")]
        from_external: bool,
        /// Probe from a node's own network namespace (as the node's
        /// processes and host-network pods connect).
        #[arg(long, value_name = "NODE")]
        from_node: Option<String>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
        /// Send from this source port (UDP only): the same flow each time, to
        /// see what conntrack does with it.
        #[arg(long)]
        source_port: Option<u16>,
        /// Send a datagram of this many bytes (UDP only, up to 65000); the
        /// server answers as large, so both ways fragment past the MTU.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=65000))]
        size: Option<u16>,
    },
    /// Who reaches whom: every pod probes every pod (or each pod's own
    /// Service, `--via-service`) on every `--port`, all at once; a table
    /// (a row per source, a mark per port: `.` connected, `X` blocked) or JSON.
    Matrix {
        /// PORT/tcp, PORT/udp or PORT/sctp, repeatable.
        #[arg(long = "port", value_parser = serve::parse_port, required = true)]
        ports: Vec<(u16, serve::Proto)>,
        /// Probe each pod through the Service of its name in its namespace.
        #[arg(long)]
        via_service: bool,
        /// Only pods of these namespaces (repeatable; default: all).
        #[arg(short, long)]
        namespace: Vec<String>,
        /// Seconds each probe waits.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The service map's URL (the relay serves it on loopback); with
    /// --screenshot, also a PNG of it from headless Chromium.
    Ui {
        #[arg(long)]
        screenshot: Option<PathBuf>,
    },
    /// Switch per-packet tracing on (or off) for a pod: every packet in and
    /// out becomes a flow (`weir lab observe --pod POD --type trace`).
    Trace {
        /// NAMESPACE/POD
        pod: String,
        #[arg(long)]
        off: bool,
    },
    /// kubectl against the lab's API server, as its admin (`controlPlane:
    /// kubernetes`): `weir lab kubectl -- get nodes`.
    Kubectl {
        #[arg(last = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Stop everything the lab started and remove everything it created.
    Down,
    /// Build weir's image (every binary, debug info stripped, with the
    /// libraries they load) from the binaries beside this one, or
    /// --bin-dir: push it (--push REGISTRY/REPOSITORY:TAG, with your
    /// registry credentials) or write it as a tarball (--output FILE).
    /// scripts/image.sh builds the release binaries first.
    Image {
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, conflicts_with = "output")]
        push: Option<String>,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// (internal) The kubelet's part on a real control plane: wire the pods
    /// bound to the lab's nodes and report them running.
    #[command(hide = true)]
    Kubelet,
    /// (internal) Run PROGRAM in a netns with SIGINT/SIGTERM unblocked (exec in place).
    #[command(hide = true)]
    SpawnIn {
        #[arg(long)]
        netns: Option<String>,
        #[arg(last = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// (internal) A pod's servers: answer each connection/datagram with NAME.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        name: String,
        /// PORT/TCP or PORT/UDP, repeatable.
        #[arg(long = "port", value_parser = serve::parse_port)]
        ports: Vec<(u16, serve::Proto)>,
        /// Answer `NAME PEER-IP` instead of `NAME`.
        #[arg(long)]
        echo_peer: bool,
    },
}

/// How long a deleted pod stays terminating in its EndpointSlices before CNI DEL.
#[derive(Debug, Clone, Copy, Args)]
pub struct Grace {
    /// Seconds a deleted pod backing a Service stays terminating (serving, not ready)
    /// before it is unwired, so connections in flight can finish.
    #[arg(long = "grace", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    seconds: u64,
}

impl Grace {
    fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

/// Everything a lab command needs.
pub struct Lab {
    pub dir: LabDir,
}

impl Lab {
    /// The lab as it stands, its pods included: on real nodes, those the
    /// kubelets run (from the agents; not in `lab.json`).
    pub fn observed(&self) -> Result<LabState> {
        let mut state = self.dir.require()?;
        if state.topology.kubelet == topology::Kubelet::Real {
            realnode::pods_from_agents(&mut state);
        }
        Ok(state)
    }

    /// Directory holding `weir-agent` and `weir-cni`.
    pub fn bin_dir(&self) -> Result<PathBuf> {
        if let Some(d) = std::env::var_os("WEIR_BIN_DIR").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        let exe = std::env::current_exe().context("locating the weir binary")?;
        Ok(exe.parent().context("weir binary has no parent dir")?.to_owned())
    }

    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let dir = self.bin_dir()?;
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "{name} not found in {} (set WEIR_BIN_DIR, or build it: cargo build -p {})",
                dir.display(),
                name
            );
        }
        Ok(path)
    }
}

/// Run a lab command; returns the process exit code.
pub fn run(args: LabArgs) -> Result<u8> {
    if let LabCommand::Serve {
        netns,
        name,
        ports,
        echo_peer,
    } = &args.command
    {
        serve::run(netns, name, ports, *echo_peer)?;
        return Ok(0);
    }
    if let LabCommand::SpawnIn { netns, argv } = &args.command {
        return Err(signals::exec_in(netns.as_deref(), argv)).with_context(|| format!("running {argv:?}"));
    }
    let lab = Lab {
        dir: LabDir::new(absolute(&args.lab_dir)?),
    };
    if let LabCommand::Image { bin_dir, push, output } = &args.command {
        let bin_dir = match bin_dir {
            Some(d) => d.clone(),
            None => lab.bin_dir()?,
        };
        registry::image(&bin_dir, push.as_deref(), output.as_deref())?;
        return Ok(0);
    }
    // On a real control plane, objects go through the API server.
    let on_kube = || -> Result<Option<(LabState, state::KubeState)>> {
        Ok(lab.dir.load()?.and_then(|s| Some((s.clone(), s.kube?))))
    };
    match args.command {
        LabCommand::Up { file } => up::up(&lab, &file).map(|()| 0),
        LabCommand::Kubelet => kubelet::run(&lab).map(|()| 0),
        LabCommand::Apply { file, grace } => match on_kube()? {
            Some((state, kube)) => kube::apply(&lab, &state, &kube, &read_input(&file)?).map(|()| 0),
            None => apply::apply(&lab, &read_input(&file)?, grace.duration()).map(|()| 0),
        },
        LabCommand::Delete { file, grace } => match on_kube()? {
            Some((state, kube)) => kube::delete(&lab, &state, &kube, &read_input(&file)?).map(|()| 0),
            None => apply::delete(&lab, &read_input(&file)?, grace.duration()).map(|()| 0),
        },
        LabCommand::Scale {
            target,
            replicas,
            namespace,
            grace,
        } => match on_kube()? {
            Some((state, kube)) => {
                kube::scale(&lab, &state, &kube, &target, &namespace, i32::from(replicas)).map(|()| 0)
            }
            None => apply::scale(&lab, &target, &namespace, i32::from(replicas), grace.duration()).map(|()| 0),
        },
        LabCommand::Status { output } => status::status(&lab, output).map(|()| 0),
        LabCommand::Ui { screenshot } => ui::ui(&lab.dir, screenshot.as_deref()).map(|()| 0),
        LabCommand::Get {
            kind,
            name,
            namespace,
            output,
        } => match on_kube()? {
            Some((_, kube)) => kube::get(&kube, &kind, name.as_deref(), namespace.as_deref(), output).map(|()| 0),
            None => status::get(&lab, &kind, name.as_deref(), namespace.as_deref(), output).map(|()| 0),
        },
        LabCommand::Exec { pod, command } => exec(&lab, &pod, &command),
        LabCommand::Trace { pod, off } => trace(&lab, &pod, !off).map(|()| 0),
        LabCommand::Matrix {
            ports,
            via_service,
            namespace,
            timeout,
            output,
        } => {
            if !(timeout > 0.0 && timeout < 600.0) {
                bail!("--timeout must be between 0 and 600 seconds");
            }
            let cells = matrix::run(&lab, &ports, &namespace, via_service, timeout)?;
            matrix::print(&cells, output)?;
            Ok(0)
        }
        LabCommand::Probe {
            args,
            from_external,
            from_node,
            timeout,
            source_port,
            size,
        } => {
            let (from, target) = match (from_external, from_node.as_deref(), args.as_slice()) {
                (false, None, [pod, target]) => (ProbeFrom::Pod(pod), target.as_str()),
                (true, None, [target]) => (ProbeFrom::External, target.as_str()),
                (false, Some(node), [target]) => (ProbeFrom::Node(node), target.as_str()),
                (false, None, _) => bail!("usage: weir lab probe POD TARGET"),
                (_, Some(_), _) => bail!("usage: weir lab probe --from-node NODE TARGET"),
                (true, _, _) => bail!("usage: weir lab probe --from-external TARGET"),
            };
            probe_cmd(&lab, from, target, timeout, source_port, size)
        }
        LabCommand::Kubectl { args } => {
            let (_, kube) = on_kube()?.context("the lab has no API server (controlPlane: kubernetes)")?;
            let status = kube::kubectl(&kube)?.args(&args).status().context("running kubectl")?;
            Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
        }
        LabCommand::Down => down::down(&lab).map(|()| 0),
        LabCommand::Serve { .. } | LabCommand::SpawnIn { .. } | LabCommand::Image { .. } => {
            unreachable!("handled above")
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

/// `ns/name` or `name` (in `default_ns`) → key into `LabState::pods`.
fn pod_key(s: &str, default_ns: &str) -> String {
    if s.contains('/') {
        s.to_owned()
    } else {
        format!("{default_ns}/{s}")
    }
}

fn find_pod<'a>(state: &'a LabState, s: &str) -> Result<&'a PodState> {
    let key = pod_key(s, "default");
    state
        .pods
        .get(&key)
        .with_context(|| format!("no pod {key} in lab {}", state.name))
}

fn exec(lab: &Lab, pod: &str, command: &[String]) -> Result<u8> {
    let state = lab.observed()?;
    let pod = find_pod(&state, pod)?;
    let status = netns::command(&pod.netns, &command[0])
        .args(&command[1..])
        .status()
        .with_context(|| format!("running {:?} in {}", command[0], pod.netns))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        _ => 1,
    })
}

/// Asks the agent of the pod's node to trace (or stop tracing) it.
fn trace(lab: &Lab, pod: &str, enabled: bool) -> Result<()> {
    let state = lab.observed()?;
    let (namespace, name) = pod.split_once('/').context("expected NAMESPACE/POD")?;
    let p = state
        .pods
        .get(pod)
        .with_context(|| format!("pod {pod} is not in the lab"))?;
    let request = weir_agent_api::Request::EndpointTrace {
        pod: weir_agent_api::PodRef {
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        },
        enabled,
    };
    weir_agent_api::Client::new(lab.dir.node_socket(&p.node), std::time::Duration::from_secs(5))
        .call(request)
        .with_context(|| format!("agent on {}", p.node))?;
    println!("pod {pod}: tracing {}", if enabled { "on" } else { "off" });
    Ok(())
}

/// Probes from a pod, or from the external host when `pod` is `None`.
/// Where a probe starts.
enum ProbeFrom<'a> {
    Pod(&'a str),
    External,
    /// A node's own network namespace.
    Node(&'a str),
}

fn probe_cmd(
    lab: &Lab,
    from: ProbeFrom<'_>,
    target: &str,
    timeout: f64,
    source_port: Option<u16>,
    size: Option<u16>,
) -> Result<u8> {
    let state = lab.observed()?;
    let (netns_name, namespace) = match from {
        ProbeFrom::Pod(p) => {
            let p = find_pod(&state, p)?;
            (p.netns.clone(), p.namespace.as_str())
        }
        ProbeFrom::External => (state.topology.external_netns(), "default"),
        ProbeFrom::Node(node) => {
            if !state.topology.nodes.iter().any(|n| n.name == node) {
                bail!("no node {node} in lab {}", state.name);
            }
            (state.topology.node_netns(node), "default")
        }
    };
    let target = probe::parse_target(target).map_err(anyhow::Error::msg)?;
    if !(timeout > 0.0 && timeout < 3600.0) {
        bail!("--timeout must be between 0 and 3600 seconds");
    }
    let timeout = std::time::Duration::from_secs_f64(timeout);
    let resolve = |host: &str| -> Result<std::net::IpAddr> {
        if let Ok(ip) = host.parse() {
            return Ok(ip);
        }
        // The lab's host outside the cluster, and nodes, by name.
        if host == "external" {
            return Ok(state.topology.external_ip().into());
        }
        if let Some(i) = state.topology.nodes.iter().position(|n| n.name == host) {
            return Ok(state.topology.node_ip(i).into());
        }
        let key = pod_key(host, namespace);
        let p = state
            .pods
            .get(&key)
            .with_context(|| format!("{host:?} is neither an IP, a pod or node of the lab nor `external`"))?;
        p.ip.as_deref()
            .with_context(|| format!("pod {key} has no IP"))?
            .parse()
            .context("bad pod IP in lab.json")
    };
    let outcome = match target {
        probe::Target::Port { host, port, proto } => {
            if (source_port.is_some() || size.is_some()) && proto != serve::Proto::Udp {
                bail!("--source-port and --size are for UDP targets only");
            }
            probe::port(
                &netns::path(&netns_name).to_string_lossy(),
                resolve(&host)?,
                port,
                proto,
                timeout,
                source_port,
                size.map(usize::from),
            )
        }
        probe::Target::Icmp { host } => probe::icmp(&netns_name, &resolve(&host)?.to_string(), timeout),
    };
    println!("{outcome}");
    Ok(u8::try_from(outcome.exit_code()).unwrap_or(3))
}
