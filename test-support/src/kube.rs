//! A real Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from the Go module
//! proxy by `scripts/tools.sh` (k8s.io/kubernetes v1.36.3, etcd v3.7.3),
//! prepared as the lab prepares it (`weir_control_plane`: certificates, keys,
//! token auth, RBAC and Node authorizers, default admission) and started on
//! loopback with random free ports and a data dir of its own. No kubelet
//! (this machine has cgroup v1). Everything stops and goes on drop, also
//! when a test panics. Several tests may share one, with a namespace each.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    /// An admin kubeconfig (token auth, the generated CA).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    kubectl: PathBuf,
    procs: Vec<(String, Child)>,
    /// The network namespace everything runs in (`None`: the test's own).
    netns: Option<String>,
    /// How each process was started, to start it again.
    commands: Vec<(String, PathBuf, Vec<String>)>,
    token: String,
}

/// A loopback port nothing listens on, below the kernel's ephemeral range
/// (32768 and up): a port the kernel handed out for `:0` is also what it
/// hands the next outgoing connection, so between this check and etcd's
/// bind another test's client could take it ("address already in use").
/// Below that range only another test picking the same port can; the
/// start retries that case with new ports.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for i in 0..1000 {
        let n = N.fetch_add(1, Ordering::Relaxed).wrapping_add(i);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999")
}

/// How many times a start is tried again when a component could not bind
/// its port (another test took it between the check and the bind).
const START_ATTEMPTS: usize = 4;

impl ControlPlane {
    /// Starts one, or `None` when its binaries are not built (a skip
    /// outside CI; under `CI=true`, [`crate::tool`] fails the test).
    pub fn start() -> Option<ControlPlane> {
        Self::start_in(None)
    }

    /// [`ControlPlane::start`] inside the network namespace at `netns` (a
    /// path under /var/run/netns), the way a control-plane node runs it:
    /// on that namespace's loopback, reached from other namespaces at
    /// `advertise` if given (a node address; the certificate names it).
    pub fn start_in(netns: Option<(&str, Option<std::net::Ipv4Addr>)>) -> Option<ControlPlane> {
        Self::start_with(netns, |_| {})
    }

