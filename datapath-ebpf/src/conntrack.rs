//! The one connection table (`weir_ct4`, `bpf/lib/conntrack.h`): plain pod
//! connections, service and NodePort connections and masqueraded flows, two
//! entries (one per direction) each. The pure choice of what the GC removes,
//! and [`Conntrack`], the handle its one owner (the agent's services
//! controller) reads, flushes and collects it through.
//!
//! The datapath creates every entry; userspace only reads, in batches
//! (`BPF_MAP_LOOKUP_BATCH`: a table of 100k entries is a few hundred
//! syscalls, not 200k), and deletes what expired, one lookup-and-delete
//! per entry (only that says which pod's share the deleted entry was
//! charged to; see [`Conntrack::remove`]).
use std::collections::HashMap as StdHashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};

use crate::lb::{Protocol, be_addr};

pub use crate::abi::{
    CT_CLOSING, CT_ESTABLISHED, CT_F_HAIRPIN, CT_F_MASQ, CT_F_NODEPORT, CT_F_REVERSE, CT_F_SNAT, CT_MAX_ENTRIES,
    CT_NEW, CT_NODE_MAX_DEFAULT, CT_OWNER_NODE, CT_SYN_SENT, CtEntry, CtKey,
};

/// The map's name, as declared in `bpf/lib/conntrack.h`.
pub const MAP: &str = "weir_ct4";
/// What the agent released per endpoint (the datapath's fairness bound).
pub const RELEASED_MAP: &str = "weir_ep_ct_released";

/// Entries per batch syscall: 512 keeps the buffers at 28 KiB (the agent's
/// resident memory) while a full table of 262,144 entries is still only 512
/// calls. A hash map hands out whole buckets, so a batch grows when one
/// bucket does not fit (see [`Conntrack::entries`]).
const BATCH: usize = 512;

impl CtKey {
    pub fn new(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16, proto: Protocol) -> Self {
        Self {
            saddr: be_addr(saddr),
            daddr: be_addr(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: proto as u8,
            pad: [0; 3],
        }
    }
}

impl CtEntry {
    /// The key of the other direction's entry (`ct_partner_key` in C).
    pub fn partner_key(&self, proto: u8) -> CtKey {
        CtKey {
            saddr: self.xlate_daddr,
            daddr: self.xlate_saddr,
            sport: self.xlate_dport,
            dport: self.xlate_sport,
            proto,
            pad: [0; 3],
        }
    }
}

/// The entries the GC removes at `now_ns`: expired ones whose partner has
/// expired too or is gone (a connection lives while either direction is
/// active).
pub fn expired(entries: &StdHashMap<CtKey, CtEntry>, now_ns: u64) -> Vec<CtKey> {
    entries
        .iter()
        .filter(|(key, e)| {
            e.expires_ns < now_ns
                && entries
                    .get(&e.partner_key(key.proto))
                    .is_none_or(|p| p.expires_ns < now_ns)
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Errors from the conntrack map, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    /// The pinned map could not be opened (datapath not loaded at this pin dir?).
    #[error("opening pinned map {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// The map is not a hash map of conntrack entries.
    #[error("map {MAP}")]
    Map(#[source] MapError),
    /// A batched lookup failed.
    #[error("map {MAP}: batched {op}")]
    Batch {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An operation on one entry failed.
    #[error("map {MAP}: {op}")]
    Elem {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The datapath has no such map (or it was handed out already).
    #[error("the datapath has no map {MAP} to hand over")]
    Missing,
}

/// The conntrack table of one node's datapath, with the per-endpoint
/// count of what userspace removed from it (its one writer).
pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtEntry>,
    released: HashMap<MapData, u32, u64>,
    occupancy: Occupancy,
}

/// What the table held after the last GC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Entries (two per connection).
    pub entries: usize,
    /// Of those, entries of translated connections (services, NodePort,
    /// masquerade): the NAT table's share.
    pub translated: usize,
    /// Of those, entries charged to the node's share (connections from
    /// outside through NodePorts and external IPs, [`CT_OWNER_NODE`]).
    pub node: usize,
}

impl Conntrack {
    /// The map a loaded [`crate::Datapath`] hands over: the agent's way.
    pub fn from_map(map: Map, released: Map) -> Result<Self, CtError> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(CtError::Map)?,
            released: HashMap::try_from(released).map_err(CtError::Map)?,
            occupancy: Occupancy::default(),
        })
    }

    /// Opens the map pinned under `pin_dir` by a loaded [`crate::Datapath`]:
    /// for tests and tools beside a running datapath.
    pub fn open(pin_dir: &Path) -> Result<Self, CtError> {
        let path = pin_dir.join(MAP);
        let data = MapData::from_pin(&path).map_err(|source| CtError::Open {
            path: path.clone(),
            source,
        })?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(|source| CtError::Open { path, source })?;
        let path = pin_dir.join(RELEASED_MAP);
        let data = MapData::from_pin(&path).map_err(|source| CtError::Open {
            path: path.clone(),
            source,
        })?;
        let released = HashMap::try_from(Map::HashMap(data)).map_err(|source| CtError::Open { path, source })?;
        Ok(Self {
            map,
            released,
            occupancy: Occupancy::default(),
        })
    }

    /// Every entry, both directions, read in batches. Entries the datapath
    /// adds or removes meanwhile may or may not be seen, as with any walk
    /// of a live hash map.
    pub fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, CtError> {
        let fd = self.map.map().fd().as_fd();
        let mut out = Vec::new();
        let mut size = BATCH;
        let mut keys = vec![CtKey::default(); size];
        let mut values = vec![CtEntry::default(); size];
        let mut token = None;
        loop {
            match crate::abi::lookup_batch(fd, token, &mut keys, &mut values) {
                Ok((n, next)) => {
                    out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                    match next {
                        Some(t) => token = Some(t),
                        None => return Ok(out),
                    }
                }
                // One bucket holds more than the buffers: grow them.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < 1 << 20 => {
                    size *= 2;
                    keys.resize(size, CtKey::default());
                    values.resize(size, CtEntry::default());
                }
                Err(source) => return Err(CtError::Batch { op: "lookup", source }),
            }
        }
    }

