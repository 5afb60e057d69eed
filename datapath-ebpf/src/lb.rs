//! ClusterIP services: the pure planning that turns a service's backends
//! into map contents (slot assignment, the Maglev table), and [`ServiceMaps`],
//! which writes them into the pinned maps.
//!
//! `ServiceMaps` opens the maps by their pins, so the agent can program
//! services without the [`crate::Datapath`] object the endpoint code owns.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, MapError};

/// Map names, as declared in `bpf/lib/lb.h` and `bpf/lib/conntrack.h`.
pub mod maps {
    pub const SERVICES: &str = "weir_lb4_services";
    pub const BACKENDS: &str = "weir_lb4_backends";
    pub const MAGLEV: &str = "weir_lb4_maglev";
    pub const AFFINITY: &str = "weir_lb4_affinity";
    pub const CONNTRACK: &str = crate::conntrack::MAP;
}

pub use crate::abi::{
    ALG_MAGLEV, ALG_RANDOM, AffinityKey, AffinityValue, BackendKey, BackendValue, HAIRPIN_IP, LB_F_EXTERNAL,
    LB_F_LOCAL, MAGLEV_M, MAX_SERVICES, NAT_PORTS, ServiceKey, ServiceValue,
};
pub use crate::conntrack::{
    CT_CLOSING, CT_ESTABLISHED, CT_F_HAIRPIN, CT_F_MASQ, CT_F_NODEPORT, CT_F_REVERSE, CT_F_SNAT, CT_MAX_ENTRIES,
    CT_NEW, CT_SYN_SENT, Conntrack, CtEntry, CtError, CtKey,
};

/// An IPv4 address as the packet carries it, in a native `u32`.
pub fn be_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The inverse of [`be_addr`].
pub fn addr_of(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

// --- ABI twins -------------------------------------------------------------

impl ServiceKey {
    pub fn new(vip: Ipv4Addr, port: u16, proto: Protocol) -> Self {
        Self {
            vip: be_addr(vip),
            dport: port.to_be(),
            proto: proto as u8,
            pad: 0,
        }
    }
}

/// `struct weir_lb_maglev`: backend slot per table index.
pub type MaglevTable = [u32; MAGLEV_M];

// --- what a service is -----------------------------------------------------

/// L4 protocols a service can carry (IANA numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

/// How the datapath picks a backend for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Uniformly random per connection.
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: every node picks the same
    /// backend for a tuple, and a backend change moves few tuples.
    Maglev,
}

/// One endpoint of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Terminating backends take no new connections; established ones keep
    /// working because conntrack holds the backend's address itself.
    pub terminating: bool,
}

/// `externalTrafficPolicy` of an external frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficPolicy {
    /// Any backend; a backend on another node is reached with the source
    /// NATed to this node, so the replies come back through it.
    Cluster,
    /// Only this node's backends, the client's address preserved; no local
    /// backend means the packet is dropped (counted).
    Local,
}

/// Everything the datapath needs about one service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    /// ClientIP session affinity; `None` for none.
    pub affinity_timeout: Option<Duration>,
    /// `Some` for a frontend reached from outside the cluster (NodePort,
    /// externalIP, LoadBalancer IP), translated on the uplink.
    pub external: Option<TrafficPolicy>,
}

impl ServiceSpec {
    /// `weir_lb_svc.flags`.
    pub fn flags(&self) -> u8 {
        match self.external {
            None => 0,
            Some(TrafficPolicy::Cluster) => LB_F_EXTERNAL,
            Some(TrafficPolicy::Local) => LB_F_EXTERNAL | LB_F_LOCAL,
        }
    }
}

// --- pure planning ---------------------------------------------------------

