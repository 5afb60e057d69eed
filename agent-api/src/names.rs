//! Names both sides of the API derive the same way: the host side of a
//! pod's veth (the plugin creates it, the agent checks an ADD names it, and
//! DEL, which gets no result, finds it again), and the stable hash behind
//! them.

/// An FNV-1a 64-bit hasher: tiny, stable across releases and platforms
/// (std's hasher is not).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// FNV-1a of one byte string.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.eat(bytes);
    h.finish()
}

/// What an attachment (container id and interface) hashes to.
pub fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    fnv1a64(format!("{container_id}/{ifname}").as_bytes())
}

/// The host side of a pod's veth: `lxc` + 11 hex digits, 14 bytes, stable
/// for a container and interface.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let hex = format!("{:016x}", attachment_hash(container_id, ifname));
    format!("lxc{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit_an_interface_name() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c, "the published FNV-1a test vector");
        let n = host_ifname("abc", "eth0");
        assert_eq!(n, host_ifname("abc", "eth0"));
        assert_ne!(n, host_ifname("abc", "eth1"));
        assert!(n.starts_with("lxc") && n.len() == 14, "{n}");
    }
}
