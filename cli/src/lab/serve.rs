//! `weir lab serve`: the pod's "containers". Answers every TCP connection and
//! UDP datagram on the given ports with the pod's name and a newline.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::netns;

/// A `PORT/PROTO` argument: `80/TCP`, `53/udp`; bare `80` means TCP.
pub fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
    let proto = Proto::parse(proto).ok_or_else(|| format!("bad protocol in {s:?} (tcp or udp)"))?;
    Ok((port, proto))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// Enter the netns, bind every port, print `ready` on stdout, then serve forever.
pub fn run(netns_path: &str, name: &str, ports: &[(u16, Proto)]) -> Result<()> {
    netns::enter(netns_path)?;
    let reply = format!("{name}\n");
    let mut threads = Vec::new();
    for &(port, proto) in ports {
        let reply = reply.clone();
        match proto {
            Proto::Tcp => {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| format!("binding {port}/TCP"))?;
                threads.push(std::thread::spawn(move || serve_tcp(l, reply)));
            }
            Proto::Udp => {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| format!("binding {port}/UDP"))?;
                threads.push(std::thread::spawn(move || serve_udp(s, reply)));
            }
        }
    }
    println!("ready");
    std::io::stdout().flush().ok();
    for t in threads {
        let _ = t.join();
    }
    bail!("all listeners stopped")
}

fn serve_tcp(listener: TcpListener, reply: String) {
    for conn in listener.incoming() {
        match conn {
            Ok(mut s) => {
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(reply.as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_udp(sock: UdpSocket, reply: String) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = sock.send_to(reply.as_bytes(), peer) {
                    eprintln!("send to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports() {
        assert_eq!(parse_port("80/TCP").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_port("53/udp").unwrap(), (53, Proto::Udp));
        assert_eq!(parse_port("8080").unwrap(), (8080, Proto::Tcp));
        assert!(parse_port("80/sctp").is_err());
        assert!(parse_port("x/tcp").is_err());
    }
}
