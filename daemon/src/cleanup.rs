//! `weir-agent cleanup`: what weir leaves on a node once it is uninstalled
//! and no agent runs there, removed. A deleted DaemonSet cannot do this
//! itself: its agent keeps the datapath in place when it stops, so that a
//! restart or a rolling update breaks no connection.
//!
//! Removed: the conflist (the node turns NotReady: it has no CNI any
//! more), the `weir-cni` binary, every pin of the node under the bpffs
//! root (the programs' links among them: with their pins and the agent
//! gone, the kernel detaches the programs from the uplink and the pods'
//! interfaces), the vxlan device and the routes weir installed to other
//! nodes' pod CIDRs. Left: pods' own interfaces (their runtime removes
//! them with the pods) and `net.ipv4.ip_forward`, which the node had.
//!
//! It refuses to run while an agent answers on the node's socket: cleaning
//! under a running agent would cut every pod off.
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::netdev::{Netdev, VXLAN_DEVICE};

/// Remove what weir left on this node after an uninstall (the conflist,
/// weir-cni, the bpffs pins and with them the programs, the vxlan device,
/// weir's routes). Refuses while weir-agent runs here.
#[derive(Debug, Clone, Parser)]
#[command(name = "weir-agent cleanup")]
pub struct CleanupArgs {
    /// This node's name (its pins live under --bpffs-root/<node>).
    #[arg(long, env = "WEIR_NODE")]
    pub node: String,
    #[arg(long, env = "WEIR_BPFFS_ROOT", default_value = "/sys/fs/bpf/weir")]
    pub bpffs_root: PathBuf,
    /// The agent's socket: if an agent answers there, nothing is removed.
    #[arg(long, env = "WEIR_SOCKET", default_value = "/run/weir/agent.sock")]
    pub socket: PathBuf,
    /// The container runtime's CNI config dir.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The container runtime's CNI plugin dir.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// After cleaning, wait for SIGTERM (the cleanup DaemonSet's pods stay
    /// Ready to show they are done).
    #[arg(long)]
    pub stay: bool,
}

/// Why the cleanup did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("weir-agent still answers on {0}: uninstall weir first (kubectl delete -f install/weir.yaml)")]
    AgentRunning(PathBuf),
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netdev(#[from] crate::netdev::NetdevError),
}

/// What one run removed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: Vec<PathBuf>,
    pub pins: usize,
    pub links: Vec<String>,
    pub routes: usize,
}

fn remove_file(path: PathBuf, removed: &mut Removed) -> Result<(), CleanupError> {
    match std::fs::remove_file(&path) {
        Ok(()) => {
            removed.files.push(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CleanupError::Remove { path, source }),
    }
}

/// Removes `dir` and everything under it, counting the files (pins). bpffs
/// has no recursive removal: files are unlinked, then directories, deepest
/// first.
fn remove_tree(dir: &Path) -> Result<usize, CleanupError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CleanupError::Remove { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(dir)(e)),
    };
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(err(dir))?;
        let path = entry.path();
        match entry.file_type().map_err(err(&path))?.is_dir() {
            true => count += remove_tree(&path)?,
            false => {
                std::fs::remove_file(&path).map_err(err(&path))?;
                count += 1;
            }
        }
    }
    std::fs::remove_dir(dir).map_err(err(dir))?;
    Ok(count)
}

/// Cleans the node; safe to run again (what is gone stays gone).
pub async fn run(args: &CleanupArgs) -> Result<Removed, CleanupError> {
    if tokio::net::UnixStream::connect(&args.socket).await.is_ok() {
        return Err(CleanupError::AgentRunning(args.socket.clone()));
    }
    let mut removed = Removed::default();
    // The conflist first: from here on no pod is given to weir-cni.
    remove_file(args.cni_conf_dir.join(weir_agent_api::CONFLIST_NAME), &mut removed)?;
    remove_file(args.cni_bin_dir.join("weir-cni"), &mut removed)?;
    removed.pins = remove_tree(&args.bpffs_root.join(&args.node))?;
    // The root too, once no node's pins are left in it (the lab runs
    // several nodes on one bpffs).
    let _ = std::fs::remove_dir(&args.bpffs_root);
    let net = Netdev::connect()?;
    for cidr in net.weir_node_routes().await? {
        net.delete_node_route(cidr).await?;
        removed.routes += 1;
    }
    if let Some(index) = net.link_index(VXLAN_DEVICE).await? {
        net.delete_link(index).await?;
        removed.links.push(VXLAN_DEVICE.into());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_goes_deepest_first_and_a_missing_one_is_nothing() {
        let root = std::env::temp_dir().join(format!("weir-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(root.join("links")).unwrap();
        for f in ["maps_a", "links/eth0-xdp", "links/eth0-tc_ingress"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        assert_eq!(remove_tree(&root).unwrap(), 3);
        assert!(!root.exists());
        assert_eq!(remove_tree(&root).unwrap(), 0);
    }
}
