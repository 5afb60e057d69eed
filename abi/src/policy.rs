//! The policy tables' ABI (abi.h's `WEIR_POLICY_*`, `WEIR_PA_*`,
//! `WEIR_PT_*`, `WEIR_PV_*`; `bpf/lib/policy.h` reads the tables): the
//! constants, the slot and verdicts the model's compiler produces and the
//! datapath crate packs into `struct weir_policy_key`/`weir_policy_entry`,
//! and the packed verdict conntrack entries and events carry.
use crate::{sys, u8_of};

/// The LPM prefix length that covers endpoint, direction and peer.
pub const PREFIX_PEER: u8 = u8_of(sys::WEIR_POLICY_PREFIX_PEER);
/// The peer "any".
pub const PEER_ANY: u32 = sys::WEIR_POLICY_PEER_ANY;
/// CIDR ids start here, above identities.
pub const CIDR_MIN: u32 = sys::WEIR_POLICY_CIDR_MIN;
pub const MAX_ENTRIES: u32 = sys::WEIR_POLICY_MAX_ENTRIES;
/// The largest rule reference (a packed verdict's low bits).
pub const REF_MAX: u32 = sys::WEIR_PV_REF_MASK;

/// Actions by precedence (`WEIR_PA_*`): the highest over a connection's
/// lookups decides.
pub mod action {
    use crate::{sys, u8_of};
    pub const NONE: u8 = u8_of(sys::WEIR_PA_NONE);
    pub const DEFAULT_DENY: u8 = u8_of(sys::WEIR_PA_DEFAULT_DENY);
    pub const ALLOW: u8 = u8_of(sys::WEIR_PA_ALLOW);
    pub const DENY: u8 = u8_of(sys::WEIR_PA_DENY);
}

/// A ClusterNetworkPolicy tier's value (`WEIR_PT_*`): rank << RANK_SHIFT
/// | action; the highest value over a connection's lookups decides.
pub mod tier {
    use crate::sys;
    pub const NONE: u32 = sys::WEIR_PT_NONE;
    pub const ACCEPT: u32 = sys::WEIR_PT_ACCEPT;
    pub const DENY: u32 = sys::WEIR_PT_DENY;
    pub const PASS: u32 = sys::WEIR_PT_PASS;
    pub const KIND_MASK: u32 = sys::WEIR_PT_KIND_MASK;
    pub const RANK_SHIFT: u32 = sys::WEIR_PT_RANK_SHIFT;
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

/// The layers of a slot (`struct weir_policy_entry`): the NetworkPolicy
/// tier's two ([`action`]s and rule references, with and without
/// audit-mode policies), and ClusterNetworkPolicy's Admin and Baseline
/// tiers ([`tier`] values, 0 for none).
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
            rule: v & REF_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_verdict_unpacks() {
        let packed = |kind: u32, rule: u32| kind << sys::WEIR_PV_SHIFT | rule;
        assert_eq!(Verdict::unpack(0), Verdict::default());
        assert_eq!(
            Verdict::unpack(packed(sys::WEIR_PV_DENY, REF_MAX)),
            Verdict {
                kind: VerdictKind::Deny,
                rule: REF_MAX
            }
        );
        assert_eq!(Verdict::unpack(packed(sys::WEIR_PV_AUDIT, 9)).kind, VerdictKind::Audit);
        // A kind from a newer datapath reads as none, its rule kept.
        assert_eq!(
            Verdict::unpack(packed(7, 5)),
            Verdict {
                kind: VerdictKind::None,
                rule: 5
            }
        );
    }
}
