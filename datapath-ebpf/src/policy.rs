//! The policy tables (`weir_policy`, `weir_policy_cidr`, `bpf/lib/policy.h`)
//! and [`PolicyMaps`], the handle their one owner, the agent's policy
//! controller, writes what the model crate's compiler decided through.
//! Writes are differences against what this handle wrote (read back once
//! when it is opened), so a change of one policy among thousands writes a
//! few entries, and entries that stay are never missing in between.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError};
use ipnet::Ipv4Net;

use crate::DatapathError;
use crate::abi::{PolicyEntry, PolicyKey, RouteKey};

pub const MAP: &str = "weir_policy";
pub const CIDR_MAP: &str = "weir_policy_cidr";
pub const REV_MAP: &str = "weir_policy_rev";

pub use weir_abi::policy::{
    CIDR_MIN, MAX_ENTRIES, PEER_ANY, PREFIX_PEER, REF_MAX as REF_MASK, Slot, Verdict, VerdictKind, Verdicts, action,
    tier,
};

/// A slot as the table's LPM key (`struct weir_policy_key` behind its
/// prefix length).
fn slot_key(slot: &Slot) -> Key<PolicyKey> {
    let bits = if slot.proto == 0 {
        u32::from(PREFIX_PEER)
    } else {
        u32::from(PREFIX_PEER) + 8 + u32::from(slot.port_bits.min(16))
    };
    let mask = if slot.port_bits == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(slot.port_bits.min(16)))
    };
    Key::new(
        bits,
        PolicyKey {
            endpoint_id: slot.endpoint_id,
            peer: slot.peer,
            direction: slot.direction,
            proto: slot.proto,
            dport: (slot.port & mask).to_be(),
        },
    )
}

/// The slot a table key stands for.
fn slot_of(key: &Key<PolicyKey>) -> Slot {
    let d = key.data();
    let bits = key.prefix_len();
    let (proto, port_bits) = if bits <= u32::from(PREFIX_PEER) {
        (0, 0)
    } else {
        (d.proto, (bits - u32::from(PREFIX_PEER) - 8).min(16) as u8)
    };
    Slot {
        endpoint_id: d.endpoint_id,
        direction: d.direction,
        peer: d.peer,
        proto,
        port: u16::from_be(d.dport),
        port_bits,
    }
}

/// Verdicts as the table's value.
fn entry_of(v: &Verdicts) -> PolicyEntry {
    PolicyEntry {
        action: v.action,
        audit_action: v.audit_action,
        pad: 0,
        rule: v.reference & REF_MASK,
        audit_rule: v.audit_reference & REF_MASK,
        admin: v.admin,
        admin_rule: v.admin_reference & REF_MASK,
        baseline: v.baseline,
        baseline_rule: v.baseline_reference & REF_MASK,
    }
}

/// The verdicts a table value holds.
fn verdicts_of(e: &PolicyEntry) -> Verdicts {
    Verdicts {
        action: e.action,
        reference: e.rule,
        audit_action: e.audit_action,
        audit_reference: e.audit_rule,
        admin: e.admin,
        admin_reference: e.admin_rule,
        baseline: e.baseline,
        baseline_reference: e.baseline_rule,
    }
}

/// What one [`PolicyMaps::sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// The policy tables of one node's datapath.
pub struct PolicyMaps {
    table: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    cidrs: LpmTrie<MapData, RouteKey, u32>,
    rev: Array<MapData, u32>,
    have: BTreeMap<Slot, Verdicts>,
    have_cidrs: BTreeMap<Ipv4Net, u32>,
}

impl PolicyMaps {
    /// The maps a loaded [`crate::Datapath`] hands over; what they hold
    /// (a previous agent's tables) is read once.
    pub fn from_maps(table: Map, cidrs: Map, rev: Map) -> Result<Self, DatapathError> {
        let rev: Array<MapData, u32> = Array::try_from(rev).map_err(map_err(REV_MAP))?;
        let table: LpmTrie<MapData, PolicyKey, PolicyEntry> = LpmTrie::try_from(table).map_err(map_err(MAP))?;
        let cidrs: LpmTrie<MapData, RouteKey, u32> = LpmTrie::try_from(cidrs).map_err(map_err(CIDR_MAP))?;
        let mut have = BTreeMap::new();
        for item in table.iter() {
            let (k, v) = item.map_err(map_err(MAP))?;
            have.insert(slot_of(&k), verdicts_of(&v));
        }
        let mut have_cidrs = BTreeMap::new();
        for item in cidrs.iter() {
            let (k, id) = item.map_err(map_err(CIDR_MAP))?;
            let prefix = k.prefix_len().saturating_sub(32).min(32) as u8;
            let addr = Ipv4Addr::from(k.data().addr[0].to_ne_bytes());
            if let Ok(net) = Ipv4Net::new(addr, prefix) {
                have_cidrs.insert(net, id);
            }
        }
        Ok(Self {
            table,
            cidrs,
            rev,
            have,
            have_cidrs,
        })
    }

