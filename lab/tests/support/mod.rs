//! The harness every lab test file shares: a [`Lab`] guard that drives the
//! real `weir-lab` binary (what `weir lab` runs) against its own lab directory and tears the lab down
//! on drop, and the root check. Each test crate uses part of it.
#![allow(
    dead_code,
    reason = "each test file (its own crate) uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn weir() -> &'static str {
    env!("CARGO_BIN_EXE_weir-lab")
}

/// One lab: unique name and dir; `Drop` runs `weir lab down` even on panic.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub work: PathBuf,
}

impl Lab {
    /// `tag` tells apart the labs of one test process (tests run in parallel).
    pub fn new(tag: &str) -> Lab {
        let id = format!("{:x}{}", std::process::id(), tag);
        let work = std::env::temp_dir().join(format!("weir-lab-test-{id}"));
        std::fs::create_dir_all(&work).expect("creating test work dir");
        Lab {
            name: format!("wt{id}"),
            dir: work.join("lab"),
            work,
        }
    }

    /// `weir lab ARGS` against this lab, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let bin_dir = Path::new(weir()).parent().expect("binary dir");
        let mut c = Command::new(weir());
        c.args(args).env("WEIR_LAB_DIR", &self.dir).env("WEIR_BIN_DIR", bin_dir);
        c
    }

    /// Run `weir lab ARGS` to completion.
    pub fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running weir")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(out.status.success(), "weir lab {args:?} failed: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run with `-o json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap_or_else(|e| panic!("weir lab {args:?}: not JSON: {e}"))
    }

    /// Writes a file into the test's work dir; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.work.join(name);
        std::fs::write(&path, text).expect("writing test file");
        path.to_string_lossy().into_owned()
    }

    pub fn pod_ip(&self, pod: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["get", "pod", pod, "-o", "json"])).expect("get json");
        v["status"]["podIP"]
            .as_str()
            .unwrap_or_else(|| panic!("{pod} has no podIP: {v}"))
            .to_owned()
    }

    pub fn leftover_netns(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `probe --from-external`: the answering pod's name, or the failure.
    pub fn external(&self, target: &str) -> Result<String, String> {
        let out = self.cmd(&["probe", "--from-external", target, "--timeout", "2"]);
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match said.strip_prefix("connected: ") {
            Some(pod) if out.status.success() => Ok(pod.to_owned()),
            _ => Err(show(&out)),
        }
    }

    /// The agents' logs of a two-node lab with nodes `a` and `b`.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in ["a", "b"] {
            let log =
                std::fs::read_to_string(self.dir.join("logs").join(format!("agent-{node}.log"))).unwrap_or_default();
            all.push_str(&format!("--- agent {node}:\n{log}\n"));
        }
        all
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.cmd(&["down"]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("weir lab down failed: {}", show(&out));
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Root is required; under CI that is a failure, elsewhere a printed skip.
pub fn privileged() -> bool {
    weir_test_support::require_root()
}

/// A two-node lab (nodes `a` and `b`, native routing) on the node segment
/// `node_cidr`, running the services demo (`lab/demo/services.yaml`: web x3
/// over both nodes, a client, `web` and the backend-less `empty`).
pub fn demo_lab(tag: &str, node_cidr: &str) -> Lab {
    demo_lab_on(tag, node_cidr, "standalone")
}

/// [`demo_lab`] with a `controlPlane` (`standalone` or `kubernetes`).
pub fn demo_lab_on(tag: &str, node_cidr: &str, control_plane: &str) -> Lab {
    let lab = Lab::new(tag);
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: {node_cidr}\nrouting: native\ncontrolPlane: {control_plane}\nnodes:\n  - {{name: a, podCIDR: 10.244.1.0/24}}\n  - {{name: b, podCIDR: 10.244.2.0/24}}\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    let demo = format!("{}/demo/services.yaml", env!("CARGO_MANIFEST_DIR"));
    lab.ok(&["apply", &demo]);
    lab
}

/// A Service's ClusterIP, as the lab allocated it.
pub fn cluster_ip(lab: &Lab, svc: &str) -> String {
    lab.json(&["get", "svc", svc])["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("{svc} has no clusterIP"))
        .to_owned()
}

/// Pods from images on real nodes (`kubelet: real`), in namespace `rn`:
/// agnhost answering its pod name on 8080 (TCP and UDP) and HTTP with
/// keep-alive on 8081, one replica per node, a NodePort Service, and a
/// client.
pub const REAL_NODES_WORKLOAD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: rn}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: rn}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
          args: [serve-hostname, --tcp, --udp, --http=false, --port=8080]
          ports: [{containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        # HTTP with keep-alive: a connection that lives through a rollout.
        - name: http
          image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
          args: [netexec, --http-port=8081, --udp-port=-1]
          ports: [{containerPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: rn}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: rn}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {name: client, image: registry.k8s.io/e2e-test-images/agnhost:2.63.0, args: [pause]}
"#;

/// The pods of namespace `ns` as the lab sees them: (name, node, ip).
pub fn pods_in(lab: &Lab, ns: &str) -> Vec<(String, String, String)> {
    let v = lab.json(&["status"]);
    v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["namespace"] == ns)
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("node"), s("ip"))
        })
        .collect()
}
