//! `<lab-dir>/lab.json`: everything a lab has created, saved as it is created
//! so that `down` can always clean up.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::topology::Topology;

/// A process the lab started. `start_time` (from `/proc/<pid>/stat`) makes
/// sure a recycled pid is never killed; `marker` says what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    pub marker: String,
    #[serde(default)]
    pub start_time: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub netns: String,
    pub pod_cidr: String,
    pub socket: PathBuf,
    #[serde(default)]
    pub agent: Option<Proc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub uid: String,
    /// Set once CNI ADD succeeded.
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub servers: Vec<Proc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub topology: Topology,
    pub bpffs_root: PathBuf,
    /// Every netns created (or about to be), in creation order.
    #[serde(default)]
    pub netns: Vec<String>,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
    /// Keyed by `namespace/name`.
    #[serde(default)]
    pub pods: BTreeMap<String, PodState>,
    /// Servers outside pods: the external host's.
    #[serde(default)]
    pub servers: Vec<Proc>,
    /// The real control plane, with `controlPlane: kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeState>,
}

/// Where the lab's control plane is and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeState {
    /// The netns it runs in (the first node's): kubectl runs there.
    pub netns: String,
    /// The admin's kubeconfig (the API server on that netns' loopback).
    pub admin_kubeconfig: PathBuf,
    /// `https://NODE-IP:6443`, as the other nodes reach it.
    pub server: String,
}

/// The directory layout of one lab.
#[derive(Debug, Clone)]
pub struct LabDir {
    pub root: PathBuf,
}

impl LabDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn node_state(&self, node: &str) -> PathBuf {
        self.root.join("state").join(node)
    }
    /// The node agent's flow export configuration (`flowLogs`), read
    /// again whenever it changes; none at first.
    pub fn node_flow_export(&self, node: &str) -> PathBuf {
        self.root.join("run").join(node).join("flow-export.yaml")
    }
    pub fn node_socket(&self, node: &str) -> PathBuf {
        self.root.join("run").join(node).join("agent.sock")
    }
    /// The node agent's Observer API (the agent puts it next to its socket).
    pub fn node_hubble_socket(&self, node: &str) -> PathBuf {
        self.root.join("run").join(node).join("hubble.sock")
    }
    /// The control plane's certificates, data and kubeconfigs.
    pub fn kube(&self) -> PathBuf {
        self.root.join("kube")
    }
    /// The lab's relay: every node's flows.
    pub fn relay_socket(&self) -> PathBuf {
        self.root.join("run").join("relay.sock")
    }
    /// Where the relay writes the address of its service map page.
    pub fn ui_address_file(&self) -> PathBuf {
        self.root.join("run").join("ui.addr")
    }
    /// The service map's URL, once the relay serves it (in the control
    /// plane's netns on real API server labs).
    pub fn ui_url(&self) -> Option<String> {
        let addr = std::fs::read_to_string(self.ui_address_file()).ok()?;
        Some(format!("http://{}/", addr.trim()))
    }
    /// The entries this tool creates inside the lab dir (and so may remove).
    pub fn owned_entries(&self) -> Vec<PathBuf> {
        [
            "lab.json",
            ".lab.json.tmp",
            "logs",
            "manifests",
            "state",
            "run",
            "kube",
            "nodes",
            "registry",
            ".lock",
        ]
        .iter()
        .map(|e| self.root.join(e))
        .collect()
    }

    /// Serialise lab commands on this dir: held until the guard drops.
    pub fn lock(&self) -> Result<Flock<File>> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join(".lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
    }

    pub fn load(&self) -> Result<Option<LabState>> {
        let path = self.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Load, or fail with a hint when no lab is up.
    pub fn require(&self) -> Result<LabState> {
        self.load()?.with_context(|| {
            format!(
                "no lab in {} (run `weir lab up FILE` first, or pass --lab-dir)",
                self.root.display()
            )
        })
    }

    pub fn save(&self, state: &LabState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state)?;
        write_atomic(&self.state_file(), &bytes)
    }
}

/// Write `path` atomically: a `.name.tmp` dotfile in the same dir, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