    /// Opens the maps pinned under `pin_dir` (tests and tools).
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let t = MapData::from_pin(pin_dir.join(MAP)).map_err(map_err(MAP))?;
        let c = MapData::from_pin(pin_dir.join(CIDR_MAP)).map_err(map_err(CIDR_MAP))?;
        let r = MapData::from_pin(pin_dir.join(REV_MAP)).map_err(map_err(REV_MAP))?;
        Self::from_maps(Map::LpmTrie(t), Map::LpmTrie(c), Map::Array(r))
    }

    /// The tables' revision (`weir_policy_rev`).
    pub fn revision(&self) -> Result<u32, DatapathError> {
        self.rev.get(&0, 0).map_err(map_err(REV_MAP))
    }

    /// Bumps the revision: every open connection is judged again on its
    /// next packet (policy.h's policy_recheck). After every change of the
    /// tables or of what they name, once both are written.
    pub fn bump(&mut self) -> Result<u32, DatapathError> {
        let next = self.revision()?.wrapping_add(1);
        self.rev.set(0, next, 0).map_err(map_err(REV_MAP))?;
        Ok(next)
    }

    /// How many slots the table holds.
    pub fn len(&self) -> usize {
        self.have.len()
    }

    pub fn is_empty(&self) -> bool {
        self.have.is_empty()
    }

    /// Makes the tables hold exactly `slots` and `cidrs`. Order matters
    /// for a lookup racing the write: new CIDR ids and new or changed
    /// slots first, then the slots that go, then the CIDRs that go.
    pub fn sync(
        &mut self,
        slots: &BTreeMap<Slot, Verdicts>,
        cidrs: &BTreeMap<Ipv4Net, u32>,
    ) -> Result<SyncStats, DatapathError> {
        let mut stats = SyncStats::default();
        // What goes, first: a table near full then has room for what
        // comes, where writing first would fail every pass from then on.
        let gone: Vec<Slot> = self.have.keys().filter(|s| !slots.contains_key(s)).copied().collect();
        for slot in gone {
            match self.table.remove(&slot_key(&slot)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP)(e)),
            }
            self.have.remove(&slot);
            stats.removed += 1;
        }
        let gone: Vec<Ipv4Net> = self
            .have_cidrs
            .keys()
            .filter(|n| !cidrs.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            match self.cidrs.remove(&RouteKey::v4(net)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(CIDR_MAP)(e)),
            }
            self.have_cidrs.remove(&net);
            stats.removed += 1;
        }
        for (net, id) in cidrs {
            if self.have_cidrs.get(net) != Some(id) {
                self.cidrs
                    .insert(&RouteKey::v4(*net), id, 0)
                    .map_err(map_err(CIDR_MAP))?;
                self.have_cidrs.insert(*net, *id);
                stats.written += 1;
            }
        }
        for (slot, v) in slots {
            if self.have.get(slot) != Some(v) {
                self.table
                    .insert(&slot_key(slot), entry_of(v), 0)
                    .map_err(map_err(MAP))?;
                self.have.insert(*slot, *v);
                stats.written += 1;
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_through_trie_keys() {
        for slot in [
            Slot {
                endpoint_id: 7,
                direction: 0,
                peer: 300,
                proto: 6,
                port: 8080,
                port_bits: 16,
            },
            Slot {
                endpoint_id: 7,
                direction: 1,
                peer: PEER_ANY,
                proto: 0,
                port: 0,
                port_bits: 0,
            },
            Slot {
                endpoint_id: 9,
                direction: 0,
                peer: CIDR_MIN + 1,
                proto: 17,
                port: 0x1000,
                port_bits: 4,
            },
            Slot {
                endpoint_id: 9,
                direction: 0,
                peer: 2,
                proto: 1,
                port: 0,
                port_bits: 0,
            },
        ] {
            let k = slot_key(&slot);
            assert_eq!(slot_of(&k), slot);
        }
        let k = slot_key(&Slot {
            endpoint_id: 1,
            direction: 0,
            peer: 1,
            proto: 6,
            port: 0x1234,
            port_bits: 8,
        });
        assert_eq!(k.prefix_len(), 72 + 8 + 8);
        assert_eq!(u16::from_be(k.data().dport), 0x1200, "bits below the prefix are zero");
    }
}
