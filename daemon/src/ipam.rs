//! Address allocation from the node's pod CIDR: pure arithmetic over the
//! set of addresses in use. Persistence lives in the endpoint store, so an
//! address is recorded in the same write as the endpoint that owns it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the CIDR is taken.
    #[error("pod CIDR {cidr} is exhausted: all {usable} addresses are allocated")]
    Exhausted { cidr: Ipv4Net, usable: u64 },
}

/// Usable addresses: the CIDR minus its network and broadcast addresses.
pub fn usable(cidr: Ipv4Net) -> u64 {
    (1u64 << (32 - cidr.prefix_len())).saturating_sub(2)
}

/// The next free address after `last` (wrapping), so a released address is
/// not handed out again at once: a stale conntrack or ARP entry of a
/// deleted pod will not hit its successor.
pub fn next_free(cidr: Ipv4Net, used: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    let base = u32::from(cidr.network());
    let size = usable(cidr) as u32;
    let start = last.filter(|a| cidr.contains(a)).map_or(0, |a| u32::from(a) - base); // offset of last, 0..=size
    for step in 1..=size {
        let offset = (start + step - 1) % size + 1; // 1..=size, skipping the network address
        let candidate = Ipv4Addr::from(base + offset);
        if !used.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Err(IpamError::Exhausted {
        cidr,
        usable: u64::from(size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_and_broadcast() {
        let c = cidr("10.0.0.0/30");
        let mut used = BTreeSet::new();
        let a = next_free(c, &used, None).unwrap();
        used.insert(a);
        let b = next_free(c, &used, Some(a)).unwrap();
        used.insert(b);
        assert_eq!((a, b), ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()));
        assert_eq!(
            next_free(c, &used, Some(b)),
            Err(IpamError::Exhausted { cidr: c, usable: 2 })
        );
    }

    #[test]
    fn does_not_reuse_a_released_address_immediately() {
        let c = cidr("10.0.0.0/29");
        let used: BTreeSet<_> = ["10.0.0.2"].iter().map(|s| s.parse().unwrap()).collect();
        // .1 was just released, .2 is in use, last handed out was .2
        assert_eq!(
            next_free(c, &used, Some("10.0.0.2".parse().unwrap())).unwrap(),
            "10.0.0.3".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn wraps_around_to_free_addresses() {
        let c = cidr("10.0.0.0/29"); // .1 ..= .6
        let used: BTreeSet<_> = ["10.0.0.2", "10.0.0.6"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            next_free(c, &used, Some("10.0.0.6".parse().unwrap())).unwrap(),
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn every_address_once_until_exhausted() {
        let c = cidr("10.1.0.0/24");
        let mut used = BTreeSet::new();
        let mut last = None;
        for _ in 0..254 {
            let a = next_free(c, &used, last).unwrap();
            assert!(used.insert(a), "{a} handed out twice");
            last = Some(a);
        }
        assert!(matches!(
            next_free(c, &used, last),
            Err(IpamError::Exhausted { usable: 254, .. })
        ));
    }
}
