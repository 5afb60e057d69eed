//! The ipcache (`weir_ipcache`, `bpf/lib/maps.h`): the identity of every
//! address of the cluster, remote pods and nodes included, so the datapath
//! can judge (policy) and name (flows) traffic from anywhere by identity.
//! [`IpCache`] is the handle its one owner, the agent's ipcache controller,
//! keeps it in step with the cluster state through.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use ipnet::Ipv4Net;

use crate::abi::{IpCacheEntry, RouteKey};
use crate::{DatapathError, maps};

pub use crate::abi::sys::{
    WEIR_ID_HOST as ID_HOST, WEIR_ID_INIT as ID_INIT, WEIR_ID_MIN as ID_MIN, WEIR_ID_REMOTE_NODE as ID_REMOTE_NODE,
    WEIR_ID_UNKNOWN as ID_UNKNOWN, WEIR_ID_WORLD as ID_WORLD,
};

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(source: aya::maps::MapError) -> DatapathError {
    DatapathError::Map {
        map: maps::IPCACHE,
        source,
    }
}

/// What one [`IpCache::sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

/// The ipcache of one node's datapath.
pub struct IpCache {
    map: LpmTrie<MapData, RouteKey, IpCacheEntry>,
}

impl IpCache {
    /// The map a loaded [`crate::Datapath`] hands over: the agent's way.
    pub fn from_map(map: Map) -> Result<Self> {
        Ok(Self {
            map: LpmTrie::try_from(map).map_err(map_err)?,
        })
    }

    /// Opens the map pinned under `pin_dir`: for tests and tools beside a
    /// running datapath.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let data = MapData::from_pin(pin_dir.join(maps::IPCACHE)).map_err(map_err)?;
        Self::from_map(Map::LpmTrie(data))
    }

    /// Every host entry: address → identity.
    pub fn entries(&self) -> Result<BTreeMap<Ipv4Addr, u32>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (key, entry) = item.map_err(map_err)?;
            if key.prefix_len() == 32 + 32 {
                out.insert(Ipv4Addr::from(key.data().addr[0].to_ne_bytes()), entry.identity);
            }
        }
        Ok(out)
    }

    /// Makes the map hold exactly `wanted` (host addresses → identity):
    /// writes what differs, then removes what is no longer wanted, so a
    /// lookup never misses an address that stays.
    pub fn sync(&mut self, wanted: &BTreeMap<Ipv4Addr, u32>) -> Result<SyncStats> {
        let have = self.entries()?;
        let key = |ip: Ipv4Addr| -> Key<RouteKey> { RouteKey::v4(Ipv4Net::from(ip)) };
        let mut stats = SyncStats::default();
        // Stale entries go first: a full map then has room for the new
        // ones, instead of failing every sync from then on.
        for ip in have.keys().filter(|ip| !wanted.contains_key(ip)) {
            match self.map.remove(&key(*ip)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
                Err(e) => return Err(map_err(e)),
            }
        }
        for (ip, identity) in wanted {
            if have.get(ip) != Some(identity) {
                let entry = IpCacheEntry {
                    identity: *identity,
                    flags: 0,
                };
                self.map.insert(&key(*ip), entry, 0).map_err(map_err)?;
                stats.written += 1;
            }
        }
        Ok(stats)
    }

    /// Writes the given entries only (`None`: remove the address), for a
    /// change that touched a few addresses of a large table; removals
    /// first, as in [`Self::sync`].
    pub fn update(&mut self, entries: &BTreeMap<Ipv4Addr, Option<u32>>) -> Result<SyncStats> {
        let key = |ip: Ipv4Addr| -> Key<RouteKey> { RouteKey::v4(Ipv4Net::from(ip)) };
        let mut stats = SyncStats::default();
        for ip in entries.iter().filter(|(_, id)| id.is_none()).map(|(ip, _)| *ip) {
            match self.map.remove(&key(ip)) {
                Ok(()) => stats.removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        for (ip, identity) in entries.iter().filter_map(|(ip, id)| Some((*ip, (*id)?))) {
            let entry = IpCacheEntry { identity, flags: 0 };
            self.map.insert(&key(ip), entry, 0).map_err(map_err)?;
            stats.written += 1;
        }
        Ok(stats)
    }
}