/// Orders the backends into slots: element `i` goes to slot `i + 1`. The
/// first `count` (the returned number) are the non-terminating ones; the
/// terminating ones follow. A backend that already had a slot within the new
/// `count` keeps it, so session-affinity records (which remember a slot) stay
/// valid when other backends come and go.
pub fn assign_slots(previous: &[(u32, Ipv4Addr, u16)], backends: &[Backend]) -> (Vec<Backend>, u32) {
    let active: BTreeSet<(Ipv4Addr, u16)> = backends
        .iter()
        .filter(|b| !b.terminating)
        .map(|b| (b.ip, b.port))
        .collect();
    let terminating: BTreeSet<(Ipv4Addr, u16)> = backends
        .iter()
        .filter(|b| b.terminating && !active.contains(&(b.ip, b.port)))
        .map(|b| (b.ip, b.port))
        .collect();
    let count = active.len();
    let mut slots: Vec<Option<(Ipv4Addr, u16)>> = vec![None; count];
    let mut placed = BTreeSet::new();
    for &(slot, ip, port) in previous {
        let i = slot as usize;
        if (1..=count).contains(&i)
            && slots[i - 1].is_none()
            && active.contains(&(ip, port))
            && placed.insert((ip, port))
        {
            slots[i - 1] = Some((ip, port));
        }
    }
    let mut rest = active.iter().filter(|b| !placed.contains(*b));
    let mut out: Vec<Backend> = slots
        .into_iter()
        .map(|s| {
            let (ip, port) = s.or_else(|| rest.next().copied()).expect("as many backends as slots");
            Backend {
                ip,
                port,
                terminating: false,
            }
        })
        .collect();
    out.extend(terminating.into_iter().map(|(ip, port)| Backend {
        ip,
        port,
        terminating: true,
    }));
    (out, count as u32)
}

/// FNV-1a then a SplitMix64 finaliser: stable across builds, platforms and
/// Rust releases (unlike `DefaultHasher`), so every node computes the same
/// table for the same backends.
fn backend_hash(ip: Ipv4Addr, port: u16, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in ip.octets().into_iter().chain(port.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4) over
/// `backends` given as `(slot, ip, port)`: entry `i` is the slot that table
/// index `i` maps to. Each backend walks its own permutation of the table
/// and claims the next free entry in turn, so shares differ by at most one
/// entry and removing a backend mostly frees only its own entries. The
/// result depends on the set of backends, not their order or slot numbers.
/// Empty when there are no backends.
pub fn maglev_table(backends: &[(u32, Ipv4Addr, u16)]) -> Vec<u32> {
    let m = MAGLEV_M as u64;
    let mut sorted: Vec<(u32, Ipv4Addr, u16)> = backends.to_vec();
    sorted.sort_by_key(|&(_, ip, port)| (ip, port));
    sorted.dedup_by_key(|&mut (_, ip, port)| (ip, port));
    if sorted.is_empty() {
        return Vec::new();
    }
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|&(_, ip, port)| {
            (
                backend_hash(ip, port, 0) % m,
                backend_hash(ip, port, 0x9e37_79b9) % (m - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut table: Vec<Option<u32>> = vec![None; MAGLEV_M];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perm.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m) as usize;
            while table[c].is_some() {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m) as usize;
            }
            table[c] = Some(sorted[i].0);
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_M {
                break 'fill;
            }
        }
    }
    table.into_iter().map(|s| s.expect("every entry filled")).collect()
}

// --- the maps --------------------------------------------------------------

/// Errors from programming services, each naming the map or the input.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// A pinned map could not be opened (datapath not loaded at this pin dir?).
    #[error("opening pinned map {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// The service cannot be expressed in the datapath.
    #[error("service {key}: {reason}")]
    Invalid { key: String, reason: String },
    /// Every service id is taken.
    #[error("no free service id (at most {MAX_SERVICES} services)")]
    Full,
    /// The datapath has no such map (or it was handed out already).
    #[error("the datapath has no map {0} to hand over")]
    Missing(&'static str),
    /// Reading or flushing the conntrack table failed.
    #[error(transparent)]
    Conntrack(#[from] CtError),
}

type Result<T, E = LbError> = std::result::Result<T, E>;

/// The service and conntrack maps of one node's datapath, owned by the
/// services controller.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, BackendValue>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    conntrack: Conntrack,
    /// Service ids in use, mirrored here so allocating one does not walk the
    /// services map (which would make programming N services O(N²)).
    used_ids: BTreeSet<u32>,
}

fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

fn ignore_missing(r: Result<(), MapError>, map: &'static str) -> Result<()> {
    match r {
        Err(e) if !is_missing(&e) => Err(LbError::Map { map, source: e }),
        _ => Ok(()),
    }
}

fn open_pin(pin_dir: &Path, name: &'static str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).map_err(|source| LbError::Open { path, source })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// conntrack deadlines are written in.
pub fn monotonic_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

impl ServiceMaps {
    /// The maps a loaded [`crate::Datapath`] hands over
    /// ([`crate::Datapath::take_service_maps`]): the agent's way.
    pub fn from_maps(services: Map, backends: Map, maglev: Map, conntrack: Map, released: Map) -> Result<Self> {
        let hash = |name: &'static str, m: Map| -> Result<MapData> {
            match m {
                Map::HashMap(data) => Ok(data),
                _ => Err(LbError::Missing(name)),
            }
        };
        Self::from_data(
            hash(maps::SERVICES, services)?,
            hash(maps::BACKENDS, backends)?,
            hash(maps::MAGLEV, maglev)?,
            Conntrack::from_map(conntrack, released)?,
        )
    }

    /// Opens the maps pinned under `pin_dir` by a loaded [`crate::Datapath`]:
    /// for tests and tools beside a running datapath.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Self::from_data(
            open_pin(pin_dir, maps::SERVICES)?,
            open_pin(pin_dir, maps::BACKENDS)?,
            open_pin(pin_dir, maps::MAGLEV)?,
            Conntrack::open(pin_dir)?,
        )
    }

    fn from_data(services: MapData, backends: MapData, maglev: MapData, conntrack: Conntrack) -> Result<Self> {
        fn hash<K: aya::Pod, V: aya::Pod>(name: &'static str, data: MapData) -> Result<HashMap<MapData, K, V>> {
            HashMap::try_from(Map::HashMap(data)).map_err(|source| LbError::Map { map: name, source })
        }
        let mut me = Self {
            services: hash(maps::SERVICES, services)?,
            backends: hash(maps::BACKENDS, backends)?,
            maglev: hash(maps::MAGLEV, maglev)?,
            conntrack,
            used_ids: BTreeSet::new(),
        };
        me.used_ids = me.services()?.values().map(|v| v.service_id).collect();
        Ok(me)
    }

    /// Every programmed service.
    pub fn services(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        self.services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| LbError::Map {
                map: maps::SERVICES,
                source,
            })
    }

    /// The backends of a service in slot order (slot 1 first).
    pub fn backends(&self, service_id: u32) -> Result<Vec<BackendValue>> {
        let mut out = Vec::new();
        for slot in 1.. {
            match self.backends.get(&BackendKey { service_id, slot }, 0) {
                Ok(b) => out.push(b),
                Err(e) if is_missing(&e) => break,
                Err(source) => {
                    return Err(LbError::Map {
                        map: maps::BACKENDS,
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Programs one service port; returns its service id. Writes backends,
    /// then the Maglev table, then the service entry, then removes surplus
    /// slots: the datapath never sees a count without its backends. UDP
    /// flows to backends that left are flushed ([`Self::flush_conntrack`]).
    pub fn upsert_service(&mut self, vip: Ipv4Addr, port: u16, proto: Protocol, spec: &ServiceSpec) -> Result<u32> {
        let key = ServiceKey::new(vip, port, proto);
        let invalid = |reason: String| LbError::Invalid {
            key: format!("{vip}:{port}/{proto:?}"),
            reason,
        };
        if proto == Protocol::Sctp
            && let Some(b) = spec.backends.iter().find(|b| b.port != port)
        {
            return Err(invalid(format!(
                "SCTP backend {}:{} has another port: its CRC32c would need recomputing, so only same-port SCTP \
                 services are supported",
                b.ip, b.port
            )));
        }
        let existing = match self.services.get(&key, 0) {
            Ok(v) => Some(v),
            Err(e) if is_missing(&e) => None,
            Err(source) => {
                return Err(LbError::Map {
                    map: maps::SERVICES,
                    source,
                });
            }
        };
        let service_id = match existing {
            Some(v) => v.service_id,
            None => self.free_id()?,
        };
        let previous = self.backends(service_id)?;
        let prev_slots: Vec<(u32, Ipv4Addr, u16)> = previous
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32 + 1, addr_of(b.ip), u16::from_be(b.port)))
            .collect();
        let (slots, count) = assign_slots(&prev_slots, &spec.backends);
        for (i, b) in slots.iter().enumerate() {
            let value = BackendValue {
                ip: be_addr(b.ip),
                port: b.port.to_be(),
                proto: proto as u8,
                pad: 0,
            };
            self.backends
                .insert(
                    BackendKey {
                        service_id,
                        slot: i as u32 + 1,
                    },
                    value,
                    0,
                )
                .map_err(|source| LbError::Map {
                    map: maps::BACKENDS,
                    source,
                })?;
        }
        let maglev = spec.algorithm == Algorithm::Maglev && count > 0;
        if maglev {
            let usable: Vec<(u32, Ipv4Addr, u16)> = slots[..count as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| (i as u32 + 1, b.ip, b.port))
                .collect();
            let table: MaglevTable = maglev_table(&usable).try_into().expect("table has MAGLEV_M entries");
            self.maglev
                .insert(service_id, table, 0)
                .map_err(|source| LbError::Map {
                    map: maps::MAGLEV,
                    source,
                })?;
        }
        let affinity_timeout_s = spec
            .affinity_timeout
            .map_or(0, |d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
        let value = ServiceValue {
            service_id,
            count,
            affinity_timeout_s,
            algorithm: if spec.algorithm == Algorithm::Maglev {
                ALG_MAGLEV
            } else {
                ALG_RANDOM
            },
            flags: spec.flags(),
            pad: 0,
        };
        self.services.insert(key, value, 0).map_err(|source| LbError::Map {
            map: maps::SERVICES,
            source,
        })?;
        self.used_ids.insert(service_id);
        for slot in slots.len() + 1..=previous.len() {
            ignore_missing(
                self.backends.remove(&BackendKey {
                    service_id,
                    slot: slot as u32,
                }),
                maps::BACKENDS,
            )?;
        }
        if !maglev {
            ignore_missing(self.maglev.remove(&service_id), maps::MAGLEV)?;
        }
        let gone: BTreeSet<(Ipv4Addr, u16)> = prev_slots
            .iter()
            .map(|&(_, ip, port)| (ip, port))
            .filter(|&(ip, port)| !spec.backends.iter().any(|b| b.ip == ip && b.port == port))
            .collect();
        if proto == Protocol::Udp && !gone.is_empty() {
            self.flush_conntrack(service_id, &gone)?;
        }
        Ok(service_id)
    }

    /// Removes a service port: new connections stop at once, established
    /// TCP and SCTP ones keep their conntrack entries until they expire, UDP
    /// ones lose them ([`Self::flush_conntrack`]). Idempotent.
    pub fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<()> {
        let key = ServiceKey::new(vip, port, proto);
        let value = match self.services.get(&key, 0) {
            Ok(v) => v,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(source) => {
                return Err(LbError::Map {
                    map: maps::SERVICES,
                    source,
                });
            }
        };
        ignore_missing(self.services.remove(&key), maps::SERVICES)?;
        self.used_ids.remove(&value.service_id);
        let previous = self.backends(value.service_id)?;
        if proto == Protocol::Udp {
            let all = previous.iter().map(|b| (addr_of(b.ip), u16::from_be(b.port))).collect();
            self.flush_conntrack(value.service_id, &all)?;
        }
        let n = previous.len();
        for slot in 1..=n {
            ignore_missing(
                self.backends.remove(&BackendKey {
                    service_id: value.service_id,
                    slot: slot as u32,
                }),
                maps::BACKENDS,
            )?;
        }
        ignore_missing(self.maglev.remove(&value.service_id), maps::MAGLEV)
    }

    fn free_id(&self) -> Result<u32> {
        // Ids are dense from 1: the first gap, or one past the highest.
        let next = self.used_ids.last().map_or(1, |last| last + 1);
        if next <= MAX_SERVICES && self.used_ids.len() as u32 == next - 1 {
            return Ok(next);
        }
        (1..=MAX_SERVICES)
            .find(|id| !self.used_ids.contains(id))
            .ok_or(LbError::Full)
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        Ok(self.conntrack.entries()?)
    }

    /// Number of conntrack entries (two per connection).
    pub fn conntrack_len(&self) -> Result<usize> {
        Ok(self.conntrack.len()?)
    }

    /// Deletes both entries of every connection of `service_id` to one of
    /// the `backends` (ip, port). For UDP backends that left a service: a
    /// datagram flow has no end, so a client reusing a source port (or just
    /// sending on) would follow its entry to a pod that is gone, until the
    /// entry idles out. kube-proxy clears UDP conntrack for the same reason.
    /// TCP connections keep their entries (a backend that is only unready
    /// still serves them; one that is gone answers nothing, and the client's
    /// next SYN on a closed entry picks anew). Returns how many entries went.
    pub fn flush_conntrack(&mut self, service_id: u32, backends: &BTreeSet<(Ipv4Addr, u16)>) -> Result<usize> {
        let all = self.conntrack()?;
        let read: std::collections::HashMap<CtKey, CtEntry> = all.iter().copied().collect();
        let doomed: Vec<(CtKey, CtEntry)> = connections_to(&all, service_id, backends)
            .into_iter()
            .filter_map(|k| read.get(&k).map(|e| (k, *e)))
            .collect();
        Ok(self.conntrack.remove(&doomed)?)
    }

    /// Deletes connections whose entries have both expired by `now_ns`
    /// (CLOCK_MONOTONIC, see [`monotonic_now_ns`]), of every kind: plain,
    /// service and masqueraded ([`crate::conntrack::expired`]). Returns how
    /// many entries went.
    pub fn gc_conntrack(&mut self, now_ns: u64) -> Result<usize> {
        Ok(self.conntrack.gc(now_ns)?)
    }

    /// The conntrack table after the last GC.
    pub fn conntrack_occupancy(&self) -> crate::conntrack::Occupancy {
        self.conntrack.occupancy()
    }
}

/// The keys of both entries of every connection of `service_id` whose
/// backend (the forward entry's translated destination) is in `backends`.
pub fn connections_to(
    entries: &[(CtKey, CtEntry)],
    service_id: u32,
    backends: &BTreeSet<(Ipv4Addr, u16)>,
) -> Vec<CtKey> {
    entries
        .iter()
        .filter(|(_, e)| {
            e.service_id == service_id
                && e.flags & CT_F_REVERSE == 0
                && backends.contains(&(addr_of(e.xlate_daddr), u16::from_be(e.xlate_dport)))
        })
        .flat_map(|(k, e)| [*k, e.partner_key(k.proto)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    fn be(last: u8, terminating: bool) -> Backend {
        Backend {
            ip: ip(last),
            port: 8080,
            terminating,
        }
    }

    fn counts(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for s in table {
            *c.entry(*s).or_default() += 1;
        }
        c
    }

    #[test]
    fn maglev_spreads_evenly() {
        for n in [1u8, 2, 3, 7, 10, 50] {
            let backends: Vec<_> = (1..=n).map(|i| (u32::from(i), ip(i), 8080)).collect();
            let table = maglev_table(&backends);
            assert_eq!(table.len(), MAGLEV_M);
            let c = counts(&table);
            assert_eq!(c.len(), n as usize, "every backend has entries");
            let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(max - min <= 1, "n={n}: shares {min}..{max}");
        }
    }

    #[test]
    fn maglev_depends_on_the_set_not_the_order() {
        let a: Vec<_> = (1..=5u8).map(|i| (u32::from(i), ip(i), 80)).collect();
        let mut b = a.clone();
        b.reverse();
        assert_eq!(maglev_table(&a), maglev_table(&b));
    }

    #[test]
    fn maglev_removal_moves_few_other_entries() {
        let all: Vec<_> = (1..=10u8).map(|i| (u32::from(i), ip(i), 8080)).collect();
        let before = maglev_table(&all);
        let fewer: Vec<_> = all.iter().copied().filter(|b| b.0 != 4).collect();
        let after = maglev_table(&fewer);
        let owned_by_removed = before.iter().filter(|s| **s == 4).count();
        let moved_others = before.iter().zip(&after).filter(|(b, a)| **b != 4 && b != a).count();
        assert!(after.iter().all(|s| *s != 4));
        // The removed backend's ~102 entries must move; of the other ~919,
        // Maglev moves only a few percent (the paper's bound for M >> N).
        assert!(
            moved_others * 10 < MAGLEV_M,
            "{moved_others} of {MAGLEV_M} entries of others moved"
        );
        assert!(owned_by_removed > 90);
    }

    #[test]
    fn connections_to_finds_both_directions_of_that_service_and_backend_only() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let client = Ipv4Addr::new(10, 244, 2, 9);
        let entry = |service_id, backend: Ipv4Addr| CtEntry {
            xlate_saddr: be_addr(client),
            xlate_daddr: be_addr(backend),
            xlate_sport: 4000u16.to_be(),
            xlate_dport: 8080u16.to_be(),
            service_id,
            ..CtEntry::default()
        };
        let fwd = |sport: u16| CtKey::new(client, sport, vip, 53, Protocol::Udp);
        let (gone, stays) = (ip(1), ip(2));
        let to_gone = entry(7, gone);
        let rev = to_gone.partner_key(Protocol::Udp as u8);
        let reverse = CtEntry {
            flags: CT_F_REVERSE,
            ..entry(7, client)
        };
        let entries = [
            (fwd(4000), to_gone),
            (rev, reverse),
            (fwd(4001), entry(7, stays)),
            (fwd(4002), entry(8, gone)), // another service
        ];
        let doomed = connections_to(&entries, 7, &BTreeSet::from([(gone, 8080)]));
        assert_eq!(doomed, [fwd(4000), rev]);
        assert!(
            connections_to(&entries, 7, &BTreeSet::from([(gone, 9999)])).is_empty(),
            "port matters"
        );
    }

    #[test]
    fn slots_put_ready_backends_first_and_keep_old_slots() {
        let (slots, count) = assign_slots(&[], &[be(3, false), be(1, true), be(2, false)]);
        assert_eq!(count, 2);
        assert_eq!(slots, vec![be(2, false), be(3, false), be(1, true)]);

        // Backend 2 goes away; 3 keeps slot 2 only if it fits within count.
        let prev = [(1, ip(2), 8080), (2, ip(3), 8080)];
        let (slots, count) = assign_slots(&prev, &[be(3, false), be(5, false)]);
        assert_eq!(count, 2);
        assert_eq!(
            slots,
            vec![be(5, false), be(3, false)],
            "3 keeps slot 2, 5 fills the gap"
        );

        let (slots, count) = assign_slots(&prev, &[be(3, false)]);
        assert_eq!((slots, count), (vec![be(3, false)], 1));

        // Duplicates collapse; a backend both ready and terminating counts as ready.
        let (slots, count) = assign_slots(&[], &[be(1, false), be(1, false), be(1, true)]);
        assert_eq!((slots, count), (vec![be(1, false)], 1));
    }

    #[test]
    fn keys_keep_wire_byte_order() {
        let k = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp);
        assert_eq!(k.vip.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(k.dport.to_ne_bytes(), [0, 53]);
        let e = CtEntry {
            xlate_saddr: be_addr(ip(1)),
            xlate_daddr: be_addr(ip(2)),
            xlate_sport: 1u16.to_be(),
            xlate_dport: 2u16.to_be(),
            ..Default::default()
        };
        assert_eq!(e.partner_key(6), CtKey::new(ip(2), 2, ip(1), 1, Protocol::Tcp));
    }
}
