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
use crate::abi::{PolicyEntry, PolicyKey, RouteKey, sys};

pub const MAP: &str = "weir_policy";
pub const CIDR_MAP: &str = "weir_policy_cidr";
pub const REV_MAP: &str = "weir_policy_rev";

pub const PREFIX_PEER: u8 = sys::WEIR_POLICY_PREFIX_PEER as u8;
pub const PEER_ANY: u32 = sys::WEIR_POLICY_PEER_ANY;
pub const CIDR_MIN: u32 = sys::WEIR_POLICY_CIDR_MIN;
pub const MAX_ENTRIES: u32 = sys::WEIR_POLICY_MAX_ENTRIES;
pub const REF_MASK: u32 = sys::WEIR_PV_REF_MASK;

/// Actions by precedence (`WEIR_PA_*`).
pub mod action {
    use crate::abi::sys;
    pub const NONE: u8 = sys::WEIR_PA_NONE as u8;
    pub const DEFAULT_DENY: u8 = sys::WEIR_PA_DEFAULT_DENY as u8;
    pub const ALLOW: u8 = sys::WEIR_PA_ALLOW as u8;
    pub const DENY: u8 = sys::WEIR_PA_DENY as u8;
}

/// A ClusterNetworkPolicy tier's value (`WEIR_PT_*`): rank << RANK_SHIFT
/// | action; the highest value over a connection's lookups decides.
pub mod tier {
    use crate::abi::sys;
    pub const NONE: u32 = sys::WEIR_PT_NONE;
    pub const ACCEPT: u32 = sys::WEIR_PT_ACCEPT;
    pub const DENY: u32 = sys::WEIR_PT_DENY;
    pub const PASS: u32 = sys::WEIR_PT_PASS;
    pub const RANK_SHIFT: u32 = sys::WEIR_PT_RANK_SHIFT;
}

/// What a connection's policy verdict was (`WEIR_PV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum VerdictKind {
    /// No policy selects the endpoint in that direction.
    #[default]
    None,
    Allow,
    /// Forwarded; an audit-mode policy would have denied it.
    Audit,
    /// Dropped: nothing allows it (an isolated endpoint's default deny).
    Denied,
    /// Dropped: an explicit deny rule.
    Deny,
}

/// A verdict and the rule that decided it, as conntrack entries and events
/// carry it packed in one u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// The deciding rule's reference (the agent's numbering), 0 for none.
    pub rule: u32,
}

impl Verdict {
    /// A packed verdict; a kind this build does not know reads as none.
    pub fn unpack(v: u32) -> Self {
        let kind = match v >> sys::WEIR_PV_SHIFT {
            sys::WEIR_PV_ALLOW => VerdictKind::Allow,
            sys::WEIR_PV_AUDIT => VerdictKind::Audit,
            sys::WEIR_PV_DENIED => VerdictKind::Denied,
            sys::WEIR_PV_DENY => VerdictKind::Deny,
            _ => VerdictKind::None,
        };
        Self {
            kind,
            rule: v & REF_MASK,
        }
    }
}

/// One slot of a policy table: a local endpoint, a direction
/// (`WEIR_DIR_*`), a peer (identity, CIDR id or [`PEER_ANY`]) and a
/// protocol/port prefix. `proto` 0 is any protocol (then no port);
/// `port_bits` 0 any port of `proto`, 16 exactly `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub endpoint_id: u32,
    pub direction: u8,
    pub peer: u32,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl Slot {
    fn key(&self) -> Key<PolicyKey> {
        let bits = if self.proto == 0 {
            u32::from(PREFIX_PEER)
        } else {
            u32::from(PREFIX_PEER) + 8 + u32::from(self.port_bits.min(16))
        };
        let mask = if self.port_bits == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(self.port_bits.min(16)))
        };
        Key::new(
            bits,
            PolicyKey {
                endpoint_id: self.endpoint_id,
                peer: self.peer,
                direction: self.direction,
                proto: self.proto,
                dport: (self.port & mask).to_be(),
            },
        )
    }

    fn from_key(key: &Key<PolicyKey>) -> Self {
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
}

/// The layers of a slot (abi.h's `struct weir_policy_entry`): the
/// NetworkPolicy tier's two, and ClusterNetworkPolicy's Admin and Baseline
/// tiers (`WEIR_PT_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Verdicts {
    pub action: u8,
    pub reference: u32,
    pub audit_action: u8,
    pub audit_reference: u32,
    pub admin: u32,
    pub admin_reference: u32,
    pub baseline: u32,
    pub baseline_reference: u32,
}

impl Verdicts {
    fn entry(&self) -> PolicyEntry {
        PolicyEntry {
            action: self.action,
            audit_action: self.audit_action,
            pad: 0,
            rule: self.reference & REF_MASK,
            audit_rule: self.audit_reference & REF_MASK,
            admin: self.admin,
            admin_rule: self.admin_reference & REF_MASK,
            baseline: self.baseline,
            baseline_rule: self.baseline_reference & REF_MASK,
        }
    }

    fn of(e: &PolicyEntry) -> Self {
        Self {
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
            have.insert(Slot::from_key(&k), Verdicts::of(&v));
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
            match self.table.remove(&slot.key()) {
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
                self.table.insert(&slot.key(), v.entry(), 0).map_err(map_err(MAP))?;
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
            let k = slot.key();
            assert_eq!(Slot::from_key(&k), slot);
        }
        let k = Slot {
            endpoint_id: 1,
            direction: 0,
            peer: 1,
            proto: 6,
            port: 0x1234,
            port_bits: 8,
        }
        .key();
        assert_eq!(k.prefix_len(), 72 + 8 + 8);
        assert_eq!(u16::from_be(k.data().dport), 0x1200, "bits below the prefix are zero");
    }
}
