//! The agent's persistent state: endpoints (with the addresses they own)
//! and label identities, written atomically before any reply leaves the
//! agent, so a crash can never hand an address out twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_agent_api::{Endpoint, EndpointRef};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state file failed.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but does not parse: refuse to start rather than
    /// forget allocations.
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The state parses but cannot be right; starting on it could hand out
    /// an address a running pod holds.
    #[error("{path}: {reason}; refusing to start (fix or restore the state file)")]
    Invalid { path: PathBuf, reason: String },
    /// The state file is gone but pods are still wired on this node.
    #[error(
        "{path} is missing but {count} pod interface(s) still carry weir's programs ({examples}): refusing to \
         start with no record of their addresses (restore the state file, or delete those pods' interfaces)"
    )]
    Lost {
        path: PathBuf,
        count: usize,
        examples: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Keyed by "container_id/ifname".
    pub endpoints: BTreeMap<String, Endpoint>,
    pub last_allocated: Option<Ipv4Addr>,
    pub next_endpoint_id: u32,
}

pub fn key(r: &EndpointRef) -> String {
    format!("{}/{}", r.container_id, r.ifname)
}

impl State {
    /// Why this state cannot be right for a node with pod CIDR `cidr`, if
    /// it cannot: an address outside the CIDR (the `--pod-cidr` changed
    /// under running pods), or an address or endpoint id held twice.
    pub fn check(&self, cidr: ipnet::Ipv4Net) -> Result<(), String> {
        let mut ips = std::collections::BTreeMap::new();
        let mut ids = std::collections::BTreeMap::new();
        for (key, ep) in &self.endpoints {
            if !cidr.contains(&ep.ipv4) {
                return Err(format!(
                    "endpoint {key} holds {} outside the pod CIDR {cidr} (was --pod-cidr changed under running pods?)",
                    ep.ipv4
                ));
            }
            if let Some(other) = ips.insert(ep.ipv4, key) {
                return Err(format!("address {} is held by both {other} and {key}", ep.ipv4));
            }
            if let Some(other) = ids.insert(ep.id, key) {
                return Err(format!("endpoint id {} is held by both {other} and {key}", ep.id));
            }
        }
        Ok(())
    }

    pub fn allocate_endpoint_id(&mut self) -> u32 {
        // 0 is "no endpoint" in the datapath; skip ids still in use after a wrap.
        loop {
            self.next_endpoint_id = self.next_endpoint_id.wrapping_add(1).max(1);
            let id = self.next_endpoint_id;
            if !self.endpoints.values().any(|e| e.id == id) {
                return id;
            }
        }
    }
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
        }
    }

    /// Does the state file exist (an empty state and no file are not the
    /// same thing after a crash or an operator's mistake)?
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<State, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Write to a temporary file, fsync, rename: readers see old or new, never half.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().expect("state path has a parent");
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(".state.json.tmp");
        // 0600: the state names every pod and address of the node.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // A tmp file left by an older agent keeps its mode: set it anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        let store = Store::new(&dir);
        assert!(store.load().unwrap().endpoints.is_empty());
        let mut s = State::default();
        assert_eq!(s.allocate_endpoint_id(), 1);
        s.last_allocated = Some("10.0.0.9".parse().unwrap());
        store.save(&s).unwrap();
        let mode = std::fs::metadata(dir.join("state.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the state file is root's alone");
        let back = store.load().unwrap();
        assert_eq!(back.next_endpoint_id, 1);
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
