//! Test harness for weir's privileged tests: a node is a network namespace
//! running a real `weir-agent`; a pod is a network namespace wired by the
//! real `weir-cni`, invoked with the env vars and stdin a container runtime
//! uses. Every guard cleans up in `Drop`, also when a test panics.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weir_agent_api::{Client, Request, Response};

/// Privileged tests need root. Under `CI=true` not being root is a failure,
/// never a silent pass.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root: privileged tests cannot run"
    );
    eprintln!("skipping: needs root (network namespaces, eBPF)");
    false
}

/// Runs `f` on a thread that has entered the netns at `path`; sockets made
/// there stay bound to that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(std::os::fd::AsFd::as_fd(&file), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A short name unique to this process and call, for netns, links and pins.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where `cargo build --workspace` put the binaries (or `$WEIR_BIN_DIR`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEIR_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        // Tests live in target/<profile>/deps, binaries in target/<profile>.
        let dir = exe.parent().expect("exe has a directory");
        if dir.ends_with("deps") {
            dir.parent().expect("target/<profile>")
        } else {
            dir
        }
        .to_owned()
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn ip(args: &[&str]) -> std::process::Output {
    sh("ip", args)
}

/// A network namespace under /var/run/netns, deleted on drop.
pub struct NetNs {
    pub name: String,
    /// Created by us, so deleted on drop; false for a netns someone else owns.
    owned: bool,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        let out = ip(&["netns", "add", name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// A handle that names no netns yet (filled in once one exists); never deleted.
    pub fn placeholder() -> Self {
        Self {
            name: String::new(),
            owned: false,
        }
    }

    /// A handle on a netns made by someone else (e.g. the lab); not deleted on drop.
    pub fn existing(name: &str) -> Self {
        assert!(
            Path::new("/var/run/netns").join(name).exists(),
            "netns {name} does not exist"
        );
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// A command in this netns. `nsenter --net` rather than `ip netns exec`:
    /// the latter also unshares the mount namespace and remounts /sys, which
    /// would hide /sys/fs/bpf and strand the agent's pins in a private mount.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg("--").arg(cmd);
        c
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) -> std::process::Output {
        self.command(cmd).args(args).output().expect("ip netns exec")
    }

    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ICMP echo with a one-second wait.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the netns also deletes the pod end of its veth, which
        // takes the host end with it.
        if self.owned {
            let _ = ip(&["netns", "delete", &self.name]);
        }
    }
}

/// A node: a netns with a running agent, its state dir and bpffs pins.
pub struct Node {
    pub ns: NetNs,
    pub name: String,
    pub pod_cidr: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    agent: Option<Child>,
}

impl Node {
    pub fn start(pod_cidr: &str) -> Self {
        let name = unique("wn");
        let ns = NetNs::new(&name);
        let dir = std::env::temp_dir().join(format!("weir-e2e-{name}"));
        std::fs::create_dir_all(dir.join("manifests")).expect("test dir");
        let mut node = Self {
            ns,
            bpffs: PathBuf::from(format!("/sys/fs/bpf/weir/{name}")),
            name,
            pod_cidr: pod_cidr.to_owned(),
            dir,
            agent: None,
        };
        node.start_agent();
        node
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
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
        let child = self
            .ns
            .command(bin("weir-agent").to_str().expect("utf-8 path"))
            .args(["--node", &self.name, "--pod-cidr", &self.pod_cidr])
            .arg("--bpffs-root")
            .arg(self.bpffs.parent().expect("bpffs root"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--manifests")
            .arg(self.dir.join("manifests"))
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
