//! `weir lab probe`: one connection attempt from inside a pod's netns.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::netns;
use super::serve::Proto;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Port { host: String, port: u16, proto: Proto },
    Icmp { host: String },
}

/// Parse `HOST:PORT/tcp`, `HOST:PORT/udp` or `HOST/icmp` (protocol any case).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (rest, proto) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?}: expected HOST:PORT/PROTO or HOST/icmp"))?;
    if proto.eq_ignore_ascii_case("icmp") {
        if rest.is_empty() {
            return Err(format!("{s:?}: missing host"));
        }
        return Ok(Target::Icmp { host: rest.to_owned() });
    }
    let proto = Proto::parse(proto).ok_or_else(|| format!("{s:?}: protocol must be tcp, udp, sctp or icmp"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?}: missing :PORT"))?;
    let port = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: missing host"));
    }
    Ok(Target::Port {
        host: host.to_owned(),
        port,
        proto,
    })
}

/// How a probe ended; maps to the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Connected(String),
    Reachable,
    Refused,
    /// An ICMP network/host unreachable came back: no route to the target.
    Unreachable,
    TimedOut,
    Failed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Connected(_) | Outcome::Reachable => 0,
            Outcome::Refused | Outcome::Unreachable => 1,
            Outcome::TimedOut => 2,
            Outcome::Failed(_) => 3,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Connected(r) => write!(f, "connected: {r}"),
            Outcome::Reachable => write!(f, "reachable"),
            Outcome::Refused => write!(f, "refused"),
            Outcome::Unreachable => write!(f, "unreachable"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::Failed(e) => write!(f, "error: {e}"),
        }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable => Outcome::Unreachable,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Failed(e.to_string()),
    }
}

/// TCP or UDP probe from a thread inside the netns at `netns_path`; UDP
/// from `source_port` when given (0: any), a datagram of `size` bytes when
/// given (the server answers as large: both ways fragment past the MTU).
pub fn port(
    netns_path: &str,
    ip: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
    source_port: Option<u16>,
    size: Option<usize>,
) -> Outcome {
    let addr = SocketAddr::new(ip, port);
    if proto == Proto::Sctp {
        return super::sctp::probe(netns_path, ip, port, timeout);
    }
    let run = move || match proto {
        Proto::Tcp => tcp(addr, timeout),
        Proto::Udp => udp(addr, timeout, source_port.unwrap_or(0), size.unwrap_or(0)),
        Proto::Sctp => unreachable!("above"),
    };
    netns::run_in(netns_path, run).unwrap_or_else(|e| Outcome::Failed(e.to_string()))
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
    let _ = s.set_read_timeout(Some(left));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    break;
                }
            }
            Err(e) if buf.is_empty() && e.kind() == ErrorKind::ConnectionReset => return Outcome::Refused,
            Err(_) => break,
        }
    }
    Outcome::Connected(first_line(&buf))
}

fn udp(addr: SocketAddr, timeout: Duration, source_port: u16, size: usize) -> Outcome {
    let any: IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(any, source_port);
    let sock = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let mut datagram = b"probe\n".to_vec();
    datagram.resize(size.max(datagram.len()), b'.');
    if let Err(e) = sock.set_read_timeout(Some(timeout)).and_then(|_| sock.send(&datagram)) {
        return classify(&e);
    }
    let mut buf = vec![0u8; 65536];
    match sock.recv(&mut buf) {
        // A large probe must come back as large: a lost fragment loses
        // the whole answer, a truncated one would hide that.
        Ok(n) if n < size => Outcome::Failed(format!("answer of {n} bytes to a {size}-byte datagram")),
        Ok(n) => Outcome::Connected(first_line(&buf[..n])),
        Err(e) => classify(&e),
    }
}

fn first_line(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// ICMP echo via `ping -c 1 -W SECS` inside the netns.
pub fn icmp(netns_name: &str, host: &str, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs().max(1).to_string();
    let out = netns::command(netns_name, "ping")
        .args(["-n", "-c", "1", "-W", &secs, host])
        .output();
    match out {
        Ok(o) if o.status.success() => Outcome::Reachable,
        Ok(o) if o.status.code() == Some(1) => Outcome::TimedOut,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            if err.contains("No such file") || err.contains("not found") {
                Outcome::Failed("ping not found: install iputils-ping".into())
            } else {
                Outcome::Failed(format!("ping: {err}"))
            }
        }
        Err(e) => Outcome::Failed(format!("running ip netns exec ping: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            parse_target("10.0.0.1:80/TCP").unwrap(),
            Target::Port {
                host: "10.0.0.1".into(),
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            parse_target("demo/web-0:53/udp").unwrap(),
            Target::Port {
                host: "demo/web-0".into(),
                port: 53,
                proto: Proto::Udp
            }
        );
        assert_eq!(
            parse_target("10.0.0.1/ICMP").unwrap(),
            Target::Icmp {
                host: "10.0.0.1".into()
            }
        );
        for bad in ["10.0.0.1", "10.0.0.1:80", ":80/tcp", "/icmp", "h:x/tcp"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::Connected("x".into()).exit_code(), 0);
        assert_eq!(Outcome::Refused.exit_code(), 1);
        assert_eq!(Outcome::TimedOut.exit_code(), 2);
        assert_eq!(Outcome::TimedOut.to_string(), "timed out");
        assert_eq!(Outcome::Connected("web-0".into()).to_string(), "connected: web-0");
    }
}
