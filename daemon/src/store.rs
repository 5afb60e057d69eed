//! The agent's persistent state: endpoints (with the addresses they own)
//! and label identities, written atomically before any reply leaves the
//! agent, so a crash can never hand an address out twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_agent_api::{Endpoint, EndpointRef};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but does not parse: refuse to start rather than
    /// forget allocations.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
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
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
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
        let back = store.load().unwrap();
        assert_eq!(back.next_endpoint_id, 1);
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
