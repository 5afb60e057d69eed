//! Interface names and MAC address text. Pure.

use weir_agent_api::names::attachment_hash;
pub use weir_agent_api::names::host_ifname;

/// The name the pod side has between creation and its move into the pod:
/// unique among concurrently running plugins (the pid is) and unlikely to meet
/// a leftover from a crashed one (the attachment hash differs). 14 bytes.
pub fn temp_peer_ifname(pid: u32, container_id: &str, ifname: &str) -> String {
    format!("wt{pid:08x}{:04x}", attachment_hash(container_id, ifname) & 0xffff)
}

/// `aa:bb:cc:dd:ee:ff`, lowercase, as the CNI result and the agent API expect.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parse a colon-separated 48-bit MAC address.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for slot in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_agent_api::names::fnv1a64;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn host_names_are_short_stable_and_distinct() {
        let a = host_ifname(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "eth0",
        );
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15);
        assert!(a.starts_with("lxc"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        // Pinned: DEL after an upgrade must find the veth an older ADD made.
        assert_eq!(
            host_ifname("c1", "eth0"),
            format!("lxc{}", &format!("{:016x}", fnv1a64(b"c1/eth0"))[..11])
        );
        assert_eq!(host_ifname("c1", "eth0"), host_ifname("c1", "eth0"));
        assert_ne!(host_ifname("c1", "eth0"), host_ifname("c2", "eth0"));
        assert_ne!(host_ifname("c1", "eth0"), host_ifname("c1", "eth1"));
    }

    #[test]
    fn temp_names_fit_and_differ_by_pid() {
        let t = temp_peer_ifname(4_194_304, "c1", "eth0");
        assert!(t.len() <= 15, "{t}");
        assert_ne!(temp_peer_ifname(100, "c1", "eth0"), temp_peer_ifname(101, "c1", "eth0"));
        assert_ne!(temp_peer_ifname(100, "c1", "eth0"), host_ifname("c1", "eth0"));
    }

    #[test]
    fn macs_round_trip() {
        let m = [0x02, 0xab, 0x00, 0x10, 0xff, 0x7e];
        assert_eq!(format_mac(&m), "02:ab:00:10:ff:7e");
        assert_eq!(parse_mac("02:ab:00:10:ff:7e"), Some(m));
        assert_eq!(parse_mac("02:AB:00:10:FF:7E"), Some(m));
        assert_eq!(parse_mac("02:ab:00:10:ff"), None);
        assert_eq!(parse_mac("02:ab:00:10:ff:7e:01"), None);
        assert_eq!(parse_mac("2:ab:00:10:ff:7e"), None);
        assert_eq!(parse_mac("zz:ab:00:10:ff:7e"), None);
    }
}
