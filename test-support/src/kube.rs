//! A real Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from the Go module
//! proxy by `scripts/tools.sh` (k8s.io/kubernetes v1.36.3, etcd v3.7.3) and
//! started on loopback with random free ports, a data dir of their own,
//! serving certificates and a service-account key generated here (openssl),
//! token authentication for an admin in `system:masters`, the RBAC and Node
//! authorizers and the API server's default admission plugins. No kubelet
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
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

impl ControlPlane {
    /// Starts one, or `None` when its binaries are not built (a skip
    /// outside CI; under `CI=true`, [`crate::tool`] fails the test).
    pub fn start() -> Option<ControlPlane> {
        let etcd = crate::tool("etcd")?;
        let apiserver = crate::tool("kube-apiserver")?;
        let cm = crate::tool("kube-controller-manager")?;
        let scheduler = crate::tool("kube-scheduler")?;
        let kubectl = crate::tool("kubectl")?;
        let dir = std::env::temp_dir().join(format!("weir-kube-{}", crate::unique("cp")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("control plane dir");
        let mut cp = ControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            server: String::new(),
            dir,
            kubectl,
            procs: Vec::new(),
        };
        cp.certificates();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let d = cp.dir.clone();
        let etcd_url = format!("http://127.0.0.1:{client}");
        cp.spawn(
            "etcd",
            Command::new(etcd).args([
                "--name=weir-test",
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=weir-test=http://127.0.0.1:{peer}"),
                "--log-level=warn",
            ]),
        );
        let token = format!("weir-test-{}", crate::unique("tok"));
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )
        .expect("tokens");
        cp.server = format!("https://127.0.0.1:{secure}");
        cp.spawn(
            "kube-apiserver",
            Command::new(apiserver).args([
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={secure}"),
                &format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
                &format!("--tls-private-key-file={}", d.join("apiserver.key").display()),
                &format!("--client-ca-file={}", d.join("ca.crt").display()),
                &format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", d.join("sa.key").display()),
                &format!("--service-account-signing-key-file={}", d.join("sa.key").display()),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--v=1",
            ]),
        );
        std::fs::write(
            &cp.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: weir-test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: weir-test\n  context: {{cluster: weir-test, user: admin}}\ncurrent-context: weir-test\n",
                cp.server,
                d.join("ca.crt").display()
            ),
        )
        .expect("kubeconfig");
        cp.wait_ready(Duration::from_secs(90));
        let kc = format!("--kubeconfig={}", cp.kubeconfig.display());
        cp.spawn(
            "kube-controller-manager",
            Command::new(cm).args([
                &kc,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                &format!("--service-account-private-key-file={}", d.join("sa.key").display()),
                &format!("--root-ca-file={}", d.join("ca.crt").display()),
                "--use-service-account-credentials=true",
                "--allocate-node-cidrs=true",
                "--cluster-cidr=10.244.0.0/16",
                "--service-cluster-ip-range=10.96.0.0/16",
            ]),
        );
        cp.spawn(
            "kube-scheduler",
            Command::new(scheduler).args([
                &kc,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ]),
        );
        Some(cp)
    }

    /// A CA, a serving certificate for 127.0.0.1 signed by it, and the
    /// service-account signing key.
    fn certificates(&self) {
        let d = &self.dir;
        let p = |f: &str| d.join(f).to_string_lossy().into_owned();
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=weir-test-ca",
                ])
                .args(["-keyout", &p("ca.key"), "-out", &p("ca.crt")]),
            "openssl: CA",
        );
        run(
            Command::new("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver"])
                .args(["-keyout", &p("apiserver.key"), "-out", &p("apiserver.csr")]),
            "openssl: serving key",
        );
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
        )
        .expect("san");
        run(
            Command::new("openssl")
                .args([
                    "x509",
                    "-req",
                    "-days",
                    "2",
                    "-in",
                    &p("apiserver.csr"),
                    "-CA",
                    &p("ca.crt"),
                ])
                .args([
                    "-CAkey",
                    &p("ca.key"),
                    "-CAcreateserial",
                    "-out",
                    &p("apiserver.crt"),
                    "-extfile",
                    &p("san.ext"),
                ]),
            "openssl: serving certificate",
        );
        run(
            Command::new("openssl").args(["genrsa", "-out", &p("sa.key"), "2048"]),
            "openssl: service-account key",
        );
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_owned(), child));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            let exited = self
                .procs
                .iter_mut()
                .find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| (name.clone(), s)));
            if let Some((name, status)) = exited {
                panic!("{name} exited with {status}:\n{}", self.log(&name));
            }
            assert!(
                t0.elapsed() < limit,
                "the API server was not ready within {limit:?}:\n{}",
                self.log("kube-apiserver")
            );
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
        Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
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
        let mut child = Command::new(&self.kubectl)
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
        // The API server before etcd: the reverse of the start.
        for (_, c) in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
