//! `weir lab down`: idempotent teardown that keeps going and reports every error.

use std::time::Duration;

use anyhow::{Result, bail};

use super::state::{LabDir, LabState, Proc};
use super::{Lab, netns, procs};

pub fn down(lab: &Lab) -> Result<()> {
    if !lab.dir.root.exists() {
        println!("no lab in {}", lab.dir.root.display());
        return Ok(());
    }
    let lock = lab.dir.lock()?;
    let mut errors = Vec::new();
    let state = match lab.dir.load() {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("{e:#} (removing the lab dir anyway)"));
            None
        }
    };
    errors.extend(teardown(&lab.dir, state.as_ref()));
    drop(lock);
    match &state {
        Some(s) if errors.is_empty() => println!("lab {} is down", s.name),
        None if errors.is_empty() => println!("no lab in {}", lab.dir.root.display()),
        _ => {}
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("down: {e}");
    }
    bail!("{} error(s) while tearing down", errors.len())
}

/// Stop and remove everything `state` records, and nothing it does not,
/// then the lab dir's contents. Returns every error; never stops early.
pub fn teardown(dir: &LabDir, state: Option<&LabState>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(state) = state {
        let procs: Vec<Proc> = state
            .pods
            .values()
            .flat_map(|p| p.servers.iter().cloned())
            .chain(state.servers.iter().cloned())
            .chain(state.nodes.values().filter_map(|n| n.agent.clone()))
            .collect();
        errors.extend(procs::stop_all(&procs, Duration::from_secs(3)));
        // Real nodes: the pods and shims the kubelets and containerd left.
        if state.topology.kubelet == super::topology::Kubelet::Real {
            errors.extend(super::realnode::teardown(dir, state));
        }

        // Only what the lab recorded as its own (it records a namespace
        // before creating it): a name that merely shares the lab's prefix
        // may be another lab's (`demo` and `demo-x`) or an operator's.
        let mut names: Vec<String> = state.pods.values().map(|p| p.netns.clone()).collect();
        names.extend(state.netns.iter().rev().cloned());
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            if seen.insert(name.clone())
                && let Err(e) = netns::delete(&name)
            {
                errors.push(e.to_string());
            }
        }

        match std::fs::remove_dir_all(&state.bpffs_root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", state.bpffs_root.display())),
        }
        // The shared parent (/sys/fs/bpf/weir) goes once no lab or node uses it.
        if let Some(parent) = state.bpffs_root.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    for entry in dir.owned_entries() {
        let result = if entry.is_dir() {
            std::fs::remove_dir_all(&entry)
        } else {
            std::fs::remove_file(&entry)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", entry.display())),
        }
    }
    // Only succeeds when nothing else lives there; that is the point.
    let _ = std::fs::remove_dir(&dir.root);
    errors
}
