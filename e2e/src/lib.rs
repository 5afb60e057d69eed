//! Test harness for weir's privileged tests: a node is a network namespace
//! running a real `weir-agent`; a pod is a network namespace wired by the
//! real `weir-cni`, invoked with the env vars and stdin a container runtime
//! uses. Every guard cleans up in `Drop`, also when a test panics.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub mod kube;

use weir_agent_api::{Client, Request, Response};
pub use weir_test_support::{NetNs, bin, in_netns, require_root, sh, unique};

/// A node: a netns with a running agent, its state dir and bpffs pins.
pub struct Node {
    pub ns: NetNs,
    pub name: String,
    pub pod_cidr: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    agent: Option<Child>,
    /// More flags for every start of the agent.
    agent_args: Vec<String>,
    /// Set: the agent follows this API server instead of the manifest
    /// directory, and its pod CIDR comes from the Node object.
    pub kubeconfig: Option<PathBuf>,
}

impl Node {
    pub fn start(pod_cidr: &str) -> Self {
        Self::start_with(pod_cidr, &[])
    }

    /// [`Node::start`] with more agent flags (`--flow-events=false`, ...).
    pub fn start_with(pod_cidr: &str, agent_args: &[&str]) -> Self {
        let mut node = Self::without_agent(pod_cidr, agent_args);
        node.start_agent();
        node
    }

    /// The node's netns and dirs, no agent yet (a control plane may have
    /// to run in it first; set [`Node::kubeconfig`], then start it).
    pub fn without_agent(pod_cidr: &str, agent_args: &[&str]) -> Self {
        let name = unique("wn");
        let ns = NetNs::new(&name);
        let dir = std::env::temp_dir().join(format!("weir-e2e-{name}"));
        std::fs::create_dir_all(dir.join("manifests")).expect("test dir");
        Self {
            ns,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/weir/{name}")),
            name,
            pod_cidr: pod_cidr.to_owned(),
            dir,
            agent: None,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            kubeconfig: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
    }

    /// The agent's Observer API (next to its socket).
    pub fn hubble_socket(&self) -> PathBuf {
        self.dir.join("run/hubble.sock")
    }

    pub fn client(&self) -> Client {
        Client::new(self.socket(), Duration::from_secs(5))
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let mut cmd = self.ns.command(bin("weir-agent").to_str().expect("utf-8 path"));
        cmd.args(["--node", &self.name]);
        match &self.kubeconfig {
            Some(kc) => cmd.arg("--kubeconfig").arg(kc),
            None => cmd
                .args(["--pod-cidr", &self.pod_cidr])
                .arg("--manifests")
                .arg(self.dir.join("manifests")),
        };
        let child = cmd
            .arg("--bpffs-root")
            .arg(self.bpffs.parent().expect("bpffs root"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args(&self.agent_args)
            // As the lab runs agents (lab/src/up.rs says why).
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn weir-agent");
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.client().call(Request::Status), Ok(Response::Status(_))) {
                return;
            }
            if let Some(status) = self.agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("weir-agent exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("weir-agent not ready within 15 s:\n{}", self.log());
    }

    /// SIGTERM and wait: the datapath stays pinned, as in a real restart.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's pid (nsenter execs it, so the child is the agent itself).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs `weir-cni` in the node's netns like a container runtime.
    pub fn cni(&self, command: &str, pod: &PodSpec, conf: &str) -> CniOutput {
        run_cni(&self.ns, command, pod, conf)
    }

    pub fn netconf(&self, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "name": "weir",
            "type": "weir-cni",
            "agentSocket": self.socket(),
        })
        .to_string()
    }

    /// ADD a pod in a fresh netns; panics with the CNI error on failure.
    pub fn add_pod(&self, namespace: &str, name: &str) -> Pod {
        let pod = Pod::new(namespace, name);
        let out = self.cni("ADD", &pod.spec, &self.netconf("1.1.0"));
        assert!(
            out.ok(),
            "ADD {namespace}/{name} failed: {out:?}\nagent log:\n{}",
            self.log()
        );
        Pod {
            ip: out.ip().expect("ADD result has an address"),
            ..pod
        }
    }

    pub fn del_pod(&self, pod: &Pod) -> CniOutput {
        self.cni("DEL", &pod.spec, &self.netconf("1.1.0"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir(self.bpffs.parent().expect("bpffs root"));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test failed; agent log kept in {}", self.dir.display());
        }
    }
}

/// What the runtime knows about a sandbox.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

/// A pod netns plus what ADD returned.
pub struct Pod {
    pub ns: NetNs,
    pub spec: PodSpec,
    pub ip: Ipv4Addr,
}

impl Pod {
    pub fn new(namespace: &str, name: &str) -> Self {
        let ns = NetNs::new(&unique("wp"));
        let spec = PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            container_id: format!("{:016x}{}", std::process::id(), ns.name),
            netns: ns.path(),
            ifname: "eth0".into(),
        };
        Self {
            ns,
            spec,
            ip: Ipv4Addr::UNSPECIFIED,
        }
    }
}

#[derive(Debug)]
pub struct CniOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The CNI error code, if this is an error result.
    pub fn code(&self) -> Option<u64> {
        serde_json::from_str::<serde_json::Value>(&self.stdout)
            .ok()?
            .get("code")?
            .as_u64()
    }

    pub fn ip(&self) -> Option<Ipv4Addr> {
        let v = self.json();
        let addr = v["ips"][0]["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    }
}

/// Invokes the plugin with exactly the variables a runtime sets.
pub fn run_cni(node: &NetNs, command: &str, pod: &PodSpec, conf: &str) -> CniOutput {
    let cni = bin("weir-cni");
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{}",
        pod.namespace, pod.name, pod.container_id, pod.name
    );
    let mut child = node
        .command(cni.to_str().expect("utf-8 path"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", cni.parent().expect("bin dir"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-cni");
    // The plugin may rightly exit before reading stdin (e.g. a bad command).
    let _ = child.stdin.take().expect("stdin").write_all(conf.as_bytes());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let out = child.wait_with_output().expect("wait weir-cni");
    CniOutput {
        status: out.status,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
