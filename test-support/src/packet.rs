//! Frames for BPF_PROG_TEST_RUN and their checks: Internet checksums, and
//! TCP/UDP/SCTP over IPv4 over Ethernet, built and read back.

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + len as u32
}

/// An Ethernet + IPv4 frame with a valid header checksum and, for TCP and
/// UDP, a valid L4 checksum (unless `udp_zero_csum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: u8,
}

impl Flow {
    pub fn packet(&self, tcp_flags: u8) -> Vec<u8> {
        self.build(tcp_flags, false)
    }

    pub fn build(&self, tcp_flags: u8, udp_zero_csum: bool) -> Vec<u8> {
        let payload = b"weir";
        let mut l4 = match self.proto {
            TCP => {
                let mut t = vec![0u8; 20];
                t[12] = 5 << 4;
                t[13] = tcp_flags;
                t
            }
            UDP => {
                let mut u = vec![0u8; 8];
                u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u
            }
            _ => vec![0u8; 12], // SCTP common header; CRC32c left at 0
        };
        l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(payload);
        let csum_at = match self.proto {
            TCP => Some(16),
            UDP if !udp_zero_csum => Some(6),
            _ => None,
        };
        if let Some(at) = csum_at {
            let c = fold(pseudo_sum(self.src, self.dst, self.proto, l4.len()) + sum16(&l4));
            let c = if self.proto == UDP && c == 0 { 0xffff } else { c };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        ipv4_frame(self.src, self.dst, self.proto, &l4)
    }

    pub fn reply(&self) -> Self {
        Self {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// The flow a frame carries, after checking that its IPv4 and L4
/// checksums are valid.
pub fn parse(frame: &[u8]) -> Flow {
    let ip = &frame[14..34];
    assert_eq!(fold(sum16(ip)), 0, "IPv4 header checksum valid");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &frame[34..];
    let udp_none = proto == UDP && l4[6..8] == [0, 0];
    if (proto == TCP || proto == UDP) && !udp_none {
        assert_eq!(
            fold(pseudo_sum(src, dst, proto, l4.len()) + sum16(l4)),
            0,
            "{proto} checksum valid"
        );
    }
    Flow {
        src,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dst,
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto,
    }
}

/// One fragment of a datagram: Ethernet + a 20-byte IPv4 header with the
/// given id, fragment offset (in 8-byte units) and more-fragments flag,
/// around `data` (the first fragment's L4 header and payload, or a later
/// fragment's bytes).
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    offset8: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut f = ipv4_frame(src, dst, proto, data);
    let ip = &mut f[14..34];
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let frag = (if more { 0x2000 } else { 0 }) | (offset8 & 0x1fff);
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = fold(sum16(ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Ethernet + a 20-byte IPv4 header (TTL 64, valid checksum) around `l4`.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0xfe, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}