    /// [`ControlPlane::start_in`] with its options changed by `configure`
    /// first (kube-controller-manager's pod CIDR allocator off, for one).
    pub fn start_with(
        netns: Option<(&str, Option<std::net::Ipv4Addr>)>,
        configure: impl Fn(&mut weir_control_plane::Options),
    ) -> Option<ControlPlane> {
        for t in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            crate::tool(t)?;
        }
        let kubectl = crate::tool("kubectl")?;
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(netns, &configure, &kubectl) {
                Ok(cp) => return Some(cp),
                Err(failed) => {
                    let (cp, why) = *failed;
                    let port_taken = why.contains("address already in use");
                    if !port_taken || attempt == START_ATTEMPTS {
                        // Dropped while panicking: the logs stay.
                        panic!("{why}");
                    }
                    eprintln!("control plane: a port was taken, starting again on others:\n{why}");
                    // Not panicking: the drop stops it and removes its dir.
                    drop(cp);
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// One start; on a component that exits before the API server is
    /// ready, the half-started plane and why.
    fn try_start(
        netns: Option<(&str, Option<std::net::Ipv4Addr>)>,
        configure: &impl Fn(&mut weir_control_plane::Options),
        kubectl: &Path,
    ) -> Result<ControlPlane, Box<(ControlPlane, String)>> {
        let kubectl = kubectl.to_owned();
        let dir = std::env::temp_dir().join(format!("weir-kube-{}", crate::unique("cp")));
        let _ = std::fs::remove_dir_all(&dir);
        let mut options = weir_control_plane::Options {
            etcd_client_port: free_port(),
            etcd_peer_port: free_port(),
            apiserver_port: free_port(),
            advertise: netns.and_then(|(_, a)| a),
            service_cidr: "10.96.0.0/16".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask: 24,
            allocate_node_cidrs: true,
            real_kubelets: false,
        };
        configure(&mut options);
        let plan = weir_control_plane::Plan::prepare(&dir, &options).expect("preparing the control plane");
        let mut cp = ControlPlane {
            kubeconfig: plan.admin_kubeconfig.clone(),
            server: plan.loopback_server.clone(),
            dir,
            kubectl,
            procs: Vec::new(),
            netns: netns.map(|(n, _)| n.to_owned()),
            commands: Vec::new(),
            token: plan.admin_token.clone(),
        };
        for c in &plan.components {
            let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
            cp.spawn(c.name, &c.program, &args);
            if c.name == "kube-apiserver"
                && let Err(why) = cp.wait_ready(Duration::from_secs(90))
            {
                return Err(Box::new((cp, why)));
            }
        }
        Ok(cp)
    }

    fn kill_all(&mut self) {
        // The API server before etcd: the reverse of the start.
        for (_, c) in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs.clear();
    }

    /// `program` in the control plane's namespace.
    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.commands.retain(|(n, _, _)| n != name);
        self.commands.push((name.to_owned(), program.to_owned(), args));
        self.launch(name);
    }

    fn launch(&mut self, name: &str) {
        let (_, program, args) = self
            .commands
            .iter()
            .find(|(n, _, _)| n == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} was never started"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log");
        let child = self
            .command(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_owned(), child));
    }

    /// Kills one of its processes (SIGKILL: the way a crashed or
    /// unreachable server looks to its clients).
    pub fn stop(&mut self, name: &str) {
        for (_, c) in self.procs.iter_mut().filter(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs.retain(|(n, _)| n != name);
    }

    /// The process id of one of its running processes (to pause it with
    /// SIGSTOP: a hung or starved server, its sockets still open).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    /// Starts a stopped process again, as it was started; for the API
    /// server, waits until it is ready.
    pub fn restart(&mut self, name: &str) {
        self.launch(name);
        if name == "kube-apiserver"
            && let Err(why) = self.wait_ready(Duration::from_secs(90))
        {
            panic!("{why}");
        }
    }

    /// A second API server on the same etcd (an HA control plane's other
    /// member), with a kubeconfig of its own; returns that kubeconfig.
    pub fn second_apiserver(&mut self) -> PathBuf {
        let (_, program, args) = self
            .commands
            .iter()
            .find(|(n, _, _)| n == "kube-apiserver")
            .cloned()
            .expect("the API server");
        let port = free_port();
        let args: Vec<String> = args
            .into_iter()
            .map(|a| match a.starts_with("--secure-port=") {
                true => format!("--secure-port={port}"),
                false => a,
            })
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn("kube-apiserver-2", &program, &refs);
        let kc = self.dir.join("second.kubeconfig");
        std::fs::write(
            &kc,
            self.kubeconfig_text(&format!("https://127.0.0.1:{port}"), &self.token),
        )
        .expect("kubeconfig");
        let t0 = Instant::now();
        while !self.kubectl_with(&kc, &["get", "--raw", "/readyz"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "second API server not ready:\n{}",
                self.log("kube-apiserver-2")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        kc
    }

    fn kubeconfig_text(&self, server: &str, token: &str) -> String {
        weir_control_plane::kubeconfig(server, &self.dir.join("ca.crt"), token)
    }

    /// A kubeconfig (written into the control plane's dir) for the
    /// service account `namespace/name`, with a token the API server
    /// issues: what a component running as that account would use.
    pub fn kubeconfig_for(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", "-n", namespace, name, "--duration=24h"]);
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_text(&self.server, token.trim())).expect("kubeconfig");
        path
    }

    /// Until `/readyz` answers; an error when a process exits first or
    /// the limit passes, with the log that says why.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return Ok(());
            }
            let exited = self
                .procs
                .iter_mut()
                .find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| (name.clone(), s)));
            if let Some((name, status)) = exited {
                return Err(format!("{name} exited with {status}:\n{}", self.log(&name)));
            }
            if t0.elapsed() >= limit {
                return Err(format!(
                    "the API server was not ready within {limit:?}:\n{}",
                    self.log("kube-apiserver")
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The log of one of its processes.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `kubectl --kubeconfig ADMIN ARGS`, run to completion.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.kubectl_with(&self.kubeconfig, args)
    }

    /// kubectl with another kubeconfig (another user, another server).
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        self.command(&self.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("yaml to kubectl");
        child.wait_with_output().expect("kubectl apply")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("test failed; control plane logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
