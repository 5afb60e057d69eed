//! SCTP for a kernel without SCTP sockets: crafted packets on raw sockets
//! (`IPPROTO_SCTP`), enough for the datapath to see SCTP connections and
//! for a probe to tell whether they get through. A probe sends an INIT from
//! a random port; a pod's SCTP "server" (`weir lab serve --port N/sctp`)
//! answers every packet to one of its ports with an ABORT carrying the
//! sender's tag. The answer coming back is a connection that got through
//! both ways. No association is ever set up: nothing here needs one.
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;

use super::probe::Outcome;

const INIT: u8 = 1;
const ABORT: u8 = 6;

/// CRC32c (Castagnoli), as SCTP's checksum wants it (RFC 9260 appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A common header and one chunk: INIT with its mandatory fields, or an
/// empty chunk of another type.
pub fn packet(sport: u16, dport: u16, vtag: u32, chunk: u8, init_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, below
    if chunk == INIT {
        p.extend_from_slice(&[INIT, 0]);
        p.extend_from_slice(&20u16.to_be_bytes());
        p.extend_from_slice(&init_tag.to_be_bytes());
        p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
        p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
        p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
        p.extend_from_slice(&init_tag.to_be_bytes()); // initial TSN
    } else {
        p.extend_from_slice(&[chunk, 0]);
        p.extend_from_slice(&4u16.to_be_bytes());
    }
    // The checksum is stored little-endian (RFC 9260 appendix A).
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// (source address, source port, destination port, verification tag) of
/// a received IPv4 datagram carrying SCTP.
fn parse(buf: &[u8]) -> Option<(Ipv4Addr, u16, u16, u32, u32)> {
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*buf.get(12)?, buf[13], buf[14], buf[15]);
    let s = buf.get(ihl..ihl + 12)?;
    let init_tag = buf
        .get(ihl + 16..ihl + 20)
        .map_or(0, |t| u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
    Some((
        src,
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
        init_tag,
    ))
}

fn raw() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
}

/// One INIT to `ip:port` from inside the calling thread's netns; connected
/// when the server's answer comes back within `timeout`.
pub fn probe_here(ip: Ipv4Addr, port: u16, timeout: Duration) -> Outcome {
    let fd = match raw() {
        Ok(fd) => fd,
        Err(e) => return Outcome::Failed(format!("raw SCTP socket: {e}")),
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let nanos = clock ^ std::process::id().rotate_left(16) ^ NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
    let sport = 32768 + (nanos % 28000) as u16;
    let tag = nanos | 1;
    let dst = SockaddrIn::from(SocketAddrV4::new(ip, 0));
    if let Err(e) = sendto(
        fd.as_raw_fd(),
        &packet(sport, port, 0, INIT, tag),
        &dst,
        MsgFlags::empty(),
    ) {
        return Outcome::Failed(format!("sending SCTP INIT: {e}"));
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::TimedOut;
        }
        let tv = TimeVal::new(left.as_secs() as i64, left.subsec_micros().max(1000) as i64);
        if let Err(e) = setsockopt(&fd, sockopt::ReceiveTimeout, &tv) {
            return Outcome::Failed(format!("SO_RCVTIMEO: {e}"));
        }
        match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            Ok((n, _)) => {
                if let Some((src, sp, dp, vtag, _)) = parse(&buf[..n])
                    && src == ip
                    && sp == port
                    && dp == sport
                    && vtag == tag
                {
                    return Outcome::Connected(format!("sctp {ip}:{port}"));
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => return Outcome::Failed(format!("receiving: {e}")),
        }
    }
}

/// Answers every packet to one of `ports` with an ABORT to its sender
/// (the caller is inside the pod's netns). Runs until the socket fails.
pub fn serve_here(ports: Vec<u16>) -> anyhow::Result<()> {
    let fd = raw().map_err(|e| anyhow::anyhow!("raw SCTP socket: {e}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("receiving SCTP: {e}"),
        };
        let Some((src, sp, dp, _, init_tag)) = parse(&buf[..n]) else {
            continue;
        };
        // Answers go out too; only what is addressed to a served port counts.
        if !ports.contains(&dp) || init_tag == 0 {
            continue;
        }
        let to = SockaddrIn::from(SocketAddrV4::new(src, 0));
        if let Err(e) = sendto(
            fd.as_raw_fd(),
            &packet(dp, sp, init_tag, ABORT, 0),
            &to,
            MsgFlags::empty(),
        ) {
            eprintln!("SCTP answer to {src}: {e}");
        }
    }
}

/// [`probe_here`] from inside the netns at `netns_path`.
pub fn probe(netns_path: &str, ip: IpAddr, port: u16, timeout: Duration) -> Outcome {
    let IpAddr::V4(ip) = ip else {
        return Outcome::Failed("SCTP probes are IPv4 only".into());
    };
    super::netns::run_in(netns_path, move || probe_here(ip, port, timeout))
        .unwrap_or_else(|e| Outcome::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_packets_are_what_rfc_9260_says() {
        // RFC 3720 B.4's test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let p = packet(1000, 5000, 0, INIT, 7);
        assert_eq!(p.len(), 12 + 20);
        assert_eq!(&p[0..4], &[0x03, 0xe8, 0x13, 0x88]);
        let mut copy = p.clone();
        copy[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(u32::from_le_bytes([p[8], p[9], p[10], p[11]]), crc32c(&copy));
        let mut ip = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip.extend_from_slice(&p);
        assert_eq!(parse(&ip), Some((Ipv4Addr::new(10, 0, 0, 1), 1000, 5000, 0, 7)));
    }
}