    /// Number of entries (two per connection).
    pub fn len(&self) -> Result<usize, CtError> {
        Ok(self.entries()?.len())
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> Result<bool, CtError> {
        Ok(self.len()? == 0)
    }

    /// Deletes entries, each only if it still holds what the caller read,
    /// and releases what went from its endpoint's share. One lookup-and-
    /// delete per key, so the endpoint credited is the owner of the value
    /// that went, never one read earlier: between the caller's walk and the
    /// delete the datapath may refresh an entry (a late packet) or hand its
    /// key to a new connection (a reused 5-tuple, charged to its own pod).
    /// Such an entry is put back, unless the datapath made another in the
    /// gap; then the one taken out went after all. Returns how many went.
    pub fn remove(&mut self, doomed: &[(CtKey, CtEntry)]) -> Result<usize, CtError> {
        let mut per_owner: StdHashMap<u32, u64> = StdHashMap::new();
        let mut removed = 0;
        for (key, read) in doomed {
            let taken = crate::abi::lookup_and_delete::<CtKey, CtEntry>(self.map.map().fd().as_fd(), key).map_err(
                |source| CtError::Elem {
                    op: "lookup-and-delete",
                    source,
                },
            )?;
            let Some(taken) = taken else {
                continue;
            };
            if taken != *read {
                match self.map.insert(key, taken, u64::from(aya_obj::generated::BPF_NOEXIST)) {
                    Ok(()) => continue,
                    Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(CtError::Map(e)),
                }
            }
            removed += 1;
            if taken.owner != 0 {
                *per_owner.entry(taken.owner).or_default() += 1;
            }
        }
        for (owner, n) in per_owner {
            let before = self.released.get(&owner, 0).unwrap_or(0);
            self.released.insert(owner, before + n, 0).map_err(CtError::Map)?;
        }
        Ok(removed)
    }

    /// Deletes what [`expired`] picks at `now_ns` (CLOCK_MONOTONIC, see
    /// [`crate::lb::monotonic_now_ns`]); returns how many entries went.
    pub fn gc(&mut self, now_ns: u64) -> Result<usize, CtError> {
        let entries: StdHashMap<CtKey, CtEntry> = self.entries()?.into_iter().collect();
        let doomed: Vec<(CtKey, CtEntry)> = expired(&entries, now_ns)
            .into_iter()
            .map(|k| (k, entries[&k]))
            .collect();
        self.remove(&doomed)?;
        let translated = |e: &CtEntry| e.service_id != 0 || e.flags & !CT_F_REVERSE != 0;
        let gone: std::collections::HashSet<CtKey> = doomed.iter().map(|(k, _)| *k).collect();
        let live = entries.iter().filter(|(k, _)| !gone.contains(k));
        self.occupancy = live.fold(Occupancy::default(), |mut o, (_, e)| {
            o.entries += 1;
            o.translated += usize::from(translated(e));
            o.node += usize::from(e.owner == CT_OWNER_NODE);
            o
        });
        Ok(doomed.len())
    }

    /// The table after the last [`Self::gc`].
    pub fn occupancy(&self) -> Occupancy {
        self.occupancy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);

    /// A masqueraded flow: the shape with the least symmetric partner keys.
    fn flow(expires_fwd: u64, expires_rev: u64) -> StdHashMap<CtKey, CtEntry> {
        let fwd_key = CtKey::new(POD, 40000, REMOTE, 80, Protocol::Tcp);
        let fwd = CtEntry {
            expires_ns: expires_fwd,
            xlate_saddr: be_addr(NODE),
            xlate_daddr: be_addr(REMOTE),
            xlate_sport: 33000u16.to_be(),
            xlate_dport: 80u16.to_be(),
            flags: CT_F_MASQ,
            ..Default::default()
        };
        let rev_key = fwd.partner_key(fwd_key.proto);
        let rev = CtEntry {
            expires_ns: expires_rev,
            xlate_saddr: be_addr(REMOTE),
            xlate_daddr: be_addr(POD),
            xlate_sport: 80u16.to_be(),
            xlate_dport: 40000u16.to_be(),
            flags: CT_F_MASQ | CT_F_REVERSE,
            ..Default::default()
        };
        assert_eq!(rev_key, CtKey::new(REMOTE, 80, NODE, 33000, Protocol::Tcp));
        assert_eq!(rev.partner_key(rev_key.proto), fwd_key, "partners point at each other");
        [(fwd_key, fwd), (rev_key, rev)].into()
    }

    #[test]
    fn a_connection_lives_while_either_direction_does() {
        assert!(expired(&flow(10, 30), 20).is_empty(), "reverse still live");
        assert!(expired(&flow(30, 10), 20).is_empty(), "forward still live");
        assert_eq!(expired(&flow(10, 15), 20).len(), 2, "both expired: both go");
        let mut orphan = flow(10, 30);
        orphan.retain(|_, e| e.flags & CT_F_REVERSE == 0);
        assert_eq!(expired(&orphan, 20).len(), 1, "an expired entry without partner goes");
    }
}
