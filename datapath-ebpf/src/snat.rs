//! Masquerading (pod → outside the cluster, SNAT to the node IP). Its flows
//! are entries of the one conntrack table, flagged [`crate::conntrack::CT_F_MASQ`]
//! and collected with the rest ([`crate::conntrack::Conntrack::gc`]); what is
//! left here is the port range.

/// `WEIR_SNAT_PORT_MIN..=WEIR_SNAT_PORT_MAX`: node ports (and ICMP echo
/// identifiers) handed to masqueraded flows.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = crate::abi::SNAT_PORTS;
