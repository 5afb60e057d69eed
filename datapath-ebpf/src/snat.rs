//! Masquerading (pod → outside the cluster, SNAT to the node IP): the pure choice of what the GC removes, and
//! [`SnatMap`], which opens the pinned map to read and collect it.
//!
//! The datapath writes every entry; userspace only reads and deletes.
use std::collections::HashMap as StdHashMap;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};

use crate::lb::CtKey;

/// The map's name, as declared in `bpf/lib/snat.h`.
pub const MAP: &str = "weir_snat4";
/// `WEIR_SNAT_MAX_ENTRIES`: both directions of every masqueraded flow.
pub const MAX_ENTRIES: u32 = crate::abi::SNAT_MAX_ENTRIES;
/// `WEIR_SNAT_PORT_MIN..=WEIR_SNAT_PORT_MAX`.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = crate::abi::SNAT_PORTS;
/// `WEIR_SNAT_F_REVERSE`: the remote → node direction.
pub const F_REVERSE: u8 = crate::abi::SNAT_F_REVERSE;

/// `struct weir_snat_entry`. The key is a [`CtKey`] as that direction's
/// packets carry it; `addr`/`port` (network byte order) are the new source
/// (forward) or the new destination (reverse).
pub use crate::abi::SnatEntry;

impl SnatEntry {
    /// The key of the other direction's entry (`snat_partner_key` in C).
    pub fn partner_key(&self, key: &CtKey) -> CtKey {
        if self.flags & F_REVERSE != 0 {
            CtKey {
                saddr: self.addr,
                sport: self.port,
                daddr: key.saddr,
                dport: key.sport,
                proto: key.proto,
                pad: [0; 3],
            }
        } else {
            CtKey {
                saddr: key.daddr,
                sport: key.dport,
                daddr: self.addr,
                dport: self.port,
                proto: key.proto,
                pad: [0; 3],
            }
        }
    }
}

/// The entries the GC removes at `now_ns`: expired ones whose partner has
/// expired too or is gone (a flow lives while either direction is active).
pub fn expired(entries: &StdHashMap<CtKey, SnatEntry>, now_ns: u64) -> Vec<CtKey> {
    entries
        .iter()
        .filter(|(key, e)| {
            e.expires_ns < now_ns && entries.get(&e.partner_key(key)).is_none_or(|p| p.expires_ns < now_ns)
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Errors from the SNAT map, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    /// The pinned map could not be opened (datapath not loaded at this pin dir?).
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// A map operation failed.
    #[error("map {MAP}: {0}")]
    Map(#[source] MapError),
    /// The datapath has no such map (or it was handed out already).
    #[error("the datapath has no map {0} to hand over")]
    Missing(&'static str),
}

/// The masquerade table of one node's datapath, owned by its GC.
pub struct SnatMap {
    map: HashMap<MapData, CtKey, SnatEntry>,
}

impl SnatMap {
    /// The map a loaded [`crate::Datapath`] hands over
    /// ([`crate::Datapath::take_snat_map`]): the agent's way.
    pub fn from_map(map: Map) -> Result<Self, SnatError> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(SnatError::Map)?,
        })
    }

    /// Opens the map pinned under `pin_dir` by a loaded [`crate::Datapath`]:
    /// for tests and tools beside a running datapath.
    pub fn open(pin_dir: &Path) -> Result<Self, SnatError> {
        let path = pin_dir.join(MAP);
        let data = MapData::from_pin(&path).map_err(|source| SnatError::Open {
            path: path.clone(),
            source,
        })?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(|source| SnatError::Open { path, source })?;
        Ok(Self { map })
    }

    /// Every entry, both directions.
    pub fn entries(&self) -> Result<Vec<(CtKey, SnatEntry)>, SnatError> {
        self.map.iter().collect::<Result<_, _>>().map_err(SnatError::Map)
    }

    /// Deletes what [`expired`] picks at `now_ns` (CLOCK_MONOTONIC, see
    /// [`crate::lb::monotonic_now_ns`]); returns how many entries went.
    pub fn gc(&mut self, now_ns: u64) -> Result<usize, SnatError> {
        let entries: StdHashMap<CtKey, SnatEntry> = self.entries()?.into_iter().collect();
        let doomed = expired(&entries, now_ns);
        for key in &doomed {
            match self.map.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnatError::Map(e)),
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lb::{Protocol, be_addr};

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);

    fn flow(expires_fwd: u64, expires_rev: u64) -> StdHashMap<CtKey, SnatEntry> {
        let fwd_key = CtKey::new(POD, 40000, REMOTE, 80, Protocol::Tcp);
        let fwd = SnatEntry {
            expires_ns: expires_fwd,
            addr: be_addr(NODE),
            port: 33000u16.to_be(),
            ..Default::default()
        };
        let rev_key = fwd.partner_key(&fwd_key);
        let rev = SnatEntry {
            expires_ns: expires_rev,
            addr: be_addr(POD),
            port: 40000u16.to_be(),
            flags: F_REVERSE,
            ..Default::default()
        };
        assert_eq!(rev_key, CtKey::new(REMOTE, 80, NODE, 33000, Protocol::Tcp));
        assert_eq!(rev.partner_key(&rev_key), fwd_key, "partners point at each other");
        [(fwd_key, fwd), (rev_key, rev)].into()
    }

    #[test]
    fn a_flow_lives_while_either_direction_does() {
        assert!(expired(&flow(10, 30), 20).is_empty(), "reverse still live");
        assert!(expired(&flow(30, 10), 20).is_empty(), "forward still live");
        assert_eq!(expired(&flow(10, 15), 20).len(), 2, "both expired: both go");
        let mut orphan = flow(10, 30);
        orphan.retain(|_, e| e.flags & F_REVERSE == 0);
        assert_eq!(expired(&orphan, 20).len(), 1, "an expired entry without partner goes");
    }
}
